"""The DP-SGD sweep and the bounds of Ravikumar et al., "Unveiling Privacy, Memorization, and Input
Curvature Links" (ICML 2024).

For each privacy budget ε (and once without DP) ``models`` models are trained with DP-SGD on
random subsets (each sample IN with probability ``fraction``) by
:func:`curvfast.pipelines.common.dp.train_dp_model`, Unveiling's recipe: RMSprop, lr 1e-3,
per-sample gradients clipped to norm 1, Poisson sampling, noise calibrated by Opacus's RDP
accountant to reach (ε, δ=1e-5) after the given epochs. The no-DP reference uses the same model,
optimizer and epochs without clipping or noise. Per ε:

- accuracy: mean test accuracy of the models;
- mean_curvature: mean input-loss curvature of each model's training samples (members);
- mean_memorization: mean over samples of the Feldman estimate mem(i) from these models;
- mia_auroc: a loss-threshold membership attack (score −loss, members positive), AUROC per model
  averaged over models (also ``mia_auroc_curvature`` with score −curvature).

BatchNorm mixes samples in a batch, which per-sample clipping cannot account for, so every model
has its BatchNorm replaced by GroupNorm (:func:`curvfast.pipelines.common.dp.dp_compatible`);
GroupNorm is smooth, so ``method="auto"`` estimates curvature of such models with ``deflated``
while the default MLP stays piecewise linear and gets the exact trace.

Unveiling's bounds, with g(ε) = 1 − e^{−ε} and m the training-set size:
  (1) mem ≤ g(ε);  (2) E[Curv] ≤ L(m+1)·g(ε) + c2;  (3) |mem| ≤ E[Curv]/L + c1.
The constants are unknown, so they are fitted: A = L(m+1) and c2 by least squares of mean
curvature on g(ε) over the DP runs (``curvature_fit``), then c2 raised by the largest residual so
the curve bounds every point (``curvature_envelope``); L = A/(m+1); c1 is the smallest constant
making (3) hold at every ε (``form="linear"``, ours). ``form="published"`` fits instead the curve the authors
fit in ``curv_privacy.ipynb`` (``scipy.optimize.curve_fit`` from their starting point ``PUBLISHED_FIT_START``):

    E[Curv] ≈ (a + b·e^{−cε})·d·(1 − e^{−ε}) + e,

five free constants (a and d enter only as a product), which follows the points more closely but is no longer
the bound's shape A·g(ε) + c2 (``published_curvature_fit``).

Designs (``design``): ``"subsets"`` (ours) keeps each sample with probability ``fraction`` in every model;
``"published"`` is Unveiling's memorization design (``create_index_for_private_mem.py``): every model trains on
a random ``fraction`` (published 0.7) of the samples outside the ``top`` most memorized ones plus a random half of
``top`` (published: the 500 of 50,000 CIFAR-100 samples with the highest Feldman-Zhang score; here ``top`` comes from
stage 1's estimate), and the memorization of a budget is the published statistic of ``calc_private_memorization.py``:
the mean over ``top`` of |(1/M) Σ_m p_m(y_i|x_i)·IN_mi − (1/M) Σ_m p_m(y_i|x_i)·(1 − IN_mi)|, p_m the softmax
probability of the label (``mean_memorization_top_k``; both sums are divided by the number of models M, not by
the number of IN / OUT models, as published).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from curvfast.errors import ConfigError
from curvfast.metrics import auroc
from curvfast.pipelines.common.data import PackedDataset, as_float
from curvfast.pipelines.common.dp import train_dp_model
from curvfast.pipelines.memorization.feldman import label_predictions, memorization_scores, random_subsets
from curvfast.pipelines.memorization.trajectory import curvature_per_model

__all__ = ["dp_sweep", "fit_unveiling_bounds", "published_subsets", "published_top_k_memorization",
           "PUBLISHED_EPSILONS", "PUBLISHED_FIT_START", "DESIGNS", "BOUND_FORMS", "published_curve"]

#: ε grid of the published curvature-vs-privacy study (``scripts/create_privacy_vs_curve_dp_train_jobs.sh``)
PUBLISHED_EPSILONS = (1.0, 5.0, 10.0, 15.0, 25.0, 30.0, 35.0, 45.0, 50.0, 55.0, 60.0, 65.0, 70.0, 75.0, 85.0, 90.0,
                      95.0, 100.0)
#: curve_fit's starting point (a, b, c, d, e) in the published ``curv_privacy.ipynb``
PUBLISHED_FIT_START = (1.22966216, 0.45078766, 0.01254502, 0.00836795, 0.0)
DESIGNS = ("subsets", "published")
BOUND_FORMS = ("linear", "published")


def published_curve(eps, a, b, c, d, e):
    """The authors' fitted curve (a + b·e^{−cε})·d·(1 − e^{−ε}) + e (``curv_privacy.ipynb``)."""
    return (a + b * np.exp(-c * eps)) * d * (1.0 - np.exp(-eps)) + e


def published_subsets(models: int, samples: int, top: np.ndarray, fraction: float = 0.7, seed: int = 0) -> np.ndarray:
    """(models, samples) membership of Unveiling's memorization design: per model a random ``fraction`` of the
    samples outside ``top`` and a random half (``len(top) // 2``) of ``top``.

    Args:
        models: number of models M.
        samples: training-set size N.
        top: indices of the most memorized samples.
        fraction: the share of the other samples each model trains on (published 0.7).
        seed: seeds the draws.

    Returns:
        A boolean (M, N) matrix.
    """
    top = np.asarray(top, dtype=np.int64)
    rest = np.setdiff1d(np.arange(samples), top)
    rng = np.random.default_rng(seed)
    keep = np.zeros((models, samples), dtype=bool)
    for m in range(models):
        keep[m, rng.permutation(rest)[: int(fraction * rest.size)]] = True
        keep[m, rng.permutation(top)[: top.size // 2]] = True
    return keep


def published_top_k_memorization(p_label: np.ndarray, keep: np.ndarray, top: np.ndarray) -> float:
    """The published memorization of a budget (see the module docstring): mean over ``top`` of
    |mean_m p·IN − mean_m p·(1 − IN)|, ``p_label`` and ``keep`` (M, N)."""
    p, member = np.asarray(p_label)[:, top], np.asarray(keep, dtype=float)[:, top]
    return float(np.abs((p * member).mean(0) - (p * (1.0 - member)).mean(0)).mean())


def dp_sweep(make_model, images, targets, test_data, *, epsilons=(1, 2, 4, 8, 16, 50), models: int = 8,
             fraction: float = 0.5, delta: float = 1e-5, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
             max_grad_norm: float = 1.0, method: str = "auto", probes: int | None = None, step: float | None = None,
             seed: int = 0, design: str = "subsets", top: np.ndarray | None = None, score_batch_size: int = 512,
             device: str | torch.device = "cpu", progress: bool | None = False) -> list[dict]:
    """One row per ε (then ``epsilon: None`` for no DP); see the module docstring for the columns and ``design``.
    ``images``/``targets``: the training tensors; ``test_data``: a dataset of ``(image, label)``, streamed;
    ``top``: the most memorized samples' indices (``design="published"``); ``step``: fd/zo's h."""
    from tqdm.auto import tqdm

    if design not in DESIGNS:
        raise ConfigError(f"design must be one of {', '.join(DESIGNS)} (got {design!r})")
    if design == "published":
        if top is None or len(top) < 2:
            raise ConfigError("design='published' needs `top`, at least 2 most-memorized sample indices")
        keep = published_subsets(models, len(images), top, fraction, seed)
    else:
        keep = random_subsets(models, len(images), fraction, seed)
    settings = list(epsilons) + [None]
    rows = []
    bar = tqdm(total=len(settings) * models, desc="DP-SGD models", unit="model", disable=not progress if progress is not None else None)
    for eps in settings:
        trained, spent = [], []
        for m in range(models):
            member = torch.from_numpy(keep[m])
            model, used = train_dp_model(make_model, as_float(images[member]), targets[member], epsilon=math.inf if eps is None else eps,
                                         delta=delta, epochs=epochs, batch_size=batch_size, lr=lr,
                                         max_grad_norm=max_grad_norm, seed=seed + 1000 * m, batchnorm="groupnorm",
                                         device=device)
            trained.append(model)
            spent.append(used)
            bar.update(1)
        curv, loss = curvature_per_model(trained, PackedDataset(images, targets), method=method, probes=probes, seed=seed,
                                         batch_size=score_batch_size, device=device, step=step)
        correct, p_label = label_predictions(trained, images, targets, device=device)
        mem = memorization_scores(correct, keep)
        rows.append({
            "epsilon": eps, "spent_epsilon": None if eps is None else float(np.mean(spent)), "delta": delta if eps else None,
            "accuracy": float(label_predictions(trained, test_data, device=device)[0].mean()),
            "train_accuracy": float(correct[keep].mean()),
            "mean_curvature": float(curv[keep].mean()), "mean_curvature_nonmembers": float(curv[~keep].mean()),
            "mean_memorization": float(np.nanmean(mem.mem)),
            "mia_auroc": float(np.mean([auroc(-loss[m], keep[m], positive=True) for m in range(models)])),
            "mia_auroc_curvature": float(np.mean([auroc(-curv[m], keep[m], positive=True) for m in range(models)])),
            "models": models, "train_size": float(keep.sum(1).mean()),
            "mean_memorization_top_k": None if top is None else published_top_k_memorization(p_label, keep, top),
        })
    bar.close()
    return rows


def _r2(y: np.ndarray, fitted: np.ndarray) -> float | None:
    resid = y - fitted
    return 1.0 - float(resid @ resid) / float(((y - y.mean()) ** 2).sum()) if np.ptp(y) > 0 else None


def _published_fit(eps: np.ndarray, curv: np.ndarray) -> dict:
    """The authors' curve (module docstring) by least squares from their starting point."""
    from scipy.optimize import curve_fit

    if eps.size < len(PUBLISHED_FIT_START):
        return {"note": f"the published form has 5 constants: need at least 5 DP budgets (got {eps.size})"}
    try:
        params, _ = curve_fit(published_curve, eps, curv, p0=PUBLISHED_FIT_START, maxfev=20_000)
    except RuntimeError as err:  # no convergence from the published start on this scale
        return {"note": f"curve_fit did not converge from the published start: {err}"}
    return {"form": "(a + b exp(-c eps)) d (1 - exp(-eps)) + e", **dict(zip("abcde", map(float, params))),
            "r2": _r2(curv, published_curve(eps, *params))}


def fit_unveiling_bounds(rows: list[dict], form: str = "linear") -> dict:
    """Fit the constants of Unveiling's bounds to the DP rows (see the module docstring); ``form="published"``
    adds the authors' five-constant curve as ``published_curvature_fit``."""
    if form not in BOUND_FORMS:
        raise ConfigError(f"form must be one of {', '.join(BOUND_FORMS)} (got {form!r})")
    dp = [r for r in rows if r["epsilon"] is not None]
    if len(dp) < 2:
        return {"note": "need at least 2 DP budgets to fit the bounds"}
    eps = np.array([r["epsilon"] for r in dp], dtype=np.float64)
    g = 1.0 - np.exp(-eps)
    curv = np.array([r["mean_curvature"] for r in dp])
    mem = np.array([r["mean_memorization"] for r in dp])
    m = float(np.mean([r["train_size"] for r in dp]))
    design = np.stack([g, np.ones_like(g)], 1)
    (a, c2), *_ = np.linalg.lstsq(design, curv, rcond=None)
    resid = curv - (a * g + c2)
    r2 = _r2(curv, a * g + c2)
    out = {
        "g": "1 - exp(-epsilon)", "train_size_m": m, "form": form,
        "memorization_bound": [{"epsilon": float(e), "mean_memorization": float(v), "bound": float(b), "holds": bool(v <= b)}
                               for e, v, b in zip(eps, mem, g)],
        "curvature_fit": {"A": float(a), "c2": float(c2), "r2": r2, "L": float(a) / (m + 1)},
        "curvature_envelope": {"A": float(a), "c2": float(c2 + resid.max())},
    }
    if a > 0:
        lip = float(a) / (m + 1)
        out["mem_curvature_bound"] = {"L": lip, "c1": float(np.max(np.abs(mem) - curv / lip))}
    else:
        out["mem_curvature_bound"] = {"note": "fitted A <= 0: curvature does not grow with g(epsilon) here, L undefined"}
    if form == "published":
        out["published_curvature_fit"] = _published_fit(eps, curv)
    return out
