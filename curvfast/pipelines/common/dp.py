"""DP-SGD training with Opacus: the one recipe behind ``curvfast mia --dp-epsilon`` and ``curvfast memorization --dp``.

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016) draws each batch by
Poisson sampling (every sample independently with rate q = batch_size / n), clips each per-sample
gradient g_i to norm C, ḡ_i = g_i · min(1, C / ‖g_i‖), and steps along
(Σ_i ḡ_i + N(0, σ²C² I)) / (q n). Opacus' RDP accountant (Mironov, "Rényi Differential Privacy",
CSF 2017) picks the noise multiplier σ so that ``epochs`` epochs at rate q are (ε, δ)-DP. The
recipe is the Unveiling experiments' (Ravikumar et al., "Unveiling Privacy, Memorization, and
Input Curvature Links", ICML 2024): RMSprop, constant learning rate 1e-3, C = 1, δ = 1e-5.
``epsilon=inf`` trains the same model with the same optimiser and epochs on shuffled batches of
``batch_size``, without clipping or noise: the non-private reference. The steps run in the
pipelines' one loop, :func:`curvfast.training.fit`, with Opacus' optimizer and
Poisson loader.

Per-sample clipping is undefined through BatchNorm, which mixes the samples of a batch, so every
model passes :func:`dp_compatible` first: BatchNorm becomes GroupNorm (Opacus'
``ModuleValidator.fix``, smooth, so curvature estimators see a smooth network), or the identity
(the network stays piecewise linear, so the exact curvature stays exact).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from curvfast.checkpoints import remove_batchnorm
from curvfast.errors import ConfigError, UnknownNameError
from curvfast.training import TrainRecipe, fit

__all__ = ["BATCHNORM_REPLACEMENTS", "dp_compatible", "train_dp_model"]

BATCHNORM_REPLACEMENTS = ("groupnorm", "identity")


def dp_compatible(model: nn.Module, batchnorm: str = "groupnorm") -> nn.Module:
    """``model`` made trainable with per-sample gradients: every BatchNorm becomes GroupNorm
    (``"groupnorm"``: Opacus' ``ModuleValidator.fix``, which also applies Opacus' other fixes) or
    ``nn.Identity`` (``"identity"``: keeps a ReLU network piecewise linear). Opacus' validator
    checks the result."""
    from opacus.validators import ModuleValidator

    if batchnorm not in BATCHNORM_REPLACEMENTS:
        raise UnknownNameError(f"batchnorm must be one of {', '.join(BATCHNORM_REPLACEMENTS)} (got {batchnorm!r})")
    if batchnorm == "identity":
        remove_batchnorm(model)
    else:
        model = ModuleValidator.fix(model)
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise TypeError(f"model cannot be trained with DP-SGD even after replacing BatchNorm: {errors}")
    return model


class _NonEmptyBatches:
    """Opacus' Poisson loader without its empty batches (a draw can select no sample; no step is taken)."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        return ((x, y) for x, y in self.loader if len(y))


def train_dp_model(
    make_model: Callable[[], nn.Module],
    images: torch.Tensor,
    targets: torch.Tensor,
    *,
    epsilon: float,
    delta: float = 1e-5,
    max_grad_norm: float = 1.0,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    batchnorm: str = "groupnorm",
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, float | None]:
    """Train ``dp_compatible(make_model(), batchnorm)`` on (images, targets) with DP-SGD at (ε, δ)
    (``epsilon=inf``: the same recipe without clipping or noise; see the module docstring).

    The model is built, its batches drawn and its noise sampled under ``torch.manual_seed(seed)``.
    Training runs on ``device`` (batches moved there by :func:`fit`). Returns ``(model, spent ε)``:
    the trained network in eval mode on the CPU, taken out of Opacus' ``GradSampleModule`` with its
    per-sample-gradient hooks removed, and the accountant's ε (None without DP).
    """
    if not (epsilon > 0):
        raise ConfigError(f"epsilon must be > 0, or inf for no privacy (got {epsilon})")
    for name, value in (("delta", delta), ("max_grad_norm", max_grad_norm), ("lr", lr)):
        if not (value > 0):
            raise ConfigError(f"{name} must be > 0 (got {value})")
    torch.manual_seed(seed)
    model = dp_compatible(make_model(), batchnorm).to(device)
    model.train()
    loader = DataLoader(TensorDataset(images, targets), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.RMSprop(model.parameters(), lr=lr)
    if not math.isfinite(epsilon):
        fit(model, loader, TrainRecipe(epochs=epochs, optimizer=optimizer, schedule="constant"), device=device)
        return model.cpu(), None
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant="rdp")
    net, optimizer, loader = engine.make_private_with_epsilon(
        module=model, optimizer=optimizer, data_loader=loader, target_epsilon=epsilon, target_delta=delta,
        epochs=epochs, max_grad_norm=max_grad_norm,
    )
    fit(net, _NonEmptyBatches(loader), TrainRecipe(epochs=epochs, optimizer=optimizer, schedule="constant"), device=device)
    net.remove_hooks()
    return model.eval().cpu(), engine.get_epsilon(delta)
