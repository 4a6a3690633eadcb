"""Benchmark cases: (model, inputs, labels, note) built offline and deterministically.

No pretrained weights exist offline. The digits CNN is trained here (a few seconds). The ResNets
keep random weights, with the final layer scaled so the softmax is as peaked as a trained
model's on its training data (mean max-probability about 0.99), and the labels are the model's own
predictions (as training samples of a fitted model are). Their inputs are crops of the real
photos bundled with scikit-learn, standardised per channel.
"""
from __future__ import annotations

import numpy as np
import torch

from curvfast.models import build_model, cifar_resnet18

CASE_NAMES = ("digits_cnn", "resnet18_c10", "resnet18_c100", "resnet50_c1000")


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
        from curvfast.train import train_model

        model, trained = train_model("small_cnn", "digits", epochs=10, seed=seed, log=None)
        train_set, _ = get_dataset("digits", "train")
        x, y = train_set.images[:batch], train_set.targets[:batch]
        note = f"small_cnn trained 10 epochs on digits (test accuracy {trained['test_accuracy']:.3f}); its training images"
        return model.eval(), x, y, {"input": [1, 8, 8], "classes": 10, "weights": note}
    if name.startswith("resnet18_c"):
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
