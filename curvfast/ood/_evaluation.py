"""OoD metrics with the positive class stated, on top of ``curvfast.metrics``.

Scores s follow the detector convention (higher = more OoD). With ID samples labelled ``"in"``
and OoD samples ``"out"``:

- ``auroc``: AUROC of s with OoD positive (equal to AUROC of -s with ID positive);
- ``aupr_out``: average precision of s with OoD positive;
- ``aupr_in``: average precision of -s with ID positive;
- ``fpr95``: the fraction of OoD samples accepted as ID when the threshold accepts 95% of the ID
  samples (FPR at 95% TPR with ID positive, scores -s).
"""
from __future__ import annotations

import numpy as np

from curvfast import metrics

__all__ = ["ood_metrics", "gains", "METRIC_NAMES"]

METRIC_NAMES = ("auroc", "aupr_in", "aupr_out", "fpr95")


def ood_metrics(id_scores, ood_scores) -> dict[str, float]:
    """The four OoD metrics of ID scores against OoD scores.

    Args:
        id_scores: Scores of in-distribution samples (higher = more OoD).
        ood_scores: Scores of OoD samples.

    Returns:
        ``{"auroc", "aupr_in", "aupr_out", "fpr95"}`` (see the module docstring).
    """
    id_scores = np.asarray(id_scores, dtype=np.float64).reshape(-1)
    ood_scores = np.asarray(ood_scores, dtype=np.float64).reshape(-1)
    s = np.concatenate([id_scores, ood_scores])
    labels = np.array(["in"] * id_scores.size + ["out"] * ood_scores.size)
    return {
        "auroc": metrics.auroc(s, labels, positive="out"),
        "aupr_in": metrics.aupr(-s, labels, positive="in"),
        "aupr_out": metrics.aupr(s, labels, positive="out"),
        "fpr95": metrics.fpr_at_tpr(-s, labels, tpr=0.95, positive="in"),
    }


def gains(method: dict, reference: dict) -> dict[str, dict[str, float | None]]:
    """Change of ``method`` over ``reference`` per metric.

    Args:
        method: ``{metric: value}`` of the method.
        reference: ``{metric: value}`` of the reference.

    Returns:
        ``{metric: {"points": 100 (m - r), "relative_percent": (m - r) / r * 100}}`` (a negative FPR95
        change is better); the relative change from r = 0 is undefined (None).
    """
    return {
        m: {"points": 100 * (method[m] - reference[m]),
            "relative_percent": 100 * (method[m] - reference[m]) / reference[m] if reference[m] else None}
        for m in METRIC_NAMES
    }
