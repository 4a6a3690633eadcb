r"""Exact and sampled input curvature through the logit-space factor (README: "Why it is fast and exact").

For a piecewise-linear network the logits' second derivative vanishes almost everywhere, so
the input Hessian of the cross-entropy is the Gauss-Newton matrix

.. math::

    H_x = J^\top \big(\operatorname{diag}(p) - p p^\top\big) J
        = \sum_c p_c\, J^\top (e_c - p)(e_c - p)^\top J,

with :math:`J = \partial z / \partial x`. Writing :math:`v_c = J^\top (e_c - p)` (one vector-Jacobian
product each, all from one forward) and :math:`w_c = p_c`:

.. math::

    \operatorname{tr}(H) = \sum_c w_c \lVert v_c \rVert^2, \qquad
    \operatorname{spec}_{\neq 0}(H) = \operatorname{eig}(M), \quad M_{ij} = \sqrt{w_i w_j}\, v_i^\top v_j
    \ (K \times K), \qquad
    \lVert H \rVert_F = \lVert M \rVert_F.

Because :math:`\sum_c p_c (e_c - p) = 0`, also :math:`\sum_c p_c v_c = 0`: the exact route pulls back
C − 1 cotangents and recovers the top class r from the others,
:math:`v_r = -\frac{1}{p_r} \sum_{c \neq r} p_c v_c` (:math:`p_r \geq 1/C`, so the division is harmless).
That saves one backward pass in C (half the work for binary problems).

The cotangents :math:`e_c - p` are formed from log-softmax (:math:`1 - p_c = -\operatorname{expm1}(\log p_c)`),
so the result keeps full relative accuracy when the loss is tiny. For large C the factor keeps the
top-m classes exactly and replaces the tail by t classes drawn proportionally to p in t
strata, each weighted :math:`P_\text{tail} / t`: an unbiased estimate of the trace.
"""
from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import torch

from .. import ops
from ._batching import VJP_PLANNER, choose_pass_size

__all__ = ["logit_space_curvature", "Forward", "LogitSpaceResult", "GRAM_STATISTICS"]

GRAM_STATISTICS = ("frobenius", "top_eigenvalue", "spectrum")
BLOCK_ELEMENTS = 2**24  # VJP results (64 MiB in fp32) gathered before they are reduced


class Forward(NamedTuple):
    """A batch's forward: inputs ``x`` (B, ...) requiring grad and their ``logits`` (B, C) with the graph.

    ``factor_logits``: the same logits computed in full precision (no graph) when the graph was built in low
    precision (the bf16 policy); the factor is formed from them. None: from ``logits``.
    """

    x: torch.Tensor
    logits: torch.Tensor
    factor_logits: torch.Tensor | None = None


class LogitSpaceResult(NamedTuple):
    """What :func:`logit_space_curvature` returns.

    Attributes:
        value: the statistic (B,), or (B, K) for ``"spectrum"``.
        stderr: its standard error (B,) for the sampled tail, None when exact.
        loss: the per-sample cross-entropy (B,).
        pass_width: the classes per backward pass used.
        factor: (``return_factor`` only) the factor M (B, K, D) with rows √w_c v_c.
        logits: (``return_factor`` only) the logits (B, C), detached.
    """

    value: torch.Tensor
    stderr: torch.Tensor | None
    loss: torch.Tensor
    pass_width: int
    factor: torch.Tensor | None = None
    logits: torch.Tensor | None = None


def _pass_width(logits: torch.Tensor, xg: torch.Tensor, cot: torch.Tensor, pass_size: int | None,
                owner: object) -> int:
    """Classes per backward pass for the cotangents ``cot`` (num, B, C).

    ``pass_size`` when given, else the fastest measured by :data:`batching.VJP_PLANNER` for this model,
    shape and device (the first call times each candidate on this graph; a pinned width is used as it is).
    """
    num, batch = cot.shape[:2]
    dim = xg[0].numel()
    if pass_size is not None:
        return choose_pass_size(pass_size, num, batch, dim, xg.device)
    key = (tuple(xg.shape), num, xg.dtype, str(xg.device))
    return VJP_PLANNER.width(owner, key, num, choose_pass_size(None, num, batch, dim, xg.device),
                             lambda w: _vjp_pass(logits, xg, cot[:w], last=False), xg.device)


def _class_vjps(logits: torch.Tensor, xg: torch.Tensor, cot: torch.Tensor,
                width: int) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(k0, V)`` with V[b, k] = J_bᵀ cot[k0 + k, b] flattened to (B, k, D).

    For the cotangents ``cot`` (num, B, C), in backward passes of ``width`` classes.

    All VJPs reuse the graph of one forward. A pass of width 1 is a plain ``autograd.grad``; a
    wider pass batches the backward over classes (``is_grads_batched``, not ``vmap`` over
    ``torch.func.vjp``, which measured slower on this CPU: ResNet-18, batch 16, 9 classes in passes
    of 2 took 0.95 s against 1.26 s). Passes are gathered into blocks of up to ``BLOCK_ELEMENTS``
    numbers, so that the caller's reductions run once per block, not once per pass (on small
    models their fixed cost per call is of the order of a backward pass).
    """
    num, batch = cot.shape[:2]
    dim = xg[0].numel()
    block = max(1, BLOCK_ELEMENTS // (batch * dim) // width) * width
    for b0 in range(0, num, block):
        passes = [(k0, min(width, num - k0)) for k0 in range(b0, min(b0 + block, num), width)]
        vs = [_vjp_pass(logits, xg, cot[k0 : k0 + n], last=k0 + n >= num).reshape(n, batch, dim).transpose(0, 1)
              for k0, n in passes]
        yield b0, vs[0] if len(vs) == 1 else torch.cat(vs, dim=1)


def _vjp_pass(logits: torch.Tensor, xg: torch.Tensor, cot: torch.Tensor, last: bool) -> torch.Tensor:
    """J_bᵀ cot[k, b] for the k cotangents of one pass (k, B, C) -> (k, *x.shape).

    A batched pass that autograd cannot run (an op without a batching rule, out of memory) falls back to a loop.
    """
    if cot.shape[0] > 1:
        try:
            return torch.autograd.grad(logits, xg, cot, retain_graph=True, is_grads_batched=True)[0]
        except RuntimeError:
            pass
    rows = [torch.autograd.grad(logits, xg, c, retain_graph=not (last and k == cot.shape[0] - 1))[0]
            for k, c in enumerate(cot)]
    return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)


def logit_space_curvature(
    forward: Forward,
    y: torch.Tensor,
    sample_ids: torch.Tensor,
    *,
    owner: object,
    statistic: str,
    num_exact: int,
    num_tail: int,
    seed: int,
    pass_size: int | None,
    return_factor: bool = False,
) -> LogitSpaceResult:
    r"""Curvature statistics of the Gauss-Newton matrix :math:`J^\top A J` from C (or C − 1) class VJPs.

    Exact for piecewise-linear networks, whose input Hessian is that matrix (see the module docstring).
    All VJPs pull back through the graph of ``forward`` (its last pass frees it).

    Args:
        forward: the batch's inputs, requiring grad, and logits with their graph.
        y: int64 labels (B,).
        sample_ids: dataset indices (B,) keying the sampled tail.
        owner: the caller's model: keys the pass-width calibration.
        statistic: ``"trace"`` or one of ``GRAM_STATISTICS`` (``"frobenius"``, ``"top_eigenvalue"``,
            ``"spectrum"``).
        num_exact: classes kept exactly (all classes when C ≤ ``num_exact``: the exact route).
        num_tail: tail classes sampled when C > ``num_exact`` (trace only).
        seed: seeds the tail.
        pass_size: classes per backward pass (None: measured by :data:`.batching.VJP_PLANNER`).
        return_factor: (trace only) also return the factor M (B, K, D) with rows :math:`\sqrt{w_c} v_c`,
            so that the Gauss-Newton matrix is :math:`M^\top M` (estimated, for the sampled tail), and the
            logits (B, C), detached.

    Returns:
        A :class:`LogitSpaceResult`.

    Raises:
        ConfigError: ``pass_size`` is not a positive int.
    """
    xg, logits, factor_logits = forward
    source = (logits if factor_logits is None else factor_logits).detach()
    factor_dtype = source.dtype if source.dtype in (torch.float32, torch.float64) else torch.float32
    cot, weights, _, loss = ops.logit_factor(
        source.to(factor_dtype), y, sample_ids, num_exact=num_exact, num_tail=num_tail, seed=seed
    )
    cot = cot.to(logits.dtype).detach()
    exact = num_exact >= logits.shape[1]
    if exact:
        cot, weights, w_top = _drop_top_class(cot, weights)
    batch, num = weights.shape
    need_gram = statistic in GRAM_STATISTICS or return_factor

    terms, scaled = [], []
    pulled = None  # Σ_{c≠r} p_c v_c, (B, 1, D)
    cot = cot.transpose(0, 1).contiguous()  # (num, B, C)
    width = _pass_width(logits, xg, cot, pass_size, owner)
    for k0, v in _class_vjps(logits, xg, cot, width):
        w = weights[:, k0 : k0 + v.shape[1]].to(v.dtype)
        terms.append(ops.weighted_sq_norms(v, w))
        if exact:
            step = torch.bmm(w.unsqueeze(1), v)
            pulled = step if pulled is None else pulled + step
        if need_gram:
            scaled.append(v * w.sqrt().unsqueeze(-1))
    if exact:  # the top class: v_r = −pulled / p_r
        w_top = w_top.to(pulled.dtype).view(batch, 1)
        v_top = -pulled / w_top.unsqueeze(-1)
        terms.append(ops.weighted_sq_norms(v_top, w_top))
        if need_gram:
            scaled.append(v_top * w_top.sqrt().unsqueeze(-1))
    terms = torch.cat(terms, dim=1).to(weights.dtype)

    vs = torch.cat(scaled, dim=1) if need_gram else None
    if statistic == "trace":
        value = terms.sum(dim=1)
        stderr = None if exact else _tail_stderr(terms[:, num - num_tail :])
        return LogitSpaceResult(value, stderr, loss, width, vs, source if return_factor else None)

    gram = torch.bmm(vs, vs.transpose(1, 2))
    if statistic == "frobenius":
        value = torch.linalg.matrix_norm(gram)
    else:
        eig = torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0)
        value = eig[:, 0] if statistic == "top_eigenvalue" else eig
    return LogitSpaceResult(value, None, loss, width)


def _drop_top_class(cot: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Remove each sample's most probable class r from the exact factor (it is recovered from the others).

    Returns the C − 1 remaining cotangents and weights, and p_r.
    """
    batch, num, classes = cot.shape
    top = weights.argmax(dim=1, keepdim=True)
    rest = torch.arange(num - 1, device=cot.device).expand(batch, num - 1)
    rest = rest + (rest >= top)  # 0 .. num-1 without top, ascending
    kept = cot.gather(1, rest.unsqueeze(-1).expand(batch, num - 1, classes))
    return kept, weights.gather(1, rest), weights.gather(1, top).squeeze(1)


def _tail_stderr(tail_terms: torch.Tensor) -> torch.Tensor:
    """Standard error of the sampled tail sum, treating the t strata as independent draws.

    Conservative: stratification only lowers the variance. NaN when t = 1.
    """
    t = tail_terms.shape[1]
    if t < 2:
        return torch.full(tail_terms.shape[:1], math.nan, dtype=tail_terms.dtype, device=tail_terms.device)
    return (tail_terms.var(dim=1, correction=1) * t).sqrt()
