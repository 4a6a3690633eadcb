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
    r"""An ensemble whose forward returns the log of its vote shares: logits whose arg-max is the majority vote.

    .. math:: \log p_c, \quad p_c = s_c / (M + \tfrac{1}{2}), \quad s = \mathrm{vote\_scores}

    The shares p sum to 1, so these are valid logits for torchattacks (``get_logits``, ``MultiAttack``,
    ``save``'s robust accuracy, the targeted modes' class count) and for a cross-entropy. Not differentiable
    through the votes: attack it through its members (``ensemble_pgd``, ``EnsemblePGD``).

    The container has no train/eval mode of its own: ``training`` is True when every member is in training
    mode (so torchattacks, which puts a model it found in training mode back with ``.train()``, never switches
    an evaluating member to training), and ``train()``/``eval()`` set the members'.

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

    @property
    def training(self) -> bool:
        """Whether every member is in training mode."""
        members = self.__dict__.get("_modules", {}).get("members")
        return members is not None and all(m.training for m in members)

    @training.setter
    def training(self, mode: bool) -> None:
        """No flag of its own: ``nn.Module.train`` sets the members' modes next."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The log vote shares of the members on ``x``.

        Args:
            x: The inputs (B, ...).

        Returns:
            Logits (B, C): ``log(vote_scores / (M + 1/2))``.
        """
        scores = vote_scores([m(x) for m in self.members]) / (len(self.members) + 0.5)
        return scores.clamp_min(torch.finfo(scores.dtype).tiny).log()
