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
           "without_wrapper_hooks", "LogitFn", "second_order_ops", "SDPA_MATH", "HARD_AS_CLAMP"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip the wrappers that add hooks or graph capture per-sample input derivatives do not need.

    DDP / DataParallel (``.module``), Opacus GradSampleModule (``._module``) and ``torch.compile``
    (``._orig_mod``), nested in any order.

    Args:
        model: a model, wrapped or not.

    Returns:
        The innermost module (``model`` itself when it is not wrapped).
    """
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
    hooks = all(callable(getattr(model, name, None)) for name in ("add_hooks", "remove_hooks"))
    return hooks and hasattr(model, "_module")


@contextlib.contextmanager
def without_wrapper_hooks(model: nn.Module) -> Iterator[None]:
    """Take an Opacus ``GradSampleModule``'s per-sample-gradient hooks off its inner layers while scoring.

    They are put back (enabled or disabled, as they were) afterwards. Unwrapping alone is not enough:
    the hooks live on the inner layers. Live, they fire during the input backward passes and corrupt
    Opacus' activation stacks; disabled, they still wrap the layers in a ``BackwardHook`` autograd
    function that ``torch.func`` cannot differentiate.

    Args:
        model: the caller's model, possibly wrapped (every ``GradSampleModule`` in its chain of wrappers counts).

    Yields:
        None, with the hooks removed.
    """
    wrappers = []
    current = model
    while isinstance(current, nn.Module):
        if _is_opacus_wrapper(current) and hasattr(current, "autograd_grad_sample_hooks"):
            wrappers.append((current, getattr(current, "hooks_enabled", True)))
        nxt = (getattr(current, "_module", None) or getattr(current, "module", None)
               or getattr(current, "_orig_mod", None))
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
    """Put ``model`` itself in eval mode with its parameters frozen, both restored on exit.

    Eval mode makes BatchNorm use its running statistics, so samples in a batch are independent;
    train/eval flags and ``requires_grad`` flags come back exactly as the caller had them.

    Args:
        model: the model to score in place.

    Yields:
        ``model``, in eval mode and frozen.
    """
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
    """Copy the module tree, sharing every tensor with the caller's model.

    Parameters, buffers and other tensor attributes of the copy are detached aliases of the caller's
    (same storage, ``requires_grad=False``): no tensor data is copied.

    Args:
        model: the model to copy.

    Returns:
        New module objects computing what ``model`` computes.

    Raises:
        TypeError: an attribute cannot be deep-copied (a lock, an open file ...); also ``RuntimeError``
            or ``copy.Error``, whatever ``copy.deepcopy`` raises for it.
    """
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
    """Whether :func:`_same_state` can compare ``module`` with a copy.

    True when every attribute is a tensor, a plain value, a container of parameters, buffers or
    submodules, or an empty hook dict.
    """
    return all(k in ("_parameters", "_buffers", "_modules") or isinstance(v, torch.Tensor) or _plain(v)
               or (isinstance(v, dict) and not v) for k, v in vars(module).items())


def _alias(t, a) -> bool:
    if t is None or a is None:
        return t is a
    return (a.data_ptr() == t.data_ptr() and a.shape == t.shape and a.stride() == t.stride() and a.dtype == t.dtype
            and a.device == t.device)


def _same_state(module: nn.Module, copied: nn.Module) -> bool:
    """Whether ``copied`` (a ``shared_copy`` of a cacheable module) still computes what ``module`` does in eval mode.

    Same class and attributes, plain values equal, tensors aliasing the same memory, the same
    submodule slots, no hooks.
    """
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
    """``shared_copy(model)``, reused from the previous call while it still matches the model.

    See ``_same_state``; checking costs a fraction of copying. Models with other kinds of
    attributes (hooks, arbitrary objects) are copied afresh on every call.
    """
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
    """Whether ``model`` is a scoring copy that :func:`scoring_model` reuses across calls.

    Such copies hold plain modules only (no hooks, no arbitrary attributes), so per-copy caches may key on them.

    Args:
        model: a module, typically the one :func:`scoring_model` yielded.

    Returns:
        True for a reused scoring copy.
    """
    with _COPIES_LOCK:
        return model in _REUSED


@contextlib.contextmanager
def scoring_model(model: nn.Module) -> Iterator[nn.Module]:
    """The model to score with: an eval-mode copy sharing the caller's weights.

    The copy (see :func:`shared_copy`; reused across calls, see ``_cached_copy``) leaves the caller's
    train/eval flags, ``requires_grad`` flags and BatchNorm statistics untouched, and concurrent calls
    (threads, re-entrant hooks) on one model do not interfere. A model with an attribute that cannot be
    deep-copied (a lock, an open file ...) is scored in place under :func:`scoring_mode`, one call at a time.

    Args:
        model: the caller's (unwrapped) model.

    Yields:
        The eval-mode, frozen model to differentiate through.
    """
    try:
        scored = _cached_copy(model)
    except (TypeError, RuntimeError, copy.Error):  # what deepcopy raises for such attributes
        with _IN_PLACE_LOCK, scoring_mode(model):
            yield model
        return
    yield scored


_FINITE: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()  # model -> tensors checked finite


def check_finite_model(model: nn.Module) -> None:
    """Refuse a model with a NaN or infinite parameter or buffer.

    A model that passed is not scanned again while each of its parameters and buffers is the same
    tensor, at the same address and in-place version (an optimizer step, ``load_state_dict`` or
    ``.to()`` makes it scan again). Writes through ``.data`` keep the version; a NaN they bring in
    is still refused, by the check of the scores.

    Args:
        model: the model to score.

    Raises:
        NonFiniteError: a floating-point parameter or buffer holds NaN or Inf (the message names up to five).
    """
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


SDPA_MATH = "attention: math SDPA backend (the fused kernels have no second derivative)"
HARD_AS_CLAMP = "hardsigmoid/hardswish: computed through clamp (the same function, with second derivatives)"


def _uses_attention(model: nn.Module) -> bool:
    """An ``nn.MultiheadAttention`` or a module whose class is named like an attention block (timm, HF)."""
    return any(isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower() for m in model.modules())


class _HardAsClamp(torch.overrides.TorchFunctionMode):
    """``hardsigmoid(x) = clamp(x/6 + 1/2, 0, 1)`` and ``hardswish(x) = x·hardsigmoid(x)`` through ``clamp``.

    The same functions; autograd has no derivative of ``hardsigmoid_backward``, but differentiates the clamp
    form twice (hardswish's second derivative is 1/3 on (-3, 3), 0 outside).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (nn.functional.hardsigmoid, nn.functional.hardswish):
            x = args[0] if args else kwargs["input"]
            gate = torch.clamp(x / 6 + 0.5, 0.0, 1.0)
            return gate if func is nn.functional.hardsigmoid else x * gate
        return func(*args, **kwargs)


@contextlib.contextmanager
def second_order_ops(model: nn.Module) -> Iterator[tuple[str, ...]]:
    """Run ``model``'s ops that lack second derivatives in a form that has them, within the block.

    Attention (``scaled_dot_product_attention``) is forced onto the math backend: the fused flash /
    memory-efficient kernels have no double backward. ``hardsigmoid`` / ``hardswish`` (MobileNetV3) are
    computed through ``clamp``. Only models holding such modules are touched (the SDPA setting is
    process-wide).

    Args:
        model: the model about to be differentiated.

    Yields:
        The adaptations made (:data:`SDPA_MATH`, :data:`HARD_AS_CLAMP`), empty when none was needed.
    """
    adaptations = []
    with contextlib.ExitStack() as stack:
        if _uses_attention(model):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            adaptations.append(SDPA_MATH)
        if any(isinstance(m, (nn.Hardsigmoid, nn.Hardswish)) for m in model.modules()):
            stack.enter_context(_HardAsClamp())
            adaptations.append(HARD_AS_CLAMP)
        yield tuple(adaptations)


class LogitFn:
    """``x -> logits (B, C)`` for a model, applying ``output_transform`` and checking the result.

    Args:
        model: the module to call (typically the scoring copy).
        output_transform: picks the logits out of the model's output (a tuple, a dict ...); None: the
            output is the logits.
        owner: the caller's model, what per-model caches (pass widths, piecewise linearity) key on;
            default ``model``.
    """

    def __init__(self, model: nn.Module, output_transform: Callable | None = None, owner: nn.Module | None = None):
        self.model = model
        self.output_transform = output_transform
        self.owner = model if owner is None else owner  # the caller's model: what per-model caches key on

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of ``x``.

        Args:
            x: inputs (B, ...).

        Returns:
            The logits (B, C), with the graph from ``x`` when ``x`` requires grad.

        Raises:
            UnsupportedModelError: the (transformed) output is not a tensor, or not of shape (B, C); the
                message names ``output_transform`` as the fix.
        """
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
