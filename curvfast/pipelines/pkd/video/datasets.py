"""Clip sets in the compressed domain, a torch Dataset over them, and UCF-101 / HMDB-51 folders.

Nothing is downloaded. A user's UCF-101 or HMDB-51 videos are re-encoded as CoViAR does (MPEG-4
Part 2, GOP 12, no B-frames) at a small resolution into a cache folder, then decoded with their
motion vectors; the synthetic dataset (``synthetic.py``) goes through the same codec path.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from curvfast.pipelines.pkd.video.codec import GOP_SIZE, decode_compressed, encode_clip, require_av
from curvfast.pipelines.pkd.video.motion import CompressedRepresentation, compressed_representation
from curvfast.pipelines.pkd.video.sampling import sample_frames

__all__ = ["ClipSet", "stratified_split", "CompressedVideoDataset", "NORMALIZATION", "read_frames", "reencode", "ucf101_clips",
           "hmdb51_clips", "folder_clipset"]

# Fixed input scaling per representation: (offset, scale), input = (x - offset) / scale.
NORMALIZATION = {"iframe": (127.5, 64.0), "mv": (0.0, 4.0), "residual": (0.0, 16.0)}


@dataclass
class ClipSet:
    """Clips in the compressed domain with their labels (``labels[i]`` indexes ``classes``)."""

    reps: list[CompressedRepresentation]
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.reps)

    def subset(self, mask: np.ndarray) -> "ClipSet":
        """The clips where the boolean ``mask`` is True."""
        return ClipSet([r for r, m in zip(self.reps, mask) if m], self.labels[mask], self.classes)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask choosing ``fraction`` of each class (at least one, and never all of a class
    with two or more clips); the same on every machine."""
    rng = np.random.default_rng([seed, 1])
    chosen = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = min(max(1, int(round(len(idx) * fraction))), max(len(idx) - 1, 1))
        chosen[rng.permutation(idx)[:n]] = True
    return chosen


class CompressedVideoDataset(Dataset):
    """Item i: ``({"iframe": (S, 3, H, W), "mv": (S, 2, H, W), "residual": (S, 3, H, W)}, label)``,
    float32, normalised by ``NORMALIZATION``, one frame per segment (``sample_frames``).

    Training draws are keyed by (seed, epoch, clip index), never by loader order: call
    ``set_epoch`` each epoch. With ``train=False`` the segment middles are used."""

    def __init__(self, clips: ClipSet, num_segments: int = 3, train: bool = False, seed: int = 0):
        if num_segments < 1:
            raise ValueError(f"num_segments must be >= 1 (got {num_segments})")
        self.clips, self.num_segments, self.train, self.seed, self.epoch = clips, num_segments, train, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        rep = self.clips.reps[i]
        rng = np.random.default_rng([self.seed, self.epoch, i]) if self.train else None
        sample = {}
        for name, source in (("iframe", rep.iframes), ("mv", rep.mv), ("residual", rep.residual)):
            idx = sample_frames(name, rep.iframe_mask, self.num_segments, self.train, rng)
            offset, scale = NORMALIZATION[name]
            sample[name] = (torch.from_numpy(source[idx].astype(np.float32)) - offset) / scale
        return sample, int(self.clips.labels[i])


def read_frames(path: str, size: int, max_frames: int) -> np.ndarray:
    """Decode up to ``max_frames`` frames of any video FFmpeg reads, resized to size x size RGB."""
    av = require_av()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file {path!r} does not exist")
    frames = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"video file {path!r} has no video stream")
            for frame in container.decode(video=0):
                frames.append(frame.reformat(width=size, height=size, format="rgb24").to_ndarray())
                if len(frames) >= max_frames:
                    break
    except av.error.FFmpegError as err:
        raise ValueError(f"video file {path!r} could not be decoded ({type(err).__name__}: {err})") from err
    if len(frames) < 2:
        raise ValueError(f"video file {path!r} has {len(frames)} decodable frame(s); need at least 2")
    return np.stack(frames)


def reencode(path: str, out_path: str, size: int = 64, max_frames: int = 48, gop_size: int = GOP_SIZE) -> str:
    """CoViAR's preprocessing: re-encode a video as MPEG-4 Part 2, GOP ``gop_size``, no B-frames."""
    return encode_clip(read_frames(path, size, max_frames), out_path, gop_size=gop_size)


def _read_lines(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file {path!r} does not exist; pass the folder holding the official split lists")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def ucf101_clips(root: str, split: str = "train", fold: int = 1, split_dir: str | None = None):
    """UCF-101 as ``(paths, labels, classes)`` from ``root/<Class>/v_*.avi`` and the official
    lists ``classInd.txt``, ``trainlist0{fold}.txt``, ``testlist0{fold}.txt`` in ``split_dir``
    (default ``root/ucfTrainTestlist``)."""
    _check_split(root, split, fold)
    split_dir = split_dir or os.path.join(root, "ucfTrainTestlist")
    classes = [line.split()[1] for line in _read_lines(os.path.join(split_dir, "classInd.txt"))]
    lines = _read_lines(os.path.join(split_dir, f"{split}list0{fold}.txt"))
    rel = [line.split()[0] for line in lines]
    labels = [classes.index(r.split("/")[0]) for r in rel]
    return [os.path.join(root, r) for r in rel], np.asarray(labels, np.int64), classes


def hmdb51_clips(root: str, split: str = "train", fold: int = 1, split_dir: str | None = None):
    """HMDB-51 as ``(paths, labels, classes)`` from ``root/<class>/*.avi`` and the official
    ``<class>_test_split{fold}.txt`` files (1 = train, 2 = test, 0 = unused) in ``split_dir``
    (default ``root/testTrainMulti_7030_splits``)."""
    _check_split(root, split, fold)
    split_dir = split_dir or os.path.join(root, "testTrainMulti_7030_splits")
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"HMDB-51 split folder {split_dir!r} does not exist; pass split_dir=")
    suffix = f"_test_split{fold}.txt"
    classes = sorted(f[: -len(suffix)] for f in os.listdir(split_dir) if f.endswith(suffix))
    if not classes:
        raise FileNotFoundError(f"no '*{suffix}' files in {split_dir!r}")
    want = "1" if split == "train" else "2"
    paths, labels = [], []
    for c, name in enumerate(classes):
        for line in _read_lines(os.path.join(split_dir, name + suffix)):
            video, tag = line.split()[:2]
            if tag == want:
                paths.append(os.path.join(root, name, video))
                labels.append(c)
    return paths, np.asarray(labels, np.int64), classes


def _check_split(root: str, split: str, fold: int) -> None:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset root {root!r} does not exist; curvfast never downloads videos")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' (got {split!r})")
    if fold not in (1, 2, 3):
        raise ValueError(f"fold must be 1, 2 or 3 (got {fold!r})")


def folder_clipset(paths: list[str], labels: np.ndarray, classes: list[str], cache_dir: str, size: int = 64,
                   max_frames: int = 48) -> ClipSet:
    """Re-encode each video into ``cache_dir`` (once; keyed by path, size and length) and decode
    its compressed representation."""
    reps = []
    for path in paths:
        key = hashlib.sha256(f"{os.path.abspath(path)}|{size}|{max_frames}".encode()).hexdigest()[:16]
        target = os.path.join(cache_dir, f"{key}.mp4")
        if not os.path.isfile(target):
            tmp = target + ".tmp.mp4"
            reencode(path, tmp, size=size, max_frames=max_frames)
            os.replace(tmp, target)
        reps.append(compressed_representation(decode_compressed(target)))
    return ClipSet(reps, np.asarray(labels, np.int64), list(classes))
