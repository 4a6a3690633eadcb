"""Models by name.

The zoo (small_cnn, cifar_resnet18, mlp, mlp2) and every torchvision classifier, and input normalisation inside the
model.
"""
from curvfast.models.normalize import NORMALIZATIONS, Normalized, normalized, parse_normalization
from curvfast.models.zoo import MLP, SmallCNN, available_models, build_model, cifar_resnet18

__all__ = ["SmallCNN", "MLP", "cifar_resnet18", "build_model", "available_models",
           "NORMALIZATIONS", "Normalized", "normalized", "parse_normalization"]
