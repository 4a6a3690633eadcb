"""Input validation and the piecewise-linearity check behind the exact estimator."""
from __future__ import annotations

import threading
import weakref
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import BatchDependentModelError, DataError, NonFiniteError, NotPiecewiseLinearError
from ._model import LogitFn, scoring_model

__all__ = ["check_batch", "check_batch_independent", "check_labels", "is_piecewise_linear", "require_piecewise_linear",
           "graph_nodes"]


def check_batch(x: torch.Tensor, y: torch.Tensor | Sequence[int],
                model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a batch of inputs and labels (and that it fits ``model``).

    Args:
        x: inputs (B, ...), float32 or float64, finite, on a real device.
        y: integer class labels (B,), a tensor or anything ``torch.as_tensor`` takes.
        model: the model the batch is for: its parameters' dtype and device must match ``x``, and it must not
            normalise with batch statistics (see :func:`check_batch_independent`). None: not checked.

    Returns:
        ``(x, y)``: ``x`` detached, ``y`` as int64 on ``x``'s device.

    Raises:
        TypeError: ``x`` is not a floating-point tensor of float32 / float64, ``y`` does not hold integers, or
            the model's parameters have another dtype.
        DataError: ``x`` is a meta tensor, unbatched or empty, ``y`` has another length, or the model is on
            another device.
        NonFiniteError: ``x`` holds NaN or Inf (the message names the samples).
        BatchDependentModelError: the model normalises with the batch's own statistics.
    """
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
        raise DataError("x is a meta tensor (a shape without data); pass real inputs on the cpu or a cuda device")
    x = x.detach()  # derivatives are taken with respect to x here, never through the caller's graph
    if x.dim() < 2:
        raise DataError(f"x must be batched with shape (B, ...), got shape {tuple(x.shape)}; "
                        "add a batch dim with x.unsqueeze(0)")
    if x.shape[0] == 0:
        raise DataError("x is an empty batch (B = 0); pass at least one sample")
    if not bool(torch.isfinite(x).all()):
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        raise NonFiniteError(f"x contains NaN or Inf in sample(s) {bad.nonzero().flatten()[:10].tolist()}; "
                             "clean the inputs first")
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"y must hold integer class labels (got {y.dtype}); convert with y.long()")
    if y.shape != (x.shape[0],):
        raise DataError(f"y must have shape (B,) = ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    if model is not None:
        param = next(model.parameters(), None)
        if param is not None and param.is_floating_point() and param.dtype != x.dtype:
            raise TypeError(f"x is {x.dtype} but the model's parameters are {param.dtype}; cast one to match "
                            f"(e.g. model.to({x.dtype}))")
        if param is not None and param.device != x.device:
            raise DataError(f"x is on {x.device} but the model is on {param.device}; move one with .to()")
        check_batch_independent(model)
    return x, y.to(device=x.device, dtype=torch.int64)


def check_batch_independent(model: nn.Module, logit_fn: LogitFn | None = None, x: torch.Tensor | None = None) -> None:
    """Refuse a model whose output for one sample depends on the rest of its batch.

    Models are scored in eval mode, where a BatchNorm with running statistics is a fixed affine map per
    channel; one built with ``track_running_stats=False`` has none and normalises with the batch's own
    mean and variance even then. A forward can also do so by itself (``F.batch_norm(..., training=True)``,
    statistics over dim 0): given ``logit_fn`` and ``x``, the logits of ``x[0]`` beside two different
    batch-mates (``x[1]`` or zeros, and ``x[0]`` itself) must agree to rounding. The probe (two forwards of
    two samples) runs once per model: a model that passed is not probed again until its modules change.

    Args:
        model: the (unwrapped) model to score; keys the memory of the probe.
        logit_fn: the logits of its eval-mode scoring copy (None: the module check only).
        x: a batch (B, ...) of the inputs to score; ``x[0]`` (and ``x[1]``) are probed.

    Raises:
        BatchDependentModelError: a BatchNorm has no running statistics (the message names up to five), or the
            probe's logits depend on the batch-mates.
    """
    bad = [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.running_mean is None or m.running_var is None)]
    if bad:
        raise BatchDependentModelError(
            f"the model normalises with the batch's own statistics in {', '.join(bad[:5])}: a BatchNorm without "
            "running statistics does so even in eval mode, so a sample's curvature would depend on the rest of its "
            "batch; build it with track_running_stats=True (and train it), or use GroupNorm / LayerNorm"
        )
    if logit_fn is None or x is None:
        return
    structure = _structure(model)
    with _DECIDED_LOCK:
        if _INDEPENDENT.get(model) == structure:
            return
    change = _batchmates_change(logit_fn, x)
    if change is None:  # the model fails on the probe's batches: its own forward will say why
        return
    if change > 1e4 * torch.finfo(x.dtype).eps:
        raise BatchDependentModelError(
            f"the model's output for a sample depends on the rest of its batch: beside other batch-mates the same "
            f"sample's logits change by {change:.2g} (relative), so its curvature would too. The forward normalises "
            "with batch statistics even in eval mode (F.batch_norm(..., training=True), a BatchNorm switched to "
            "training inside forward, or means / variances over the batch dim); use running statistics "
            "(nn.BatchNorm with track_running_stats=True, trained, in eval mode) or a per-sample normalisation "
            "(GroupNorm / LayerNorm)"
        )
    with _DECIDED_LOCK:
        _INDEPENDENT[model] = structure


def _batchmates_change(logit_fn: LogitFn, x: torch.Tensor) -> float | None:
    """The largest change of ``x[0]``'s logits between two batches of two with other batch-mates, relative to them.

    None when the model fails on those batches.
    """
    x0 = x[:1]
    mate = x[1:2] if x.shape[0] > 1 and not torch.equal(x[1:2], x0) else torch.zeros_like(x0)
    if torch.equal(mate, x0):
        mate = torch.ones_like(x0)
    try:
        with torch.no_grad():
            a, b = logit_fn(torch.cat([x0, mate]))[0], logit_fn(torch.cat([x0, x0]))[0]
    except (RuntimeError, ValueError, TypeError, AssertionError):  # torchvision ViT asserts its input size
        return None
    scale = torch.maximum(a.abs().max(), b.abs().max()).clamp_min(torch.finfo(a.dtype).tiny)
    return float((a - b).abs().max() / scale)


def check_labels(y: torch.Tensor, num_classes: int) -> None:
    """Refuse labels outside ``[0, num_classes)``.

    Args:
        y: integer class labels (B,).
        num_classes: the model's number of logits C.

    Raises:
        DataError: a label lies outside ``[0, num_classes)`` (the message names the range found).
    """
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(
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

# Autograd nodes (class names without their version digit) that are piecewise linear in their
# differentiable inputs once the weights are frozen: affine maps, ReLU-family kinks, max/min
# selection, pooling, padding, reshaping and indexing.
PL_NODES = frozenset("""
    AccumulateGrad AddBackward SubBackward NegBackward MulBackward DivBackward AddmmBackward MmBackward BmmBackward
    BaddbmmBackward ConvolutionBackward NativeBatchNormBackward CudnnBatchNormBackward ViewBackward UnsafeViewBackward
    ReshapeAliasBackward PermuteBackward TransposeBackward TBackward ExpandBackward CloneBackward SqueezeBackward
    UnsqueezeBackward SliceBackward SelectBackward IndexBackward IndexSelectBackward GatherBackward CatBackward
    StackBackward SplitBackward SplitWithSizesBackward UnbindBackward SumBackward MeanBackward ToCopyBackward
    AsStridedBackward FlipBackward RollBackward ConstantPadNdBackward ReflectionPad1DBackward ReflectionPad2DBackward
    ReplicationPad2DBackward UpsampleNearest2DBackward UpsampleBilinear2DBackward AvgPool2DBackward AvgPool3DBackward
    AdaptiveAvgPool2DBackward AdaptiveAvgPool3DBackward MaxPool2DWithIndicesBackward MaxPool3DWithIndicesBackward
    AdaptiveMaxPool2DBackward ReluBackward LeakyReluBackward HardtanhBackward PreluKernelBackward ClampBackward
    ClampMinBackward ClampMaxBackward AbsBackward MaximumBackward MinimumBackward MaxBackward MinBackward WhereBackward
""".split())
# Products: non-linear when more than one factor (input positions) depends on x.
_FACTORS = {"MulBackward0": (0, 1), "MmBackward0": (0, 1), "BmmBackward0": (0, 1), "AddmmBackward0": (1, 2),
            "BaddbmmBackward0": (1, 2), "ConvolutionBackward0": (0, 1)}

_DECIDED: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()  # model -> (structure, answer)
_DECIDED_LOCK = threading.Lock()
_INDEPENDENT: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()  # model -> structure probed


def require_piecewise_linear(method: str, piecewise_linear: bool, accept_gauss_newton: bool = False) -> None:
    r"""Refuse an estimator that is exact only for piecewise-linear networks on a smooth model.

    Such estimators (``exact``, ``sampled``) compute the Gauss-Newton term of the input Hessian; on a
    smooth model they would miss the residual :math:`\sum_c g_c \nabla_x^2 z_c` (see :mod:`.deflated`).

    Args:
        method: the estimator's name, for the message.
        piecewise_linear: the answer of :func:`is_piecewise_linear` for the model.
        accept_gauss_newton: the caller asked for the Gauss-Newton value knowingly: nothing is refused.

    Raises:
        NotPiecewiseLinearError: the model is smooth and ``accept_gauss_newton`` is False.
    """
    if not piecewise_linear and not accept_gauss_newton:
        raise NotPiecewiseLinearError(
            f"method={method!r} is exact only for piecewise-linear networks, and this model has smooth pieces "
            "(GELU, SiLU, tanh, sigmoid, LayerNorm, attention ...): it would return the Gauss-Newton term "
            "JᵀAJ, not the input Hessian. Use method='deflated' or 'hutchinson' for the true Hessian, or pass "
            "accept_gauss_newton=True to get the Gauss-Newton value knowingly."
        )


def _structure(model: nn.Module) -> tuple:
    """What the decision depends on besides the weights.

    Every submodule's name, object and class, and any forward replaced on an instance.
    """
    return tuple((name, id(m), type(m), id(m.__dict__.get("forward"))) for name, m in model.named_modules())


def is_piecewise_linear(logit_fn: LogitFn, x: torch.Tensor, model: nn.Module | None = None) -> bool:
    """Whether the logits' second derivative w.r.t. the input vanishes at every sample of ``x``.

    The model is judged in eval mode. Decided, in order, by:

    1. the modules: one of ``SMOOTH_MODULES`` (GELU, tanh, ELU, LayerNorm, attention ...) means smooth;
    2. the autograd graph from ``x`` to the logits: if every node is in ``PL_NODES`` (and no
       product or division has more than one x-dependent factor, no BatchNorm uses batch
       statistics) the network is piecewise linear everywhere;
    3. otherwise numerically: ∇²(uᵀz)·v by double backward at every sample of the batch, with
       random u and v per sample. Autograd differentiates ReLU, max-pool and eval BatchNorm as
       exactly linear pieces, so this is exactly zero at samples where no smooth piece is active
       and (almost surely) nonzero where one is (an input-gated tanh, say). A model whose second
       derivative cannot be taken (an op without a double-backward formula) is not certified.

    Answers from 1 and 2, and "smooth" from 3, are remembered for ``model`` (default
    ``logit_fn.model``) until its modules change; "piecewise linear" from 3 holds for these
    samples only and is re-checked on every batch. Not seen: an op reached only through Python
    control flow that depends on the input values and that this batch does not take.

    Args:
        logit_fn: the logits of the model to judge.
        x: the batch (B, ...) the answer is for.
        model: the model the answer is remembered for; default ``logit_fn.model``.

    Returns:
        True when the network is piecewise linear at every sample of ``x`` (so the input Hessian of the
        cross-entropy is exactly the Gauss-Newton matrix and ``exact`` applies), False otherwise.

    Raises:
        RuntimeError: the model fails on ``x`` for another reason than a missing double-backward formula.
    """
    model = logit_fn.model if model is None else model
    structure = _structure(model)
    with _DECIDED_LOCK:
        decided = _DECIDED.get(model)
    if decided is not None and decided[0] == structure:
        return decided[1]
    answer = False if any(isinstance(m, SMOOTH_MODULES) for m in model.modules()) else _graph_answer(logit_fn, x)
    if answer is None:
        answer = _vanishing_second_derivative(logit_fn, x)
        if answer:
            return True
    with _DECIDED_LOCK:
        _DECIDED[model] = (structure, answer)
    return answer


def _graph_answer(logit_fn: LogitFn, x: torch.Tensor) -> bool | None:
    """Judge the autograd graph from ``x`` to the logits (step 2 of :func:`is_piecewise_linear`).

    True if every node is piecewise linear in x, False for a product of x-dependent factors or
    training-mode BatchNorm, None for a node outside ``PL_NODES`` (undecided).
    """
    xs = x.detach().requires_grad_(True)
    with scoring_model(logit_fn.model) as frozen, torch.enable_grad():  # only x may be a live leaf
        z = LogitFn(frozen, logit_fn.output_transform)(xs)
    for node in graph_nodes(z.grad_fn):
        name = type(node).__name__
        live = [fn is not None for fn, _ in node.next_functions]
        if name.rstrip("0123456789") not in PL_NODES:
            return None
        factors = _FACTORS.get(name, ())
        if sum(live[i] for i in factors if i < len(live)) > 1 or (name == "DivBackward0" and live[1:2] == [True]):
            return False
        if getattr(node, "_saved_training", False):
            return False
    return True


def graph_nodes(root: torch.autograd.graph.Node | None) -> Iterator[torch.autograd.graph.Node]:
    """Every autograd node reachable from ``root``, each once, depth first.

    Args:
        root: a ``grad_fn`` (None: a tensor without a graph, no nodes).

    Yields:
        Each node reachable through ``next_functions``, ``root`` first.
    """
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        stack.extend(fn for fn, _ in node.next_functions)


def _vanishing_second_derivative(logit_fn: LogitFn, x: torch.Tensor) -> bool:
    """Whether ∇²(uᵀz)·v is exactly zero at every sample of ``x``.

    Random u, v (step 3 of :func:`is_piecewise_linear`); False when an op has no double-backward formula.
    """
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
    """Whether ``err`` is autograd's "derivative for <op> is not implemented".

    Args:
        err: an exception raised while differentiating.

    Returns:
        True when it says an op has no (double-)backward formula.
    """
    return "derivative for" in str(err) and "not implemented" in str(err)
