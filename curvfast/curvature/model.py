"""Model handling shared by every estimator: unwrapping, scoring mode, logits, per-sample losses."""
from __future__ import annotations

import contextlib
import copy
import threading
from typing import Callable, Iterator

import torch
from torch import nn

__all__ = ["unwrap_model", "scoring_mode", "scoring_model", "check_finite_model", "without_wrapper_hooks", "LogitFn",
           "no_tf32"]


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


_IN_PLACE_LOCK = threading.RLock()  # re-entered by the piecewise-linearity check


def _shared_copy(model: nn.Module) -> nn.Module:
    """New module objects whose parameters, buffers and other tensor attributes are detached
    aliases of the caller's (same storage, ``requires_grad=False``): no tensor data is copied."""
    memo = {}
    for m in model.modules():
        for t in vars(m).values():  # e.g. the weight that torch.nn.utils.weight_norm recomputes
            if isinstance(t, torch.Tensor):
                memo[id(t)] = t.detach()
    for t in model.buffers():
        memo[id(t)] = t.detach()
    for t in model.parameters():
        memo[id(t)] = nn.Parameter(t.detach(), requires_grad=False)
    return copy.deepcopy(model, memo)


@contextlib.contextmanager
def scoring_model(model: nn.Module) -> Iterator[nn.Module]:
    """The model to score with: an eval-mode copy sharing the caller's weights (see
    ``_shared_copy``), so the caller's train/eval flags, ``requires_grad`` flags and BatchNorm
    statistics are never touched and concurrent calls (threads, re-entrant hooks) on one model
    do not interfere. A model with an attribute that cannot be deep-copied (a lock, an open
    file ...) is scored in place under ``scoring_mode``, one call at a time."""
    try:
        scored = _shared_copy(model)
    except (TypeError, RuntimeError, copy.Error):  # what deepcopy raises for such attributes
        with _IN_PLACE_LOCK, scoring_mode(model):
            yield model
        return
    yield scored.eval()


def check_finite_model(model: nn.Module) -> None:
    """Refuse a model with a NaN or infinite parameter or buffer, naming the first one."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    floating = [(name, t) for name, t in tensors if t.is_floating_point() and not t.is_meta]
    if not floating:
        return
    finite = torch.stack([torch.isfinite(t).all().to(floating[0][1].device) for _, t in floating]).tolist()
    bad = [name for (name, _), ok in zip(floating, finite) if not ok]
    if bad:
        raise ValueError(
            f"the model holds NaN or Inf in {', '.join(bad[:5])}: the checkpoint is corrupt or its training "
            "diverged; retrain or load other weights"
        )


_TF32_LOCK = threading.Lock()
_TF32_USERS = [0, None]  # active no_tf32 blocks in any thread, and the settings to restore


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full fp32 matmuls and convolutions: TF32 rounds at about the size of an h=1e-3 step.

    The settings are process-wide: the first of overlapping blocks (in any thread) saves them
    and the last one restores them. Only the backend flags are read and written: torch's generic
    ``get_float32_matmul_precision`` raises once a user has mixed its old and new TF32 APIs."""
    with _TF32_LOCK:
        if _TF32_USERS[0] == 0:
            _TF32_USERS[1] = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        _TF32_USERS[0] += 1
    try:
        yield
    finally:
        with _TF32_LOCK:
            _TF32_USERS[0] -= 1
            if _TF32_USERS[0] == 0:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = _TF32_USERS[1]


class LogitFn:
    """``x -> logits (B, C)`` for a model, applying ``output_transform`` and checking the result."""

    def __init__(self, model: nn.Module, output_transform: Callable | None = None, owner: nn.Module | None = None):
        self.model = model
        self.output_transform = output_transform
        self.owner = model if owner is None else owner  # the caller's model: what per-model caches key on

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
