"""Clip sets in the compressed domain, a torch Dataset over them, and video folders (UCF-101,
HMDB-51, or any ``<class>/<clip>`` folder).

Nothing is downloaded. A user's videos are re-encoded as CoViAR does (MPEG-4 Part 2, GOP 12, no
B-frames) at ``size`` x ``size``, decoded with their motion vectors, and each clip's compressed
representation (I-frames, accumulated motion vectors and residuals) is written once to a disk
cache, one folder of ``.npy`` arrays per clip (:func:`cache_clips`: atomic, resumable, in
``workers`` processes). Training then reads them lazily (:class:`ClipFiles`, memory-mapped, so a
sample reads only the frames it uses): memory does not grow with the dataset, and a machine
without PyAV (a GPU node) trains from a cache prepared elsewhere. The synthetic dataset
(``synthetic.py``) goes through the same codec path.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from curvfast.pipelines.pkd.video.codec import GOP_SIZE, decode_compressed, encode_clip, require_av
from curvfast.pipelines.pkd.video.motion import CompressedRepresentation, compressed_representation
from curvfast.pipelines.pkd.video.sampling import sample_frames
from curvfast.errors import ConfigError, DataError

__all__ = ["prepare_clip", "ClipSet", "ClipFiles", "stratified_split", "CompressedVideoDataset", "NORMALIZATION", "read_frames", "reencode",
           "ucf101_clips", "hmdb51_clips", "videofolder_clips", "VIDEO_EXTENSIONS", "cache_clips", "folder_clipset",
           "write_representation", "read_representation"]

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")
_CACHE_VERSION = 1  # bump when the cached representation changes
_ARRAYS = ("iframes", "mv", "residual", "iframe_mask")

# Fixed input scaling per representation: (offset, scale), input = (x - offset) / scale.
NORMALIZATION = {"iframe": (127.5, 64.0), "mv": (0.0, 4.0), "residual": (0.0, 16.0)}


def write_representation(folder: str, rep: CompressedRepresentation) -> str:
    """Write ``rep`` as ``folder/<array>.npy`` files, atomically: the arrays go to a temporary folder
    beside it that is renamed to ``folder`` at the end, so ``folder`` exists only when complete (a
    concurrent writer that lost the race discards its copy). Returns ``folder``."""
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(folder) + ".tmp-")
    try:
        for name, array in rep.arrays().items():
            np.save(os.path.join(tmp, name + ".npy"), array)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not os.path.isdir(folder):  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def read_representation(folder: str, mmap: bool = True) -> CompressedRepresentation:
    """The representation written by :func:`write_representation`; memory-mapped unless ``mmap=False``."""
    mode = "r" if mmap else None
    return CompressedRepresentation(*(np.load(os.path.join(folder, name + ".npy"), mmap_mode=mode) for name in _ARRAYS))


class ClipFiles(Sequence):
    """Clip representations cached on disk, one folder per clip, read (memory-mapped) on access."""

    def __init__(self, folders):
        self.folders = list(folders)

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, i: int) -> CompressedRepresentation:
        return read_representation(self.folders[i])

    def select(self, index) -> "ClipFiles":
        return ClipFiles([self.folders[i] for i in index])


@dataclass
class ClipSet:
    """Clips in the compressed domain with their labels (``labels[i]`` indexes ``classes``); ``reps``
    is a list of representations in memory or a :class:`ClipFiles` (on disk, read lazily)."""

    reps: Sequence
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.reps)

    def subset(self, mask: np.ndarray) -> "ClipSet":
        """The clips where the boolean ``mask`` is True."""
        index = np.flatnonzero(mask)
        reps = self.reps.select(index) if isinstance(self.reps, ClipFiles) else [self.reps[i] for i in index]
        return ClipSet(reps, self.labels[mask], self.classes)


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
            raise ConfigError(f"num_segments must be >= 1 (got {num_segments})")
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


def read_frames(path: str, size: int, max_frames: int | None = None) -> np.ndarray:
    """Decode the frames of any video FFmpeg reads (the first ``max_frames``; None: all of them),
    resized to size x size RGB."""
    av = require_av()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video file {path!r} does not exist")
    frames = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise DataError(f"video file {path!r} has no video stream")
            for frame in container.decode(video=0):
                frames.append(frame.reformat(width=size, height=size, format="rgb24").to_ndarray())
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except av.error.FFmpegError as err:
        raise DataError(f"video file {path!r} could not be decoded ({type(err).__name__}: {err})") from err
    if len(frames) < 2:
        raise DataError(f"video file {path!r} has {len(frames)} decodable frame(s); need at least 2")
    return np.stack(frames)


def reencode(path: str, out_path: str, size: int = 64, max_frames: int | None = None, gop_size: int = GOP_SIZE) -> str:
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
        raise ConfigError(f"split must be 'train' or 'test' (got {split!r})")
    if fold not in (1, 2, 3):
        raise ConfigError(f"fold must be 1, 2 or 3 (got {fold!r})")


def videofolder_clips(root: str, split: str = "train", fold: int = 1):
    """A UCF-101-layout folder as ``(paths, labels, classes)``: either ``root/<split>/<class>/<clip>``
    folders, or ``root/<class>/<clip>`` videos with a split list ``root/<split>.txt`` (else
    ``root/<split>list0{fold}.txt``, UCF-101's naming) of ``<class>/<clip> [anything]`` lines. Clips
    are the files ending in :data:`VIDEO_EXTENSIONS`; the classes are the sorted class folders (of
    ``root/train`` in the first layout, so both splits agree). A missing split is an error naming
    what was looked for."""
    _check_split(root, split, fold)
    folder = os.path.join(root, split)
    lists = [os.path.join(root, f"{split}.txt"), os.path.join(root, f"{split}list0{fold}.txt")]
    if os.path.isdir(folder):
        class_root = os.path.join(root, "train")
        classes = _class_folders(class_root if os.path.isdir(class_root) else folder)
        unknown = sorted(set(_class_folders(folder)) - set(classes))
        if unknown:
            raise DataError(f"video folder {folder!r} has classes {unknown} that {class_root!r} lacks")
        rel = [f"{c}/{f}" for c in _class_folders(folder) for f in sorted(os.listdir(os.path.join(folder, c)))
               if f.lower().endswith(VIDEO_EXTENSIONS)]
        base = folder
    else:
        listed = next((p for p in lists if os.path.isfile(p)), None)
        if listed is None:
            raise FileNotFoundError(f"video folder {root!r} has no {split!r} split: looked for the folder {folder!r} and "
                                    f"the split lists {' and '.join(map(repr, lists))}; put the clips in {folder}/<class>/ "
                                    "or list them, one '<class>/<clip>' per line")
        classes = _class_folders(root)
        rel = [line.split()[0] for line in _read_lines(listed)]
        base = root
    if not rel:
        raise DataError(f"video folder {root!r}: the {split!r} split holds no clips ({', '.join(VIDEO_EXTENSIONS)})")
    labels = []
    for r in rel:
        name = r.replace("\\", "/").split("/")[0]
        if name not in classes:
            raise DataError(f"video folder {root!r}: clip {r!r} of the {split!r} split is in no class folder "
                             f"({', '.join(classes)})")
        labels.append(classes.index(name))
    return [os.path.join(base, r) for r in rel], np.asarray(labels, np.int64), classes


def _class_folders(folder: str) -> list[str]:
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))
    if len(classes) < 2:
        raise DataError(f"video folder {folder!r} has {len(classes)} class folder(s); need at least 2")
    return classes


def _clip_folder(cache_dir: str, path: str, size: int, max_frames: int | None) -> str:
    key = f"{os.path.abspath(path)}|{size}|{max_frames or 'all'}|{_CACHE_VERSION}"
    return os.path.join(cache_dir, hashlib.sha256(key.encode()).hexdigest()[:16])


def prepare_clip(path: str, folder: str, size: int, max_frames: int | None) -> str:
    """Re-encode ``path`` (CoViAR's codec settings), decode it with its motion vectors and write its
    compressed representation to ``folder``."""
    with tempfile.TemporaryDirectory() as tmp:
        encoded = reencode(path, os.path.join(tmp, "clip.mp4"), size=size, max_frames=max_frames)
        rep = compressed_representation(decode_compressed(encoded))
    return write_representation(folder, rep)


class _Pending(Dataset):
    """Clips still to prepare; item i prepares clip i (so a DataLoader's workers prepare in parallel)."""

    def __init__(self, jobs, size, max_frames):
        self.jobs, self.size, self.max_frames = jobs, size, max_frames

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> str:
        return prepare_clip(*self.jobs[i], self.size, self.max_frames)


def cache_clips(paths: list[str], cache_dir: str, size: int = 64, max_frames: int | None = None, workers: int = 0,
                progress: bool = False) -> ClipFiles:
    """Prepare every video of ``paths`` not cached yet (keyed by its absolute path, ``size`` and
    ``max_frames``; None: the whole clip) in ``workers`` processes, and return the cached clips.
    Resumable: an interrupted run keeps every clip it finished and the next run prepares the rest.
    The workers are spawned, not forked: a fork copies the parent's FFmpeg and OpenMP thread state,
    and a forked decoding worker segfaulted once in a long test session (never when run alone)."""
    from tqdm.auto import tqdm

    folders = [_clip_folder(cache_dir, p, size, max_frames) for p in paths]
    jobs = [(p, f) for p, f in zip(paths, folders) if not os.path.isdir(f)]
    if jobs:
        loader = DataLoader(_Pending(jobs, size, max_frames), batch_size=None, num_workers=workers,
                            multiprocessing_context="spawn" if workers else None)
        for _ in tqdm(loader, total=len(jobs), desc="caching clips", disable=not progress):
            pass
    return ClipFiles(folders)


def folder_clipset(paths: list[str], labels: np.ndarray, classes: list[str], cache_dir: str, size: int = 64,
                   max_frames: int | None = None, workers: int = 0, progress: bool = False) -> ClipSet:
    """The videos ``paths`` as a :class:`ClipSet` read lazily from ``cache_dir`` (:func:`cache_clips`)."""
    return ClipSet(cache_clips(paths, cache_dir, size, max_frames, workers, progress), np.asarray(labels, np.int64),
                   list(classes))
