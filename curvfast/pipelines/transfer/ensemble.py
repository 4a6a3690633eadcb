"""Ensemble member selection by low mutual transferability (the majority vote itself:
:func:`curvfast.attacks.majority_vote`)."""
from __future__ import annotations

import numpy as np

from curvfast.errors import ConfigError, DataError

__all__ = ["mutual_transfer", "select_members"]


def mutual_transfer(matrix: np.ndarray) -> np.ndarray:
    """Symmetric mutual transferability (T_st + T_ts) / 2; a pair with an undefined metric (NaN:
    one model could not be fooled at all) counts as fully transferable, so it is never preferred."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise DataError(f"transfer matrix must be square (got shape {m.shape})")
    return np.nan_to_num((m + m.T) / 2, nan=1.0)


def select_members(matrix: np.ndarray, k: int, candidates: list[int] | None = None) -> list[int]:
    """Greedy selection of ``k`` members with low mutual transferability.

    Start from the candidate pair with the lowest mutual transfer; then repeatedly add the
    candidate whose largest mutual transfer to the members chosen so far is lowest (ties: lower
    mean, then lower index). Returns indices into ``matrix`` in the order chosen.
    """
    mutual = mutual_transfer(matrix)
    pool = list(range(len(mutual))) if candidates is None else list(candidates)
    if not 1 <= k <= len(pool):
        raise ConfigError(f"ensemble size k must be in [1, {len(pool)}] (got {k})")
    if k == 1:
        return pool[:1]
    first = min(((i, j) for n, i in enumerate(pool) for j in pool[n + 1:]), key=lambda p: (mutual[p], p))
    chosen = list(first)
    while len(chosen) < k:
        rest = [c for c in pool if c not in chosen]
        chosen.append(min(rest, key=lambda c: (mutual[c, chosen].max(), mutual[c, chosen].mean(), c)))
    return chosen
