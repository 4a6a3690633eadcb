"""Neighbour-only communication over ``torch.distributed`` point-to-point ops, with byte counting
and timeouts.

A node talks only to its graph neighbours: every exchange posts one ``isend`` and one ``irecv`` per
neighbour (``batch_isend_irecv``) and waits on each with a deadline, so a crashed or stalled
neighbour surfaces as :class:`NeighbourError` naming the node and the neighbour instead of a hang.
Counted bytes are the payload bytes this node *sends* (tensor ``numel * element_size``).
"""
from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

from curvfast.errors import PeerError
from curvfast.pipelines.idkd.topology import Topology

__all__ = ["NeighbourComm", "NeighbourError"]


class NeighbourError(PeerError):
    """A point-to-point exchange with a neighbour failed or timed out (a :class:`~curvfast.errors.PeerError`,
    so a ``RuntimeError`` too)."""


class NeighbourComm:
    """Gossip and label exchange of node ``rank`` of ``topology``.

    ``comm_device`` is where tensors travel: the compute device under NCCL, the CPU under gloo
    (tensors on a GPU are staged through host memory then).
    """

    def __init__(self, topology: Topology, rank: int, timeout_s: float, comm_device: torch.device):
        self.rank = rank
        self.neighbours = topology.neighbours[rank]
        self.self_weight = float(topology.weights[rank, rank])
        self.weights = {j: float(topology.weights[rank, j]) for j in self.neighbours}
        self.timeout = timedelta(seconds=timeout_s)
        self.comm_device = comm_device
        self.bytes_sent = 0

    def _exchange(self, send: torch.Tensor | None, recv: dict[int, torch.Tensor], what: str) -> None:
        """Send ``send`` to every neighbour (``None``: send nothing) and fill each ``recv[j]`` from neighbour j
        (neighbours missing from ``recv`` send nothing). Both sides must agree on who sends what."""
        ops = [dist.P2POp(dist.isend, send, j) for j in self.neighbours if send is not None]
        ops += [dist.P2POp(dist.irecv, buf, j) for j, buf in recv.items()]
        if not ops:
            return
        try:
            for work in dist.batch_isend_irecv(ops):
                if not work.wait(self.timeout):
                    raise TimeoutError(f"no completion within {self.timeout.total_seconds():g} s")
        except (RuntimeError, TimeoutError) as err:
            message = str(err).splitlines()[0] if str(err) else "no message"
            raise NeighbourError(
                f"node {self.rank}: {what} with neighbours {list(self.neighbours)} failed ({type(err).__name__}: "
                f"{message}); a neighbour crashed, stalled or exceeded the {self.timeout.total_seconds():g} s timeout"
            ) from err
        if send is not None:
            self.bytes_sent += send.numel() * send.element_size() * len(self.neighbours)

    def gossip(self, flat: torch.Tensor) -> torch.Tensor:
        """One gossip-averaging step: ``W_ii x_i + sum_{j in N(i)} W_ij x_j``."""
        send = flat.detach().to(self.comm_device).contiguous()
        recv = {j: torch.empty_like(send) for j in self.neighbours}
        self._exchange(send, recv, "gossip")
        mixed = self.self_weight * send
        for j in self.neighbours:
            mixed.add_(recv[j], alpha=self.weights[j])
        return mixed.to(flat.device)

    def exchange_labels(self, indices: torch.Tensor, soft_labels: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Send this node's accepted public ``indices`` (as int32) and their ``soft_labels`` ((k, C), as float32)
        to every neighbour; return ``{j: (indices_j int64, soft_labels_j float32)}`` on the CPU.

        The count goes first (one int64), so an empty selection costs 8 bytes per neighbour and empty
        payloads are never sent."""
        num_classes = soft_labels.shape[1]
        count = torch.tensor([len(indices)], dtype=torch.int64, device=self.comm_device)
        counts = {j: torch.empty_like(count) for j in self.neighbours}
        self._exchange(count, counts, "label-count exchange")
        sizes = {j: int(c.item()) for j, c in counts.items()}
        senders = [j for j in self.neighbours if sizes[j] > 0]
        idx = indices.to(device=self.comm_device, dtype=torch.int32).contiguous() if len(indices) else None
        lab = soft_labels.to(device=self.comm_device, dtype=torch.float32).contiguous() if len(indices) else None
        recv_idx = {j: torch.empty(sizes[j], dtype=torch.int32, device=self.comm_device) for j in senders}
        recv_lab = {j: torch.empty(sizes[j], num_classes, dtype=torch.float32, device=self.comm_device) for j in senders}
        self._exchange(idx, recv_idx, "label-index exchange")
        self._exchange(lab, recv_lab, "soft-label exchange")
        empty = (torch.empty(0, dtype=torch.int64), torch.empty(0, num_classes))
        return {j: (recv_idx[j].cpu().long(), recv_lab[j].cpu()) if j in recv_idx else empty for j in self.neighbours}
