"""What the drop-ins share: argument checks, the published probes, the run context, exact Hessian statistics.

The published scorers draw their Rademacher probes from torch's global generator, one
``torch.randint_like(x, high=2)`` per probe, mapped to ``h * (r + 1e-7)`` with r in {-1, +1}
(:func:`published_probe`). The drop-ins make exactly these calls, in the published order, so with the
same ``torch.manual_seed`` they see the same probes and leave the generator where the published code
does. ``seed=`` opts into curvfast's Philox probes instead (keyed by (seed, sample id, probe): scores
independent of batching), which never touch the global generator.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, NamedTuple

import torch
from torch import nn

from ..curvature import input_curvature, is_piecewise_linear, sample_ids_for
from ..curvature._checks import check_batch, check_batch_independent, check_labels
from ..curvature._model import LogitFn, check_finite_model, scoring_mode, unwrap_model, without_wrapper_hooks
from ..curvature._precision import precision_policy
from ..errors import ConfigError, NonFiniteError, UnsupportedModelError

__all__ = ["Batch", "prepare", "published_probe", "philox_keys", "running", "check_finite_scores", "check_h",
           "checked_logits", "hessian_statistic", "STEP_ULPS"]

# The step must span this many units in the last place of the inputs' magnitude: below it x ± h·r rounds
# the probe away and the finite differences are exact zeros or rounding noise (h = 1e-30 gives either).
STEP_ULPS = 64

# Layers whose forward differs in training mode: batch statistics, random dropout.
_TRAIN_SENSITIVE = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd,
                    nn.modules.instancenorm._InstanceNorm, nn.RNNBase, nn.MultiheadAttention,
                    nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


class Batch(NamedTuple):
    """A validated call: what to run and on what."""

    net: nn.Module | Callable  # the caller's net (a wrapper stays wrapped here)
    module: nn.Module | None   # the unwrapped module, None for a plain callable
    logit_fn: LogitFn          # x -> logits (B, C), output_transform applied and checked
    x: torch.Tensor            # detached inputs (B, ...)
    y: torch.Tensor            # int64 labels (B,) on x's device


def check_h(h: float, x: torch.Tensor | None = None) -> None:
    """Refuse a step that is not a positive finite number, or too small for the inputs to resolve.

    Args:
        h: The finite-difference step.
        x: The inputs; None checks the number only.

    Raises:
        ConfigError: h is not a positive finite number, or below ``STEP_ULPS`` units in the last place of
            max(1, max|x|) in x's dtype.
    """
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0:
        raise ConfigError(f"h must be a positive finite number, the finite-difference step (got {h!r}); "
                          "the published scripts use 1e-3 or 1e-4")
    if x is None:
        return
    scale = max(1.0, float(x.abs().max()))
    floor = STEP_ULPS * torch.finfo(x.dtype).eps * scale
    if h < floor:
        raise ConfigError(
            f"h={h!r} is below {STEP_ULPS} units in the last place of the inputs ({floor:.3g} for {x.dtype} inputs of "
            f"max |x| = {scale:.3g}): x ± h·r rounds the probes away and the finite differences are rounding noise; "
            "use h >= that (the published scripts use 1e-3 or 1e-4)"
        )


def _check_count(niter: int) -> None:
    if isinstance(niter, bool) or not isinstance(niter, int) or niter < 1:
        raise ConfigError(f"niter must be a positive int, the probes per sample (got {niter!r}); the published "
                          "scripts use 10")


def _check_temp(temp: float) -> None:
    if isinstance(temp, bool) or not isinstance(temp, (int, float)) or not math.isfinite(temp) or temp <= 0:
        raise ConfigError(f"temp must be a positive finite number, the loss temperature (got {temp!r})")


def _check_eval_mode(module: nn.Module) -> None:
    training = [f"{name or 'net'} ({type(m).__name__})" for name, m in module.named_modules()
                if m.training and isinstance(m, _TRAIN_SENSITIVE)]
    if training:
        raise UnsupportedModelError(
            f"net is in training mode in {', '.join(training[:5])}: there it normalises with batch statistics or "
            "drops units at random, so a sample's score would depend on its batch and on extra random draws; call "
            "net.eval() first, as the published scripts do before scoring"
        )


def prepare(net: nn.Module | Callable, x: torch.Tensor, y: torch.Tensor, *, h: float | None, niter: int = 1,
            temp: float = 1, output_transform: Callable | None = None, sets_eval: bool) -> Batch:
    """Validate a published call as strictly as :func:`curvfast.curvature.input_curvature` does.

    Nothing is drawn from torch's generator before every check has passed.

    Args:
        net: An ``nn.Module`` (wrappers from DataParallel, DDP, Opacus and torch.compile are unwrapped) or a
            plain callable ``x -> logits``.
        x: The batch (B, ...).
        y: Its labels (B,).
        h: The finite-difference step (None: the scorer takes no step).
        niter: Probes per sample.
        temp: The loss temperature.
        output_transform: Picks the logits out of the net's output (a tuple, a dict); None: the output is them.
        sets_eval: The published function calls ``net.eval()`` itself (the finite-difference scorers); False:
            it runs the net as given (the zero-order scorers), and train-mode layers are refused.

    Returns:
        The validated :class:`Batch`.

    Raises:
        TypeError: ``net`` is not callable, or the batch or the net's parameters have the wrong dtype.
        ConfigError: A bad ``h``, ``niter`` or ``temp``.
        DataError: A batch of the wrong shape, or on another device than the net.
        NonFiniteError: NaN or Inf in the inputs or in the net's parameters or buffers.
        BatchDependentModelError: A BatchNorm without running statistics, or a forward whose output for a sample
            depends on its batch-mates (batch statistics in eval mode).
        UnsupportedModelError: Train-mode BatchNorm or dropout when ``sets_eval`` is False.
    """
    if not callable(net):
        raise TypeError(f"net must be an nn.Module or a callable returning logits (got {type(net).__name__})")
    if output_transform is not None and not callable(output_transform):
        raise TypeError("output_transform must be a callable picking the logits "
                        f"(got {type(output_transform).__name__})")
    _check_count(niter)
    _check_temp(temp)
    if h is not None:
        check_h(h)
    module = unwrap_model(net) if isinstance(net, nn.Module) else None
    x, y = check_batch(x, y, module)
    if h is not None:
        check_h(h, x)
    logit_fn = LogitFn(module if module is not None else net, output_transform)
    if module is not None:
        check_finite_model(module)
        if sets_eval:
            net.eval()
        else:
            _check_eval_mode(module)
        check_batch_independent(module, logit_fn, x)  # once per model, as in input_curvature; draws nothing
    return Batch(net, module, logit_fn, x, y)


@contextlib.contextmanager
def running(batch: Batch) -> Iterator[None]:
    """Opacus hooks off, autocast off and TF32 off while the scorer runs."""
    hooks = without_wrapper_hooks(batch.net) if isinstance(batch.net, nn.Module) else contextlib.nullcontext()
    with hooks, precision_policy("fp32", batch.x.device):
        yield


def published_probe(x: torch.Tensor, h: float) -> torch.Tensor:
    """One published Rademacher probe: ``torch.randint_like(x, high=2)``, zeros to -1, then ``h * (r + 1e-7)``.

    Args:
        x: The batch; the draw has its shape, dtype, layout and device (and so that device's generator).
        h: The step.

    Returns:
        The probe, like ``x``.
    """
    r = torch.randint_like(x, high=2)
    r[r == 0] = -1
    return h * (r + 1e-7)


def philox_keys(seed: int | None, sample_ids: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """The sample ids keying curvfast's Philox probes, or None for the published global-generator probes.

    Args:
        seed: None (the published probes) or a non-negative int.
        sample_ids: Dataset indices (B,) keying the Philox probes (default 0..B-1); only with ``seed``.
        x: The batch.

    Returns:
        int64 ids (B,), or None.

    Raises:
        ConfigError: A negative or non-int seed, ``sample_ids`` without ``seed``, or bad ``sample_ids``.
    """
    if seed is None:
        if sample_ids is not None:
            raise ConfigError("sample_ids keys curvfast's Philox probes: pass seed=<int> with it (without a seed the "
                              "published probes are drawn from torch's global generator)")
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative int or None (got {seed!r})")
    return sample_ids_for(sample_ids, x)


def check_finite_scores(**scores: torch.Tensor) -> None:
    """Refuse NaN or infinite scores, naming the samples.

    Args:
        **scores: Named (B,) tensors.

    Raises:
        NonFiniteError: One holds NaN or Inf.
    """
    for name, value in scores.items():
        bad = ~torch.isfinite(value)
        if bool(bad.any()):
            raise NonFiniteError(
                f"the {name} of sample(s) {bad.nonzero().flatten()[:10].tolist()} is not finite (NaN or Inf): the "
                "net's logits or gradients overflow at these inputs; check the inputs' scale and the net"
            )


def checked_logits(batch: Batch, x: torch.Tensor) -> torch.Tensor:
    """The logits of ``x``, the labels checked against their class count.

    Args:
        batch: The validated call.
        x: ``batch.x``, or a copy of it requiring grad.

    Returns:
        The logits (B, C).

    Raises:
        DataError: A label outside [0, C).
    """
    logits = batch.logit_fn(x)
    check_labels(batch.y, logits.shape[1])
    return logits


def hessian_statistic(batch: Batch, y: torch.Tensor, statistic: str, transform: Callable[[torch.Tensor], torch.Tensor],
                      seed: int | None, sample_ids: torch.Tensor | None) -> torch.Tensor:
    """tr(H) or ‖H‖_F of the per-sample loss CE(transform(f(x)), y) (the ``exact=True`` opt-in).

    Exact (C VJPs) for piecewise-linear networks; for smooth ones Hutchinson with exact HVPs (100 probes,
    unbiased, not exact), keyed by ``seed`` (default 0) and the sample ids.

    Args:
        batch: The validated call (an ``nn.Module``).
        y: The labels scored against.
        statistic: ``"trace"`` or ``"frobenius"``.
        transform: Applied to the logits before the loss.
        seed: Seeds the Hutchinson probes (None: 0).
        sample_ids: (B,) ids keying them (None: 0..B-1).

    Returns:
        The statistic per sample (B,).

    Raises:
        ConfigError: ``net`` is a plain callable.
    """
    if batch.module is None:
        raise ConfigError("exact=True needs an nn.Module (the Hessian comes from its autograd graph); a plain "
                          "callable works with the published estimate only")
    out = batch.logit_fn.output_transform

    def logits(z):
        return transform(z if out is None else out(z))

    with scoring_mode(batch.module):
        piecewise = is_piecewise_linear(LogitFn(batch.module, logits), batch.x)
    res = input_curvature(batch.module, batch.x, y, method="exact" if piecewise else "hutchinson", statistic=statistic,
                          seed=0 if seed is None else seed, sample_ids=sample_ids, output_transform=logits)
    return res.value
