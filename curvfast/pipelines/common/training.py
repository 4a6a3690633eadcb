"""Train a zoo model on a registered dataset (the checkpoints the pipelines score)."""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from curvfast.data import get_dataset
from curvfast.io import save_checkpoint
from curvfast.models import build_model

__all__ = ["train_model", "fit", "evaluate"]


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


def fit(
    model: torch.nn.Module,
    dataset,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float | None = None,
    weight_decay: float = 5e-4,
    seed: int = 0,
    optimizer: str = "sgd",
    batch_transform: Callable | None = None,
    device: str | torch.device = "cpu",
    on_epoch_end: Callable[[int], None] | None = None,
    progress: bool | None = False,
) -> torch.nn.Module:
    """The project's one training loop; trains ``model`` in place and returns it in eval mode.

    Mini-batches of ``dataset`` reshuffled each epoch (order seeded by ``seed``), cross-entropy,
    ``optimizer="sgd"`` (momentum 0.9, default lr 0.05) or ``"adam"`` (default lr 1e-3), weight
    decay, cosine schedule over ``epochs``. ``batch_transform(x, y, rng)`` (numpy Generator seeded by
    ``seed``) may replace a batch, with targets as class indices or probability vectors.
    ``on_epoch_end(epoch)`` runs after each epoch (1-based). The caller seeds the initialisation.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"need epochs >= 1 and batch_size >= 1 (got epochs={epochs}, batch_size={batch_size})")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0):
        raise ValueError(f"lr must be a positive finite learning rate (got {lr!r})")
    from tqdm.auto import tqdm

    model.to(device)
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.05 if lr is None else lr, momentum=0.9, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3 if lr is None else lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam' (got {optimizer!r})")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    rng = np.random.default_rng(seed)
    model.train()
    for epoch in tqdm(range(epochs), desc="train", unit="epoch", disable=not progress if progress is not None else None):
        finite = torch.tensor(True, device=device)
        for x, y in loader:
            if batch_transform is not None:
                x, y = batch_transform(x, y, rng)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            finite = finite & torch.isfinite(loss.detach())  # checked once per epoch: no GPU sync per step
            loss.backward()
            opt.step()
        if not finite:
            raise FloatingPointError(f"the training loss became NaN or Inf in epoch {epoch + 1}: training diverged; "
                                     "lower the learning rate or check the data")
        sched.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
            model.train()
    return model.eval()


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
    from curvfast.engine import parse_device

    device = parse_device(device)
    torch.manual_seed(seed)
    train_set, info = get_dataset(dataset, "train", root=root)
    test_set, _ = get_dataset(dataset, "test", root=root)
    model = build_model(model_name, info.num_classes, info.in_channels).to(device)

    def report(epoch: int) -> None:
        if log and epoch % max(1, epochs // 5) == 0:
            log(f"epoch {epoch}/{epochs}: test accuracy {evaluate(model, test_set):.4f}")

    start = time.perf_counter()
    fit(model, train_set, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
        device=device, on_epoch_end=report)
    result = {
        "model": model_name, "dataset": dataset, "num_classes": info.num_classes, "in_channels": info.in_channels,
        "epochs": epochs, "seed": seed, "train_accuracy": evaluate(model, train_set),
        "test_accuracy": evaluate(model, test_set), "seconds": round(time.perf_counter() - start, 2),
    }
    if out is not None:
        save_checkpoint(out, model, **result)
    return model, result
