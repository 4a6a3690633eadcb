"""How many classes or probes go through one batched pass, and a per-run calibration of it.

Budgets (used for the HVP passes and as the upper end of the VJP calibration): measured on the
2-core CPU (CIFAR-stem ResNet-18, batch 32, 9 class VJPs from one forward), vmapping 1, 2, 3, 5
and 9 classes at a time took 1.15, 1.21, 1.25, 2.04 and 2.81 s, so a CPU pass holds about 16 such
samples' worth of input elements (16 x 3 x 32 x 32). Forward-over-reverse HVPs ("hvp" passes)
gain from wider passes: ResNet-18 at batch 16 with 10 probes took 7.13, 3.80 and 4.19 s at 1, 5
and 10 probes per pass, so their CPU budget is five times larger. On a GPU one pass over
everything amortises kernel launches, bounded by a larger element budget.

Class VJPs are not sized by a fixed rule: whether batching the backward over classes pays
depends on the model, the input size and the device. One thread on this CPU, 9 class VJPs from
one forward: CIFAR ResNet-18 at batch 16 took 0.87 s as a plain loop and 0.95 / 1.38 / 1.41 s in
batched passes of 2 / 3 / 9; the digits CNN at batch 16 took 4.4 ms looped and 4.7 ms in passes
of 3 or 9, while at batch 64 passes of 4 measured faster than the loop. :class:`PassPlanner` measures instead: the first calls for a (model, shape, dtype,
device) key time each candidate width on real work, then every later call uses the fastest.
"""
from __future__ import annotations

import time
import weakref
import torch

MEASUREMENTS = 2
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


def _candidates(largest: int) -> list[int]:
    """Widths 1, 4, 16, ... up to ``largest`` (always included)."""
    widths, w = [], 1
    while w < largest:
        widths.append(w)
        w *= 4
    return widths + [largest]


class PassPlanner:
    """Choose a pass width by measurement, once per key, and remember it for the run.

    ``passes(owner, key, total, largest, device)`` yields ``(start, width)`` covering
    ``[0, total)``; the caller does the pass before asking for the next one. Until every
    candidate width (1, 4, 16, ... up to ``largest`` and below ``total``) has been timed twice for
    ``key`` on this real work (seconds per item, the smaller of the two; never the first pass after
    the forward, which runs slow), passes cycle through the candidates; from then on every pass
    has the fastest width. ``owner`` (the model) is held weakly.
    """

    def __init__(self):
        self._timings: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()

    def passes(self, owner, key: tuple, total: int, largest: int, device: torch.device):
        widths = _candidates(max(1, min(largest, total - 1)))
        table = self._timings.setdefault(owner, {}).setdefault(key, {w: [] for w in widths})
        start = 0
        while start < total:
            untried = [w for w, t in table.items() if len(t) < MEASUREMENTS]
            if start == 0 and untried:  # the first pass after a forward runs slow: not a measurement
                untried = [1]
            width = min(untried[0] if untried else self._best(table), total - start)
            _sync(device)
            t0 = time.perf_counter()
            yield start, width
            _sync(device)
            if untried and width == untried[0] and start > 0:
                table[width].append((time.perf_counter() - t0) / width)
            start += width

    @staticmethod
    def _best(table: dict) -> int:
        return min(table, key=lambda w: min(table[w]))

    def choice(self, owner, key: tuple) -> int | None:
        """The width settled on for ``key``, or None while it is still being measured."""
        table = self._timings.get(owner, {}).get(key)
        if not table or any(len(t) < MEASUREMENTS for t in table.values()):
            return None
        return self._best(table)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


VJP_PLANNER = PassPlanner()
