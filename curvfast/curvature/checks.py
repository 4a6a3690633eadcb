"""Input validation and the piecewise-linearity check behind the exact estimator."""
from __future__ import annotations

import weakref

import torch
from torch import nn

from .model import LogitFn

__all__ = ["check_batch", "check_labels", "is_piecewise_linear"]


def check_batch(x, y, model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a batch; return ``(x, y)`` with ``y`` as int64 on ``x``'s device."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of inputs (B, ...), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"x must be a floating-point tensor (got {x.dtype}); convert integer images first, "
            "e.g. x = x.float() / 255"
        )
    if x.dim() < 2:
        raise ValueError(f"x must be batched with shape (B, ...), got shape {tuple(x.shape)}; add a batch dim with x.unsqueeze(0)")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch (B = 0); pass at least one sample")
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if bad.any():
        raise ValueError(f"x contains NaN or Inf in sample(s) {bad.nonzero().flatten()[:10].tolist()}; clean the inputs first")
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"y must hold integer class labels (got {y.dtype}); convert with y.long()")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape (B,) = ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    if model is not None:
        param = next(model.parameters(), None)
        if param is not None and param.is_floating_point() and param.dtype != x.dtype:
            raise TypeError(f"x is {x.dtype} but the model's parameters are {param.dtype}; cast one to match (e.g. model.to({x.dtype}))")
    return x, y.to(device=x.device, dtype=torch.int64)


def check_labels(y: torch.Tensor, num_classes: int) -> None:
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for a model with {num_classes} outputs; "
            f"got labels from {int(y.min())} to {int(y.max())}"
        )


_PL_CACHE: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def is_piecewise_linear(logit_fn: LogitFn, x: torch.Tensor) -> bool:
    """True when the logits' second derivative w.r.t. the input vanishes at ``x``.

    Computes ∇²(uᵀz)·v by double backward on up to two samples, with random u and v. Autograd
    differentiates ReLU, max-pool and eval BatchNorm as exactly linear pieces, so the result is
    exactly zero for a piecewise-linear network and nonzero for smooth pieces (GELU, tanh,
    softmax attention, LayerNorm ...). The answer is cached per model object.
    """
    model = logit_fn.model
    if model in _PL_CACHE:
        return _PL_CACHE[model]
    gen = torch.Generator().manual_seed(0)
    xs = x[:2].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        z = logit_fn(xs)
        u = torch.randn(z.shape, generator=gen, dtype=z.dtype).to(z.device)
        (g,) = torch.autograd.grad((z * u).sum(), xs, create_graph=True)
        if not g.requires_grad:
            result = True
        else:
            v = torch.randn(xs.shape, generator=gen, dtype=xs.dtype).to(xs.device)
            (hv,) = torch.autograd.grad(g, xs, grad_outputs=v, allow_unused=True)
            result = hv is None or bool((hv == 0).all())
    _PL_CACHE[model] = result
    return result
