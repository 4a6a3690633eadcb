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
of 3 or 9, while at batch 64 passes of 4 measured faster than the loop. :class:`PassPlanner` measures
instead: the first call for a (model, shape, dtype, device) key times each candidate width on its own
graph, and the run keeps the fastest.
"""
from __future__ import annotations

import contextlib
import threading
import time
import weakref
from typing import Callable, Iterator

import torch

from ..errors import ConfigError

MEASUREMENTS = 2
CPU_ELEMENTS_PER_PASS = {"vjp": 16 * 3 * 32 * 32, "hvp": 80 * 3 * 32 * 32}
GPU_ELEMENTS_PER_PASS = 2**26


def choose_pass_size(requested: int | None, total: int, batch: int, dim: int, device: torch.device,
                     kind: str = "vjp") -> int:
    """How many classes or probes go through one batched pass.

    Args:
        requested: the caller's ``pass_size``; None: a default from the element budget of the device
            (``CPU_ELEMENTS_PER_PASS[kind]`` or ``GPU_ELEMENTS_PER_PASS``) over ``batch * dim``.
        total: the classes or probes to pass in all.
        batch: samples in the batch B.
        dim: input elements per sample D.
        device: where the passes run.
        kind: ``"vjp"`` (class VJPs, fd and zo probes) or ``"hvp"`` (Hessian-vector products).

    Returns:
        The pass size, in ``[1, max(1, total)]``.

    Raises:
        ConfigError: ``requested`` is not a positive int.
    """
    if requested is not None:
        if not isinstance(requested, int) or requested < 1:
            raise ConfigError(f"pass_size must be a positive int (got {requested!r})")
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

    On the first :meth:`width` call for a key, runs ``trial(w)`` (one pass of width w on the caller's
    real graph, result discarded) once to warm up, then twice for each candidate width 1, 4, 16, ... up
    to ``largest`` and ``total``, and keeps the width with the least seconds per item (the smaller of
    its two timings). Later calls reuse it, so every call of a run computes with the same width and
    gives the same bits. ``owner`` (the model) is held weakly.
    """

    def __init__(self):
        self._choices: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()
        self._pinned: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()  # one calibration per key, also when threads score at once

    def width(self, owner: object, key: tuple, total: int, largest: int, trial: Callable[[int], object],
              device: torch.device) -> int:
        """The pass width for ``key``: pinned, settled earlier, or measured now.

        Args:
            owner: the caller's model (held weakly): what choices and pins belong to.
            key: what the best width depends on, e.g. (input shape, classes, dtype, device).
            total: the items (classes) to pass in all.
            largest: the widest candidate (the element budget of :func:`choose_pass_size`).
            trial: runs one pass of the width it is given, on the caller's real graph.
            device: where the passes run (CUDA is synchronised around each timing).

        Returns:
            The width, in ``[1, max(1, total)]``.
        """
        with self._lock:
            if owner in self._pinned:
                return max(1, min(self._pinned[owner], total))
            return self._width(owner, key, total, largest, trial, device)

    @contextlib.contextmanager
    def pinned(self, owner: object, width: int) -> Iterator[None]:
        """Within the block, every pass for ``owner`` has ``width`` items, and nothing is calibrated.

        Fewer items when there are fewer, whatever the key. A dataset scoring run pins the width that
        its first batch measured on rank 0 (or that its manifest recorded), so that every batch, rank
        and resumed run computes with the same width, hence the same bits. Blocks nest: the previous
        pin comes back on exit.

        Args:
            owner: the caller's model (held weakly).
            width: items per pass.

        Yields:
            None, with the width pinned.

        Raises:
            ConfigError: ``width`` is not a positive int.
        """
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(f"width must be a positive int (got {width!r})")
        with self._lock:
            previous = self._pinned.get(owner)
            self._pinned[owner] = width
        try:
            yield
        finally:
            with self._lock:
                if previous is None:
                    self._pinned.pop(owner, None)
                else:
                    self._pinned[owner] = previous

    def _width(self, owner: object, key: tuple, total: int, largest: int, trial: Callable[[int], object],
               device: torch.device) -> int:
        choices = self._choices.setdefault(owner, {})
        if key not in choices:
            widths = _candidates(max(1, min(largest, total)))
            if len(widths) > 1:
                trial(1)
                per_item = {w: min(_seconds(trial, w, device) for _ in range(MEASUREMENTS)) / w for w in widths}
                choices[key] = min(per_item, key=per_item.get)
            else:
                choices[key] = widths[0]
        return choices[key]

    def choice(self, owner: object, key: tuple) -> int | None:
        """The width settled on for ``key``.

        Args:
            owner: the caller's model.
            key: as given to :meth:`width`.

        Returns:
            The width measured for ``key``, or None before its first use (pins are not choices).
        """
        return self._choices.get(owner, {}).get(key)


def _seconds(trial: Callable[[int], object], width: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    trial(width)
    _sync(device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


VJP_PLANNER = PassPlanner()


def largest_batch(measure: Callable[[int], int], capacity: int, *, limit: int, margin: float = 0.2,
                  cap: int = 4096) -> int:
    r"""The largest batch whose peak memory fits ``(1 - margin) * capacity``.

    Peak memory is close to affine in the batch B: :math:`m(B) = a + sB` (weights and workspace, plus each
    sample's activations, class VJPs and factor). It is measured at two batches :math:`B_1 < B_2` and solved
    for the largest :math:`B \le` ``limit``, ``cap`` with :math:`a + sB \le (1 - \text{margin})\,\text{capacity}`,
    rounded down to a multiple of 8 (when at least 8). That batch is then run once; a peak over the budget or an
    out-of-memory error halves it until one fits. Only the batch changes, never a score: probes are keyed by
    sample id.

    Args:
        measure: runs one batch of the size it is given and returns its peak memory in bytes (raising
            ``torch.OutOfMemoryError`` when it does not fit).
        capacity: bytes the run may hold at its peak (free memory plus what it holds already).
        limit: the most samples worth batching (the dataset's size).
        margin: the fraction of ``capacity`` kept free.
        cap: the largest batch tried.

    Returns:
        The batch size, at least 1.

    Raises:
        ConfigError: a bad margin, capacity or limit, or not even a batch of 1 fits.
    """
    if not 0 <= margin < 1:
        raise ConfigError(f"margin must be in [0, 1) (got {margin!r})")
    if capacity <= 0 or limit < 1:
        raise ConfigError(f"capacity ({capacity}) and limit ({limit}) must be positive")
    budget = (1 - margin) * capacity
    top = min(limit, cap)
    small, large = min(2, top), min(8, top)
    fits = _fits(measure, small, budget)
    if fits is None:
        if small > 1 and _fits(measure, 1, budget) is not None:
            return 1
        raise ConfigError(f"even a batch of 1 does not fit in {capacity / 2**30:.2f} GiB with a {margin:.0%} margin; "
                          "free device memory, or score a smaller model or input size")
    if large == small:
        return small
    peak_large = _fits(measure, large, budget)
    if peak_large is None:
        return _halve_until_fits(measure, large // 2, budget, floor=small)
    slope = max((peak_large - fits) / (large - small), 1.0)
    batch = int(min(top, small + (budget - fits) / slope))
    batch -= batch % 8
    return _halve_until_fits(measure, batch, budget, floor=large) if batch > large else large


def _halve_until_fits(measure: Callable[[int], int], batch: int, budget: float, floor: int) -> int:
    """``batch``, halved until its measured peak fits ``budget``; ``floor`` (known to fit) at worst."""
    while batch > floor:
        if _fits(measure, batch, budget) is not None:
            return batch
        batch //= 2
    return floor


def _fits(measure: Callable[[int], int], batch: int, budget: float) -> int | None:
    """The peak of ``measure(batch)`` when it fits ``budget``; None when over it or out of memory."""
    try:
        peak = measure(batch)
    except torch.OutOfMemoryError:
        return None
    return peak if peak <= budget else None
