"""Drop-in replacements for the Curvature Clues zeroth-order scorer (Ravikumar et al., NeurIPS 2024).

The published ``precompute_scores/`` scripts of DeepakTatachar/Curvature-Clues define
``get_curvature_for_batch_zo_v2`` (CIFAR) and ``get_curvature_for_batch_zo`` (ImageNet, which also
returns Song & Mittal's modified entropy). Both estimate, from loss values only, with Rademacher
u_k, v_k and n = ``niter`` probe pairs,

    curv(x) = (1/n) Σ_k |L(x+hv+hu) − L(x−hv+hu) − L(x+hv−hu) + L(x−hv−hu)| / (4h) ≈ h·|vᵀHu|

with L the per-sample cross-entropy of the raw logits (``temp`` scales only the returned loss, as
published). These functions take the same arguments and return the same tuples; the estimate is
curvfast's batched ``zo`` estimator: the same statistic, probes keyed by (seed, sample id, probe)
so scores do not depend on batching, fp32 with TF32 off. Differences from the published loop:
probes are ±h exactly (the published h·(r + 1e-7) offset is a 1e-7 relative change), and the model
runs in eval mode with the caller's mode restored (the published scripts call ``net.eval()`` first).

``exact=True`` returns h·‖H‖_F instead (E[(h vᵀHu)²] = h²‖H‖_F² for independent Rademacher
probes): exact for piecewise-linear networks (C backward passes), Hutchinson otherwise. The
published mean of |h vᵀHu| is about √(2/π) of it when H has many non-negligible eigenvalues.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..curvature._finite_difference import zo_curvature
from ..curvature._model import LogitFn, scoring_mode
from ._common import draw_seed, hessian_statistic, prepare, sample_ids_for, scaled_logits

__all__ = ["get_curvature_for_batch_zo_v2", "get_curvature_for_batch_zo", "modified_entropy"]


def modified_entropy(prob: torch.Tensor, labels: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    r"""Song & Mittal (2021) modified prediction entropy, as the published scorer computes it.

    .. math:: -(1 - p_y) \log p_y - \sum_{c \ne y} p_c \log(1 - p_c + \epsilon)

    Args:
        prob: Softmax probabilities (B, C).
        labels: The labels y (B,), int64.
        eps: The published :math:`\epsilon` inside the log.

    Returns:
        The modified entropy per sample (B,).
    """
    p_y = prob.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = prob.scatter(1, labels.unsqueeze(1), 0.0)
    return -(1 - p_y) * torch.log(p_y) - (others * torch.log(1 - others + eps)).sum(1)


def _zo_scores(net: nn.Module, batch_data: torch.Tensor, batch_labels: torch.Tensor, h: float, niter: int,
               temp: float, seed: int | None, sample_ids: torch.Tensor | None, exact: bool, pass_size: int | None,
               compute_curvature: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    model, x, y = prepare(net, batch_data, batch_labels, h, niter)
    transform = scaled_logits(temp)
    seed, ids = draw_seed(seed), sample_ids_for(sample_ids, x)
    with scoring_mode(model), torch.no_grad():
        logits = LogitFn(model)(x)
    loss = F.cross_entropy(transform(logits), y, reduction="none")
    prob = torch.softmax(logits, 1)
    if not compute_curvature:
        curv = torch.zeros_like(loss)
    elif exact:
        curv = h * hessian_statistic(model, x, y, "frobenius", None, seed, ids)
    else:
        logit_fn = LogitFn(model)
        with scoring_mode(model):
            curv, _, _ = zo_curvature(lambda xb, yb: F.cross_entropy(logit_fn(xb), yb, reduction="none"), x, y, ids,
                                      probes=niter, seed=seed, step=h, pass_size=pass_size)
    return curv, loss, prob, y


def get_curvature_for_batch_zo_v2(
    net: nn.Module, batch_data: torch.Tensor, batch_labels: torch.Tensor, h: float = 1e-3, niter: int = 10,
    temp: float = 1, device: str = "cpu", *, seed: int | None = None, sample_ids: torch.Tensor | None = None,
    exact: bool = False, pass_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``(curv, loss, max_prob)``, each (B,).

    The zero-order curvature (higher = more curved), the cross-entropy of ``logits / temp`` and the maximum softmax
    probability.

    Same positional arguments as the published function (``device`` is accepted and unused, as
    there). Keyword-only: ``seed`` (default: drawn from torch's global generator, so each call gets
    fresh probes), ``sample_ids`` (dataset indices: with a fixed seed, scores do not depend on
    batching), ``exact`` (h·‖H‖_F instead of the estimate), ``pass_size`` (probes per batched pass).

    .. math:: \mathrm{curv}(x) = \frac{1}{n} \sum_k \frac{|L(x+hv+hu) - L(x-hv+hu) - L(x+hv-hu) + L(x-hv-hu)|}{4h}
              \approx h |v^T H u|

    Args:
        net: The model returning logits.
        batch_data: The batch x (B, ...).
        batch_labels: Its labels (B,).
        h: The probe step, > 0.
        niter: Probe pairs n per sample.
        temp: Scales the logits of the returned loss only, as published.
        device: Accepted and unused, as in the published function.
        seed: Seeds the probes (None: drawn from torch's global generator).
        sample_ids: (B,) dataset indices keying the probes (default 0..B-1).
        exact: Return h·‖H‖_F instead of the estimate.
        pass_size: Probes per batched pass (None: automatic).

    Returns:
        ``(curv, loss, max_prob)``, each (B,).

    Raises:
        ConfigError: For h <= 0, niter < 1, temp <= 0, a negative or non-int seed, or bad ``sample_ids``.
        TypeError: When ``net`` is not an ``nn.Module`` or the batch has the wrong dtypes.
        DataError: For a batch of the wrong shape (labels of another length, an empty or unbatched input).
        NonFiniteError: When the inputs hold NaN or Inf.
    """
    curv, loss, prob, _ = _zo_scores(net, batch_data, batch_labels, h, niter, temp, seed, sample_ids, exact, pass_size)
    return curv, loss, prob.max(1).values


def get_curvature_for_batch_zo(
    net: nn.Module, batch_data: torch.Tensor, batch_labels: torch.Tensor, h: float = 1e-3, niter: int = 10,
    temp: float = 1, device: str = "cpu", compute_curvature: bool = True, *, seed: int | None = None,
    sample_ids: torch.Tensor | None = None, exact: bool = False, pass_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(curv, loss, max_prob, m_entropy)``.

    As :func:`get_curvature_for_batch_zo_v2` plus Song & Mittal's modified entropy of the softmax;
    ``compute_curvature=False`` skips the probes and returns zeros for ``curv``, as published.

    Args:
        net: The model returning logits.
        batch_data: The batch x (B, ...).
        batch_labels: Its labels (B,).
        h: The probe step, > 0.
        niter: Probe pairs n per sample.
        temp: Scales the logits of the returned loss only, as published.
        device: Accepted and unused, as in the published function.
        compute_curvature: False returns zeros for ``curv`` without probing.
        seed: Seeds the probes (None: drawn from torch's global generator).
        sample_ids: (B,) dataset indices keying the probes (default 0..B-1).
        exact: Return h·‖H‖_F instead of the estimate.
        pass_size: Probes per batched pass (None: automatic).

    Returns:
        ``(curv, loss, max_prob, m_entropy)``, each (B,).

    Raises:
        ConfigError: For h <= 0, niter < 1, temp <= 0, a negative or non-int seed, or bad ``sample_ids``.
        TypeError: When ``net`` is not an ``nn.Module`` or the batch has the wrong dtypes.
        DataError: For a batch of the wrong shape (labels of another length, an empty or unbatched input).
        NonFiniteError: When the inputs hold NaN or Inf.
    """
    curv, loss, prob, y = _zo_scores(net, batch_data, batch_labels, h, niter, temp, seed, sample_ids, exact,
                                     pass_size, compute_curvature)
    return curv, loss, prob.max(1).values, modified_entropy(prob, y)
