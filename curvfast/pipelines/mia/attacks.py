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
  likelihood ratios summed over views (in log space). The default sums per-view ratios, so each
  view is tested against its own IN/OUT pair and one view with a broad likelihood cannot dominate
  the sums (not yet measured with two views: docs/mia.md); with one view both rules are the same.
  ``published_quirk=True`` reproduces the published code: the ratio of the summed likelihoods,
  log Σ_v N(s_v; μ_in, σ_in) − log Σ_v N(s_v; μ_out, σ_out), with the variance σ² passed where
  the standard deviation belongs (a Gaussian of standard deviation σ², also in the NLL rule) and the
  variance fitted with ddof = 0 (``np.nanvar``).
- ``modified_entropy`` (Song & Mittal 2021, the "Mentr" baseline of the published tables): −Mentr,
  Mentr = −(1 − p_y) log p_y − Σ_{c≠y} p_c log(1 − p_c), mean over views (no shadows).
- ``sablayrolles`` (per-sample threshold): −(ℓ − τ_i), τ_i = (mean_in ℓ + mean_out ℓ)/2.
- ``watson`` (difficulty calibration, offline): −(ℓ − mean_out ℓ).
- ``ye`` (Attack R, offline): P_out[ℓ' > ℓ] + ½ P_out[ℓ' = ℓ], the fraction of OUT shadow losses
  above the target's (an empirical p-value).

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
    "loss_attack", "lira_online", "lira_offline", "curvature_nll", "curvature_lr",
    "modified_entropy", "sablayrolles", "watson", "ye",
]

CURVATURE_EPS = 1e-22  # s = log(curv + 1e-22), as published
STD_FLOOR = 1e-30
VARIANCES = ("per_sample", "global")


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


def _curvature_fits(target_curv, shadow_curv, keep, variance, published_quirk, need_out):
    t, sh, keep = _inputs(target_curv, shadow_curv, keep, 2 if variance == "per_sample" else 1, need_out)
    t, sh = _log_curvature(t), _log_curvature(sh)
    ddof = 0 if published_quirk else 1  # the published notebooks fit np.nanvar: the population variance
    (mi, si), (mo, so) = fit_gaussians(sh, keep, variance, ddof=ddof), fit_gaussians(sh, ~keep, variance, ddof=ddof)
    if published_quirk:  # the published code passes the variance where the standard deviation belongs
        si, so = np.maximum(si**2, STD_FLOOR), np.maximum(so**2, STD_FLOOR)
    return t, mi, si, mo, so


def curvature_nll(target_curv, shadow_curv, keep, *, variance: str = "per_sample", published_quirk: bool = False) -> np.ndarray:
    """Curvature Clues NLL rule on s = log(curv + 1e-22): IN σ for both Gaussians, mean over views."""
    t, mi, si, mo, _ = _curvature_fits(target_curv, shadow_curv, keep, variance, published_quirk, need_out=1)
    return (gaussian_logpdf(t, mi, si) - gaussian_logpdf(t, mo, si)).mean(1)


def curvature_lr(target_curv, shadow_curv, keep, *, variance: str = "per_sample", published_quirk: bool = False) -> np.ndarray:
    """Curvature Clues LR rule: log of the sum over views of the IN/OUT likelihood ratios
    (``published_quirk``: log of the ratio of the summed likelihoods, variance as std)."""
    need = 2 if variance == "per_sample" else 1
    t, mi, si, mo, so = _curvature_fits(target_curv, shadow_curv, keep, variance, published_quirk, need_out=need)
    log_in, log_out = gaussian_logpdf(t, mi, si), gaussian_logpdf(t, mo, so)
    if published_quirk:
        return logsumexp(log_in, axis=1) - logsumexp(log_out, axis=1)
    return logsumexp(log_in - log_out, axis=1)


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


def ye(target_loss, shadow_loss, keep) -> np.ndarray:
    """Attack R (offline): fraction of OUT shadow losses above the target's loss (ties count ½)."""
    t, sh, keep = _loss_stats(target_loss, shadow_loss, keep, 0)
    out = ~keep
    above = ((sh > t) & out).sum(0) + 0.5 * ((sh == t) & out).sum(0)
    return above / out.sum(0)
