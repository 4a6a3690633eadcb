"""The ``curvfast transfer`` study: train a zoo of models, attack each one over an eps sweep, count
transfers, fit N(eps), build the transfer matrix, select and attack majority-vote ensembles.

Outputs in ``out``: ``results.json`` (settings, models, transfer_matrix, metric, fit, groups,
robust_accuracy, ensembles), ``transfer.npz`` (raw predictions and counts), ``transfer_matrix.png``,
``transfer_fits.png`` and ``models/*.pt`` (weights-only checkpoints, reused by a rerun).
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from curvfast.data import get_dataset
from curvfast.io import write_json, write_npz
from curvfast.pipelines.transfer.attacks import ENSEMBLE_RULES, SINGLE_ATTACKS, attack, ensemble_pgd
from curvfast.pipelines.transfer.ensemble import majority_vote, select_members
from curvfast.pipelines.transfer.figures import fit_curves, transfer_heatmap
from curvfast.pipelines.transfer.members import MemberSpec, load_or_train, parse_spec
from curvfast.pipelines.transfer.transfer import pair_counts, pair_groups, predictions_under_attack, transfer_matrix

__all__ = ["DEFAULT_MODELS", "DEFAULT_EPS", "DEFAULT_ROBUST_EPS", "run_transfer"]

DEFAULT_MODELS = (
    "small_cnn", "small_cnn@1", "small_cnn@2", "small_cnn+adam",
    "small_cnn+in1", "small_cnn+in2", "small_cnn+halftone", "small_cnn+w2a2", "mlp2",
)
DEFAULT_EPS = tuple(k / 255 for k in (0, 2, 4, 8, 16, 24, 32, 48, 64))
DEFAULT_ROBUST_EPS = (8 / 255, 32 / 255)


def _finite(value):
    """JSON-safe: NaN/inf -> None, recursively for lists."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_finite(v) for v in value]
    value = float(value)
    return value if math.isfinite(value) else None


def _tensors(dataset, n: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Images, labels and their indices in ``dataset`` (all, or ``n`` drawn at random)."""
    x, y = map(torch.cat, zip(*DataLoader(dataset, batch_size=512)))
    keep = torch.arange(len(y))
    if n is not None:
        if not 2 <= n <= len(y):
            raise ValueError(f"n_test must be in [2, {len(y)}] (got {n})")
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[keep], y[keep], keep.numpy()


def _selection_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random halves of range(n): (selection, evaluation), each sorted."""
    order = np.random.default_rng([seed, 8]).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def _check_eps(eps, metric_eps: float, robust_eps) -> np.ndarray:
    values = np.asarray(sorted(set(float(e) for e in (*eps, *robust_eps))))
    if (values < 0).any():
        raise ValueError(f"eps values must be >= 0 (got {list(eps)} and robust eps {list(robust_eps)})")
    if (values > 0).sum() < 2:
        raise ValueError("the eps sweep needs at least two values > 0 to fit N(eps) = a(1 - e^{b eps})")
    if not metric_eps > 0:
        raise ValueError(f"metric_eps must be > 0 (got {metric_eps})")
    return values


def _default_ensembles(specs: list[MemberSpec], metric: np.ndarray, accuracy: np.ndarray, k: int, margin: float) -> dict:
    """``seeds``: the first model and its seed siblings; ``trend``: the published choice (full
    precision, 1-bit, 2-bit and halftone inputs) when present; ``selected``: greedy low mutual
    transfer among models within ``margin`` of the best clean accuracy."""
    base = specs[0]
    out = {}
    siblings = [i for i, s in enumerate(specs) if s.factors() | {"seed": 0} == base.factors() | {"seed": 0}]
    if len(siblings) >= 2:
        out["seeds"] = siblings[:k]
    wanted = [MemberSpec(base.arch), MemberSpec(base.arch, input_bits=1), MemberSpec(base.arch, input_bits=2), MemberSpec(base.arch, halftone="sharpen")]
    if all(w in specs for w in wanted):
        out["trend"] = [specs.index(w) for w in wanted]
    candidates = [i for i in range(len(specs)) if accuracy[i] >= accuracy.max() - margin]
    if len(candidates) >= k:
        out["selected"] = select_members(metric, k, candidates)
    return out


def _summary(values) -> dict:
    """Mean, min and max of metric values, ignoring undefined (NaN) ones; None when all are."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return {"mean_metric": None, "min_metric": None, "max_metric": None}
    return {"mean_metric": float(finite.mean()), "min_metric": float(finite.min()), "max_metric": float(finite.max())}


def _ensemble_robustness(members, x, y, radii, transfers, rules, *, step, steps, seed, bar) -> dict:
    """Majority-vote accuracy of ``members``: clean, under ``ensemble_pgd`` with each rule at each
    radius, under the strongest single-model transfer (``transfers[r]``: every zoo model's own
    attack at radius r), and the worst of those per radius."""

    @torch.no_grad()
    def vote_accuracy(inputs: torch.Tensor) -> float:
        return float((majority_vote([m(inputs) for m in members]) == y).float().mean())

    entry = {"clean": vote_accuracy(x)}
    for rule in rules:
        entry[rule] = []
        for radius in radii:
            adv = ensemble_pgd(members, x, y, rule=rule, eps=radius, step=step, steps=steps, seed=seed)
            entry[rule].append(vote_accuracy(adv))
            bar.update()
    entry["worst_single_source_transfer"] = [min(vote_accuracy(adv) for adv in advs) for advs in transfers]
    keys = (*rules, "worst_single_source_transfer")
    entry["worst_case"] = [min(entry[k][r] for k in keys) for r in range(len(radii))]
    return entry


def run_transfer(
    dataset: str = "digits",
    models=DEFAULT_MODELS,
    *,
    eps=DEFAULT_EPS,
    metric_eps: float = 8 / 255,
    attack_name: str = "pgd",
    steps: int = 40,
    step: float = 0.01,
    epochs: int = 15,
    n_test: int | None = None,
    ensemble_size: int = 3,
    ensembles: dict[str, list[str]] | None = None,
    robust_eps=DEFAULT_ROBUST_EPS,
    accuracy_margin: float = 0.03,
    seed: int = 0,
    root: str | None = None,
    device: str = "cpu",
    out: str | None = None,
    progress: bool | None = None,
) -> dict:
    """Run the whole study and return the results dict (also written to ``out`` when given).

    ``models``: spec strings (see ``curvfast.pipelines.transfer.members``). ``eps``: the sweep for the
    counts (``robust_eps`` is added to it). The attack on each source is ``attack_name`` with
    ``steps`` steps of size ``step`` (PGD L-inf defaults: 40 x 0.01, as published). ``ensembles``
    adds named ensembles (lists of model names) to the automatic ones.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    specs = [parse_spec(m) for m in models]
    names = [s.name for s in specs]
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"models must name at least two distinct specs (got {names})")
    if attack_name not in SINGLE_ATTACKS:
        raise ValueError(f"attack must be one of {SINGLE_ATTACKS} (got {attack_name!r})")
    sweep = _check_eps(eps, metric_eps, robust_eps)
    for ens_name, members in (ensembles or {}).items():
        unknown = [m for m in members if parse_spec(m).name not in names]
        if unknown or not members:
            raise ValueError(f"ensemble {ens_name!r}: members {unknown or members} are not among the models {names}")
    quiet = not (progress if progress is not None else sys.stderr.isatty())

    train_set, info = get_dataset(dataset, "train", root=root)
    test_set, _ = get_dataset(dataset, "test", root=root)
    x, y, test_index = _tensors(test_set, n_test, seed)
    x, y = x.to(device), y.to(device)
    folder = None if out is None else os.path.join(out, "models")
    nets, model_info = [], []
    for spec in tqdm(specs, desc="train", disable=quiet):
        net, minfo = load_or_train(spec, train_set, test_set, info.num_classes, epochs=epochs, dataset=dataset, folder=folder, device=device)
        for p in net.parameters():
            p.requires_grad_(False)
        nets.append(net)
        model_info.append({"name": spec.name, **spec.factors(), **minfo})

    clean = predictions_under_attack(nets, [x])[0]                       # (M, N)
    labels = y.cpu().numpy()
    correct = clean == labels
    robust_index = [int(np.argmin(abs(sweep - e))) for e in robust_eps]
    preds = np.empty((len(nets), len(sweep), len(nets), len(labels)), dtype=np.int64)
    kept: dict[tuple[int, int], torch.Tensor] = {}
    bar = tqdm(total=len(nets) * len(sweep), desc=f"{attack_name} sweep", disable=quiet)
    for s, net in enumerate(nets):
        for e, radius in enumerate(sweep):
            adv = attack(net, x, y, name=attack_name, eps=float(radius), step=step, steps=steps, seed=seed)
            preds[s, e] = predictions_under_attack(nets, [adv])[0]
            if e in robust_index:
                kept[s, e] = adv
            bar.update()
    bar.close()

    n_st, n_ss, pool = pair_counts(correct, preds != labels)
    metric, fits_st, fits_ss = transfer_matrix(sweep, n_st, n_ss, pool, metric_eps)
    at = int(np.argmin(abs(sweep - metric_eps)))
    with np.errstate(invalid="ignore", divide="ignore"):
        empirical = n_st[:, :, at] / n_ss[:, :, at]
    groups = {key: _summary([metric[p] for p in pairs]) | {"pairs": len(pairs)} for key, pairs in pair_groups(specs).items()}

    # the "selected" ensemble is chosen on one half of the test images (its transfer counts and clean
    # accuracies) and every robust accuracy is measured on the other half: selection never sees them
    select, held = _selection_split(len(labels), seed)
    metric_select = transfer_matrix(sweep, *pair_counts(correct[:, select], (preds != labels)[..., select]), metric_eps)[0]
    accuracy = correct[:, held].mean(1)
    ens = _default_ensembles(specs, metric_select, correct[:, select].mean(1), ensemble_size, accuracy_margin)
    ens.update({k: [names.index(parse_spec(m).name) for m in v] for k, v in (ensembles or {}).items()})
    rules = ENSEMBLE_RULES if attack_name in ("pgd", "fgsm") else ()  # ensemble attacks are L-inf: not comparable with L2 radii
    robust = {
        "eps": [float(sweep[i]) for i in robust_index], "attack": attack_name, "ensemble_attacks": list(rules),
        "images": "evaluation half of the test images (index in results.selection)",
        "single": {names[s]: {"clean": float(accuracy[s]), attack_name: [float((preds[s, e, s, held] == labels[held]).mean()) for e in robust_index]}
                   for s in range(len(nets))},
        "ensembles": {},
    }
    bar = tqdm(total=len(ens) * len(rules) * len(robust_index), desc="ensemble attacks", disable=quiet)
    for ens_name, idx in ens.items():
        entry = _ensemble_robustness(
            [nets[i] for i in idx], x[held], y[held], [float(sweep[e]) for e in robust_index],
            [[kept[s, e][held] for s in range(len(nets))] for e in robust_index], rules, step=step, steps=steps, seed=seed, bar=bar,
        )
        member_acc = [float(np.mean([robust["single"][names[i]][attack_name][r] for i in idx])) for r in range(len(robust_index))]
        robust["ensembles"][ens_name] = {"members": [names[i] for i in idx], f"mean_member_{attack_name}": member_acc, **entry}
    bar.close()

    pair = [(s, t) for s in range(len(names)) for t in range(len(names))]
    results = {
        "settings": {
            "dataset": dataset, "models": names, "eps": sweep.tolist(), "metric_eps": metric_eps,
            "empirical_eps": float(sweep[at]), "attack": attack_name,
            "steps": steps, "step": step, "epochs": epochs, "n_test": len(labels), "ensemble_size": ensemble_size,
            "accuracy_margin": accuracy_margin, "seed": seed, "device": device, "torch": torch.__version__,
        },
        "models": model_info,
        "transfer_matrix": _finite(metric.tolist()),
        "transfer_matrix_empirical": _finite(empirical.tolist()),
        "metric": {f"{names[s]}->{names[t]}": _finite(metric[s, t]) for s, t in pair},
        "fit": {f"{names[s]}->{names[t]}": {"st": fits_st[s][t].to_dict(), "ss": fits_ss[s][t].to_dict()} for s, t in pair},
        "groups": groups,
        "robust_accuracy": robust,
        "selection": {"select_index": test_index[select].tolist(), "evaluation_index": test_index[held].tolist(),
                      "note": "indices into the test split; 'selected' is chosen from transfer counts and clean accuracies "
                              "on select_index, every robust accuracy is measured on evaluation_index"},
        "seconds": round(time.perf_counter() - start, 1),
    }
    if out is not None:
        write_json(os.path.join(out, "results.json"), results)
        write_npz(os.path.join(out, "transfer.npz"), eps=sweep, labels=labels, clean_predictions=clean, predictions=preds,
                  n_st=n_st, n_ss=n_ss, pool=pool, transfer_matrix=metric, names=np.asarray(names))
        transfer_heatmap(metric, names, os.path.join(out, "transfer_matrix.png"),
                         f"{dataset}: fitted N_s->t / N_s->s at eps={metric_eps:.4g} ({attack_name}, {steps}x{step})")
        fit_curves(sweep, n_st, fits_st, names, os.path.join(out, "transfer_fits.png"), metric_eps)
    return results
