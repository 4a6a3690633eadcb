"""Train a classifier on any map-style dataset, optionally through a batch transform (VRM).

The recipe is the project's standard one (``curvfast.train.train_model``): SGD, momentum 0.9,
weight decay 5e-4, cosine learning-rate schedule. ``batch_transform(x, y, rng)`` may replace a
batch by new inputs and targets that are class indices (B,) or probability vectors (B, C); the
loss is the cross-entropy against them.
"""
from __future__ import annotations

import sys
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

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
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"need epochs >= 1 and batch_size >= 1 (got epochs={epochs}, batch_size={batch_size})")
    from tqdm.auto import tqdm

    model.to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    rng = np.random.default_rng(seed)
    show = sys.stderr.isatty() if progress is None else progress
    steps, start = 0, time.perf_counter()
    model.train()
    for _ in tqdm(range(epochs), desc="train", unit="epoch", disable=not show):
        for x, y in loader:
            if batch_transform is not None:
                x, y = batch_transform(x, y, rng)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()
            opt.step()
            steps += 1
        sched.step()
    model.eval()
    return {"epochs": epochs, "steps": steps, "seconds": round(time.perf_counter() - start, 2)}
