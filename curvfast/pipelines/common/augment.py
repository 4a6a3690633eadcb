"""Training augmentation: the papers' CIFAR recipe (pad, random crop, horizontal flip).

``crop``: pad each image by ``H // 8`` pixels (4 for 32x32), with reflection by default or with zeros as
torchvision's ``RandomCrop(padding=4)`` in the published Curvature Clues code (``padding="zeros"``), and crop a random H x W
window back (a random translation of up to ±H/8); ``crop-flip`` also mirrors it left-right with
probability ½, as in Carlini et al. (LiRA) and the Curvature Clues / memorization training recipes.
Draws are independent per image and come from a seeded ``torch.Generator``, so runs repeat.
"""
from __future__ import annotations

from typing import Callable

import torch

from curvfast.errors import UnknownNameError

__all__ = ["AUGMENTATIONS", "PADDINGS", "crop_flip", "image_augmentation", "batch_transform"]

AUGMENTATIONS = ("none", "crop", "crop-flip")
PADDINGS = ("reflect", "zeros")


def crop_flip(x: torch.Tensor, gen: torch.Generator, *, flip: bool = True, pad: int | None = None,
              padding: str = "reflect") -> torch.Tensor:
    """Random-translation crop (``padding`` ``"reflect"`` or ``"zeros"`` by ``pad`` pixels, default H // 8; the
    published Curvature Clues code zero-pads) and, with ``flip``, a horizontal flip with probability ½, drawn independently per image of a
    batch (..., C, H, W). The draws
    come from ``gen`` (a CPU generator: the same draws on every device) and move to the batch's device."""
    shape = x.shape
    x = x.reshape(-1, *shape[-3:])
    n, _, h, w = x.shape
    pad = max(1, h // 8) if pad is None else pad
    if padding not in PADDINGS:
        raise UnknownNameError(f"padding must be one of {', '.join(PADDINGS)} (got {padding!r})")
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect" if padding == "reflect" else "constant")
    dr = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dc = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dr[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (n, h, 1)
    cols = (dc[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (n, 1, w)
    out = padded.permute(0, 2, 3, 1)[torch.arange(n, device=x.device)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flip:
        mirror = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    return out.reshape(shape).contiguous()


def image_augmentation(name: str, padding: str = "reflect") -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
    """``augment(x, generator)`` for ``name`` in :data:`AUGMENTATIONS` (None for ``none``), cropping with
    ``padding`` (:data:`PADDINGS`)."""
    if name not in AUGMENTATIONS:
        raise UnknownNameError(f"augment must be one of {', '.join(AUGMENTATIONS)} (got {name!r})")
    if name == "none":
        return None
    if padding not in PADDINGS:
        raise UnknownNameError(f"padding must be one of {', '.join(PADDINGS)} (got {padding!r})")
    flip = name == "crop-flip"
    return lambda x, gen: crop_flip(x, gen, flip=flip, padding=padding)


def batch_transform(name: str, seed: int = 0) -> Callable | None:
    """The same augmentation as a ``batch_transform(x, y, rng)`` for :func:`training.fit` (its own
    generator, seeded by ``seed``)."""
    augment = image_augmentation(name)
    if augment is None:
        return None
    gen = torch.Generator().manual_seed(seed)
    return lambda x, y, _rng: (augment(x, gen), y)
