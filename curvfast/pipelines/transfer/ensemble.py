"""Majority-vote ensembles and member selection by low mutual transferability.

Majority vote: each member votes for its arg-max class; the class with the most votes wins.
**Tie-breaking**: among the classes tied for the most votes, the one with the highest mean
softmax probability over all members wins; if that is tied too, the lowest class index wins.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["vote_scores", "majority_vote", "MajorityVote", "mutual_transfer", "select_members"]


def vote_scores(logits: list[torch.Tensor]) -> torch.Tensor:
    """Scores (B, C) whose arg-max is the majority vote with the documented tie-breaking:
    votes_c + mean_m softmax(z_m)_c / 2. The second term is at most 1/2, so it never outweighs one
    vote; ``torch.argmax`` returns the first maximum, i.e. the lowest class index on a remaining tie."""
    if not logits:
        raise ValueError("majority vote needs at least one member")
    stacked = torch.stack(logits)                                            # (M, B, C)
    votes = nn.functional.one_hot(stacked.argmax(-1), stacked.shape[-1]).sum(0).to(stacked.dtype)
    return votes + stacked.softmax(-1).mean(0) / 2


def majority_vote(logits: list[torch.Tensor]) -> torch.Tensor:
    """Majority-vote labels (B,) from the members' logits (see the module docstring)."""
    return vote_scores(logits).argmax(-1)


class MajorityVote(nn.Module):
    """An ensemble whose forward returns ``vote_scores`` (arg-max = majority vote). Not
    differentiable through the vote: attack it through its members (``ensemble_pgd``)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("MajorityVote needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return vote_scores([m(x) for m in self.members])


def mutual_transfer(matrix: np.ndarray) -> np.ndarray:
    """Symmetric mutual transferability (T_st + T_ts) / 2; a pair with an undefined metric (NaN:
    one model could not be fooled at all) counts as fully transferable, so it is never preferred."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"transfer matrix must be square (got shape {m.shape})")
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
        raise ValueError(f"ensemble size k must be in [1, {len(pool)}] (got {k})")
    if k == 1:
        return pool[:1]
    first = min(((i, j) for n, i in enumerate(pool) for j in pool[n + 1:]), key=lambda p: (mutual[p], p))
    chosen = list(first)
    while len(chosen) < k:
        rest = [c for c in pool if c not in chosen]
        chosen.append(min(rest, key=lambda c: (mutual[c, chosen].max(), mutual[c, chosen].mean(), c)))
    return chosen
