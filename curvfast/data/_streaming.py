"""Streaming image datasets for ImageNet-size scoring: file lists and image folders.

Images are decoded one at a time in ``__getitem__`` (inside DataLoader workers), never held.
The catalogue itself is compact and fork-friendly: all paths live in one byte buffer (the file system's bytes)
with int64 offsets and the labels in an int64 array, three numpy arrays in all (57.7 MiB for
1,281,167 ImageNet-style paths, measured; a Python list of (path, label) tuples: 216.7 MiB),
built without one Python string per path. Python objects would also be copied page by page
into every DataLoader worker by reference counting; these arrays stay shared.

- ``FileListDataset``: a text file of ``<relative/path> <integer label>`` lines (ImageNet
  ``train.txt``/``val.txt`` style, ``#`` comments, paths relative to ``root``). Paths that
  leave ``root`` (absolute, or through ``..``, or resolving outside it through a symlink, checked as each image is
  read) are refused unless ``allow_outside_root=True``.
- ``StreamingImageFolder``: ``root/<class>/<image>`` (ImageNet layout). Classes are the sorted
  folder names and samples are sorted within each class, so indices and labels match
  ``torchvision.datasets.ImageFolder`` on the same folder; symlinks are followed inside ``root`` only
  (``curvfast.data._files``).

Without a resize (``image_size`` None, the default transform) every image must have image 0's size; another size is
one error naming both files and ``--image-size``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import hashlib
import os
from array import array

import numpy as np
from torch.utils.data import Dataset

from curvfast.data._files import (IMAGE_EXTENSIONS, SizeCheck, folder_classes, folder_images, inside, load_image,
                                  printable_path)
from curvfast.errors import DataError
from curvfast.io import atomic_write_bytes

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["FileListDataset", "StreamingImageFolder", "IMAGE_EXTENSIONS", "MAX_LABEL"]

MAX_LABEL = 2**24 - 1  # a model gets max label + 1 outputs: 16.8M classes is far past any real label set


class _Catalogue:
    """Append-only (path, label) store that never holds a Python string per path."""

    def __init__(self):
        self.buffer, self.ends, self.labels = bytearray(), array("q"), array("q")

    def add(self, path: bytes, label: int) -> None:
        self.buffer += path
        self.ends.append(len(self.buffer))
        self.labels.append(label)

    def __len__(self) -> int:
        return len(self.labels)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(uint8 path bytes, int64 offsets of length N+1, int64 labels)."""
        offsets = np.zeros(len(self.ends) + 1, dtype=np.int64)
        offsets[1:] = np.frombuffer(self.ends, dtype=np.int64)
        return np.frombuffer(bytes(self.buffer), dtype=np.uint8), offsets, np.frombuffer(self.labels,
                                                                                         dtype=np.int64).copy()


def _image_transform(image_size: int | None) -> Callable[["Image.Image"], Any]:
    """``ToTensor``, after ``Resize(image_size) + CenterCrop(image_size)`` when ``image_size`` is given."""
    from torchvision import transforms

    steps = [] if image_size is None else [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    return transforms.Compose(steps + [transforms.ToTensor()])


def _outside(path: bytes) -> bool:
    """Whether a list entry's text leaves the folder it is relative to (absolute, or up through '..')."""
    return os.path.isabs(path) or os.path.normpath(path).split(os.sep.encode())[0] == b".."


class _PathLabelDataset(SizeCheck, Dataset):
    """Paths (one byte buffer + offsets) and labels; loads ``root/path`` with PIL on access."""

    def __init__(self, root: str, catalogue: "_Catalogue", transform: Callable[["Image.Image"], Any] | None = None,
                 image_size: int | None = None,
                 mode: str = "RGB"):
        self._buffer, self._offsets, self.targets = catalogue.arrays()
        self.root = root
        self.mode = mode
        self.check_sizes = transform is None and image_size is None
        self.transform = transform if transform is not None else _image_transform(image_size)

    def __len__(self) -> int:
        return len(self.targets)

    def _entry(self, i: int) -> bytes:
        return self._buffer[self._offsets[i]:self._offsets[i + 1]].tobytes()

    def path(self, i: int) -> str:
        """Absolute path of sample ``i``.

        Args:
            i: The sample index.

        Returns:
            ``root`` joined with the listed path (bytes that are not UTF-8 as ``os.fsdecode`` gives them; show it
            with :func:`curvfast.data.printable_path`).
        """
        return os.path.join(self.root, os.fsdecode(self._entry(i)))

    sample_path = path

    def _checked_path(self, i: int) -> str:
        return self.path(i)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} is out of range for a dataset of {len(self)} images")
        image = self.checked(load_image(self._checked_path(i), self.mode, f"image {i} "), i)
        return self.transform(image), int(self.targets[i])

    def fingerprint(self) -> str:
        """SHA-256 of the catalogue (paths and labels, not the pixels).

        Returns:
            The hex digest.
        """
        h = hashlib.sha256(self._buffer.tobytes())
        h.update(self._offsets.tobytes())
        h.update(self.targets.tobytes())
        return h.hexdigest()

    @property
    def num_classes(self) -> int:
        """One more than the largest label (0 when empty)."""
        return int(self.targets.max()) + 1 if len(self.targets) else 0

    def write_filelist(self, path: str) -> None:
        """Write this catalogue as a file list, atomically, so later runs skip the folder scan.

        Args:
            path: The list file to write: ``<path> <label>`` lines, relative to ``root``, the names' bytes as stored.

        Raises:
            DataError: For a file name with a line break or surrounding white space, which a list cannot hold.
        """
        lines = []
        for i in range(len(self)):
            entry = self._entry(i)
            if entry != entry.strip() or b"\n" in entry or b"\r" in entry:
                raise DataError(f"image {i} '{printable_path(self.path(i))}' has a line break or surrounding white "
                                "space in its name, which a file list cannot hold; rename it")
            lines.append(b"%s %d\n" % (entry, self.targets[i]))
        atomic_write_bytes(path, b"".join(lines))


class FileListDataset(_PathLabelDataset):
    """Images listed in a text file, one ``<path> <label>`` per line (see the module docstring).

    Args:
        list_file: The list.
        root: Folder the paths are relative to (default: the list's folder).
        transform: Applied to the PIL image; default ``Resize(image_size) + CenterCrop + ToTensor``.
        image_size: Side of the default transform's resize and crop; None keeps the stored size.
        mode: PIL mode, ``"RGB"`` (3 channels) or ``"L"`` (grayscale).
        allow_outside_root: Accept paths that leave ``root``: absolute, through ``..`` or through symlinks.

    Raises:
        FileNotFoundError: When ``list_file`` does not exist.
        DataError: For a malformed line, a label over :data:`MAX_LABEL`, a path outside ``root`` (without
            ``allow_outside_root``) or an empty list. An entry whose resolved path leaves ``root`` is refused when
            its image is read (a DataError naming it).
    """

    def __init__(self, list_file: str, root: str | None = None, transform: Callable[["Image.Image"], Any] | None = None,
                 image_size: int | None = None, mode: str = "RGB", allow_outside_root: bool = False):
        shown = printable_path(list_file)
        if not os.path.isfile(list_file):
            state = "is not a regular file" if os.path.exists(list_file) else "does not exist"
            raise FileNotFoundError(f"file list '{shown}' {state}; pass a text file of '<path> <label>' lines")
        catalogue = _Catalogue()
        with open(list_file, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if not line or line.startswith(b"#"):
                    continue
                path, label = line.rsplit(None, 1) if len(line.split()) > 1 else (b"", line)
                if not label.isdigit():
                    raise DataError(f"{shown}:{lineno}: expected '<path> <non-negative integer label>', got "
                                    f"'{printable_path(line)}'")
                if int(label) > MAX_LABEL:
                    raise DataError(f"{shown}:{lineno}: label {int(label)} is too large: labels are class indices "
                                    f"0..{MAX_LABEL} (a model gets one output per class); number the classes from 0")
                if not allow_outside_root and _outside(path):
                    raise DataError(f"{shown}:{lineno}: '{printable_path(path)}' lies outside the root folder; list "
                                    "paths relative to it, or pass allow_outside_root=True (--allow-outside-root)")
                catalogue.add(path, int(label))
        if not len(catalogue):
            raise DataError(f"file list '{shown}' lists no images")
        root = os.path.dirname(os.path.abspath(list_file)) if root is None else root
        self.allow_outside_root = allow_outside_root
        self._real_root = os.path.realpath(root)
        super().__init__(root, catalogue, transform, image_size, mode)

    def _checked_path(self, i: int) -> str:
        """``path(i)``, refused when its resolved path leaves ``root`` (a symlink out), unless allowed."""
        path = self.path(i)
        real = os.path.realpath(path)
        if not self.allow_outside_root and not inside(real, self._real_root):
            raise DataError(f"image {i} '{printable_path(path)}' resolves to '{printable_path(real)}', outside the "
                            f"list's folder '{printable_path(self.root)}' (a symlink leads out); list files inside "
                            "it, or pass allow_outside_root=True (--allow-outside-root)")
        return path


class StreamingImageFolder(_PathLabelDataset):
    """``root/<class>/<image>`` scanned once into the compact catalogue.

    Labels are the sorted class folders' positions (``self.classes``), as in torchvision's ImageFolder. Symlinks are
    followed while they stay inside ``root`` (resolved paths); a loop is refused.

    Args:
        root: The folder of class folders.
        transform: Applied to the PIL image; default ``Resize(image_size) + CenterCrop + ToTensor``.
        image_size: Side of the default transform's resize and crop; None keeps the stored size.
        mode: PIL mode, ``"RGB"`` (3 channels) or ``"L"`` (grayscale).
        allow_outside_root: Follow symlinks that lead outside ``root``.

    Raises:
        FileNotFoundError: When ``root`` does not exist.
        DataError: With fewer than 2 class folders, no images with one of :data:`IMAGE_EXTENSIONS`, a symlink loop or
            a symlink out of ``root`` (without ``allow_outside_root``).
    """

    def __init__(self, root: str, transform: Callable[["Image.Image"], Any] | None = None,
                 image_size: int | None = None, mode: str = "RGB", allow_outside_root: bool = False):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder '{printable_path(root)}' does not exist")
        self.classes = folder_classes(root, allow_outside_root)
        if len(self.classes) < 2:
            raise DataError(f"image folder '{printable_path(root)}' has {len(self.classes)} class folder(s); need at "
                            "least 2")
        catalogue = _Catalogue()
        for rel, label in folder_images(root, self.classes, allow_outside_root):
            catalogue.add(os.fsencode(rel), label)
        if not len(catalogue):
            raise DataError(f"image folder '{printable_path(root)}' holds no images with extensions {IMAGE_EXTENSIONS}")
        super().__init__(root, catalogue, transform, image_size, mode)

    @property
    def num_classes(self) -> int:
        """The number of class folders."""
        return len(self.classes)
