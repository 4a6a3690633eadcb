"""Dataset-level scoring: shard, batch, score one or several models, resume, merge.

dataset → index chunks → this rank's chunks → batches (DataLoader workers) → every model
(eval) → ``input_curvature`` → per-chunk arrays → chunk files / memory → rank 0 merges.

- **Determinism.** Each batch passes its samples' dataset indices as probe keys, and batches
  never straddle a chunk boundary, so a sample lands in the same batch whatever the number of
  processes. The class-pass width of the logit-space estimators, which the estimator picks by
  timing, is measured once per run on rank 0 (on the dataset's first batch), pinned for every
  batch and rank, and recorded in the manifest for resumed runs and in ``settings["pass_widths"]``.
  So a run under ``torchrun --nproc_per_node=N`` gives bit-identical results to one process on
  the same device with the same widths.
- **Sharding.** Chunk ``k`` covers samples [k·S, (k+1)·S); the chunks still to do are dealt
  round-robin to the ranks. Without ``chunk_size`` the unit is one batch and nothing is
  written until the end.
- **Resuming.** With ``out`` and ``chunk_size`` every chunk is written atomically with a
  checksum and a manifest (``curvfast.chunks``); the same call again computes only the
  missing or corrupt chunks, and refuses other settings, models or data unless ``overwrite``.
- **Several models** (shadow models) are scored on each batch as it arrives, so the data are
  read and decoded once for all of them.
- **Memory** holds the current chunk's arrays and the DataLoader's prefetched batches, never
  the images of the whole dataset; the merged per-sample arrays (a few numbers per sample)
  are the only O(N) state.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import (BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, Sampler,
                              SequentialSampler)
from torch.utils.data import default_collate

from . import distributed, ops
from ._version import __version__
from .chunks import RunFolder
from .data import class_names, printable_path, sample_paths
from .curvature import input_curvature
from .curvature._dispatch import below_floor
from .curvature._batching import VJP_PLANNER, largest_batch
from .curvature._model import scoring_mode, unwrap_model
from .errors import ConfigError, DataError, MissingDependencyError
from .fingerprint import dataset_fingerprint, model_fingerprint
from .io import atomic_write_bytes, write_json, write_npz

__all__ = ["score", "score_models", "ScoreResult", "write_table", "load_result"]

TABLE = "samples"  # the per-sample table: samples.csv (always) and samples.parquet (with pyarrow)
AUTO_BATCH = "auto"
CPU_AUTO_BATCH = 64  # a CPU runs no faster with larger batches: the class-pass width fills it (curvature._batching)


class _Indexed(Dataset):
    """Wrap a map-style dataset so items come with their index: ``(index, x, y)``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i][:2]
        return i, x, y


class _ChunkBatches(Sampler):
    """Batches of consecutive indices that never straddle a chunk.

    For each ``(start, stop)``: ``[start, start+B), [start+B, start+2B), …`` up to ``stop``.
    """

    def __init__(self, ranges: Sequence[tuple[int, int]], batch_size: int):
        self.ranges, self.batch_size = list(ranges), batch_size

    def __iter__(self):
        for start, stop in self.ranges:
            for b in range(start, stop, self.batch_size):
                yield list(range(b, min(b + self.batch_size, stop)))

    def __len__(self):
        return sum(-(-(stop - start) // self.batch_size) for start, stop in self.ranges)


@dataclass
class ScoreResult:
    """A scoring run's per-sample arrays, sorted by dataset index, with its settings.

    Attributes:
        index: dataset indices (N,).
        score: curvature (N,), or (N, K) eigenvalues for a spectrum; higher = more curved.
        stderr: standard errors (N,) of a random method, else None.
        loss: cross-entropy (N,).
        label: labels (N,).
        settings: the resolved estimator and run settings.
        seconds: wall time of the run.
        run: processes, chunks reused / computed / found corrupt.
        prediction: the model's predicted class (N,) (None in results read from a run without one).
        files: the image file of each row where the dataset has files, else None.
        classes: the class names by label where the dataset has them, else None.
        provenance: where the numbers come from: dataset, root, split, checkpoints, model, command line, curvfast
            version (what ``results.json`` records under ``provenance``).
        rounding_floor: zo only: each sample's rounding floor ulp(max(|L|, 1)) / (4h) (N,), else None
            (docs/estimators.md); see :attr:`below_rounding_floor`.
    """

    index: np.ndarray
    score: np.ndarray
    stderr: np.ndarray | None
    loss: np.ndarray
    label: np.ndarray
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    run: dict = field(default_factory=dict)
    prediction: np.ndarray | None = None
    files: list[str] | None = None
    classes: list[str] | None = None
    provenance: dict = field(default_factory=dict)
    rounding_floor: np.ndarray | None = None

    @property
    def below_rounding_floor(self) -> np.ndarray | None:
        """(N,) bool, zo only: the score is at most 2.5 rounding floors of its losses, so rounding, not curvature.

        Returns:
            The flags, or None for a method without a rounding floor.
        """
        return None if self.rounding_floor is None else below_floor(self.score, self.rounding_floor)

    def summary(self) -> dict:
        """Summary statistics of the run.

        Returns:
            Count, mean, median, min, max and std of the scores (the top eigenvalue for a spectrum),
            the mean loss, the seconds taken and the samples per second; for zo, ``below_rounding_floor``: how
            many scores are the losses' rounding (:attr:`below_rounding_floor`).
        """
        s = self.score if self.score.ndim == 1 else self.score[:, 0]
        flagged = {} if self.rounding_floor is None else {"below_rounding_floor": int(self.below_rounding_floor.sum())}
        return {
            "count": int(len(s)),
            "mean": float(np.mean(s)),
            "median": float(np.median(s)),
            "min": float(np.min(s)),
            "max": float(np.max(s)),
            "std": float(np.std(s)),
            "mean_loss": float(np.mean(self.loss)),
            "seconds": round(self.seconds, 3),
            "samples_per_second": round(len(s) / self.seconds, 2) if self.seconds > 0 else None,
        } | flagged

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-sample arrays as ``scores.npz`` holds them (``stderr`` only for random methods).

        Returns:
            ``index``, ``score``, ``loss``, ``label`` (and ``prediction``, ``stderr``, zo's ``rounding_floor``) by
            name.
        """
        out = {"index": self.index, "score": self.score, "loss": self.loss, "label": self.label}
        extra = {"prediction": self.prediction, "stderr": self.stderr, "rounding_floor": self.rounding_floor}
        return out | {k: v for k, v in extra.items() if v is not None}

    def columns(self) -> dict[str, list]:
        """The per-sample table, one entry per column, rows in dataset-index order.

        Columns: ``index``, ``path`` (where the dataset has files), ``label``, ``class_name`` (where the dataset
        names its classes), ``prediction``, ``score`` (a spectrum's top eigenvalue; ``score_k`` the k-th), ``stderr``
        (random methods), ``loss``, and for zo ``below_rounding_floor`` (True: the score is the losses' rounding,
        not curvature; docs/estimators.md). Missing values are None.

        Returns:
            Plain Python lists by column name (what ``samples.csv`` and ``samples.parquet`` hold).
        """
        label = self.label.tolist()
        cols: dict[str, list] = {"index": self.index.tolist()}
        if self.files is not None:
            cols["path"] = list(self.files)
        cols["label"] = label
        if self.classes is not None:
            cols["class_name"] = [self.classes[y] if 0 <= y < len(self.classes) else None for y in label]
        if self.prediction is not None:
            cols["prediction"] = self.prediction.tolist()
        if self.score.ndim == 1:
            cols["score"] = self.score.tolist()
        else:
            cols["score"] = self.score[:, 0].tolist()
            cols.update({f"score_{k}": self.score[:, k].tolist() for k in range(self.score.shape[1])})
        if self.stderr is not None:
            cols["stderr"] = self.stderr.tolist()
        cols["loss"] = self.loss.tolist()
        if self.rounding_floor is not None:
            cols["below_rounding_floor"] = self.below_rounding_floor.tolist()
        return cols

    def to_frame(self):
        """The per-sample table as a pandas DataFrame (see :meth:`columns`), indexed by dataset index.

        Returns:
            A ``pandas.DataFrame``; ``frame.nlargest(k, "score")`` is the top-k.

        Raises:
            MissingDependencyError: pandas is not installed.
        """
        try:
            import pandas as pd
        except ImportError as err:
            raise MissingDependencyError("ScoreResult.to_frame() needs pandas: pip install pandas") from err
        return pd.DataFrame(self.columns()).set_index("index", drop=False).rename_axis(None)

    def top(self, k: int = 24) -> np.ndarray:
        """Positions (rows) of the ``k`` highest scores, highest first (ties: lower index first).

        Args:
            k: How many rows (all when the run has fewer).

        Returns:
            Row positions into the arrays; ``result.index[rows]`` are the dataset indices.
        """
        s = self.score if self.score.ndim == 1 else self.score[:, 0]
        return np.argsort(-s, kind="stable")[:max(0, int(k))]

    def save_top_images(self, dataset, path: str, k: int = 24, columns: int = 8) -> None:
        """A PNG grid of the ``k`` most curved samples, each titled with its file (or index), class and score.

        Args:
            dataset: The dataset that was scored (its items are ``(image tensor, label)``, pixels in [0, 1]).
            path: The PNG file to write.
            k: How many images.
            columns: Images per row.

        Raises:
            DataError: The dataset's items are not image tensors (C, H, W) of one size.
        """
        from .plots import image_grid

        rows = self.top(k)
        images = []
        for i in self.index[rows].tolist():
            x = dataset[i][0]
            if not torch.is_tensor(x) or x.ndim != 3:
                raise DataError(f"sample {i} is not an image tensor (C, H, W); save_top_images draws images only")
            images.append(x.detach().float().clamp(0, 1).cpu().numpy())
        if len({im.shape for im in images}) > 1:
            raise DataError("the top images differ in size; score with a fixed image size (image_size=...)")
        titles = []
        for r in rows.tolist():
            name = os.path.basename(self.files[r]) if self.files is not None else f"#{int(self.index[r])}"
            y = int(self.label[r])
            cls = self.classes[y] if self.classes is not None and 0 <= y < len(self.classes) else str(y)
            s = float(self.score[r] if self.score.ndim == 1 else self.score[r, 0])
            titles.append(f"{name[:18]}\n{cls[:18]} {s:.3g}")
        image_grid(np.stack(images), titles, path, columns=columns,
                   suptitle=f"top {len(rows)} by input-loss curvature ({self.settings.get('method', '?')})")


def parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that can run models here: cpu, or cuda when a GPU exists.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.

    Returns:
        The parsed device.

    Raises:
        ConfigError: not a device name, a device type other than cpu/cuda, or cuda without a GPU.
    """
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"device {device!r} is not a device name; use 'cpu' or 'cuda' ('cuda:N' for one "
                          "GPU)") from err
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {str(device)!r} cannot run the models; use 'cpu' or 'cuda' ('cuda:N' for one GPU)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} was requested but no CUDA GPU is available here; use device='cpu'")
    return device


def _resolve_device(device, model: nn.Module) -> torch.device:
    if device is None:
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    return parse_device(device)


def _named_models(models) -> dict[str, nn.Module]:
    if isinstance(models, nn.Module):
        raise TypeError("score_models() takes several models (a dict name -> model, or a list); use score() for one")
    named = dict(models) if isinstance(models, Mapping) else {f"model{i}": m for i, m in enumerate(models)}
    if not named:
        raise ConfigError("models is empty; pass at least one model")
    for name, m in named.items():
        if not isinstance(m, nn.Module):
            raise TypeError(f"model {name!r} is a {type(m).__name__}, not an nn.Module returning logits")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", str(name)):
            raise ConfigError(f"model name {name!r} must be a plain folder name (letters, digits, '_', '.', '-')")
    return named


def _unpack(data, batch_size: int, num_workers: int):
    """``(dataset, batch_size, loader options, custom batch sampler or None)`` from a Dataset or DataLoader.

    A DataLoader's sequential or shuffled order changes nothing (every index is scored once, keyed by index); any other
    sampler selects samples and is kept as is.
    """
    if isinstance(data, DataLoader):
        ds = data.dataset
        if isinstance(ds, IterableDataset) or not hasattr(ds, "__getitem__"):
            raise TypeError("score() needs a map-style dataset (with __getitem__ and __len__) to know each sample's "
                            "index")
        opts = {"num_workers": data.num_workers, "pin_memory": data.pin_memory}
        bs = data.batch_sampler
        plain = type(bs) is BatchSampler and not bs.drop_last and (
            isinstance(bs.sampler, SequentialSampler)
            or (isinstance(bs.sampler,
                           RandomSampler) and not bs.sampler.replacement and bs.sampler.num_samples == len(ds))
        )
        return ds, (bs.batch_size if type(bs) is BatchSampler else batch_size), opts, (None if plain else bs)
    if isinstance(data, IterableDataset) or not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise TypeError(f"data must be a map-style Dataset or a DataLoader over one (got {type(data).__name__})")
    return data, batch_size, {"num_workers": num_workers, "pin_memory": None}, None


def _scalar_kwargs(kwargs: dict) -> dict:
    """Estimator options as JSON: numbers and strings as they are, callables by name."""
    return {k: (v if isinstance(v, (int, float, str, bool, type(None))) else getattr(v, "__qualname__",
                                                                                     type(v).__name__))
            for k, v in sorted(kwargs.items())}


def _on_device(batch, device, channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(index, x on device, y)`` of a collated ``(index, x, y)`` batch (x channels-last when asked, for 4-D x)."""
    idx, x, y = batch
    if not torch.is_tensor(x):
        raise TypeError("dataset items must be (tensor, label); add a ToTensor() transform")
    fmt = torch.channels_last if channels_last and x.dim() == 4 else torch.preserve_format
    return torch.as_tensor(idx), x.to(device, non_blocking=True, memory_format=fmt), torch.as_tensor(y)


class _DeviceClock:
    """Seconds the device spent scoring: CUDA events around each batch's curvature, read once at the end.

    The events add no host synchronisation; on a CPU nothing is recorded (None).
    """

    def __init__(self, device: torch.device):
        self.events = [] if device.type == "cuda" else None

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        if self.events is None:
            yield
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        self.events.append((start, end))

    def stats(self, wall_s: float, device: torch.device) -> dict:
        """``{}`` on a CPU; on CUDA the scoring wall time, the device's busy seconds in it, and the peak memory."""
        if self.events is None:
            return {}
        torch.cuda.synchronize(device)
        busy = sum(start.elapsed_time(end) for start, end in self.events) / 1000
        return {"scoring_s": round(wall_s, 3), "device_busy_s": round(busy, 3),
                "peak_memory_bytes": torch.cuda.max_memory_allocated(device)}


def _calibrate(models, dataset, batch_size: int, device, estimator: dict, first: dict, channels_last: bool) -> dict:
    """Score the dataset's first batch with every model; return ``{name: class-pass width or None}``.

    The estimator measures its pass width on this first call (``batching.PassPlanner``); the run
    then pins it for every batch, on every rank and in resumed runs, so that the bits do not
    depend on which process timed what. Runs on rank 0; its results are kept in ``first`` (keyed
    by the batch's indices) and reused when that batch comes up.
    """
    first_batch = default_collate([_Indexed(dataset)[i] for i in range(min(batch_size, len(dataset)))])
    idx, x, y = _on_device(first_batch, device, channels_last)
    results = {name: input_curvature(model, x, y, sample_ids=idx, **estimator) for name, model in models.items()}
    first[tuple(idx.tolist())] = results
    return {name: res.pass_width for name, res in results.items()}


def _auto_batch_size(models: dict, dataset, device: torch.device, estimator: dict) -> int:
    """The largest batch that fits the device's free memory with a margin (``batch_size="auto"``).

    On CUDA each trial scores the dataset's first B samples with every model and reads the allocator's peak
    (:func:`curvature._batching.largest_batch` fits it and verifies the answer); on a CPU, where a larger batch
    runs no faster, :data:`CPU_AUTO_BATCH`. Scores do not depend on the batch (probes are keyed by sample id).
    """
    n = len(dataset)
    if device.type != "cuda":
        return min(n, CPU_AUTO_BATCH)

    def measure(b: int) -> int:
        idx, x, y = _on_device(default_collate([_Indexed(dataset)[i] for i in range(b)]), device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        for model in models.values():
            input_curvature(model, x, y, sample_ids=idx, **estimator)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)

    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    return largest_batch(measure, free + torch.cuda.memory_allocated(device), limit=n)


def _measured_widths(ctx, folder: RunFolder | None, models, dataset, batch_size: int, device, estimator: dict,
                     first: dict, channels_last: bool) -> dict:
    """A new run's class-pass widths, measured once and shared with every rank.

    Measured on rank 0 (:func:`_calibrate`) and recorded in the run folder's manifest.
    """
    def calibrate():
        measured = _calibrate(models, dataset, batch_size, device, estimator, first, channels_last)
        if folder is not None:
            folder.record(pass_widths=measured)
        return measured

    return ctx.on_main("measuring the class-pass width", calibrate)


def _pinned(models: dict, widths: dict) -> contextlib.ExitStack:
    """Pin each model's class-pass width (``widths[name]``, None: nothing to pin) for the run."""
    stack = contextlib.ExitStack()
    for name, model in models.items():
        if widths.get(name) is not None:
            stack.enter_context(VJP_PLANNER.pinned(unwrap_model(model), widths[name]))
    return stack


def _score_batches(models, loader, device, sizes: list[int], show: bool, estimator: dict,
                   first: dict, clock: _DeviceClock, channels_last: bool) -> Iterator[tuple[int, dict, dict]]:
    """Yield ``(unit position, arrays, used)`` each time the batches of one unit are done.

    A unit is ``sizes[pos]`` samples, or all the loader yields for ``None``. ``arrays``: index, label,
    and per model ``<name>/score|stderr|loss``. ``first``: results already computed, by batch indices.
    """
    from tqdm.auto import tqdm

    pos, parts, used = 0, {}, {}
    for batch in tqdm(loader, desc="curvature", unit="batch", disable=not show, dynamic_ncols=True):
        idx, x, y = _on_device(batch, device, channels_last)
        parts.setdefault("index", []).append(idx.numpy())
        parts.setdefault("label", []).append(y.numpy())
        done = first.pop(tuple(idx.tolist()), {})
        with clock.timing():
            results = {name: done[name] if name in done else input_curvature(model, x, y, sample_ids=idx, **estimator)
                       for name, model in models.items()}
            predictions = {name: _predictions(model, x) for name, model in models.items()}
        for key, array in _to_host(results, predictions).items():
            parts.setdefault(key, []).append(array)
        for name, res in results.items():
            used.setdefault(name, {"method": res.method, "statistic": res.statistic,
                                   **({"adaptations": list(res.adaptations)} if res.adaptations else {})})
        if sum(map(len, parts["index"])) == sizes[pos]:
            yield pos, {k: np.concatenate(v) for k, v in parts.items()}, used
            pos, parts, used = pos + 1, {}, {}
    if parts and sizes[pos] is None:  # a caller's sampler: the unit ends with the loader
        yield pos, {k: np.concatenate(v) for k, v in parts.items()}, used
    elif parts or pos != len(sizes):
        raise DataError(f"the data loader stopped inside unit {pos}; did the dataset change length while scoring?")


def _to_host(results: dict, predictions: dict) -> dict[str, np.ndarray]:
    """Every model's ``<name>/score|loss|stderr|rounding_floor|prediction`` arrays of one batch in one copy to the host.

    Scores, losses and standard errors as float64, predictions as int64.
    """
    tensors = {f"{name}/{key}": t.detach().double() for name, res in results.items()
               for key, t in (("score", res.value), ("loss", res.loss), ("stderr", res.stderr),
                              ("rounding_floor", res.rounding_floor), ("prediction", predictions[name]))
               if t is not None}
    flat = torch.cat([t.reshape(-1) for t in tensors.values()]).cpu().numpy()
    out, start = {}, 0
    for key, t in tensors.items():
        out[key] = flat[start:start + t.numel()].reshape(t.shape)
        if key.endswith("/prediction"):
            out[key] = out[key].astype(np.int64)
        start += t.numel()
    return out


def _predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The predicted class of every sample of the batch ``x`` (one forward pass in eval mode, modes restored)."""
    with scoring_mode(unwrap_model(model)) as net, torch.no_grad():
        return net(x).argmax(1)


def _sample_files(dataset) -> tuple[list[str] | None, list[str] | None]:
    """``(file of each index, class names by label)`` of ``dataset``, each None where it has none.

    File names are shown as one line of UTF-8 text (``curvfast.data.printable_path``), so that any name can go
    into the CSV and parquet tables.
    """
    files, classes = sample_paths(dataset), class_names(dataset)
    return (None if files is None else [printable_path(f) for f in files]), classes


def _provenance(given: Mapping | None, dataset) -> dict:
    """What ``results.json`` records of where the numbers come from.

    ``given`` (dataset name, root, split, checkpoints, model...) over the command line, the curvfast version and
    the dataset's type.
    """
    import shlex

    auto = {"dataset": type(dataset).__qualname__, "command_line": shlex.join([os.path.basename(sys.argv[0]),
                                                                              *sys.argv[1:]]),
            "curvfast": __version__}
    return auto | dict(given or {})


def _merge(units: Iterator[dict]) -> dict[str, np.ndarray]:
    """Concatenate unit arrays and sort by dataset index."""
    parts: dict[str, list] = {}
    for arrays in units:
        for k, v in arrays.items():
            parts.setdefault(k, []).append(v)
    merged = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.argsort(merged["index"], kind="stable")
    return {k: v[order] for k, v in merged.items()}


def _results(merged: dict, used: dict, report: dict, seconds: float, run: dict) -> dict[str, ScoreResult]:
    out = {}
    files, classes = report["files"]
    rows = None if files is None else [files[i] for i in merged["index"].tolist()]
    for name, info in report["models"].items():
        settings = {**used.get(name, {}), **report["settings"], "model": info["type"],
                    "model_fingerprint": info["sha256"]}
        provenance = {**report["provenance"], **report["provenance"].get("models", {}).get(name, {})}
        provenance.pop("models", None)
        out[name] = ScoreResult(merged["index"], merged[f"{name}/score"], merged.get(f"{name}/stderr"),
                                merged[f"{name}/loss"], merged["label"], settings, seconds, run,
                                prediction=merged.get(f"{name}/prediction"), files=rows, classes=classes,
                                provenance=provenance, rounding_floor=merged.get(f"{name}/rounding_floor"))
    return out


def _warn_rounding_floor(results: dict[str, ScoreResult]) -> None:
    """Warn when some zo scores are the losses' rounding (:attr:`ScoreResult.below_rounding_floor`)."""
    for name, res in results.items():
        flagged = res.below_rounding_floor
        if flagged is not None and flagged.any():
            warnings.warn(
                f"{'' if len(results) == 1 else f'model {name!r}: '}{int(flagged.sum())} of {len(flagged)} zo scores "
                "are at most 2.5 rounding floors ulp(L)/(4h) of their float32 losses: rounding, not curvature "
                "(samples table column below_rounding_floor); score with float64_losses=True (curvfast score "
                "--float64-losses) to remove the floor", RuntimeWarning, stacklevel=4)


def _csv_bytes(columns: dict[str, list]) -> bytes:
    """The table as CSV: a header row, then one row per sample (None: an empty cell; floats exactly)."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(zip(*columns.values()))
    return buf.getvalue().encode()


def _parquet_bytes(columns: dict[str, list]) -> bytes | None:
    """The table as parquet, or None when pyarrow is not installed (the CSV holds the same table)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue().to_pybytes()


def write_table(folder: str, result: ScoreResult) -> list[str]:
    """Write ``result``'s per-sample table (:meth:`ScoreResult.columns`) atomically.

    ``folder/samples.csv`` always; ``folder/samples.parquet`` with pyarrow installed.

    Args:
        folder: The run folder.
        result: The scores.

    Returns:
        The file names written.
    """
    columns = result.columns()
    atomic_write_bytes(os.path.join(folder, f"{TABLE}.csv"), _csv_bytes(columns))
    parquet = _parquet_bytes(columns)
    if parquet is None:
        return [f"{TABLE}.csv"]
    atomic_write_bytes(os.path.join(folder, f"{TABLE}.parquet"), parquet)
    return [f"{TABLE}.csv", f"{TABLE}.parquet"]


def _write_results(out: str, results: dict[str, ScoreResult], single: bool) -> None:
    """Write the merged files.

    ``out/scores.npz`` + ``out/results.json`` for one model; for several, ``out/<name>/scores.npz`` +
    ``out/<name>/results.json`` and an index ``out/results.json``.
    """
    for name, res in results.items():
        folder = out if single else os.path.join(out, name)
        write_npz(os.path.join(folder, "scores.npz"), **res.arrays())
        tables = write_table(folder, res)
        write_json(os.path.join(folder, "results.json"), {"provenance": res.provenance, "settings": res.settings,
                                                          "summary": res.summary(), "run": res.run,
                                                          "files": ["scores.npz", *tables], "classes": res.classes})
    if not single:
        write_json(os.path.join(out, "results.json"), {
            "provenance": {k: v for k, v in next(iter(results.values())).provenance.items() if k != "checkpoint"},
            "models": {n: {"settings": r.settings, "summary": r.summary(), "files": f"{n}/scores.npz",
                           "checkpoint": r.provenance.get("checkpoint")} for n, r in results.items()},
            "run": next(iter(results.values())).run,
        })


OUTPUT_FILES = ("scores.npz", "results.json", f"{TABLE}.csv", f"{TABLE}.parquet")


def _check_unchunked_out(out: str | None, names: list[str], single: bool, overwrite: bool) -> None:
    """Refuse to overwrite, in a run without chunks, output-named files that no curvfast run wrote.

    A folder's files are curvfast's when its ``results.json`` is one curvfast wrote (it has ``settings`` or
    ``models``); ``overwrite`` replaces anything.
    """
    if out is None or overwrite or not os.path.isdir(out):
        return
    for folder in [out] if single else [out] + [os.path.join(out, n) for n in names]:
        present = [f for f in OUTPUT_FILES if os.path.lexists(os.path.join(folder, f))]
        if present and not _written_by_curvfast(os.path.join(folder, "results.json")):
            raise ConfigError(
                f"out={out!r}: {', '.join(os.path.join(folder, f) for f in present)} were not written by curvfast and "
                "would be overwritten; choose another out folder, move them, or pass overwrite=True (--overwrite)"
            )


def _written_by_curvfast(path: str) -> bool:
    """Whether ``path`` is a results.json of a curvfast run (a plain file holding its settings or models)."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and ("settings" in meta or "models" in meta)


def _check_run_options(batch_size, chunk_size, out) -> None:
    """Refuse a batch size, chunk size or run folder that cannot make a run."""
    if batch_size != AUTO_BATCH and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size must be a positive int or 'auto' (got {batch_size!r})")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ConfigError(f"chunk_size must be a positive int or None (got {chunk_size!r})")
    if chunk_size is not None and out is None:
        raise ConfigError("chunk_size makes a resumable run on disk and needs out=<run folder>")
    if out is not None and os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"out={out!r} is a file, not a folder; name a run folder (new or existing)")


def _identity(models: dict, dataset, settings: dict, ctx, fingerprinted: bool) -> dict:
    """Everything that determines the numbers: settings, models and data.

    Models and data are fingerprinted for a resumable or sharded run, where every rank must hold the same ones.
    """
    n = settings["dataset_size"]
    identity = {"settings": settings, "models": {}, "data": {"size": n, "type": type(dataset).__qualname__}}
    if not fingerprinted:
        identity["models"] = {name: {"type": type(m).__name__, "sha256": None} for name, m in models.items()}
        return identity
    identity["models"] = {name: {"type": type(m).__name__, "sha256": model_fingerprint(m)}
                          for name, m in models.items()}
    identity["data"] = dataset_fingerprint(dataset)
    views = ctx.all_gather("comparing models and data across ranks", identity)
    for r, view in enumerate(views):
        if view != views[0]:
            raise ConfigError(
                f"rank {r} holds other models, data or settings than rank 0; every rank must load the same "
                "checkpoints and dataset (seed any random initialisation, or load a checkpoint)"
            )
    return identity


def _this_ranks_loader(dataset, todo: list[int], unit: int, batch_size: int, custom, loader_opts: dict):
    """``(loader, unit sizes)`` of this rank's share of the data.

    Over the chunks ``todo`` (``unit`` samples each, batches never straddling one), or over the caller's own
    sampler (one unit of unknown size).
    """
    if custom is not None:
        return DataLoader(_Indexed(dataset), batch_sampler=custom, **loader_opts), [None]
    n = len(dataset)
    ranges = [(k * unit, min((k + 1) * unit, n)) for k in todo]
    loader = DataLoader(_Indexed(dataset), batch_sampler=_ChunkBatches(ranges, batch_size), **loader_opts)
    return loader, [stop - start for start, stop in ranges]


def _gathered_results(ctx, kept: dict, used: dict, report: dict, start_time: float,
                      run: dict) -> dict[str, ScoreResult]:
    """An in-memory run's results: every rank's units gathered, merged and sorted by index."""
    gathered = ctx.all_gather("gathering scores", (kept, used))
    for _, part_used in gathered:
        for name, info in part_used.items():
            used.setdefault(name, info)
    merged = _merge(a for _, a in sorted((k, a) for part, _ in gathered for k, a in part.items()))
    return _results(merged, used, report, time.perf_counter() - start_time, run)


def _merged_chunks(folder: RunFolder, used: dict, report: dict, start_time: float,
                   run: dict) -> tuple[dict[str, ScoreResult], dict[int, str]]:
    """A resumable run's results and the chunks' checksums.

    Every chunk file is read back (checksums verified), merged and sorted by index.
    """
    checksums = {}

    def chunks():
        for k in range(folder.num_chunks):
            arrays, record = folder.read(k)
            checksums[k] = record["sha256"]
            for name, info in record["used"].items():
                used.setdefault(name, info)
            yield arrays

    results = _results(_merge(chunks()), used, report, time.perf_counter() - start_time, run)
    return results, checksums


def _score(models, data, single: bool, *, method, statistic, probes, seed, batch_size, device, num_workers, out,
           chunk_size, overwrite, timeout, progress, provenance, channels_last=False,
           **estimator_kwargs) -> dict[str, ScoreResult]:
    """The body of :func:`score` and :func:`score_models`; ``single`` picks the one-model file layout."""
    start_time = time.perf_counter()
    models = _named_models(models)
    _check_run_options(batch_size, chunk_size, out)
    if chunk_size is None:
        _check_unchunked_out(out, list(models), single, overwrite)
    dataset, batch_size, loader_opts, custom = _unpack(data, batch_size, num_workers)
    n = len(dataset)
    if n == 0:
        raise DataError("the dataset is empty; nothing to score")
    device = _resolve_device(device, next(iter(models.values())))
    ctx, device = distributed.setup(device, timeout)
    if custom is not None and (chunk_size is not None or ctx.world_size > 1):
        raise ConfigError(
            "a DataLoader with a custom sampler or drop_last cannot be sharded or resumed by index; "
            "pass a torch.utils.data.Subset of the dataset (or the DataLoader without its sampler) instead"
        )
    models = {name: m.to(device) for name, m in models.items()}
    if channels_last:
        models = {name: m.to(memory_format=torch.channels_last) for name, m in models.items()}
    estimator = {"method": method, "statistic": statistic, "probes": probes, "seed": seed, **estimator_kwargs}
    if loader_opts["pin_memory"] is None:
        loader_opts["pin_memory"] = device.type == "cuda"
    show = ctx.is_main and (sys.stderr.isatty() if progress is None else progress)
    settings = {
        "requested_method": method, "requested_statistic": statistic, "probes": probes, "seed": seed,
        "batch_size": batch_size, "chunk_size": chunk_size, "device": device.type, "dataset_size": n,
        "channels_last": channels_last, **_scalar_kwargs(estimator_kwargs),
    }
    identity = _identity(models, dataset, settings, ctx, fingerprinted=chunk_size is not None or ctx.world_size > 1)
    report = {"settings": {**settings, "world_size": ctx.world_size, "curvfast": __version__,
                           "torch": torch.__version__,
                           "native_ops": ops.native_available()}, "models": identity["models"],
              "provenance": _provenance(provenance, dataset), "files": _sample_files(dataset)}

    def find_batch_size() -> int:
        return ctx.on_main("finding the batch size", lambda: _auto_batch_size(models, dataset, device, estimator))

    auto_batch = batch_size == AUTO_BATCH
    if auto_batch and chunk_size is None:  # the batch is the unit of work: find it first
        batch_size = find_batch_size()
    unit = chunk_size or batch_size
    folder = RunFolder(out, identity, n, unit, per_model=not single) if chunk_size is not None else None
    if folder is not None:
        plan = ctx.on_main("checking the run folder", lambda: folder.open(overwrite))
    else:
        plan = {"todo": list(range(-(-n // unit))) if custom is None else [0], "done": 0, "corrupt": []}
    try:  # the run folder's lock is held until the end, whatever happens
        if batch_size == AUTO_BATCH:  # a resumable run: found once, recorded in the manifest, reused on resume
            batch_size = plan.get("batch_size") or find_batch_size()
            if ctx.is_main:
                folder.record(batch_size=batch_size)
        report["settings"].update(batch_size=batch_size, batch_size_auto=auto_batch)
        first: dict = {}  # the calibration batch's results, reused when that batch comes up
        widths = plan.get("pass_widths")
        if widths is None:  # a new run
            widths = _measured_widths(ctx, folder, models, dataset, batch_size, device, estimator, first, channels_last)
        report["settings"]["pass_widths"] = widths
        mine = plan["todo"][ctx.rank::ctx.world_size]
        loader, sizes = _this_ranks_loader(dataset, mine, unit, batch_size, custom, loader_opts)
        kept, used = {}, {}
        clock, scoring_start = _DeviceClock(device), time.perf_counter()
        with _pinned(models, widths):
            batches = _score_batches(models, loader, device, sizes, show, estimator, first, clock, channels_last)
            for pos, arrays, unit_used in (batches if mine else ()):
                used.update(unit_used)
                if folder is not None:
                    folder.write(mine[pos], arrays, unit_used)
                else:
                    kept[mine[pos]] = arrays
        ctx.barrier("their chunks")
        run = {"world_size": ctx.world_size, "chunks": len(plan["todo"]) + plan["done"], "chunks_reused": plan["done"],
               "chunks_computed": len(plan["todo"]), "chunks_corrupt": len(plan["corrupt"]),
               **clock.stats(time.perf_counter() - scoring_start, device)}
        if folder is None:
            results = _gathered_results(ctx, kept, used, report, start_time, run)
            if ctx.is_main:
                _warn_rounding_floor(results)
                if out is not None:
                    _write_results(out, results, single)
            return results
        main_results = {}

        def merge_chunks() -> None:
            results, checksums = _merged_chunks(folder, used, report, start_time, run)
            main_results.update(results)
            _write_results(out, main_results, single)
            folder.finish(checksums, {"last_run": run})

        ctx.on_main("merging the chunks", merge_chunks)
        _warn_rounding_floor(main_results)
        return main_results if ctx.is_main else _read_results(out, list(models), single, run)
    finally:
        if folder is not None:
            folder.close()


def _read_results(out: str, names: list[str], single: bool, run: dict) -> dict[str, ScoreResult]:
    """The merged results rank 0 wrote, as every other rank returns them."""
    results = {name: load_result(out if single else os.path.join(out, name)) for name in names}
    for res in results.values():
        res.run = run
    return results


def load_result(folder: str) -> ScoreResult:
    """Read a one-model run folder back (``results.json``, ``scores.npz`` and the file paths of ``samples.csv``).

    Args:
        folder: The run folder of one model (``out``, or ``out/<name>`` of a several-model run).

    Returns:
        The :class:`ScoreResult` the run returned.

    Raises:
        FileNotFoundError: The folder holds no finished run (``results.json`` and ``scores.npz``).
        DataError: ``folder`` is the index of a several-model run (its models' folders hold the results).
    """
    import csv

    names = {k: os.path.join(folder, f) for k, f in (("meta", "results.json"), ("npz", "scores.npz"))}
    if os.path.isfile(names["meta"]) and not os.path.isfile(names["npz"]):
        with open(names["meta"]) as f:
            models = json.load(f).get("models")
        if models:
            raise DataError(f"{folder!r} holds several models' runs; name one: "
                            f"{', '.join(os.path.join(folder, n) for n in models)}")
    for path in names.values():
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path!r} does not exist; is {folder!r} a finished `curvfast score` run folder?")
    with open(names["meta"]) as f:
        meta = json.load(f)
    with np.load(names["npz"]) as z:
        a = {k: z[k] for k in z.files}
    files, table = None, os.path.join(folder, f"{TABLE}.csv")
    if os.path.isfile(table):
        with open(table, newline="") as f:
            rows = list(csv.DictReader(f))
        files = [r["path"] for r in rows] if rows and "path" in rows[0] else None
    return ScoreResult(a["index"], a["score"], a.get("stderr"), a["loss"], a["label"], meta["settings"],
                       meta["summary"]["seconds"], meta.get("run", {}), prediction=a.get("prediction"), files=files,
                       classes=meta.get("classes"), provenance=meta.get("provenance", {}),
                       rounding_floor=a.get("rounding_floor"))


def score_models(
    models: Mapping[str, nn.Module] | Sequence[nn.Module],
    data,
    *,
    method: str = "auto",
    statistic: str | None = None,
    probes: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    out: str | None = None,
    chunk_size: int | None = None,
    overwrite: bool = False,
    timeout: float = distributed.DEFAULT_TIMEOUT,
    progress: bool | None = None,
    provenance: Mapping | None = None,
    **estimator_kwargs,
) -> dict[str, ScoreResult]:
    """Score every sample of ``data`` with several models (shadow models) in one pass over the data.

    The data are read and decoded once; each batch is scored by every model as it arrives.

    Args:
        models: a dict ``name -> nn.Module`` (or a list, named ``model0, model1, …``); names are folder names.
        data: as for :func:`score`.
        method: as for :func:`score`.
        statistic: as for :func:`score`.
        probes: as for :func:`score`.
        seed: as for :func:`score`.
        batch_size: as for :func:`score`.
        device: as for :func:`score`.
        num_workers: as for :func:`score`.
        chunk_size: as for :func:`score`.
        overwrite: as for :func:`score`.
        timeout: as for :func:`score`.
        progress: as for :func:`score`.
        provenance: as for :func:`score`; a ``"models"`` entry ``{name: {"checkpoint": ...}}`` adds per-model
            values.
        **estimator_kwargs: as for :func:`score`.
        out: run folder; the files are ``out/<name>/{scores.npz, results.json}`` plus an index
            ``out/results.json``.

    Returns:
        ``{name: ScoreResult}`` on every rank.

    Raises:
        ConfigError, DataError, RunFolderBusy, PeerError, NonFiniteError: as for :func:`score`.
    """
    return _score(
        models, data, False, method=method, statistic=statistic, probes=probes, seed=seed, batch_size=batch_size,
        device=device, num_workers=num_workers, out=out, chunk_size=chunk_size, overwrite=overwrite, timeout=timeout,
        progress=progress, provenance=provenance, **estimator_kwargs,
    )


def score(
    model: nn.Module,
    data: torch.utils.data.Dataset | torch.utils.data.DataLoader,
    *,
    method: str = "auto",
    statistic: str | None = None,
    probes: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    out: str | None = None,
    chunk_size: int | None = None,
    overwrite: bool = False,
    timeout: float = distributed.DEFAULT_TIMEOUT,
    progress: bool | None = None,
    provenance: Mapping | None = None,
    **estimator_kwargs,
) -> ScoreResult:
    r"""Score every sample of ``data`` (a Dataset, or a DataLoader whose batch size and workers are kept).

    Each sample :math:`i` gets the curvature of its loss at its input, e.g. with the default statistic

    .. math:: s_i = \\operatorname{tr} \\nabla_x^2 \\, \\ell(f(x_i), y_i),

    computed by :func:`curvfast.input_curvature` batch by batch, with random probes keyed by
    ``(seed, i)`` so that the scores do not depend on batching, order or the number of processes.
    Runs unchanged under ``torchrun --nproc_per_node=N``: samples are sharded by index, and every
    rank returns the full result (identical to one process).

    Args:
        model: an ``nn.Module`` returning logits (scored in eval mode; its mode is restored).
        data: a map-style Dataset of ``(x, y)``, or a DataLoader over one.
        method: a registered estimator (:data:`curvfast.curvature.METHODS`), default ``"auto"``.
        statistic: ``"trace"`` (default), ``"frobenius"``, ``"top_eigenvalue"`` or ``"spectrum"``.
        probes: probes of a random method (default: the estimator's).
        seed: keys the probes with the dataset index.
        batch_size: samples per batch (a DataLoader's own batch size wins), or ``"auto"``: on CUDA the largest
            batch that fits the free memory with a 20% margin, found once per run from the peaks of trial
            batches, recorded in ``settings`` (and the manifest, so a resumed run reuses it); 64 on a CPU.
        device: ``"cuda"`` means ``cuda:LOCAL_RANK`` under torchrun; default: the model's device.
        num_workers: DataLoader worker processes (pinned memory on CUDA).
        out: run folder; writes ``scores.npz`` (``index``, ``score``, ``loss``, ``label``, ``prediction``, and
            ``stderr`` for random methods), ``results.json`` (provenance, settings, summary) and the per-sample
            table ``samples.csv`` / ``samples.parquet`` (:meth:`ScoreResult.columns`, with file paths and class
            names where the dataset has them) atomically.
        chunk_size: samples per chunk; makes the run resumable (needs ``out``): calling again
            computes only missing or corrupt chunks. A multiple of ``batch_size`` keeps the
            batches of an unchunked run.
        overwrite: discard a run folder that was started with other settings, model or data.
        timeout: seconds any collective may wait for the other ranks before raising.
        progress: show a progress bar (None: when stderr is a terminal).
        provenance: what ``results.json`` records under ``provenance`` besides the command line, the curvfast
            version and the dataset's type: e.g. ``{"dataset": "imagefolder", "root": ..., "split": "val",
            "checkpoint": ..., "model": ...}``.
        **estimator_kwargs: further :func:`curvfast.input_curvature` options (``top_classes``, ``step``,
            ``precision``...), and ``channels_last=True``: the model and 4-D inputs in channels-last memory format.

    Returns:
        A :class:`ScoreResult`, arrays sorted by dataset index; ``run`` holds, on CUDA,
        ``scoring_s`` (the batches' wall time), ``device_busy_s`` (CUDA-event time of the curvature passes in it)
        and ``peak_memory_bytes``.

    Raises:
        ConfigError: a bad option, or a run folder started with other settings (without ``overwrite``).
        DataError: an empty dataset, or items that are not ``(tensor, label)``.
        RunFolderBusy: another process holds the run folder.
        PeerError: another rank failed or timed out.
        NonFiniteError: a sample's score or loss is not finite.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module returning logits (got {type(model).__name__}); use score_models() "
                        "for several")
    results = _score(
        {"model": model}, data, True, method=method, statistic=statistic, probes=probes, seed=seed,
        batch_size=batch_size,
        device=device, num_workers=num_workers, out=out, chunk_size=chunk_size, overwrite=overwrite, timeout=timeout,
        progress=progress, provenance=provenance, **estimator_kwargs,
    )
    return results["model"]
