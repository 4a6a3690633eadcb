"""Decentralized SGD with momentum: local heavy-ball momentum (DSGDm) or quasi-global momentum (QGM).

x_i are node i's parameters, g_i its stochastic gradient (weight decay included), eta the step size,
beta the momentum, W the mixing matrix. Each step ends with gossip averaging,
x_i <- sum_j W_ij x_j^{+1/2}, applied to the parameters and to the float buffers (BatchNorm
running statistics), so every node's whole model state is mixed.

- ``dsgdm``:  m_i <- beta m_i + g_i;   x_i^{+1/2} = x_i - eta m_i.
- ``qgm`` (Lin et al., ICML 2021, the base of the published IDKD code): the momentum buffer tracks
  the *global* descent direction, estimated from the model change after gossip,
      x_i^{+1/2} = x_i - eta (g_i + beta m_i),   x_i' = gossip(x^{+1/2})_i,
      m_i <- beta m_i + (1 - beta) (x_i - x_i') / eta,
  which keeps heterogeneous nodes from following their local momentum away from consensus.
"""
from __future__ import annotations

import torch
from torch import nn

from curvfast.pipelines.idkd.comm import NeighbourComm
from curvfast.errors import ConfigError, UnknownNameError

__all__ = ["DecentralizedSGD", "ALGORITHMS"]

ALGORITHMS = ("qgm", "dsgdm")


class DecentralizedSGD:
    """DSGDm or QGM (module docstring) over ``model``'s trainable parameters, gossiping through ``comm``."""

    def __init__(self, model: nn.Module, comm: NeighbourComm, lr: float, momentum: float = 0.9,
                 weight_decay: float = 5e-4, algorithm: str = "qgm"):
        if algorithm not in ALGORITHMS:
            raise UnknownNameError(f"algorithm must be one of {ALGORITHMS} (got {algorithm!r})")
        if not (lr > 0 and 0 <= momentum < 1 and weight_decay >= 0):
            raise ConfigError(f"need lr > 0, 0 <= momentum < 1, weight_decay >= 0 (got {lr}, {momentum}, {weight_decay})")
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers = [b for b in model.buffers() if b.is_floating_point()]
        self.comm, self.lr, self.beta, self.wd, self.algorithm = comm, lr, momentum, weight_decay, algorithm
        self.num_params = sum(p.numel() for p in self.params)
        self.momentum = torch.zeros(self.num_params, device=self.params[0].device, dtype=self.params[0].dtype)

    def _state(self) -> torch.Tensor:
        return torch.cat([t.detach().reshape(-1) for t in self.params + self.buffers])

    def _load(self, flat: torch.Tensor) -> None:
        offset = 0
        for t in self.params + self.buffers:
            t.data.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the parameters' gradients (``None``, or zero with ``set_to_none=False``)."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def gossip(self) -> None:
        """Replace the model state by its neighbourhood average (no gradient step)."""
        self._load(self.comm.gossip(self._state()))

    @torch.no_grad()
    def step(self) -> None:
        """Local momentum step from the ``.grad`` of the parameters, then gossip."""
        x = self._state()
        params = x[: self.num_params].clone()
        grad = torch.cat([p.grad.reshape(-1) for p in self.params]) + self.wd * params
        if self.algorithm == "dsgdm":
            self.momentum.mul_(self.beta).add_(grad)
            direction = self.momentum
        else:
            direction = grad + self.beta * self.momentum
        x[: self.num_params] -= self.lr * direction
        mixed = self.comm.gossip(x)
        if self.algorithm == "qgm":
            self.momentum.mul_(self.beta).add_((params - mixed[: self.num_params]) / self.lr, alpha=1 - self.beta)
        self._load(mixed)

    def state_dict(self) -> dict:
        return {"momentum": self.momentum.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.momentum.copy_(state["momentum"])
