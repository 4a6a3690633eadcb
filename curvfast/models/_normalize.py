"""Input normalisation inside the model, so curvature, attacks and probes all see [0, 1] inputs.

``Normalized(net, mean, std)(x) = net((x − mean) / std)`` per channel. The input Hessian of the
wrapped model is that of ``net`` seen through the affine map: H_x = S⁻¹ H_z S⁻¹ with
S = diag(std), so a piecewise-linear ``net`` stays piecewise linear and the exact estimators apply.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from curvfast.errors import ConfigError, DataError, UnknownNameError

__all__ = ["NORMALIZATIONS", "Normalized", "parse_normalization", "normalized"]

NORMALIZATIONS = {  # name -> (per-channel mean, per-channel std) of the training images in [0, 1]
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def parse_normalization(spec: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Parse a normalisation name or explicit statistics.

    Args:
        spec: ``none`` (or None); ``cifar10`` / ``imagenet``; or ``M1,M2,M3/S1,S2,S3``, explicit per-channel mean
            and std (one value each for grey images).

    Returns:
        None for ``none``, else ``(mean, std)``, per-channel tuples of floats.

    Raises:
        UnknownNameError: For a spec that is neither a known name nor of the MEAN/STD form.
        ConfigError: For non-numeric values, unequal counts of means and stds, non-finite values or a std <= 0.
    """
    if spec is None or spec == "none":
        return None
    if spec in NORMALIZATIONS:
        return NORMALIZATIONS[spec]
    usage = (f"normalize must be none, {', '.join(NORMALIZATIONS)} or MEAN/STD such as 0.5,0.5,0.5/0.25,0.25,0.25 "
             f"(got {spec!r})")
    if spec.count("/") != 1:
        raise UnknownNameError(usage)
    try:
        mean, std = (tuple(float(v) for v in part.split(",")) for part in spec.split("/"))
    except ValueError:
        raise ConfigError(usage) from None
    if len(mean) != len(std) or not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ConfigError(f"{usage}: need as many finite means as stds, every std > 0")
    return mean, std


class Normalized(nn.Module):
    r"""``net((x − mean) / std)``; ``mean`` and ``std`` are buffers, so they travel with the state dict.

    With S = diag(std) the input Hessian is that of ``net`` seen through the affine map:

    .. math:: H_x = S^{-1} H_z S^{-1}

    Args:
        net: The wrapped model, taking normalised inputs.
        mean: Per-channel means (C,).
        std: Per-channel standard deviations (C,).
    """

    def __init__(self, net: nn.Module, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``net`` to the normalised input.

        Args:
            x: Images (B, C, H, W) in [0, 1], C the number of means.

        Returns:
            ``net((x − mean) / std)``.

        Raises:
            DataError: When ``x`` is not 4-D or its channels differ from the number of means.
        """
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise DataError(f"normalisation has {self.mean.shape[1]} channel(s) but the input has shape "
                            f"{tuple(x.shape)}; give one mean and std per input channel")
        return self.net((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))


def normalized(net: nn.Module, spec: str | None) -> nn.Module:
    """``net`` wrapped in :class:`Normalized` for the named or explicit normalisation (``none``: ``net`` itself).

    Args:
        net: The model taking normalised inputs.
        spec: A normalisation, as :func:`parse_normalization` reads it.

    Returns:
        The wrapped model, or ``net`` itself for ``none``.

    Raises:
        UnknownNameError: For an unknown spec.
        ConfigError: For bad explicit statistics.
    """
    stats = parse_normalization(spec)
    return net if stats is None else Normalized(net, *stats)
