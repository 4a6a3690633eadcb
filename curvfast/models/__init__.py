"""Models by name.

The zoo (small_cnn, cifar_resnet18, mlp, mlp2) and every torchvision classifier, and input normalisation inside the
model.
"""
from curvfast.models._normalize import NORMALIZATIONS, Normalized, normalized, parse_normalization
from curvfast.models._zoo import MLP, SmallCNN, available_models, build_model, cifar_resnet18

__all__ = ["SmallCNN", "MLP", "cifar_resnet18", "build_model", "available_models",
           "NORMALIZATIONS", "Normalized", "normalized", "parse_normalization"]
