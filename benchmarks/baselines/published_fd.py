"""The published finite-difference curvature (Garg et al.) as its code runs it.

Per batch and probe k: Rademacher probes built in a Python loop over samples, the clean
gradient recomputed for every probe, gradients of the batch-MEAN loss (so every score is
divided by the batch size, as the published code does), h = 1e-3, n = 10:

    fd(x) = mean_k ‖∇L̄(x + h r_k) − ∇L̄(x)‖
"""
import torch
import torch.nn.functional as F


def _mean_loss_grad(model, x, y):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(x), y), x)  # reduction="mean"
    return g


def published_fd(model, x, y, probes: int = 10, h: float = 1e-3, generator=None) -> torch.Tensor:
    scores = torch.zeros(x.shape[0])
    for _ in range(probes):
        r = torch.stack([torch.randint(0, 2, x.shape[1:], generator=generator, device=x.device).to(x) * 2 - 1 for _ in range(x.shape[0])])
        g0 = _mean_loss_grad(model, x, y)  # recomputed for every probe
        g1 = _mean_loss_grad(model, x + h * r, y)
        scores += (g1 - g0).flatten(1).norm(dim=1).cpu()
    return scores / probes
