"""Models by name: the zoo (small_cnn, cifar_resnet18, mlp, mlp2) and every torchvision classifier."""
from curvfast.models.zoo import MLP, SmallCNN, available_models, build_model, cifar_resnet18

__all__ = ["SmallCNN", "MLP", "cifar_resnet18", "build_model", "available_models"]
