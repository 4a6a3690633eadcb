"""Real-photo patches, offline.

A pinned list of natural images bundled with scikit-learn and scikit-image (:data:`PHOTOS`), cut into random grayscale
crops and resized to the digits' scale. The list never depends on what is installed: a missing package is an error
naming the fix, so the patches are the same on every machine; :func:`photo_manifest` records each photo's source and the
SHA-256 of its pixels for ``results.json``.

They serve as "far" out-of-distribution data and as the natural-image part of public
unlabeled sets. A crop of side ``crop`` (random in [16, 64] pixels) at a random place in a random
photo is converted to luminance (ITU-R 601: 0.299 R + 0.587 G + 0.114 B), area-resized to
``size`` x ``size`` and min-max stretched per patch to [0, 1], as digits images span [0, 1].
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from curvfast.errors import ConfigError, MissingDependencyError

__all__ = ["PHOTOS", "photo_manifest", "photo_patches", "photo_sources"]

PHOTOS = (
    ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"),
    *(("skimage", name) for name in ("astronaut", "camera", "coffee", "chelsea", "rocket", "brick", "grass", "gravel")),
)


def _load(package: str, name: str) -> np.ndarray:
    if package == "sklearn":
        from sklearn.datasets import load_sample_image

        return np.asarray(load_sample_image(name))
    try:
        import skimage.data
    except ImportError as err:
        raise MissingDependencyError(f"the pinned photo list needs scikit-image for skimage.data.{name}: pip install "
                                     "scikit-image (the patches would otherwise differ between machines)") from err
    return np.asarray(getattr(skimage.data, name)())


def photo_manifest() -> list[dict]:
    """The provenance of the pinned photos, for ``results.json``.

    Returns:
        ``[{"source", "shape", "sha256"}]``, one per entry of :data:`PHOTOS` (SHA-256 of the uint8 pixels).

    Raises:
        MissingDependencyError: Without scikit-image.
    """
    out = []
    for package, name in PHOTOS:
        im = np.ascontiguousarray(_load(package, name))
        source = f"sklearn.datasets.load_sample_image({name!r})" if package == "sklearn" else f"skimage.data.{name}()"
        out.append({"source": source, "shape": list(im.shape), "sha256": hashlib.sha256(im.tobytes()).hexdigest()})
    return out


def photo_sources() -> list[np.ndarray]:
    """The pinned photos (:data:`PHOTOS`) as float32 grayscale arrays in [0, 1].

    Colour photos are converted to luminance, 0.299 R + 0.587 G + 0.114 B (ITU-R 601).

    Returns:
        One (H, W) array per photo.

    Raises:
        MissingDependencyError: Without scikit-image.
    """
    gray = []
    for package, name in PHOTOS:
        im = np.asarray(_load(package, name), dtype=np.float32) / 255.0
        if im.ndim == 3:
            im = im[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        gray.append(np.ascontiguousarray(im))
    return gray


def photo_patches(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    """``n`` real-photo patches, reproducible by ``seed`` (see the module docstring for the recipe).

    Args:
        n: The number of patches (>= 0).
        size: The side of each patch (>= 1).
        seed: Seeds the choice of photo, crop side and crop place.

    Returns:
        The patches, ``(n, 1, size, size)`` float32, each min-max stretched to [0, 1].

    Raises:
        ConfigError: For n < 0 or size < 1.
        MissingDependencyError: Without scikit-image.
    """
    if n < 0 or size < 1:
        raise ConfigError(f"need n >= 0 and size >= 1 (got n={n}, size={size})")
    rng = np.random.default_rng(seed)
    photos = photo_sources()
    out = torch.empty(n, 1, size, size)
    for i in range(n):
        im = photos[rng.integers(len(photos))]
        crop = int(rng.integers(max(16, size), max(16, size, 64) + 1))
        crop = min(crop, *im.shape)
        r, c = rng.integers(im.shape[0] - crop + 1), rng.integers(im.shape[1] - crop + 1)
        patch = torch.from_numpy(im[r : r + crop, c : c + crop])[None, None]
        patch = F.adaptive_avg_pool2d(patch, size)[0]
        lo, hi = patch.min(), patch.max()
        out[i] = (patch - lo) / (hi - lo) if hi > lo else torch.zeros_like(patch)
    return out
