r"""Smooth models: the exact Gauss-Newton trace plus the residual's trace, deflated on the Gauss-Newton range.

This is the ``"deflated"`` method, what ``auto`` runs for smooth models. For any twice-differentiable
network the input Hessian of the cross-entropy splits as

.. math::

    H = J^\top A J + R, \qquad R = \sum_c g_c \nabla_x^2 z_c, \qquad
    g = \frac{\partial L}{\partial z} = p - e_y \quad \text{(held fixed).}

1. :math:`\operatorname{tr}(J^\top A J)` comes exactly from the logit-space factor (C − 1 VJPs; for
   C > 100 the top classes exactly and a sampled tail), which also yields the factor M with
   :math:`J^\top A J = M^\top M`.
2. Q (D x K, orthonormal) spans the top-K eigendirections of :math:`J^\top A J`, from the K x K Gram
   :math:`M M^\top` (no extra pass). For any orthonormal Q, with :math:`P = I - Q Q^\top`,

   .. math::

       \operatorname{tr}(R) = \operatorname{tr}(Q^\top R Q) + \operatorname{tr}(P R P):

   the first term exactly from K HVPs of R, the second by Hutchinson (1989) with projected
   probes :math:`w = P\omega` (:math:`\mathbb{E}[w w^\top] = P` for Rademacher or Gaussian ω), whose
   sample variance gives the standard error. Q does not depend on ω, so the estimate is unbiased (as
   in Hutch++, Meyer, Musco, Musco and Woodruff, SOSA 2021, which deflates with a random sketch of H;
   here the sketch is the Gauss-Newton range, which costs VJPs instead of HVPs).
3. When D ≤ K + probes the same identity is used with Q = I: D HVPs, no probes, exact.

Why this split: on a GELU / LayerNorm / tanh MLP trained on digits (float64 Hessians of 6
samples), one Rademacher probe's relative spread was 0.41–0.87 for tr(H), 0.19–0.22 for tr(R)
with the exact Gauss-Newton trace as control variate, and 0.05–0.08 for tr(PRP) with the
9-dimensional Gauss-Newton range deflated — about as low as deflating H's own top 10
eigenvectors (0.04–0.07). A misclassified sample (loss 3.0) had 8.9 / 7.3 / 1.4.
The gain needs the Gauss-Newton part to dominate, as it does for samples a model fits (small
loss). At high loss, e.g. an untrained model, R can dominate and partly cancel JᵀAJ; there the
split's spread can equal or exceed plain Hutchinson's at equal HVPs (seen on the tests' random
attention model at loss ≈ 2.7). The standard error reports it either way.

HVPs of R are HVPs of :math:`s(x) = \sum_b g_b^\top z_b(x)` with g detached and formed through log-softmax
(:math:`g_y = \operatorname{expm1}(\log p_y)`); with the Gauss-Newton part from log-softmax too, fp32 keeps its relative
accuracy at tiny loss, where an fp32 HVP of the loss itself rounds p_y to 1 and cancels. For a
piecewise-linear net autograd gives R = 0 exactly, and the result equals ``exact``.
"""
from __future__ import annotations

import torch

from .. import ops
from ._hutchinson import hvp_passes
from ._logit_space import Forward, logit_space_curvature
from ._model import LogitFn

__all__ = ["deflated_curvature"]


def loss_gradient_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""The cross-entropy's gradient in logit space, accurate when :math:`p_y \approx 1`.

    .. math::

        g = \frac{\partial L}{\partial z} = \operatorname{softmax}(z) - e_y, \qquad
        g_y = \operatorname{expm1}(\log p_y).

    Args:
        logits: the logits z (B, C).
        y: int64 labels (B,).

    Returns:
        g (B, C), in the logits' dtype (computed in float64).
    """
    log_p = torch.log_softmax(logits.double(), dim=1)
    g = log_p.exp()
    g.scatter_(1, y[:, None], torch.expm1(log_p.gather(1, y[:, None])))
    return g.to(logits.dtype)


def gauss_newton_basis(factor: torch.Tensor, rank: int) -> torch.Tensor:
    r"""An orthonormal basis of the top eigendirections of the Gauss-Newton matrix :math:`M^\top M`.

    Computed from the small Gram matrix :math:`M M^\top`: no pass through the model.

    Args:
        factor: M (B, n, D), one row :math:`\sqrt{w_c} v_c` per class (see :mod:`.logit_space`).
        rank: K, the eigendirections kept (at most n).

    Returns:
        Orthonormal rows (B, K, D) spanning the top-K eigendirections of :math:`M^\top M`.
    """
    gram = torch.bmm(factor, factor.transpose(1, 2))
    _, vecs = torch.linalg.eigh(gram)
    top = vecs[:, :, -rank:]  # (B, n, K): eigenvectors of the K largest eigenvalues
    q, _ = torch.linalg.qr(torch.bmm(factor.transpose(1, 2), top))  # (B, D, K)
    return q.transpose(1, 2)


def deflated_curvature(
    logit_fn: LogitFn,
    forward: Forward,
    y: torch.Tensor,
    sample_ids: torch.Tensor,
    *,
    probes: int,
    rank: int,
    num_exact: int,
    num_tail: int,
    seed: int,
    distribution: str,
    hvp: str,
    pass_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, int]:
    r"""The trace of the input Hessian: exact Gauss-Newton part plus deflated Hutchinson residual.

    .. math::

        \operatorname{tr}(H) = \operatorname{tr}(J^\top A J) + \operatorname{tr}(Q^\top R Q)
        + \operatorname{tr}(P R P), \qquad P = I - Q Q^\top,

    the first two terms exact, the last by Hutchinson with projected probes (see the module docstring).

    Args:
        logit_fn: the model's logits (the HVPs of R run through it).
        forward: the batch's forward, whose graph the Gauss-Newton part's VJPs reuse (and free).
        y: int64 labels (B,).
        sample_ids: dataset indices (B,) keying the probes and the sampled tail.
        probes: Hutchinson probes of the residual.
        rank: Gauss-Newton directions K deflated (at most C − 1).
        num_exact: classes of the Gauss-Newton part kept exactly (all of them for C ≤ ``num_exact``).
        num_tail: tail classes sampled for the Gauss-Newton part when C > ``num_exact``.
        seed: seeds the probes and the tail.
        distribution: ``"rademacher"`` or ``"gaussian"`` residual probes.
        hvp: the HVP route, one of :data:`.hutchinson.HVP_MODES`.
        pass_size: classes or directions per pass (None: sized from the input or measured).

    Returns:
        ``(trace, stderr, loss, width)``: the estimate (B,), its standard error (B,) or None when the result
        is exact, the per-sample loss (B,), and the classes per pass of the Gauss-Newton part's VJPs.

    Raises:
        ConfigError: ``pass_size`` is not a positive int.
    """
    x = forward.x.detach()
    gn_trace, gn_stderr, loss, width, factor, logits = logit_space_curvature(
        forward, y, sample_ids, owner=logit_fn.owner, statistic="trace", num_exact=num_exact, num_tail=num_tail,
        seed=seed, pass_size=pass_size, return_factor=True,
    )
    batch, dim = x.shape[0], x[0].numel()
    rank = min(rank, factor.shape[1], logits.shape[1] - 1)
    g = loss_gradient_logits(logits, y)

    def objective(z, rows):  # Σ_b g_bᵀ z_b: its input Hessian is R
        return (z * g[rows]).sum()

    exact = dim <= rank + probes
    if exact:
        basis = torch.eye(dim, dtype=x.dtype, device=x.device).expand(batch, dim, dim)
    else:
        basis = gauss_newton_basis(factor, rank)
    num_basis, num_probes = basis.shape[1], 0 if exact else probes

    def directions(p0, num):  # basis rows first, then the projected residual probes, in shared passes
        parts = [basis[:, p0 : min(num_basis, p0 + num)]]
        if p0 + num > num_basis:
            r0 = max(p0, num_basis) - num_basis
            w = ops.probes(sample_ids, p0 + num - num_basis - r0, dim, seed=seed, probe_offset=r0,
                           distribution=distribution, dtype=x.dtype)
            parts.append(w - torch.bmm(torch.bmm(w, basis.transpose(1, 2)), basis))
        return torch.cat(parts, dim=1)

    value = gn_trace.double()
    mean = torch.zeros(batch, 2, dtype=torch.float64, device=x.device)
    m2 = torch.zeros_like(mean)
    passes = hvp_passes(logit_fn, x, objective, directions, num_basis + num_probes, hvp=hvp, pass_size=pass_size)
    for p0, v, hv in passes:
        k = max(0, min(num_basis - p0, v.shape[1]))  # this pass's basis rows
        value = value + (v[:, :k] * hv[:, :k]).sum(dim=(1, 2)).double()
        if k < v.shape[1]:
            mean, m2 = ops.probe_moments(v[:, k:], hv[:, k:], mean, m2, max(0, p0 - num_basis))
    if exact:
        return value.to(x.dtype), gn_stderr, loss, width
    var = m2[:, 0] / (probes * (probes - 1)) if probes > 1 else torch.full_like(m2[:, 0], float("nan"))
    if gn_stderr is not None:
        var = var + gn_stderr.double().square()
    return (value + mean[:, 0]).to(x.dtype), var.sqrt().to(x.dtype), loss, width
