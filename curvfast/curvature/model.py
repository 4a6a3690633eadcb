"""Model handling shared by every estimator: unwrapping, scoring mode, logits, per-sample losses."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["unwrap_model", "scoring_mode", "LogitFn", "per_sample_loss", "no_tf32"]


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
