"""What a detector costs: parameters, FLOPs (inference and training), memory (state and activations).

- FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts matrix
  multiplications and convolutions (2 FLOPs per multiply-add) and ignores element-wise work.
- Detector state: bytes of the tensors a detector keeps after fitting (class means, precision
  matrix, feature bank, per-class statistics).
- Activation memory: bytes of the tensors autograd saves for the backward pass of one training
  step (``torch.autograd.graph.saved_tensors_hooks``), storage counted once; it scales with the
  batch, so VRM's extra auxiliary samples show up here.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "inference_flops", "train_step_cost", "state_bytes"]


def count_parameters(model: torch.nn.Module) -> int:
    """Number of scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def inference_flops(detector, x: torch.Tensor) -> float | None:
    """FLOPs per sample of ``detector.predict(x)`` (forward passes, ODIN's backward, distance products).

    None where ``FlopCounterMode`` cannot run the detector: its module tracker refuses ``autograd.grad``
    w.r.t. a leaf tensor that was a module's input (torch 2.x), which the curvature engine's input
    derivatives take."""
    try:
        with FlopCounterMode(display=False) as counter:
            detector.predict(x)
    except RuntimeError as err:
        if "_will_engine_execute_node" not in str(err):
            raise
        return None
    return counter.get_total_flops() / len(x)


def train_step_cost(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> dict:
    """FLOPs and saved-activation bytes (parameters excluded) of one training-mode forward + backward
    on the batch ``(x, targets)``, measured on a copy so the model's BatchNorm statistics stay as they are."""
    model = copy.deepcopy(model).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with FlopCounterMode(display=False) as counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(model(x), targets)
        loss.backward()
    return {"flops": counter.get_total_flops(), "activation_bytes": sum(seen.values()), "batch": len(x)}


def state_bytes(detector) -> int:
    """Bytes of the tensors a fitted detector stores (not counting the model)."""
    return sum(v.numel() * v.element_size() for v in vars(detector).values() if isinstance(v, torch.Tensor))
