"""Motion compensation from exported motion vectors, residuals, and CoViAR's accumulation.

For a P-frame t with reference frame t-1 (no B-frames), the block motion vectors give a dense
displacement field d_t(p) = src - dst (pixels, half-pel for MPEG-4 Part 2); pixels of intra-coded
blocks get d = 0, as in CoViAR. Then

    prediction_t(p) = F_{t-1}(p + d_t(p))          (bilinear at half-pel positions, edge-clamped:
                                                      MPEG-4's unrestricted MVs read the padded edge)
    residual_t(p)   = F_t(p) - prediction_t(p)      so prediction_t + residual_t = F_t exactly.

Accumulation back to the GOP's I-frame (CoViAR, Wu et al. 2018), with integer-rounded
displacements r_t = round(d_t) and q = clamp(p + r_t(p)):

    S_t(p) = S_{t-1}(q),  S_I(p) = p                     (where p's content sits in the I-frame)
    R_t(p) = residual_t(p) + R_{t-1}(q),  R_I = 0       (accumulated residual)
    D_t(p) = S_t(p) - p                                  (accumulated motion vector)

When every displacement is integer, F_t(p) = I(S_t(p)) + R_t(p) holds exactly (induction on t);
with half-pel vectors it holds up to interpolation error. CoViAR rounds each step, so motion
slower than half a pixel per frame vanishes from D; ``accumulate(subpel=True)`` (the default)
instead follows q = p + d_t(p) at half-pel precision, reading S_{t-1} and R_{t-1} bilinearly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from curvfast.pipelines.pkd.video.codec import MV_FIELDS, DecodedVideo

__all__ = ["displacement_field", "motion_compensate", "frame_residuals", "accumulate", "CompressedRepresentation",
           "compressed_representation"]

_COL = {name: i for i, name in enumerate(MV_FIELDS)}


def displacement_field(mv_rows: np.ndarray, height: int, width: int) -> np.ndarray:
    """Dense (H, W, 2) float32 displacement (dx, dy) = src - dst from (K, 10) exported MV rows
    (blocks predicted from the past frame only); zero where no vector covers a pixel."""
    field = np.zeros((height, width, 2), np.float32)
    rows = mv_rows[mv_rows[:, _COL["source"]] < 0] if len(mv_rows) else mv_rows
    for row in rows:
        bw, bh, cx, cy = row[_COL["w"]], row[_COL["h"]], row[_COL["dst_x"]], row[_COL["dst_y"]]
        x0, y0 = max(cx - bw // 2, 0), max(cy - bh // 2, 0)
        x1, y1 = min(cx + (bw + 1) // 2, width), min(cy + (bh + 1) // 2, height)
        scale = max(int(row[_COL["motion_scale"]]), 1)
        field[y0:y1, x0:x1] = (row[_COL["motion_x"]] / scale, row[_COL["motion_y"]] / scale)
    return field


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width]
    return xs, ys


def motion_compensate(reference: np.ndarray, field: np.ndarray) -> np.ndarray:
    """prediction(p) = reference(p + field(p)): bilinear sampling of an (H, W, C) frame at
    edge-clamped positions. Returns float32 (H, W, C)."""
    h, w = reference.shape[:2]
    xs, ys = _grid(h, w)
    sx = np.clip(xs + field[..., 0], 0, w - 1)
    sy = np.clip(ys + field[..., 1], 0, h - 1)
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = (sx - x0)[..., None], (sy - y0)[..., None]
    ref = reference.astype(np.float32)
    top = ref[y0, x0] * (1 - ax) + ref[y0, x1] * ax
    bottom = ref[y1, x0] * (1 - ax) + ref[y1, x1] * ax
    return top * (1 - ay) + bottom * ay


def frame_residuals(video: DecodedVideo) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame displacement fields (T, H, W, 2) and residuals (T, H, W, 3), float32; both zero
    on I-frames. residual_t = F_t - motion_compensate(F_{t-1}, d_t)."""
    frames = video.frames
    t, h, w, c = frames.shape
    fields = np.zeros((t, h, w, 2), np.float32)
    residuals = np.zeros((t, h, w, c), np.float32)
    for i in range(1, t):
        if video.iframe_mask[i]:
            continue
        fields[i] = displacement_field(video.motion_vectors[i], h, w)
        residuals[i] = frames[i].astype(np.float32) - motion_compensate(frames[i - 1], fields[i])
    return fields, residuals


def accumulate(fields: np.ndarray, residuals: np.ndarray, iframe_mask: np.ndarray, subpel: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
    """Accumulate per-frame displacements and residuals back to the GOP's I-frame (module
    docstring). ``subpel=False`` is CoViAR's rule (each displacement rounded to whole pixels, so
    motion slower than half a pixel per frame never accumulates); ``subpel=True`` keeps the
    half-pel positions and reads S_{t-1} and R_{t-1} bilinearly, so slow motion adds up.
    Returns accumulated motion D (T, H, W, 2) and residual R (T, H, W, C), float32, zero on I-frames."""
    t, h, w = fields.shape[:3]
    xs, ys = _grid(h, w)
    identity = np.stack([xs, ys], axis=-1).astype(np.float32)
    acc_mv = np.zeros((t, h, w, 2), np.float32)
    acc_res = np.zeros(residuals.shape, np.float32)
    source = identity
    for i in range(t):
        if iframe_mask[i]:
            source = identity
            continue
        d = fields[i] if subpel else np.floor(fields[i] + 0.5)
        source = motion_compensate(source, d)
        acc_res[i] = residuals[i] + motion_compensate(acc_res[i - 1], d)
        acc_mv[i] = source - identity
    return acc_mv, acc_res


@dataclass
class CompressedRepresentation:
    """The three CoViAR inputs of one clip, channels first: ``iframes`` (G, 3, H, W) uint8, one per
    GOP; ``mv`` (T, 2, H, W) float16 accumulated motion; ``residual`` (T, 3, H, W) float16
    accumulated residual; ``iframe_mask`` (T,) bool, True on I-frames."""

    iframes: np.ndarray
    mv: np.ndarray
    residual: np.ndarray
    iframe_mask: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {"iframes": self.iframes, "mv": self.mv, "residual": self.residual, "iframe_mask": self.iframe_mask}


def compressed_representation(video: DecodedVideo, subpel: bool = True) -> CompressedRepresentation:
    """I-frames, accumulated MVs and accumulated residuals of a decoded clip."""
    mask = video.iframe_mask.astype(bool)
    fields, residuals = frame_residuals(video)
    acc_mv, acc_res = accumulate(fields, residuals, mask, subpel=subpel)
    return CompressedRepresentation(
        iframes=np.ascontiguousarray(video.frames[mask].transpose(0, 3, 1, 2)),
        mv=np.ascontiguousarray(acc_mv.transpose(0, 3, 1, 2)).astype(np.float16),
        residual=np.ascontiguousarray(acc_res.transpose(0, 3, 1, 2)).astype(np.float16),
        iframe_mask=mask,
    )
