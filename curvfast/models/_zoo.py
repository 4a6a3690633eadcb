"""The model zoo: small networks for the bundled data and torchvision architectures by name.

Every model returns logits of shape (B, num_classes). Zoo models are built from
piecewise-linear pieces (conv, linear, ReLU, max-pool, average-pool, eval BatchNorm,
residual adds), so the exact Gauss-Newton identity (README, "Why it is fast and exact") gives their true
input-Hessian trace.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from curvfast.errors import ConfigError, UnknownNameError

__all__ = ["SmallCNN", "MLP", "cifar_resnet18", "build_model", "available_models"]


class SmallCNN(nn.Module):
    """A small residual CNN for the bundled images.

    conv-BN-ReLU x2 -> max-pool -> residual conv block -> global average pool -> linear.

    Args:
        in_channels: Input image channels.
        num_classes: Output logits.
        width: Channels of every convolution.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.block = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
        )
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of images.

        Args:
            x: Images (B, in_channels, H, W).

        Returns:
            Logits (B, num_classes).
        """
        h = self.stem(x)
        h = self.relu(h + self.block(h))
        return self.fc(torch.flatten(self.pool(h), 1))


class MLP(nn.Module):
    """x (B, ...) -> flatten -> (Linear -> ReLU) x ``depth`` -> Linear: logits (B, num_classes).

    Zoo names: ``mlp`` (one hidden layer, the memorization pipeline's default: hundreds of models
    train fast) and ``mlp2`` (two hidden layers, the transfer pipeline's non-convolutional member).

    Args:
        in_features: The flattened input size C*H*W, a positive int.
        num_classes: Output logits.
        width: Units of every hidden layer.
        depth: Hidden layers.

    Raises:
        ConfigError: When ``in_features`` is not a positive int.
    """

    def __init__(self, in_features: int, num_classes: int, width: int = 256, depth: int = 1):
        super().__init__()
        if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
            raise ConfigError(f"an MLP needs in_features, the flattened input size, as a positive int (got "
                              f"{in_features!r}); pass build_model(..., in_features=C*H*W)")
        layers: list[nn.Module] = [nn.Flatten()]
        features = in_features
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        layers.append(nn.Linear(features, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch.

        Args:
            x: Inputs (B, ...) with in_features entries per sample.

        Returns:
            Logits (B, num_classes).
        """
        return self.net(x)


def cifar_resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Torchvision ResNet-18 with the CIFAR stem: 3x3 stride-1 first conv, no max-pool.

    Args:
        num_classes: Output logits.
        in_channels: Input image channels.

    Returns:
        The randomly initialised model.
    """
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _torchvision(name: str, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision

    if in_channels != 3:
        raise ConfigError(f"torchvision model {name!r} expects 3 input channels (got in_channels={in_channels})")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


_ZOO = {
    "small_cnn": lambda num_classes, in_channels, **kw: SmallCNN(in_channels, num_classes, **kw),
    "cifar_resnet18": lambda num_classes, in_channels, **kw: cifar_resnet18(num_classes, in_channels),
    "mlp": lambda num_classes, in_channels, in_features=None, **kw: MLP(in_features, num_classes, depth=1, **kw),
    "mlp2": lambda num_classes, in_channels, in_features=None, **kw: MLP(in_features, num_classes, depth=2, **kw),
}


def available_models() -> list[str]:
    """Zoo names plus every torchvision classification model (never with pretrained weights).

    Returns:
        The names :func:`build_model` accepts, zoo names first, each part sorted.
    """
    import torchvision

    return sorted(_ZOO) + sorted(torchvision.models.list_models(module=torchvision.models))


def build_model(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a zoo model or a torchvision model (``resnet50``, ``vgg11_bn``...) by name, randomly initialised.

    Args:
        name: A zoo name (``small_cnn``, ``cifar_resnet18``, ``mlp``, ``mlp2``) or a torchvision model name.
        num_classes: Output logits, an int >= 2.
        in_channels: Input image channels (torchvision models need 3).
        **kwargs: For zoo models: ``width`` (small_cnn, mlp, mlp2) and ``in_features`` (mlp, mlp2: C*H*W).

    Returns:
        The randomly initialised model, returning logits (B, num_classes).

    Raises:
        ConfigError: For ``num_classes`` < 2, a torchvision model with ``in_channels`` != 3 or an MLP without a
            valid ``in_features``.
        UnknownNameError: For a name that is neither a zoo nor a torchvision model.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an int >= 2 (got {num_classes!r})")
    if name in _ZOO:
        return _ZOO[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        return _torchvision(name, num_classes, in_channels)
    raise UnknownNameError(f"unknown model {name!r}; choose one of: {', '.join(_ZOO)}, or a torchvision name such as "
                           "resnet50")
