r"""Lanczos with full reorthogonalisation, run for P start vectors at once, and the top-k eigenvalues of H.

From a unit start vector :math:`q_1`, step j computes :math:`w = H q_j - \alpha_j q_j - \beta_{j-1} q_{j-1}` with
:math:`\alpha_j = q_j^T H q_j`, orthogonalises w against every earlier :math:`q_i` (classical Gram-Schmidt, twice:
full reorthogonalisation, which keeps the basis orthonormal in floating point), and sets
:math:`\beta_j = \|w\|`, :math:`q_{j+1} = w / \beta_j`. After m steps :math:`Q_m^T H Q_m = T_m`, the symmetric
tridiagonal matrix of the α (diagonal) and β (off-diagonal), whose eigenvalues θ (Ritz values) approximate H's
extreme eigenvalues; with :math:`T_m = U \Theta U^T`, the residual of Ritz pair i is
:math:`\|H Q_m u_i - \theta_i Q_m u_i\| = \beta_m |U_{m,i}|` (Lanczos, 1950; Golub & Van Loan, *Matrix
Computations*, 4th ed., §10.1). A run whose :math:`\beta_j` vanishes has found an invariant subspace: its T is
exact and it stops (with m = D steps, T's eigenvalues are H's spectrum).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["LanczosRuns", "lanczos", "ritz", "top_eigenvalues"]

Matmat = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LanczosRuns:
    """P Lanczos runs of m steps.

    ``alpha`` (P, m) and ``beta`` (P, m), float64 on the CPU; ``beta[:, j]`` couples steps j and j + 1 (0 where a
    run broke down and restarted), the last column is the residual norm; ``basis`` (P, m, D) the orthonormal
    Lanczos vectors (rows of :math:`Q_m^T`), in the start vectors' dtype and device.
    """

    alpha: torch.Tensor
    beta: torch.Tensor
    basis: torch.Tensor

    @property
    def steps(self) -> int:
        """m, the products applied per run."""
        return self.alpha.shape[1]

    def tridiagonal(self, p: int) -> torch.Tensor:
        """T of run p, (m, m) float64."""
        off = self.beta[p, :-1]
        return torch.diag(self.alpha[p]) + torch.diag(off, 1) + torch.diag(off, -1)


def lanczos(matmat: Matmat, start: torch.Tensor, steps: int,
            stop: Callable[[LanczosRuns], bool] | None = None) -> LanczosRuns:
    """Run ``steps`` Lanczos steps (at most D) from each row of ``start``, all runs through one batched product.

    A run whose β vanishes (an invariant subspace found) restarts from a fixed pseudo-random vector orthogonal to
    its basis, with β = 0 there: T becomes block diagonal, still :math:`Q^T H Q`, and the new blocks' eigenvectors
    have a zero first component (no weight in the quadrature of :mod:`curvfast.flatness._density`). So m = D steps
    give H's whole spectrum, multiplicities included.

    Args:
        matmat: V (P, D) -> H V (P, D), H symmetric.
        start: (P, D) non-zero start vectors (normalised here).
        steps: the most steps m per run.
        stop: called after each step with the runs so far; True ends them early.

    Returns:
        The runs' coefficients (see :class:`LanczosRuns`).
    """
    P, D = start.shape
    m = min(steps, D)
    Q = start.new_zeros(P, min(m, 8), D)  # the bases, grown by doubling up to P * m * D entries (all kept)
    alpha = torch.zeros(P, m, dtype=torch.float64)
    beta = torch.zeros(P, m, dtype=torch.float64)
    q = start / start.norm(dim=1, keepdim=True)
    scale = torch.zeros(P, dtype=torch.float64)
    tol = 100 * D ** 0.5 * torch.finfo(start.dtype).eps  # relative size of a β that means breakdown
    restarts = torch.Generator().manual_seed(0)

    def orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        for _ in range(2):  # classical Gram-Schmidt twice
            w = w - torch.einsum("pj,pjd->pd", torch.einsum("pjd,pd->pj", basis, w), basis)
        return w

    for j in range(m):
        if j == Q.shape[1]:
            Q = torch.cat([Q, Q.new_zeros(P, min(m, 2 * j) - j, D)], 1)
        Q[:, j] = q
        w = matmat(q)
        a = (w * q).sum(1)
        alpha[:, j] = a.double().cpu()
        w = orthogonalise(w, Q[:, :j + 1])  # the α q_j and β q_{j-1} terms are among the projections removed
        b = w.norm(dim=1).double().cpu()
        scale = torch.maximum(scale, torch.maximum(a.double().abs().cpu(), b))
        broke = b <= tol * scale
        beta[:, j] = torch.where(broke, torch.zeros_like(b), b)
        runs = LanczosRuns(alpha[:, :j + 1], beta[:, :j + 1], Q[:, :j + 1])
        if j == m - 1 or (stop is not None and stop(runs)):
            break
        if bool(broke.any()):
            fresh = torch.randn(P, D, generator=restarts, dtype=torch.float64).to(w)
            fresh = orthogonalise(orthogonalise(fresh, Q[:, :j + 1]), Q[:, :j + 1])
            w = torch.where(broke.to(w.device)[:, None], fresh, w)
        q = w / w.norm(dim=1, keepdim=True)
    return runs


def ritz(runs: LanczosRuns, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Ritz values (ascending), the first components of T's eigenvectors and the residual norms of run p.

    Args:
        runs: Lanczos runs.
        p: which run.

    Returns:
        ``(theta, first, residual)``, each (m,) float64: :math:`\theta_i`, :math:`U_{1,i}` and
        :math:`\beta_m |U_{m,i}|`.
    """
    theta, U = torch.linalg.eigh(runs.tridiagonal(p))
    return theta, U[0], runs.beta[p, -1].abs() * U[-1].abs()


def top_eigenvalues(matmat: Matmat, start: torch.Tensor, k: int, steps: int,
                    rtol: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    r"""The k largest eigenvalues of H by one Lanczos run, stopped once each is resolved.

    The run stops at the first step where the k largest Ritz values all have residuals
    :math:`\beta_m |U_{m,i}| \le \mathrm{rtol} \, |\theta_i|` (a Ritz value lies within its residual of an
    eigenvalue of H), or after ``steps`` steps, or after D steps (then they are exact).

    Args:
        matmat: V (P, D) -> H V.
        start: (1, D) start vector.
        k: eigenvalues wanted (k <= D).
        steps: the most Lanczos steps.
        rtol: relative residual target.

    Returns:
        ``(values, residuals, steps)``: the k largest Ritz values, descending, their residual norms, and the
        products used.
    """
    def resolved(runs: LanczosRuns) -> bool:
        if runs.steps < k:
            return False
        theta, _, res = ritz(runs, 0)
        top = slice(len(theta) - k, None)
        return bool((res[top] <= rtol * theta[top].abs()).all())

    runs = lanczos(matmat, start, steps, resolved)
    theta, _, res = ritz(runs, 0)
    order = torch.argsort(theta, descending=True)[:k]
    return theta[order], res[order], runs.steps
