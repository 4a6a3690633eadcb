"""Randomized SVD of a dense matrix (Halko, Martinsson & Tropp 2011, Algorithms 4.4 + 5.1).

For A (m x n) and a target rank k with oversampling p (l = k + p columns):

1. Ω ~ N(0, 1)^{n x l};  Q = orth(A Ω).
2. q power (subspace) iterations, re-orthonormalising after every product so that the
   columns stay independent in floating point:  Q = orth(Aᵀ Q);  Q = orth(A Q).
   The error then decays like (σ_{l+1}/σ_k)^{2q+1} instead of σ_{l+1}/σ_k.
3. B = Qᵀ A (l x n);  B = Ũ Σ Vᵀ (small SVD);  U = Q Ũ.

Every function accepts leading batch dimensions (``A`` of shape (..., m, n)).
"""
from __future__ import annotations

import torch

from ..errors import ConfigError

__all__ = ["orthonormalize", "gaussian_sketch", "randomized_svd"]


def orthonormalize(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of the columns of ``y`` (..., m, l) by Householder QR (stable, unlike Gram-Schmidt).

    Args:
        y: The matrices (..., m, l).

    Returns:
        Q (..., m, min(m, l)) with orthonormal columns spanning those of ``y``.
    """
    q, _ = torch.linalg.qr(y, mode="reduced")
    return q


def gaussian_sketch(shape: tuple[int, ...], seed: int, dtype: torch.dtype,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """A standard Gaussian test matrix drawn on the CPU from ``seed`` (the same on every device).

    Args:
        shape: The matrix shape (leading batch dimensions allowed).
        seed: Seeds a fresh CPU generator (the global one is untouched).
        dtype: The returned dtype (drawn in float64, then rounded).
        device: Where the matrix is returned.

    Returns:
        Ω with independent N(0, 1) entries.
    """
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)


def _check_rank(rank: int, oversample: int, power_iters: int, m: int, n: int) -> int:
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"rank must be a positive int (got {rank!r})")
    if rank > min(m, n):
        raise ConfigError(f"rank={rank} exceeds min(m, n)={min(m, n)} of the matrix; use rank <= {min(m, n)}")
    if not isinstance(oversample, int) or oversample < 0:
        raise ConfigError(f"oversample must be an int >= 0 (got {oversample!r})")
    if not isinstance(power_iters, int) or power_iters < 0:
        raise ConfigError(f"power_iters must be an int >= 0 (got {power_iters!r})")
    return min(rank + oversample, m, n)


def randomized_svd(
    a: torch.Tensor, rank: int, *, oversample: int = 10, power_iters: int = 2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Rank-``rank`` truncated SVD ``a ≈ U diag(S) Vh`` by randomized subspace iteration.

    Halko, Martinsson & Tropp (2011), Algorithms 4.4 + 5.1 (see the module docstring); exact (to rounding) whenever
    rank(a) <= rank + oversample. With :math:`l` = rank + oversample columns and :math:`q` = ``power_iters``:

    .. math:: Q = \operatorname{orth}((A A^T)^q A \Omega), \qquad Q^T A = \tilde U \Sigma V^T, \qquad U = Q \tilde U

    Args:
        a: The matrices (..., m, n), floating point.
        rank: The target rank k, in [1, min(m, n)].
        oversample: Extra sketch columns p (>= 0).
        power_iters: Power (subspace) iterations q (>= 0).
        seed: Fixes the Gaussian test matrix.

    Returns:
        ``(U, S, Vh)``: U (..., m, rank), S (..., rank) descending, Vh (..., rank, n).

    Raises:
        TypeError: When ``a`` is not a floating-point matrix.
        ConfigError: For a rank outside [1, min(m, n)], or a negative ``oversample`` or ``power_iters``.
    """
    if a.ndim < 2 or not a.is_floating_point():
        raise TypeError(f"a must be a floating-point matrix (..., m, n) (got {tuple(a.shape)} {a.dtype})")
    m, n = a.shape[-2:]
    width = _check_rank(rank, oversample, power_iters, m, n)
    omega = gaussian_sketch((*a.shape[:-2], n, width), seed, a.dtype, a.device)
    q = orthonormalize(a @ omega)
    for _ in range(power_iters):
        q = orthonormalize(a.mT @ q)
        q = orthonormalize(a @ q)
    u_small, s, vh = torch.linalg.svd(q.mT @ a, full_matrices=False)
    return (q @ u_small)[..., :rank], s[..., :rank], vh[..., :rank, :]
