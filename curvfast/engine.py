"""Dataset-level scoring: stream batches through an estimator, keep scores aligned with indices.

dataset → indexed batches → model (eval) → ``input_curvature`` → per-sample arrays → run folder.
Every batch passes its samples' dataset indices as probe keys, so scores do not depend on the
batch size, the order, or the device.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import __version__, ops
from .curvature import input_curvature
from .io import write_json, write_npz

__all__ = ["score", "ScoreResult"]


class _Indexed(Dataset):
    """Wrap a map-style dataset so items come with their index: ``(index, x, y)``."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i][:2]
        return i, x, y


@dataclass
class ScoreResult:
    """Arrays sorted by dataset index: ``index`` (N,), ``score`` (N,) or (N, K) for a spectrum,
    ``stderr`` (N,) or None, ``loss`` and ``label`` (N,)."""

    index: np.ndarray
    score: np.ndarray
    stderr: np.ndarray | None
    loss: np.ndarray
    label: np.ndarray
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict:
        s = self.score if self.score.ndim == 1 else self.score[:, 0]
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
        }


def _indexed_loader(data, batch_size: int, num_workers: int, device: torch.device) -> DataLoader:
    if isinstance(data, DataLoader):
        if not hasattr(data.dataset, "__getitem__") or isinstance(data.dataset, torch.utils.data.IterableDataset):
            raise TypeError("score() needs a map-style dataset (with __getitem__ and __len__) to know each sample's index")
        return DataLoader(
            _Indexed(data.dataset), batch_size=data.batch_size, sampler=data.sampler, num_workers=data.num_workers,
            pin_memory=data.pin_memory, drop_last=data.drop_last,
        )
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise TypeError(f"data must be a map-style Dataset or a DataLoader over one (got {type(data).__name__})")
    return DataLoader(_Indexed(data), batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda")


def _resolve_device(device, model: torch.nn.Module) -> torch.device:
    if device is None:
        param = next(model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but no CUDA GPU is available here; use device='cpu'")
    return device


def score(
    model: torch.nn.Module,
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
    progress: bool | None = None,
    **estimator_kwargs,
) -> ScoreResult:
    """Score every sample of ``data`` (a Dataset, or a DataLoader whose sampler/batch size is kept).

    With ``out=DIR`` writes ``DIR/results.json`` (settings and summary) and ``DIR/scores.npz``
    (``index``, ``score``, ``loss``, ``label`` and ``stderr`` for random methods), atomically.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (got {batch_size!r})")
    device = _resolve_device(device, model)
    loader = _indexed_loader(data, batch_size, num_workers, device)
    if len(loader.dataset) == 0:
        raise ValueError("the dataset is empty; nothing to score")
    model = model.to(device)
    show = sys.stderr.isatty() if progress is None else progress
    from tqdm.auto import tqdm

    parts: dict[str, list] = {"index": [], "score": [], "stderr": [], "loss": [], "label": []}
    used = None
    start = time.perf_counter()
    for idx, x, y in tqdm(loader, desc="curvature", unit="batch", disable=not show):
        if not torch.is_tensor(x):
            raise TypeError("dataset items must be (tensor, label); add a ToTensor() transform")
        x = x.to(device)
        res = input_curvature(
            model, x, torch.as_tensor(y), method=method, statistic=statistic, probes=probes, seed=seed,
            sample_ids=torch.as_tensor(idx), **estimator_kwargs,
        )
        used = used or {"method": res.method, "statistic": res.statistic}
        parts["index"].append(torch.as_tensor(idx).numpy())
        parts["score"].append(res.value.double().cpu().numpy())
        parts["loss"].append(res.loss.double().cpu().numpy())
        parts["label"].append(torch.as_tensor(y).numpy())
        if res.stderr is not None:
            parts["stderr"].append(res.stderr.double().cpu().numpy())
    seconds = time.perf_counter() - start
    arrays = {k: np.concatenate(v) for k, v in parts.items() if v}
    order = np.argsort(arrays["index"], kind="stable")
    arrays = {k: v[order] for k, v in arrays.items()}
    settings = {
        **used, "requested_method": method, "probes": probes, "seed": seed, "batch_size": loader.batch_size,
        "device": str(device), "model": type(model).__name__, "dataset_size": len(loader.dataset),
        "curvfast": __version__, "torch": torch.__version__, "native_ops": ops.native_available(),
        **{k: v for k, v in estimator_kwargs.items() if isinstance(v, (int, float, str, bool))},
    }
    result = ScoreResult(arrays["index"], arrays["score"], arrays.get("stderr"), arrays["loss"], arrays["label"], settings, seconds)
    if out is not None:
        write_npz(os.path.join(out, "scores.npz"), **{k: v for k, v in arrays.items()})
        write_json(os.path.join(out, "results.json"), {"settings": settings, "summary": result.summary()})
    return result
