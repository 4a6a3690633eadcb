"""Move membership experiments between curvfast, LiRA and ML Privacy Meter.

curvfast keeps ``keep`` (models, samples) bool and signals ``{name: (models, samples, views)}``.

- LiRA (Carlini et al.'s reference code) keeps one folder per model,
  ``experiment-{m}_{M}/keep.npy`` (samples,) bool and ``experiment-{m}_{M}/scores/{step:010d}.npy``
  (samples, 1, views): the logit-scaled confidence per augmentation; its attack script reads the
  last score file of each folder. :func:`export_lira` writes that layout for any curvfast signal
  (the confidence by default), :func:`import_lira` reads it back (the last score file).
- ML Privacy Meter works on matrices with one row per sample and one column per model:
  ``memberships.npy`` (samples, models) bool and one ``signals_{name}.npy`` (samples, models)
  per signal (one view; ``view`` picks it). :func:`export_matrices` / :func:`import_matrices`.
"""
from __future__ import annotations

import glob
import io
import os
import re

import numpy as np

from curvfast.io import atomic_write_bytes, write_json
from curvfast.pipelines.mia.attacks import check_membership
from curvfast.errors import ConfigError, DataError

__all__ = ["export_lira", "import_lira", "export_matrices", "import_matrices"]


def _save_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def _check(keep, signal):
    keep = np.asarray(keep, dtype=bool)
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim == 2:
        signal = signal[..., None]
    if keep.ndim != 2 or signal.ndim != 3 or signal.shape[:2] != keep.shape:
        raise DataError(f"keep (models, samples) and signal (models, samples[, views]) must agree; got {keep.shape} and {signal.shape}")
    return keep, signal


def export_lira(path: str, keep, signal, *, step: int = 0) -> list[str]:
    """Write LiRA's layout under ``path``; returns the experiment folders."""
    keep, signal = _check(keep, signal)
    folders = []
    for m in range(keep.shape[0]):
        folder = os.path.join(path, f"experiment-{m}_{keep.shape[0]}")
        _save_npy(os.path.join(folder, "keep.npy"), keep[m])
        _save_npy(os.path.join(folder, "scores", f"{step:010d}.npy"), signal[m][:, None, :])
        folders.append(folder)
    return folders


def import_lira(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read LiRA's layout: ``(keep (M, N) bool, scores (M, N, V))``, models in experiment order."""
    folders = glob.glob(os.path.join(path, "experiment-*"))
    if not folders:
        raise FileNotFoundError(f"no experiment-*/ folders under {path!r}; "
                                "expected LiRA's layout (experiment-{m}_{M}/keep.npy, scores/*.npy)")
    order = sorted(folders, key=lambda f: int(re.match(r"experiment-(\d+)", os.path.basename(f)).group(1)))
    keeps, scores = [], []
    for folder in order:
        files = sorted(glob.glob(os.path.join(folder, "scores", "*.npy")))
        if not os.path.isfile(os.path.join(folder, "keep.npy")) or not files:
            raise FileNotFoundError(f"{folder!r} needs keep.npy and at least one scores/*.npy")
        keeps.append(np.load(os.path.join(folder, "keep.npy")))
        s = np.load(files[-1])
        scores.append(s.reshape(s.shape[0], -1))
    keep, signal = _check(np.stack(keeps), np.stack(scores))
    return keep, signal


def export_matrices(path: str, keep, signals: dict, *, view: int = 0) -> None:
    """Write ``memberships.npy`` and ``signals_{name}.npy``, samples x models, plus ``matrices.json``."""
    for name, signal in signals.items():
        k, s = _check(keep, signal)
        if not 0 <= view < s.shape[2]:
            raise ConfigError(f"view={view} but signal {name!r} has {s.shape[2]} view(s)")
        _save_npy(os.path.join(path, f"signals_{name}.npy"), s[:, :, view].T)
    _save_npy(os.path.join(path, "memberships.npy"), np.asarray(keep, dtype=bool).T)
    write_json(os.path.join(path, "matrices.json"), {"layout": "rows = samples, columns = models", "view": view,
                                                     "signals": sorted(signals)})


def import_matrices(path: str) -> tuple[np.ndarray, dict]:
    """Read ``memberships.npy`` + ``signals_*.npy``: ``(keep (M, N), {name: (M, N, 1)})``."""
    member_file = os.path.join(path, "memberships.npy")
    if not os.path.isfile(member_file):
        raise FileNotFoundError(f"{member_file!r} not found; expected memberships.npy (samples x models) and signals_<name>.npy")
    keep = check_membership(np.load(member_file).T, need_in=0, need_out=0)
    signals = {}
    for f in sorted(glob.glob(os.path.join(path, "signals_*.npy"))):
        name = os.path.basename(f)[len("signals_"):-len(".npy")]
        signals[name] = _check(keep, np.load(f).T)[1]
    return keep, signals
