"""Curvature averaged over training (Garg et al.): score checkpoints taken during training.

Garg et al.'s memorization proxy for sample i is the input-loss curvature averaged over the
training run,

    curv̄(i) = (1/|E|) Σ_{e ∈ E} Curv_{θ_e}(x_i, y_i),

where θ_e are the weights after epoch e, E the scored epochs (every epoch by default; every 4th,
epochs 1, 5, 9, …, with ``score_every=4`` as the published ``score_imagenet_checkpoint.py`` does with
``range(0, 200, 4)``), and over R independent runs when R > 1. Any estimator of
:func:`curvfast.input_curvature` can be used (exact trace by default for piecewise-linear models;
the published statistic is ``method="fd"``, h = 1e-3, 10 probes), and further estimators can score
the same checkpoints (``extra_methods``) so that two statistics are compared on one trajectory.

Training reuses the shared trainer :func:`curvfast.pipelines.common.multitrain.train_subset_models` one epoch at
a time, continuing the same model objects, with the epoch's learning rate taken from the whole run's
schedule: ``"cosine"``, lr_e = lr·(1 + cos(π e / E)) / 2, or ``"step"``, lr_e = lr·0.1^k with k the number
of milestones int(0.6E), int(0.8E) that are <= e (``torch.optim.lr_scheduler.MultiStepLR`` as in Garg et al.'s
``train_imagenet.py``). Differences from one uninterrupted call: the learning rate is constant within an
epoch (the shared trainer also steps its cosine per epoch, so this is the same schedule) and the SGD
momentum buffer restarts at each epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from curvfast.engine import score_models
from curvfast.pipelines.common.data import PackedDataset
from curvfast.pipelines.common.multitrain import SCHEDULES, step_milestones, train_subset_models
from curvfast.errors import ConfigError

__all__ = ["curvature_per_model", "train_with_checkpoints", "CurvatureTrajectory", "curvature_trajectory", "epoch_lr"]


def epoch_lr(lr: float, epoch: int, epochs: int, schedule: str = "cosine") -> float:
    """The learning rate of 0-based ``epoch`` of ``epochs`` under ``schedule`` (see the module docstring).

    Args:
        lr: the initial learning rate.
        epoch: the epoch, 0 .. epochs − 1.
        epochs: the run's length E.
        schedule: ``"cosine"`` or ``"step"`` (×0.1 at int(0.6E) and int(0.8E), Garg et al.'s ``train_imagenet.py``).

    Returns:
        The epoch's learning rate.

    Raises:
        ConfigError: an unknown schedule.
    """
    if schedule == "cosine":
        return lr * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0
    if schedule == "step":
        return lr * 0.1 ** sum(epoch >= m for m in step_milestones(epochs))
    raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)} (got {schedule!r})")


def curvature_per_model(models, data, *, method: str = "auto", probes: int | None = None, seed: int = 0,
                        batch_size: int = 512, device: str | torch.device = "cpu",
                        workers: int = 0, step: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-model, per-sample curvature and cross-entropy loss, both (M, N), of the dataset ``data``
    of ``(image, label)``: one pass over it in batches (:func:`curvfast.engine.score_models`, on
    ``device`` with ``workers`` loader processes), all models per batch; probes keyed by dataset index.
    ``step``: the finite-difference step h of ``fd`` / ``zo`` (None: the estimator's 1e-3)."""
    kwargs = {} if step is None else {"step": step}
    results = score_models(list(models), data, method=method, probes=probes, seed=seed, batch_size=batch_size, device=device,
                           num_workers=workers, progress=False, **kwargs)
    return np.stack([r.score for r in results.values()]), np.stack([r.loss for r in results.values()])


class _StepTicker:
    """Wraps the trainer's per-step ``augment(x, generator)`` hook (identity when there is no augmentation; the
    generator is only used by the wrapped function) so that ``bar`` moves once per training step."""

    def __init__(self, augment, bar):
        self.augment, self.bar = augment, bar

    def __call__(self, x, generator):
        self.bar.update(1)
        return x if self.augment is None else self.augment(x, generator)


def train_with_checkpoints(
    make_model: Callable[[], nn.Module],
    images: torch.Tensor,
    targets: torch.Tensor,
    keep: np.ndarray,
    *,
    epochs: int,
    on_epoch: Callable[[int, list[nn.Module]], None],
    lr: float = 0.05,
    schedule: str = "cosine",
    seed: int = 0,
    progress: bool | None = False,
    **train_kwargs,
) -> list[nn.Module]:
    """Train ``keep.shape[0]`` models with the shared trainer, calling ``on_epoch(e, models)`` after
    each epoch e = 1..E (models in eval mode). ``schedule``: ``"cosine"`` or ``"step"`` (:func:`epoch_lr`).
    ``train_kwargs`` go to ``train_subset_models``; ``progress``: one bar over the run's training steps,
    moving every batch (None: only on a terminal)."""
    from tqdm.auto import tqdm

    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1 (got {epochs})")
    epoch_lr(lr, 0, epochs, schedule)  # refuse an unknown schedule before training
    keep = np.asarray(keep, dtype=bool)
    batch_size, per_pass = train_kwargs.get("batch_size", 64), train_kwargs.get("models_per_pass", 32)
    steps = sum(math.ceil(keep[g:g + per_pass].sum(1).mean() / batch_size) for g in range(0, len(keep), per_pass))
    bar = tqdm(total=epochs * steps, desc="epochs (train + score)", unit="batch",
               disable=not progress if progress is not None else None)
    train_kwargs["augment"] = _StepTicker(train_kwargs.get("augment"), bar)
    models: list[nn.Module] | None = None
    for e in range(epochs):
        make = make_model if models is None else iter(models).__next__  # continue the same modules
        models = train_subset_models(make, images, targets, keep, epochs=1, lr=epoch_lr(lr, e, epochs, schedule),
                                     seed=seed + e, **train_kwargs)
        bar.set_postfix_str(f"epoch {e + 1}/{epochs}")
        on_epoch(e + 1, models)
    bar.close()
    return models


@dataclass
class CurvatureTrajectory:
    """``curvature`` and ``loss`` (E, M, N): model m's scores of sample n after the e-th scored epoch
    (``epochs``: their 1-based numbers); ``keep`` (M, N) the training subsets; ``models`` the final models;
    ``extra``: ``{method: (E, M, N)}`` further estimators' scores of the same checkpoints."""

    curvature: np.ndarray
    loss: np.ndarray
    keep: np.ndarray
    models: list
    epochs: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def _values(self, which: str) -> np.ndarray:
        return self.extra[which] if which in self.extra else getattr(self, which)

    def averaged(self, which: str = "curvature", members_only: bool = True) -> np.ndarray:
        """(N,) mean over the scored epochs and over the models that trained on the sample (all models if
        ``members_only=False``); NaN for a sample no model trained on. ``which``: ``curvature``, ``loss``
        or a method of ``extra``."""
        values = self._values(which).mean(0)
        weights = self.keep if members_only else np.ones_like(self.keep)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (values * weights).sum(0) / weights.sum(0)

    def final(self, which: str = "curvature", members_only: bool = True) -> np.ndarray:
        """(N,) the last scored epoch's value, averaged over (member) models."""
        weights = self.keep if members_only else np.ones_like(self.keep)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self._values(which)[-1] * weights).sum(0) / weights.sum(0)


def curvature_trajectory(make_model, images, targets, keep, *, epochs: int, method: str = "auto", probes: int | None = None,
                         score_seed: int = 0, score_batch_size: int = 512, score_every: int = 1,
                         step: float | None = None, extra_methods: tuple[str, ...] = (), **train_kwargs) -> CurvatureTrajectory:
    """Train with checkpoints and score the checkpoints of epochs 1, 1 + k, 1 + 2k, … (k = ``score_every``)
    on all ``images`` with ``targets`` (streamed in batches from the training tensor, on
    ``train_kwargs["device"]``) by ``method`` and by each of ``extra_methods`` (their default probes)."""
    if score_every < 1:
        raise ConfigError(f"score_every must be >= 1 (got {score_every})")
    curv, loss, scored, extra = [], [], [], {m: [] for m in extra_methods}
    device = train_kwargs.get("device", "cpu")
    data = PackedDataset(images, targets)

    def on_epoch(e, models):
        if (e - 1) % score_every:
            return
        c, losses = curvature_per_model(models, data, method=method, probes=probes, seed=score_seed,
                                        batch_size=score_batch_size, device=device, step=step)
        curv.append(c)
        loss.append(losses)
        scored.append(e)
        for name in extra_methods:
            extra[name].append(curvature_per_model(models, data, method=name, seed=score_seed,
                                                   batch_size=score_batch_size, device=device, step=step)[0])

    models = train_with_checkpoints(make_model, images, targets, keep, epochs=epochs, on_epoch=on_epoch, **train_kwargs)
    return CurvatureTrajectory(np.stack(curv), np.stack(loss), np.asarray(keep, dtype=bool), models, scored,
                               {k: np.stack(v) for k, v in extra.items()})
