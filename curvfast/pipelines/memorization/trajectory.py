"""Curvature averaged over training (Garg et al.): score checkpoints taken after every epoch.

Garg et al.'s memorization proxy for sample i is the input-loss curvature averaged over the
training run,

    curv̄(i) = (1/E) Σ_{e=1..E} Curv_{θ_e}(x_i, y_i),

where θ_e are the weights after epoch e, and over R independent runs when R > 1. Any estimator
of :func:`curvfast.input_curvature` can be used (exact trace by default for piecewise-linear
models).

Training reuses the shared trainer :func:`curvfast.pipelines.common.multitrain.train_subset_models` one epoch at
a time, continuing the same model objects, with the epoch's learning rate taken from the cosine
schedule of the whole run, lr_e = lr·(1 + cos(π e / E)) / 2. Differences from one uninterrupted
call: the learning rate is constant within an epoch (the shared trainer also steps its cosine per
epoch, so this is the same schedule) and the SGD momentum buffer restarts at each epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from curvfast.engine import score_models
from curvfast.pipelines.common.data import PackedDataset
from curvfast.pipelines.common.multitrain import train_subset_models
from curvfast.errors import ConfigError

__all__ = ["curvature_per_model", "train_with_checkpoints", "CurvatureTrajectory", "curvature_trajectory"]


def curvature_per_model(models, data, *, method: str = "auto", probes: int | None = None, seed: int = 0,
                        batch_size: int = 512, device: str | torch.device = "cpu",
                        workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-model, per-sample curvature and cross-entropy loss, both (M, N), of the dataset ``data``
    of ``(image, label)``: one pass over it in batches (:func:`curvfast.engine.score_models`, on
    ``device`` with ``workers`` loader processes), all models per batch; probes keyed by dataset index."""
    results = score_models(list(models), data, method=method, probes=probes, seed=seed, batch_size=batch_size, device=device,
                           num_workers=workers, progress=False)
    return np.stack([r.score for r in results.values()]), np.stack([r.loss for r in results.values()])


def train_with_checkpoints(
    make_model: Callable[[], nn.Module],
    images: torch.Tensor,
    targets: torch.Tensor,
    keep: np.ndarray,
    *,
    epochs: int,
    on_epoch: Callable[[int, list[nn.Module]], None],
    lr: float = 0.05,
    seed: int = 0,
    progress: bool | None = False,
    **train_kwargs,
) -> list[nn.Module]:
    """Train ``keep.shape[0]`` models with the shared trainer, calling ``on_epoch(e, models)`` after
    each epoch e = 1..E (models in eval mode). ``train_kwargs`` go to ``train_subset_models``;
    ``progress``: a bar over epochs (None: only on a terminal)."""
    from tqdm.auto import tqdm

    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1 (got {epochs})")
    models: list[nn.Module] | None = None
    for e in tqdm(range(epochs), desc="epochs (train + score)", unit="epoch", disable=not progress if progress is not None else None):
        lr_e = lr * (1.0 + math.cos(math.pi * e / epochs)) / 2.0
        make = make_model if models is None else iter(models).__next__  # continue the same modules
        models = train_subset_models(make, images, targets, keep, epochs=1, lr=lr_e, seed=seed + e, **train_kwargs)
        on_epoch(e + 1, models)
    return models


@dataclass
class CurvatureTrajectory:
    """``curvature`` and ``loss`` (E, M, N): model m's scores of sample n after epoch e;
    ``keep`` (M, N) the training subsets; ``models`` the final models."""

    curvature: np.ndarray
    loss: np.ndarray
    keep: np.ndarray
    models: list

    def averaged(self, which: str = "curvature", members_only: bool = True) -> np.ndarray:
        """(N,) mean over epochs and over the models that trained on the sample (all models if
        ``members_only=False``); NaN for a sample no model trained on."""
        values = getattr(self, which).mean(0)
        weights = self.keep if members_only else np.ones_like(self.keep)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (values * weights).sum(0) / weights.sum(0)

    def final(self, which: str = "curvature", members_only: bool = True) -> np.ndarray:
        """(N,) the last epoch's value, averaged over (member) models."""
        weights = self.keep if members_only else np.ones_like(self.keep)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (getattr(self, which)[-1] * weights).sum(0) / weights.sum(0)


def curvature_trajectory(make_model, images, targets, keep, *, epochs: int, method: str = "auto", probes: int | None = None,
                         score_seed: int = 0, score_batch_size: int = 512, **train_kwargs) -> CurvatureTrajectory:
    """Train with per-epoch checkpoints and score every checkpoint on all ``images`` with ``targets``
    (streamed in batches from the training tensor, on ``train_kwargs["device"]``)."""
    curv, loss = [], []

    device = train_kwargs.get("device", "cpu")

    def on_epoch(_, models):
        c, losses = curvature_per_model(models, PackedDataset(images, targets), method=method, probes=probes, seed=score_seed,
                                        batch_size=score_batch_size, device=device)
        curv.append(c)
        loss.append(losses)

    models = train_with_checkpoints(make_model, images, targets, keep, epochs=epochs, on_epoch=on_epoch, **train_kwargs)
    return CurvatureTrajectory(np.stack(curv), np.stack(loss), np.asarray(keep, dtype=bool), models)
