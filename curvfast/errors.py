"""Every exception curvfast raises on purpose, in one place.

Each class subclasses :class:`CurvfastError` and the builtin a caller would already catch
(``ValueError``, ``FloatingPointError``, ``RuntimeError``, ``ImportError``), so
``except ValueError`` keeps working and ``except NotPiecewiseLinearError`` picks out one cause.
The CLI maps all of them (and those builtins) to one ``error:`` line with exit code 2.

Example:
    >>> import curvfast
    >>> try:
    ...     curvfast.input_curvature(gelu_net, x, y, method="exact")
    ... except curvfast.errors.NotPiecewiseLinearError:
    ...     res = curvfast.input_curvature(gelu_net, x, y, method="auto")
"""
from __future__ import annotations

__all__ = [
    "CurvfastError", "ConfigError", "UnknownNameError", "DataError", "CheckpointError", "UnsupportedModelError",
    "NotPiecewiseLinearError", "BatchDependentModelError", "NonFiniteError", "TrainingDivergedError",
    "MissingDependencyError", "ChunkError", "RunFolderBusy", "PeerError",
]


class CurvfastError(Exception):
    """Base of every exception curvfast raises on purpose (never raised itself)."""


class ConfigError(CurvfastError, ValueError):
    """An argument or setting is out of range, malformed or inconsistent with another one."""


class UnknownNameError(ConfigError):
    """A name (estimator, statistic, dataset, model, detector, command...) is not registered."""


class DataError(CurvfastError, ValueError):
    """A dataset, folder, split, file list or batch cannot be used as given."""


class CheckpointError(CurvfastError, ValueError):
    """A checkpoint cannot be read, or does not fit the model it is loaded into."""


class UnsupportedModelError(CurvfastError, ValueError):
    """The model cannot be scored as asked (its outputs, layers or mode do not fit the estimator)."""


class NotPiecewiseLinearError(UnsupportedModelError):
    """An estimator that is exact only for piecewise-linear networks met a smooth operation."""


class BatchDependentModelError(UnsupportedModelError):
    """The model's output for one sample depends on the rest of the batch (e.g. batch-statistics norm)."""


class NonFiniteError(CurvfastError, FloatingPointError):
    """A score, loss, input or weight is NaN or infinite."""


class TrainingDivergedError(NonFiniteError):
    """Training produced a non-finite loss or weights."""


class MissingDependencyError(CurvfastError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


class ChunkError(CurvfastError, RuntimeError):
    """A chunk file is missing, truncated, altered, or belongs to another run."""


class RunFolderBusy(CurvfastError, RuntimeError):
    """Another process holds the run folder's lock."""


class PeerError(CurvfastError, RuntimeError):
    """A collective failed: another rank died, closed its connection or timed out."""
