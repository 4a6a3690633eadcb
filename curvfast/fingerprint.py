"""Fingerprints that tell whether a resumed run scores the same model on the same data.

- ``model_fingerprint``: SHA-256 over the class name and every state_dict entry (name, dtype,
  shape, bytes), so any changed weight or BatchNorm statistic changes it.
- ``dataset_fingerprint``: the length, the class name, a structural hash where the dataset
  offers one (``fingerprint()``, torchvision's ``samples`` list, ``Subset`` indices) and the
  bytes of a few evenly spaced items. It reads at most ``probe_items`` items, so it costs the
  same for 1,000 or 1,281,167 images.
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from .curvature._model import unwrap_model

__all__ = ["model_fingerprint", "dataset_fingerprint"]


def _update(h: Any, value: object) -> None:
    """Feed a tensor, array, number or string into the hash, with its type and shape."""
    if torch.is_tensor(value):
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, np.ndarray):
        h.update(f"A{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, (tuple, list)):
        h.update(f"L{len(value)}".encode())
        for v in value:
            _update(h, v)
    else:
        h.update(f"V{type(value).__name__}:{value!r}".encode())


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 (hex) of the unwrapped model's class and state_dict.

    Every state_dict entry contributes its name, dtype, shape and bytes, so any changed weight or BatchNorm
    statistic changes the fingerprint.

    Args:
        model: The model, possibly wrapped (DataParallel, DDP, torch.compile); it is unwrapped first.

    Returns:
        The hex digest.
    """
    model = unwrap_model(model)
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, value in sorted(model.state_dict().items()):
        h.update(name.encode())
        _update(h, value)
    return h.hexdigest()


def _structure(dataset: Dataset, h: Any) -> None:
    h.update(f"{type(dataset).__qualname__}:{len(dataset)}".encode())
    if isinstance(dataset, Subset):
        _update(h, np.asarray(dataset.indices, dtype=np.int64))
        _structure(dataset.dataset, h)
    elif callable(getattr(dataset, "fingerprint", None)):
        h.update(str(dataset.fingerprint()).encode())
    elif isinstance(getattr(dataset, "samples", None), list):  # torchvision ImageFolder / DatasetFolder
        for path, label in dataset.samples:
            h.update(f"{path}\0{label}\n".encode())


def dataset_fingerprint(dataset: Dataset, probe_items: int = 8) -> dict:
    """``{"type", "size", "sha256"}`` of a map-style dataset (see the module docstring).

    Args:
        dataset: A map-style dataset of ``(x, y, ...)`` items with ``len()``.
        probe_items: At most this many evenly spaced items are read and hashed.

    Returns:
        ``{"type": class name, "size": len(dataset), "sha256": hex digest}``.
    """
    n = len(dataset)
    h = hashlib.sha256()
    _structure(dataset, h)
    for i in sorted(set(np.linspace(0, n - 1, num=min(probe_items, n)).round().astype(int).tolist())):
        x, y = dataset[i][:2]
        _update(h, [int(i), x, torch.as_tensor(y)])
    return {"type": type(dataset).__qualname__, "size": n, "sha256": h.hexdigest()}
