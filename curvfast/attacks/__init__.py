"""Adversarial attacks on single models and on ensembles (the face of ``curvfast.attacks``).

- :func:`attack`: torchattacks' PGD (L-inf), FGSM, PGD-L2 and Carlini-Wagner on one model, seeded;
- :func:`ensemble_pgd`: L-inf PGD against several models at once, each step along
  :func:`ensemble_direction` of the members' input gradients (rules ``sum``, ``vote``, ``agree``;
  Ravikumar, Kodge, Garg and Roy, "TREND: Transferability-Based Robust ENsemble Design", IEEE TAI 2022);
- :class:`EnsemblePGD`: the same attack as a ``torchattacks`` ``Attack`` (needs torchattacks; imported
  on first use);
- :class:`MajorityVote`, :func:`majority_vote`, :func:`vote_scores`: the majority-vote ensemble.
"""
from ._pgd import (
    ENSEMBLE_RULES, SINGLE_ATTACKS, attack, check_pgd_settings, ensemble_direction, ensemble_pgd, input_grads, pgd_linf,
)
from ._vote import MajorityVote, majority_vote, vote_scores

__all__ = ["SINGLE_ATTACKS", "ENSEMBLE_RULES", "attack", "ensemble_pgd", "ensemble_direction", "pgd_linf",
           "input_grads", "check_pgd_settings", "MajorityVote", "majority_vote", "vote_scores", "EnsemblePGD"]


def __getattr__(name: str):
    """``EnsemblePGD`` subclasses a torchattacks class: torchattacks is imported only when it is asked for."""
    if name == "EnsemblePGD":
        from ._torchattacks_api import EnsemblePGD

        return EnsemblePGD
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
