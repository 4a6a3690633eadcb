"""Benchmark cases: (model, inputs, labels, note) built offline and deterministically.

No pretrained weights exist offline. The digits CNN and the smooth digits MLP (GELU, LayerNorm,
tanh) are trained here (a few seconds). The ResNets, the VGG-style net and the patch transformer
(LayerNorm, softmax attention, GELU) keep random weights, with the final layer scaled so the softmax is as peaked as a trained
model's on its training data (mean max-probability about 0.99), and the labels are the model's own
predictions (as training samples of a fitted model are). Their inputs are crops of the real
photos bundled with scikit-learn, standardised per channel.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from curvfast.models import build_model, cifar_resnet18

CASE_NAMES = ("digits_cnn", "gelu_mlp_digits", "vgg_c10", "vit_c10", "resnet18_c10", "resnet18_c100", "resnet50_c1000")
SMOOTH_CASES = ("gelu_mlp_digits", "vit_c10")


def gelu_mlp(num_classes: int = 10) -> nn.Module:
    """64 -> 128 GELU -> LayerNorm -> 128 tanh -> C: smooth everywhere."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.GELU(), nn.LayerNorm(128), nn.Linear(128, 128), nn.Tanh(),
                         nn.Linear(128, num_classes))


def vgg_style(num_classes: int = 10, width: int = 32) -> nn.Module:
    """(conv-BN-ReLU x2, max-pool) x2, then a ReLU MLP head; 16x16 RGB inputs. Piecewise linear."""
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*block(3, width), *block(width, 2 * width), nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(),
                         nn.Linear(128, num_classes))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.qkv, self.proj = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, h):
        b, n, d = h.shape
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(dim), _Attention(dim, heads), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h):
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class PatchTransformer(nn.Module):
    """ViT-style: 4x4 patches of a 32x32 RGB image, ``depth`` pre-norm blocks, mean pooling."""

    def __init__(self, num_classes: int = 10, size: int = 32, patch: int = 4, dim: int = 64, depth: int = 2, heads: int = 4):
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, (size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x):
        h = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(h)).mean(1))


def photo_crops(batch: int, size: int, seed: int) -> torch.Tensor:
    """``batch`` RGB crops of side ``size`` from sklearn's bundled photos, standardised per channel."""
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(img, dtype=np.float32) / 255.0 for img in load_sample_images().images]
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(batch):
        img = photos[i % len(photos)]
        r, c = rng.integers(0, img.shape[0] - size), rng.integers(0, img.shape[1] - size)
        crops.append(img[r : r + size, c : c + size].transpose(2, 0, 1))
    x = torch.from_numpy(np.stack(crops))
    return (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)


@torch.no_grad()
def _peaked(model, head: torch.nn.Linear, x: torch.Tensor, target_max_prob: float = 0.99):
    """Scale the final layer until the mean max-softmax reaches ``target_max_prob``; label = prediction."""
    head.bias.zero_()
    for _ in range(40):
        p = model(x).softmax(1).max(1).values.mean().item()
        if p >= target_max_prob:
            break
        head.weight.mul_(1.5)
    return model(x).argmax(1), p


def build_case(name: str, batch: int, seed: int = 0):
    """Return ``(model (eval, fp32), x, y, info dict)``."""
    torch.manual_seed(seed)
    if name == "digits_cnn":
        from curvfast.data import get_dataset
        from curvfast.training import TrainRecipe, train_model

        model, trained = train_model("small_cnn", "digits", TrainRecipe(epochs=10, lr=0.05, seed=seed), log=None)
        train_set, _ = get_dataset("digits", "train")
        x, y = train_set.images[:batch], train_set.targets[:batch]
        note = f"small_cnn trained 10 epochs on digits (test accuracy {trained['test_accuracy']:.3f}); its training images"
        return model.eval(), x, y, {"input": [1, 8, 8], "classes": 10, "weights": note}
    if name == "gelu_mlp_digits":
        from curvfast.data import get_dataset
        from curvfast.training import TrainRecipe, evaluate, fit

        train_set, _ = get_dataset("digits", "train")
        model = fit(gelu_mlp(10), train_set, TrainRecipe(epochs=10, optimizer="adam", seed=seed))
        accuracy = evaluate(model, get_dataset("digits", "test")[0])
        x, y = train_set.images[:batch], train_set.targets[:batch]
        note = f"GELU/LayerNorm/tanh MLP trained 10 epochs on digits (test accuracy {accuracy:.3f}); its training images"
        return model.eval(), x, y, {"input": [1, 8, 8], "classes": 10, "weights": note}
    if name == "vgg_c10":
        model, x = vgg_style(10).eval(), photo_crops(batch, 16, seed)
        head, shape = model[-1], [3, 16, 16]
    elif name == "vit_c10":
        model, x = PatchTransformer(10).eval(), photo_crops(batch, 32, seed)
        head, shape = model.head, [3, 32, 32]
    elif name.startswith("resnet18_c"):
        classes = int(name.split("_c")[1])
        model, x = cifar_resnet18(classes).eval(), photo_crops(batch, 32, seed)
        head, shape = model.fc, [3, 32, 32]
    elif name == "resnet50_c1000":
        model, x = build_model("resnet50", 1000, 3).eval(), photo_crops(batch, 224, seed)
        head, shape = model.fc, [3, 224, 224]
    else:
        raise ValueError(f"unknown case {name!r}; choose from {CASE_NAMES}")
    y, p = _peaked(model, head, x)
    note = f"random weights, final layer scaled to mean max-softmax {p:.3f}; labels = predictions; photo crops"
    return model, x, y, {"input": shape, "classes": head.out_features, "weights": note}
