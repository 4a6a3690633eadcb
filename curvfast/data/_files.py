"""Image files a user points us at: safe names, decoding that names the file, one size, a symlink-safe folder scan.

Names of any encoding are shown safely, decoding errors name the file, a dataset that does not resize has one image
size, and the scan of an image folder follows symlinks only inside it.

Folder scans follow symbolic links, as torchvision's ``ImageFolder`` does, but only while the link's resolved target
stays inside the resolved folder (``allow_outside_root`` lifts that), and never into a folder that contains the link
(a loop would list the same images again and again, under the wrong classes). File names are kept as the bytes the
file system holds (``os.fsencode`` / ``os.fsdecode``), so names that are not UTF-8 load like any other.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

import os
import stat

from curvfast.errors import ConfigError, DataError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["IMAGE_EXTENSIONS", "printable_path", "load_image", "check_split", "folder_classes", "folder_images",
           "SizeCheck", "inside"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def printable_path(path: str | bytes) -> str:
    r"""A file name as text that any terminal, log or UTF-8 file can hold.

    Bytes that are not UTF-8 are shown as ``\xNN`` and characters that do not print (a newline in a name) as their
    escape, so the text is one line of valid UTF-8; the name itself is untouched (open the file with ``path``).

    Args:
        path: A path as ``str`` (undecodable bytes as surrogate escapes, as ``os.fsdecode`` gives them) or ``bytes``.

    Returns:
        The printable text.
    """
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def check_split(split: object, name: str = "split") -> str:
    """Refuse a split that is not one plain folder name (it is joined to the root, so ``..`` or ``/`` would leave it).

    Args:
        split: The split, e.g. ``train``, ``val``, ``test``.
        name: How the message names the setting.

    Returns:
        ``split``.

    Raises:
        ConfigError: For anything but a non-empty name without path separators, ``.`` or ``..``.
    """
    seps = {os.sep, os.altsep or os.sep, "\0"}
    if not isinstance(split, str) or split in ("", ".", "..") or any(s in split for s in seps):
        raise ConfigError(f"{name} must be a folder name under the root such as train, val or test (got {split!r})")
    return split


def _decoded(path: str, what: str, read: Callable[["Image.Image"], Any]) -> Any:
    """``read(image)`` of the regular file ``path``; every failure names the file."""
    from PIL import Image

    shown = f"{what}'{printable_path(path)}'"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise OSError("not a regular file")
        with Image.open(path) as img:
            return read(img)
    except OSError as err:
        raise OSError(f"cannot read {shown}: {err}") from err
    except Image.DecompressionBombError as err:
        raise DataError(f"cannot read {shown}: {err} (PIL refuses images of more than twice "
                        f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} pixels); if the image is genuine, "
                        "set PIL.Image.MAX_IMAGE_PIXELS higher, or shrink the image") from err
    except Exception as err:  # a decoder's own failure on a malformed file (SyntaxError, ValueError, EOFError...)
        raise DataError(f"cannot read {shown}: {type(err).__name__}: {err}") from err


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
        OSError: Naming the file, when it cannot be read or PIL cannot identify or decode it.
        DataError: Naming the file, for a decompression bomb (PIL's ``DecompressionBombError``) or any other decoder
            failure.
    """
    return _decoded(path, what, lambda img: img.convert(mode))


class SizeCheck:
    """Mixin for a dataset whose images reach ``ToTensor`` as stored: one size for all, or one error naming the fix.

    The error names a file of each size (a DataLoader would otherwise fail to stack them with a traceback naming no
    file).

    The reference is image 0's size, read from its header once per process (so every DataLoader worker agrees).
    Subclasses set ``check_sizes`` and define ``sample_path(i)``.
    """

    check_sizes = False
    _reference: tuple[int, int] | None = None
    sample_path: Callable[[int], str]

    def checked(self, img: "Image.Image", i: int) -> "Image.Image":
        """``img`` (sample ``i``), after checking its size against image 0's.

        Args:
            img: The decoded image of sample ``i``.
            i: Its index.

        Returns:
            ``img``.

        Raises:
            DataError: When its size differs from image 0's, naming both files and ``--image-size``.
        """
        if not self.check_sizes:
            return img
        if self._reference is None:
            self._reference = img.size if i == 0 else _decoded(self.sample_path(0), "image 0 ", lambda im: im.size)
        if img.size != self._reference:
            (w0, h0), (w, h) = self._reference, img.size
            raise DataError(f"images differ in size: image 0 '{printable_path(self.sample_path(0))}' is {w0}x{h0}, "
                            f"image {i} '{printable_path(self.sample_path(i))}' is {w}x{h}; pass --image-size N "
                            "(image_size=N) to resize and centre-crop every image to N x N")
        return img


def inside(real: str, real_root: str) -> bool:
    """Whether the resolved path ``real`` is the resolved folder ``real_root`` or lies under it."""
    return real == real_root or real.startswith(os.path.join(real_root, ""))


def _follow(entry: os.DirEntry, rel: str, root: str, real_root: str, allow_outside_root: bool,
            chain: frozenset[str]) -> str:
    """The resolved path of the linked ``entry`` (shown as ``rel``), refused when it leaves the folder or loops."""
    real = os.path.realpath(entry.path)
    shown = f"'{printable_path(rel)}' in image folder '{printable_path(root)}'"
    if real in chain:
        raise DataError(f"symlink loop: {shown} links to '{printable_path(real)}', which contains it; remove the link")
    if not allow_outside_root and not inside(real, real_root):
        raise DataError(f"{shown} is a symlink to '{printable_path(real)}', outside the image folder; move it inside, "
                        "or pass allow_outside_root=True (--allow-outside-root)")
    return real


def folder_classes(root: str, allow_outside_root: bool = False) -> list[str]:
    """The class folders of ``root``, sorted (torchvision's ``ImageFolder`` order).

    Args:
        root: The folder of class folders.
        allow_outside_root: Accept class folders that are symlinks to folders outside ``root``.

    Returns:
        The class names.

    Raises:
        DataError: For a linked class folder outside ``root`` (without ``allow_outside_root``) or linking to ``root``.
    """
    real_root = os.path.realpath(root)
    with os.scandir(root) as entries:
        found = [e for e in entries if e.is_dir()]
    for e in found:
        if e.is_symlink():
            _follow(e, e.name, root, real_root, allow_outside_root, frozenset([real_root]))
    return sorted(e.name for e in found)


def folder_images(root: str, classes: list[str], allow_outside_root: bool = False) -> Iterator[tuple[str, int]]:
    """Every image under ``root/<class>/``, as ``(path relative to root, label)``.

    The order is torchvision's ``ImageFolder``'s: classes in the given order, each one's folders sorted by path and
    the files sorted within each. Linked folders and files are followed inside ``root`` only (resolved paths),
    never into a folder that contains the link, and never to one folder twice within a class.

    Args:
        root: The folder of class folders.
        classes: Its class folders (:func:`folder_classes`); label = position.
        allow_outside_root: Follow links that leave ``root`` too (loops are refused still).

    Yields:
        ``(relative path, label)`` per image with one of :data:`IMAGE_EXTENSIONS`.

    Raises:
        DataError: For a link that leaves ``root`` (without ``allow_outside_root``), loops, or reaches a folder the
            class already holds.
    """
    real_root = os.path.realpath(root)
    for label, cls in enumerate(classes):
        top = os.path.join(root, cls)
        real_top = os.path.realpath(top)
        stack, folders = [(cls, real_top, frozenset([real_root, real_top]))], []
        seen = {real_top: cls}  # each folder once per class: links to one folder from many places would multiply it
        while stack:
            rel, real, chain = stack.pop()
            images = []
            with os.scandir(os.path.join(root, rel)) as entries:
                for e in entries:
                    sub = os.path.join(rel, e.name)
                    if e.is_dir():
                        sub_real = (_follow(e, sub, root, real_root, allow_outside_root, chain) if e.is_symlink()
                                    else os.path.join(real, e.name))
                        if sub_real in seen:
                            raise DataError(f"'{printable_path(sub)}' in image folder '{printable_path(root)}' is "
                                            f"'{printable_path(seen[sub_real])}' again (symlinks lead to "
                                            f"'{printable_path(sub_real)}' twice within class "
                                            f"'{printable_path(cls)}'); remove one of the links")
                        seen[sub_real] = sub
                        stack.append((sub, sub_real, chain | {sub_real}))
                    elif e.name.lower().endswith(IMAGE_EXTENSIONS):
                        if e.is_symlink():
                            _follow(e, sub, root, real_root, allow_outside_root, frozenset())
                        images.append(e.name)
            folders.append((os.path.join(root, rel), rel, sorted(images)))
        for _, rel, images in sorted(folders):
            for name in images:
                yield os.path.join(rel, name), label
