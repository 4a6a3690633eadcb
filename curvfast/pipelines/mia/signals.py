"""Per-(model, sample, view) membership signals.

For model m, sample i with label y_i and view v (the image itself, or its horizontal flip):

- ``loss``: cross-entropy ℓ = −log p_y.
- ``conf``: true-class logit-scaled confidence φ = log(p_y / (1 − p_y)) (Carlini et al., LiRA),
  computed from the logits as z_y − logsumexp_{c≠y} z_c, which stays finite and exact where
  p_y rounds to 1 (no log(1 − p_y) of a rounded probability).
- ``maxconf``: the logit-scaled **maximum** probability log(p_max / (1 − p_max)), whatever the label, computed
  the same stable way: the signal of the published "Carlini et al." baseline (``prob`` + ``logit_scale`` in
  Curvature Clues' ``precompute_scores/precompute_cifar10_scores.py`` and notebooks), read by ``lira_published``.
- ``mentr``: Song & Mittal's modified entropy
  Mentr = −(1 − p_y) log p_y − Σ_{c≠y} p_c log(1 − p_c), low for confidently right predictions;
  log(1 − p_c) is taken as log(−expm1(log p_c)), and for the most probable class as
  logsumexp_{k≠c} z_k − logsumexp z, so it stays finite where p_c rounds to 1.
- ``curv_<estimator>``: the input-loss curvature of ℓ by any estimator registered in
  ``curvfast.curvature.METHODS`` (read when asked: :func:`curvature_signals`), e.g.
  ``curv_exact``: tr(H), the exact input-Hessian trace (white box; exact for piecewise-linear nets;
  README, "Why it is fast and exact"); ``curv_zo``: the Curvature Clues zero-order estimator from
  loss values only (black box), published h = 1e-3, n = 10 probes, h in [0, 1] pixel units (``h_units=
  "normalized"``: in the units of the model's input normalisation, as the published code perturbs the
  normalised image: a step of h·std_c per channel c in pixel units, divided by 4h); ``curv_fd``: Garg et al.'s finite
  difference of gradients. These three are the default set (:data:`SIGNALS`).

Random probes are keyed by (seed, dataset index, probe index), so a sample's probes are the
same for every model and view: the signal differences between models are the models'.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import curvfast.curvature as curvature
from curvfast.curvature import DEFAULT_PROBES, input_curvature
from curvfast.errors import ConfigError, DataError, UnknownNameError

__all__ = ["SIGNALS", "OUTPUT_SIGNALS", "H_UNITS", "curvature_signals", "signal_choices", "VIEWS", "apply_view", "logit_confidence",
           "modified_entropy", "model_signals", "compute_signals"]

OUTPUT_SIGNALS = ("loss", "conf", "maxconf", "mentr")  # read from the logits
H_UNITS = ("pixel", "normalized")
SIGNALS = OUTPUT_SIGNALS + ("curv_exact", "curv_zo", "curv_fd")  # the default set: the estimators of the papers


def curvature_signals() -> dict[str, str]:
    """``{signal: estimator}``: ``curv_<name>`` for every estimator in ``curvfast.curvature.METHODS`` now."""
    return {f"curv_{method}": method for method in curvature.METHODS}


def signal_choices() -> tuple[str, ...]:
    """Every membership signal that can be computed now: :data:`OUTPUT_SIGNALS`, then one per estimator."""
    return OUTPUT_SIGNALS + tuple(curvature_signals())
VIEWS = ("identity", "hflip")
FLIP_SAFE = ("cifar10", "cifar100", "imagefolder")  # natural images; flipping a digit or a letter changes its meaning


def apply_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """``identity`` or ``hflip`` (mirror the last axis) of a batch (B, C, H, W)."""
    if view == "identity":
        return x
    if view == "hflip":
        return torch.flip(x, dims=(-1,))
    raise UnknownNameError(f"view must be one of {VIEWS} (got {view!r})")


def logit_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """φ = log(p_y / (1 − p_y)) = z_y − logsumexp_{c≠y} z_c, per sample (B,)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - torch.logsumexp(others, dim=1)


def modified_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mentr = −(1 − p_y) log p_y − Σ_{c≠y} p_c log(1 − p_c) (Song & Mittal 2021), per sample (B,)."""
    log_p = torch.log_softmax(logits, dim=1)
    p = log_p.exp()
    log_1mp = torch.log(-torch.expm1(log_p))
    top = logits.argmax(1, keepdim=True)  # the one class that can have p_c ≥ 1/2: log(1 − p_c) from the other logits
    log_1mp = log_1mp.scatter(1, top, log_p.gather(1, top) - logit_confidence(logits, top.squeeze(1))[:, None])
    true = torch.zeros_like(p, dtype=torch.bool).scatter(1, y[:, None], True)
    terms = torch.where(true, -(1 - p) * log_p, -p * log_1mp)
    return terms.sum(1)


def _check_names(names, allowed, what):
    names = tuple(names)
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ConfigError(f"{what} must be a non-empty subset of {allowed} (got {list(names)})")
    return names


@torch.no_grad()
def _output_signals(model: nn.Module, x, y):
    logits = model(x)
    top = logits.argmax(1)
    return {"loss": F.cross_entropy(logits, y, reduction="none"), "conf": logit_confidence(logits, y),
            "maxconf": logit_confidence(logits, top), "mentr": modified_entropy(logits, y), "correct": top == y}


def _normalized_zo(model, x, y, normalization, **kwargs):
    """zo with its step in normalised units: the loss as a function of z = (x − mean) / std (the published code's
    input), so a probe of size h in z is h·std_c in pixel units; the value is that of the published estimator."""
    mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1) for v in normalization)

    def loss_of_z(z, labels):
        with torch.no_grad():
            return F.cross_entropy(model(z * std + mean), labels, reduction="none")

    return input_curvature(loss_of_z, (x - mean) / std, y, method="zo", **kwargs)


def _batch_signals(model, x, y, ids, signals, views, probes, seed, normalization=None):
    """``{name: (B, V)}`` and the (B,) correctness of the plain image, for one batch on the model's device."""
    out, correct, estimators = {}, None, curvature_signals()
    for view in views:
        xv = apply_view(x, view)
        values = _output_signals(model, xv, y)
        if view == "identity":
            correct = values["correct"]
        for name in signals:
            if name in estimators:  # probes for the random estimators only
                method = estimators[name]
                kwargs = dict(probes=probes if method in DEFAULT_PROBES else None, seed=seed, sample_ids=ids)
                if method == "zo" and normalization is not None:
                    values[name] = _normalized_zo(model, xv, y, normalization, **kwargs).value
                else:
                    values[name] = input_curvature(model, xv, y, method=method, **kwargs).value
            out.setdefault(name, []).append(values[name])
    if correct is None:
        with torch.no_grad():
            correct = model(x).argmax(1) == y
    return {name: torch.stack(v, 1) for name, v in out.items()}, correct


def compute_signals(
    models,
    data,
    *,
    signals=SIGNALS,
    views=("identity",),
    batch_size: int = 256,
    probes: int = 10,
    seed: int = 0,
    indices=None,
    device: str | torch.device = "cpu",
    progress: bool | None = False,
    zo_normalization: tuple | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every model's signals in one streamed pass over ``data``: ``({name: (M, N, V) float64}, correct (M, N))``.

    ``data``: a map-style dataset of ``(image, label)`` (read in order in batches of ``batch_size``)
    or an iterable of ``(x, y)`` batches in sample order (a DataLoader without shuffling). Only one
    batch and the (M, N, V) results are held in memory. ``correct[m, i]``: model m classifies the
    plain image i right. ``indices`` (default ``0..N-1``) are the samples' dataset indices that key
    the random probes of the random estimators (``curv_zo``, ``curv_fd``, ...). Models run on ``device`` in eval mode (their
    mode is restored; they stay on ``device``). ``zo_normalization`` ``(mean, std)`` per channel: ``curv_zo`` takes
    its step in those normalised units (the published code's; None: [0, 1] pixel units).
    """
    from tqdm.auto import tqdm

    signals = _check_names(signals, signal_choices(), "signals")
    views = _check_names(views, VIEWS, "views")
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=batch_size)
    device = torch.device(device)
    modes = [m.training for m in models]
    models = [m.to(device).eval() for m in models]
    rows: list[dict] = [{name: [] for name in signals} | {"correct": []} for _ in models]
    start = 0
    total = len(data) * len(models) if hasattr(data, "__len__") else None
    bar = tqdm(total=total, desc=f"signals ({len(models)} models)", unit="model-batch",
               disable=not progress if progress is not None else None)
    try:
        for x, y in data:
            x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
            ids = torch.arange(start, start + len(y)) if indices is None else torch.as_tensor(indices[start:start + len(y)])
            if len(ids) != len(y):
                raise DataError(f"indices has {len(indices)} entries but data holds more samples")
            start += len(y)
            for row, model in zip(rows, models):
                values, correct = _batch_signals(model, x, y, ids, signals, views, probes, seed, zo_normalization)
                for name in signals:
                    row[name].append(values[name].double().cpu().numpy())
                row["correct"].append(correct.cpu().numpy())
                bar.update()  # per model and batch: one batch of M shadow models is minutes at paper scale
    finally:
        bar.close()
        for model, mode in zip(models, modes):
            model.train(mode)
    if indices is not None and start != len(indices):
        raise DataError(f"indices has {len(indices)} entries but data holds {start} samples")
    out = {name: np.stack([np.concatenate(row[name]) for row in rows]) for name in signals}
    return out, np.stack([np.concatenate(row["correct"]) for row in rows])


def model_signals(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, **kwargs) -> dict[str, np.ndarray]:
    """One model's signals ``{name: (N, V)}`` over the tensors ``images`` (N, C, H, W) and ``targets``;
    ``kwargs`` go to :func:`compute_signals`."""
    signals, _ = compute_signals([model], TensorDataset(images, targets), **kwargs)
    return {name: v[0] for name, v in signals.items()}
