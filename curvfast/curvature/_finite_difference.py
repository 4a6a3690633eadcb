r"""The published gradient-free and finite-difference curvature estimators.

``fd`` (Garg, Ravikumar and Roy, "Memorization Through the Lens of Curvature of Loss Function Around
Samples", ICML 2024): with Rademacher :math:`r_k`, :math:`h = 10^{-3}`, :math:`n = 10`,

.. math::

    \mathrm{fd}(x) = \frac{1}{n} \sum_{k=1}^{n} \lVert \nabla L(x + h r_k) - \nabla L(x) \rVert
    \approx h \lVert H \rVert_F \qquad \text{(not the trace).}

The published code differentiates the batch-mean loss, which divides every score by the batch
size and rescales the last batch; curvfast differentiates per-sample (sum-reduced) losses, so
its values are the published ones times the published batch size.

``zo`` (Ravikumar, Soufleri, Hashemi and Roy, "Curvature Clues: Decoding Deep Learning Privacy with
Input Loss Curvature", NeurIPS 2024), from loss values only, with Rademacher :math:`u_k, v_k`:

.. math::

    \mathrm{zo}(x) = \frac{1}{n} \sum_{k=1}^{n} \frac{\lvert L(x + h v_k + h u_k) - L(x - h v_k + h u_k)
    - L(x + h v_k - h u_k) + L(x - h v_k - h u_k) \rvert}{4h}
    \approx h \lvert v_k^\top H u_k \rvert, \qquad
    \mathbb{E}\, \mathrm{zo}(x) \approx h \sqrt{2/\pi}\, \lVert H \rVert_F.

Both run with TF32 off: TF32 rounds at about the size of an h = 1e-3 step. On ReLU/max-pool
networks the steps cross activation kinks, so neither tracks the autograd Hessian there.

zo's rounding floor. Each loss is stored with a spacing :math:`\operatorname{ulp}(L)` (:math:`2^{-23}` relative in
float32), and the softmax's sum :math:`\sum_c e^{z_c - z_{max}} \ge 1` rounds at :math:`\operatorname{ulp}(1)`
whatever the loss, so the four-point difference of float losses carries a rounding error of the order of
:math:`u = \operatorname{ulp}(\max(|L|, 1))`: up to :math:`2u` for four values rounded by :math:`u/2` each. Divided
by :math:`4h`, every stencil value has a floor

.. math::

    \mathrm{floor}(x) = \frac{\operatorname{ulp}(\max(|L|, 1))}{4h}

below which it is rounding, not curvature (3.0e-5 for float32 losses near 1.6 at h = 1e-3; docs/estimators.md
gives the measured effect). :func:`zo_curvature` returns it per sample; a value at most
:data:`FLOOR_MULTIPLE` times it is flagged (``CurvatureResult.below_rounding_floor``).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .. import ops
from ..errors import ConfigError, UnsupportedModelError
from ._batching import choose_pass_size
from ._model import LogitFn
from ._precision import no_tf32

__all__ = ["fd_curvature", "fd_probe_terms", "zo_curvature", "rounding_floor", "FLOOR_MULTIPLE"]

# A zo value at most this many rounding floors is flagged: rounding, not curvature. Four losses each rounded by half
# an ulp move a stencil by up to 2 floors (the largest one-probe value measured on a net whose true value is 0.006
# floor: exactly 2); 2.5 keeps that worst case flagged through the floor's own rounding, below the next value, 3.
FLOOR_MULTIPLE = 2.5


def _check_step(step: float) -> None:
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0:
        raise ConfigError(f"step must be a positive finite number, the finite-difference step h (got {step!r}); "
                         "the published estimators use 1e-3")


def _mean_and_stderr(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    num = samples.shape[1]
    stderr = samples.std(dim=1, correction=1) / num**0.5 if num > 1 else torch.full_like(samples[:, 0], float("nan"))
    return samples.mean(dim=1), stderr


def fd_probe_terms(logit_fn: LogitFn, x: torch.Tensor, y: torch.Tensor, sample_ids: torch.Tensor, *, probes: int,
                   seed: int, step: float,
                   pass_size: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per-probe terms of the Garg et al. estimator on per-sample losses.

    With :math:`g_k = \nabla L(x + h r_k)` and :math:`g_0 = \nabla L(x)`:

    .. math::

        \mathrm{norms}_k = \lVert g_k - g_0 \rVert \approx h \lVert H r_k \rVert, \qquad
        \mathrm{directional}_k = (h r_k)^\top (g_k - g_0) \approx h^2 r_k^\top H r_k,

    whose mean estimates :math:`h^2 \operatorname{tr}(H)` (the published code's "eigs").

    Args:
        logit_fn: the model's logits.
        x: inputs (B, ...).
        y: int64 labels (B,).
        sample_ids: dataset indices (B,) keying the Rademacher probes :math:`r_k`.
        probes: probes n per sample.
        seed: seeds the probes.
        step: the finite-difference step h, positive and finite.
        pass_size: probes per batched pass (None: sized from the input).

    Returns:
        ``(norms, directional, loss)``: the two (B, n) terms and the per-sample losses (B,).

    Raises:
        ConfigError: ``step`` is not a positive finite number, or ``pass_size`` not a positive int.
    """
    _check_step(step)
    batch, dim = x.shape[0], x[0].numel()
    chunk = choose_pass_size(pass_size, probes, batch, dim, x.device)
    x = x.detach()
    with no_tf32(), torch.enable_grad():
        x0 = x.clone().requires_grad_(True)
        loss = F.cross_entropy(logit_fn(x0), y, reduction="none")
        (g0,) = torch.autograd.grad(loss.sum(), x0)
        norms, directional = [], []
        for p0 in range(0, probes, chunk):
            num = min(chunk, probes - p0)
            r = ops.probes(sample_ids, num, dim, seed=seed, probe_offset=p0, distribution="rademacher", dtype=x.dtype)
            xp = (x.reshape(batch, 1, dim) + step * r).reshape(batch * num, *x.shape[1:]).requires_grad_(True)
            lp = F.cross_entropy(logit_fn(xp), y.repeat_interleave(num), reduction="sum")
            (gp,) = torch.autograd.grad(lp, xp)
            diff = gp.reshape(batch, num, dim) - g0.reshape(batch, 1, dim)
            norms.append(diff.norm(dim=2))
            directional.append(step * (r * diff).sum(dim=2))
    return torch.cat(norms, dim=1), torch.cat(directional, dim=1), loss.detach()


def fd_curvature(logit_fn: LogitFn, x: torch.Tensor, y: torch.Tensor, sample_ids: torch.Tensor, *, probes: int,
                 seed: int, step: float, pass_size: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Garg et al. finite-difference estimator on per-sample losses (see the module docstring).

    Args:
        logit_fn: the model's logits.
        x: inputs (B, ...).
        y: int64 labels (B,).
        sample_ids: dataset indices (B,) keying the probes.
        probes: probes n per sample.
        seed: seeds the probes.
        step: the finite-difference step h.
        pass_size: probes per batched pass (None: sized from the input).

    Returns:
        ``(value, stderr, loss)``, each (B,): the mean of the n gradient-difference norms, its standard
        error (NaN for one probe), the per-sample losses.

    Raises:
        ConfigError: ``step`` is not a positive finite number, or ``pass_size`` not a positive int.
    """
    norms, _, loss = fd_probe_terms(logit_fn, x, y, sample_ids, probes=probes, seed=seed, step=step,
                                    pass_size=pass_size)
    value, stderr = _mean_and_stderr(norms)
    return value, stderr, loss


def zo_curvature(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    sample_ids: torch.Tensor,
    *,
    probes: int,
    seed: int,
    step: float,
    pass_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Curvature Clues zero-order estimator, from loss values only (see the module docstring).

    Args:
        loss_fn: the loss oracle, a black box: ``loss_fn(x, y)`` returns per-sample losses (B,).
        x: inputs (B, ...).
        y: int64 labels (B,).
        sample_ids: dataset indices (B,) keying the Rademacher probes :math:`u_k, v_k`.
        probes: probes n per sample.
        seed: seeds the probes.
        step: the finite-difference step h.
        pass_size: probes per batched pass (None: sized from the input).

    Returns:
        ``(value, stderr, loss, floor)``, each (B,): the mean of the n stencil values, its standard error (NaN
        for one probe), the losses at ``x``, and the stencil's rounding floor (:func:`rounding_floor` of the
        largest loss the sample's stencil evaluated, in the dtype ``loss_fn`` returns).

    Raises:
        ConfigError: ``step`` is not a positive finite number, or ``pass_size`` not a positive int.
        UnsupportedModelError: ``loss_fn`` does not return a tensor of shape (B,).
    """
    _check_step(step)
    batch, dim = x.shape[0], x[0].numel()
    # probes per pass; each stencil point is its own pass of B x num inputs. One pass over all four
    # points (4B inputs) ran at 0.76x the published loop's speed on the CPU, four passes at parity
    # (0.99x-1.09x; benchmarks/compat.py, CIFAR ResNet-18, B = 16, one thread).
    chunk = choose_pass_size(pass_size, probes, batch, dim, x.device)
    # (sign v, sign u, coefficient)
    stencil = ((1.0, 1.0, 1.0), (-1.0, 1.0, -1.0), (1.0, -1.0, -1.0), (-1.0, -1.0, 1.0))
    x = x.detach()
    samples = []
    with no_tf32(), torch.no_grad():
        loss = _checked_losses(loss_fn, x, y)
        largest = loss.abs()
        for p0 in range(0, probes, chunk):
            num = min(chunk, probes - p0)
            r = ops.probes(sample_ids, 2 * num, dim, seed=seed, probe_offset=2 * p0, distribution="rademacher",
                           dtype=x.dtype)
            v, u = r[:, 0::2], r[:, 1::2]  # (B, num, D) each
            second = torch.zeros(batch, num, dtype=torch.float64, device=x.device)
            for sv, su, coef in stencil:
                pts = (x.reshape(batch, 1, dim) + step * (sv * v + su * u)).reshape(batch * num, *x.shape[1:])
                losses = _checked_losses(loss_fn, pts, y.repeat_interleave(num))
                second += coef * losses.reshape(batch, num).to(torch.float64)
                largest = torch.maximum(largest, losses.reshape(batch, num).abs().amax(dim=1))
            samples.append(second.abs() / (4 * step))
    value, stderr = _mean_and_stderr(torch.cat(samples, dim=1))
    return value.to(x.dtype), stderr.to(x.dtype), loss, rounding_floor(largest, step).to(x.dtype)


def rounding_floor(loss: torch.Tensor, step: float) -> torch.Tensor:
    r"""The rounding floor :math:`\operatorname{ulp}(\max(|L|, 1)) / (4h)` of zo stencils on losses ``loss``.

    Args:
        loss: per-sample losses (B,) in the dtype they were computed in (the largest of each sample's stencil).
        step: the finite-difference step h.

    Returns:
        (B,) floors in ``loss``'s dtype: a stencil value below about this size is the losses' rounding.
    """
    top = loss.detach().abs().clamp_min(1.0)
    return (torch.nextafter(top, torch.full_like(top, float("inf"))) - top) / (4 * step)


def _checked_losses(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
    out = loss_fn(x, y)
    if not isinstance(out, torch.Tensor) or out.shape != (x.shape[0],):
        raise UnsupportedModelError(
            "the loss oracle must return per-sample losses of shape (B,) "
            f"= ({x.shape[0]},); got {getattr(out, 'shape', type(out).__name__)}"
        )
    return out
