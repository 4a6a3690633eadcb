"""Reuse what an earlier run computed when it was computed with the same settings.

A cached result (signals, a trained model, a prepared dataset) records the settings that produced it;
:func:`differences` compares them with the settings a run wants, :func:`describe` names what differs
(``"noise: 0.25 there, 0.4 here"``), :func:`cached` reuses a file or computes and writes it (writers
from :mod:`curvfast.io` are atomic, so an interrupted write leaves no half file), and
:func:`settings_hash` names a cache folder by its settings.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, TypeVar

__all__ = ["MISSING", "differences", "describe", "cached", "settings_hash"]

T = TypeVar("T")
MISSING = "missing"  # what a recorded value reads as when the record lacks its key


def differences(recorded: dict | None, wanted: dict) -> dict[str, tuple]:
    """The settings of ``wanted`` that ``recorded`` does not match.

    Args:
        recorded: the settings a cached result was made with (None: no record at all).
        wanted: the settings this run needs; only its keys are compared.

    Returns:
        ``{key: (recorded value or MISSING, wanted value)}`` in ``wanted``'s order; empty: a match.
    """
    recorded = {} if recorded is None else recorded
    return {k: (recorded.get(k, MISSING), v) for k, v in wanted.items() if recorded.get(k, MISSING) != v}


def describe(diff: dict[str, tuple], there: str = "there", here: str = "here") -> str:
    """``"key: a there, b here, ..."`` for the result of :func:`differences`."""
    return ", ".join(f"{k}: {a!r} {there}, {b!r} {here}" for k, (a, b) in diff.items())


def cached(path: str, settings: dict, compute: Callable[[], T], *, load: Callable[[str], tuple[dict, T]],
           save: Callable[[str, T, dict], None]) -> tuple[T, bool]:
    """The value stored at ``path`` if it was made with ``settings``, else ``compute()`` saved there.

    Args:
        path: the cache file.
        settings: what the value depends on (JSON values).
        compute: makes the value when the cache cannot be used.
        load: ``load(path) -> (recorded settings, value)``; an unreadable (corrupt, truncated) file is
            a cache miss: it is computed again and overwritten.
        save: ``save(path, value, settings)``, writing both atomically.

    Returns:
        ``(value, reused)``: ``reused`` is True when the value came from ``path``.
    """
    if os.path.isfile(path):
        try:
            recorded, value = load(path)
        except Exception:  # noqa: BLE001 (any unreadable cache file is recomputed, never trusted)
            recorded = None
        if recorded is not None and not differences(recorded, settings):
            return value, True
    value = compute()
    save(path, value, settings)
    return value, False


def settings_hash(settings: dict, length: int = 12) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``settings`` as key-sorted JSON (a cache folder name)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:length]
