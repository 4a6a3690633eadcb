"""``input_curvature``: validate the call, choose the method, run its estimator under a precision policy.

The methods and their math are listed in :mod:`curvfast.curvature`.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from curvfast.curvature._checks import (check_batch, check_batch_independent, check_labels,
                                      is_missing_second_derivative, is_piecewise_linear, require_piecewise_linear)
from curvfast.curvature._deflated import deflated_curvature
from curvfast.curvature._finite_difference import FLOOR_MULTIPLE, fd_curvature, zo_curvature
from curvfast.curvature._folding import FoldMismatch, fold_batchnorms, foldable_pairs, unfold
from curvfast.curvature._hutchinson import HVP_MODES, hutchinson_curvature
from curvfast.curvature._logit_space import GRAM_STATISTICS, Forward, logit_space_curvature
from curvfast.curvature._model import (LogitFn, check_finite_model, scoring_model, second_order_ops, unwrap_model,
                                      without_wrapper_hooks)
from curvfast.curvature._precision import autocast_dtype, check_precision, precision_policy
from curvfast.curvature._registry import (AUTO, DEFAULT_PROBES, ESTIMATORS, METHODS, Estimate, EstimateCall, Estimator,
                                         get_estimator, register_estimator)
from curvfast.errors import ConfigError, DataError, NonFiniteError, UnknownNameError, UnsupportedModelError

__all__ = ["input_curvature", "CurvatureResult", "METHODS", "STATISTICS", "DEFAULT_PROBES", "resolve_method",
           "sample_ids_for"]

STATISTICS = ("trace",) + GRAM_STATISTICS
EXACT_MAX_CLASSES = 100


@dataclass
class CurvatureResult:
    """``value``: (B,) per-sample curvature ((B, K) eigenvalues, descending, for ``"spectrum"``).

    ``stderr``: (B,) standard error for random methods, else None. ``loss``: (B,) cross-entropy. ``pass_width``:
    classes per backward pass of the logit-space VJPs (exact, sampled, deflated's Gauss-Newton part), else None.
    ``adaptations``: how ops without second derivatives were run (the math attention backend, hardswish
    through clamp), empty when none was needed. ``rounding_floor``: zo only, (B,) the size
    ulp(max(|L|, 1)) / (4h) of the stencil's loss rounding (docs/estimators.md), else None;
    :attr:`below_rounding_floor` flags the samples whose value is within ``FLOOR_MULTIPLE`` (2.5) times it.
    """

    value: torch.Tensor
    stderr: torch.Tensor | None
    loss: torch.Tensor
    method: str
    statistic: str
    pass_width: int | None = None
    adaptations: tuple[str, ...] = ()
    rounding_floor: torch.Tensor | None = None

    @property
    def below_rounding_floor(self) -> torch.Tensor | None:
        """(B,) bool: the value is at most ``FLOOR_MULTIPLE`` rounding floors, so rounding, not curvature (zo only).

        Returns:
            The flags, or None for a method without a rounding floor.
        """
        return None if self.rounding_floor is None else below_floor(self.value, self.rounding_floor)


def below_floor(value: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """Whether each ``value`` is at most ``FLOOR_MULTIPLE`` times its rounding ``floor`` (tensors or arrays).

    Args:
        value: per-sample zo values (B,).
        floor: their rounding floors (B,).

    Returns:
        (B,) booleans of the same kind as the inputs.
    """
    return value <= FLOOR_MULTIPLE * floor


def _natural_statistic(method: str, statistic: str | None) -> str:
    """The statistic ``method`` computes for the request ``statistic`` (None: the estimator's default)."""
    estimator = get_estimator(method)
    if estimator.own_statistic:
        if statistic not in (None, method):
            raise ConfigError(
                f"method={method!r} estimates its published quantity (≈ h·‖H‖_F up to a constant), not "
                f"{statistic!r}; leave statistic=None, or use method='exact'/'hutchinson' for the trace"
            )
        return method
    if statistic is not None and statistic not in STATISTICS:
        raise UnknownNameError(f"statistic must be one of {STATISTICS} (got {statistic!r})")
    statistic = statistic or estimator.statistics[0]
    if statistic not in estimator.statistics:
        others = [e.name for e in ESTIMATORS.values() if statistic in e.statistics]
        raise ConfigError(f"method={method!r} estimates {' or '.join(estimator.statistics)} only, not "
                          f"{statistic!r}; use method={' or '.join(map(repr, others)) or 'exact'} for it")
    return statistic


def resolve_method(method: str, piecewise_linear: bool, num_classes: int, accept_gauss_newton: bool,
                   statistic: str | None = None) -> str:
    """Turn ``"auto"`` into a concrete method and refuse the Gauss-Newton value on smooth models.

    Args:
        method: A registered estimator name or ``"auto"``.
        piecewise_linear: Whether the model is piecewise linear (its Gauss-Newton value is the true trace).
        num_classes: The number of classes C (``auto`` picks ``exact`` up to ``EXACT_MAX_CLASSES``).
        accept_gauss_newton: Allow a Gauss-Newton-only method on a smooth model.
        statistic: The statistic asked for (``auto`` on smooth models: ``deflated`` for the trace).

    Returns:
        The concrete method name.

    Raises:
        UnknownNameError: For an unregistered ``method``.
        NotPiecewiseLinearError: For a Gauss-Newton-only method on a smooth model without ``accept_gauss_newton``.
    """
    if method != AUTO:
        get_estimator(method)  # UnknownNameError, naming the registered ones
    if method == AUTO:
        if not piecewise_linear:
            return "deflated" if statistic in (None, "trace") else "hutchinson"
        return "exact" if num_classes <= EXACT_MAX_CLASSES else "sampled"
    if get_estimator(method).needs_piecewise_linear:
        require_piecewise_linear(method, piecewise_linear, accept_gauss_newton)
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
    precision: str = "fp32",
    float64_losses: bool = False,
) -> CurvatureResult:
    r"""Per-sample input loss curvature of a batch.

    For the cross-entropy :math:`L_b = \\ell(f(x_b), y_b)` of each sample :math:`b`, the statistic of its
    input Hessian

    .. math:: H_b = \\frac{\\partial^2 L_b}{\\partial x_b^2},

    e.g. :math:`\\operatorname{tr} H_b`, computed by the registered estimator ``method`` (docs/estimators.md
    gives each one's math; for piecewise-linear nets ``exact`` uses
    :math:`H_b = J_b^\\top (\\operatorname{diag}(p_b) - p_b p_b^\\top) J_b`, with :math:`J_b` the logits'
    input Jacobian and :math:`p_b` the softmax). Higher = more curved.

    Args:
        model: an ``nn.Module`` returning logits (wrappers from DDP, Opacus and torch.compile are
            unwrapped; it is scored in eval mode and its mode is restored), or, for ``method="zo"``
            only, a loss oracle ``loss_fn(x, y) -> per-sample losses (B,)``.
        x: inputs (B, ...), floating point.
        y: integer labels (B,).
        method: a registered estimator (:data:`~curvfast.curvature.METHODS`) or ``"auto"``: exact
            (piecewise linear, C ≤ 100), sampled (piecewise linear, C > 100), deflated otherwise
            (hutchinson for a smooth model's Frobenius norm).
        statistic: ``"trace"`` (default), ``"frobenius"``, ``"top_eigenvalue"``, ``"spectrum"``;
            fd and zo return their own quantity.
        probes: probes (or sampled tail classes) of a random method; default: the estimator's
            (:data:`~curvfast.curvature.DEFAULT_PROBES`).
        seed: keys the random probes together with ``sample_ids``.
        sample_ids: the samples' ids (B,), default ``arange(B)``; pass dataset indices to make results
            independent of batching.
        top_classes: classes kept exactly by ``"sampled"``; for ``"deflated"``, the number of
            Gauss-Newton directions deflated (and the exact head of its Gauss-Newton part when C > 100).
        distribution: Hutchinson probes, ``"rademacher"`` or ``"gaussian"``.
        step: finite-difference step h for fd and zo.
        hvp: Hutchinson HVP route: ``"auto"`` (forward-over-reverse, double backward where forward
            mode is missing), ``"double_backward"`` or ``"forward_over_reverse"``.
        output_transform: maps the model's output (a tuple, a dict) to the logits.
        accept_gauss_newton: allow exact/sampled on smooth models (returns tr(JᵀAJ)).
        pass_size: classes or probes per batched pass (default: sized from the input).
        precision: ``"fp32"`` (TF32 off, the reference), ``"tf32"`` (TF32 matmuls and convolutions on CUDA) or
            ``"bf16"`` (exact / sampled only: fp32 logits and factor, class VJPs through a bf16-autocast graph);
            the caller's autocast is off either way. docs/native-ops.md gives each policy's measured error.
        float64_losses: zo only: evaluate the stencil's losses with a float64 copy of the model (inputs in
            float64), which removes the float32 rounding floor (docs/estimators.md); values are returned in
            ``x``'s dtype. Costs a copy of the model per call and float64 forwards.

    Returns:
        A :class:`CurvatureResult`: ``value`` (B,) ((B, K) for a spectrum), ``stderr`` for random
        methods, ``loss`` (B,), the concrete ``method`` and ``statistic``; for zo, ``rounding_floor`` and
        ``below_rounding_floor``.

    Raises:
        UnknownNameError: an unregistered method, statistic, HVP route, distribution or precision.
        ConfigError: a statistic the method does not estimate, bad probes / sample ids, a precision the
            method cannot use, or ``float64_losses`` with a method other than zo (or with a loss oracle).
        NotPiecewiseLinearError: ``exact`` / ``sampled`` on a smooth model without ``accept_gauss_newton``.
        UnsupportedModelError: the model lacks second derivatives, or its outputs or layers do not fit.
        DataError: ``x`` or ``y`` do not fit the model.
        NonFiniteError: a NaN or infinite weight, input, score or loss.
    """
    if hvp not in HVP_MODES:
        raise UnknownNameError(f"hvp must be one of {HVP_MODES} (got {hvp!r})")
    if distribution not in ("rademacher", "gaussian"):
        raise UnknownNameError(f"distribution must be 'rademacher' or 'gaussian' (got {distribution!r})")
    check_precision(precision, "exact")  # the name; the method is checked once it is resolved
    if not isinstance(float64_losses, bool):
        raise ConfigError(f"float64_losses must be True or False (got {float64_losses!r})")
    if float64_losses and method != "zo":
        raise ConfigError(f"float64_losses is an option of method='zo' (got method={method!r}); its loss differences "
                          "are what float32 rounds away. Pass method='zo', or drop float64_losses")
    if not isinstance(model, nn.Module):
        if method != "zo" or not callable(model):
            raise TypeError("model must be an nn.Module returning logits (a plain loss callable works with method='zo' "
                            "only)")
        if float64_losses:
            raise ConfigError("float64_losses needs an nn.Module (curvfast makes its float64 copy); a loss oracle "
                              "chooses its own precision: make it return float64 losses")
        check_precision(precision, "zo")
        return _zo_oracle(model, x, y, statistic, probes, seed, sample_ids, step, pass_size)
    wrapper, model = model, unwrap_model(model)
    x, y = check_batch(x, y, model)
    check_finite_model(model)
    options = dict(statistic=statistic, probes=probes, seed=seed, sample_ids=sample_ids_for(sample_ids, x),
                   top_classes=top_classes, distribution=distribution, step=step, hvp=hvp,
                   output_transform=output_transform, accept_gauss_newton=accept_gauss_newton, pass_size=pass_size,
                   precision=precision, float64_losses=float64_losses)
    with (without_wrapper_hooks(wrapper), scoring_model(model) as scored, precision_policy(precision, x.device),
          second_order_ops(model) as adaptations):
        pairs = foldable_pairs(scored, x, output_transform)
        try:  # eval BatchNorms folded into the layers feeding them
            estimate, call, method = _estimate(model, fold_batchnorms(scored, pairs) if pairs else scored, x, y, method,
                                               **options)
        except FoldMismatch:  # this batch takes a path the fold was not found on: never fold this model again
            unfold(scored, x)
            estimate, call, method = _estimate(model, scored, x, y, method, **options)
    _check_finite(estimate.value, estimate.loss, method)
    _warn_all_zero(estimate.value, method)
    return CurvatureResult(estimate.value.detach(), None if estimate.stderr is None else estimate.stderr.detach(),
                           estimate.loss.detach(), method, call.statistic, estimate.pass_width, adaptations,
                           estimate.rounding_floor)


def _estimate(model: nn.Module, scored: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, *, statistic,
              probes, seed, sample_ids, top_classes, distribution, step, hvp, output_transform, accept_gauss_newton,
              pass_size, precision, float64_losses) -> tuple[Estimate, EstimateCall, str]:
    """The body of :func:`input_curvature` on the scoring copy ``scored`` (folded or not) of ``model``."""
    logit_fn = LogitFn(scored, output_transform, owner=model)
    check_batch_independent(model, logit_fn, x)  # once per model: a sample's logits beside other batch-mates
    forward = _forward(logit_fn, x, graph=method == AUTO or get_estimator(method).logit_space,
                       low_precision=autocast_dtype(precision))
    num_classes = forward.logits.shape[1]
    check_labels(y, num_classes)
    try:
        needs_check = method == AUTO or get_estimator(method).needs_piecewise_linear
        piecewise = is_piecewise_linear(logit_fn, x, model) if needs_check else False
        method = resolve_method(method, piecewise, num_classes, accept_gauss_newton, statistic)
        check_precision(precision, method)
        estimator = get_estimator(method)
        call = EstimateCall(
            logit_fn=logit_fn, x=x, y=y, sample_ids=sample_ids, forward=forward if estimator.logit_space else None,
            statistic=_natural_statistic(method, statistic), probes=_probe_count(method, probes), seed=seed,
            num_classes=num_classes, top_classes=top_classes, distribution=distribution, step=step, hvp=hvp,
            pass_size=pass_size, float64_losses=float64_losses,
        )
        del forward  # a method outside logit space frees the batch's graph: it runs its own passes
        estimate = Estimate(*estimator.fn(call))
    except (RuntimeError, NotImplementedError) as err:
        if not is_missing_second_derivative(err):
            raise
        raise UnsupportedModelError(
            f"method={method!r} needs second derivatives, and the model uses an op without one ({err}); use "
            "method='fd' or method='zo' (curvfast score --method fd), which need first derivatives or losses "
            "only, or the Gauss-Newton value method='exact' with accept_gauss_newton=True "
            "(--method exact --accept-gauss-newton)"
        ) from err
    return estimate, call, method


def _forward(logit_fn: LogitFn, x: torch.Tensor, graph: bool, low_precision: torch.dtype | None = None) -> Forward:
    """The batch's forward with its graph, or the logits of one sample.

    The graph is kept when the method works from the logits (the logit-space methods' C VJPs reuse it);
    otherwise one sample's logits give the class count. With ``low_precision`` (the bf16 policy), the graph
    comes from a forward under autocast in that dtype and the factor's logits from a second one in full
    precision, without a graph (:mod:`~curvfast.curvature._precision` says why).
    """
    try:
        if graph:
            xg = x.detach().requires_grad_(True)
            if low_precision is None:
                with torch.enable_grad():
                    return Forward(xg, logit_fn(xg))
            with torch.no_grad():
                exact_logits = logit_fn(x)
            with torch.enable_grad(), torch.autocast(device_type=x.device.type, dtype=low_precision):
                low = logit_fn(xg)
            return Forward(xg, low.to(exact_logits.dtype), exact_logits)
        with torch.no_grad():
            return Forward(x[:1], logit_fn(x[:1]))
    except (RuntimeError, AssertionError) as err:  # torchvision's ViT asserts its image size
        sizes = (getattr(m, "image_size", None) for m in logit_fn.owner.modules())  # inside a normalisation wrapper
        size = next((s for s in sizes if isinstance(s, int) and not isinstance(s, bool)), None)
        hint = f"; the model takes {size}x{size} images (pass --image-size {size})" if isinstance(size, int) else ""
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise DataError(f"the model cannot take x of shape {tuple(x.shape)}: {first}{hint}") from err


def _exact(call: EstimateCall) -> Estimate:
    """All C classes in logit space: exact for piecewise-linear nets (:mod:`~curvfast.curvature._logit_space`)."""
    return Estimate(*logit_space_curvature(
        call.forward, call.y, call.sample_ids, owner=call.logit_fn.owner, statistic=call.statistic,
        num_exact=call.num_classes, num_tail=0, seed=call.seed, pass_size=call.pass_size,
    )[:4])


def _sampled(call: EstimateCall) -> Estimate:
    """The top ``top_classes`` classes exactly plus ``probes`` stratified tail classes (unbiased)."""
    top = call.top_classes
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ConfigError(f"top_classes must be an int >= 0, the classes kept exactly (got {top!r})")
    return Estimate(*logit_space_curvature(
        call.forward, call.y, call.sample_ids, owner=call.logit_fn.owner, statistic=call.statistic, num_exact=top,
        num_tail=call.probes, seed=call.seed, pass_size=call.pass_size,
    )[:4])


def _hutchinson(call: EstimateCall) -> Estimate:
    """Hutchinson's estimator from exact HVPs (:mod:`~curvfast.curvature._hutchinson`)."""
    return Estimate(*hutchinson_curvature(
        call.logit_fn, call.x, call.y, call.sample_ids, statistic=call.statistic, probes=call.probes, seed=call.seed,
        distribution=call.distribution, hvp=call.hvp, pass_size=call.pass_size,
    ))


def _deflated(call: EstimateCall) -> Estimate:
    """Exact Gauss-Newton trace plus a deflated Hutchinson residual (:mod:`~curvfast.curvature._deflated`)."""
    exact_gn = call.num_classes <= EXACT_MAX_CLASSES
    return Estimate(*deflated_curvature(
        call.logit_fn, call.forward, call.y, call.sample_ids, probes=call.probes, rank=call.top_classes,
        num_exact=call.num_classes if exact_gn else call.top_classes,
        num_tail=0 if exact_gn else DEFAULT_PROBES["sampled"], seed=call.seed, distribution=call.distribution,
        hvp=call.hvp, pass_size=call.pass_size,
    ))


def _fd(call: EstimateCall) -> Estimate:
    """Garg et al.'s finite difference of input gradients (:mod:`~curvfast.curvature._finite_difference`)."""
    return Estimate(*fd_curvature(call.logit_fn, call.x, call.y, call.sample_ids, probes=call.probes, seed=call.seed,
                                  step=call.step, pass_size=call.pass_size))


def _zo(call: EstimateCall) -> Estimate:
    """Curvature Clues' zero-order estimator from loss values (:mod:`~curvfast.curvature._finite_difference`).

    With ``call.float64_losses`` the losses come from a float64 copy of the scoring model at float64 inputs.
    """
    logit_fn, x = call.logit_fn, call.x
    if call.float64_losses:
        logit_fn, x = _float64_logits(logit_fn), x.double()

    def losses(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logit_fn(xb), yb, reduction="none")

    value, stderr, loss, floor = zo_curvature(losses, x, call.y, call.sample_ids, probes=call.probes, seed=call.seed,
                                              step=call.step, pass_size=call.pass_size)
    dtype = call.x.dtype
    return Estimate(value.to(dtype), stderr.to(dtype), loss.to(dtype), None, floor.to(dtype))


def _float64_logits(logit_fn: LogitFn) -> LogitFn:
    """``logit_fn`` computed by a float64 copy of its model (the caller's model is left as it is)."""
    try:
        model = copy.deepcopy(logit_fn.model).double()
    except (TypeError, RuntimeError, copy.Error) as err:  # what deepcopy raises for a lock, an open file ...
        raise ConfigError(f"float64_losses needs a copy of the model, and it cannot be copied ({err}); convert it "
                          "yourself (model.double(), x.double()) and score without float64_losses") from err
    return LogitFn(model, logit_fn.output_transform, owner=logit_fn.owner)


for _estimator in (
    Estimator("exact", _exact, STATISTICS, logit_space=True, needs_piecewise_linear=True,
              summary="tr(H), ‖H‖_F, top eigenvalue, spectrum", exact_when="piecewise-linear nets (C VJPs)"),
    Estimator("sampled", _sampled, ("trace",), default_probes=10, logit_space=True, needs_piecewise_linear=True,
              summary="tr(H): top-m classes + stratified p-tail", exact_when="unbiased, for large C"),
    Estimator("hutchinson", _hutchinson, ("trace", "frobenius"), default_probes=100,
              summary="tr(H) or ‖H‖_F from exact HVPs, with stderr", exact_when="unbiased, any smooth model"),
    Estimator("deflated", _deflated, ("trace",), default_probes=30, logit_space=True,
              summary="tr(H) = exact Gauss-Newton trace + deflated residual",
              exact_when="unbiased, with stderr; exact when D ≤ top_classes + probes"),
    Estimator("fd", _fd, ("fd",), default_probes=10, own_statistic=True,
              summary="Garg et al.: mean‖∇L(x+hr)−∇L(x)‖ ≈ h‖H‖_F", exact_when="published estimator"),
    Estimator("zo", _zo, ("zo",), default_probes=10, own_statistic=True,
              summary="Curvature Clues, loss values only ≈ h√(2/π)‖H‖_F", exact_when="published estimator"),
):
    register_estimator(_estimator)


def _check_finite(value: torch.Tensor, loss: torch.Tensor, method: str) -> None:
    """Refuse NaN or infinite scores or losses (the model overflows at these inputs)."""
    if bool(torch.isfinite(value).all() & torch.isfinite(loss).all()):
        return
    bad = ~(torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1) & torch.isfinite(loss))
    if bad.any():
        raise NonFiniteError(
            f"method={method!r}: the curvature or loss of sample(s) {bad.nonzero().flatten()[:10].tolist()} is not "
            "finite (NaN or Inf): the model's logits or derivatives overflow at these inputs; check the inputs' scale "
            "and the model"
        )


def _warn_all_zero(value: torch.Tensor, method: str) -> None:
    """Warn when every score of the batch is exactly 0: the loss does not depend on the input there."""
    if value.numel() and not bool(value.ne(0).any()):
        warnings.warn(
            f"method={method!r}: every score of the batch is exactly 0, so the loss does not depend on the inputs "
            "(an untrained torchvision ViT has a zero-initialised head, so its logits are constant); load trained "
            "weights", RuntimeWarning, stacklevel=3)


def _zo_oracle(loss_fn, x, y, statistic, probes, seed, sample_ids, step, pass_size) -> CurvatureResult:
    x, y = check_batch(x, y)
    statistic = _natural_statistic("zo", statistic)
    value, stderr, loss, floor = zo_curvature(
        loss_fn, x, y, sample_ids_for(sample_ids, x), probes=_probe_count("zo", probes), seed=seed, step=step,
        pass_size=pass_size
    )
    _check_finite(value, loss, "zo")
    return CurvatureResult(value, stderr, loss, "zo", statistic, rounding_floor=floor)


def _probe_count(method: str, probes: int | None) -> int:
    """The probe count of ``method``: 0 for a deterministic one, else ``probes`` or its default, checked."""
    default = get_estimator(method).default_probes
    if default is None:
        return 0
    count = default if probes is None else probes
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"probes must be a positive int for method={method!r} (got {probes!r})")
    return count


def sample_ids_for(sample_ids, x: torch.Tensor) -> torch.Tensor:
    """The samples' ids keying their random probes.

    Args:
        sample_ids: int dataset indices (B,), non-negative, or None for ``0..B-1``.
        x: the batch (B, ...), for B and the device.

    Returns:
        int64 ids (B,) on ``x``'s device.

    Raises:
        TypeError: the ids are not integers.
        ConfigError: wrong shape or negative ids.
    """
    if sample_ids is None:
        return torch.arange(x.shape[0], device=x.device)
    ids = torch.as_tensor(sample_ids)
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"sample_ids must hold int64 dataset indices (got {ids.dtype}); convert with sample_ids.long()")
    if ids.shape != (x.shape[0],):
        raise ConfigError(f"sample_ids must be integer indices of shape (B,) = ({x.shape[0]},); got {ids.dtype} "
                          f"{tuple(ids.shape)}")
    if (ids < 0).any():
        raise ConfigError("sample_ids must be non-negative dataset indices")
    return ids.to(device=x.device, dtype=torch.int64)
