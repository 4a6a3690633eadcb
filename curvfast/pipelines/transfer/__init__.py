"""Adversarial transferability (TREND): transfer matrix, fitted metric, robust ensembles (docs/transfer.md).

The command trains a zoo of models (architecture, seed, optimiser, input/weight/activation
quantisation), attacks each over an eps sweep, fits N(eps) = a(1 - exp(b eps)) to the transfer
counts, reports N_hat_s->t / N_hat_s->s at --metric-eps, and attacks majority-vote ensembles.

The command is :class:`Config` + :func:`run`. Building blocks: quantised models with
straight-through (BPDA) gradients, attacks, transfer counts and the fitted transfer metric,
majority-vote ensembles; ``curvfast.pipelines.transfer.torchattacks_api.EnsemblePGD`` is the
ensemble attack as a torchattacks ``Attack`` (needs torchattacks).
"""
from curvfast.pipelines.transfer.attacks import ENSEMBLE_RULES, SINGLE_ATTACKS, attack, ensemble_direction, ensemble_pgd
from curvfast.pipelines.transfer.ensemble import MajorityVote, majority_vote, mutual_transfer, select_members, vote_scores
from curvfast.pipelines.transfer.members import MemberSpec, build_member, load_or_train, parse_spec, train_member
from curvfast.pipelines.transfer.pipeline import PRESETS, Config, run, summary
from curvfast.pipelines.transfer.quantize import (
    DoReFaActivation, DoReFaWeight, Halftone, InputQuantized, InputQuantizer, dorefa, halftone, quantize_uniform,
    sharpen_halftone, straight_through,
)
from curvfast.pipelines.transfer.transfer import Fit, fit_saturating, pair_counts, pair_groups, saturating, transfer_matrix, transfer_metric

__all__ = [
    "Config", "PRESETS", "run", "summary",
    "ENSEMBLE_RULES", "SINGLE_ATTACKS", "attack", "ensemble_direction", "ensemble_pgd",
    "MajorityVote", "majority_vote", "mutual_transfer", "select_members", "vote_scores",
    "MemberSpec", "build_member", "load_or_train", "parse_spec", "train_member",
    "DoReFaActivation", "DoReFaWeight", "Halftone", "InputQuantized", "InputQuantizer", "dorefa", "halftone",
    "quantize_uniform", "sharpen_halftone", "straight_through",
    "Fit", "fit_saturating", "pair_counts", "pair_groups", "saturating", "transfer_matrix", "transfer_metric",
]
