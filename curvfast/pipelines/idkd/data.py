"""The data of a decentralized run: private shards, a public unlabeled set, the test set.

From the training split of ``--dataset`` (default the bundled digits: 1347 images) a stratified
``public_fraction`` is held out (its labels are dropped: they are kept only to *report* how good
the distilled labels are); the rest is the private data, split across nodes (``partition``). The
public unlabeled set is those held-out images plus foreign ones, so an OoD filter has genuinely
foreign samples to reject: ``public_photos`` real-photo patches (``curvfast.data._photos``, grey,
repeated over the colour channels) and, optionally, the training split of a second dataset
(``public_dataset`` on ``public_root``, e.g. CIFAR-100 images for a CIFAR-10 run). The test split
measures accuracy. Public and private data are disjoint by construction.

Only indices and labels are held for the whole split (labels come from the dataset's ``targets``
without decoding images): a node loads the images of its own shard (:meth:`private_images`) and of
the public set (:meth:`public_images`), and the test set is streamed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from curvfast.data import get_dataset
from curvfast.data import photo_patches
from curvfast.pipelines.common.data import dataset_labels, load_split, loader
from curvfast.errors import ConfigError, DataError

__all__ = ["DecentralizedData", "build_data"]


@dataclass(frozen=True)
class DecentralizedData:
    """Indices and labels of a run's private, public and test data; images are loaded on request."""

    train: Dataset  # the training split, read lazily
    test: Dataset
    private_idx: np.ndarray  # (N,) indices into ``train`` of the private samples
    private_y: torch.Tensor  # (N,) int64
    public_idx: np.ndarray  # (P_held,) indices into ``train`` of the held-out public samples
    photos: torch.Tensor  # (P_photo, C, H, W) foreign public samples: real-photo patches
    extra: Dataset | None  # foreign public samples from --public-dataset (labels unused), or None
    public_y: torch.Tensor  # (P,) true label of a held-out sample or -1 for a foreign one; for reporting only
    num_classes: int
    input_shape: tuple[int, ...]  # (C, H, W)

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]

    @property
    def public_is_digit(self) -> torch.Tensor:
        """True for the held-out training samples (digits in the default run), False for foreign ones."""
        return self.public_y >= 0

    def private_images(self, index, options) -> torch.Tensor:
        """Images of the private samples ``index`` (positions in ``private_y``), in that order."""
        return _stack(Subset(self.train, self.private_idx[np.asarray(index, np.int64)].tolist()), options)

    def public_images(self, options) -> torch.Tensor:
        """The whole public set: held-out images, then the foreign ones."""
        parts = [self.photos] if len(self.public_idx) == 0 else [_stack(Subset(self.train, self.public_idx.tolist()), options),
                                                                  self.photos]
        return torch.cat(parts + ([_stack(self.extra, options)] if self.extra is not None else []))


def _stack(dataset, options) -> torch.Tensor:
    if len(dataset) == 0:
        raise DataError("a node got no samples; lower --nodes or raise --min-samples")
    return torch.cat([x for x, _ in loader(dataset, options, batch_size=256)])


def build_data(options, public_fraction: float = 0.25, public_photos: int | None = None, seed: int = 0,
               public_dataset: str | None = None, public_root: str | None = None) -> DecentralizedData:
    """The run's data for the data ``options`` (a :class:`~curvfast.pipelines.common.data.DataOptions`);
    ``public_photos=None`` adds as many photo patches as held-out images."""
    from sklearn.model_selection import train_test_split

    if not 0.0 <= public_fraction < 1.0:
        raise ConfigError(f"public_fraction must be in [0, 1) (got {public_fraction!r})")
    if public_photos is not None and public_photos < 0:
        raise ConfigError(f"public_photos must be >= 0 (got {public_photos!r})")
    train, info = load_split(options, "train")
    test, _ = load_split(options, "test")
    labels = dataset_labels(train)
    if public_fraction > 0:
        private_idx, public_idx = train_test_split(np.arange(len(labels)), test_size=public_fraction, random_state=seed,
                                                   stratify=labels)
        private_idx, public_idx = np.sort(private_idx), np.sort(public_idx)
    else:
        private_idx, public_idx = np.arange(len(labels)), np.zeros(0, np.int64)
    shape = tuple(train[0][0].shape)
    if shape[-1] != shape[-2]:
        raise DataError(f"the photo patches are square; the images are {shape[-2]}x{shape[-1]}: pass --image-size")
    num_photos = len(public_idx) if public_photos is None else public_photos
    photos = photo_patches(num_photos, size=shape[-1], seed=seed)
    extra = None
    if len(public_idx) + num_photos == 0 and public_dataset is None:
        raise ConfigError("the public set is empty: give --public-fraction > 0, --public-photos or --public-dataset")
    if public_dataset is not None:
        extra, _ = get_dataset(public_dataset, "train", root=public_root, image_size=options.image_size)
        if tuple(extra[0][0].shape) != shape:
            raise DataError(f"--public-dataset {public_dataset} has images of shape {tuple(extra[0][0].shape)}, "
                             f"the training images {shape}; pass --image-size")
    return DecentralizedData(
        train=train, test=test, private_idx=private_idx, private_y=torch.from_numpy(labels[private_idx]),
        public_idx=public_idx, photos=photos.expand(-1, shape[0], -1, -1).contiguous(), extra=extra,
        public_y=torch.cat([torch.from_numpy(labels[public_idx]),
                            torch.full((len(photos) + (len(extra) if extra is not None else 0),), -1, dtype=torch.int64)]),
        num_classes=info.num_classes, input_shape=shape,
    )
