r"""The finite-difference scorer of the memorization papers, in the published contract.

Garg et al., "Memorization Through the Lens of Curvature of Loss Function Around Samples", ICML 2024;
Ravikumar et al., "Unveiling Privacy, Memorization, and Input Curvature Links", ICML 2024. With the
published probes :math:`v_k = h(r_k + 10^{-7})`, r Rademacher, the batch-mean loss
:math:`\bar L = \frac{1}{B} \sum_b CE(f(x_b)/T, y_b)` and n = ``niter``:

.. math:: \mathrm{curv}_b = \frac{1}{n} \sum_k \lVert \nabla_{x_b} \bar L(x + v_k) - \nabla_{x_b} \bar L(x) \rVert
          \approx \frac{h}{B} \lVert H_b r_k \rVert, \qquad
          \mathrm{eig}_b = \frac{1}{n} \sum_k v_{k,b}^\top (\nabla_{x_b} \bar L(x + v_k) - \nabla_{x_b} \bar L(x))
          \approx \frac{h^2}{B} r^\top H_b r

The published loop runs, per probe, a clean and a perturbed forward and one backward through both, and
forms the B x B matrix of ``v @ grad_diff.T`` for its diagonal; here the clean gradient is taken once,
the probes of several k share one batched pass, and the diagonal is a row-wise dot product. The probe
draws, their order, the 1/B of the batch mean (the last, smaller batch its own), the float32 CPU
accumulators and the 1/n are the published ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..curvature._batching import choose_pass_size
from ..curvature._finite_difference import fd_probe_terms
from ..curvature._model import LogitFn
from ._common import (Batch, check_finite_scores, check_h, checked_logits, hessian_statistic, philox_keys, prepare,
                      published_probe, running)

__all__ = ["fd_scores", "find_z_direction"]


def fd_scores(batch: Batch, *, h: float, niter: int, temp: float, pred_labels: bool = False, seed: int | None = None,
              sample_ids: torch.Tensor | None = None, exact: bool = False, per_sample: bool = False,
              pass_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(curv, eig, logits)`` of a validated batch: the two scores (B,) on the CPU and the clean logits.

    Args:
        batch: The validated call.
        h: The step.
        niter: Probes n.
        temp: The loss temperature T.
        pred_labels: Score against the net's own predictions (argmax of the raw logits) instead of the labels.
        seed: Opt-in: curvfast's Philox probes keyed by (seed, sample id, probe), exactly ±h, never touching
            torch's generator. None: the published probes.
        sample_ids: Dataset indices (B,) keying the Philox probes (with ``seed`` only).
        exact: Opt-in: h·‖H‖_F for ``curv`` (E‖h H r‖² = h²‖H‖_F²) and h²·tr(H) for ``eig``, no probes
            (exact for piecewise-linear nets, Hutchinson otherwise).
        per_sample: Opt-in: per-sample losses instead of the batch mean (scores B times the published ones,
            independent of the batch size).
        pass_size: Probes per batched pass (None: sized from the input).

    Returns:
        ``(curv, eig, logits)``: (B,) and (B,) in the default dtype on the CPU, the clean logits (B, C).

    Raises:
        DataError: A label outside [0, C).
        NonFiniteError: A NaN or infinite score.
        ConfigError: Bad seed or sample ids, or ``exact`` with a plain callable.
    """
    x, y, logit_fn = batch.x, batch.y, batch.logit_fn
    keys = philox_keys(seed, sample_ids, x)
    scale = 1.0 if per_sample else 1.0 / x.shape[0]
    with running(batch):
        with torch.enable_grad():
            x0 = x.clone().requires_grad_(True)
            logits = checked_logits(batch, x0)
            if pred_labels:
                y = logits.detach().argmax(1)
            if exact or keys is not None:
                logits = logits.detach()
            else:
                (g0,) = torch.autograd.grad(F.cross_entropy(logits / temp, y, reduction="sum") * scale, x0)
                logits = logits.detach()
        curv, eig = torch.zeros(x.shape[0]), torch.zeros(x.shape[0])  # the published accumulators
        if exact:
            def transform(z):
                return z / temp

            curv = (h * scale * hessian_statistic(batch, y, "frobenius", transform, seed, keys)).to("cpu", curv.dtype)
            eig = (h * h * scale * hessian_statistic(batch, y, "trace", transform, seed, keys)).to("cpu", eig.dtype)
        elif keys is not None:
            norms, directional, _ = fd_probe_terms(LogitFn(lambda z: logit_fn(z) / temp), x, y, keys, probes=niter,
                                                   seed=seed, step=h, pass_size=pass_size)
            curv = (scale * norms.mean(1)).to("cpu", curv.dtype)
            eig = (scale * directional.mean(1)).to("cpu", eig.dtype)
        else:
            batch_size, dim = x.shape[0], x[0].numel()
            chunk = choose_pass_size(pass_size, niter, batch_size, dim, x.device)
            for p0 in range(0, niter, chunk):
                num = min(chunk, niter - p0)
                v = torch.stack([published_probe(x, h) for _ in range(num)])
                with torch.enable_grad():
                    xp = (x.unsqueeze(0) + v).reshape(num * batch_size, *x.shape[1:]).requires_grad_(True)
                    lp = F.cross_entropy(logit_fn(xp) / temp, y.repeat(num), reduction="sum") * scale
                    (gp,) = torch.autograd.grad(lp, xp)
                diff = gp.reshape(num, batch_size, dim) - g0.reshape(1, batch_size, dim)
                norms, directional = diff.norm(dim=2).cpu(), (v.reshape(num, batch_size, dim) * diff).sum(2).cpu()
                for k in range(num):
                    curv += norms[k]
                    eig += directional[k]
            curv, eig = curv / niter, eig / niter
    check_finite_scores(curvature=curv, eig_value=eig)
    return curv, eig, logits


def find_z_direction(net, inputs: torch.Tensor, targets: torch.Tensor, h: float, *, per_sample: bool = False,
                     output_transform=None) -> tuple[torch.Tensor, float]:
    r"""CURE's direction and the batch's gradient norm, as the published ``CurveScore.find_z``.

    .. math:: z_b = h (\mathrm{sign}\, g_b + 10^{-7}) / (\lVert \mathrm{sign}\, g_b \rVert + 10^{-7})

    g is the input gradient of the batch-mean cross-entropy of the raw logits (Moosavi-Dezfooli et al.,
    "Robustness via curvature regularization, and vice versa", CVPR 2019), and the second value its norm
    over the whole batch, as published; ``per_sample=True`` differentiates the summed loss instead (the
    norm B times the published one). Calls ``net.eval()`` first, as published.

    Args:
        net: An ``nn.Module`` or a callable returning logits.
        inputs: The batch x (B, ...).
        targets: Its labels (B,).
        h: The length of each z_b, a positive finite number.
        per_sample: Opt-in: the summed loss instead of the batch mean.
        output_transform: Picks the logits out of the net's output.

    Returns:
        ``(z, ‖g‖)``: z like ``inputs``, the norm a float.

    Raises:
        ConfigError: A bad ``h``.
        DataError: A batch that does not fit the net.
        NonFiniteError: NaN or Inf in the inputs, the weights or the gradient.
    """
    check_h(h)
    batch = prepare(net, inputs, targets, h=None, output_transform=output_transform, sets_eval=True)
    with running(batch), torch.enable_grad():
        x = batch.x.clone().requires_grad_(True)
        loss = F.cross_entropy(checked_logits(batch, x), batch.y, reduction="sum" if per_sample else "mean")
        (grad,) = torch.autograd.grad(loss, x)
    check_finite_scores(gradient=grad.reshape(grad.shape[0], -1).sum(1))
    z = torch.sign(grad)
    norms = z.reshape(z.shape[0], -1).norm(dim=1).view(-1, *([1] * (z.dim() - 1)))
    return h * (z + 1e-7) / (norms + 1e-7), grad.norm().item()
