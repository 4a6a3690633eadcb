"""Membership inference attacks: per-sample scores, higher = more likely a member.

Inputs, for one target model and S shadow (reference) models over N samples and V views:
``target`` (N,) or (N, V) — the target's signal; ``shadow`` (S, N) or (S, N, V) — the shadows'
signal; ``keep`` (S, N) bool — ``keep[s, i]`` is True when sample i was in shadow s's training
set. For sample i the IN shadows give a Gaussian N(μ_in,i, σ_in,i²) of the signal, the OUT
shadows N(μ_out,i, σ_out,i²), per view. ``variance="global"`` replaces every σ by one pooled
within-sample σ per view (sqrt of the mean per-sample variance; LiRA's "fixed variance", which
helps with few shadows; Carlini et al.'s code takes the std of all values, which also counts the
spread of the per-sample means — curvfast pools within samples).

The LiRA attacks fit their Gaussians as Carlini et al.'s reference code does: μ the **median**
of the shadow values and σ the population standard deviation (ddof = 0). The curvature attacks
use the mean and the sample standard deviation (ddof = 1), the unbiased variance for the few
(8-32) values per sample a shadow pool gives; under ``published_quirk`` they use the population
variance (ddof = 0), as the published notebooks' ``np.nanvar`` does.

Attacks (ℓ loss, φ = log(p_y/(1−p_y)), c a curvature, s = log(c + 1e-22), means over views):

- ``loss_attack`` (Yeom et al.): −ℓ.
- ``lira_online`` (Carlini et al.): mean_v [log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²)].
- ``lira_offline``: mean_v log Φ((φ − μ_out)/σ_out), the one-sided test of the paper (a member's
  confidence sits above the OUT distribution).
- ``curvature_nll`` (Curvature Clues "NLL"): mean_v [log N(s; μ_in, σ_in²) − log N(s; μ_out, σ_in²)],
  the IN standard deviation for both Gaussians.
- ``curvature_lr`` (Curvature Clues "LR"): log Σ_v N(s_v; μ_in, σ_in²) / N(s_v; μ_out, σ_out²), the
  likelihood ratios summed over views (in log space; ``aggregation="ratios"``), so each view is tested
  against its own IN/OUT pair and one view with a broad likelihood cannot dominate the sums;
  ``aggregation="likelihoods"`` takes the published code's ratio of the summed likelihoods,
  log Σ_v N_in − log Σ_v N_out, with our statistics (measured: docs/mia.md, stand-in); with one view the
  two are the same.
- ``published_quirk=True`` (both curvature rules) is the published notebooks' code
  (``conditonal_mia_aug_cifar10.ipynb``), faithfully: mean and ``np.nanvar`` (ddof 0) per sample, the
  variance passed where the standard deviation belongs, LR = Σ_v N(s_v; μ_in, var_in + 1e-22) /
  (Σ_v N(s_v; μ_out, var_out + 1e-22) + 1e-22) computed as likelihoods (their float64 underflow to 0
  included), NLL = Σ_v [log N(s; μ_in, var_in + 1e-32) − log N(s; μ_out, var_in + 1e-32)].
- ``lira_published``: the notebooks' "Carlini et al." baseline: that published LR rule on the logit-scaled
  **maximum** probability log(p_max/(1 − p_max)) of each view (not the true class's), with the same quirks.
- ``modified_entropy`` (Song & Mittal 2021, the "Mentr" baseline of the published tables): −Mentr,
  Mentr = −(1 − p_y) log p_y − Σ_{c≠y} p_c log(1 − p_c), mean over views (no shadows).
- ``sablayrolles`` (per-sample threshold): −(ℓ − τ_i), τ_i = (mean_in ℓ + mean_out ℓ)/2.
- ``watson`` (difficulty calibration, offline): −(ℓ − mean_out ℓ).
- ``ye`` (Attack R, offline): P_out[ℓ' > ℓ] + ½ P_out[ℓ' = ℓ], the fraction of OUT shadow losses
  above the target's (an empirical p-value).
- ``ye_published``: the notebooks' Ye et al. rule: −(ℓ − q_i), q_i the α = 1e-4 quantile of sample i's OUT
  shadow losses (``np.nanpercentile(out, 0.01)``, linear interpolation: about the smallest OUT loss).

Every σ is floored at 1e-30 as in LiRA; per-sample variances need at least two IN (online) or
OUT shadows per sample.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import log_ndtr, logsumexp

from curvfast.errors import DataError, NonFiniteError, UnknownNameError

__all__ = [
    "CURVATURE_EPS", "check_membership", "fit_gaussians", "gaussian_logpdf",
    "loss_attack", "lira_online", "lira_offline", "lira_published", "curvature_nll", "curvature_lr",
    "modified_entropy", "sablayrolles", "watson", "ye", "ye_published", "AGGREGATIONS",
]

CURVATURE_EPS = 1e-22  # s = log(curv + 1e-22), as published
STD_FLOOR = 1e-30
VARIANCES = ("per_sample", "global")
AGGREGATIONS = ("ratios", "likelihoods")  # curvature LR over views: ours, the published code's
PUBLISHED_EPS = 1e-22  # the notebooks' eps (added to the variance-as-std and to the OUT sum of LR)
PUBLISHED_NLL_EPS = 1e-32  # the notebooks' NLL adds this one instead
YE_ALPHA = 1e-4  # the notebooks' Ye et al. quantile


def _as_views(a: np.ndarray, ndim: int, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == ndim - 1:
        a = a[..., None]
    if a.ndim != ndim:
        raise DataError(f"{name} must have {ndim - 1} or {ndim} dimensions (..., samples[, views]); got shape {a.shape}")
    if not np.isfinite(a).all():
        raise NonFiniteError(f"{name} has {int((~np.isfinite(a)).sum())} NaN/inf values")
    return a


def check_membership(keep, num_samples: int | None = None, *, need_in: int = 1, need_out: int = 1) -> np.ndarray:
    """Validate a (models, samples) keep matrix: boolean, every sample IN >= need_in and OUT >= need_out times."""
    keep = np.asarray(keep)
    if keep.ndim != 2:
        raise DataError(f"keep must be a (models, samples) matrix; got shape {keep.shape}")
    if keep.dtype != bool:
        if not np.isin(keep, (0, 1)).all():
            raise DataError("keep must be boolean (or 0/1): keep[m, i] says whether sample i trained model m")
        keep = keep.astype(bool)
    if num_samples is not None and keep.shape[1] != num_samples:
        raise DataError(f"keep has {keep.shape[1]} samples (columns) but the signals have {num_samples}")
    for count, need, word in ((keep.sum(0), need_in, "IN"), ((~keep).sum(0), need_out, "OUT")):
        bad = np.flatnonzero(count < need)
        if bad.size:
            raise DataError(
                f"{bad.size} samples are {word} in fewer than {need} shadow model(s) (e.g. samples {bad[:5].tolist()}); "
                f"the attack needs every sample {word} at least {need} time(s): use more shadows, or a balanced keep "
                "matrix (curvfast.pipelines.mia.experiment.balanced_keep)"
            )
    return keep


def _inputs(target, shadow, keep, need_in, need_out):
    shadow = _as_views(shadow, 3, "shadow")
    target = _as_views(target, 2, "target")
    if target.shape != shadow.shape[1:]:
        raise DataError(f"target has shape {target.shape} but the shadows' signal has (samples, views) = {shadow.shape[1:]}")
    if np.shape(keep)[:1] != shadow.shape[:1]:
        raise DataError(f"keep has {np.shape(keep)[0]} models (rows) but shadow has {shadow.shape[0]}")
    keep = check_membership(keep, shadow.shape[1], need_in=need_in, need_out=need_out)
    return target, shadow, keep


def fit_gaussians(shadow: np.ndarray, mask: np.ndarray, variance: str = "per_sample", *, center: str = "mean",
                  ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Centre (``"mean"`` or ``"median"``) and standard deviation per (sample, view) over the shadows
    where ``mask`` is True; σ² = Σ (x − mean)² / (n − ddof) (about the mean either way).

    ``shadow`` (S, N, V), ``mask`` (S, N). ``variance="global"``: one pooled σ per view.
    """
    if variance not in VARIANCES:
        raise UnknownNameError(f"variance must be one of {VARIANCES} (got {variance!r})")
    if center not in ("mean", "median"):
        raise UnknownNameError(f"center must be 'mean' or 'median' (got {center!r})")
    w = mask[..., None].astype(np.float64)
    n = w.sum(0)
    mean = (w * shadow).sum(0) / n
    var = (w * (shadow - mean) ** 2).sum(0) / np.maximum(n - ddof, 1.0)
    if variance == "global":
        var = np.broadcast_to(var.mean(0, keepdims=True), var.shape)
    if center == "median":
        with np.errstate(all="ignore"):  # samples without values stay NaN; callers require enough shadows
            mean = np.nanmedian(np.where(w > 0, shadow, np.nan), axis=0)
    return mean, np.maximum(np.sqrt(var), STD_FLOOR)


def _lira_fit(shadow, mask, variance):
    """Carlini et al.'s reference fit: median and population (ddof = 0) standard deviation."""
    return fit_gaussians(shadow, mask, variance, center="median", ddof=0)


def gaussian_logpdf(x, mean, std) -> np.ndarray:
    """log N(x; mean, std²), elementwise."""
    z = (x - mean) / std
    return -0.5 * z * z - np.log(std) - 0.5 * math.log(2 * math.pi)


def loss_attack(target_loss) -> np.ndarray:
    """Yeom et al.: −loss (mean over views)."""
    return -_as_views(target_loss, 2, "target_loss").mean(1)


def lira_online(target_conf, shadow_conf, keep, *, variance: str = "per_sample") -> np.ndarray:
    """LiRA online: Gaussian log-likelihood ratio of the logit-scaled confidence, IN vs OUT."""
    need = 2 if variance == "per_sample" else 1
    t, sh, keep = _inputs(target_conf, shadow_conf, keep, need, need)
    (mi, si), (mo, so) = _lira_fit(sh, keep, variance), _lira_fit(sh, ~keep, variance)
    return (gaussian_logpdf(t, mi, si) - gaussian_logpdf(t, mo, so)).mean(1)


def lira_offline(target_conf, shadow_conf, keep, *, variance: str = "per_sample") -> np.ndarray:
    """LiRA offline: log Φ((φ − μ_out)/σ_out), OUT shadows only."""
    t, sh, keep = _inputs(target_conf, shadow_conf, keep, 0, 2 if variance == "per_sample" else 1)
    mo, so = _lira_fit(sh, ~keep, variance)
    return log_ndtr((t - mo) / so).mean(1)


def _log_curvature(c):
    c = np.asarray(c, dtype=np.float64)
    if (c < 0).any():
        raise DataError("curvature signals must be >= 0 (trace of a PSD Gauss-Newton matrix, or a norm estimate)")
    return np.log(c + CURVATURE_EPS)


def _published_fits(values, keep):
    """The notebooks' per-(sample, view) statistics: mean and ``np.nanvar`` (ddof 0) of the IN and of the OUT values."""
    (mi, si), (mo, so) = fit_gaussians(values, keep, ddof=0), fit_gaussians(values, ~keep, ddof=0)
    return mi, si**2, mo, so**2  # variances (fit_gaussians floors σ at 1e-30: 1e-60 here, below the notebooks' eps)


def _published_lr(t, sh, keep) -> np.ndarray:
    """The notebooks' ``get_likelihood_ratio``: Σ_v N(t; μ_in, var_in + eps) / (Σ_v N(t; μ_out, var_out + eps) + eps),
    the variance standing where the standard deviation belongs, as float64 likelihoods (underflow to 0 included)."""
    mi, vi, mo, vo = _published_fits(sh, keep)
    inside = np.exp(gaussian_logpdf(t, mi, vi + PUBLISHED_EPS)).sum(1)
    outside = np.exp(gaussian_logpdf(t, mo, vo + PUBLISHED_EPS)).sum(1)
    return inside / (outside + PUBLISHED_EPS)


def _curvature_inputs(target_curv, shadow_curv, keep, variance, need_out):
    t, sh, keep = _inputs(target_curv, shadow_curv, keep, 2 if variance == "per_sample" else 1, need_out)
    return _log_curvature(t), _log_curvature(sh), keep


def curvature_nll(target_curv, shadow_curv, keep, *, variance: str = "per_sample", published_quirk: bool = False) -> np.ndarray:
    """Curvature Clues NLL rule on s = log(curv + 1e-22): IN σ for both Gaussians, mean over views
    (``published_quirk``: the notebooks' ``get_nll_ratio``, the IN variance + 1e-32 as the std, summed over views)."""
    t, sh, keep = _curvature_inputs(target_curv, shadow_curv, keep, variance, need_out=1)
    if published_quirk:
        mi, vi, mo, _ = _published_fits(sh, keep)
        return (gaussian_logpdf(t, mi, vi + PUBLISHED_NLL_EPS) - gaussian_logpdf(t, mo, vi + PUBLISHED_NLL_EPS)).sum(1)
    mi, si = fit_gaussians(sh, keep, variance)
    mo, _ = fit_gaussians(sh, ~keep, variance)
    return (gaussian_logpdf(t, mi, si) - gaussian_logpdf(t, mo, si)).mean(1)


def curvature_lr(target_curv, shadow_curv, keep, *, variance: str = "per_sample", published_quirk: bool = False,
                 aggregation: str = "ratios") -> np.ndarray:
    """Curvature Clues LR rule: log of the sum over views of the IN/OUT likelihood ratios
    (``aggregation="likelihoods"``: log of the ratio of the summed likelihoods; ``published_quirk``: the
    notebooks' ``get_likelihood_ratio``, module docstring)."""
    if aggregation not in AGGREGATIONS:
        raise UnknownNameError(f"aggregation must be one of {AGGREGATIONS} (got {aggregation!r})")
    need = 2 if variance == "per_sample" else 1
    t, sh, keep = _curvature_inputs(target_curv, shadow_curv, keep, variance, need_out=need)
    if published_quirk:
        return _published_lr(t, sh, keep)
    (mi, si), (mo, so) = fit_gaussians(sh, keep, variance), fit_gaussians(sh, ~keep, variance)
    log_in, log_out = gaussian_logpdf(t, mi, si), gaussian_logpdf(t, mo, so)
    if aggregation == "likelihoods":
        return logsumexp(log_in, axis=1) - logsumexp(log_out, axis=1)
    return logsumexp(log_in - log_out, axis=1)


def lira_published(target_maxconf, shadow_maxconf, keep) -> np.ndarray:
    """The published "Carlini et al." baseline: the notebooks' LR rule (module docstring) on the logit-scaled
    maximum probability φ_max = log(p_max/(1 − p_max)) of each view (the ``maxconf`` signal)."""
    t, sh, keep = _inputs(target_maxconf, shadow_maxconf, keep, 1, 1)
    return _published_lr(t, sh, keep)


def modified_entropy(target_mentr) -> np.ndarray:
    """Song & Mittal's modified-entropy attack: −Mentr (mean over views); members have lower Mentr."""
    return -_as_views(target_mentr, 2, "target_mentr").mean(1)


def _loss_stats(target_loss, shadow_loss, keep, need_in):
    t, sh, keep = _inputs(target_loss, shadow_loss, keep, need_in, 1)
    return t.mean(1), sh.mean(2), keep


def sablayrolles(target_loss, shadow_loss, keep) -> np.ndarray:
    """Per-sample threshold τ_i midway between the mean IN and mean OUT shadow losses: −(ℓ − τ_i)."""
    t, sh, keep = _loss_stats(target_loss, shadow_loss, keep, 1)
    tau = 0.5 * ((sh * keep).sum(0) / keep.sum(0) + (sh * ~keep).sum(0) / (~keep).sum(0))
    return -(t - tau)


def watson(target_loss, shadow_loss, keep) -> np.ndarray:
    """Difficulty calibration (offline): −(ℓ − mean of the OUT shadow losses)."""
    t, sh, keep = _loss_stats(target_loss, shadow_loss, keep, 0)
    return -(t - (sh * ~keep).sum(0) / (~keep).sum(0))


def ye_published(target_loss, shadow_loss, keep) -> np.ndarray:
    """The notebooks' Ye et al. rule: −(ℓ − q_i), q_i the 1e-4 quantile of sample i's OUT shadow losses."""
    t, sh, keep = _loss_stats(target_loss, shadow_loss, keep, 0)
    quantile = np.nanpercentile(np.where(~keep, sh, np.nan), YE_ALPHA * 100, axis=0)
    return -(t - quantile)


def ye(target_loss, shadow_loss, keep) -> np.ndarray:
    """Attack R (offline): fraction of OUT shadow losses above the target's loss (ties count ½)."""
    t, sh, keep = _loss_stats(target_loss, shadow_loss, keep, 0)
    out = ~keep
    above = ((sh > t) & out).sum(0) + 0.5 * ((sh == t) & out).sum(0)
    return above / out.sum(0)
