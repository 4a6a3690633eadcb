"""Verifix's soft projector and the one-shot weight update (docs/verifix.md, steps 3-5).

With the input rows X of a layer (n x d), singular pairs (σ_i, u_i) and energy fractions
r_i = σ_i² / Σ_j σ_j², each direction is scaled by

    λ_i = α r_i / ((α − 1) r_i + 1)            (λ = 1 at r = 1, λ ≈ α r for r ≪ 1/α,
                                                λ = 1/2 at r = 1/(α + 1))

and the projector is P = U diag(λ) Uᵀ = Σ_i λ_i u_i u_iᵀ. The layer's weight, flattened to
(C_out, d) per group, becomes W·P: input directions the verified (clean) data rarely uses, where
memorised noise lives, are damped; directions carrying its energy pass through. Biases and
BatchNorm are left as they are. Directions outside a truncated (randomized) spectrum get λ = 0.
"""
from __future__ import annotations

import torch
from torch import nn

from curvfast.linalg import SpectrumResult
from curvfast.pipelines.verifix.patches import flat_weight, set_flat_weight

__all__ = ["PUBLISHED_ALPHAS", "soft_scaling", "soft_projector", "apply_projectors"]

PUBLISHED_ALPHAS = (1e4, 3e4, 1e5, 3e5, 1e6)


def soft_scaling(r: torch.Tensor, alpha: float) -> torch.Tensor:
    """λ(r) = α r / ((α − 1) r + 1) for energy fractions r in [0, 1]; α >= 1."""
    if not alpha >= 1:
        raise ValueError(f"alpha must be >= 1 (got {alpha!r}); the published grid is {PUBLISHED_ALPHAS}")
    return alpha * r / ((alpha - 1.0) * r + 1.0)


def soft_projector(spectrum: SpectrumResult, alpha: float) -> torch.Tensor:
    """P = U diag(λ(r)) Uᵀ, (g, d, d), in the spectrum's dtype."""
    lam = soft_scaling(spectrum.energy_fraction, alpha)
    return (spectrum.u * lam.unsqueeze(-2)) @ spectrum.u.mT


def apply_projectors(model: nn.Module, projectors: dict[str, torch.Tensor]) -> nn.Module:
    """W ← W·P in place for every named layer (computed in the projector's dtype); returns ``model``."""
    modules = dict(model.named_modules())
    for name, p in projectors.items():
        module = modules[name]
        w = flat_weight(module).to(p.dtype)
        set_flat_weight(module, w @ p.to(w.device))
    return model
