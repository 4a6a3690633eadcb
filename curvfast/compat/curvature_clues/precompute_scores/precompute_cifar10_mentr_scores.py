r"""Curvature-Clues ``precompute_scores/precompute_cifar10_mentr_scores.py``: ``get_curvature_for_batch_zo_v2``.

The same function is defined in ``precompute_cifar100_mentr_scores.py`` (its module here re-exports this
one). Despite its name, this variant computes no curvature: it returns ``(curv_estimate, loss_pos,
max_prob, m_entropy)`` with ``curv_estimate`` zeros (a float32 zero vector divided by ``niter``), the
cross-entropy of ``logits / temp``, the maximum softmax probability and Song & Mittal's modified entropy
of the softmax of the raw logits. It draws nothing from torch's generator, and neither does this drop-in.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..._common import prepare
from ..._zo import modified_entropy, zo_scores

__all__ = ["get_curvature_for_batch_zo_v2"]


def get_curvature_for_batch_zo_v2(
    net: nn.Module | Callable, batch_data: torch.Tensor, batch_labels: torch.Tensor, h: float = 1e-3, niter: int = 10,
    temp: float = 1, device: str = "cpu", *, output_transform: Callable | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``(curv_estimate, loss_pos, max_prob, m_entropy)``, each (B,); ``curv_estimate`` is zeros, as published.

    .. math:: \mathrm{m\_entropy} = -(1 - p_y) \log p_y - \sum_{c \ne y} p_c \log(1 - p_c + 10^{-9})

    Args:
        net: The model (an ``nn.Module``, or any callable returning logits).
        batch_data: The batch x (B, ...), float32 or float64.
        batch_labels: Its labels (B,).
        h: Unused (no curvature is computed), validated as the step it names.
        niter: Divides the zero curvature, as published.
        temp: Divides the logits of the returned loss only.
        device: Accepted and unused, as in the published function.
        output_transform: Picks the logits out of the net's output (e.g. ``lambda out: out[0]``).

    Returns:
        ``(curv_estimate, loss_pos, max_prob, m_entropy)``, each (B,) on the batch's device.

    Raises:
        ConfigError: A bad h, niter or temp.
        TypeError: ``net`` is not callable, or the batch has the wrong dtypes.
        DataError: A batch of the wrong shape or device, or a label outside [0, C).
        NonFiniteError: NaN or Inf in the inputs, the weights or a loss.
        UnsupportedModelError: The net does not return logits, or runs BatchNorm or dropout in training mode.
        BatchDependentModelError: A BatchNorm without running statistics.
    """
    batch = prepare(net, batch_data, batch_labels, h=h, niter=niter, temp=temp, output_transform=output_transform,
                    sets_eval=False)
    curv, loss, prob = zo_scores(batch, h=h, niter=niter, temp=temp, compute_curvature=False)
    return curv, loss, prob.max(1).values, modified_entropy(prob, batch.y)
