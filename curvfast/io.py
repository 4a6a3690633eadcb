"""Atomic result files and safe checkpoint loading."""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
from typing import Any, Callable

import numpy as np
import torch

from .errors import CheckpointError, NonFiniteError

__all__ = ["atomic_write_bytes", "write_json", "map_floats", "write_npz", "save_checkpoint", "load_checkpoint"]

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to a temp file in the same folder, fsync, then rename over ``path``.

    Readers see the old file or the whole new one, never half of it.

    Args:
        path: The file to write (its folder is created).
        data: The file's bytes.

    Raises:
        IsADirectoryError: When ``path`` is a folder.
    """
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path!r}: it is a folder; name a file")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str, obj: object) -> None:
    """Write ``obj`` as indented, key-sorted, strict JSON to ``path`` atomically.

    Strict JSON has no NaN or Infinity (``jq``, JavaScript and most readers refuse them). A result
    that is undefined is written as ``None`` (``null``) by its producer; a setting that is infinite
    (mia's ``--dp-epsilon inf``: no DP) is written as the string ``"inf"``.

    Args:
        path: The file to write (its folder is created).
        obj: Anything :func:`json.dumps` takes, with finite floats only.

    Raises:
        NonFiniteError: ``obj`` holds a NaN or infinite float; the message names where.
        IsADirectoryError: When ``path`` is a folder.
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    except ValueError as err:
        raise NonFiniteError(f"cannot write {path!r}: {_non_finite_path(obj) or 'a value'} is not finite "
                             "(write an undefined result as None, an infinite setting as the string 'inf')") from err
    atomic_write_bytes(path, (text + "\n").encode())


def map_floats(obj: Any, fn: Callable[[float], Any]) -> Any:
    """``obj`` with ``fn`` applied to every float in it, through dicts, lists and tuples (tuples become lists).

    Args:
        obj: a JSON-like value.
        fn: maps one float to its replacement (e.g. a non-finite value to None before :func:`write_json`).

    Returns:
        The mapped copy; ``obj`` itself is not changed.
    """
    if isinstance(obj, float):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_floats(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [map_floats(v, fn) for v in obj]
    return obj


def _non_finite_path(obj: object, prefix: str = "") -> str | None:
    """The JSON path (``a.b[2]``) of the first NaN or infinite float in ``obj``, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return prefix or "the value"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite_path(value, f"{prefix}.{key}" if isinstance(key, str) else f"{prefix}[{key}]")
        if found:
            return found.lstrip(".")
    return None


def write_npz(path: str, **arrays: object) -> None:
    """Write ``arrays`` (anything ``np.asarray`` takes) as an uncompressed ``.npz`` to ``path`` atomically.

    Args:
        path: The file to write (its folder is created).
        **arrays: The arrays, by the names they get in the file.

    Raises:
        IsADirectoryError: When ``path`` is a folder.
    """
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(path, buf.getvalue())


def save_checkpoint(path: str, net: torch.nn.Module, /, **meta: object) -> None:
    """Save ``{"state_dict": ..., **meta}`` (meta: plain strings / numbers) atomically.

    Args:
        path: The checkpoint file to write (its folder is created).
        net: The model whose ``state_dict()`` is saved.
        **meta: Plain strings and numbers (e.g. ``model``, ``num_classes``, ``normalize``) that
            :func:`load_checkpoint` can read back with ``weights_only=True``.

    Raises:
        IsADirectoryError: When ``path`` is a folder.
    """
    buf = io.BytesIO()
    torch.save({"state_dict": net.state_dict(), **meta}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str) -> dict:
    """Load a checkpoint with ``weights_only=True`` (on the CPU).

    Args:
        path: The checkpoint file.

    Returns:
        A dict with a ``state_dict`` key and the saved metadata (a bare state_dict file is wrapped).

    Raises:
        IsADirectoryError: When ``path`` is a folder.
        FileNotFoundError: When ``path`` does not exist.
        CheckpointError: When the file cannot be read as a weights-only checkpoint, or holds no state_dict.
    """
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path!r} is a folder; name the checkpoint file inside it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist; train one with `curvfast train --out {path}`")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"checkpoint {path!r} could not be read as a PyTorch state_dict ({type(err).__name__}: {err}); "
            "it is corrupt, truncated, or not a weights-only checkpoint"
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"state_dict": obj}
    raise CheckpointError(f"checkpoint {path!r} holds a {type(obj).__name__}, not a state_dict")
