"""Train a zoo model on a registered dataset (the checkpoints the pipelines score)."""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .data import get_dataset
from .io import save_checkpoint
from .models import build_model

__all__ = ["train_model", "evaluate"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy in eval mode (the caller's mode is restored)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    model.train(was_training)
    return correct / len(dataset)


def train_model(
    model_name: str = "small_cnn",
    dataset: str = "digits",
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    seed: int = 0,
    root: str | None = None,
    device: str = "cpu",
    out: str | None = None,
    log=print,
):
    """SGD with momentum 0.9 and a cosine schedule. Returns ``(model, info)``; with ``out``
    writes a weights-only checkpoint holding the model name and its build arguments."""
    torch.manual_seed(seed)
    train_set, info = get_dataset(dataset, "train", root=root)
    test_set, _ = get_dataset(dataset, "test", root=root)
    model = build_model(model_name, info.num_classes, info.in_channels).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x.to(device)), y.to(device)).backward()
            opt.step()
        sched.step()
        if log and (epoch + 1) % max(1, epochs // 5) == 0:
            log(f"epoch {epoch + 1}/{epochs}: test accuracy {evaluate(model, test_set):.4f}")
    result = {
        "model": model_name, "dataset": dataset, "num_classes": info.num_classes, "in_channels": info.in_channels,
        "epochs": epochs, "seed": seed, "train_accuracy": evaluate(model, train_set),
        "test_accuracy": evaluate(model, test_set), "seconds": round(time.perf_counter() - start, 2),
    }
    if out is not None:
        save_checkpoint(out, model, **result)
    return model, result
