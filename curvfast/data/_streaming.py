"""Streaming image datasets for ImageNet-size scoring: file lists and image folders.

Images are decoded one at a time in ``__getitem__`` (inside DataLoader workers), never held.
The catalogue itself is compact and fork-friendly: all paths live in one UTF-8 byte buffer
with int64 offsets and the labels in an int64 array, three numpy arrays in all (57.7 MiB for
1,281,167 ImageNet-style paths, measured; a Python list of (path, label) tuples: 216.7 MiB),
built without one Python string per path. Python objects would also be copied page by page
into every DataLoader worker by reference counting; these arrays stay shared.

- ``FileListDataset``: a text file of ``<relative/path> <integer label>`` lines (ImageNet
  ``train.txt``/``val.txt`` style, ``#`` comments, paths relative to ``root``). Paths that
  leave ``root`` (absolute, or through ``..``) are refused unless ``allow_outside_root=True``.
- ``StreamingImageFolder``: ``root/<class>/<image>`` (ImageNet layout). Classes are the sorted
  folder names and samples are sorted within each class, so indices and labels match
  ``torchvision.datasets.ImageFolder`` on the same folder.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import hashlib
import os
import stat
from array import array

import numpy as np
from torch.utils.data import Dataset

from curvfast.errors import DataError
from curvfast.io import atomic_write_bytes

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["FileListDataset", "StreamingImageFolder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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


def load_image(path: str, mode: str = "RGB", what: str = "image ") -> "Image.Image":
    """Decode the regular file ``path`` with PIL.

    Anything but a regular file (a FIFO, a device, a folder) is refused before it is opened, since reading one can
    block forever.

    Args:
        path: The image file.
        mode: The PIL mode to convert to (``"RGB"`` or ``"L"``).
        what: How the message names the file (e.g. ``"image 7 "``).

    Returns:
        The decoded image in ``mode``.

    Raises:
        OSError: Naming the file, for any failure to read or decode it.
    """
    from PIL import Image

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise OSError("not a regular file")
        with Image.open(path) as img:
            return img.convert(mode)
    except OSError as err:
        raise OSError(f"cannot read {what}{path!r}: {err}") from err


def _outside(path: bytes) -> bool:
    """Whether a list entry leaves the folder it is relative to (absolute, or up through '..')."""
    return os.path.isabs(path) or os.path.normpath(path).split(os.sep.encode())[0] == b".."


class _PathLabelDataset(Dataset):
    """Paths (one byte buffer + offsets) and labels; loads ``root/path`` with PIL on access."""

    def __init__(self, root: str, catalogue: "_Catalogue", transform: Callable[["Image.Image"], Any] | None = None,
                 image_size: int | None = None,
                 mode: str = "RGB"):
        self._buffer, self._offsets, self.targets = catalogue.arrays()
        self.root = root
        self.mode = mode
        self.transform = transform if transform is not None else _image_transform(image_size)

    def __len__(self) -> int:
        return len(self.targets)

    def path(self, i: int) -> str:
        """Absolute path of sample ``i``.

        Args:
            i: The sample index.

        Returns:
            ``root`` joined with the listed path.
        """
        lo, hi = self._offsets[i], self._offsets[i + 1]
        return os.path.join(self.root, self._buffer[lo:hi].tobytes().decode())

    def __getitem__(self, i: int) -> tuple[Any, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} is out of range for a dataset of {len(self)} images")
        path = self.path(i)
        return self.transform(load_image(path, self.mode, f"image {i} ")), int(self.targets[i])

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
            path: The list file to write: ``<path> <label>`` lines, relative to ``root``.
        """
        lines = (f"{self._buffer[self._offsets[i]:self._offsets[i + 1]].tobytes().decode()} {self.targets[i]}\n"
                 for i in range(len(self)))
        atomic_write_bytes(path, "".join(lines).encode())


class FileListDataset(_PathLabelDataset):
    """Images listed in a text file, one ``<path> <label>`` per line (see the module docstring).

    Args:
        list_file: The list.
        root: Folder the paths are relative to (default: the list's folder).
        transform: Applied to the PIL image; default ``Resize(image_size) + CenterCrop + ToTensor``.
        image_size: Side of the default transform's resize and crop; None keeps the stored size.
        mode: PIL mode, ``"RGB"`` (3 channels) or ``"L"`` (grayscale).
        allow_outside_root: Accept absolute paths and paths through ``..`` that leave ``root``.

    Raises:
        FileNotFoundError: When ``list_file`` does not exist.
        DataError: For a malformed line, a path outside ``root`` (without ``allow_outside_root``) or an empty list.
    """

    def __init__(self, list_file: str, root: str | None = None, transform: Callable[["Image.Image"], Any] | None = None,
                 image_size: int | None = None, mode: str = "RGB", allow_outside_root: bool = False):
        if not os.path.isfile(list_file):
            raise FileNotFoundError(f"file list {list_file!r} does not exist; it holds '<path> <label>' lines")
        catalogue = _Catalogue()
        with open(list_file, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.strip()
                if not line or line.startswith(b"#"):
                    continue
                path, label = line.rsplit(None, 1) if len(line.split()) > 1 else (b"", line)
                if not label.isdigit():
                    raise DataError(f"{list_file}:{lineno}: expected '<path> <non-negative integer label>', got "
                                    f"{line!r}")
                if not allow_outside_root and _outside(path):
                    raise DataError(f"{list_file}:{lineno}: {path.decode(errors='replace')!r} lies outside the root "
                                    "folder; list paths relative to it, or pass allow_outside_root=True "
                                    "(--allow-outside-root)")
                catalogue.add(path, int(label))
        if not len(catalogue):
            raise DataError(f"file list {list_file!r} lists no images")
        root = os.path.dirname(os.path.abspath(list_file)) if root is None else root
        super().__init__(root, catalogue, transform, image_size, mode)


class StreamingImageFolder(_PathLabelDataset):
    """``root/<class>/<image>`` scanned once into the compact catalogue.

    Labels are the sorted class folders' positions (``self.classes``), as in torchvision's ImageFolder.

    Args:
        root: The folder of class folders.
        transform: Applied to the PIL image; default ``Resize(image_size) + CenterCrop + ToTensor``.
        image_size: Side of the default transform's resize and crop; None keeps the stored size.
        mode: PIL mode, ``"RGB"`` (3 channels) or ``"L"`` (grayscale).

    Raises:
        FileNotFoundError: When ``root`` does not exist.
        DataError: With fewer than 2 class folders, or no images with one of :data:`IMAGE_EXTENSIONS`.
    """

    def __init__(self, root: str, transform: Callable[["Image.Image"], Any] | None = None,
                 image_size: int | None = None, mode: str = "RGB"):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root!r} does not exist")
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        if len(self.classes) < 2:
            raise DataError(f"image folder {root!r} has {len(self.classes)} class folder(s); need at least 2")
        catalogue = _Catalogue()
        for label, cls in enumerate(self.classes):
            for folder, _, files in sorted(os.walk(os.path.join(root, cls), followlinks=True)):
                rel = os.path.relpath(folder, root)
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_EXTENSIONS):
                        catalogue.add(os.path.join(rel, name).encode(), label)
        if not len(catalogue):
            raise DataError(f"image folder {root!r} holds no images with extensions {IMAGE_EXTENSIONS}")
        super().__init__(root, catalogue, transform, image_size, mode)

    @property
    def num_classes(self) -> int:
        """The number of class folders."""
        return len(self.classes)
