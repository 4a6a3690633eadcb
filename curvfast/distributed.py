"""torch.distributed glue for scoring under ``torchrun``: process group, device, timed collectives.

``torchrun --nproc_per_node=N`` (or any launcher that sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) starts N copies of the same program.
``setup`` joins them into a process group: NCCL when scoring on CUDA, with one GPU per rank
(``cuda:LOCAL_RANK``), gloo on the CPU. A process group that the caller already initialised
is used as it is.

The engine's own messages (the work plan, fingerprints, results, "done" barriers) are small
Python objects, so they travel over a gloo group (the default group when it is gloo, else a
gloo side group): no GPU synchronisation, and ``monitored_barrier`` names the ranks that did
not arrive. Every collective has a timeout; a rank that died or hangs turns into a
``RuntimeError`` on the others instead of a hang.
"""
from __future__ import annotations

import atexit
import datetime
import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

from . import errors
from .errors import ConfigError, PeerError

__all__ = ["Context", "PeerError", "setup", "shutdown", "launched_by_torchrun", "init_process_group"]

DEFAULT_TIMEOUT = 1800.0  # seconds; torch's own default for gloo
# user-fixable: re-raised with the same type on every rank (the builtins and curvfast's typed errors)
_FORWARDED = {e.__name__: e for e in (ValueError, TypeError, FileNotFoundError,
                                      *(getattr(errors, name) for name in errors.__all__))}


def launched_by_torchrun() -> bool:
    """True when the environment describes more than one rank (torchrun, SLURM wrappers ...).

    Returns:
        Whether ``WORLD_SIZE`` is above 1.
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass
class Context:
    """This process's place in the run: ``rank`` of ``world_size``, and the control group.

    Attributes:
        rank: This process's global rank.
        world_size: The number of ranks.
        local_rank: This process's rank on its node (its GPU index).
        group: The gloo group the engine's control messages travel over (None: the default group).
        timeout: Seconds every collective waits before raising :class:`~curvfast.errors.PeerError`.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None
    timeout: float = DEFAULT_TIMEOUT

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    def _failed(self, what: str, err: Exception) -> "PeerError":
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        timed_out = "timeout" in reason.lower() or "timed out" in reason.lower()
        how = f"timed out after {self.timeout:g} s" if timed_out else "failed: a peer closed the connection or died"
        return PeerError(
            f"rank {self.rank}: {what} {how} ({reason}); another rank died or is stuck: read its log, then rerun the "
            "same command to resume from the finished chunks"
        )

    def barrier(self, what: str) -> None:
        """Wait for every rank; after ``timeout`` s raise, naming the ranks that never arrived.

        Args:
            what: What the ranks are finishing, for the message.

        Raises:
            PeerError: When a rank died or did not arrive within ``timeout``.
        """
        if self.world_size == 1:
            return
        try:
            dist.monitored_barrier(group=self.group, timeout=datetime.timedelta(seconds=self.timeout),
                                   wait_all_ranks=True)
        except RuntimeError as err:
            raise self._failed(f"waiting for all ranks to finish {what}", err) from err

    def on_main(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 and hand its result to every rank.

        An exception on rank 0 is re-raised on every rank (same type and message), so no rank waits for a dead peer.

        Args:
            what: What ``fn`` does, for the message.
            fn: The work, run on rank 0 only; its result must pickle.

        Returns:
            ``fn()``'s result, on every rank.

        Raises:
            PeerError: When the broadcast fails (a rank died or timed out).
            CurvfastError: Rank 0's typed error (or ``ValueError``, ``TypeError``, ``FileNotFoundError``),
                re-raised with its class on every rank; any other exception of rank 0 arrives on the other ranks as
                a ``RuntimeError`` naming its class.
        """
        if self.world_size == 1:
            return fn()
        payload = [None]
        if self.is_main:
            try:
                payload[0] = ("ok", fn())
            except Exception as err:  # forwarded to the other ranks, then re-raised here
                payload[0] = ("error", (type(err).__name__, str(err)))
                error = err
        try:
            dist.broadcast_object_list(payload, src=0, group=self.group)
        except RuntimeError as err:
            raise self._failed(what, err) from err
        status, value = payload[0]
        if status == "error":
            if self.is_main:
                raise error
            raise _forwarded_error(*value)
        return value

    def all_gather(self, what: str, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank.

        Args:
            what: What is gathered, for the message.
            obj: This rank's object (must pickle).

        Returns:
            One object per rank, in rank order.

        Raises:
            PeerError: When a rank died or timed out.
        """
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        try:
            dist.all_gather_object(out, obj, group=self.group)
        except RuntimeError as err:
            raise self._failed(what, err) from err
        return out


def _forwarded_error(name: str, message: str) -> Exception:
    """The exception rank 0 raised, rebuilt on another rank from its class name and message.

    Args:
        name: the class name of rank 0's exception.
        message: its message.

    Returns:
        An exception of the same class and message when it is user-fixable (``ValueError``, ``TypeError``,
        ``FileNotFoundError`` or one of :mod:`curvfast.errors`), else a ``RuntimeError`` naming the class.
    """
    kind = _FORWARDED.get(name, RuntimeError)
    return kind(message if kind is not RuntimeError else f"rank 0: {name}: {message}")


def _rank_device(device: torch.device, local_rank: int) -> torch.device:
    """One GPU per rank: a bare ``cuda`` means ``cuda:LOCAL_RANK``."""
    if device.type != "cuda" or device.index is not None:
        return device
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
            "start at most one process per GPU (torchrun --nproc_per_node=<number of GPUs>)"
        )
    return torch.device("cuda", local_rank)


_GLOO_SIDE_GROUPS: dict[int, Any] = {}


def init_process_group(backend: str, timeout: float) -> None:
    """``dist.init_process_group(backend, timeout=timeout s)`` that :func:`shutdown` can really close.

    ``torch._dynamo`` is imported first. Imported after the group exists (``torch.func`` imports it on first
    use, torchvision on import), it keeps references to the default group that ``destroy_process_group`` cannot
    drop: the group and gloo's worker threads then outlive it into interpreter shutdown, where a thread freeing
    a finished collective's tensors waits for the GIL, is cancelled and aborts the process ("terminate called
    without an active exception"; seen in about 1 of 12 runs of a two-node IDKD run).

    Args:
        backend: ``"nccl"`` or ``"gloo"``.
        timeout: Seconds before a collective of the group raises.
    """
    import torch._dynamo  # noqa: F401  (see above: must precede the group)

    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))


def setup(device: torch.device, timeout: float = DEFAULT_TIMEOUT) -> tuple[Context, torch.device]:
    """Join (or reuse) the process group when several ranks run.

    NCCL when scoring on CUDA (one GPU per rank, a bare ``cuda`` meaning ``cuda:LOCAL_RANK``), gloo on the CPU; the
    engine's control messages use a gloo group. A single process gets ``Context()`` and ``device`` unchanged.

    Args:
        device: The device asked for.
        timeout: Seconds every collective waits (a positive number).

    Returns:
        ``(context, device)``: this rank's :class:`Context` and the device it scores on.

    Raises:
        ConfigError: For a bad ``timeout``, or a ``LOCAL_RANK`` beyond this node's GPUs.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ConfigError(f"timeout must be a positive number of seconds (got {timeout!r})")
    if not dist.is_available() or not (dist.is_initialized() or launched_by_torchrun()):
        return Context(timeout=float(timeout)), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _rank_device(device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        init_process_group(backend, timeout)
        # the group curvfast opened is closed before the interpreter exits: left to static destruction,
        # its threads can abort the process ("terminate called without an active exception")
        atexit.register(shutdown)
    if dist.get_backend() == "gloo":
        group = None
    else:  # one gloo side group per default group, created collectively by every rank
        key = id(dist.group.WORLD)
        if key not in _GLOO_SIDE_GROUPS:
            _GLOO_SIDE_GROUPS[key] = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout))
        group = _GLOO_SIDE_GROUPS[key]
    ctx = Context(dist.get_rank(), dist.get_world_size(), local_rank, group, float(timeout))
    return ctx, device


def shutdown() -> None:
    """Destroy the process group (end of a command-line run); a no-op when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        _GLOO_SIDE_GROUPS.clear()
        dist.destroy_process_group()
