"""The benchmark's data: class subsets of any dataset (read lazily) and test splits as tensors."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from curvfast.errors import ConfigError, DataError
from curvfast.pipelines.common.data import dataset_labels

__all__ = ["ClassSubset", "stack_images", "folder_images"]


class ClassSubset(torch.utils.data.Dataset):
    """The samples of ``dataset`` whose label is in ``classes``, relabelled 0..len(classes)-1 in that
    order; images are read lazily from ``dataset``."""

    def __init__(self, dataset, classes):
        classes = list(classes)
        labels = torch.as_tensor(dataset_labels(dataset))
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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def folder_images(folder: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Every image under ``folder`` (any depth, sorted by path) as ``(N, C, H, W)`` float32 in [0, 1], resized to
    ``shape = (C, H, W)`` (bilinear) and converted to grey (C = 1) or RGB (C = 3), so they are shaped like the ID
    images."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"ood_folders: {folder!r} is not a folder; pass folders of OoD images")
    channels, height, width = shape
    if channels not in (1, 3):
        raise ConfigError(f"ood_folders: the ID images have {channels} channels; only grey (1) or RGB (3) fit")
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                   if f.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise DataError(f"ood_folders: no images ({', '.join(IMAGE_SUFFIXES)}) under {folder!r}")
    images = []
    for path in paths:
        try:
            with Image.open(path) as im:
                im = im.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
                images.append(np.asarray(im, dtype=np.float32).reshape(height, width, channels) / 255.0)
        except OSError as err:
            raise DataError(f"ood_folders: cannot read {path!r} as an image ({err})") from err
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
