"""Fake (meta) kernels of the curvfast ops, for torch.compile / FakeTensor tracing.

They produce outputs of the right shape, dtype and device without computing anything.
"""

from __future__ import annotations

import torch


def _logit_factor_fake(logits, labels, sample_ids, num_exact, num_tail, seed):
    B, C = logits.shape
    K = C if num_exact >= C else num_exact + num_tail
    return (logits.new_empty((B, K, C)), logits.new_empty((B, K)),
            labels.new_empty((B, K)), logits.new_empty((B,)))


def _probes_fake(sample_ids, seed, probe_offset, num_probes, dim, distribution, dtype):
    return sample_ids.new_empty((sample_ids.shape[0], num_probes, dim), dtype=dtype)


def _weighted_sq_norms_fake(vjp, weights):
    return vjp.new_empty(vjp.shape[:2])


def _probe_moments_fake(probes, hvp, mean, m2, count):
    return mean.new_empty((mean.shape[0], 2)), mean.new_empty((mean.shape[0], 2))


def register() -> None:
    """Registers the fake kernels; called once, after the extension has loaded."""
    torch.library.register_fake("curvfast::probes", _probes_fake)
    torch.library.register_fake("curvfast::logit_factor", _logit_factor_fake)
    torch.library.register_fake("curvfast::weighted_sq_norms", _weighted_sq_norms_fake)
    torch.library.register_fake("curvfast::probe_moments", _probe_moments_fake)
