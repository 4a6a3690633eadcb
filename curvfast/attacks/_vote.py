"""Majority-vote ensembles.

Each member votes for its arg-max class; the class with the most votes wins.
**Tie-breaking**: among the classes tied for the most votes, the one with the highest mean
softmax probability over all members wins; if that is tied too, the lowest class index wins.
"""
from __future__ import annotations

import torch
from torch import nn

from curvfast.errors import ConfigError

__all__ = ["vote_scores", "majority_vote", "MajorityVote"]


def vote_scores(logits: list[torch.Tensor]) -> torch.Tensor:
    r"""Scores (B, C) whose arg-max is the majority vote with the documented tie-breaking.

    .. math:: s_c = \mathrm{votes}_c + \tfrac{1}{2} \operatorname{mean}_m \operatorname{softmax}(z_m)_c

    The second term is at most 1/2, so it never outweighs one vote; ``torch.argmax`` returns the first maximum,
    i.e. the lowest class index on a remaining tie.

    Args:
        logits: The members' logits, each (B, C).

    Returns:
        The scores (B, C).

    Raises:
        curvfast.errors.ConfigError: With no members.
    """
    if not logits:
        raise ConfigError("majority vote needs at least one member")
    stacked = torch.stack(logits)                                            # (M, B, C)
    votes = nn.functional.one_hot(stacked.argmax(-1), stacked.shape[-1]).sum(0).to(stacked.dtype)
    return votes + stacked.softmax(-1).mean(0) / 2


def majority_vote(logits: list[torch.Tensor]) -> torch.Tensor:
    """Majority-vote labels (B,) from the members' logits (see the module docstring).

    Args:
        logits: The members' logits, each (B, C).

    Returns:
        The winning class per sample (B,).

    Raises:
        curvfast.errors.ConfigError: With no members.
    """
    return vote_scores(logits).argmax(-1)


class MajorityVote(nn.Module):
    """An ensemble whose forward returns ``vote_scores`` (arg-max = majority vote).

    Not differentiable through the vote: attack it through its members (``ensemble_pgd``).

    Args:
        members: The ensemble's classifiers.

    Raises:
        curvfast.errors.ConfigError: With no members.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ConfigError("MajorityVote needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The vote scores of the members on ``x``.

        Args:
            x: The inputs (B, ...).

        Returns:
            :func:`vote_scores` of the members' logits (B, C).
        """
        return vote_scores([m(x) for m in self.members])
