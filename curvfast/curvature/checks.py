"""Input validation and the piecewise-linearity check behind the exact estimator."""
from __future__ import annotations

import threading
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
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"x is {x.dtype}, but curvature needs float32 or float64 (half precision cannot resolve second "
            "derivatives); convert with x = x.float() and model.float()"
        )
    if x.device.type == "meta":
        raise ValueError("x is a meta tensor (a shape without data); pass real inputs on the cpu or a cuda device")
    x = x.detach()  # derivatives are taken with respect to x here, never through the caller's graph
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
        if param is not None and param.device != x.device:
            raise ValueError(f"x is on {x.device} but the model is on {param.device}; move one with .to()")
    return x, y.to(device=x.device, dtype=torch.int64)


def check_labels(y: torch.Tensor, num_classes: int) -> None:
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}) for a model with {num_classes} outputs; "
            f"got labels from {int(y.min())} to {int(y.max())}"
        )


# Modules whose output is smooth and non-linear in their input: a model holding one is never
# piecewise linear (Hardsigmoid, Hardtanh, ReLU6, PReLU, LeakyReLU are piecewise linear).
SMOOTH_MODULES = (
    nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Tanh, nn.Sigmoid, nn.Softplus,
    nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.GLU,
    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm, nn.MultiheadAttention, nn.RNNBase,
    nn.modules.instancenorm._InstanceNorm,
)

_SMOOTH: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()  # model -> structure
_SMOOTH_LOCK = threading.Lock()


def _structure(model: nn.Module) -> tuple:
    """What the decision depends on besides the weights: every submodule's name, object and
    class, and any forward replaced on an instance."""
    return tuple((name, id(m), type(m), id(m.__dict__.get("forward"))) for name, m in model.named_modules())


def is_piecewise_linear(logit_fn: LogitFn, x: torch.Tensor, model: nn.Module | None = None) -> bool:
    """True when the logits' second derivative w.r.t. the input vanishes at every sample of ``x``.

    A model holding a module of ``SMOOTH_MODULES`` is smooth. Otherwise ∇²(uᵀz)·v is computed
    by double backward at every sample of the batch, with random u and v per sample. Autograd
    differentiates ReLU, max-pool and eval BatchNorm as exactly linear pieces, so the result is
    exactly zero for a piecewise-linear network and (almost surely) nonzero at any sample where
    a smooth piece is active (GELU, tanh, softmax attention, LayerNorm, an input-gated tanh ...).
    A model whose second derivative cannot be taken (an op without a double-backward formula)
    is not certified. It cannot see smooth pieces that no sample of the batch reaches: the
    answer holds for these samples. A "smooth" answer is remembered for ``model`` (default
    ``logit_fn.model``) until its modules change; a "piecewise linear" one is re-checked on
    every batch.
    """
    model = logit_fn.model if model is None else model
    structure = _structure(model)
    with _SMOOTH_LOCK:
        if _SMOOTH.get(model) == structure:
            return False
    smooth = any(isinstance(m, SMOOTH_MODULES) for m in model.modules()) or not _vanishing_second_derivative(logit_fn, x)
    if smooth:
        with _SMOOTH_LOCK:
            _SMOOTH[model] = structure
    return not smooth


def _vanishing_second_derivative(logit_fn: LogitFn, x: torch.Tensor) -> bool:
    gen = torch.Generator().manual_seed(0)
    xs = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            z = logit_fn(xs)
            u = torch.randn(z.shape, generator=gen, dtype=z.dtype).to(z.device)
            (g,) = torch.autograd.grad((z * u).sum(), xs, create_graph=True)
            if not g.requires_grad:
                return True
            v = torch.randn(xs.shape, generator=gen, dtype=xs.dtype).to(xs.device)
            (hv,) = torch.autograd.grad(g, xs, grad_outputs=v, allow_unused=True)
    except (RuntimeError, NotImplementedError) as err:
        if not is_missing_second_derivative(err):
            raise
        return False
    return hv is None or bool((hv == 0).all())


def is_missing_second_derivative(err: BaseException) -> bool:
    """Whether ``err`` is autograd's "derivative for <op> is not implemented"."""
    return "derivative for" in str(err) and "not implemented" in str(err)
