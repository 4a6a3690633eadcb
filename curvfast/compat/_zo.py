r"""The zero-order scorer of Curvature Clues (Ravikumar et al., NeurIPS 2024), in the published contract.

From loss values only, with the published probes :math:`v_k, u_k = h(r + 10^{-7})`, r Rademacher, and
n = ``niter`` probe pairs:

.. math:: \mathrm{curv}(x) = \frac{1}{n} \sum_k \frac{|L(x+v_k+u_k) - L(x-v_k+u_k) - L(x+v_k-u_k) + L(x-v_k-u_k)|}{4h}
          \approx h |r_v^\top H r_u|

with L the per-sample cross-entropy of the raw logits. The published loop runs 4n forward passes of the
batch and rewrites every probe row by row in Python; here the probes of several k share one batched pass
per stencil point (the per-row rewrite is one vectorised op). The probe draws, their order, the stencil,
its float32 accumulator and the 1/n are the published ones.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..curvature._batching import choose_pass_size
from ..curvature._finite_difference import zo_curvature
from ._common import (Batch, check_finite_scores, checked_logits, hessian_statistic, philox_keys, published_probe,
                      running)

__all__ = ["zo_scores", "modified_entropy"]


def modified_entropy(prob: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    r"""Song & Mittal's (2021) modified prediction entropy, with the published :math:`10^{-9}` inside the log.

    .. math:: -(1 - p_y) \log p_y - \sum_{c \ne y} p_c \log(1 - p_c + 10^{-9})

    Args:
        prob: Softmax probabilities (B, C).
        labels: The labels y (B,), int64.

    Returns:
        The modified entropy per sample (B,).
    """
    p_y = prob.gather(1, labels.unsqueeze(1)).squeeze(1)
    others = prob.scatter(1, labels.unsqueeze(1), 0.0)
    return -(1 - p_y) * torch.log(p_y) - (others * torch.log(1 - others + 1e-9)).sum(1)


def _published_sum(losses: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, h: float, niter: int,
                   chunk: int, out: torch.Tensor) -> None:
    """Add the published loop's n stencil magnitudes to ``out``, drawing v_k then u_k for each k in turn."""
    for p0 in range(0, niter, chunk):
        num = min(chunk, niter - p0)
        pairs = [(published_probe(x, h), published_probe(x, h)) for _ in range(num)]
        v, u, xs = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), x.unsqueeze(0)
        second = (losses(xs + v + u) - losses(xs - v + u) - losses(xs + v - u) + losses(xs - v - u)) / (4 * h)
        for k in range(num):
            out += torch.abs(second[k])


def zo_scores(batch: Batch, *, h: float, niter: int, temp: float, compute_curvature: bool = True,
              seed: int | None = None, sample_ids: torch.Tensor | None = None, exact: bool = False,
              pass_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(curv, loss, prob)`` of a validated batch: the zero-order curvature, CE(logits / temp, y), the softmax.

    Args:
        batch: The validated call.
        h: The step.
        niter: Probe pairs n.
        temp: Divides the logits of the returned loss only, as published.
        compute_curvature: False: ``curv`` is zeros and nothing is drawn (published).
        seed: Opt-in: curvfast's Philox probes keyed by (seed, sample id, probe), exactly ±h, mean in float64,
            never touching torch's generator. None: the published probes.
        sample_ids: Dataset indices (B,) keying the Philox probes (with ``seed`` only).
        exact: Opt-in: h·‖H‖_F, what E[(h r_vᵀHr_u)²]^½ is (no probes; Hutchinson for smooth nets).
        pass_size: Probes per batched pass (None: sized from the input).

    Returns:
        ``(curv, loss, prob)``: (B,), (B,), (B, C), on the batch's device.

    Raises:
        DataError: A label outside [0, C).
        NonFiniteError: A NaN or infinite score or loss.
        ConfigError: Bad seed or sample ids, or ``exact`` with a plain callable.
    """
    x, y, logit_fn = batch.x, batch.y, batch.logit_fn
    keys = philox_keys(seed, sample_ids, x)
    with running(batch):
        with torch.no_grad():
            logits = checked_logits(batch, x)
        loss = F.cross_entropy(logits / temp, y, reduction="none")
        prob = torch.softmax(logits, 1)
        curv = torch.zeros(x.shape[0], device=x.device)  # the published accumulator: the default dtype
        if compute_curvature and exact:
            curv = (h * hessian_statistic(batch, y, "frobenius", lambda z: z, seed, keys)).to(curv.dtype)
        elif compute_curvature and keys is not None:
            def per_sample(xb, yb):
                return F.cross_entropy(logit_fn(xb), yb, reduction="none")

            value = zo_curvature(per_sample, x, y, keys, probes=niter, seed=seed, step=h, pass_size=pass_size)[0]
            curv = value.to(curv.dtype)
        else:
            if compute_curvature:
                chunk = choose_pass_size(pass_size, niter, x.shape[0], x[0].numel(), x.device)
                shape = x.shape

                def losses(points):
                    num = points.shape[0]
                    out = F.cross_entropy(logit_fn(points.reshape(num * shape[0], *shape[1:])), y.repeat(num),
                                          reduction="none")
                    return out.reshape(num, shape[0])

                with torch.no_grad():
                    _published_sum(losses, x, h, niter, chunk, curv)
            curv = curv / niter
    check_finite_scores(curvature=curv, loss=loss)
    return curv, loss, prob
