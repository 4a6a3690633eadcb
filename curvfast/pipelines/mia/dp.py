"""DP-SGD target and shadow models (Opacus), for membership inference at a given ε.

DP-SGD clips each per-sample gradient to norm ``clip`` and adds N(0, σ²clip²) noise to their sum
per step (Poisson-sampled batches); Opacus' RDP accountant picks σ so that ``epochs`` epochs at
sampling rate batch_size/|S_m| give (ε, δ)-DP. The recipe follows the Unveiling experiments
(docs/memorization.md): RMSprop, lr 1e-3, clip 1, δ = 1e-5. ``epsilon=inf`` trains the same model with
the same optimiser, batches and epochs without clipping or noise (the non-private reference).

Opacus cannot compute per-sample gradients through BatchNorm (it mixes samples), so
:func:`dp_model` replaces every BatchNorm by the identity; the network stays piecewise linear and
its exact input curvature stays exact (GroupNorm, Opacus' usual fix, would make it smooth).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from curvfast.models import build_model

__all__ = ["dp_model", "train_dp_model", "train_dp_models"]


def dp_model(name: str, num_classes: int, in_channels: int, **kwargs) -> nn.Module:
    """A zoo model with every BatchNorm replaced by ``nn.Identity`` (Opacus-compatible, piecewise linear)."""
    model = build_model(name, num_classes, in_channels, **kwargs)
    for parent in list(model.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, child_name, nn.Identity())
    return model


def train_dp_model(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, *, epsilon: float, delta: float = 1e-5,
                   clip: float = 1.0, epochs: int = 20, batch_size: int = 64, lr: float = 1e-3, seed: int = 0):
    """Train ``model`` (already built and seeded) on (images, targets) with DP-SGD at (ε, δ); ``epsilon=inf``
    is the same recipe without clipping or noise. Returns ``(model in eval mode, the accountant's ε or None)``;
    the returned network is the plain module, with Opacus' per-sample-gradient hooks removed."""
    if not (epsilon > 0):
        raise ValueError(f"epsilon must be > 0 (or inf for no privacy); got {epsilon}")
    model.train()
    loader = DataLoader(TensorDataset(images, targets), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    net, engine = model, None
    if math.isfinite(epsilon):
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="rdp")
        net, opt, loader = engine.make_private_with_epsilon(
            module=model, optimizer=opt, data_loader=loader, target_epsilon=epsilon, target_delta=delta,
            epochs=epochs, max_grad_norm=clip,
        )
    for _ in range(epochs):
        for x, y in loader:
            if len(y) == 0:  # Poisson sampling can draw an empty batch
                continue
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
    if engine is None:
        return model.eval(), None
    net.remove_hooks()
    return model.eval(), engine.get_epsilon(delta)


def train_dp_models(
    make_model,
    images: torch.Tensor,
    targets: torch.Tensor,
    keep: np.ndarray,
    *,
    epsilon: float,
    delta: float = 1e-5,
    clip: float = 1.0,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool | None = False,
) -> list[nn.Module]:
    """Train model m on ``images[keep[m]]`` with DP-SGD at (ε, δ); return them in eval mode.

    Model m is initialised and its noise drawn under ``torch.manual_seed(seed + m)``.
    """
    from tqdm.auto import tqdm

    if not (epsilon > 0):
        raise ValueError(f"epsilon must be > 0 (or inf for no privacy); got {epsilon}")
    keep = np.asarray(keep, dtype=bool)
    models = []
    for m in tqdm(range(keep.shape[0]), desc=f"DP-SGD eps={epsilon:g}", unit="model",
                  disable=not progress if progress is not None else None):
        torch.manual_seed(seed + m)
        rows = torch.from_numpy(np.flatnonzero(keep[m]))
        model, _ = train_dp_model(make_model(), images[rows], targets[rows], epsilon=epsilon, delta=delta, clip=clip,
                                  epochs=epochs, batch_size=batch_size, lr=lr, seed=seed + m)
        models.append(model)
    return models
