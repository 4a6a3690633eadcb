"""Model factories for the memorization pipeline.

Feldman-style estimates need hundreds of models, so the default is the zoo's ``mlp`` (flatten →
linear → ReLU → linear: piecewise linear, so the exact curvature applies). ``small_cnn`` and any
:func:`curvfast.models.build_model` name work too.
"""
from __future__ import annotations

import math
from functools import partial

from curvfast.models import build_model, normalized

__all__ = ["model_factory"]


def _build(name, num_classes, in_channels, normalize, kwargs):
    return normalized(build_model(name, num_classes, in_channels, **kwargs), normalize)


def model_factory(name: str, num_classes: int, input_shape: tuple[int, ...], width: int | None = None, normalize: str = "none"):
    """A zero-argument callable building a fresh model of a zoo / torchvision name (``mlp``: width 256 by
    default) inside the input normalisation ``normalize`` (:func:`curvfast.models.normalized`)."""
    kwargs = {"width": width} if width is not None and name in ("small_cnn", "mlp", "mlp2") else {}
    if name in ("mlp", "mlp2"):
        kwargs["in_features"] = math.prod(input_shape)
    _build(name, num_classes, input_shape[0], normalize, kwargs)  # fail now, with build_model's message, on a bad name
    return partial(_build, name, num_classes, input_shape[0], normalize, kwargs)
