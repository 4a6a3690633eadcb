"""Input curvature of every zoo member beside its transferability (``results.json`` → ``curvature``).

For source s, its curvature is the mean over the attacked test images x_i (true labels y_i, the loss its
attack climbs) of tr H_s(x_i), H_s(x) = ∂²CE(s(x), y)/∂x², by ``curvfast.curvature.input_curvature``
(``auto``: exact for piecewise-linear members; the quantisers pass gradients straight through, so this is
the curvature of the function the attack differentiates; the sharpening halftone's sigmoid surrogate is
smooth and gets the deflated estimate), with its standard error over images. Its transferability is the
mean of the transfer metric T_{s->t} over the targets t != s where it is defined. Across sources the two
are compared by Spearman's rank and Pearson's correlation.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr

from curvfast.curvature import input_curvature

__all__ = ["member_curvature", "source_transferability", "curvature_vs_transfer"]


def member_curvature(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int = 0) -> dict:
    """Per-image tr H of ``net`` on ``(x, y)``, scored in batches keyed by the images' positions.

    Returns ``{"mean", "stderr" (sample std / sqrt(n)), "method", "values" (n,)}``.
    """
    values, method = [], None
    for start in range(0, len(x), batch):
        ids = torch.arange(start, min(start + batch, len(x)))
        result = input_curvature(net, x[ids], y[ids], seed=seed, sample_ids=ids)
        values.append(result.value.detach().double().cpu())
        method = result.method
    values = torch.cat(values).numpy()
    return {"mean": float(values.mean()), "stderr": float(values.std(ddof=1) / np.sqrt(len(values))),
            "method": method, "values": values}


def source_transferability(metric: np.ndarray) -> np.ndarray:
    """Mean of each row of the transfer matrix over its targets t != s where it is finite (NaN: none)."""
    metric = np.array(metric, dtype=np.float64)
    np.fill_diagonal(metric, np.nan)
    finite = np.isfinite(metric)
    with np.errstate(invalid="ignore"):
        return np.where(finite.any(1), np.nansum(metric, 1) / finite.sum(1), np.nan)


def curvature_vs_transfer(names: list[str], curvature: list[dict], metric: np.ndarray) -> dict:
    """Each member's curvature (mean ± s.e. over images, method) and transferability, and their Spearman and
    Pearson correlation across the sources where both are defined (None, with fewer than three sources)."""
    transfer = source_transferability(metric)
    means = np.array([c["mean"] for c in curvature])
    keep = np.isfinite(transfer) & np.isfinite(means)
    correlation = {"sources": int(keep.sum()), "spearman": None, "spearman_p": None, "pearson": None, "pearson_p": None}
    if keep.sum() >= 3 and np.ptp(means[keep]) > 0 and np.ptp(transfer[keep]) > 0:
        rho, p_rho = spearmanr(means[keep], transfer[keep])
        r, p_r = pearsonr(means[keep], transfer[keep])
        correlation.update(spearman=float(rho), spearman_p=float(p_rho), pearson=float(r), pearson_p=float(p_r))
    members = {name: {"mean_curvature": c["mean"], "stderr": c["stderr"], "method": c["method"],
                      "transferability": float(t) if np.isfinite(t) else None}
               for name, c, t in zip(names, curvature, transfer)}
    return {"statistic": "trace of the input Hessian of the cross-entropy at the true label, mean over the attacked images",
            "transferability": "mean over targets t != s of the transfer metric T_s->t at metric_eps",
            "members": members, "correlation": correlation}
