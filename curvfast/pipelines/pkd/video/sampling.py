"""Segment sampling (TSN / CoViAR): split a clip into ``num_segments`` equal parts and take one
frame from each, a random one for training and the middle one for testing.

The I-frame stream samples over GOPs (its input is the GOP's I-frame); the motion-vector and
residual streams sample over frames and move off an I-frame to the next frame, since an I-frame
has no motion and no residual.
"""
from __future__ import annotations

import numpy as np

from curvfast.errors import ConfigError, UnknownNameError

__all__ = ["segment_positions", "sample_frames"]

REPRESENTATIONS = ("iframe", "mv", "residual")


def segment_positions(length: int, num_segments: int, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """One index in [0, length) per segment: uniform within the segment (train) or its middle (test)."""
    if length < 1 or num_segments < 1:
        raise ConfigError(f"need length >= 1 and num_segments >= 1 (got {length}, {num_segments})")
    edges = np.linspace(0, length, num_segments + 1)
    lo, hi = edges[:-1], edges[1:]
    if train:
        if rng is None:
            raise ConfigError("training segment sampling needs an rng (numpy Generator)")
        pos = lo + rng.random(num_segments) * (hi - lo)
    else:
        pos = (lo + hi) / 2
    return np.minimum(np.floor(pos).astype(np.int64), length - 1)


def sample_frames(representation: str, iframe_mask: np.ndarray, num_segments: int, train: bool,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Indices to read for one clip: GOP indices for ``"iframe"``, frame indices (never an I-frame
    when the clip has P-frames) for ``"mv"`` and ``"residual"``."""
    if representation not in REPRESENTATIONS:
        raise UnknownNameError(f"representation must be one of {REPRESENTATIONS} (got {representation!r})")
    mask = np.asarray(iframe_mask, bool)
    if representation == "iframe":
        return segment_positions(int(mask.sum()), num_segments, train, rng)
    idx = segment_positions(len(mask), num_segments, train, rng)
    if mask.all():
        return idx
    p_frames = np.flatnonzero(~mask)
    nxt = np.searchsorted(p_frames, idx)  # first P-frame at or after idx, else the last one
    return np.where(mask[idx], p_frames[np.minimum(nxt, len(p_frames) - 1)], idx)
