r"""``param_curvature``: trace, top eigenvalues or spectral density of the loss Hessian w.r.t. the weights.

H is the Hessian of the mean training loss :math:`L(\theta) = \frac1N \sum_n \ell(f_\theta(x_n), y_n)` with
respect to the trainable parameters θ (D entries), at the current weights, over the whole dataset — the flatness
of a minimum (Keskar et al., "On large-batch training for deep learning", ICLR 2017; Yao et al., "PyHessian:
neural networks through the lens of the Hessian", 2020). Every statistic needs only products HV
(:class:`~curvfast.flatness._operator.LossHessian`, streamed batch by batch), never H itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from curvfast.errors import ConfigError, UnknownNameError
from curvfast.flatness._density import slq, smoothed_density
from curvfast.flatness._hutchinson import hutchinson_trace
from curvfast.flatness._lanczos import top_eigenvalues
from curvfast.flatness._operator import HVP_METHODS, LossHessian, LossFn

__all__ = ["PARAM_STATISTICS", "ParamCurvature", "param_curvature"]

PARAM_STATISTICS = ("trace", "top_eigenvalues", "density")


@dataclass(frozen=True)
class ParamCurvature:
    r"""What :func:`param_curvature` returns.

    Attributes:
        statistic: ``trace``, ``top_eigenvalues`` or ``density``.
        value: tr(H); the largest eigenvalue; or, for ``density``, the SLQ estimate of tr(H),
            :math:`D \cdot \frac1n \sum_{l,k} \tau_k^{(l)} \theta_k^{(l)}`.
        stderr: the standard error of ``value`` (trace: from the probes' variance; density: over the probes;
            top eigenvalue: its Ritz residual norm, a bound on its distance to an eigenvalue of H).
        values: the top-k eigenvalues, descending (``top_eigenvalues``), else empty.
        residuals: their Ritz residual norms.
        nodes: (n, m) SLQ nodes per probe (``density``), else None.
        weights: (n, m) SLQ weights per probe, rows summing to 1 (``density``), else None.
        probes: probes used (trace, density) or Lanczos steps (top eigenvalues).
        products: Hessian-vector products applied (each one pass of its column over the data).
        num_params: D.
        num_samples: N, the samples in the data.
        settings: the arguments that fixed the result.
    """

    statistic: str
    value: float
    stderr: float | None
    probes: int
    products: int
    num_params: int
    num_samples: int
    values: tuple[float, ...] = ()
    residuals: tuple[float, ...] = ()
    nodes: torch.Tensor | None = field(default=None, repr=False)
    weights: torch.Tensor | None = field(default=None, repr=False)
    settings: dict = field(default_factory=dict)

    def density(self, grid: torch.Tensor, sigma: float) -> torch.Tensor:
        """The SLQ spectral density smoothed by a Gaussian of width ``sigma``, on ``grid``.

        Args:
            grid: (G,) eigenvalue axis.
            sigma: kernel width (> 0).

        Returns:
            (G,) float64 density values.

        Raises:
            ConfigError: not a ``density`` result, or ``sigma`` <= 0.
        """
        if self.nodes is None:
            raise ConfigError(f"density() needs a result of statistic='density' (this one is {self.statistic!r})")
        if not sigma > 0:
            raise ConfigError(f"sigma must be > 0 (got {sigma})")
        return smoothed_density(self.nodes, self.weights, torch.as_tensor(grid), sigma)


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1 (got {value!r})")


def param_curvature(model: torch.nn.Module, data, statistic: str = "trace", *, probes: int = 64, k: int = 1,
                    steps: int | None = None, rtol: float | None = None, deflate: int = 0, seed: int = 0,
                    device=None, loss_fn: LossFn | None = None, batch_size: int = 256, probe_batch: int = 8,
                    hvp: str = "loop") -> ParamCurvature:
    r"""Curvature of the mean training loss w.r.t. the trainable weights, over a dataset.

    - ``trace``: tr(H) by batched Hutchinson with ``probes`` Rademacher probes, ``probe_batch`` per pass over the
      data (:math:`E[v^THv] = \operatorname{tr} H`), with standard error; ``deflate`` = r > 0 first takes the span of
      r Lanczos vectors exactly and probes only its complement (unbiased, lower variance when H has outliers).
    - ``top_eigenvalues``: the k largest eigenvalues by Lanczos with full reorthogonalisation, stopped when each
      Ritz residual :math:`\beta_m|U_{m,i}| \le` ``rtol`` :math:`|\theta_i|` (default 1e-3) or after ``steps``
      (default max(3k, 30)) steps; with steps >= D they are exact.
    - ``density``: stochastic Lanczos quadrature, ``probes`` runs of ``steps`` (default 40) steps:
      nodes and weights per probe (:meth:`ParamCurvature.density` smooths them).

    Probes are keyed by (seed, probe index) through :func:`curvfast.ops.probes`: the result depends on ``seed``,
    never on the batching. The model runs in eval mode (BatchNorm on its running statistics; the caller's mode
    restored); a BatchNorm without running statistics is refused, since the loss would depend on the batching.

    Args:
        model: the network; its parameters with ``requires_grad`` are θ.
        data: a DataLoader (or any re-iterable of ``(x, y)`` batches, the same samples on every pass) or an
            ``(x, y)`` pair of tensors; batches are moved to the model's device.
        statistic: ``trace``, ``top_eigenvalues`` or ``density``.
        probes: Hutchinson probes (trace; the most, with ``rtol``) or SLQ runs (density).
        k: eigenvalues wanted (top_eigenvalues).
        steps: Lanczos steps (top_eigenvalues: the most; density: per run).
        rtol: trace: stop once stderr <= rtol |trace|; top_eigenvalues: the residual target.
        deflate: trace: Lanczos steps taken exactly before probing (0: plain Hutchinson).
        seed: key of the probes, in [0, 2^63).
        device: where to run; None: the model's device (the model must already be on ``device``).
        loss_fn: ``loss_fn(model(x), y)`` -> the batch's mean loss (default cross-entropy).
        batch_size: batch size when ``data`` is an ``(x, y)`` pair.
        probe_batch: probe vectors per pass over the data (memory grows with it).
        hvp: ``loop`` (one backward per vector on a shared graph: the fastest measured on a CPU thread,
            benchmarks/results/), ``batched`` (double backward with ``is_grads_batched``) or ``func`` (vmap over
            jvp of grad; torch.func cannot differentiate some losses twice, e.g. ``mse_loss`` after ``tanh``).

    Returns:
        A :class:`ParamCurvature`.

    Raises:
        UnknownNameError: unknown ``statistic`` or ``hvp``.
        ConfigError: a bad count, tolerance or device (named in the message).
        UnsupportedModelError: no trainable parameters, or mixed dtypes / devices.
        BatchDependentModelError: a BatchNorm without running statistics.
        DataError: empty or malformed data.
    """
    if statistic not in PARAM_STATISTICS:
        raise UnknownNameError(f"statistic must be one of {', '.join(PARAM_STATISTICS)} (got {statistic!r})")
    if hvp not in HVP_METHODS:
        raise UnknownNameError(f"hvp must be one of {', '.join(HVP_METHODS)} (got {hvp!r})")
    for name, value in (("probes", probes), ("k", k), ("probe_batch", probe_batch)):
        _positive(name, value)
    if steps is not None:
        _positive("steps", steps)
    if isinstance(deflate, bool) or not isinstance(deflate, int) or deflate < 0:
        raise ConfigError(f"deflate must be an int >= 0 (got {deflate!r})")
    if rtol is not None and not 0 < rtol < 1:
        raise ConfigError(f"rtol must lie in (0, 1) (got {rtol})")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise ConfigError(f"seed must be an int in [0, 2^63) (got {seed!r})")
    op = LossHessian(model, data, loss_fn, device, batch_size, hvp)
    if statistic == "top_eigenvalues" and k > op.dim:
        raise ConfigError(f"k={k} exceeds the number of trainable parameters D={op.dim}")
    settings = {"statistic": statistic, "probes": probes, "k": k, "steps": steps, "rtol": rtol, "deflate": deflate,
                "seed": seed, "hvp": hvp, "probe_batch": probe_batch, "device": str(op.device)}
    common = {"num_params": op.dim, "settings": settings}
    if statistic == "trace":
        est = hutchinson_trace(op, probes, seed, probe_batch, rtol, deflate)
        return ParamCurvature("trace", est["value"], est["stderr"], est["probes"], op.products,
                              num_samples=op.num_samples, **common)
    if statistic == "top_eigenvalues":
        from curvfast import ops

        start = ops.probes(torch.tensor([3], device=op.device), 1, op.dim, seed=seed, dtype=op.dtype)[0]
        values, residuals, used = top_eigenvalues(op.matmat, start, k, steps or max(3 * k, 30), rtol or 1e-3)
        return ParamCurvature("top_eigenvalues", float(values[0]), float(residuals[0]), used, op.products,
                              num_samples=op.num_samples, values=tuple(values.tolist()),
                              residuals=tuple(residuals.tolist()), **common)
    nodes, weights = slq(op, probes, steps or 40, seed, probe_batch)
    per_probe = op.dim * (nodes * weights).sum(1)
    stderr = float(per_probe.std() / probes ** 0.5) if probes > 1 else None
    return ParamCurvature("density", float(per_probe.mean()), stderr, probes, op.products,
                          num_samples=op.num_samples, nodes=nodes, weights=weights, **common)
