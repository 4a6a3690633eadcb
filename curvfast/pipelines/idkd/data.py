"""The data of a decentralized run: private shards, a public unlabeled set, the test set.

From the bundled digits' fixed train split (1347 images) a stratified ``public_fraction`` is held
out (its labels are dropped: they are kept only to *report* how good the distilled labels are);
the rest is the private data, split across nodes by Dirichlet(alpha). The public unlabeled set is
those held-out digits plus ``public_photos`` real-photo patches (``curvfast.data.photos``), so an
OoD filter has genuinely foreign samples to reject. The digits' test split (450) measures accuracy.
Public and private data are disjoint by construction.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from curvfast.data import DigitsDataset
from curvfast.data.photos import photo_patches

__all__ = ["DecentralizedData", "build_data"]


@dataclass(frozen=True)
class DecentralizedData:
    private_x: torch.Tensor  # (N, 1, 8, 8)
    private_y: torch.Tensor  # (N,) int64
    public_x: torch.Tensor  # (P, 1, 8, 8), unlabeled for every algorithm
    public_y: torch.Tensor  # (P,) int64, true digit or -1 for a photo patch; for reporting only
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int = 10

    @property
    def public_is_digit(self) -> torch.Tensor:
        return self.public_y >= 0


def build_data(public_fraction: float = 0.25, public_photos: int | None = None, seed: int = 0) -> DecentralizedData:
    """``public_photos=None`` adds as many photo patches as held-out digits."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < public_fraction < 1.0:
        raise ValueError(f"public_fraction must be in (0, 1) (got {public_fraction!r})")
    if public_photos is not None and public_photos < 0:
        raise ValueError(f"public_photos must be >= 0 (got {public_photos!r})")
    train, test = DigitsDataset("train"), DigitsDataset("test")
    private_idx, public_idx = train_test_split(
        np.arange(len(train)), test_size=public_fraction, random_state=seed, stratify=train.targets.numpy())
    private_idx, public_idx = np.sort(private_idx), np.sort(public_idx)
    photos = photo_patches(len(public_idx) if public_photos is None else public_photos, size=8, seed=seed)
    return DecentralizedData(
        private_x=train.images[private_idx], private_y=train.targets[private_idx],
        public_x=torch.cat([train.images[public_idx], photos]),
        public_y=torch.cat([train.targets[public_idx], torch.full((len(photos),), -1, dtype=torch.int64)]),
        test_x=test.images, test_y=test.targets,
    )
