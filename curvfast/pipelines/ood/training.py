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

__all__ = ["train_classifier", "dataset_labels", "ClassSubset", "stack_images"]


def dataset_labels(dataset) -> torch.Tensor:
    """Every sample's label without decoding images: the dataset's ``targets`` (torchvision, image folders,
    digits) or ``labels`` (SVHN), else read one by one."""
    for name in ("targets", "labels"):
        labels = getattr(dataset, name, None)
        if labels is not None:
            return torch.as_tensor(labels, dtype=torch.long)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


class ClassSubset(torch.utils.data.Dataset):
    """The samples of ``dataset`` whose label is in ``classes``, relabelled 0..len(classes)-1 in that
    order; images are read lazily from ``dataset``."""

    def __init__(self, dataset, classes):
        classes = list(classes)
        labels = dataset_labels(dataset)
        relabel = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
        relabel[torch.as_tensor(classes)] = torch.arange(len(classes))
        self.dataset = dataset
        self.indices = torch.nonzero(relabel[labels] >= 0).flatten()
        self.targets = relabel[labels[self.indices]]

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[int(self.indices[i])][0], int(self.targets[i])


def stack_images(dataset, batch_size: int = 256, workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, C, H, W), labels (N,))`` of a (test-sized) dataset, read through a DataLoader."""
    xs, ys = zip(*torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers))
    return torch.cat(xs), torch.cat(ys)


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
