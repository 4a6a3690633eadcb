"""Train a classifier on any map-style dataset, optionally through a batch transform (VRM).

The recipe is the project's one training loop, :func:`curvfast.pipelines.common.training.fit`: SGD, momentum 0.9,
weight decay 5e-4, cosine learning-rate schedule. ``batch_transform(x, y, rng)`` may replace a
batch by new inputs and targets that are class indices (B,) or probability vectors (B, C); the
loss is the cross-entropy against them.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

import torch

from curvfast.pipelines.common.training import fit

__all__ = ["train_classifier", "subset_by_class"]


class _TensorDataset(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images, self.targets = images, targets

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], int(self.targets[i])


def subset_by_class(images: torch.Tensor, targets: torch.Tensor, classes) -> _TensorDataset:
    """The samples whose label is in ``classes``, relabelled 0..len(classes)-1 in the given order."""
    classes = list(classes)
    relabel = torch.full((int(targets.max()) + 1,), -1, dtype=torch.long)
    relabel[torch.as_tensor(classes)] = torch.arange(len(classes))
    keep = relabel[targets] >= 0
    return _TensorDataset(images[keep], relabel[targets[keep]])


def train_classifier(
    model: torch.nn.Module,
    dataset,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    seed: int = 0,
    batch_transform: Callable | None = None,
    device: str = "cpu",
    progress: bool | None = None,
) -> dict:
    """Train ``model`` in place. Returns ``{"epochs", "steps", "seconds"}``.

    ``seed`` fixes the initial shuffling and the transform's randomness (a numpy Generator passed
    as ``rng``); the caller seeds the model's initialisation.
    """
    start = time.perf_counter()
    fit(model, dataset, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
        batch_transform=batch_transform, device=device, progress=sys.stderr.isatty() if progress is None else progress)
    steps = epochs * -(-len(dataset) // batch_size)
    return {"epochs": epochs, "steps": steps, "seconds": round(time.perf_counter() - start, 2)}
