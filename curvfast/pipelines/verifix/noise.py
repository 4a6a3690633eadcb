"""Synthetic label noise with a known flip mask.

- symmetric: exactly round(rate · N) samples, chosen uniformly, get a label drawn uniformly from
  the C − 1 *other* classes (so the realised noise rate is exactly ``rate``).
- asymmetric (pair flip, Han et al. 2018): the chosen samples of class c become ``mapping[c]``,
  by default c → (c + 1) mod C. A mapping may leave classes out (they are never flipped); then
  ``rate`` is the fraction flipped within the mapped classes.
"""
from __future__ import annotations

import torch

from curvfast.errors import ConfigError, DataError, UnknownNameError

__all__ = ["NOISE_TYPES", "add_label_noise"]

NOISE_TYPES = ("symmetric", "asymmetric")


def add_label_noise(
    targets: torch.Tensor, rate: float, num_classes: int, *, kind: str = "symmetric", seed: int = 0,
    mapping: dict[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(noisy_targets, flipped)`` where ``flipped`` (bool, N) marks the changed labels."""
    targets = torch.as_tensor(targets, dtype=torch.int64)
    if kind not in NOISE_TYPES:
        raise UnknownNameError(f"noise kind must be one of {NOISE_TYPES} (got {kind!r})")
    if not 0.0 <= float(rate) < 1.0:
        raise ConfigError(f"noise rate must be in [0, 1) (got {rate!r})")
    if targets.ndim != 1 or (targets.numel() and (targets.min() < 0 or targets.max() >= num_classes)):
        raise DataError(f"targets must be a 1-D tensor of class ids in [0, {num_classes})")
    gen = torch.Generator().manual_seed(int(seed))
    noisy = targets.clone()
    if kind == "symmetric":
        candidates = torch.arange(len(targets))
    else:
        mapping = mapping if mapping is not None else {c: (c + 1) % num_classes for c in range(num_classes)}
        if any(not (0 <= k < num_classes and 0 <= v < num_classes and k != v) for k, v in mapping.items()):
            raise ConfigError(f"mapping must send classes in [0, {num_classes}) to a different class (got {mapping})")
        candidates = torch.nonzero(torch.isin(targets, torch.tensor(sorted(mapping)))).flatten()
    count = int(round(float(rate) * len(candidates)))
    chosen = candidates[torch.randperm(len(candidates), generator=gen)[:count]]
    if kind == "symmetric":
        shift = torch.randint(1, num_classes, (count,), generator=gen)  # uniform over the other classes
        noisy[chosen] = (targets[chosen] + shift) % num_classes
    else:
        table = torch.arange(num_classes)
        for k, v in mapping.items():
            table[k] = v
        noisy[chosen] = table[targets[chosen]]
    return noisy, noisy != targets
