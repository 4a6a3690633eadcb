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
making (3) hold at every ε.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from curvfast.metrics import auroc
from curvfast.pipelines.common.data import PackedDataset, as_float
from curvfast.pipelines.common.dp import train_dp_model
from curvfast.pipelines.memorization.feldman import label_predictions, memorization_scores, random_subsets
from curvfast.pipelines.memorization.trajectory import curvature_per_model

__all__ = ["dp_sweep", "fit_unveiling_bounds"]


def dp_sweep(make_model, images, targets, test_data, *, epsilons=(1, 2, 4, 8, 16, 50), models: int = 8,
             fraction: float = 0.5, delta: float = 1e-5, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3,
             max_grad_norm: float = 1.0, method: str = "auto", probes: int | None = None, seed: int = 0,
             score_batch_size: int = 512, device: str | torch.device = "cpu", progress: bool | None = False) -> list[dict]:
    """One row per ε (then ``epsilon: None`` for no DP); see the module docstring for the columns.
    ``images``/``targets``: the training tensors; ``test_data``: a dataset of ``(image, label)``, streamed."""
    from tqdm.auto import tqdm

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
                                         batch_size=score_batch_size, device=device)
        correct, _ = label_predictions(trained, images, targets, device=device)
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
        })
    bar.close()
    return rows


def fit_unveiling_bounds(rows: list[dict]) -> dict:
    """Fit the constants of Unveiling's bounds to the DP rows (see the module docstring)."""
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
    r2 = 1.0 - float(resid @ resid) / float(((curv - curv.mean()) ** 2).sum()) if np.ptp(curv) > 0 else None
    out = {
        "g": "1 - exp(-epsilon)", "train_size_m": m,
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
    return out
