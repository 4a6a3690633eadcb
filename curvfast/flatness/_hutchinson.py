r"""tr(H) by Hutchinson's estimator, P probes per pass over the data, optionally deflated by a Lanczos basis.

For Rademacher probes v (:math:`E[vv^T] = I`), :math:`E[v^T H v] = \operatorname{tr}(H)` with variance
:math:`2(\|H\|_F^2 - \sum_i H_{ii}^2)` per probe (Hutchinson, "A stochastic estimator of the trace of the influence
matrix for Laplacian smoothing splines", 1990). Deflation (in the spirit of Hutch++: Meyer, Musco, Musco & Woodruff,
SOSA 2021): with Q (D, r) orthonormal from r Lanczos steps and :math:`T = Q^T H Q`,

.. math:: \operatorname{tr}(H) = \operatorname{tr}(T) + E[\tilde v^T H \tilde v], \qquad \tilde v = (I - QQ^T) v,

since :math:`\operatorname{tr}(H) = \operatorname{tr}(QQ^T H) + \operatorname{tr}((I - QQ^T) H (I - QQ^T))`. The
first term is exact (the sum of the Lanczos α); the second is Hutchinson on H with its dominant (outlier)
eigendirections removed, whose variance drops by about :math:`2\sum_{i \le r} \lambda_i^2`. Probe j is entry
(seed, sample 0, probe j) of :func:`curvfast.ops.probes`; the running mean and variance are merged by
:func:`curvfast.ops.probe_moments` after each batch of probes.
"""
from __future__ import annotations

import math

import torch

from curvfast import ops
from curvfast.flatness._lanczos import lanczos
from curvfast.flatness._operator import LossHessian

__all__ = ["hutchinson_trace"]


def hutchinson_trace(op: LossHessian, probes: int, seed: int, probe_batch: int, rtol: float | None,
                     deflate: int) -> dict:
    """The trace estimate and its standard error.

    Args:
        op: the Hessian operator.
        probes: the most probes.
        seed: the probes' key.
        probe_batch: probes per pass over the data.
        rtol: stop once stderr <= rtol * |estimate| (after at least 2 probes); None: all ``probes``.
        deflate: Lanczos steps r whose span is taken exactly (0: plain Hutchinson).

    Returns:
        ``{"value", "stderr", "probes", "deflated_trace"}`` (floats; the exact part, 0 without deflation).
    """
    D = op.dim
    exact, basis = 0.0, None
    if deflate:
        start = ops.probes(torch.tensor([1], device=op.device), 1, D, seed=seed, dtype=op.dtype)[0]
        runs = lanczos(op.matmat, start, deflate)
        exact, basis = float(runs.alpha.sum()), runs.basis[0]
    ids = torch.tensor([0], device=op.device)
    mean = torch.zeros(1, 2, dtype=torch.float64, device=op.device)
    m2 = torch.zeros_like(mean)
    used, stderr = 0, math.nan
    while used < probes:
        n = min(probe_batch, probes - used)
        v = ops.probes(ids, n, D, seed=seed, probe_offset=used, dtype=op.dtype)[0]
        if basis is not None:
            v = v - (v @ basis.T) @ basis
        hv = op.matmat(v)
        mean, m2 = ops.probe_moments(v[None], hv[None].detach(), mean, m2, used)
        used += n
        if used > 1:
            stderr = math.sqrt(float(m2[0, 0]) / (used - 1) / used)
            if rtol is not None and stderr <= rtol * abs(exact + float(mean[0, 0])):
                break
    return {"value": exact + float(mean[0, 0]), "stderr": None if math.isnan(stderr) else stderr, "probes": used,
            "deflated_trace": exact}
