"""The data options every pipeline takes, and what they build: datasets, loaders, models.

A pipeline's ``Config`` inherits :class:`DataOptions`, so ``--dataset --root --image-size --train-split
--test-split --allow-outside-root --normalize --augment --workers`` mean the same everywhere. Normalisation lives inside the model
(:class:`curvfast.models.Normalized`), so curvature, attacks and probes all see [0, 1] inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from curvfast.data import check_split, get_dataset
from curvfast.models import build_model, normalized, parse_normalization
from curvfast.pipelines.common.augment import AUGMENTATIONS, batch_transform, image_augmentation
from curvfast.pipelines.common.contract import option
from curvfast.errors import ConfigError, DataError

__all__ = ["DataOptions", "load_split", "loader", "build_network", "dataset_labels", "materialise", "as_float", "PackedDataset"]


@dataclass
class DataOptions:
    """Where the images come from and how they are fed to the models."""

    dataset: str = option("digits")
    root: str | None = option(None)
    image_size: int | None = option(None)
    train_split: str = option("train", "split folder of the training images")
    test_split: str = option("test", "split folder of the held-out images (val: an ImageNet layout)")
    allow_outside_root: bool = option(False, "let folder scans follow symlinks out of --root and file lists name "
                                             "images outside their folder")
    normalize: str = option("none")
    augment: str = option("none", choices=AUGMENTATIONS)
    workers: int = option(0)

    def check_data_options(self) -> None:
        """Fail early, naming the option, on a bad split name, normalisation, augmentation or worker count."""
        check_split(self.train_split, "train_split")
        check_split(self.test_split, "test_split")
        parse_normalization(self.normalize)
        image_augmentation(self.augment)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"workers must be an int >= 0 (got {self.workers!r})")

    def augmentation(self):
        """``augment(x, generator)`` (for stacked training) or None."""
        return image_augmentation(self.augment)

    def batch_transform(self, seed: int):
        """``batch_transform(x, y, rng)`` for :func:`curvfast.training.fit`, or None."""
        return batch_transform(self.augment, seed)


def load_split(options: DataOptions, split: str):
    """``(dataset, DatasetInfo)`` of ``split``: ``train`` and ``test`` read the options' ``train_split`` and
    ``test_split`` folders, another name (``all``, ``val``) that split; a missing split is an error."""
    name = {"train": options.train_split, "test": options.test_split}.get(split, split)
    return get_dataset(options.dataset, name, root=options.root, image_size=options.image_size,
                       allow_outside_root=options.allow_outside_root)


def loader(dataset, options: DataOptions, *, batch_size: int, device: str | torch.device = "cpu", shuffle: bool = False,
           seed: int = 0) -> DataLoader:
    """A DataLoader with the options' workers, pinned memory for a GPU, and a seeded shuffle."""
    on_gpu = torch.device(device).type == "cuda"
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=options.workers, pin_memory=on_gpu,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None,
                      persistent_workers=options.workers > 0)


def materialise(dataset, options: DataOptions, *, batch_size: int) -> torch.Tensor:
    """The dataset's inputs as one (N, ...) tensor, for training many models on subsets (each step
    gathers one batch per model): uint8 q when every value is exactly q / 255 in float32 (decoded
    8-bit images, as ``ToTensor`` makes them: a quarter of float32's memory, 154 MB instead of 614
    MB for CIFAR-10's training split), else float32. :func:`as_float` restores the values bit for bit."""
    chunks, packed = [], True
    for x, _ in loader(dataset, options, batch_size=batch_size):
        x = x.float()
        if packed:
            q = (x * 255).round_()
            if bool(((q >= 0) & (q <= 255)).all()) and torch.equal(q / 255, x):
                chunks.append(q.to(torch.uint8))
                continue
            packed, chunks = False, [as_float(c) for c in chunks]
        chunks.append(x)
    return torch.cat(chunks)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Inputs from :func:`materialise` as float32: q / 255 for uint8, else ``x`` itself."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


class PackedDataset(Dataset):
    """``(as_float(images[i]), targets[i])``: a ``TensorDataset`` over :func:`materialise`'s inputs that
    restores each item's float32 values as it is read (the packed tensor stays packed)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        if len(images) != len(targets):
            raise DataError(f"{len(images)} inputs but {len(targets)} targets")
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return as_float(self.images[i]), self.targets[i]


def build_network(options: DataOptions, name: str, info, input_shape: tuple[int, ...], **kwargs) -> torch.nn.Module:
    """A fresh ``name`` model for the dataset (``info``: classes, channels), inside the options' normalisation.
    ``mlp`` / ``mlp2`` get ``in_features`` from ``input_shape`` (C, H, W)."""
    if name in ("mlp", "mlp2"):
        kwargs.setdefault("in_features", math.prod(input_shape))
    return normalized(build_model(name, info.num_classes, info.in_channels, **kwargs), options.normalize)


def dataset_labels(dataset) -> np.ndarray:
    """The integer label of every item of ``dataset``, read without decoding its images where the
    dataset keeps them: a ``labels`` or ``targets`` sequence of the dataset's length (torchvision
    sets, image folders, file lists, relabelled views), through
    ``Subset`` s; otherwise item by item. (A ``target_transform`` is not applied to such a sequence.)"""
    if isinstance(dataset, Subset):
        return dataset_labels(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for name in ("labels", "targets"):
        values = getattr(dataset, name, None)
        if values is not None and not isinstance(values, str) and len(values) == len(dataset):
            return np.asarray(values, dtype=np.int64)
    return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)
