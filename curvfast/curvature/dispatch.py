"""``input_curvature``: validate the call, choose the method, run its estimator in full precision.

The methods and their math are listed in :mod:`curvfast.curvature`."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from curvfast.curvature.checks import check_batch, check_labels, is_missing_second_derivative, is_piecewise_linear
from curvfast.curvature.deflated import deflated_curvature
from curvfast.curvature.finite_difference import fd_curvature, zo_curvature
from curvfast.curvature.folding import fold_batchnorms, foldable_pairs
from curvfast.curvature.hutchinson import HVP_MODES, hutchinson_curvature
from curvfast.curvature.logit_space import GRAM_STATISTICS, Forward, logit_space_curvature
from curvfast.curvature.model import LogitFn, check_finite_model, scoring_model, unwrap_model, without_wrapper_hooks

__all__ = ["input_curvature", "CurvatureResult", "METHODS", "STATISTICS", "DEFAULT_PROBES", "resolve_method", "sample_ids_for"]

METHODS = ("auto", "exact", "sampled", "hutchinson", "deflated", "fd", "zo")
STATISTICS = ("trace",) + GRAM_STATISTICS
EXACT_MAX_CLASSES = 100
LOGIT_SPACE_METHODS = ("auto", "exact", "sampled", "deflated")  # they start from the batch's logits and their graph
DEFAULT_PROBES = {"hutchinson": 100, "deflated": 30, "fd": 10, "zo": 10, "sampled": 10}


@dataclass
class CurvatureResult:
    """``value``: (B,) per-sample curvature ((B, K) eigenvalues, descending, for ``"spectrum"``).
    ``stderr``: (B,) standard error for random methods, else None. ``loss``: (B,) cross-entropy.
    ``pass_width``: classes per backward pass of the logit-space VJPs (exact, sampled, deflated's
    Gauss-Newton part), else None."""

    value: torch.Tensor
    stderr: torch.Tensor | None
    loss: torch.Tensor
    method: str
    statistic: str
    pass_width: int | None = None


def _natural_statistic(method: str, statistic: str | None) -> str:
    if method in ("fd", "zo"):
        if statistic not in (None, method):
            raise ValueError(
                f"method={method!r} estimates its published quantity (≈ h·‖H‖_F up to a constant), not "
                f"{statistic!r}; leave statistic=None, or use method='exact'/'hutchinson' for the trace"
            )
        return method
    statistic = statistic or "trace"
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS} (got {statistic!r})")
    if method in ("sampled", "deflated") and statistic != "trace":
        raise ValueError(f"method={method!r} estimates the trace only; use method='exact' (piecewise-linear nets) or "
                         f"'hutchinson' (any model) for {statistic!r}")
    if method == "hutchinson" and statistic not in ("trace", "frobenius"):
        raise ValueError(f"method='hutchinson' estimates 'trace' or 'frobenius', not {statistic!r}; use method='exact'")
    return statistic


def resolve_method(method: str, piecewise_linear: bool, num_classes: int, accept_gauss_newton: bool,
                   statistic: str | None = None) -> str:
    """Turn ``"auto"`` into a concrete method and refuse the Gauss-Newton value on smooth models."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} (got {method!r})")
    if method == "auto":
        if not piecewise_linear:
            return "deflated" if statistic in (None, "trace") else "hutchinson"
        return "exact" if num_classes <= EXACT_MAX_CLASSES else "sampled"
    if method in ("exact", "sampled") and not piecewise_linear and not accept_gauss_newton:
        raise ValueError(
            f"method={method!r} is exact only for piecewise-linear networks, and this model has smooth pieces "
            "(GELU, SiLU, tanh, sigmoid, LayerNorm, attention ...): it would return the Gauss-Newton term "
            "JᵀAJ, not the input Hessian. Use method='deflated' or 'hutchinson' for the true Hessian, or pass "
            "accept_gauss_newton=True to get the Gauss-Newton value knowingly."
        )
    return method


def input_curvature(
    model: nn.Module | Callable,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str = "auto",
    statistic: str | None = None,
    probes: int | None = None,
    seed: int = 0,
    sample_ids: torch.Tensor | None = None,
    top_classes: int = 10,
    distribution: str = "rademacher",
    step: float = 1e-3,
    hvp: str = "auto",
    output_transform: Callable | None = None,
    accept_gauss_newton: bool = False,
    pass_size: int | None = None,
) -> CurvatureResult:
    """Per-sample input loss curvature of a batch.

    Args:
        model: an ``nn.Module`` returning logits (wrappers from DDP, Opacus and torch.compile are
            unwrapped; it is scored in eval mode and its mode is restored), or, for ``method="zo"``
            only, a loss oracle ``loss_fn(x, y) -> per-sample losses (B,)``.
        x: inputs (B, ...), floating point. y: integer labels (B,).
        method: see the module docstring. statistic: ``"trace"`` (default), ``"frobenius"``,
            ``"top_eigenvalue"``, ``"spectrum"``; fd and zo return their own quantity.
        probes: Hutchinson / deflated / fd / zo probes, or sampled tail classes (defaults 100 / 30 / 10 / 10 / 10).
        seed, sample_ids: key the random probes; ``sample_ids`` defaults to ``arange(B)``; pass
            dataset indices to make results independent of batching.
        top_classes: classes kept exactly by ``"sampled"``; for ``"deflated"``, the number of
            Gauss-Newton directions deflated (and the exact head of its Gauss-Newton part when C > 100).
        distribution: Hutchinson probes, ``"rademacher"`` or ``"gaussian"``.
        step: finite-difference step h for fd and zo.
        hvp: Hutchinson HVP route: ``"auto"`` (forward-over-reverse, double backward where forward
            mode is missing), ``"double_backward"`` or ``"forward_over_reverse"``.
        accept_gauss_newton: allow exact/sampled on smooth models (returns tr(JᵀAJ)).
        pass_size: classes or probes per batched pass (default: sized from the input).
    """
    if hvp not in HVP_MODES:
        raise ValueError(f"hvp must be one of {HVP_MODES} (got {hvp!r})")
    if distribution not in ("rademacher", "gaussian"):
        raise ValueError(f"distribution must be 'rademacher' or 'gaussian' (got {distribution!r})")
    if not isinstance(model, nn.Module):
        if method != "zo" or not callable(model):
            raise TypeError("model must be an nn.Module returning logits (a plain loss callable works with method='zo' only)")
        return _zo_oracle(model, x, y, statistic, probes, seed, sample_ids, step, pass_size)
    wrapper, model = model, unwrap_model(model)
    x, y = check_batch(x, y, model)
    check_finite_model(model)
    sample_ids = sample_ids_for(sample_ids, x)
    with without_wrapper_hooks(wrapper), scoring_model(model) as scored, full_precision(x.device):
        pairs = foldable_pairs(scored, x, output_transform)
        if pairs:
            scored = fold_batchnorms(scored, pairs)  # eval BatchNorms folded into the layers feeding them
        logit_fn = LogitFn(scored, output_transform, owner=model)
        forward = _forward(logit_fn, x, graph=method in LOGIT_SPACE_METHODS)
        num_classes = forward.logits.shape[1]
        check_labels(y, num_classes)
        try:
            needs_check = method in ("auto", "exact", "sampled")
            piecewise = is_piecewise_linear(logit_fn, x, model) if needs_check else False
            method = resolve_method(method, piecewise, num_classes, accept_gauss_newton, statistic)
            statistic = _natural_statistic(method, statistic)
            nprobes = _probe_count(method, probes)
            if method not in LOGIT_SPACE_METHODS:
                forward = None  # free its graph: this method runs its own passes
            value, stderr, loss, width = _estimate(logit_fn, x, forward, y, sample_ids, method, statistic, nprobes, seed, top_classes,
                                            num_classes, distribution, step, hvp, pass_size)
        except (RuntimeError, NotImplementedError) as err:
            if not is_missing_second_derivative(err):
                raise
            raise ValueError(
                f"method={method!r} needs second derivatives, and the model uses an op without one ({err}); use "
                "method='fd' or method='zo', which need first derivatives or losses only (or method='exact' with "
                "accept_gauss_newton=True if the model is piecewise linear)"
            ) from err
    _check_finite(value, loss, method)
    return CurvatureResult(value.detach(), None if stderr is None else stderr.detach(), loss.detach(), method, statistic, width)


def _forward(logit_fn: LogitFn, x: torch.Tensor, graph: bool) -> Forward:
    """The batch's forward with its graph when the method works from the logits (the logit-space
    methods' C VJPs reuse it), else the logits of one sample (for the class count only)."""
    try:
        if graph:
            xg = x.detach().requires_grad_(True)
            with torch.enable_grad():
                return Forward(xg, logit_fn(xg))
        with torch.no_grad():
            return Forward(x[:1], logit_fn(x[:1]))
    except RuntimeError as err:
        raise ValueError(f"the model cannot take x of shape {tuple(x.shape)}: {str(err).splitlines()[0]}") from err


def _estimate(logit_fn, x, forward, y, sample_ids, method, statistic, nprobes, seed, top_classes, num_classes, distribution,
              step, hvp, pass_size):
    """``(value, stderr, loss, pass width or None)`` of a concrete method; ``forward``: the batch's
    forward (logit-space methods)."""
    if method in ("exact", "sampled"):
        if method == "sampled" and (isinstance(top_classes, bool) or not isinstance(top_classes, int) or top_classes < 0):
            raise ValueError(f"top_classes must be an int >= 0, the classes kept exactly (got {top_classes!r})")
        num_exact = num_classes if method == "exact" else top_classes
        return logit_space_curvature(
            forward, y, sample_ids, owner=logit_fn.owner, statistic=statistic, num_exact=num_exact,
            num_tail=nprobes if method == "sampled" else 0, seed=seed, pass_size=pass_size,
        )[:4]
    if method == "hutchinson":
        return *hutchinson_curvature(
            logit_fn, x, y, sample_ids, statistic=statistic, probes=nprobes, seed=seed,
            distribution=distribution, hvp=hvp, pass_size=pass_size,
        ), None
    if method == "deflated":
        exact_gn = num_classes <= EXACT_MAX_CLASSES
        return deflated_curvature(
            logit_fn, forward, y, sample_ids, probes=nprobes, rank=top_classes, num_exact=num_classes if exact_gn else top_classes,
            num_tail=0 if exact_gn else DEFAULT_PROBES["sampled"], seed=seed, distribution=distribution, hvp=hvp,
            pass_size=pass_size,
        )
    if method == "fd":
        return *fd_curvature(logit_fn, x, y, sample_ids, probes=nprobes, seed=seed, step=step, pass_size=pass_size), None
    return *zo_curvature(
        lambda xb, yb: F.cross_entropy(logit_fn(xb), yb, reduction="none"), x, y, sample_ids,
        probes=nprobes, seed=seed, step=step, pass_size=pass_size,
    ), None


def full_precision(device: torch.device):
    """Autocast off while curvature is computed: the model runs in its own dtype.

    Under bf16 autocast on an H100, ResNet-50 (C=1000) gave exact traces 500% and sampled traces
    154% (median) away from fp32, while two fp32 seeds agreed to 6e-8
    (benchmarks/results/NVIDIA-H100-80GB-HBM3/gpu_check.md): the curvature is a small difference
    of large terms that bf16 cannot resolve.
    """
    if device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def _check_finite(value: torch.Tensor, loss: torch.Tensor, method: str) -> None:
    """Refuse NaN or infinite scores or losses (the model overflows at these inputs)."""
    if bool(torch.isfinite(value).all() & torch.isfinite(loss).all()):
        return
    bad = ~(torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1) & torch.isfinite(loss))
    if bad.any():
        raise ValueError(
            f"method={method!r}: the curvature or loss of sample(s) {bad.nonzero().flatten()[:10].tolist()} is not "
            "finite (NaN or Inf): the model's logits or derivatives overflow at these inputs; check the inputs' scale "
            "and the model"
        )


def _zo_oracle(loss_fn, x, y, statistic, probes, seed, sample_ids, step, pass_size) -> CurvatureResult:
    x, y = check_batch(x, y)
    statistic = _natural_statistic("zo", statistic)
    value, stderr, loss = zo_curvature(
        loss_fn, x, y, sample_ids_for(sample_ids, x), probes=_probe_count("zo", probes), seed=seed, step=step, pass_size=pass_size
    )
    _check_finite(value, loss, "zo")
    return CurvatureResult(value, stderr, loss, "zo", statistic)


def _probe_count(method: str, probes: int | None) -> int:
    if method == "exact":
        return 0
    count = DEFAULT_PROBES[method] if probes is None else probes
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"probes must be a positive int for method={method!r} (got {probes!r})")
    return count


def sample_ids_for(sample_ids, x: torch.Tensor) -> torch.Tensor:
    """The samples' ids keying their random probes: ``sample_ids`` checked (int64, one per sample, >= 0), or
    0..B-1 when None."""
    if sample_ids is None:
        return torch.arange(x.shape[0], device=x.device)
    ids = torch.as_tensor(sample_ids)
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"sample_ids must hold int64 dataset indices (got {ids.dtype}); convert with sample_ids.long()")
    if ids.shape != (x.shape[0],):
        raise ValueError(f"sample_ids must be integer indices of shape (B,) = ({x.shape[0]},); got {ids.dtype} {tuple(ids.shape)}")
    if (ids < 0).any():
        raise ValueError("sample_ids must be non-negative dataset indices")
    return ids.to(device=x.device, dtype=torch.int64)
