"""Hutchinson with torch.func: ``vmap`` over probes of ``jvp(grad(loss))`` (forward-over-reverse).

The usual way to batch Hessian-vector products with torch.func: all P probes of a batch go
through one vmapped forward-over-reverse pass. Rademacher probes from a torch generator.
"""
import torch
import torch.nn.functional as F
from torch.func import grad, jvp, vmap


def func_hutchinson(model, x, y, probes: int, generator) -> torch.Tensor:
    """Mean over ``probes`` of vᵀ H_b v per sample (B,)."""

    def loss(inp):
        return F.cross_entropy(model(inp), y, reduction="sum")

    def quad(v):
        _, hv = jvp(grad(loss), (x,), (v,))
        return (v * hv).flatten(1).sum(1)

    v = torch.randint(0, 2, (probes, *x.shape), generator=generator, device=x.device).to(x) * 2 - 1
    return vmap(quad)(v).mean(0)
