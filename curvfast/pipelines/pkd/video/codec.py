"""The real codec, through PyAV: encode RGB clips as MPEG-4 Part 2 and decode them back together
with the decoder's own motion vectors.

PyAV is imported lazily (``require_av``): the rest of curvfast, and machines without PyAV, never
need it. Motion vectors are the decoder's ``AV_FRAME_DATA_MOTION_VECTORS`` side data, exported when
the decoder is opened with ``flags2=+export_mvs``; each row describes one inter-predicted block
(``w x h`` pixels centred at ``(dst_x, dst_y)``) whose prediction is read from the reference frame at

    src = dst + (motion_x, motion_y) / motion_scale          (MPEG-4 Part 2: half-pel, scale 2)

so content that moves by ``(+dx, +dy)`` per frame has ``motion / scale = (-dx, -dy)``.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import numpy as np

from curvfast.errors import ConfigError, DataError, MissingDependencyError

__all__ = ["require_av", "encode_clip", "decode_compressed", "DecodedVideo", "MV_FIELDS", "GOP_SIZE"]

GOP_SIZE = 12  # CoViAR's re-encoding: MPEG-4 Part 2, one I-frame every 12 frames, no B-frames
MV_FIELDS = ("source", "w", "h", "src_x", "src_y", "dst_x", "dst_y", "motion_x", "motion_y", "motion_scale")
_PICT_I, _PICT_P, _PICT_B = 1, 2, 3  # AVPictureType


def require_av():
    """Import PyAV or raise a :class:`~curvfast.errors.MissingDependencyError` (an ImportError) that says how to get it."""
    try:
        import av
    except ImportError as err:  # the GPU machine has no PyAV
        raise MissingDependencyError(
            "the compressed-video pipeline needs PyAV (FFmpeg bindings); install it with `pip install av` "
            "(the pkd extra: `pip install curvfast[pkd]`)"
        ) from err
    return av


def encode_clip(frames: np.ndarray, path: str, *, gop_size: int = GOP_SIZE, fps: int = 25, qscale: int | None = 3,
                codec: str = "mpeg4") -> str:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB as ``codec`` (MPEG-4 Part 2 by default) with one
    I-frame every ``gop_size`` frames, no B-frames and four-vector macroblocks allowed; ``qscale``
    fixes the quantiser (1 best .. 31; None: FFmpeg's rate control).
    H and W must be even (4:2:0 chroma). Returns ``path``."""
    av = require_av()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise DataError(f"frames must be a (T, H, W, 3) uint8 RGB array (got {frames.dtype} {frames.shape})")
    t, h, w, _ = frames.shape
    if t < 1 or h % 2 or w % 2:
        raise DataError(f"frames need T >= 1 and even H, W for 4:2:0 video (got T={t}, H={h}, W={w})")
    if gop_size < 1:
        raise ConfigError(f"gop_size must be >= 1 (got {gop_size})")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        ctx = stream.codec_context
        ctx.gop_size = gop_size
        ctx.max_b_frames = 0
        # +mv4: one vector per 8x8 block where it pays (MPEG-4 Simple Profile), finer motion on small frames;
        # +qscale with global_quality: a constant quantiser, so residuals carry real but bounded coding error
        options = {"flags": "+mv4"}
        if qscale is not None:
            options = {"flags": "+mv4+qscale", "global_quality": str(int(qscale) * 118)}  # FF_QP2LAMBDA = 118
        ctx.options = options
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@dataclass
class DecodedVideo:
    """A decoded clip in display order.

    ``frames``: (T, H, W, 3) uint8 RGB as the decoder reconstructed them; ``picture_types``: (T,)
    with 1 = I, 2 = P; ``motion_vectors``: per frame a (K, 10) int32 array with columns
    ``MV_FIELDS`` (empty for I-frames and for frames whose blocks are all intra-coded)."""

    frames: np.ndarray
    picture_types: np.ndarray
    motion_vectors: list[np.ndarray]

    @property
    def iframe_mask(self) -> np.ndarray:
        return self.picture_types == _PICT_I


def _mv_rows(frame) -> np.ndarray:
    side = frame.side_data.get("MOTION_VECTORS")
    if side is None:
        return np.zeros((0, len(MV_FIELDS)), np.int32)
    raw = side.to_ndarray()
    return np.stack([raw[name].astype(np.int32) for name in MV_FIELDS], axis=1)


def _decode_frames(av, path: str, max_frames: int | None):
    """(frames, picture types, motion-vector rows) of ``path``; every PyAV object is dropped on return."""
    frames, types, mvs = [], [], []
    with av.open(path) as container:
        if not container.streams.video:
            raise DataError(f"video file {path!r} has no video stream")
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        for frame in container.decode(stream):
            ptype = int(frame.pict_type)
            if ptype == _PICT_B:
                raise DataError(f"video file {path!r} has B-frames; re-encode it with curvfast.pipelines.pkd.video.reencode")
            frames.append(frame.to_ndarray(format="rgb24"))
            types.append(_PICT_I if frame.key_frame or ptype == _PICT_I else _PICT_P)
            mvs.append(_mv_rows(frame) if types[-1] == _PICT_P else np.zeros((0, len(MV_FIELDS)), np.int32))
            if max_frames is not None and len(frames) >= max_frames:
                break
    return frames, types, mvs


def decode_compressed(path: str, max_frames: int | None = None) -> DecodedVideo:
    """Decode ``path`` with motion-vector export. Raises FileNotFoundError for a missing file and
    :class:`~curvfast.errors.DataError` (naming the file) for anything FFmpeg cannot decode as video, or for B-frames
    (re-encode with ``encode_clip`` / ``reencode``: the pipeline follows P-frame references only)."""
    av = require_av()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file {path!r} does not exist")
    try:
        frames, types, mvs = _decode_frames(av, path, max_frames)
    except av.error.FFmpegError as err:
        raise DataError(f"video file {path!r} could not be decoded ({type(err).__name__}: {err}); "
                         "it is corrupt, truncated or not a video") from err
    finally:
        # frames with motion-vector side data form reference cycles; freed later by the garbage
        # collector of a process forked meanwhile (a DataLoader worker), their swscale contexts wait
        # forever for slice threads that the fork did not copy. Free them here, where they were made.
        gc.collect()
    if not frames:
        raise DataError(f"video file {path!r} holds no decodable video frames")
    if types[0] != _PICT_I:
        raise DataError(f"video file {path!r} does not start with an I-frame")
    return DecodedVideo(np.stack(frames), np.asarray(types, np.int8), mvs)
