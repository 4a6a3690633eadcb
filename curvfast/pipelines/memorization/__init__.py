"""Feldman memorization vs curvature, mislabel detection, DP-SGD sweep with the Unveiling bounds (docs/memorization.md).

Memorization, privacy and curvature: Feldman memorization scores with confidence intervals,
curvature averaged over training, agreement measures, mislabel detection (curvature, loss,
cleanlab) and DP-SGD (Opacus) against the Unveiling bounds; results.json, scores.npz,
mislabel.npz and figures in --out (``curvfast memorization``: :class:`Config`, :func:`run`).
"""
from curvfast.pipelines.memorization.agreement import agreement, cosine_similarity, top_k_overlap
from curvfast.pipelines.memorization.dp import (PUBLISHED_EPSILONS, dp_sweep, fit_unveiling_bounds, published_subsets,
                                                published_top_k_memorization)
from curvfast.pipelines.memorization.figures import dp_plot
from curvfast.pipelines.memorization.feldman import (MemorizationEstimate, label_predictions, memorization_scores,
                                                      newcombe_interval, predict, random_subsets, wilson_interval)
from curvfast.pipelines.memorization.mislabel import cleanlab_scores, cross_val_pred_probs, mislabel_report, flip_labels
from curvfast.pipelines.memorization.models import model_factory
from curvfast.pipelines.memorization.pipeline import PRESETS, PUBLISHED, Config, run, summary
from curvfast.pipelines.memorization.trajectory import (CurvatureTrajectory, curvature_per_model, curvature_trajectory,
                                                         train_with_checkpoints)

__all__ = [
    "Config", "PRESETS", "PUBLISHED", "run", "summary", "dp_sweep", "fit_unveiling_bounds", "published_subsets",
    "published_top_k_memorization", "PUBLISHED_EPSILONS", "dp_plot",
    "agreement", "cosine_similarity", "top_k_overlap", "MemorizationEstimate", "memorization_scores", "newcombe_interval",
    "predict", "label_predictions", "random_subsets", "wilson_interval", "cleanlab_scores", "cross_val_pred_probs", "mislabel_report",
    "flip_labels", "CurvatureTrajectory", "curvature_trajectory", "curvature_per_model", "train_with_checkpoints", "model_factory",
]
