r"""Fold eval-mode BatchNorm into the convolution or linear layer that feeds it.

In eval mode a BatchNorm is an affine map per channel, :math:`y = s \odot (u - \mu) + \beta` with
:math:`s = \gamma / \sqrt{\sigma^2 + \epsilon}` and the running statistics :math:`\mu, \sigma^2`. When
:math:`u = W * x + b` is the output of a convolution (or of a linear layer on (B, features) inputs)
that feeds nothing else,

.. math::

    y = (s \odot W) * x + s \odot (b - \mu) + \beta,

the same function with one op fewer. Every backward pass of the estimators then skips the
BatchNorm's backward: on a CIFAR ResNet-18 (batch 16, one CPU thread) a class pass costs ~10%
less, which is what lets ``exact`` (C − 1 passes) beat the plain loop of C passes on the
unfolded model by more than one pass in C.

The pairs are found once per scoring copy (``model.reused_copy``) and input shape, by one
forward of one sample through a private copy with hooks: the BatchNorm (running statistics,
the stock forward) reads the output of exactly that layer (the stock forward, no
parametrization, float32 or float64 weights), each module runs once, and in the autograd
graph of the logits that output feeds only the BatchNorm; then the folded copy must give that
sample's logits to within 1000 ulps of their largest. The folded weights are recomputed
from the current weights on every call: one pass over them (ResNet-18, one CPU thread: ~14 ms
with the copy of the module tree, against ~110 ms for one class pass at batch 16), and nothing
is stale after an in-place or ``.data`` update. Whether to fold does not depend on the batch, so
a sample's result does not depend on the batch it is scored in.

A forward may take another path on other inputs (Python control flow) than on the sample the
pairs were found on. The folded BatchNorm is therefore a :class:`FoldedNorm`: it exposes the
BatchNorm's attributes (a forward reading ``bn.weight`` gets the same tensor) and passes through
only the output its folded layer has just returned; given anything else, it raises
:class:`FoldMismatch`, and the caller (``input_curvature``) forgets the pairs for good (see
:func:`unfold`) and scores the batch on the unfolded model.
"""
from __future__ import annotations

import threading
import weakref
from collections import Counter
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._checks import graph_nodes
from ._model import LogitFn, reused_copy, shared_copy

__all__ = ["foldable_pairs", "fold_batchnorms", "unfold", "FoldMismatch", "FoldedNorm"]

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_STOCK_FORWARD = {nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward, nn.Linear.forward}
Pairs = tuple[tuple[str, str], ...]  # (layer name, BatchNorm name)


class FoldMismatch(Exception):
    """A folded BatchNorm met an input other than its folded layer's output.

    Not a RuntimeError, so that no estimator's handler of failed derivatives takes it.
    """


class FoldedNorm(nn.Module):
    """Stands in for a BatchNorm folded into the layer before it.

    Passes through the tensor its layer has just returned (the layer already applies the BatchNorm's
    affine map). Any other input, a layer output it is not given before the next one or before the
    forward ends, raises :class:`FoldMismatch`. Attributes it does not have are read from the BatchNorm
    (kept outside the module tree, so its tensors are not counted twice).

    Args:
        norm: the BatchNorm it replaces.
    """

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.__dict__["norm"] = norm
        self.__dict__["expected"] = None  # a weakref to the layer output not yet passed through (deepcopy: atomic)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["norm"], name)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """The folded layer's output, passed through.

        Args:
            u: the folded layer's output.

        Returns:
            ``u``.

        Raises:
            FoldMismatch: ``u`` is another tensor.
        """
        expected, self.__dict__["expected"] = self.__dict__["expected"], None
        if expected is None or expected() is not u:
            raise FoldMismatch("a folded BatchNorm was given another tensor than its layer's output")
        return u


def _layer_output(layer: nn.Module, _args, out: torch.Tensor) -> None:
    """Forward hook of a folded layer: its output is the one its :class:`FoldedNorm` may pass through next."""
    stand_in = layer.__dict__["_curvfast_folded_norm"]
    if stand_in.__dict__["expected"] is not None:  # called again before its BatchNorm took the first output
        stand_in.__dict__["expected"] = None
        raise FoldMismatch("a folded layer's output did not go to its BatchNorm")
    stand_in.__dict__["expected"] = weakref.ref(out)


def _forward_starts(model: nn.Module, _args) -> None:
    """Forward pre-hook of a folded model: no layer output is pending (a forward that failed may have left one)."""
    for m in model.modules():
        if isinstance(m, FoldedNorm):
            m.__dict__["expected"] = None


def _forward_ends(model: nn.Module, _args, _out) -> None:
    """Forward hook of a folded model: every folded layer's output went through its BatchNorm."""
    for m in model.modules():
        if isinstance(m, FoldedNorm) and m.__dict__["expected"] is not None:
            m.__dict__["expected"] = None
            raise FoldMismatch("a folded layer's output did not go to its BatchNorm")


def fold_batchnorms(model: nn.Module, pairs: Pairs) -> nn.Module:
    r"""Fold each pair's BatchNorm into its layer, in a copy of ``model``.

    Args:
        model: an eval-mode scoring copy.
        pairs: (layer name, BatchNorm name) pairs, from :func:`foldable_pairs`.

    Returns:
        A copy (sharing every tensor it does not rewrite) in which each pair's layer carries
        :math:`W' = s \odot W`, :math:`b' = s \odot (b - \mu) + \beta`, computed from the current weights,
        and its BatchNorm is a :class:`FoldedNorm` passing that layer's output through.
    """
    folded = shared_copy(model)
    modules = dict(folded.named_modules())
    with torch.no_grad():
        for layer_name, norm_name in pairs:
            layer, norm = modules[layer_name], modules[norm_name]
            scale = torch.rsqrt(norm.running_var.double() + norm.eps)
            shift = -norm.running_mean.double() * scale
            if norm.affine:
                scale, shift = scale * norm.weight.double(), shift * norm.weight.double() + norm.bias.double()
            weight = layer.weight * scale.to(layer.weight.dtype).view(-1, *[1] * (layer.weight.dim() - 1))
            bias = shift if layer.bias is None else layer.bias.double() * scale + shift
            layer.weight = nn.Parameter(weight, requires_grad=False)
            layer.bias = nn.Parameter(bias.to(layer.weight.dtype), requires_grad=False)
            parent, _, leaf = norm_name.rpartition(".")
            modules[parent]._modules[leaf] = layer.__dict__["_curvfast_folded_norm"] = FoldedNorm(norm)
            layer.register_forward_hook(_layer_output)
    if pairs:
        folded.register_forward_pre_hook(_forward_starts)
        folded.register_forward_hook(_forward_ends)
    return folded


_PAIRS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()  # copy -> {input key: pairs}
_PAIRS_LOCK = threading.Lock()


def foldable_pairs(model: nn.Module, x: torch.Tensor, output_transform: Callable | None = None) -> Pairs:
    """The (layer, BatchNorm) pairs of a reused scoring copy that fold for inputs like ``x``.

    Found on first use, then remembered while the copy lives (see the module docstring for the rules).

    Args:
        model: the scoring copy that :func:`.model.scoring_model` yielded.
        x: a batch (B, ...): its sample shape, dtype and device key the answer; one sample of it is run.
        output_transform: picks the logits out of the model's output, as in :class:`.model.LogitFn`.

    Returns:
        The pairs, empty when ``model`` is not a reused copy (hooks, unusual attributes), has no such pair,
        or fails on one sample (its own call says why).
    """
    if not reused_copy(model):
        return ()
    key = _key(x)
    with _PAIRS_LOCK:
        known = _PAIRS.setdefault(model, {})
        if key in known:
            return known[key]
    try:
        pairs = _find_pairs(model, x[:1], output_transform)
    except (RuntimeError, TypeError, ValueError, AssertionError):  # e.g. ViT asserting its image size
        pairs = ()
    with _PAIRS_LOCK:
        known[key] = pairs
    return pairs


def unfold(model: nn.Module, x: torch.Tensor) -> None:
    """Forget the pairs of ``model`` for inputs like ``x`` for good: its folded copy met a path it was not found on.

    Args:
        model: the scoring copy that :func:`foldable_pairs` was given.
        x: a batch of the inputs concerned (their sample shape, dtype and device).
    """
    with _PAIRS_LOCK:
        _PAIRS.setdefault(model, {})[_key(x)] = ()


def _key(x: torch.Tensor) -> tuple:
    """What the pairs depend on besides the model: the sample shape, dtype and device."""
    return tuple(x.shape[1:]), x.dtype, str(x.device)


def _stock_layer(m: nn.Module) -> bool:
    """A stock conv / linear layer with float32 or float64 weights.

    A half-precision weight would take one more rounding, at 2⁻⁸ in bfloat16, when the scale is folded into it.
    """
    return (isinstance(m, _LAYERS) and type(m).forward in _STOCK_FORWARD and "forward" not in vars(m)
            and not parametrize.is_parametrized(m) and m.weight.dtype in (torch.float32, torch.float64))


def _stock_norm(m: nn.Module) -> bool:
    batchnorm = nn.modules.batchnorm._BatchNorm
    return (isinstance(m, batchnorm) and type(m).forward is batchnorm.forward and "forward" not in vars(m)
            and not m.training and m.running_mean is not None and m.running_var is not None)


def _find_pairs(model: nn.Module, x1: torch.Tensor, output_transform: Callable | None) -> Pairs:
    """Run one sample through a private copy with hooks and keep the pairs whose fold leaves the logits unchanged.

    See the module docstring for the rules.
    """
    probe = shared_copy(model)
    names = {m: n for n, m in probe.named_modules()}
    calls, made_by, read_by = Counter(), {}, {}

    def after_layer(module, args, out):
        calls[module] += 1
        if out.dim() == 2 or not isinstance(module, nn.Linear):  # channels on dim 1, as BatchNorm reads them
            made_by[out.grad_fn] = module

    def before_norm(module, args):
        calls[module] += 1
        read_by[module] = args[0].grad_fn

    layers = [m for m in probe.modules() if _stock_layer(m)]
    norms = [m for m in probe.modules() if _stock_norm(m)]
    if not layers or not norms:
        return ()
    handles = ([m.register_forward_hook(after_layer) for m in layers]
               + [m.register_forward_pre_hook(before_norm) for m in norms])
    try:
        with torch.enable_grad():
            logits = LogitFn(probe, output_transform)(x1.detach().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    consumers = Counter(fn for node in graph_nodes(logits.grad_fn) for fn, _ in node.next_functions if fn is not None)
    pairs = []
    for norm, node in read_by.items():
        layer = made_by.get(node)
        if (node is not None and layer is not None and calls[layer] == 1 and calls[norm] == 1
                and consumers[node] == 1 and layer.weight.shape[0] == norm.num_features):
            pairs.append((names[layer], names[norm]))
    return tuple(pairs) if pairs and _same_logits(model, tuple(pairs), x1, logits.detach(), output_transform) else ()


def _same_logits(model: nn.Module, pairs: Pairs, x1: torch.Tensor, logits: torch.Tensor,
                 output_transform: Callable | None) -> bool:
    """Whether the folded model runs and gives the logits of ``model`` on ``x1`` to within the rounding of folding.

    A last check for what the graph cannot show (a forward that reads a BatchNorm's attributes, a use
    of the layer's output through ``.detach()``).
    """
    try:
        with torch.no_grad():
            folded = LogitFn(fold_batchnorms(model, pairs), output_transform)(x1)
    except (AttributeError, RuntimeError, TypeError, ValueError, FoldMismatch):
        return False
    scale = logits.abs().max().clamp_min(torch.finfo(logits.dtype).tiny)
    return bool(((folded - logits).abs().max() / scale) <= 1e3 * torch.finfo(logits.dtype).eps)
