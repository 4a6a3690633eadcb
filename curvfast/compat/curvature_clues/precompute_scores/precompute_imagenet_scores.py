r"""Curvature-Clues ``precompute_scores/precompute_imagenet_scores.py``: ``get_curvature_for_batch_zo``.

Returns ``(curv_estimate, loss, max_prob, m_entropy)``: the zero-order curvature of
:mod:`curvfast.compat.curvature_clues.precompute_scores.precompute_cifar10_scores` (same draws, same
stencil), the cross-entropy of ``logits / temp``, the maximum softmax probability and Song & Mittal's
modified entropy. ``compute_curvature=False`` returns zeros for the curvature and draws nothing, as
published.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..._common import prepare
from ..._zo import modified_entropy, zo_scores

__all__ = ["get_curvature_for_batch_zo"]


def get_curvature_for_batch_zo(
    net: nn.Module | Callable, batch_data: torch.Tensor, batch_labels: torch.Tensor, h: float = 1e-3, niter: int = 10,
    temp: float = 1, device: str = "cpu", compute_curvature: bool = True, *, seed: int | None = None,
    sample_ids: torch.Tensor | None = None, exact: bool = False, output_transform: Callable | None = None,
    pass_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(curv_estimate, loss, max_prob, m_entropy)``, each (B,), as the published function returns them.

    Args:
        net: The model (an ``nn.Module``, or any callable returning logits).
        batch_data: The batch x (B, ...), float32 or float64.
        batch_labels: Its labels (B,).
        h: The probe step.
        niter: Probe pairs n.
        temp: Divides the logits of the returned loss only, as published.
        device: Accepted and unused, as in the published function.
        compute_curvature: False: zeros for ``curv_estimate``, no probes drawn (published).
        seed: Opt-in: curvfast's Philox probes (batch-independent; the global generator untouched).
        sample_ids: Opt-in, with ``seed``: the samples' dataset indices (default 0..B-1).
        exact: Opt-in: h·‖H‖_F instead of the estimate.
        output_transform: Picks the logits out of the net's output (e.g. ``lambda out: out[0]``).
        pass_size: Probe pairs per batched pass (None: sized from the input).

    Returns:
        ``(curv_estimate, loss, max_prob, m_entropy)``, each (B,) on the batch's device.

    Raises:
        ConfigError: A bad h (not positive, or too small for the inputs to resolve), niter, temp, seed or sample ids.
        TypeError: ``net`` is not callable, or the batch has the wrong dtypes.
        DataError: A batch of the wrong shape or device, or a label outside [0, C).
        NonFiniteError: NaN or Inf in the inputs, the weights, a score or a loss.
        UnsupportedModelError: The net does not return logits, or runs BatchNorm or dropout in training mode.
        BatchDependentModelError: A BatchNorm without running statistics.
    """
    batch = prepare(net, batch_data, batch_labels, h=h, niter=niter, temp=temp, output_transform=output_transform,
                    sets_eval=False)
    curv, loss, prob = zo_scores(batch, h=h, niter=niter, temp=temp, compute_curvature=bool(compute_curvature),
                                 seed=seed, sample_ids=sample_ids, exact=exact, pass_size=pass_size)
    return curv, loss, prob.max(1).values, modified_entropy(prob, batch.y)
