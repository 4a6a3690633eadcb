"""What the drop-in functions share: probe seeds, the model in scoring mode, exact Hessian statistics."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..curvature import sample_ids_for  # dataset indices keying the probes; default 0..B-1
from ..curvature import input_curvature, is_piecewise_linear
from ..curvature._checks import check_batch
from ..curvature._model import LogitFn, scoring_mode, unwrap_model
from ..errors import ConfigError

__all__ = ["draw_seed", "sample_ids_for", "scaled_logits", "hessian_statistic", "prepare"]


def draw_seed(seed: int | None) -> int:
    """``seed``, or one drawn from torch's global generator.

    Like the published code's ``torch.randint_like`` probes, every call then gets fresh probes, reproducible under
    ``torch.manual_seed``.

    Args:
        seed: A non-negative int, or None to draw one.

    Returns:
        The seed.

    Raises:
        ConfigError: For a negative or non-int seed.
    """
    if seed is None:
        return int(torch.randint(0, 2**62, (1,)))
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative int or None (got {seed!r})")
    return seed


def scaled_logits(temp: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """The published ``outputs / temp``.

    Args:
        temp: The temperature, > 0.

    Returns:
        The map z -> z / temp.

    Raises:
        ConfigError: For temp <= 0.
    """
    if not temp > 0:
        raise ConfigError(f"temp must be > 0 (got {temp!r})")
    return lambda z: z / temp


def prepare(net: nn.Module, x: torch.Tensor, y: torch.Tensor, h: float,
            niter: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Validate the published arguments.

    Args:
        net: The model returning logits.
        x: The batch (B, ...).
        y: Its labels (B,).
        h: The finite-difference step, > 0.
        niter: Probes per sample, a positive int.

    Returns:
        ``(unwrapped model, x detached, y)``.

    Raises:
        TypeError: When ``net`` is not an ``nn.Module`` or the batch has the wrong dtypes.
        ConfigError: For h <= 0 or niter < 1.
        DataError: For a batch of the wrong shape.
        NonFiniteError: When ``x`` holds NaN or Inf.
        BatchDependentModelError: When the model normalises with the batch's own statistics.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be an nn.Module returning logits (got {type(net).__name__})")
    if not h > 0:
        raise ConfigError(f"h must be > 0 (got {h!r})")
    if not isinstance(niter, int) or niter < 1:
        raise ConfigError(f"niter must be a positive int (got {niter!r})")
    model = unwrap_model(net)
    x, y = check_batch(x.detach(), y, model)
    return model, x, y


def hessian_statistic(model: nn.Module, x: torch.Tensor, y: torch.Tensor, statistic: str,
                      transform: Callable[[torch.Tensor], torch.Tensor] | None, seed: int,
                      sample_ids: torch.Tensor) -> torch.Tensor:
    """tr(H) or ‖H‖_F of the per-sample loss CE(transform(f(x)), y).

    Exact (C VJPs) for piecewise-linear networks; for smooth ones Hutchinson with exact HVPs (100 probes, unbiased, not
    exact).

    Args:
        model: The unwrapped model.
        x: The batch (B, ...).
        y: Its labels (B,).
        statistic: ``"trace"`` or ``"frobenius"``.
        transform: Applied to the logits before the loss (None: the raw logits).
        seed: Seeds the probes of the Hutchinson route.
        sample_ids: (B,) dataset indices keying the probes.

    Returns:
        The statistic per sample (B,).
    """
    with scoring_mode(model):
        piecewise = is_piecewise_linear(LogitFn(model, transform), x)
    method = "exact" if piecewise else "hutchinson"
    res = input_curvature(model, x, y, method=method, statistic=statistic, seed=seed, sample_ids=sample_ids,
                          output_transform=transform)
    return res.value
