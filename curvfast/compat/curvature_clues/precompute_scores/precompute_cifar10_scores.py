r"""Curvature-Clues ``precompute_scores/precompute_cifar10_scores.py``: ``get_curvature_for_batch_zo_v2``.

The same function is defined in ``precompute_cifar100_scores.py`` and ``precompute_cifar100_scores_dp.py``
(their modules here re-export this one). It returns ``(curv_estimate, loss_pos, max_prob)``: the zero-order
curvature (:mod:`curvfast.compat._zo`), the cross-entropy of ``logits / temp`` and the maximum softmax
probability of the raw logits.

Identical by default: with the same ``torch.manual_seed``, the same 2n ``torch.randint_like`` draws (v then u
for each probe pair, on the batch's device), the same numbers up to float32 rounding of the same stencil
(the forward passes are batched differently), the generator left where the published loop leaves it. The
net runs as given (the published scripts call ``net.eval()`` first; BatchNorm or dropout in training mode
is refused).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..._common import prepare
from ..._zo import zo_scores

__all__ = ["get_curvature_for_batch_zo_v2"]


def get_curvature_for_batch_zo_v2(
    net: nn.Module | Callable, batch_data: torch.Tensor, batch_labels: torch.Tensor, h: float = 1e-3, niter: int = 10,
    temp: float = 1, device: str = "cpu", *, seed: int | None = None, sample_ids: torch.Tensor | None = None,
    exact: bool = False, output_transform: Callable | None = None, pass_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``(curv_estimate, loss_pos, max_prob)``, each (B,), as the published function returns them.

    .. math:: \mathrm{curv}(x) = \frac{1}{n} \sum_k
              \frac{|L(x+v_k+u_k) - L(x-v_k+u_k) - L(x+v_k-u_k) + L(x-v_k-u_k)|}{4h}

    The positional arguments are the published ones (``device`` is accepted and unused, as there). The
    keyword-only arguments are curvfast's opt-ins, which change the numbers or the draws on purpose.

    Args:
        net: The model (an ``nn.Module``, or any callable returning logits).
        batch_data: The batch x (B, ...), float32 or float64.
        batch_labels: Its labels (B,).
        h: The probe step.
        niter: Probe pairs n.
        temp: Divides the logits of the returned loss only (the stencil uses the raw logits), as published.
        device: Accepted and unused, as in the published function.
        seed: Opt-in: curvfast's Philox probes keyed by (seed, sample id, probe), so scores do not depend on
            batching; torch's global generator is not touched. None: the published draws.
        sample_ids: Opt-in, with ``seed``: the samples' dataset indices (default 0..B-1).
        exact: Opt-in: h·‖H‖_F instead of the estimate (exact for piecewise-linear nets, C backward passes;
            Hutchinson for smooth ones). The published mean of |h r_vᵀHr_u| is about √(2/π) of it.
        output_transform: Picks the logits out of the net's output (e.g. ``lambda out: out[0]`` for a net
            returning a tuple); the published function would fail on such a net.
        pass_size: Probe pairs per batched pass (None: sized from the input).

    Returns:
        ``(curv_estimate, loss_pos, max_prob)``, each (B,) on the batch's device.

    Raises:
        ConfigError: A bad h (not positive, or too small for the inputs to resolve), niter, temp, seed or sample ids.
        TypeError: ``net`` is not callable, or the batch has the wrong dtypes.
        DataError: A batch of the wrong shape or device, or a label outside [0, C).
        NonFiniteError: NaN or Inf in the inputs, the weights, a score or a loss.
        UnsupportedModelError: The net does not return logits (pass ``output_transform``), or runs BatchNorm
            or dropout in training mode.
        BatchDependentModelError: A BatchNorm without running statistics.
    """
    batch = prepare(net, batch_data, batch_labels, h=h, niter=niter, temp=temp, output_transform=output_transform,
                    sets_eval=False)
    curv, loss, prob = zo_scores(batch, h=h, niter=niter, temp=temp, seed=seed, sample_ids=sample_ids, exact=exact,
                                 pass_size=pass_size)
    return curv, loss, prob.max(1).values
