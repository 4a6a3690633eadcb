"""How many classes or probes go through one batched (vmapped or replicated) pass.

Measured on the 2-core CPU (CIFAR-stem ResNet-18, batch 32, 9 class VJPs from one forward):
vmapping 1, 2, 3, 5 and 9 classes at a time took 1.15, 1.21, 1.25, 2.04 and 2.81 s — on a CPU
the batched pass pays once the effective batch outgrows the caches, so chunks aim at about 64
samples per pass. On a GPU one pass over everything amortises kernel launches, bounded by an
element budget for the (chunk, B, D) tensors.
"""
from __future__ import annotations

import torch

CPU_SAMPLES_PER_PASS = 64
GPU_ELEMENTS_PER_PASS = 2**26


def chunk_size(requested: int | None, total: int, batch: int, dim: int, device: torch.device) -> int:
    """``requested`` if given, else a device-dependent default; always in [1, total]."""
    if requested is not None:
        if not isinstance(requested, int) or requested < 1:
            raise ValueError(f"chunk_size must be a positive int (got {requested!r})")
        return min(requested, max(1, total))
    if device.type == "cpu":
        size = CPU_SAMPLES_PER_PASS // max(1, batch)
    else:
        size = GPU_ELEMENTS_PER_PASS // max(1, batch * dim)
    return max(1, min(total, size))
