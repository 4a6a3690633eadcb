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

from typing import Iterable

import numpy as np
from numpy.typing import ArrayLike

from curvfast.errors import ConfigError, DataError, NonFiniteError

__all__ = ["roc_curve", "auroc", "tpr_at_fpr", "balanced_accuracy", "aupr", "fpr_at_tpr", "detection_report"]


def _binary(scores: ArrayLike, labels: ArrayLike, positive: object) -> tuple[np.ndarray, np.ndarray]:
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


def _counts(scores: ArrayLike, labels: ArrayLike, positive: object) -> tuple:
    """Cumulative (true positives, false positives) at each distinct threshold, highest first."""
    s, pos = _binary(scores, labels, positive)
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each run of equal scores
    tp = np.cumsum(pos)[last]
    fp = np.cumsum(~pos)[last]
    return tp.astype(np.float64), fp.astype(np.float64), s[last], float(pos.sum()), float((~pos).sum())


def roc_curve(scores: ArrayLike, labels: ArrayLike, positive: object = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The ROC curve, one point per distinct score, starting at (0, 0) with threshold +inf.

    .. math:: \mathrm{TPR}(t) = P[s \ge t \mid \mathrm{pos}], \qquad \mathrm{FPR}(t) = P[s \ge t \mid \mathrm{neg}]

    Args:
        scores: Detection scores, higher = more likely positive (any array-like, flattened).
        labels: One label per score (any values).
        positive: The label value that counts as positive.

    Returns:
        ``(fpr, tpr, thresholds)``, float64 arrays, thresholds decreasing.

    Raises:
        DataError: When scores and labels differ in length, or only one class is present.
        NonFiniteError: When a score is NaN or infinite.
    """
    tp, fp, thr, n_pos, n_neg = _counts(scores, labels, positive)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, thr]


def auroc(scores: ArrayLike, labels: ArrayLike, positive: object = 1) -> float:
    r"""Area under the ROC curve (trapezoid rule over :func:`roc_curve`).

    The probability that a random positive scores above a random negative, ties counting one half:

    .. math:: \mathrm{AUROC} = P[s_{pos} > s_{neg}] + \tfrac{1}{2} P[s_{pos} = s_{neg}]

    Args:
        scores: Detection scores, higher = more likely positive (any array-like, flattened).
        labels: One label per score (any values).
        positive: The label value that counts as positive.

    Returns:
        The AUROC in [0, 1].

    Raises:
        DataError: When scores and labels differ in length, or only one class is present.
        NonFiniteError: When a score is NaN or infinite.
    """
    fpr, tpr, _ = roc_curve(scores, labels, positive)
    return float(np.trapezoid(tpr, fpr))


def tpr_at_fpr(scores: ArrayLike, labels: ArrayLike, fpr: float, positive: object = 1) -> float:
    """Largest TPR among ROC points with FPR <= ``fpr`` (LiRA's convention; the (0, 0) point makes it >= 0).

    Args:
        scores: Detection scores, higher = more likely positive (any array-like, flattened).
        labels: One label per score (any values).
        fpr: The false-positive budget, in [0, 1].
        positive: The label value that counts as positive.

    Returns:
        The TPR at that FPR.

    Raises:
        DataError: When scores and labels differ in length, or only one class is present.
        NonFiniteError: When a score is NaN or infinite.
        ConfigError: When ``fpr`` is outside [0, 1].
    """
    if not 0.0 <= fpr <= 1.0:
        raise ConfigError(f"fpr must be in [0, 1] (got {fpr})")
    f, t, _ = roc_curve(scores, labels, positive)
    return float(t[f <= fpr].max())


def balanced_accuracy(scores: ArrayLike, labels: ArrayLike, positive: object = 1) -> float:
    r"""Best balanced accuracy over thresholds, the threshold chosen on these same samples.

    .. math:: \max_t \tfrac{1}{2} (\mathrm{TPR}(t) + 1 - \mathrm{FPR}(t))

    An optimistic, oracle-threshold number: say so when reporting it.

    Args:
        scores: Detection scores, higher = more likely positive (any array-like, flattened).
        labels: One label per score (any values).
        positive: The label value that counts as positive.

    Returns:
        The balanced accuracy in [0.5, 1].

    Raises:
        DataError: When scores and labels differ in length, or only one class is present.
        NonFiniteError: When a score is NaN or infinite.
    """
    f, t, _ = roc_curve(scores, labels, positive)
    return float(np.max((t + 1.0 - f) / 2.0))


def aupr(scores: ArrayLike, labels: ArrayLike, positive: object = 1) -> float:
    r"""Average precision of the positive class (sklearn's ``average_precision_score``).

    .. math:: \mathrm{AP} = \sum_k (R_k - R_{k-1}) P_k

    over the distinct thresholds, R the recall and P the precision.

    Args:
        scores: Detection scores, higher = more likely positive (any array-like, flattened).
        labels: One label per score (any values).
        positive: The label value that counts as positive.

    Returns:
        The average precision in [0, 1].

    Raises:
        DataError: When scores and labels differ in length, or only one class is present.
        NonFiniteError: When a score is NaN or infinite.
    """
    tp, fp, _, n_pos, _ = _counts(scores, labels, positive)
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(scores: ArrayLike, labels: ArrayLike, tpr: float = 0.95, positive: object = 1) -> float:
    """Smallest FPR among ROC points with TPR >= ``tpr`` (FPR95 for ``tpr=0.95``).

    Args:
        scores: Detection scores, higher = more likely positive (any array-like, flattened).
        labels: One label per score (any values).
        tpr: The required true-positive rate, in (0, 1].
        positive: The label value that counts as positive.

    Returns:
        The FPR at that TPR.

    Raises:
        DataError: When scores and labels differ in length, or only one class is present.
        NonFiniteError: When a score is NaN or infinite.
        ConfigError: When ``tpr`` is outside (0, 1].
    """
    if not 0.0 < tpr <= 1.0:
        raise ConfigError(f"tpr must be in (0, 1] (got {tpr})")
    f, t, _ = roc_curve(scores, labels, positive)
    return float(f[t >= tpr - 1e-12].min())


def detection_report(scores: ArrayLike, labels: ArrayLike, positive: object = 1,
                     fprs: Iterable[float] = (0.01, 0.001, 0.0001)) -> dict:
    """AUROC, balanced accuracy and TPR at each FPR in ``fprs`` as one JSON-ready dict.

    Args:
        scores: Detection scores, higher = more likely positive (any array-like, flattened).
        labels: One label per score (any values).
        positive: The label value that counts as positive.
        fprs: The false-positive budgets of the TPR entries, each in [0, 1].

    Returns:
        ``{"auroc": float, "balanced_accuracy": float, "tpr_at_fpr": {str(fpr): float}}``.

    Raises:
        DataError: When scores and labels differ in length, or only one class is present.
        NonFiniteError: When a score is NaN or infinite.
        ConfigError: When an entry of ``fprs`` is outside [0, 1].
    """
    return {
        "auroc": auroc(scores, labels, positive),
        "balanced_accuracy": balanced_accuracy(scores, labels, positive),
        "tpr_at_fpr": {str(f): tpr_at_fpr(scores, labels, f, positive) for f in fprs},
    }
