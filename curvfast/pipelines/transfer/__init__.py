"""Adversarial transferability (TREND, docs/transfer.md): quantised models with straight-through
(BPDA) gradients, attacks, transfer counts and the fitted transfer metric, robust ensembles.

``curvfast transfer`` runs the whole study; docs/transfer.md describes it.
"""
from curvfast.pipelines.transfer.attacks import ENSEMBLE_RULES, SINGLE_ATTACKS, attack, ensemble_direction, ensemble_pgd
from curvfast.pipelines.transfer.ensemble import MajorityVote, majority_vote, mutual_transfer, select_members, vote_scores
from curvfast.pipelines.transfer.members import MemberSpec, build_member, load_or_train, parse_spec, train_member
from curvfast.pipelines.transfer.pipeline import DEFAULT_EPS, DEFAULT_MODELS, DEFAULT_ROBUST_EPS, run_transfer
from curvfast.pipelines.transfer.quantize import (
    DoReFaActivation, DoReFaWeight, Halftone, InputQuantized, InputQuantizer, dorefa, halftone, quantize_uniform,
    sharpen_halftone, straight_through,
)
from curvfast.pipelines.transfer.transfer import Fit, fit_saturating, pair_counts, pair_groups, saturating, transfer_matrix, transfer_metric

__all__ = [
    "ENSEMBLE_RULES", "SINGLE_ATTACKS", "attack", "ensemble_direction", "ensemble_pgd",
    "MajorityVote", "majority_vote", "mutual_transfer", "select_members", "vote_scores",
    "MemberSpec", "build_member", "load_or_train", "parse_spec", "train_member",
    "DEFAULT_EPS", "DEFAULT_MODELS", "DEFAULT_ROBUST_EPS", "run_transfer",
    "DoReFaActivation", "DoReFaWeight", "Halftone", "InputQuantized", "InputQuantizer", "dorefa", "halftone",
    "quantize_uniform", "sharpen_halftone", "straight_through",
    "Fit", "fit_saturating", "pair_counts", "pair_groups", "saturating", "transfer_matrix", "transfer_metric",
]
