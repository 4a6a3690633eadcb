"""Stream networks with internal classifiers (early exits).

A stream is a ResNet (torchvision ``BasicBlock``s): stem -> layer1 .. layer4 -> global average
pool -> linear head. Internal classifiers (ICs) read the outputs of layer1, layer2 and layer3:
conv 3x3 + BN + ReLU + adaptive average pool to 4x4 + linear (docs/pkd.md); the head is the 4th
exit. Inputs carry a segment axis, (B, S, C, H, W); every exit's logits are averaged over the S
segments (TSN consensus), so a clip's exit logits are the mean of its segments' logits.

Backbones (``BACKBONES``, ``--backbone``): ``coviar``: torchvision's ResNet-50 for I-frames and
ResNet-18 for motion vectors and residuals, the roles of CoViAR's streams (its public code uses a
ResNet-152 for I-frames), randomly initialised (nothing is downloaded; the 2-channel MV stream gets
its own first convolution); ``resnet18`` uses ResNet-18 for all three;
``small`` (the default, sized for a CPU) plays the same roles with a deeper/wider I-frame ResNet and
two thinner ones (``STREAM_SPECS``).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from curvfast.errors import ConfigError, UnknownNameError

__all__ = ["StreamNet", "TorchvisionStream", "InternalClassifier", "STREAM_ORDER", "STREAM_CHANNELS", "STREAM_SPECS",
           "BACKBONES", "build_streams", "build_exits", "segment_mean"]

STREAM_ORDER = ("residual", "mv", "iframe")  # WISE's exit order: cheapest, least accurate first
STREAM_CHANNELS = {"iframe": 3, "mv": 2, "residual": 3}
STREAM_SPECS = {  # widths of layer1..4, BasicBlocks per layer; a stride-2 stem (MVs are 8x8-block constant anyway)
    "iframe": {"widths": (16, 32, 64, 128), "blocks": (2, 2, 2, 2), "stem_stride": 2},
    "mv": {"widths": (8, 16, 32, 64), "blocks": (1, 1, 1, 1), "stem_stride": 2},
    "residual": {"widths": (8, 16, 32, 64), "blocks": (1, 1, 1, 1), "stem_stride": 2},
}
BACKBONES = {  # name -> torchvision architecture per stream (None: StreamNet with STREAM_SPECS)
    "small": {"iframe": None, "mv": None, "residual": None},
    "resnet18": {"iframe": "resnet18", "mv": "resnet18", "residual": "resnet18"},
    "coviar": {"iframe": "resnet50", "mv": "resnet18", "residual": "resnet18"},
}


def segment_mean(logits: torch.Tensor, segments: int) -> torch.Tensor:
    """(B*S, K) per-segment logits -> (B, K) clip logits (the mean over segments)."""
    return logits.view(-1, segments, logits.shape[-1]).mean(1)


def _layer(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    layers = [BasicBlock(cin, cout, stride, down)] + [BasicBlock(cout, cout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class _Stages(nn.Module):
    """A stream: ``stem``, four ``layers``, a linear ``fc`` head; ``widths`` are the layers' output channels."""

    stem: nn.Module
    layers: nn.ModuleList
    fc: nn.Linear
    widths: tuple[int, ...]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layer1 .. layer4 for a (N, C, H, W) batch of frames."""
        h, out = self.stem(x), []
        for layer in self.layers:
            h = layer(h)
            out.append(h)
        return out

    def head(self, h4: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h4, 1), 1))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, S, C, H, W) -> (B, num_classes) segment-averaged head logits."""
        b, s = clips.shape[:2]
        return segment_mean(self.head(self.features(clips.flatten(0, 1))[-1]), s)


class StreamNet(_Stages):
    """ResNet backbone for one representation: conv stem (stride ``stem_stride``), layer1 (stride 1),
    layer2-4 (stride 2), global average pool, linear head. ``features`` returns the four stage outputs."""

    def __init__(self, in_channels: int, num_classes: int, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1),
                 stem_stride: int = 1):
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ConfigError(f"widths and blocks need 4 entries each (got {widths}, {blocks})")
        self.widths = tuple(widths)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stem_stride, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        cins = (widths[0],) + tuple(widths[:3])
        self.layers = nn.ModuleList(_layer(cin, cout, b, 1 if i == 0 else 2)
                                    for i, (cin, cout, b) in enumerate(zip(cins, widths, blocks)))
        self.fc = nn.Linear(widths[3], num_classes)


class TorchvisionStream(_Stages):
    """torchvision's ResNet ``arch`` (resnet18, resnet34, resnet50...) as a stream, randomly initialised:
    stem = conv1 (``in_channels`` inputs) + BN + ReLU + max-pool, layer1..4, global average pool, fc."""

    def __init__(self, arch: str, in_channels: int, num_classes: int):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, net.conv1.out_channels, 7, 2, 3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.fc = net.fc
        self.widths = tuple([m for m in layer.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features
                            for layer in self.layers)


class InternalClassifier(nn.Module):
    """conv 3x3 + BN + adaptive avg-pool 4x4 + linear, on one stage's features: no nonlinearity, as in
    the published PKD code (the IC is affine in the frozen backbone's features); ``relu=True`` adds a
    ReLU after the BN."""

    def __init__(self, channels: int, num_classes: int, pool: int = 4, relu: bool = False):
        super().__init__()
        act = [nn.ReLU(inplace=True)] if relu else []
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels),
                                  *act, nn.AdaptiveAvgPool2d(pool), nn.Flatten())
        self.fc = nn.Linear(channels * pool * pool, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(h))


def build_streams(num_classes: int, specs: dict | None = None, backbone: str = "small") -> nn.ModuleDict:
    """One stream per representation, keyed "iframe", "mv", "residual": ``StreamNet(**specs[name])`` where
    ``backbone`` (see ``BACKBONES``) names none, else that torchvision ResNet."""
    if backbone not in BACKBONES:
        raise UnknownNameError(f"backbone must be one of {', '.join(BACKBONES)} (got {backbone!r})")
    specs = specs or STREAM_SPECS
    arch = BACKBONES[backbone]
    return nn.ModuleDict({name: StreamNet(STREAM_CHANNELS[name], num_classes, **specs[name]) if arch[name] is None
                          else TorchvisionStream(arch[name], STREAM_CHANNELS[name], num_classes) for name in STREAM_ORDER})


def build_exits(streams: nn.ModuleDict, num_classes: int, relu: bool = False) -> nn.ModuleDict:
    """Three ICs (after layer1, layer2, layer3) per stream."""
    return nn.ModuleDict({name: nn.ModuleList(InternalClassifier(w, num_classes, relu=relu) for w in net.widths[:3])
                          for name, net in streams.items()})
