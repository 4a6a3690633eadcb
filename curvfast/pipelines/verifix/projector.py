"""Verifix's soft projector and the one-shot weight update (docs/verifix.md, steps 3-5).

With the input rows X of a layer (n x d), singular pairs (σ_i, u_i) and energy fractions
r_i = σ_i² / Σ_j σ_j², each direction is scaled by

    λ_i = α r_i / ((α − 1) r_i + 1)            (λ = 1 at r = 1, λ ≈ α r for r ≪ 1/α,
                                                λ = 1/2 at r = 1/(α + 1))

and the projector is P = U diag(λ) Uᵀ = Σ_i λ_i u_i u_iᵀ. Since λ = α/(α−1) · (1 − 1/((α−1) r + 1)),
for the exact spectrum (all of G = XᵀX, energy E = ‖X‖_F² = trace G, r_i = eig_i(G)/E)

    P = α/(α−1) · (I − M⁻¹),   M = I + (α−1) G/E,

a matrix function of G computed with one Cholesky factorisation and inverse of M (symmetric
positive definite, condition number ≤ α since 0 ≤ G/E ≤ I), in place: no eigenvectors and no
d x d workspace beyond M. The layer's weight, flattened to
(C_out, d) per group, becomes W·P: input directions the verified (clean) data rarely uses, where
memorised noise lives, are damped; directions carrying its energy pass through. Biases and
BatchNorm are left as they are. Directions outside a truncated (randomized) spectrum get λ = 0.
"""
from __future__ import annotations

import torch
from torch import nn

from curvfast.linalg import GramSpectrum, SpectrumResult
from curvfast.pipelines.verifix.patches import flat_weight, set_flat_weight
from curvfast.errors import ConfigError, NonFiniteError

__all__ = ["PUBLISHED_ALPHAS", "soft_scaling", "soft_projector", "apply_projectors"]

PUBLISHED_ALPHAS = (1e4, 3e4, 1e5, 3e5, 1e6)


def _check_alpha(alpha: float) -> None:
    if not alpha >= 1:
        raise ConfigError(f"alpha must be >= 1 (got {alpha!r}); the published grid is {PUBLISHED_ALPHAS}")


def soft_scaling(r: torch.Tensor, alpha: float) -> torch.Tensor:
    """λ(r) = α r / ((α − 1) r + 1) for energy fractions r in [0, 1]; α >= 1."""
    _check_alpha(alpha)
    return alpha * r / ((alpha - 1.0) * r + 1.0)


def soft_projector(spectrum: SpectrumResult | GramSpectrum, alpha: float, *, overwrite: bool = False) -> torch.Tensor:
    """P_α (g, d, d) in the spectrum's dtype: U diag(λ(r)) Uᵀ for singular pairs, by one Cholesky
    factorisation of M = I + (α−1) G/E for a ``GramSpectrum`` (the same matrix, exactly).
    ``overwrite=True`` lets a ``GramSpectrum``'s Gram matrix become the projector (no d x d copy;
    the spectrum is unusable afterwards): for a caller that needs one α only."""
    if isinstance(spectrum, GramSpectrum):
        return _projector_from_gram(spectrum.gram, spectrum.energy, alpha, overwrite)
    lam = soft_scaling(spectrum.energy_fraction, alpha)
    return (spectrum.u * lam.unsqueeze(-2)) @ spectrum.u.mT


def _projector_from_gram(gram: torch.Tensor, energy: torch.Tensor, alpha: float, overwrite: bool) -> torch.Tensor:
    """α/(α−1) (I − M⁻¹) with M = I + (α−1) G/E in one d x d buffer (M, its factor, M⁻¹): a copy of
    G, or G itself with ``overwrite``."""
    _check_alpha(alpha)
    inverse_energy = torch.where(energy > 0, 1.0 / energy, 0.0)[:, None, None]  # no rows: G = 0, P = 0
    m = gram.mul_(inverse_energy) if overwrite else gram * inverse_energy
    if alpha == 1:  # λ(r) = r: P = G/E
        return m
    m.mul_(alpha - 1.0)
    m.diagonal(dim1=-2, dim2=-1).add_(1.0)
    info = torch.empty(m.shape[:-2], dtype=torch.int32, device=m.device)
    torch.linalg.cholesky_ex(m, out=(m, info))
    if bool((info != 0).any()):
        raise NonFiniteError("the Gram matrix is not positive semi-definite (non-finite activations?); cannot form the projector")
    p = torch.cholesky_inverse(m, out=m).mul_(-alpha / (alpha - 1.0))
    p.diagonal(dim1=-2, dim2=-1).add_(alpha / (alpha - 1.0))
    return p


def apply_projectors(model: nn.Module, projectors: dict[str, torch.Tensor]) -> nn.Module:
    """W ← W·P in place for every named layer (computed in the projector's dtype); returns ``model``."""
    modules = dict(model.named_modules())
    for name, p in projectors.items():
        module = modules[name]
        w = flat_weight(module).to(p.dtype)
        set_flat_weight(module, w @ p.to(w.device))
    return model
