"""PyHessian-style Hutchinson: one Rademacher probe at a time, double backward, host sync per probe."""
import torch
import torch.nn.functional as F


def naive_hutchinson_probe(model, x, y, generator):
    """One probe: returns vᵀ H_b v per sample (B,), synchronised to the host like a Python loop does."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    v = torch.randint(0, 2, x.shape, generator=generator, device=x.device).to(x) * 2 - 1
    (hv,) = torch.autograd.grad(g, x, grad_outputs=v)
    return (v * hv).flatten(1).sum(1).cpu()
