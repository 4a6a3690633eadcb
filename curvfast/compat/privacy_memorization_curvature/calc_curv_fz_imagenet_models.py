r"""Privacy-Memorization-Curvature ``calc_curv_fz_imagenet_models.py``: ``get_regularized_curvature_for_batch``.

Returns ``(curvature, eig_values, correct)``: the two scores of ``calc_curv_fz_models.py`` (see
:mod:`curvfast.compat._fd`) and ``correct``, the number of samples whose raw-logit argmax equals the
label (a Python int, as published).

Identical by default: with the same ``torch.manual_seed``, the same n ``torch.randint_like`` draws on the
batch's device, the same numbers up to float32 rounding of the same finite differences (the published
batch-mean 1/B included; the forward and backward passes are batched differently), the generator left
where the published loop leaves it, and ``net.eval()`` called as there.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .._common import prepare
from .._fd import fd_scores

__all__ = ["get_regularized_curvature_for_batch"]


def get_regularized_curvature_for_batch(
    net: nn.Module | Callable, batch_data: torch.Tensor, batch_labels: torch.Tensor, h: float = 1e-3, niter: int = 10,
    temp: float = 1, *, seed: int | None = None, sample_ids: torch.Tensor | None = None, exact: bool = False,
    per_sample: bool = False, output_transform: Callable | None = None, pass_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(curvature, eig_values, correct)``, as the published function returns them.

    Args:
        net: The model (an ``nn.Module``, put in eval mode as published, or any callable returning logits).
        batch_data: The batch x (B, ...), float32 or float64.
        batch_labels: Its labels (B,).
        h: The probe step.
        niter: Probes n.
        temp: The loss temperature T.
        seed: Opt-in: curvfast's Philox probes keyed by (seed, sample id, probe), so scores do not depend on
            batching; torch's global generator is not touched. None: the published draws.
        sample_ids: Opt-in, with ``seed``: the samples' dataset indices (default 0..B-1).
        exact: Opt-in: h·‖H‖_F for the curvature and h²·tr(H) for the eigenvalue term (batch-mean scaled
            unless ``per_sample``): exact for piecewise-linear nets, Hutchinson for smooth ones.
        per_sample: Opt-in: per-sample losses instead of the published batch mean (scores B times the
            published ones, and the last batch no longer gets its own factor).
        output_transform: Picks the logits out of the net's output (e.g. ``lambda out: out[0]``).
        pass_size: Probes per batched pass (None: sized from the input).

    Returns:
        ``(curvature, eig_values, correct)``: two (B,) tensors on the CPU and the count of correct predictions.

    Raises:
        ConfigError: A bad h (not positive, or too small for the inputs to resolve), niter, temp, seed or sample ids.
        TypeError: ``net`` is not callable, or the batch has the wrong dtypes.
        DataError: A batch of the wrong shape or device, or a label outside [0, C).
        NonFiniteError: NaN or Inf in the inputs, the weights or a score.
        UnsupportedModelError: The net does not return logits (pass ``output_transform``).
        BatchDependentModelError: A BatchNorm without running statistics.
    """
    batch = prepare(net, batch_data, batch_labels, h=h, niter=niter, temp=temp, output_transform=output_transform,
                    sets_eval=True)
    curvature, eig_values, logits = fd_scores(batch, h=h, niter=niter, temp=temp, seed=seed, sample_ids=sample_ids,
                                              exact=exact, per_sample=per_sample, pass_size=pass_size)
    return curvature, eig_values, int((logits.argmax(1) == batch.y).sum())
