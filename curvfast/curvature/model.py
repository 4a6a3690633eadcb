"""Model handling shared by every estimator: unwrapping, scoring mode, logits, per-sample losses."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["unwrap_model", "scoring_mode", "without_wrapper_hooks", "LogitFn", "per_sample_loss", "no_tf32"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel (``.module``), Opacus GradSampleModule (``._module``) and
    ``torch.compile`` (``._orig_mod``) wrappers, which add hooks or graph capture that
    per-sample input derivatives do not need."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(getattr(model, "_module", None), nn.Module):
            model = model._module
        else:
            return model


def _is_opacus_wrapper(model: nn.Module) -> bool:
    return all(callable(getattr(model, name, None)) for name in ("add_hooks", "remove_hooks")) and hasattr(model, "_module")


@contextlib.contextmanager
def without_wrapper_hooks(model: nn.Module) -> Iterator[None]:
    """Take an Opacus ``GradSampleModule``'s per-sample-gradient hooks off its inner layers while
    scoring, and put them back (enabled or disabled, as they were) afterwards.

    Unwrapping alone is not enough: the hooks live on the inner layers. Live, they fire during the
    input backward passes and corrupt Opacus' activation stacks; disabled, they still wrap the
    layers in a ``BackwardHook`` autograd function that ``torch.func`` cannot differentiate.
    """
    wrappers = []
    current = model
    while isinstance(current, nn.Module):
        if _is_opacus_wrapper(current) and hasattr(current, "autograd_grad_sample_hooks"):
            wrappers.append((current, getattr(current, "hooks_enabled", True)))
        nxt = getattr(current, "_module", None) or getattr(current, "module", None) or getattr(current, "_orig_mod", None)
        current = nxt if isinstance(nxt, nn.Module) else None
    for wrapper, _ in wrappers:
        wrapper.remove_hooks()
    try:
        yield
    finally:
        for wrapper, enabled in wrappers:
            wrapper.add_hooks(loss_reduction=wrapper.loss_reduction, batch_first=wrapper.batch_first,
                              force_functorch=getattr(wrapper, "force_functorch", False))
            if not enabled:
                wrapper.disable_hooks()


@contextlib.contextmanager
def scoring_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (BatchNorm uses running statistics, so samples in a batch are independent) and
    parameters frozen, both restored on exit exactly as the caller had them."""
    modes = [(m, m.training) for m in model.modules()]
    frozen = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p in frozen:
            p.requires_grad_(True)


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full fp32 matmuls and convolutions: TF32 rounds at about the size of an h=1e-3 step."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


class LogitFn:
    """``x -> logits (B, C)`` for a model, applying ``output_transform`` and checking the result."""

    def __init__(self, model: nn.Module, output_transform: Callable | None = None):
        self.model = model
        self.output_transform = output_transform

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if self.output_transform is not None:
            out = self.output_transform(out)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"the model returned a {type(out).__name__}, not a logits tensor; pass "
                "output_transform=... that picks the logits (e.g. output_transform=lambda out: out[0] "
                "or lambda out: out['logits'])"
            )
        if out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"the model must return logits of shape (B, C) = ({x.shape[0]}, C); got {tuple(out.shape)}. "
                "Use output_transform to reshape or select them."
            )
        return out


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample, L_b = -log softmax(z_b)[y_b], computed through log-softmax."""
    return F.cross_entropy(logits, y, reduction="none")
