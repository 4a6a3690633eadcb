"""Detection metrics with the positive class named explicitly.

Every function takes ``scores`` (higher = more likely positive), ``labels`` (any values) and
``positive`` (the label value that counts as positive). Ties in ``scores`` are handled as
sklearn does: tied samples move together, so the ROC has one point per distinct threshold.

- ROC: for each threshold t, TPR(t) = P[s >= t | pos], FPR(t) = P[s >= t | neg].
- AUROC = P[s_pos > s_neg] + 0.5 P[s_pos = s_neg] (trapezoid rule on the ROC).
- TPR at FPR f: the largest TPR on the ROC whose FPR <= f (LiRA's convention; 0 if none).
- Balanced accuracy: max over thresholds of (TPR + TNR) / 2, the threshold chosen on the
  same data, so it is an optimistic, oracle-threshold number (say so when reporting it).
- AUPR (average precision): sum_k (R_k - R_{k-1}) P_k over distinct thresholds.
- FPR at TPR r: the smallest FPR over thresholds whose TPR >= r.
"""
from __future__ import annotations

import numpy as np

from curvfast.errors import ConfigError, DataError, NonFiniteError

__all__ = ["roc_curve", "auroc", "tpr_at_fpr", "balanced_accuracy", "aupr", "fpr_at_tpr", "detection_report"]


def _binary(scores, labels, positive) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = np.asarray(labels).reshape(-1)
    if s.shape != lab.shape:
        raise DataError(f"scores and labels must have the same length (got {s.size} and {lab.size})")
    if not np.all(np.isfinite(s)):
        raise NonFiniteError(f"scores contain {int((~np.isfinite(s)).sum())} NaN/inf values; drop or fix them first")
    pos = lab == positive
    if pos.all() or not pos.any():
        raise DataError(
            f"need both classes: {int(pos.sum())} samples have the positive label {positive!r} and "
            f"{int((~pos).sum())} do not; check `positive` and `labels`"
        )
    return s, pos


def _counts(scores, labels, positive):
    """Cumulative (true positives, false positives) at each distinct threshold, highest first."""
    s, pos = _binary(scores, labels, positive)
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each run of equal scores
    tp = np.cumsum(pos)[last]
    fp = np.cumsum(~pos)[last]
    return tp.astype(np.float64), fp.astype(np.float64), s[last], float(pos.sum()), float((~pos).sum())


def roc_curve(scores, labels, positive=1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, starting at (0, 0) with threshold +inf, one point per distinct score."""
    tp, fp, thr, n_pos, n_neg = _counts(scores, labels, positive)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, thr]


def auroc(scores, labels, positive=1) -> float:
    """Area under the ROC curve (trapezoid rule over :func:`roc_curve`).

    The probability that a random positive scores above a random negative, ties counting one half.
    """
    fpr, tpr, _ = roc_curve(scores, labels, positive)
    return float(np.trapezoid(tpr, fpr))


def tpr_at_fpr(scores, labels, fpr: float, positive=1) -> float:
    """Largest TPR among ROC points with FPR <= ``fpr``."""
    if not 0.0 <= fpr <= 1.0:
        raise ConfigError(f"fpr must be in [0, 1] (got {fpr})")
    f, t, _ = roc_curve(scores, labels, positive)
    return float(t[f <= fpr].max())


def balanced_accuracy(scores, labels, positive=1) -> float:
    """max_t (TPR(t) + 1 - FPR(t)) / 2 with the threshold chosen on these same samples."""
    f, t, _ = roc_curve(scores, labels, positive)
    return float(np.max((t + 1.0 - f) / 2.0))


def aupr(scores, labels, positive=1) -> float:
    """Average precision of the positive class (sklearn's ``average_precision_score``)."""
    tp, fp, _, n_pos, _ = _counts(scores, labels, positive)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(scores, labels, tpr: float = 0.95, positive=1) -> float:
    """Smallest FPR among ROC points with TPR >= ``tpr`` (FPR95 for ``tpr=0.95``)."""
    if not 0.0 < tpr <= 1.0:
        raise ConfigError(f"tpr must be in (0, 1] (got {tpr})")
    f, t, _ = roc_curve(scores, labels, positive)
    return float(f[t >= tpr - 1e-12].min())


def detection_report(scores, labels, positive=1, fprs=(0.01, 0.001, 0.0001)) -> dict:
    """AUROC, balanced accuracy and TPR at each FPR in ``fprs`` as one JSON-ready dict."""
    return {
        "auroc": auroc(scores, labels, positive),
        "balanced_accuracy": balanced_accuracy(scores, labels, positive),
        "tpr_at_fpr": {str(f): tpr_at_fpr(scores, labels, f, positive) for f in fprs},
    }
