"""Model handling shared by every estimator: unwrapping, scoring mode, logits, per-sample losses."""
from __future__ import annotations

import contextlib
import copy
import itertools
import threading
import types
import weakref
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import NonFiniteError, UnsupportedModelError

__all__ = ["unwrap_model", "scoring_mode", "scoring_model", "shared_copy", "reused_copy", "check_finite_model",
           "without_wrapper_hooks", "LogitFn", "no_tf32"]


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


def shared_copy(model: nn.Module) -> nn.Module:
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


_COPIES: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()  # model -> (names, copied modules)
_COPIES_LOCK = threading.Lock()
_REUSED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # the copies in _COPIES
# Values that deepcopy keeps as they are (classes, functions) or copies by value (numbers ...)
_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device, torch.Size, type, types.FunctionType,
          types.BuiltinFunctionType)


def _plain(value) -> bool:
    """Numbers, strings, dtypes, classes, functions and tuples or lists of them: compared with ``==``."""
    if isinstance(value, (tuple, list, set, frozenset)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _cacheable(module: nn.Module) -> bool:
    """Whether every attribute is a tensor, a plain value, a container of parameters, buffers or
    submodules, or an empty hook dict: what :func:`_same_state` can compare with a copy."""
    return all(k in ("_parameters", "_buffers", "_modules") or isinstance(v, torch.Tensor) or _plain(v)
               or (isinstance(v, dict) and not v) for k, v in vars(module).items())


def _alias(t, a) -> bool:
    if t is None or a is None:
        return t is a
    return (a.data_ptr() == t.data_ptr() and a.shape == t.shape and a.stride() == t.stride() and a.dtype == t.dtype
            and a.device == t.device)


def _same_state(module: nn.Module, copied: nn.Module) -> bool:
    """Whether ``copied`` (a ``shared_copy`` of a cacheable module) still computes what ``module``
    does in eval mode: same class and attributes, plain values equal, tensors aliasing the same
    memory, the same submodule slots, no hooks."""
    mine, theirs = vars(module), vars(copied)
    if type(module) is not type(copied) or mine.keys() != theirs.keys():
        return False
    for k, v in mine.items():
        w = theirs[k]
        if k == "training":
            continue
        if k in ("_parameters", "_buffers"):
            if v.keys() != w.keys() or not all(_alias(t, w[n]) for n, t in v.items()):
                return False
        elif k == "_modules":
            if v.keys() != w.keys() or any((m is None) != (w[n] is None) for n, m in v.items()):
                return False
        elif isinstance(v, torch.Tensor):
            if not isinstance(w, torch.Tensor) or not _alias(v, w):
                return False
        elif isinstance(v, dict):
            if v or w:
                return False
        elif not (_plain(v) and type(v) is type(w) and v == w):
            return False
    return True


def _cached_copy(model: nn.Module) -> nn.Module:
    """``shared_copy(model)``, reused from the previous call while it still matches the model
    (see ``_same_state``; checking costs a fraction of copying). Models with other kinds of
    attributes (hooks, arbitrary objects) are copied afresh on every call."""
    named = list(model.named_modules())
    with _COPIES_LOCK:
        cached = _COPIES.get(model)
    if cached is not None and cached[0] == [n for n, _ in named] and all(
            _same_state(m, c) for (_, m), c in zip(named, cached[1])):
        return cached[1][0]
    scored = shared_copy(model).eval()
    if all(_cacheable(m) for _, m in named):
        with _COPIES_LOCK:
            _COPIES[model] = ([n for n, _ in named], [m for _, m in scored.named_modules()])
            _REUSED.add(scored)
    return scored


def reused_copy(model: nn.Module) -> bool:
    """Whether ``model`` is a scoring copy that ``scoring_model`` reuses across calls: plain
    modules only (no hooks, no arbitrary attributes), so per-copy caches may key on it."""
    with _COPIES_LOCK:
        return model in _REUSED


@contextlib.contextmanager
def scoring_model(model: nn.Module) -> Iterator[nn.Module]:
    """The model to score with: an eval-mode copy sharing the caller's weights (see
    ``shared_copy``; reused across calls, see ``_cached_copy``), so the caller's train/eval
    flags, ``requires_grad`` flags and BatchNorm statistics are never touched and concurrent
    calls (threads, re-entrant hooks) on one model do not interfere. A model with an attribute
    that cannot be deep-copied (a lock, an open file ...) is scored in place under
    ``scoring_mode``, one call at a time."""
    try:
        scored = _cached_copy(model)
    except (TypeError, RuntimeError, copy.Error):  # what deepcopy raises for such attributes
        with _IN_PLACE_LOCK, scoring_mode(model):
            yield model
        return
    yield scored


_FINITE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()  # model -> tensors checked finite


def check_finite_model(model: nn.Module) -> None:
    """Refuse a model with a NaN or infinite parameter or buffer, naming the first one.

    A model that passed is not scanned again while each of its parameters and buffers is the same
    tensor, at the same address and in-place version (an optimizer step, ``load_state_dict`` or
    ``.to()`` makes it scan again). Writes through ``.data`` keep the version; a NaN they bring in
    is still refused, by the check of the scores."""
    state = tuple((id(t), t.data_ptr(), t._version) for t in itertools.chain(model.parameters(), model.buffers()))
    if _FINITE.get(model) == state:
        return
    tensors = [*model.named_parameters(), *model.named_buffers()]
    floating = [(name, t) for name, t in tensors if t.is_floating_point() and not t.is_meta]
    if not floating:
        return
    finite = torch.stack([torch.isfinite(t).all().to(floating[0][1].device) for _, t in floating]).tolist()
    bad = [name for (name, _), ok in zip(floating, finite) if not ok]
    if bad:
        raise NonFiniteError(
            f"the model holds NaN or Inf in {', '.join(bad[:5])}: the checkpoint is corrupt or its training "
            "diverged; retrain or load other weights"
        )
    _FINITE[model] = state


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
            raise UnsupportedModelError(
                f"the model returned a {type(out).__name__}, not a logits tensor; pass "
                "output_transform=... that picks the logits (e.g. output_transform=lambda out: out[0] "
                "or lambda out: out['logits'])"
            )
        if out.dim() != 2 or out.shape[0] != x.shape[0]:
            raise UnsupportedModelError(
                f"the model must return logits of shape (B, C) = ({x.shape[0]}, C); got {tuple(out.shape)}. "
                "Use output_transform to reshape or select them."
            )
        return out
