"""The verified set: a small class-balanced subset of the (noisy) training data that Verifix trusts.

Published recipe (docs/verifix.md, step 1): per class, the samples with the *lowest* input-loss
curvature under the model trained on the noisy labels; memorised (flipped) labels sit in
high-curvature regions, so low curvature ≈ clean. Any curvfast estimator can rank them
(``method``: any name of ``curvfast.curvature.METHODS``: "auto"/"exact" trace, "hutchinson", "fd" as
published, "zo", ...); "random" picks a class-balanced random subset (the published ablation). Classes come from the dataset's labels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

import curvfast.curvature as curvature
from curvfast.engine import score
from curvfast.errors import ConfigError
from curvfast.pipelines.common.data import dataset_labels

__all__ = ["Selection", "select_verified", "selection_methods"]


def selection_methods() -> tuple[str, ...]:
    """What can rank the verified set now: every estimator in ``curvfast.curvature.METHODS``, and ``random``."""
    return (*curvature.METHODS, "random")


@dataclass
class Selection:
    """``indices`` into the dataset (sorted), and the curvature of every sample (None for random)."""

    indices: np.ndarray
    scores: np.ndarray | None
    method: str


def _balanced_quota(counts: np.ndarray, size: int) -> np.ndarray:
    """Per-class quotas summing to ``size``: as equal as possible, capped by each class's count."""
    quota = np.zeros_like(counts)
    left = size
    while left > 0:
        open_classes = np.flatnonzero(quota < counts)
        share = max(1, left // len(open_classes))
        for c in open_classes:
            take = min(share, counts[c] - quota[c], left)
            quota[c] += take
            left -= take
            if left == 0:
                break
    return quota


def select_verified(
    model: nn.Module, dataset, size: int, *, method: str = "auto", probes: int | None = None, seed: int = 0,
    batch_size: int = 128, device=None, num_workers: int = 0, progress: bool | None = None,
) -> Selection:
    """Class-balanced ``size`` samples of ``dataset`` with the lowest curvature per class (scored in
    batches of ``batch_size`` read by ``num_workers`` DataLoader workers)."""
    if method not in selection_methods():
        raise ConfigError(f"selection method must be one of {', '.join(selection_methods())} (got {method!r})")
    labels = dataset_labels(dataset)
    if not isinstance(size, int) or not 1 <= size <= len(labels):
        raise ConfigError(f"verified size must be an int in [1, {len(labels)}] (the dataset size) (got {size!r})")
    classes, counts = np.unique(labels, return_counts=True)
    quota = _balanced_quota(counts, size)
    if method == "random":
        rng = np.random.default_rng(seed)
        key, scores, used = rng.random(len(labels)), None, "random"
    else:
        res = score(model, dataset, method=method, probes=probes, seed=seed, batch_size=batch_size, device=device,
                    num_workers=num_workers, progress=progress)
        key, scores, used = res.score, res.score, res.settings["method"]
    chosen = [np.flatnonzero(labels == c)[np.argsort(key[labels == c], kind="stable")[:q]] for c, q in zip(classes, quota)]
    return Selection(np.sort(np.concatenate(chosen)), scores, used)
