"""Train on noisy labels, correct the model with Verifix, report clean test accuracy before/after (docs/verifix.md).

Verifix is post-training label-noise correction with one weight update per layer. The command
trains a zoo model on labels with synthetic noise, picks a verified set (lowest input-loss
curvature per class), applies Verifix's soft projector W <- W P to every Conv2d/Linear layer with
alpha chosen on a validation split, and writes results.json (accuracy_before, accuracy_after,
alpha, verified_size, seconds), verified.npz and model.pt to the run folder.

The command is :class:`Config` + :func:`run`. ``verifix(model, verified, validation)`` → (corrected model, report); building blocks:
``add_label_noise``, ``select_verified`` (lowest curvature per class), ``layer_spectra``
(streamed per-layer activation spectra), ``soft_projector`` / ``apply_projectors``.
"""
from curvfast.pipelines.verifix.noise import NOISE_TYPES, add_label_noise
from curvfast.pipelines.verifix.patches import ConvPatches, layer_operator, layer_rows, target_layers
from curvfast.pipelines.verifix.pipeline import PRESETS, Config, Relabeled, run, summary
from curvfast.pipelines.verifix.projector import PUBLISHED_ALPHAS, apply_projectors, soft_projector, soft_scaling
from curvfast.pipelines.common.data import dataset_labels
from curvfast.pipelines.verifix.selection import Selection, select_verified, selection_methods
from curvfast.pipelines.verifix.spectra import (DEFAULT_STATE_BUDGET, PUBLISHED_MAX_ROWS, LayerSpectrum, RowSampler,
                                              iter_layer_spectra, layer_spectra)
from curvfast.pipelines.verifix.verifix import VerifixReport, projectors_for, verifix

__all__ = [
    "Config", "PRESETS", "run", "summary", "Relabeled", "dataset_labels",
    "verifix", "VerifixReport", "projectors_for", "add_label_noise", "NOISE_TYPES", "select_verified", "Selection",
    "selection_methods", "layer_spectra", "iter_layer_spectra", "LayerSpectrum", "layer_rows", "target_layers", "soft_projector",
    "soft_scaling", "apply_projectors", "PUBLISHED_ALPHAS", "PUBLISHED_MAX_ROWS", "ConvPatches", "layer_operator",
    "RowSampler", "DEFAULT_STATE_BUDGET",
]
