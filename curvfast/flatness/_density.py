r"""The spectral density of H by stochastic Lanczos quadrature (SLQ).

H's spectral density :math:`\phi(t) = \frac1D \sum_i \delta(t - \lambda_i)` has moments
:math:`\int t^p \phi = \operatorname{tr}(H^p) / D = E[u^T H^p u]` for :math:`u = v/\sqrt D`, v Rademacher. For each
probe, m Lanczos steps from u give :math:`T_m = U \Theta U^T`, and the Gauss quadrature with nodes
:math:`\theta_k` and weights :math:`\tau_k = U_{1k}^2` (summing to 1) reproduces :math:`u^T H^p u` exactly for
:math:`p \le 2m - 1` (Golub & Meurant, *Matrices, Moments and Quadrature*, 2010). Averaged over n probes,

.. math:: \hat\phi(t) = \frac1n \sum_{l=1}^n \sum_{k=1}^m \tau_k^{(l)} \, \delta(t - \theta_k^{(l)}),

smoothed for display by a Gaussian of width σ (Ubaru, Chen & Saad, "Fast estimation of tr(f(A)) via stochastic
Lanczos quadrature", SIMAX 2017; Ghorbani, Krishnan & Xiao, ICML 2019). Probe l starts from entry
(seed, sample 2, probe l) of :func:`curvfast.ops.probes`; the probes of one batch run as parallel Lanczos runs.
"""
from __future__ import annotations

import torch

from curvfast import ops
from curvfast.flatness._lanczos import lanczos, ritz
from curvfast.flatness._operator import LossHessian

__all__ = ["slq", "smoothed_density"]


def slq(op: LossHessian, probes: int, steps: int, seed: int, probe_batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature nodes and weights per probe.

    Args:
        op: the Hessian operator.
        probes: Lanczos runs n.
        steps: Lanczos steps m per run (at most D).
        seed: the start vectors' key.
        probe_batch: runs per pass over the data.

    Returns:
        ``(nodes, weights)``, each (n, m) float64 on the CPU; each row of weights sums to 1.
    """
    ids = torch.tensor([2], device=op.device)
    nodes, weights = [], []
    for first in range(0, probes, probe_batch):
        n = min(probe_batch, probes - first)
        start = ops.probes(ids, n, op.dim, seed=seed, probe_offset=first, dtype=op.dtype)[0]
        runs = lanczos(op.matmat, start, steps)
        for p in range(n):
            theta, u1, _ = ritz(runs, p)
            nodes.append(theta)
            weights.append(u1.square())
    return torch.stack(nodes), torch.stack(weights)


def smoothed_density(nodes: torch.Tensor, weights: torch.Tensor, grid: torch.Tensor, sigma: float) -> torch.Tensor:
    r"""The SLQ density broadened by a Gaussian kernel of width σ, on ``grid``.

    .. math:: \hat\phi_\sigma(t) = \frac1n \sum_{l,k} \tau_k^{(l)} \frac{1}{\sigma\sqrt{2\pi}}
              \exp\!\left(-\frac{(t - \theta_k^{(l)})^2}{2\sigma^2}\right)

    Args:
        nodes: (n, m) quadrature nodes.
        weights: (n, m) quadrature weights.
        grid: (G,) points t.
        sigma: kernel width (> 0).

    Returns:
        (G,) float64 density values (integrating to 1 over the real line).
    """
    t = grid.double()[:, None, None]
    kernel = torch.exp(-0.5 * ((t - nodes.double()) / sigma) ** 2) / (sigma * (2 * torch.pi) ** 0.5)
    return (kernel * weights.double()).sum((1, 2)) / nodes.shape[0]
