"""Curvature-Clues ``precompute_scores/precompute_cifar100_mentr_scores.py``: ``get_curvature_for_batch_zo_v2``.

The published function is the one of ``precompute_cifar10_mentr_scores.py``, returning ``(curv_estimate,
loss_pos, max_prob, m_entropy)`` with zero curvature: see
:mod:`curvfast.compat.curvature_clues.precompute_scores.precompute_cifar10_mentr_scores`.
"""
from .precompute_cifar10_mentr_scores import get_curvature_for_batch_zo_v2

__all__ = ["get_curvature_for_batch_zo_v2"]
