r"""The estimator registry: one :class:`Estimator` per method name, the one list every other list reads.

The CLI's ``--method`` choices (``curvfast score`` and every pipeline), verifix's ranking methods, the
docs' method table and :func:`curvfast.input_curvature`'s dispatch all read :data:`ESTIMATORS`, so
adding an estimator is one call::

    def my_trace(call: EstimateCall) -> Estimate:
        ...  # per-sample values (B,), their standard errors or None, the losses (B,)
        return Estimate(value, stderr, loss)

    register_estimator(Estimator(name="mine", fn=my_trace, statistics=("trace",), default_probes=20,
                                 summary="tr(H), my way", exact_when="never (unbiased)"))

After it, ``input_curvature(model, x, y, method="mine")`` runs it and ``curvfast score --method mine``
accepts it. The contract an estimator keeps:

- ``fn(call)`` returns per-sample values for ``call.statistic`` (one of ``statistics``), higher = more
  curved, for the cross-entropy :math:`L_b` of each sample :math:`b` with respect to its input
  :math:`x_b`: e.g. :math:`\\operatorname{tr} H_b`, :math:`H_b = \\partial^2 L_b / \\partial x_b^2`.
- Random probes are keyed by ``(call.seed, call.sample_ids[b], probe index)`` (see
  :func:`curvfast.ops.probes`), never by batch position, so that results do not depend on batching.
- It works in the model's own dtype (autocast is off) and does not change the model.
- ``logit_space=True``: it starts from ``call.forward`` (the batch's logits with their graph);
  otherwise ``call.forward`` is None and it runs its own passes through ``call.logit_fn``.
- ``needs_piecewise_linear=True``: the value is the input Hessian only for piecewise-linear nets;
  :func:`~curvfast.curvature.input_curvature` refuses it on smooth models unless
  ``accept_gauss_newton=True``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import torch

from curvfast.errors import ConfigError, UnknownNameError

__all__ = ["Estimator", "EstimateCall", "Estimate", "ESTIMATORS", "METHODS", "DEFAULT_PROBES", "AUTO",
           "register_estimator",
           "unregister_estimator", "get_estimator"]

AUTO = "auto"  # not an estimator: input_curvature resolves it to one (see resolve_method)


@dataclass(frozen=True)
class EstimateCall:
    """Everything an estimator receives for one batch (validated, on the model's device).

    Attributes:
        logit_fn: ``x -> logits`` (B, C) of the model in scoring mode (eval BatchNorms folded).
        x: inputs (B, ...).
        y: integer labels (B,).
        sample_ids: int64 ids (B,) keying the random probes.
        forward: the batch's forward with its graph (``forward.x``, ``forward.logits``) for a
            ``logit_space`` estimator, else None.
        statistic: the statistic asked for, one of the estimator's ``statistics``.
        probes: the probe count (the estimator's ``default_probes`` unless the caller chose), 0 for
            a deterministic estimator.
        seed: keys the probes with ``sample_ids``.
        num_classes: C.
        top_classes: classes kept exactly (sampled) or Gauss-Newton directions deflated (deflated).
        distribution: ``"rademacher"`` or ``"gaussian"`` probes.
        step: the finite-difference step h.
        hvp: the Hessian-vector-product route.
        pass_size: classes or probes per batched pass (None: sized from the input).
        float64_losses: zo only: compute the stencil's losses with a float64 copy of the model.
    """

    logit_fn: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor
    y: torch.Tensor
    sample_ids: torch.Tensor
    forward: object | None
    statistic: str
    probes: int
    seed: int
    num_classes: int
    top_classes: int = 10
    distribution: str = "rademacher"
    step: float = 1e-3
    hvp: str = "auto"
    pass_size: int | None = None
    float64_losses: bool = False


class Estimate(NamedTuple):
    """What an estimator returns.

    Attributes:
        value: per-sample values (B,), or (B, K) for a spectrum.
        stderr: standard errors (B,) of a random estimator, else None.
        loss: per-sample cross-entropy (B,).
        pass_width: classes per backward pass of logit-space VJPs, or None.
        rounding_floor: per-sample size (B,) below which a loss-difference estimator's value is the losses'
            rounding (zo), else None.
    """

    value: torch.Tensor
    stderr: torch.Tensor | None
    loss: torch.Tensor
    pass_width: int | None = None
    rounding_floor: torch.Tensor | None = None


@dataclass(frozen=True)
class Estimator:
    """One registered curvature estimator.

    Attributes:
        name: the ``method=`` name.
        fn: ``fn(EstimateCall) -> Estimate``.
        statistics: the statistics it can return; the first is its default. An estimator with
            ``own_statistic=True`` returns one published quantity named like itself (fd, zo).
        default_probes: probes (or tail classes) when the caller gives none; None: deterministic.
        logit_space: it starts from the batch's logits and their graph.
        needs_piecewise_linear: exact only for piecewise-linear nets (refused on smooth ones unless
            ``accept_gauss_newton``).
        own_statistic: it estimates its own published quantity, not one of the Hessian statistics.
        summary: one line for tables: what it returns.
        exact_when: one line for tables: when the value is exact (or "unbiased", or "published estimator").
    """

    name: str
    fn: Callable[[EstimateCall], Estimate]
    statistics: tuple[str, ...] = ("trace",)
    default_probes: int | None = None
    logit_space: bool = False
    needs_piecewise_linear: bool = False
    own_statistic: bool = False
    summary: str = ""
    exact_when: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier() or self.name == AUTO:
            raise ConfigError(f"an estimator's name must be an identifier other than {AUTO!r} (got {self.name!r})")
        if not callable(self.fn):
            raise ConfigError(f"estimator {self.name!r}: fn must be callable (got {type(self.fn).__name__})")
        if not self.statistics or not all(isinstance(s, str) for s in self.statistics):
            raise ConfigError(f"estimator {self.name!r}: statistics must be a non-empty tuple of names")
        if self.default_probes is not None and (isinstance(self.default_probes, bool)
                                                or not isinstance(self.default_probes, int) or self.default_probes < 1):
            raise ConfigError(f"estimator {self.name!r}: default_probes must be a positive int or None "
                              f"(got {self.default_probes!r})")

    @property
    def random(self) -> bool:
        """Whether it draws random probes (and so has a standard error)."""
        return self.default_probes is not None


ESTIMATORS: dict[str, Estimator] = {}


class _MethodNames(Sequence):
    """A live, read-only tuple of the method names: ``"auto"`` then every registered estimator."""

    def _names(self) -> tuple[str, ...]:
        return (AUTO, *ESTIMATORS)

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(ESTIMATORS) + 1

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name) -> bool:
        return name == AUTO or name in ESTIMATORS

    def __eq__(self, other) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, (tuple, list, Sequence)) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._names())

    def __repr__(self) -> str:
        return repr(self._names())


METHODS: Sequence[str] = _MethodNames()  # "auto" + the registered names, always current


class _DefaultProbes(Mapping):
    """A live, read-only ``{name: default probes}`` of the registered random estimators."""

    def _table(self) -> dict[str, int]:
        return {e.name: e.default_probes for e in ESTIMATORS.values() if e.default_probes is not None}

    def __getitem__(self, name: str) -> int:
        return self._table()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return repr(self._table())


DEFAULT_PROBES: Mapping[str, int] = _DefaultProbes()


def register_estimator(estimator: Estimator, *, replace: bool = False) -> Estimator:
    """Register ``estimator`` under its name.

    Args:
        estimator: the estimator to add.
        replace: allow replacing an estimator registered under the same name.

    Returns:
        ``estimator``, so that the call can be used as an expression.

    Raises:
        ConfigError: the name is taken and ``replace`` is False, or ``estimator`` is not an :class:`Estimator`.
    """
    if not isinstance(estimator, Estimator):
        raise ConfigError(f"register_estimator takes an Estimator (got {type(estimator).__name__})")
    if estimator.name in ESTIMATORS and not replace:
        raise ConfigError(f"an estimator named {estimator.name!r} is already registered; "
                          "pass replace=True to replace it")
    ESTIMATORS[estimator.name] = estimator
    return estimator


def unregister_estimator(name: str) -> Estimator:
    """Remove and return the estimator registered as ``name``.

    Args:
        name: The registered name.

    Returns:
        The removed estimator.

    Raises:
        UnknownNameError: no estimator has that name.
    """
    return ESTIMATORS.pop(get_estimator(name).name)


def get_estimator(name: str) -> Estimator:
    """The estimator registered as ``name``.

    Args:
        name: The registered name.

    Returns:
        The estimator.

    Raises:
        UnknownNameError: no estimator has that name (the message lists those that do).
    """
    try:
        return ESTIMATORS[name]
    except (KeyError, TypeError):
        raise UnknownNameError(f"method must be one of {tuple(METHODS)} (got {name!r})") from None
