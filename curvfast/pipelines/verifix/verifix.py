"""Verifix: correct a model trained on noisy labels with one weight update per layer.

    spectra  = SVD of every Conv2d/Linear layer's input rows on the verified set (streamed)
    for α in the grid:   model_α = model with W ← W · P_α(spectrum) for every layer
    keep the α with the best validation accuracy, or the original model if none beats it.

The spectra are computed once, a few layers at a time (``iter_layer_spectra``); as each layer's
spectrum arrives, its projector for every α is applied to that α's copy of the model and the
spectrum is freed. So what stays alive is one copy of the model per α (a layer's weight,
C_out x d in float32, is smaller than its d x d float64 spectrum whenever C_out < 2d), not every
layer's spectrum. Each α then costs one validation pass.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from curvfast.curvature import unwrap_model
from curvfast.training import evaluate
from curvfast.pipelines.verifix.projector import PUBLISHED_ALPHAS, apply_projectors, soft_projector
from curvfast.pipelines.verifix.spectra import PUBLISHED_MAX_ROWS, LayerSpectrum, iter_layer_spectra
from curvfast.errors import ConfigError

__all__ = ["verifix", "VerifixReport"]


@dataclass
class VerifixReport:
    """What Verifix did: the chosen ``alpha`` (None when the original model was kept), validation
    accuracy of the original model and of every α, per-layer spectra summaries and timings."""

    alpha: float | None
    validation_before: float
    validation_after: float
    validation_by_alpha: dict[float, float]
    layers: list[dict] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def kept_original(self) -> bool:
        return self.alpha is None

    def to_dict(self) -> dict:
        return {
            "alpha": self.alpha, "kept_original": self.kept_original, "validation_before": self.validation_before,
            "validation_after": self.validation_after,
            "validation_by_alpha": {f"{a:g}": acc for a, acc in self.validation_by_alpha.items()},
            "layers": self.layers, "seconds": self.seconds,
        }


def _layer_summary(spec: LayerSpectrum) -> dict:
    r = spec.spectrum.energy_fraction
    return {
        "name": spec.name, "kind": spec.kind, "dim": spec.dim, "groups": spec.groups, "rows_total": spec.total_rows,
        "rows_used": spec.spectrum.rows, "route": spec.spectrum.route, "rank": int(spec.spectrum.s.shape[-1]),
        "captured_energy": float(r.sum(-1).min()), "effective_rank_1e-4": int((r > 1e-4).sum(-1).max()),
        "seconds": round(spec.seconds, 4),
    }


def projectors_for(spectra: dict[str, LayerSpectrum], alpha: float) -> dict[str, torch.Tensor]:
    """P_α for every layer."""
    return {name: soft_projector(spec.spectrum, alpha) for name, spec in spectra.items()}


def verifix(
    model: nn.Module,
    verified,
    validation,
    *,
    alphas=PUBLISHED_ALPHAS,
    layers: list[str] | None = None,
    max_rows: int | None = PUBLISHED_MAX_ROWS,
    route: str = "auto",
    rank: int | None = None,
    power_iters: int = 1,
    batch_size: int = 128,
    seed: int = 0,
    device=None,
    workers: int = 0,
    progress: bool | None = None,
) -> tuple[nn.Module, VerifixReport]:
    """Return ``(corrected_model, report)``; ``model`` itself is not modified.

    ``verified``: Dataset of (x, y) (or a tensor of inputs) whose activations define the
    projectors. ``validation``: Dataset of (x, y) on which α is chosen from ``alphas``. The
    corrected model is a deep copy; when no α beats the original validation accuracy, the copy
    is the unchanged original and ``report.alpha`` is None. ``workers``: DataLoader processes for
    the spectra and the validation accuracies.
    """
    alphas = tuple(float(a) for a in alphas)
    if not alphas or any(not a >= 1 for a in alphas):
        raise ConfigError(f"alphas must be a non-empty list of values >= 1 (got {alphas}); published: {PUBLISHED_ALPHAS}")
    base = unwrap_model(model)
    seconds = {}
    start = time.perf_counter()
    candidates = {alpha: copy.deepcopy(base) for alpha in alphas}
    summaries = []
    for name, spectrum in iter_layer_spectra(
        base, verified, layers=layers, max_rows=max_rows, route=route, rank=rank, power_iters=power_iters,
        batch_size=batch_size, seed=seed, device=device, workers=workers, progress=progress,
    ):
        summaries.append(_layer_summary(spectrum))
        for alpha, candidate in candidates.items():
            apply_projectors(candidate, {name: soft_projector(spectrum.spectrum, alpha)})
        del spectrum  # only the current group's spectra are alive
    seconds["spectra"] = time.perf_counter() - start  # spectra and the projectors of every α
    start = time.perf_counter()
    before = evaluate(base, validation, batch_size=batch_size, workers=workers)
    by_alpha, best_alpha, best_acc, best_model = {}, None, before, None
    for alpha, candidate in candidates.items():
        by_alpha[alpha] = evaluate(candidate, validation, batch_size=batch_size, workers=workers)
        if by_alpha[alpha] > best_acc:
            best_alpha, best_acc, best_model = alpha, by_alpha[alpha], candidate
    del candidates
    seconds["alpha_search"] = time.perf_counter() - start
    report = VerifixReport(best_alpha, before, best_acc, by_alpha, summaries, {k: round(v, 4) for k, v in seconds.items()})
    return (best_model if best_model is not None else copy.deepcopy(base)), report
