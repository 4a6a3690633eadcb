"""Adversarial transferability (TREND): transfer matrix, fitted metric, robust ensembles (docs/transfer.md).

The command trains a zoo of models (architecture, seed, optimiser, input/weight/activation
quantisation), attacks each over an eps sweep, fits N(eps) = a(1 - exp(b eps)) to the transfer
counts, reports N_hat_s->t / N_hat_s->s at --metric-eps, and attacks majority-vote ensembles.

The command is :class:`Config` + :func:`run`. Building blocks: quantised models with
straight-through (BPDA) gradients, attacks, transfer counts and the fitted transfer metric,
majority-vote ensembles. The attacks and the majority vote are the library's (:mod:`curvfast.attacks`;
``curvfast.attacks.EnsemblePGD`` is the ensemble attack as a torchattacks ``Attack``).
"""
from curvfast.pipelines.transfer.ensemble import mutual_transfer, select_members
from curvfast.pipelines.transfer.figures import curvature_scatter, fit_curves, transfer_heatmap
from curvfast.pipelines.transfer.members import MemberSpec, build_member, load_or_train, parse_spec, train_member
from curvfast.pipelines.transfer.pipeline import PRESETS, PUBLISHED, Config, protocol, run, summary
from curvfast.pipelines.transfer.quantize import (
    DoReFaActivation, DoReFaWeight, Halftone, InputQuantized, InputQuantizer, dorefa, halftone, quantize_uniform,
    sharpen_halftone, straight_through,
)
from curvfast.pipelines.transfer.transfer import (
    SELF_COUNTS, Fit, denominator_counts, fit_saturating, pair_counts, pair_groups, saturating, transfer_matrix,
    transfer_metric,
)

__all__ = [
    "Config", "PRESETS", "PUBLISHED", "protocol", "run", "summary",
    "mutual_transfer", "select_members", "curvature_scatter", "fit_curves", "transfer_heatmap",
    "MemberSpec", "build_member", "load_or_train", "parse_spec", "train_member",
    "DoReFaActivation", "DoReFaWeight", "Halftone", "InputQuantized", "InputQuantizer", "dorefa", "halftone",
    "quantize_uniform", "sharpen_halftone", "straight_through",
    "SELF_COUNTS", "Fit", "denominator_counts", "fit_saturating", "pair_counts", "pair_groups", "saturating",
    "transfer_matrix", "transfer_metric",
]
