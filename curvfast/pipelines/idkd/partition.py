"""Splits of a labelled set across nodes: non-IID by Dirichlet(alpha) per class, or IID (``iid_partition``).

For every class k a share vector q_k ~ Dirichlet(alpha * 1_n) is drawn and the class-k samples
(shuffled) are cut into n consecutive pieces of sizes proportional to q_k. Small alpha gives
skewed nodes (alpha = 0.1: most nodes hold one to three classes), alpha -> inf an IID split.
Draws are repeated (same generator, so still reproducible by ``seed``) until every node holds at
least ``min_size`` samples.
"""
from __future__ import annotations

import numpy as np

from curvfast.errors import ConfigError

__all__ = ["PARTITIONS", "dirichlet_partition", "iid_partition", "class_histogram"]

PARTITIONS = ("dirichlet", "iid")


def dirichlet_partition(labels, num_nodes: int, alpha: float, seed: int = 0, min_size: int = 10,
                        max_tries: int = 1000) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into ``num_nodes`` disjoint sorted index arrays covering every sample."""
    labels = np.asarray(labels)
    if not (alpha > 0 and np.isfinite(alpha)):
        raise ConfigError(f"alpha must be a positive finite number (got {alpha!r}); 0.1 is strongly non-IID")
    if num_nodes < 1 or num_nodes * min_size > len(labels):
        raise ConfigError(f"cannot give {num_nodes} nodes {min_size} samples each from {len(labels)} samples; "
                         "lower --nodes or --min-samples")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
        for k in classes:
            idx = rng.permutation(np.flatnonzero(labels == k))
            share = rng.dirichlet(np.full(num_nodes, float(alpha)))
            cuts = (np.cumsum(share)[:-1] * len(idx)).round().astype(int)
            for node, piece in enumerate(np.split(idx, cuts)):
                parts[node].append(piece)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise ConfigError(f"no Dirichlet({alpha}) split in {max_tries} draws gives every node >= {min_size} samples; "
                     "raise alpha or lower --nodes")


def class_histogram(labels, parts, num_classes: int) -> np.ndarray:
    """``(num_nodes, num_classes)`` sample counts per node and class."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def iid_partition(num_samples: int, num_nodes: int, seed: int = 0, min_size: int = 10) -> list[np.ndarray]:
    """A uniformly random split of ``range(num_samples)`` into ``num_nodes`` sorted parts whose sizes differ by at most one."""
    if num_nodes < 1 or num_nodes * min_size > num_samples:
        raise ConfigError(f"cannot give {num_nodes} nodes {min_size} samples each from {num_samples} samples; "
                         "lower --nodes or --min-samples")
    perm = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(part) for part in np.array_split(perm, num_nodes)]
