"""The dataset registry: the bundled sklearn digits, image folders, torchvision datasets on a user's root.

Nothing is ever downloaded: torchvision datasets are opened with ``download=False`` on a
root the user already has. Every dataset yields ``(image tensor (C, H, W) float32, int label)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from curvfast.data._files import check_split
from curvfast.data._streaming import FileListDataset, StreamingImageFolder, _image_transform, _PathLabelDataset
from curvfast.errors import ConfigError, DataError, UnknownNameError

__all__ = ["DigitsDataset", "get_dataset", "DatasetInfo", "available_datasets", "sample_paths", "class_names"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model for the dataset needs: the number of classes and of input channels.

    Attributes:
        num_classes: The number of classes (labels lie in [0, num_classes)).
        in_channels: Channels of every image.
    """

    num_classes: int
    in_channels: int


class DigitsDataset(Dataset):
    """sklearn's bundled 8x8 handwritten digits (1797 real images), pixel values scaled to [0, 1].

    The split is fixed: a stratified 75/25 split with ``random_state=0`` gives 1347 train and
    450 test images, identical on every machine.

    Args:
        split: ``train``, ``test`` or ``all``.

    Raises:
        DataError: For another split.
    """

    info = DatasetInfo(num_classes=10, in_channels=1)

    def __init__(self, split: str = "train"):
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        if split not in ("train", "test", "all"):
            raise DataError(f"split must be 'train', 'test' or 'all' (got {split!r})")
        digits = load_digits()
        images = digits.images.astype(np.float32) / 16.0
        index = np.arange(len(images))
        if split != "all":
            train_idx, test_idx = train_test_split(index, test_size=0.25, random_state=0, stratify=digits.target)
            index = np.sort(train_idx if split == "train" else test_idx)
        self.images = torch.from_numpy(images[index]).unsqueeze(1)
        self.targets = torch.from_numpy(digits.target[index].astype(np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.targets[i])


_TORCHVISION = {  # name -> (class name, num_classes, channels, uses `train=` rather than `split=`)
    "mnist": ("MNIST", 10, 1, True),
    "fashionmnist": ("FashionMNIST", 10, 1, True),
    "cifar10": ("CIFAR10", 10, 3, True),
    "cifar100": ("CIFAR100", 100, 3, True),
    "svhn": ("SVHN", 10, 3, False),
}


def available_datasets() -> list[str]:
    """The names :func:`get_dataset` takes.

    Returns:
        ``digits``, ``imagefolder``, ``filelist`` and the torchvision names, sorted.
    """
    return ["digits", "imagefolder", "filelist"] + sorted(_TORCHVISION)


def _require_root(name: str, root: str | None) -> str:
    if root is None:
        raise ConfigError(f"dataset {name!r} needs root=<folder that already holds it>; curvfast never downloads data")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset root {root!r} for {name!r} does not exist; pass the folder that holds the "
                                "data")
    return root


MAX_IMAGE_SIZE = 4096  # a larger resize would not leave a batch in memory (and a typo of 10**6 would hang in PIL)

_SPLIT_NAMES = ("train", "test", "val", "validation")


def _split_folder(root: str, split: str, name: str) -> str:
    """The folder of ``split`` under ``root``.

    ``root/<split>`` when it exists; a ``root`` without split folders (only class folders) is the training split
    (``train`` or ``all``). Any other missing split is an error naming the folder looked for, never a silent fallback to
    the training images.
    """
    folder = os.path.join(root, split)
    if os.path.isdir(folder):
        return folder
    has_splits = [s for s in _SPLIT_NAMES if os.path.isdir(os.path.join(root, s))]
    if not has_splits and split in ("train", "all"):
        return root
    found = (f"it has {', '.join(s + '/' for s in has_splits)}" if has_splits
             else "it holds class folders only (the training split)")
    raise FileNotFoundError(f"dataset {name!r}: no {split!r} split under {root!r}: looked for {folder!r} ({found}); "
                            f"put the {split} images in {folder}/<class>/<image> or choose another split")


def get_dataset(name: str, split: str = "train", root: str | None = None, image_size: int | None = None,
                allow_outside_root: bool = False) -> tuple[Dataset, DatasetInfo]:
    """Return ``(dataset, DatasetInfo)`` for a registered dataset name.

    - ``digits``: bundled, offline, fixed split.
    - ``imagefolder``: ``root/<split>/<class>/<image>``; a ``root/<class>/<image>`` folder without split
      folders is the training split only (a missing split is an error naming the folder looked for);
      ``image_size`` resizes and centre-crops. Symlinks are followed inside the split folder only (resolved
      paths) unless ``allow_outside_root``; a symlink loop is refused.
    - ``filelist``: streaming (``curvfast.data._streaming``), for ImageNet-size data: ``root`` is a
      ``<path> <label>`` list file, or a folder holding ``<split>.txt``, or an image folder
      (split folders and symlinks as for ``imagefolder``). List entries must stay
      inside the list's folder (as text, and resolved when read) unless ``allow_outside_root``.

    Without ``image_size`` the folder and list datasets require one image size: reading an image of another size than
    image 0 is a DataError naming both files and ``--image-size``.
    - ``mnist``, ``fashionmnist``, ``cifar10``, ``cifar100``, ``svhn``: torchvision classes on ``root``,
      ``download=False``.

    Args:
        name: A name from :func:`available_datasets` (case-insensitive).
        split: The split: ``train``, ``test`` (and ``all`` for the digits); for folders and lists any split folder name
            (``val`` for an ImageNet layout).
        root: The folder (or list file for ``filelist``) that already holds the data; not used for ``digits``.
        image_size: Resize and centre-crop to this side (an int in 1..4096); None keeps the stored size.
        allow_outside_root: Let a list file name images outside its folder, and folder scans follow symlinks out of
            the folder.

    Returns:
        ``(dataset, info)``: a map-style dataset of ``(image (C, H, W) float32, int label)`` and its
        :class:`DatasetInfo`.

    Raises:
        ConfigError: For a bad ``image_size``, resizing the digits, a missing ``root``, or a split that is not a plain
            folder name.
        DataError: For a split the dataset does not have, an image folder with fewer than 2 classes, a symlink loop or
            a symlink out of the folder.
        UnknownNameError: For an unknown ``name``.
        FileNotFoundError: When ``root``, the split folder or the torchvision files are missing.
    """
    key = name.lower()
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or not 1 <= image_size <= MAX_IMAGE_SIZE):
        raise ConfigError(f"image_size must be a positive int of at most {MAX_IMAGE_SIZE} (got {image_size!r}; one "
                          f"{MAX_IMAGE_SIZE}x{MAX_IMAGE_SIZE} RGB image is 201 MB of float32)")
    if key == "digits":
        if image_size not in (None, 8):
            raise ConfigError(f"the digits are 8x8 images and are not resized (got image_size={image_size}); drop "
                              "--image-size")
        ds = DigitsDataset(split)
        return ds, ds.info
    if key in ("imagefolder", "filelist"):
        check_split(split)
    if key == "imagefolder":
        from curvfast.data._imagefolder import CheckedImageFolder

        root = _require_root(name, root)
        folder = _split_folder(root, split, name)
        ds = CheckedImageFolder(folder, image_size=image_size, allow_outside_root=allow_outside_root)
        if len(ds.classes) < 2:
            raise DataError(f"image folder {folder!r} has {len(ds.classes)} class folder(s); need at least 2")
        return ds, DatasetInfo(num_classes=len(ds.classes), in_channels=3)
    if key == "filelist":
        if root is not None and os.path.isfile(root):
            ds = FileListDataset(root, image_size=image_size, allow_outside_root=allow_outside_root)
        elif root is not None and os.path.isfile(os.path.join(root, f"{split}.txt")):
            ds = FileListDataset(os.path.join(root, f"{split}.txt"), image_size=image_size,
                                 allow_outside_root=allow_outside_root)
        else:
            root = _require_root(name, root)
            ds = StreamingImageFolder(_split_folder(root, split, name), image_size=image_size,
                                      allow_outside_root=allow_outside_root)
        return ds, DatasetInfo(num_classes=ds.num_classes, in_channels=3)
    if key in _TORCHVISION:
        import torchvision.datasets as tvd

        cls_name, num_classes, channels, uses_train = _TORCHVISION[key]
        root = _require_root(name, root)
        if split not in ("train", "test"):
            raise DataError(f"split for {name!r} must be 'train' or 'test' (got {split!r})")
        kwargs = {"train": split == "train"} if uses_train else {"split": split}
        try:
            ds = getattr(tvd, cls_name)(root, download=False, transform=_image_transform(image_size), **kwargs)
        except RuntimeError as err:
            raise FileNotFoundError(f"{cls_name} not found under {root!r} ({err}); curvfast never downloads "
                                    "data") from err
        return ds, DatasetInfo(num_classes=num_classes, in_channels=channels)
    raise UnknownNameError(f"unknown dataset {name!r}; choose one of {available_datasets()}")


def sample_paths(dataset: Dataset) -> list[str] | None:
    """The file of every sample of an image folder or file list dataset, in index order.

    Works through ``torch.utils.data.Subset`` (the subset's order). Paths are absolute when the dataset's root is; a
    name that is not UTF-8 holds surrogate escapes (``os.fsdecode``): open it as it is, show it with
    :func:`printable_path`.

    Args:
        dataset: A dataset from :func:`get_dataset` (``imagefolder``, ``filelist``), a
            ``torchvision.datasets.DatasetFolder``, or a ``Subset`` of one.

    Returns:
        One path per sample, or None for a dataset without files (the digits, tensors, torchvision's CIFAR...).
    """
    from torchvision.datasets import DatasetFolder

    if isinstance(dataset, Subset):
        inner = sample_paths(dataset.dataset)
        return None if inner is None else [inner[int(i)] for i in dataset.indices]
    if isinstance(dataset, _PathLabelDataset):
        return [dataset.path(i) for i in range(len(dataset))]
    if isinstance(dataset, DatasetFolder):
        return [str(path) for path, _ in dataset.samples]
    return None


def class_names(dataset: Dataset) -> list[str] | None:
    """The name of each class, indexed by label: the class folders of an image folder, torchvision's ``classes``.

    Args:
        dataset: Any dataset, or a ``Subset`` of one.

    Returns:
        ``names[label]``, or None where the dataset names no classes (file lists, the digits, tensors).
    """
    if isinstance(dataset, Subset):
        return class_names(dataset.dataset)
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        return list(classes)
    return None
