"""The ``curvfast transfer`` study (:class:`Config`, :func:`run`): train a zoo of models, attack each
one over an eps sweep, count transfers, fit N(eps), build the transfer matrix, select and attack
majority-vote ensembles (TREND: Ravikumar, Kodge, Garg and Roy, "TREND: Transferability-Based
Robust ENsemble Design", IEEE TAI 2022). The metric of a pair is N_s->t(eps) / N_s->s(eps), the
fitted saturating curves N(eps) = a(1 - e^{b eps}) of the counts of attacks made on s that fool t.

Every member's input curvature on the attacked images is set beside its transferability
(:mod:`~curvfast.pipelines.transfer.curvature`).

Outputs in ``out``: ``results.json`` (settings, models, transfer_matrix, metric, fit, groups, curvature,
robust_accuracy, ensembles), ``transfer.npz`` (raw predictions and counts, per-image curvature),
``transfer_matrix.png``, ``transfer_fits.png``, ``curvature_transfer.png`` and ``models/*.pt``
(weights-only checkpoints, reused by a rerun).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from torch.utils.data import Subset

from curvfast.attacks import ENSEMBLE_RULES, SINGLE_ATTACKS, attack, ensemble_pgd, majority_vote
from curvfast import parse_device
from curvfast.errors import ConfigError
from curvfast.io import write_npz
from curvfast.pipelines.common.contract import check_model, config_dict, option, run_folder, write_results
from curvfast.pipelines.common.data import DataOptions, load_split, loader
from curvfast.pipelines.transfer.ensemble import select_members
from curvfast.pipelines.transfer.curvature import curvature_vs_transfer, member_curvature
from curvfast.pipelines.transfer.figures import curvature_scatter, fit_curves, transfer_heatmap
from curvfast.pipelines.transfer.members import MemberSpec, load_or_train, parse_spec
from curvfast.pipelines.transfer.transfer import (
    SELF_COUNTS, denominator_counts, pair_counts, pair_groups, predictions_under_attack, transfer_matrix,
)

__all__ = ["Config", "PRESETS", "PUBLISHED", "protocol", "run", "summary"]

# TREND's published protocol where curvfast's default differs (docs/transfer.md, Deviations): trans.py attacks
# each source from the clean image ('random': False), fit_calc_TM.py divides by the source's own count over
# the images it gets right, and trans.py / train.py quantise the normalised image, Q(normalization_function(x)).
PUBLISHED = {"random_start": False, "self_count": "source", "quantize_after_normalize": True}
OURS = {"random_start": True, "self_count": "pair", "quantize_after_normalize": False}

_TREND_ZOO = tuple(f"cifar_resnet18{suffix}" for suffix in ("", "@1", "@2", "+adam", "+in1", "+in2", "+halftone", "+w2a2"))
PRESETS = {
    # the tests' settings: seconds on a laptop CPU
    "smoke": {"models": ("small_cnn", "small_cnn@1", "small_cnn+in1"), "eps": ("0", "16/255", "48/255"),
              "metric_eps": "16/255", "robust_eps": ("32/255",), "steps": 2, "step": 0.05, "epochs": 1, "subset_size": 16,
              "ensemble_size": 2, "accuracy_margin": 1.0},
    # TREND (Ravikumar et al. 2022) on CIFAR-10, from the authors' code (purdue-nrl/TREND): a ResNet-18 zoo
    # differing in one factor at a time plus an architecture mismatch, the published protocol (PUBLISHED), PGD
    # L-inf 40 x 0.01 (the default) on figure5.sh's sweep 0.02..0.08, metric at 8/255, every test image,
    # README.md's 350 epochs at batch 32, load_dataset.py's CIFAR-10 mean/std, crop + flip. Ours (the
    # training optimiser's lr and schedule, the VGG variant) is listed in docs/transfer.md.
    "paper": {"dataset": "cifar10", "models": (*_TREND_ZOO, "vgg11_bn"), "metric_eps": "8/255", "subset_size": None,
              "eps": ("0.02", "0.04", "0.06", "0.08"), "epochs": 350, "batch_size": 32, "published": True,
              "normalize": "0.4914,0.4822,0.4465/0.2023,0.1994,0.2010", "augment": "crop-flip", "device": "cuda"},
}


@dataclass
class Config(DataOptions):
    """The study's settings (defaults: the published PGD recipe on 8x8 digits). Radii are numbers or
    fractions such as ``"8/255"`` (strings, so that the command line takes fractions; floats work too)."""

    models: tuple[str, ...] = option(
        ("small_cnn", "small_cnn@1", "small_cnn@2", "small_cnn+adam", "small_cnn+in1", "small_cnn+in2",
         "small_cnn+halftone", "small_cnn+w2a2", "mlp2"),
        "model specs arch[+in<1-8>|+halftone|+halftonefs|+w<k>a<k>|+adam][@seed]")
    attack: str = option("pgd", "attack on each source model", choices=SINGLE_ATTACKS)
    eps: tuple[str, ...] = option(tuple(f"{k}/255" if k else "0" for k in (0, 2, 4, 8, 16, 24, 32, 48, 64)),
                                  "attack radii of the sweep that the transfer counts are fitted on")
    metric_eps: str = option("8/255", "radius at which the fitted ratio N_s->t / N_s->s is reported")
    robust_eps: tuple[str, ...] = option(("8/255", "32/255"), "radii of the robust accuracies (added to the sweep)")
    steps: int = option(40, "attack steps")
    step: float = option(0.01, "attack step size")
    epochs: int = option(15, "training epochs of each network")
    batch_size: int = option(64)
    score_batch_size: int = option(512, "lower it for large models or inputs")
    subset_size: int | None = option(200, "of the test images")
    ensemble_size: int = option(3, "members of the automatic ensembles")
    ensemble: str = option("", "extra ensembles NAME=MODEL,MODEL,... (several: separated by ;)")
    accuracy_margin: float = option(0.03, "selected ensemble members are within this of the best clean accuracy")
    random_start: bool | None = option(
        None, "start each single-model attack of the sweep at a uniform random point of the eps-ball; unset: yes, "
              "or no with --published (TREND's trans.py attacks from the clean image; ensemble attacks always start "
              "at random, as its attack_ensemble.py does)")
    self_count: str | None = option(
        None, "denominator of the metric: pair = N_s->s over the images both s and t classify correctly, source = "
              "N_s->s over the images s classifies correctly (TREND's fit_calc_TM.py); unset: pair, or source with "
              "--published", choices=SELF_COUNTS)
    quantize_after_normalize: bool | None = option(
        None, "input quantisers act on the normalised image (TREND's Q(normalization_function(x))) instead of the "
              "raw image in [0, 1]; unset: no, or yes with --published")
    published: bool = option(
        False, "TREND's published protocol: --no-random-start --self-count source --quantize-after-normalize "
               "(each of them given explicitly still wins)")
    seed: int = option(0)
    device: str = option("cpu")
    quiet: bool = option(False)

    def validate(self) -> None:
        """Refuse settings that the study would only reject after training."""
        _resolve(self)


def _radii(values, name: str) -> list[float]:
    """Radii given as numbers or as strings (decimals or fractions such as ``8/255``)."""
    if isinstance(values, (str, int, float)):
        values = [values]
    try:
        radii = [float(Fraction(v.strip() if isinstance(v, str) else v)) for v in values]
    except (ValueError, TypeError, ZeroDivisionError):
        raise ConfigError(f"{name} takes numbers or fractions such as 0,4/255,8/255 (got {list(values)})") from None
    if not radii:
        raise ConfigError(f"{name} is empty; give radii such as 0,4/255,8/255")
    return radii


def _parse_ensembles(text: str) -> dict[str, list[str]]:
    """``"NAME=MODEL,MODEL,...;NAME=..."`` -> {name: [model spec, ...]}."""
    out = {}
    for item in (i.strip() for i in text.split(";")):
        if not item:
            continue
        name, sep, members = item.partition("=")
        if not sep or not name.strip() or not members.strip():
            raise ConfigError(f"ensembles take NAME=MODEL,MODEL,... such as 'mine=small_cnn,mlp2,small_cnn+in1' (got {item!r})")
        out[name.strip()] = [m.strip() for m in members.split(",") if m.strip()]
    return out


def _resolve(config: Config) -> dict:
    """The parsed settings: model specs, the sorted sweep (eps and robust_eps), radii, ensembles."""
    config.check_data_options()
    parse_device(config.device)
    specs = [parse_spec(m) for m in config.models]
    for spec in specs:  # before any member trains
        check_model(spec.arch)
    names = [s.name for s in specs]
    if len(set(names)) != len(names) or len(names) < 2:
        raise ConfigError(f"models must name at least two distinct specs (got {names})")
    if config.attack not in SINGLE_ATTACKS:
        raise ConfigError(f"attack must be one of {SINGLE_ATTACKS} (got {config.attack!r})")
    if min(config.steps, config.epochs, config.ensemble_size, config.batch_size, config.score_batch_size) < 1:
        raise ConfigError(f"steps, epochs, ensemble_size, batch_size and score_batch_size must be >= 1 (got {config.steps}, "
                          f"{config.epochs}, {config.ensemble_size}, {config.batch_size}, {config.score_batch_size})")
    if config.ensemble_size > len(names):
        raise ConfigError(f"--ensemble-size={config.ensemble_size} is larger than the zoo of {len(names)} models "
                          f"{names}; an ensemble draws distinct members: pass --ensemble-size <= {len(names)}, or "
                          "add models")
    if config.subset_size is not None and (type(config.subset_size) is not int or config.subset_size < 2):
        raise ConfigError(f"--subset-size takes an integer >= 2 (got {config.subset_size!r}); unset it to attack every test image")
    eps, robust_eps = _radii(config.eps, "eps"), _radii(config.robust_eps, "robust_eps")
    metric_eps = _radii(config.metric_eps, "metric_eps")
    if len(metric_eps) != 1:
        raise ConfigError(f"metric_eps takes one radius (got {config.metric_eps!r})")
    ensembles = _parse_ensembles(config.ensemble)
    for ens_name, members in ensembles.items():
        unknown = [m for m in members if parse_spec(m).name not in names]
        if unknown or not members:
            raise ConfigError(f"ensemble {ens_name!r}: members {unknown or members} are not among the models {names}")
    return {"specs": specs, "names": names, "sweep": _check_eps(eps, metric_eps[0], robust_eps), "metric_eps": metric_eps[0],
            "robust_eps": robust_eps, "ensembles": ensembles, "protocol": protocol(config)}


def protocol(config: Config) -> dict:
    """The effective ``random_start``, ``self_count`` and ``quantize_after_normalize``: each as given, or unset
    the published value (:data:`PUBLISHED`) under ``published`` and curvfast's otherwise."""
    if config.self_count is not None and config.self_count not in SELF_COUNTS:
        raise ConfigError(f"self_count must be one of {SELF_COUNTS} (got {config.self_count!r})")
    base = PUBLISHED if config.published else OURS
    return {key: base[key] if getattr(config, key) is None else getattr(config, key) for key in base}


def _finite(value):
    """JSON-safe: NaN/inf -> None, recursively for lists."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_finite(v) for v in value]
    value = float(value)
    return value if math.isfinite(value) else None


def _tensors(dataset, n: int | None, seed: int, options: Config) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Images, labels and their indices in ``dataset`` (all, or ``n`` drawn at random): only the chosen
    images are read, so memory grows with ``n``, not with the test split."""
    keep = torch.arange(len(dataset))
    if n is not None:
        if not 2 <= n <= len(dataset):
            raise ConfigError(f"--subset-size must be in [2, {len(dataset)}] (the test split's size) (got {n})")
        keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    x, y = map(torch.cat, zip(*loader(Subset(dataset, keep.tolist()), options, batch_size=options.score_batch_size)))
    return x, y, keep.numpy()


def _selection_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint random halves of range(n): (selection, evaluation), each sorted."""
    order = np.random.default_rng([seed, 8]).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def _check_eps(eps, metric_eps: float, robust_eps) -> np.ndarray:
    values = np.asarray(sorted(set(float(e) for e in (*eps, *robust_eps))))
    if (values < 0).any():
        raise ConfigError(f"eps values must be >= 0 (got {list(eps)} and robust eps {list(robust_eps)})")
    if (values > 0).sum() < 2:
        raise ConfigError("the eps sweep needs at least two values > 0 to fit N(eps) = a(1 - e^{b eps})")
    if not metric_eps > 0:
        raise ConfigError(f"metric_eps must be > 0 (got {metric_eps})")
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
    wanted = [MemberSpec(base.arch), MemberSpec(base.arch, input_bits=1), MemberSpec(base.arch, input_bits=2),
              MemberSpec(base.arch, halftone="sharpen")]
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


def _ensemble_robustness(members, x, y, radii, transfers, rules, *, step, steps, seed, batch, bar) -> dict:
    """Majority-vote accuracy of ``members``: clean, under ``ensemble_pgd`` with each rule at each
    radius, under the strongest single-model transfer (``transfers[r]``: every zoo model's own
    attack at radius r), and the worst of those per radius."""

    @torch.no_grad()
    def vote_accuracy(inputs: torch.Tensor) -> float:
        votes = torch.cat([majority_vote([m(xb) for m in members]) for xb in inputs.split(batch)])
        return float((votes == y).float().mean())

    entry = {"clean": vote_accuracy(x)}
    for rule in rules:
        entry[rule] = []
        for radius in radii:
            adv = ensemble_pgd(members, x, y, rule=rule, eps=radius, step=step, steps=steps, seed=seed, batch_size=batch)
            entry[rule].append(vote_accuracy(adv))
            bar.update()
    entry["worst_single_source_transfer"] = [min(vote_accuracy(adv) for adv in advs) for advs in transfers]
    keys = (*rules, "worst_single_source_transfer")
    entry["worst_case"] = [min(entry[k][r] for k in keys) for r in range(len(radii))]
    return entry


def run(config: Config, out: str | None = None) -> dict:
    """Run the whole study, write ``out`` (see the module docstring) and return the results.

    The attack on each source is ``config.attack`` with ``steps`` steps of size ``step`` (PGD L-inf
    defaults: 40 x 0.01, as published); ``eps`` is the sweep for the counts (``robust_eps`` is added
    to it); ``ensembles`` adds named ensembles to the automatic ones.
    """
    resolved = _resolve(config)
    train_set, info = load_split(config, "train")
    test_set, _ = load_split(config, "test")  # a missing split is refused before the run folder is made
    with run_folder(out) as folder:
        return _study(config, resolved, (train_set, test_set, info), folder)


def _study(config: Config, resolved: dict, data: tuple, folder: str) -> dict:
    """The study of :func:`run` on ``data`` = (train split, test split, DatasetInfo), checkpoints and outputs in ``folder``."""
    from tqdm.auto import tqdm

    specs, names, sweep, robust_eps = resolved["specs"], resolved["names"], resolved["sweep"], resolved["robust_eps"]
    metric_eps, attack_name, proto = resolved["metric_eps"], config.attack, resolved["protocol"]
    steps, step, seed, device = config.steps, config.step, config.seed, config.device
    quiet = True if config.quiet else None  # None: tqdm shows bars on a terminal only
    start = time.perf_counter()
    train_set, test_set, info = data
    x, y, test_index = _tensors(test_set, config.subset_size, seed, config)
    x, y = x.to(device), y.to(device)
    nets, model_info, timings = [], [], {}
    for spec in tqdm(specs, desc="train", disable=quiet):
        began = time.perf_counter()
        net, minfo = load_or_train(spec, train_set, test_set, info.num_classes, epochs=config.epochs, dataset=config.dataset,
                                   folder=os.path.join(folder, "models"), device=device, options=config,
                                   batch_size=config.batch_size, quantize_after_normalize=proto["quantize_after_normalize"])
        for p in net.parameters():
            p.requires_grad_(False)
        nets.append(net)
        model_info.append({"name": spec.name, **spec.factors(), **minfo, "seconds": round(time.perf_counter() - began, 2)})

    batch = config.score_batch_size
    began = time.perf_counter()
    curvature = [member_curvature(net, x, y, batch, seed) for net in tqdm(nets, desc="input curvature", disable=quiet)]
    timings["curvature"] = time.perf_counter() - began

    began = time.perf_counter()
    clean = predictions_under_attack(nets, [x], batch)[0]                # (M, N)
    labels = y.cpu().numpy()
    correct = clean == labels
    robust_index = [int(np.argmin(abs(sweep - e))) for e in robust_eps]
    preds = np.empty((len(nets), len(sweep), len(nets), len(labels)), dtype=np.int64)
    kept: dict[tuple[int, int], torch.Tensor] = {}
    bar = tqdm(total=len(nets) * len(sweep), desc=f"{attack_name} sweep", disable=quiet)
    for s, net in enumerate(nets):
        for e, radius in enumerate(sweep):
            adv = attack(net, x, y, name=attack_name, eps=float(radius), step=step, steps=steps, seed=seed, batch_size=batch,
                         random_start=proto["random_start"])
            preds[s, e] = predictions_under_attack(nets, [adv], batch)[0]
            if e in robust_index:
                kept[s, e] = adv
            bar.update()
    bar.close()
    timings["attack_sweep"] = time.perf_counter() - began

    n_st, n_ss, pool = pair_counts(correct, preds != labels)
    self_count = proto["self_count"]
    metric, fits_st, fits_ss = transfer_matrix(sweep, n_st, n_ss, pool, metric_eps, self_count)
    n_den, pool_den = denominator_counts(n_st, n_ss, pool, self_count)
    at = int(np.argmin(abs(sweep - metric_eps)))
    with np.errstate(invalid="ignore", divide="ignore"):
        empirical = n_st[:, :, at] / n_den[:, :, at]
    groups = {key: _summary([metric[p] for p in pairs]) | {"pairs": len(pairs)} for key, pairs in pair_groups(specs).items()}

    # the "selected" ensemble is chosen on one half of the test images (its transfer counts and clean
    # accuracies) and every robust accuracy is measured on the other half: selection never sees them
    select, held = _selection_split(len(labels), seed)
    metric_select = transfer_matrix(sweep, *pair_counts(correct[:, select], (preds != labels)[..., select]), metric_eps,
                                    self_count)[0]
    accuracy = correct[:, held].mean(1)
    ens = _default_ensembles(specs, metric_select, correct[:, select].mean(1), config.ensemble_size, config.accuracy_margin)
    ens.update({k: [names.index(parse_spec(m).name) for m in v] for k, v in resolved["ensembles"].items()})
    rules = ENSEMBLE_RULES if attack_name in ("pgd", "fgsm") else ()  # ensemble attacks are L-inf: not comparable with L2 radii
    robust = {
        "eps": [float(sweep[i]) for i in robust_index], "attack": attack_name, "ensemble_attacks": list(rules),
        "images": "evaluation half of the test images (index in results.selection)",
        "single": {names[s]: {"clean": float(accuracy[s]),
                              attack_name: [float((preds[s, e, s, held] == labels[held]).mean()) for e in robust_index]}
                   for s in range(len(nets))},
        "ensembles": {},
    }
    began = time.perf_counter()
    bar = tqdm(total=len(ens) * len(rules) * len(robust_index), desc="ensemble attacks", disable=quiet)
    for ens_name, idx in ens.items():
        entry = _ensemble_robustness(
            [nets[i] for i in idx], x[held], y[held], [float(sweep[e]) for e in robust_index],
            [[kept[s, e][held] for s in range(len(nets))] for e in robust_index], rules, step=step, steps=steps, seed=seed,
            batch=batch, bar=bar,
        )
        member_acc = [float(np.mean([robust["single"][names[i]][attack_name][r] for i in idx])) for r in range(len(robust_index))]
        robust["ensembles"][ens_name] = {"members": [names[i] for i in idx], f"mean_member_{attack_name}": member_acc, **entry}
    bar.close()
    timings["ensemble_attacks"] = time.perf_counter() - began

    pair = [(s, t) for s in range(len(names)) for t in range(len(names))]
    results = {
        "settings": config_dict(config) | {
            "models": names, "eps": sweep.tolist(), "metric_eps": metric_eps, "robust_eps": robust_eps,
            "empirical_eps": float(sweep[at]), "subset_size": len(labels), "ensembles": resolved["ensembles"],
            **proto, "torch": torch.__version__,
        },
        "models": model_info,
        "transfer_matrix": _finite(metric.tolist()),
        "transfer_matrix_empirical": _finite(empirical.tolist()),
        "metric": {f"{names[s]}->{names[t]}": _finite(metric[s, t]) for s, t in pair},
        "fit": {f"{names[s]}->{names[t]}": {"st": fits_st[s][t].to_dict(), "ss": fits_ss[s][t].to_dict()} for s, t in pair},
        "groups": groups,
        "curvature": curvature_vs_transfer(names, curvature, metric),
        "robust_accuracy": robust,
        "selection": {"select_index": test_index[select].tolist(), "evaluation_index": test_index[held].tolist(),
                      "note": "indices into the test split; 'selected' is chosen from transfer counts and clean accuracies "
                              "on select_index, every robust accuracy is measured on evaluation_index"},
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_npz(os.path.join(folder, "transfer.npz"), eps=sweep, labels=labels, clean_predictions=clean, predictions=preds,
              n_st=n_st, n_ss=n_ss, pool=pool, n_denominator=n_den, pool_denominator=pool_den, transfer_matrix=metric,
              names=np.asarray(names),
              curvature=np.stack([c["values"] for c in curvature]))
    transfer_heatmap(metric, names, os.path.join(folder, "transfer_matrix.png"),
                     f"{config.dataset}, {attack_name} {steps}x{step}\nfitted N_s->t / N_s->s at eps={metric_eps:.4g}")
    fit_curves(sweep, n_st, fits_st, names, os.path.join(folder, "transfer_fits.png"), metric_eps)
    curvature_scatter(results["curvature"], os.path.join(folder, "curvature_transfer.png"),
                      f"{config.dataset}: source curvature vs transferability at eps={metric_eps:.4g}")
    return write_results(folder, results)


def summary(results: dict) -> dict:
    """What ``curvfast transfer`` prints: the mean metric per group, each ensemble's clean and worst-case accuracy, seconds."""
    return {
        "seconds": results["seconds"],
        "groups_mean_metric": {k: v["mean_metric"] for k, v in results["groups"].items()},
        "curvature_vs_transfer": {k: results["curvature"]["correlation"][k] for k in ("spearman", "pearson")},
        "ensembles": {k: {r: v[r] for r in ("members", "clean", "worst_case")}
                      for k, v in results["robust_accuracy"]["ensembles"].items()},
    }
