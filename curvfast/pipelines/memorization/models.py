"""Model factories for the memorization pipeline.

Feldman-style estimates need hundreds of models, so the default is a small piecewise-linear
MLP (flatten → linear → ReLU → linear; exact curvature applies). ``small_cnn`` and any
:func:`curvfast.models.build_model` name work too.
"""
from __future__ import annotations

from functools import partial

from torch import nn

from curvfast.models import build_model

__all__ = ["MLP", "model_factory"]


class MLP(nn.Module):
    """x (B, C, H, W) → flatten → Linear(D, width) → ReLU → Linear(width, classes): logits."""

    def __init__(self, in_features: int, num_classes: int, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)


def model_factory(name: str, num_classes: int, input_shape: tuple[int, ...], width: int | None = None):
    """A zero-argument callable building a fresh model: ``"mlp"`` or a zoo / torchvision name."""
    if name == "mlp":
        features = 1
        for d in input_shape:
            features *= d
        return partial(MLP, features, num_classes, width or 256)
    kwargs = {"width": width} if width is not None and name == "small_cnn" else {}
    build_model(name, num_classes, input_shape[0], **kwargs)  # fail now, with build_model's message, on a bad name
    return partial(build_model, name, num_classes, input_shape[0], **kwargs)
