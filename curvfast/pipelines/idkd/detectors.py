"""Per-node in-distribution scores for the public set (higher = more like the node's own data).

Any detector registered in ``curvfast.ood.DETECTORS`` (``--detector``) filters the public set; its
OoD score is negated. ``msp`` (maximum softmax probability, Hendrycks & Gimpel) is the detector of
the IDKD paper; ``knn`` (the k-th nearest-neighbour distance of the L2-normalised penultimate
feature to the node's own training features, Sun et al., ICML 2022) asks "is x close to *this
node's* data", which is what IDKD's filter is meant to decide, and it does not share MSP's
over-confidence on far-away inputs.

``curvature`` (:class:`curvfast.ood.InputCurvature`: the trace of the input Hessian of the loss at the
predicted class, exact for piecewise-linear nets) asks whether x lies in a flat region of the node's loss.
Whatever the filter, every node also measures the input curvature of the public set
(``public_curvature``), which the run reports beside the filter's numbers.

A node calibrates its threshold on its held-out private samples (``calibrated_threshold``), or, as the
published code does (``--msp-threshold``), accepts the samples whose maximum softmax probability exceeds a
fixed value (``published_msp_accepts``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from curvfast.errors import ConfigError, DataError
from curvfast.ood import InputCurvature, OutputExtractor, collect_outputs, detector_class

__all__ = ["calibrated_threshold", "published_msp_accepts", "node_scores", "public_curvature"]

BATCH = 512


def calibrated_threshold(calibration_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """The score threshold that accepts a fraction >= ``tpr`` of the calibration (in-distribution) samples."""
    if not 0.0 < tpr <= 1.0:
        raise ConfigError(f"tpr must be in (0, 1] (got {tpr!r})")
    if calibration_scores.numel() == 0:
        raise DataError("the calibration set is empty; raise calib_fraction or give the node more data")
    return float(torch.quantile(calibration_scores.double(), 1.0 - tpr, interpolation="lower"))


def published_msp_accepts(logits: torch.Tensor, threshold: float, temperature: float = 1.0) -> torch.Tensor:
    """The published filter (``train_idkd.py``, ``--conf_threshold`` 0.98): a boolean mask of the samples with
    max_c softmax(logits / T)_c > ``threshold`` (strictly), the same threshold on every node."""
    return torch.softmax(logits.double() / temperature, 1).amax(1) > threshold


def _loader(x: torch.Tensor, y: torch.Tensor | None = None) -> DataLoader:
    y = torch.zeros(len(x), dtype=torch.long) if y is None else y
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def node_scores(kind: str, model: nn.Module, reference_x: torch.Tensor, reference_y: torch.Tensor,
                calib_x: torch.Tensor, public_x: torch.Tensor, k: int = 5):
    """A node's ``(public_logits, calibration_scores, public_scores)`` for detector ``kind`` (float32, CPU).

    ``reference_x`` / ``reference_y`` are the node's training samples and labels, which detectors that
    fit (k-NN's reference set) read; k-NN's ``k`` is capped at their number."""
    settings = {"k": min(k, len(reference_x))} if kind == "knn" else {}
    detector = detector_class(kind)(model, **settings).fit(_loader(reference_x, reference_y))

    public_logits = collect_outputs(OutputExtractor(model), _loader(public_x))[0].float()
    return public_logits, -_ood_scores(detector, calib_x), -_ood_scores(detector, public_x)


def _ood_scores(detector, x: torch.Tensor) -> torch.Tensor:
    """``detector.predict`` over ``x`` in batches of ``BATCH`` (float32, CPU); higher = more OoD."""
    return torch.cat([detector.predict(x[i : i + BATCH]).cpu() for i in range(0, len(x), BATCH)]).float()


def public_curvature(model: nn.Module, public_x: torch.Tensor) -> torch.Tensor:
    """tr of the input Hessian of the loss at the predicted class of every public sample (float32, CPU)."""
    return _ood_scores(InputCurvature(model), public_x)
