"""The benchmark's data: class subsets of any dataset (read lazily) and test splits as tensors."""
from __future__ import annotations

import torch

from curvfast.pipelines.common.data import dataset_labels

__all__ = ["ClassSubset", "stack_images"]


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
