"""``imagefolder``: torchvision's ``ImageFolder`` (same samples, order and attributes) with curvfast's checks.

The folder scan follows symlinks inside the folder only and refuses loops; every image error names the file; images
have one size unless resized (:mod:`curvfast.data._files`).
"""
from __future__ import annotations

import hashlib
import os

import torch
from torchvision.datasets import ImageFolder

from curvfast.data._files import SizeCheck, folder_classes, folder_images, load_image, printable_path
from curvfast.data._streaming import _image_transform

__all__ = ["CheckedImageFolder"]


class CheckedImageFolder(SizeCheck, ImageFolder):
    """``root/<class>/<image>`` as torchvision's ``ImageFolder`` lists it, RGB, resized when ``image_size`` is given.

    Args:
        root: The folder of class folders.
        image_size: Resize and centre-crop to this side; None keeps the stored size (then all must share image 0's).
        allow_outside_root: Follow symlinks that lead outside ``root``.

    Raises:
        DataError: For a symlink loop, or a symlink out of ``root`` without ``allow_outside_root``.
        FileNotFoundError: For a class folder without images.
    """

    def __init__(self, root: str, image_size: int | None = None, allow_outside_root: bool = False):
        self.allow_outside_root = allow_outside_root
        self.check_sizes = image_size is None
        super().__init__(root, transform=_image_transform(image_size), loader=load_image)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        """The sorted class folders (linked ones inside ``root`` only) and their labels.

        Args:
            directory: The root.

        Returns:
            ``(classes, class_to_idx)``.
        """
        classes = folder_classes(directory, self.allow_outside_root)
        return classes, {c: i for i, c in enumerate(classes)}

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], extensions=None, is_valid_file=None,
                     allow_empty: bool = False) -> list[tuple[str, int]]:
        """``(path, label)`` of every image, in torchvision's order.

        Args:
            directory: The root.
            class_to_idx: From :meth:`find_classes`.
            extensions: Unused (:data:`curvfast.data._files.IMAGE_EXTENSIONS`, torchvision's list).
            is_valid_file: Unused.
            allow_empty: Unused: a class folder without images is refused.

        Returns:
            The samples.

        Raises:
            FileNotFoundError: For a class folder without images.
        """
        samples = [(os.path.join(directory, rel), label)
                   for rel, label in folder_images(directory, list(class_to_idx), self.allow_outside_root)]
        empty = sorted(set(class_to_idx) - {os.path.relpath(p, directory).split(os.sep)[0] for p, _ in samples})
        if empty:
            raise FileNotFoundError(f"image folder '{printable_path(directory)}': no images in the class folder(s) "
                                    f"{', '.join(printable_path(c) for c in empty)}")
        return samples

    def sample_path(self, i: int) -> str:
        """The file of sample ``i``.

        Args:
            i: The sample index.

        Returns:
            Its path.
        """
        return self.samples[i][0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        return self.transform(self.checked(load_image(path, "RGB", f"image {i} "), i)), label

    def fingerprint(self) -> str:
        """SHA-256 of the samples (paths as the file system's bytes, and labels; not the pixels).

        Returns:
            The hex digest.
        """
        h = hashlib.sha256()
        for path, label in self.samples:
            h.update(os.fsencode(path) + b"\0%d\n" % label)
        return h.hexdigest()
