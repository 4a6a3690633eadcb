"""A deterministic synthetic action dataset, generated offline and cached.

Each clip shows one object over a real-photo background (a random crop of scikit-learn's bundled
sample photos, area-resized and dimmed). The class is the pair (motion, appearance):

- motion (8): slow right, fast right, left, up, down, clockwise rotation, anticlockwise
  rotation, horizontal oscillation; speeds, phases, amplitudes and start points are jittered;
- appearance (2): a handwritten digit (sklearn's real 8x8 digits, upscaled) or a solid geometric
  shape (disk, square, triangle, cross).

So no single stream can solve it: the I-frame sees the appearance but not the motion, the motion
vectors see the motion but hardly the appearance, and the residual sees a little of both. Sensor
noise (Gaussian, sigma 3/255) keeps the residuals realistic. Clips are encoded with the real
MPEG-4 Part 2 codec (``encode_clip``) and decoded back with their motion vectors, so the networks
train on what a decoder really exports.

The cache lives in ``$CURVFAST_CACHE`` (default ``~/.cache/curvfast``) under a folder named by the
generator version and its parameters; a second call loads it instead of regenerating.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from curvfast.io import atomic_write_bytes, write_json
from curvfast.pipelines.common.cache import cached, settings_hash
from curvfast.pipelines.pkd.video.codec import GOP_SIZE, decode_compressed, encode_clip
from curvfast.pipelines.pkd.video.datasets import ClipSet, stratified_split
from curvfast.pipelines.pkd.video.motion import CompressedRepresentation, compressed_representation
from curvfast.errors import ConfigError, UnknownNameError

__all__ = ["SyntheticConfig", "MOTIONS", "APPEARANCES", "class_names", "render_clip", "synthetic_actions",
           "cache_root"]

MOTIONS = ("right_slow", "right_fast", "left", "up", "down", "rotate_cw", "rotate_ccw", "oscillate")
APPEARANCES = ("digit", "shape")
_VERSION = 1


@dataclass(frozen=True)
class SyntheticConfig:
    """Generator parameters; every clip is a pure function of them and of its index."""

    clips_per_class: int = 32
    size: int = 32
    frames: int = 24
    gop_size: int = GOP_SIZE
    qscale: int = 3
    test_fraction: float = 0.25
    seed: int = 0

    def validate(self) -> None:
        if self.size < 16 or self.size % 16:
            raise ConfigError(f"size must be a multiple of 16 (whole macroblocks), >= 16 (got {self.size})")
        if self.frames < 2 or self.clips_per_class < 2:
            raise ConfigError(f"need frames >= 2 and clips_per_class >= 2 (got {self.frames}, {self.clips_per_class})")
        if not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must lie in (0, 1) (got {self.test_fraction})")


def class_names() -> list[str]:
    """Class c = motion c // 2 with appearance c % 2."""
    return [f"{m}/{a}" for m in MOTIONS for a in APPEARANCES]


def cache_root() -> str:
    """The cache folder: ``$CURVFAST_CACHE``, else ``~/.cache/curvfast``."""
    return os.environ.get("CURVFAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "curvfast")


def _backgrounds() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(im, np.float32) / 255.0 for im in load_sample_images().images]


def _background(photos: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop (side 2-6x the frame) of a random photo, area-resized to size x size, dimmed."""
    photo = photos[rng.integers(len(photos))]
    crop = int(rng.integers(2 * size, 6 * size + 1))
    y, x = rng.integers(0, photo.shape[0] - crop), rng.integers(0, photo.shape[1] - crop)
    k = crop // size
    patch = photo[y:y + k * size, x:x + k * size].reshape(size, k, size, k, 3).mean(axis=(1, 3))
    return 0.15 + 0.5 * patch


def _sprite(appearance: str, digits: np.ndarray, res: int, rng: np.random.Generator) -> np.ndarray:
    """An alpha mask in [0, 1] of side ``res``: an upscaled real digit or a geometric shape."""
    if appearance == "digit":
        glyph = digits[rng.integers(len(digits))] / 16.0
        return np.kron(glyph, np.ones((res // 8, res // 8), np.float32))
    v, u = (np.mgrid[0:res, 0:res] + 0.5) / res * 2 - 1
    kind = rng.integers(4)
    if kind == 0:
        mask = u ** 2 + v ** 2 <= 0.8
    elif kind == 1:
        mask = (np.abs(u) <= 0.7) & (np.abs(v) <= 0.7)
    elif kind == 2:
        mask = (v >= -0.8) & (v <= 0.8) & (np.abs(u) <= (v + 0.8) / 1.6 * 0.9)
    else:
        mask = (np.abs(u) <= 0.25) | (np.abs(v) <= 0.25)
    return mask.astype(np.float32)


def _trajectory(motion: str, frames: int, size: int, rng: np.random.Generator):
    """Centre (x, y) and angle (radians) per frame; speeds in pixels per frame scale with size/32."""
    s = size / 32
    t = np.arange(frames, dtype=np.float64)
    jitter = rng.uniform(0.85, 1.15)
    c0 = np.full(2, size / 2) + rng.uniform(-2, 2, 2) * s
    angle = np.full(frames, rng.uniform(0, 2 * np.pi))
    xy = np.repeat(c0[None], frames, axis=0)
    direction = {"right_slow": (1, 0, 0.45), "right_fast": (1, 0, 0.95), "left": (-1, 0, 0.7),
                 "up": (0, -1, 0.7), "down": (0, 1, 0.7)}
    if motion in direction:
        dx, dy, speed = direction[motion]
        step = speed * jitter * s * np.array([dx, dy])
        xy = c0 - step * (frames - 1) / 2 + t[:, None] * step
    elif motion in ("rotate_cw", "rotate_ccw"):
        omega = np.deg2rad(9.0) * jitter * (1 if motion == "rotate_cw" else -1)
        angle = angle + omega * t
    elif motion == "oscillate":
        period = rng.uniform(7, 11)
        xy[:, 0] = c0[0] + 5 * s * jitter * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    else:
        raise UnknownNameError(f"unknown motion {motion!r}; choose one of {MOTIONS}")
    return xy, angle


def render_clip(label: int, config: SyntheticConfig, rng: np.random.Generator, photos=None, digits=None) -> np.ndarray:
    """Render clip frames (T, H, W, 3) uint8 for class ``label`` (see ``class_names``)."""
    if photos is None:
        photos = _backgrounds()
    if digits is None:
        from sklearn.datasets import load_digits

        digits = load_digits().images.astype(np.float32)
    size, res = config.size, 32
    motion, appearance = MOTIONS[label // len(APPEARANCES)], APPEARANCES[label % len(APPEARANCES)]
    background = _background(photos, size, rng)
    sprite = _sprite(appearance, digits, res, rng)
    color = rng.uniform(0.75, 1.0, 3) * (1.0 if rng.random() < 0.5 else np.array([1.0, 0.85, 0.6]))
    side = 0.42 * size  # sprite side in frame pixels
    xy, angle = _trajectory(motion, config.frames, size, rng)
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    out = np.empty((config.frames, size, size, 3), np.uint8)
    for i in range(config.frames):
        c, sn = np.cos(angle[i]), np.sin(angle[i])
        px, py = xs - xy[i, 0], ys - xy[i, 1]  # inverse map: frame pixel -> sprite coordinates
        u = (c * px + sn * py) / side * res + res / 2 - 0.5
        v = (-sn * px + c * py) / side * res + res / 2 - 0.5
        ui, vi = np.rint(u).astype(np.int64), np.rint(v).astype(np.int64)
        inside = (ui >= 0) & (ui < res) & (vi >= 0) & (vi < res)
        alpha = np.where(inside, sprite[np.clip(vi, 0, res - 1), np.clip(ui, 0, res - 1)], 0.0)[..., None]
        frame = background * (1 - alpha) + color * alpha + rng.normal(0, 3 / 255, (size, size, 3))
        out[i] = np.clip(np.rint(frame * 255), 0, 255).astype(np.uint8)
    return out


def _settings(config: SyntheticConfig) -> dict:
    """What the generated clips depend on (their cache folder is named by its hash)."""
    return {"version": _VERSION, **asdict(config)}


def _cache_dir(config: SyntheticConfig) -> str:
    return os.path.join(cache_root(), "synthetic_actions", f"v{_VERSION}-{settings_hash(_settings(config))}")


def _load(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The cached clips and the settings recorded beside them (``config.json``)."""
    with open(os.path.join(os.path.dirname(path), "config.json")) as f:
        recorded = json.load(f)
    with np.load(path) as f:
        return recorded, {k: f[k] for k in f.files}


def _save(path: str, data: dict[str, np.ndarray], settings: dict) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **data)
    atomic_write_bytes(path, buf.getvalue())
    write_json(os.path.join(os.path.dirname(path), "config.json"), {**settings, "classes": class_names()})


def _generate(config: SyntheticConfig, progress: bool) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from tqdm.auto import tqdm

    photos, digits = _backgrounds(), load_digits().images.astype(np.float32)
    labels = np.repeat(np.arange(len(class_names())), config.clips_per_class)
    reps = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in tqdm(range(len(labels)), desc="synthetic clips", disable=not progress):
            frames = render_clip(int(labels[i]), config, np.random.default_rng([config.seed, i]), photos, digits)
            path = encode_clip(frames, os.path.join(tmp, f"{i:05d}.mp4"), gop_size=config.gop_size, qscale=config.qscale)
            reps.append(compressed_representation(decode_compressed(path)))
    arrays = {key: np.stack([r.arrays()[key] for r in reps]) for key in reps[0].arrays()}
    return {**arrays, "labels": labels, "is_test": stratified_split(labels, config.test_fraction, config.seed)}


def synthetic_actions(config: SyntheticConfig = SyntheticConfig(), progress: bool | None = None):
    """Return ``(train, test)`` ``ClipSet``s; generate and cache on the first call
    (``progress=None``: a bar when stderr is a terminal)."""
    import sys

    config.validate()
    path = os.path.join(_cache_dir(config), "representations.npz")
    data, _ = cached(path, _settings(config), lambda: _generate(config, sys.stderr.isatty() if progress is None else progress),
                     load=_load, save=_save)
    reps = [CompressedRepresentation(data["iframes"][i], data["mv"][i], data["residual"][i], data["iframe_mask"][i])
            for i in range(len(data["labels"]))]
    labels, is_test = data["labels"].astype(np.int64), data["is_test"]
    return tuple(ClipSet([r for r, t in zip(reps, is_test) if t == want], labels[is_test == want], class_names())
                 for want in (False, True))
