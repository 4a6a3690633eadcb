"""mia --published-quirk against a faithful re-implementation of the published notebooks' curvature rules.

The published notebooks (Curvature Clues) fit, per sample, the IN and OUT log-curvatures' mean and their
variance with ``np.nanvar`` (population variance, ddof = 0), then pass that variance where a Gaussian's standard
deviation belongs; LR takes log Σ_v N_in − log Σ_v N_out over views, NLL the IN spread for both Gaussians.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import norm

from curvfast.pipelines.mia import attacks as A


def _published_fits(log_target, log_shadow, keep):
    """Per (sample, view): mean and nanvar (ddof 0) of the IN and OUT shadow values."""
    inside = np.where(keep[..., None], log_shadow, np.nan)
    outside = np.where(~keep[..., None], log_shadow, np.nan)
    return np.nanmean(inside, 0), np.nanvar(inside, 0), np.nanmean(outside, 0), np.nanvar(outside, 0)


def _data(seed=0, shadows=10, samples=12, views=2):
    rng = np.random.default_rng(seed)
    curv = rng.lognormal(size=(shadows, samples, views))
    keep = rng.random((shadows, samples)) < 0.5
    keep[:3], keep[3:6] = True, False  # at least three IN and three OUT shadows per sample
    return rng.lognormal(size=(samples, views)), curv, keep


def test_published_lr_uses_the_population_variance_as_the_standard_deviation():
    target, shadow, keep = _data()
    t, sh = np.log(target + A.CURVATURE_EPS), np.log(shadow + A.CURVATURE_EPS)
    mi, vi, mo, vo = _published_fits(t, sh, keep)
    expected = (np.log(norm.pdf(t, mi, vi).sum(1)) - np.log(norm.pdf(t, mo, vo).sum(1)))
    got = A.curvature_lr(target, shadow, keep, published_quirk=True)
    np.testing.assert_allclose(got, expected, rtol=1e-9)


def test_published_nll_uses_the_in_variance_for_both():
    target, shadow, keep = _data(1)
    t, sh = np.log(target + A.CURVATURE_EPS), np.log(shadow + A.CURVATURE_EPS)
    mi, vi, mo, _ = _published_fits(t, sh, keep)
    expected = (norm.logpdf(t, mi, vi) - norm.logpdf(t, mo, vi)).mean(1)
    np.testing.assert_allclose(A.curvature_nll(target, shadow, keep, published_quirk=True), expected, rtol=1e-9)


def test_the_default_rule_keeps_the_sample_variance():
    """Without the quirk: ddof = 1 and the standard deviation, per-view ratios summed."""
    target, shadow, keep = _data(2)
    t, sh = np.log(target + A.CURVATURE_EPS), np.log(shadow + A.CURVATURE_EPS)
    inside = np.where(keep[..., None], sh, np.nan)
    outside = np.where(~keep[..., None], sh, np.nan)
    si, so = np.nanstd(inside, 0, ddof=1), np.nanstd(outside, 0, ddof=1)
    ratio = norm.logpdf(t, np.nanmean(inside, 0), si) - norm.logpdf(t, np.nanmean(outside, 0), so)
    expected = np.log(np.exp(ratio).sum(1))
    np.testing.assert_allclose(A.curvature_lr(target, shadow, keep), expected, rtol=1e-9)
