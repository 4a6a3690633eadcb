"""Per-node in-distribution scores for the public set (higher = more like the node's own data).

- ``msp``: maximum softmax probability max_c softmax(f(x))_c (Hendrycks & Gimpel), the detector of
  the IDKD paper.
- ``knn``: minus the distance from the L2-normalised penultimate feature phi(x)/||phi(x)|| to its
  k-th nearest neighbour among the node's own training features (Sun et al., ICML 2022). It asks
  "is x close to *this node's* data", which is what IDKD's filter is meant to decide, and it does
  not share MSP's over-confidence on far-away inputs.

A node calibrates its threshold on its held-out private samples (``calibrated_threshold``).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DETECTORS", "forward_with_features", "msp", "knn_score", "calibrated_threshold", "node_scores"]

DETECTORS = ("msp", "knn")


@torch.no_grad()
def forward_with_features(model: nn.Module, x: torch.Tensor, batch_size: int = 512):
    """``(logits, features)`` on the CPU in eval mode; features are the input of the model's last ``nn.Linear``.
    ``x`` may live anywhere: each batch runs on the model's device."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not head:
        raise TypeError("the model has no nn.Linear layer to take penultimate features from; use detector 'msp'")
    captured = []
    hook = head[-1].register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].flatten(1).float().cpu()))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        logits = torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
    finally:
        hook.remove()
        model.train(was_training)
    return logits, torch.cat(captured)


def msp(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability per row."""
    return torch.softmax(logits.float(), 1).amax(1)


def knn_score(reference: torch.Tensor, query: torch.Tensor, k: int = 5) -> torch.Tensor:
    """``-||q_hat - r_hat||`` to the k-th nearest reference row (rows L2-normalised); ``k`` is capped at the
    number of reference rows."""
    if len(reference) == 0:
        raise ValueError("knn_score needs at least one reference feature")
    ref = nn.functional.normalize(reference.double(), dim=1)
    q = nn.functional.normalize(query.double(), dim=1)
    dist = torch.cdist(q, ref)
    return -dist.kthvalue(min(k, len(ref)), dim=1).values.float()


def calibrated_threshold(calibration_scores: torch.Tensor, tpr: float = 0.95) -> float:
    """The score threshold that accepts a fraction >= ``tpr`` of the calibration (in-distribution) samples."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1] (got {tpr!r})")
    if calibration_scores.numel() == 0:
        raise ValueError("the calibration set is empty; raise calib_fraction or give the node more data")
    return float(torch.quantile(calibration_scores.double(), 1.0 - tpr, interpolation="lower"))


def node_scores(kind: str, model: nn.Module, reference_x: torch.Tensor, calib_x: torch.Tensor, public_x: torch.Tensor,
                k: int = 5):
    """A node's ``(public_logits, calibration_scores, public_scores)`` for detector ``kind``; ``reference_x`` are
    the node's training samples (the k-NN reference set)."""
    if kind not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS} (got {kind!r})")
    public_logits, public_feats = forward_with_features(model, public_x)
    calib_logits, calib_feats = forward_with_features(model, calib_x)
    if kind == "msp":
        return public_logits, msp(calib_logits), msp(public_logits)
    reference = forward_with_features(model, reference_x)[1]
    return public_logits, knn_score(reference, calib_feats, k), knn_score(reference, public_feats, k)
