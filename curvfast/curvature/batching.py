"""How many classes or probes go through one batched (vmapped or replicated) pass.

Measured on the 2-core CPU (CIFAR-stem ResNet-18, batch 32, 9 class VJPs from one forward):
vmapping 1, 2, 3, 5 and 9 classes at a time took 1.15, 1.21, 1.25, 2.04 and 2.81 s — on a CPU
the batched pass pays once the effective batch outgrows the caches; at batch 16, 1, 2, 3 and 9
classes per pass took 1.23, 1.25, 1.38 and 1.82 s. So a CPU pass holds about 16 such samples'
worth of input elements (16 x 3 x 32 x 32). Small inputs get more per pass: on the digits CNN
(8x8, batch 16) 10 Hutchinson probes in one pass took 0.37 s against 0.69 s in passes of 4.
Forward-over-reverse HVPs ("hvp" passes) gain from wider passes than VJPs: ResNet-18 at batch 16
with 10 probes took 7.13, 3.80 and 4.19 s at 1, 5 and 10 probes per pass, so their CPU budget is
five times larger. On a GPU one pass over everything amortises kernel launches, bounded by a
larger element budget for the (chunk, B, D) tensors.
"""
from __future__ import annotations

import torch

CPU_ELEMENTS_PER_PASS = {"vjp": 16 * 3 * 32 * 32, "hvp": 80 * 3 * 32 * 32}
GPU_ELEMENTS_PER_PASS = 2**26


def chunk_size(requested: int | None, total: int, batch: int, dim: int, device: torch.device, kind: str = "vjp") -> int:
    """``requested`` if given, else a default for the device and the pass ``kind`` ("vjp" or "hvp"); in [1, total]."""
    if requested is not None:
        if not isinstance(requested, int) or requested < 1:
            raise ValueError(f"chunk_size must be a positive int (got {requested!r})")
        return min(requested, max(1, total))
    budget = CPU_ELEMENTS_PER_PASS[kind] if device.type == "cpu" else GPU_ELEMENTS_PER_PASS
    size = budget // max(1, batch * dim)
    return max(1, min(total, size))
