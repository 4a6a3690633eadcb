r"""The loss Hessian w.r.t. the trainable weights, over a dataset, as a batched matrix-vector product.

With N samples in batches :math:`B_1, \dots, B_m` of sizes :math:`n_b` and :math:`L_b(\theta)` the mean loss of
batch b, the mean training loss is :math:`L(\theta) = \frac1N \sum_b n_b L_b(\theta)`, so its Hessian-vector
product is the sample-weighted sum of the per-batch ones,

.. math:: H V = \frac1N \sum_b n_b \, \nabla^2_\theta L_b(\theta)\, V ,

computed one batch at a time (the dataset never has to fit in memory) for P vectors at once. Three ways to apply
:math:`\nabla^2 L_b` to the P columns of V (Pearlmutter, "Fast exact multiplication by the Hessian", 1994):

- ``func``: forward-over-reverse, ``torch.func.vmap`` over ``jvp`` of ``grad`` (one batched pass);
- ``batched``: one double backward, ``autograd.grad(g, θ, V, is_grads_batched=True)`` of the gradient g built
  with ``create_graph`` (vmap over the backward pass);
- ``loop``: the same graph of g, one backward per column (``retain_graph``): forward and first backward shared.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from curvfast.curvature._checks import check_batch_independent
from curvfast.curvature._model import unwrap_model
from curvfast.errors import ConfigError, DataError, UnsupportedModelError

__all__ = ["HVP_METHODS", "LossHessian"]

HVP_METHODS = ("func", "batched", "loop")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _batches(data, batch_size: int) -> Iterable:
    """``data`` as an iterable of ``(x, y)`` batches: a pair of tensors is cut into ``batch_size`` slices."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise DataError(f"data's x and y must hold the same number of samples (got {x.shape[0]} and {y.shape[0]})")
        if x.shape[0] == 0:
            raise DataError("data is empty (0 samples); pass at least one sample")
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError("data must be a DataLoader (or any re-iterable of (x, y) batches) or an (x, y) pair of "
                        f"tensors (got {type(data).__name__})")
    return data


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (BatchNorm on its running statistics, no dropout), the caller's train/eval flags restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class LossHessian:
    r"""H, the Hessian of the mean training loss w.r.t. the trainable parameters, as a linear operator.

    Args:
        model: the model (wrappers such as DDP or ``torch.compile`` are stripped); its parameters with
            ``requires_grad`` are θ (D entries), the others and the buffers stay fixed. It is evaluated in eval
            mode, so a BatchNorm is the fixed affine map of its running statistics.
        data: a DataLoader or other re-iterable of ``(x, y)`` batches (iterated once per product; it must yield
            the same samples every time: no random augmentation, no ``drop_last`` with shuffling), or an
            ``(x, y)`` pair of tensors.
        loss_fn: ``loss_fn(model(x), y)``, the mean loss of a batch (default: cross-entropy).
        device: where the batches run; None: the device of the model's parameters (the model must be there).
        batch_size: slice size for an ``(x, y)`` pair.
        hvp: ``func``, ``batched`` or ``loop`` (see the module docstring).

    Raises:
        UnsupportedModelError: no trainable parameters, or mixed dtypes / devices among them.
        BatchDependentModelError: a BatchNorm without running statistics (its batch's statistics even in eval mode).
        ConfigError: unknown ``hvp``, bad ``batch_size``, or a device the model is not on.
        DataError, TypeError: bad ``data``.
    """

    def __init__(self, model: nn.Module, data, loss_fn: LossFn | None = None, device=None, batch_size: int = 256,
                 hvp: str = "loop"):
        if hvp not in HVP_METHODS:
            raise ConfigError(f"hvp must be one of {', '.join(HVP_METHODS)} (got {hvp!r})")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an int >= 1 (got {batch_size!r})")
        self.model = unwrap_model(model)
        check_batch_independent(self.model)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if not named:
            raise UnsupportedModelError("the model has no trainable parameters (none with requires_grad=True); "
                                        "unfreeze the ones whose curvature you want")
        if len({p.dtype for _, p in named}) > 1 or len({p.device for _, p in named}) > 1:
            raise UnsupportedModelError("the trainable parameters must share one dtype and one device; "
                                        "cast the model with model.to(dtype, device)")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.dtype, self.device = self.params[0].dtype, self.params[0].device
        if device is not None:
            want = torch.device(device)
            if want.type != self.device.type or (want.index is not None and want != self.device):
                raise ConfigError(f"device={str(device)!r} but the model's parameters are on {self.device}; "
                                  f"move the model first (model.to({str(want)!r}))")
        self.dim = sum(p.numel() for p in self.params)
        self.loss_fn = loss_fn or F.cross_entropy
        self.data = _batches(data, batch_size)
        self.hvp = hvp
        self.num_samples: int | None = None
        self.products = 0  # Hessian-vector products applied (columns), all batches counted once

    def flat(self) -> torch.Tensor:
        """θ as one detached vector (D,)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _unflat(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        pieces = torch.split(flat, [p.numel() for p in self.params])
        return {n: t.view_as(p) for n, t, p in zip(self.names, pieces, self.params)}

    def _batch_hvp(self, x: torch.Tensor, y: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """(P, D) products of the Hessian of batch (x, y)'s mean loss with V's rows."""
        if self.hvp == "func":
            theta = self.flat()

            def loss(flat):
                return self.loss_fn(torch.func.functional_call(self.model, self._unflat(flat), (x,)), y)

            grad = torch.func.grad(loss)
            return torch.func.vmap(lambda v: torch.func.jvp(grad, (theta,), (v,))[1])(V)
        with torch.enable_grad():
            g = torch.autograd.grad(self.loss_fn(self.model(x), y), self.params, create_graph=True)
            g = torch.cat([t.reshape(-1) for t in g])
            if self.hvp == "batched":
                hv = torch.autograd.grad(g, self.params, V, is_grads_batched=True, allow_unused=True)
                return torch.cat([(t if t is not None else torch.zeros(V.shape[0], *p.shape, dtype=V.dtype,
                                                                       device=V.device)).reshape(V.shape[0], -1)
                                  for t, p in zip(hv, self.params)], 1)
            rows = []
            for i in range(V.shape[0]):
                hv = torch.autograd.grad(g, self.params, V[i], retain_graph=i < V.shape[0] - 1, allow_unused=True)
                rows.append(torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1)
                                       for t, p in zip(hv, self.params)]))
            return torch.stack(rows)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H V for the P rows of V, streamed over the batches.

        Args:
            V: (P, D) vectors in the parameters' dtype and device.

        Returns:
            (P, D): row p is :math:`H v_p`.

        Raises:
            DataError: the data yields no samples, or a batch is not an ``(x, y)`` pair.
        """
        total, count = torch.zeros_like(V), 0
        with _eval_mode(self.model):
            for batch in self.data:
                if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                    raise DataError("each batch of data must be an (x, y) pair "
                                    f"(got {type(batch).__name__}); wrap the loader to yield (inputs, targets)")
                x, y = (t.to(self.device, non_blocking=True) for t in batch)
                if x.is_floating_point():
                    x = x.to(self.dtype)
                n = x.shape[0]
                if n == 0:
                    continue
                total += self._batch_hvp(x, y, V) * n
                count += n
        if count == 0:
            raise DataError("data yielded no samples; pass a non-empty DataLoader or (x, y) pair")
        self.num_samples = count
        self.products += V.shape[0]
        return total / count
