"""Drop-in replacements for published curvature functions: swap one import, keep the experiment.

==================================== ======================================================
curvfast.compat                      replaces
==================================== ======================================================
``get_curvature_for_batch_zo_v2``    Curvature Clues ``precompute_scores/`` (CIFAR), zero-order
``get_curvature_for_batch_zo``       Curvature Clues ImageNet scorer (+ modified entropy)
``CurveScore``                       Privacy-Memorization-Curvature ``utils/loss_curve_score.py``
``get_regularized_curvature_for_batch``  Memorization-Curvature ``score_imagenet_checkpoint.py``
==================================== ======================================================

Same arguments and return values; the same statistic computed with curvfast's batched, per-sample
estimators. Keyword-only extras: ``seed`` / ``sample_ids`` (batch-independent probes), ``exact=True``
(the Hessian quantity the estimator approximates), ``batch_mean=True`` (the finite-difference
scorers' published 1/B scaling). Each module's docstring states the math and every difference.
"""
from ._curvature_clues import get_curvature_for_batch_zo, get_curvature_for_batch_zo_v2, modified_entropy
from ._memorization import CurveScore, fd_scores, get_regularized_curvature_for_batch

__all__ = [
    "get_curvature_for_batch_zo_v2", "get_curvature_for_batch_zo", "modified_entropy",
    "CurveScore", "get_regularized_curvature_for_batch", "fd_scores",
]
