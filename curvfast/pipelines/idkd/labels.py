"""Public-set labelling with an in-distribution filter, and neighbourhood label aggregation.

Each node i, with its model f_i after the initial decentralized training:

1. **Calibration.** An in-distribution score S_i (``detectors``: MSP, the paper's choice, or
   k-NN distance in feature space) on the node's held-out private calibration samples; the
   threshold tau_i is their (1 - tpr) quantile, so a fraction ``tpr`` (0.95) of the node's own data
   would be accepted. (``--msp-threshold``, the published rule: max softmax(f_i(x)/T) > a fixed value.)
2. **Selection.** Public samples with S_i >= tau_i form D_ID^i; their soft labels softmax(f_i(x)/T).
   Vanilla KD skips the filter (every public sample, every node).
3. **Exchange and aggregation.** Indices and soft labels go to neighbours only. Node i's target for
   public sample s is the mixing-weight average over the contributors C_s (node i itself and the
   neighbours that accepted s):  t_s = sum_{j in C_s} W_ij q_j(s) / sum_{j in C_s} W_ij.
   Samples with no contributor are *left out*, so no target is ever empty or all-zero (the published
   code could let a neighbour with no label win and leave an all-zero target). W_ij > 0 for every
   contributor, so the denominator is positive.
"""
from __future__ import annotations

import numpy as np
import torch

from curvfast.errors import DataError

__all__ = ["select_public", "aggregate_labels", "label_quality"]


def select_public(logits: torch.Tensor, accepted: torch.Tensor | None, temperature: float = 1.0):
    """``(indices, soft_labels)`` of the public samples the node's filter ``accepted`` (a boolean mask; ``None``: all
    of them, vanilla KD)."""
    keep = torch.ones(len(logits), dtype=torch.bool) if accepted is None else accepted
    idx = torch.nonzero(keep).flatten()
    return idx, torch.softmax(logits[idx].float() / temperature, 1)


def aggregate_labels(num_public: int, contributions) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted average of soft labels per public sample over the contributors that labelled it.

    ``contributions``: iterable of ``(weight > 0, indices (k,), soft_labels (k, C))``, one per contributor.
    Returns ``(indices, targets)``: the sorted public indices that at least one contributor labelled and
    their targets (rows sum to one). Samples nobody labelled are absent, never zero rows.
    """
    contributions = list(contributions)
    if not contributions:
        raise DataError("aggregate_labels needs at least one contributor")
    num_classes = contributions[0][2].shape[1]
    total = torch.zeros(num_public, num_classes, dtype=torch.float64)
    mass = torch.zeros(num_public, dtype=torch.float64)
    for weight, idx, labels in contributions:
        if not weight > 0:
            raise DataError(f"contributor weights must be positive (got {weight!r})")
        idx = torch.as_tensor(idx, dtype=torch.int64)
        if len(idx) != len(labels) or (len(idx) and (idx.min() < 0 or idx.max() >= num_public)):
            raise DataError("each contribution needs one soft label per index, indices in [0, num_public)")
        if len(torch.unique(idx)) != len(idx):
            raise DataError("a contributor labelled the same public sample twice")
        total.index_add_(0, idx, weight * labels.double())
        mass.index_add_(0, idx, torch.full((len(idx),), float(weight), dtype=torch.float64))
    keep = torch.nonzero(mass > 0).flatten()
    targets = total[keep] / mass[keep, None]
    return keep, (targets / targets.sum(1, keepdim=True)).float()


def label_quality(indices: torch.Tensor, targets: torch.Tensor, public_y: torch.Tensor) -> dict:
    """How good a node's distilled public set is (uses the held-back true public labels, for reporting only):
    the number of targets, the fraction of them that are photo patches, and argmax accuracy on the digits (None
    where there are no targets, or no held-out digits among them)."""
    y = public_y[indices]
    digit = y >= 0
    correct = float(np.round((targets[digit].argmax(1) == y[digit]).double().mean().item(), 6)) if digit.any() else None
    return {"num_targets": int(len(indices)), "photo_fraction": float((~digit).double().mean()) if len(y) else None,
            "digit_label_accuracy": correct}
