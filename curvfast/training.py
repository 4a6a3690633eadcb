"""The one training loop (:func:`fit`), evaluation, the soft cross-entropy, and ``curvfast train`` (:func:`train_model`).

The library's own, so that ``curvfast train`` and every pipeline train the same way."""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from curvfast.data import get_dataset
from curvfast.errors import ConfigError, TrainingDivergedError, UnknownNameError
from curvfast.io import save_checkpoint
from curvfast.models import build_model, normalized

__all__ = ["train_model", "fit", "evaluate", "soft_cross_entropy", "SCHEDULES"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, batch_size: int = 256, workers: int = 0) -> float:
    """Top-1 accuracy in eval mode (the caller's mode is restored); ``workers`` loader processes."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for x, y in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
        correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
    model.train(was_training)
    return correct / len(dataset)


_OPTIMIZERS = {  # name -> (class, default lr, extra arguments): the recipes the pipelines use
    "sgd": (torch.optim.SGD, 0.05, {"momentum": 0.9}),
    "adam": (torch.optim.Adam, 1e-3, {}),
    "adamw": (torch.optim.AdamW, 1e-3, {}),
    "rmsprop": (torch.optim.RMSprop, 1e-3, {}),
}
SCHEDULES = ("cosine", "cosine-step", "constant")


def _to(batch, device):
    """Move a tensor, or the tensors of a dict / list / tuple, to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _cross_entropy(model, x, y):
    return F.cross_entropy(model(x), y)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Mean cross-entropy against probability vectors (distillation targets).

    .. math:: \ell = -\frac{1}{B}\sum_b \sum_c q_{bc} \log \operatorname{softmax}(z_b)_c

    Args:
        logits: ``(B, C)`` student logits :math:`z`.
        targets: ``(B, C)`` teacher probabilities :math:`q` (rows sum to 1).

    Returns:
        The scalar loss.
    """
    return -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()


def fit(
    model: torch.nn.Module,
    data,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float | None = None,
    weight_decay: float = 5e-4,
    seed: int = 0,
    optimizer: str | torch.optim.Optimizer = "sgd",
    schedule: str = "cosine",
    batch_transform: Callable | None = None,
    loss_fn: Callable | None = None,
    device: str | torch.device = "cpu",
    on_epoch_start: Callable[[int], None] | None = None,
    on_epoch_end: Callable[[int, float], None] | None = None,
    progress: bool | None = False,
) -> torch.nn.Module:
    """The pipelines' one training loop; trains ``model`` in place and returns it in eval mode.

    ``data``: a map-style dataset, cut into mini-batches of ``batch_size`` reshuffled each epoch
    (order seeded by ``seed``), or any iterable of ``(x, y)`` batches used as it is (a DataLoader,
    e.g. Opacus' Poisson-sampled one). ``optimizer``: ``"sgd"`` (momentum 0.9, default lr 0.05),
    ``"adam"``, ``"adamw"`` or ``"rmsprop"`` (default lr 1e-3) over ``model``'s trainable parameters
    with ``weight_decay``, or a ready optimizer (Opacus' DP optimizer, decentralized SGD). ``schedule``:
    cosine annealing of the learning rate to 0 stepped per epoch (``"cosine"``) or per step
    (``"cosine-step"``), or ``"constant"``. Each step minimises ``loss_fn(model, x, y)`` (default: the
    cross-entropy of ``model(x)`` against ``y``, class indices or probability vectors), after
    ``batch_transform(x, y, rng)`` (numpy Generator seeded by ``seed``) if given: the augmentation
    hook. Batches (tensors, or dicts / tuples of tensors) are moved to ``device``.
    ``on_epoch_start(epoch)`` and ``on_epoch_end(epoch, mean_loss)`` run around each epoch (0-based
    and 1-based). A NaN or Inf loss, checked once per epoch (no GPU sync per step), raises
    ``FloatingPointError``. The caller seeds the initialisation.
    """
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"need epochs >= 1 and batch_size >= 1 (got epochs={epochs}, batch_size={batch_size})")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0):
        raise ConfigError(f"lr must be a positive finite learning rate (got {lr!r})")
    if schedule not in SCHEDULES:
        raise UnknownNameError(f"schedule must be one of {', '.join(SCHEDULES)} (got {schedule!r})")
    from tqdm.auto import tqdm

    model.to(device)
    if isinstance(optimizer, str):
        if optimizer not in _OPTIMIZERS:
            raise UnknownNameError(f"optimizer must be one of {', '.join(_OPTIMIZERS)} or a torch optimizer (got {optimizer!r})")
        cls, default_lr, extra = _OPTIMIZERS[optimizer]
        params = [p for p in model.parameters() if p.requires_grad]
        opt = cls(params, lr=default_lr if lr is None else lr, weight_decay=weight_decay, **extra)
    else:
        opt = optimizer
    if hasattr(data, "__getitem__") and not isinstance(data, (DataLoader, list, tuple)):  # a map-style dataset
        data = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    steps = epochs * len(data) if schedule == "cosine-step" else epochs
    sched = None if schedule == "constant" else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = loss_fn or _cross_entropy
    rng = np.random.default_rng(seed)
    for epoch in tqdm(range(epochs), desc="train", unit="epoch", disable=not progress if progress is not None else None):
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        model.train()
        total, batches = torch.zeros((), device=device), 0
        for x, y in data:
            if batch_transform is not None:
                x, y = batch_transform(x, y, rng)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, _to(x, device), _to(y, device))
            loss.backward()
            opt.step()
            if schedule == "cosine-step":
                sched.step()
            total, batches = total + loss.detach(), batches + 1
        mean = total.item() / max(batches, 1)
        if not math.isfinite(mean):
            raise TrainingDivergedError(f"the training loss became NaN or Inf in epoch {epoch + 1}: training diverged; "
                                        "lower the learning rate or check the data")
        if schedule == "cosine":
            sched.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, mean)
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
    normalize: str = "none",
    device: str = "cpu",
    out: str | None = None,
    log=print,
):
    """SGD with momentum 0.9 and a cosine schedule. Returns ``(model, info)``; with ``out``
    writes a weights-only checkpoint holding the model name and its build arguments. ``normalize``
    (``none``, ``cifar10``, ``imagenet``, ``MEAN/STD``) puts the input normalisation inside the model."""
    from curvfast.engine import parse_device

    device = parse_device(device)
    torch.manual_seed(seed)
    train_set, info = get_dataset(dataset, "train", root=root)
    test_set, _ = get_dataset(dataset, "test", root=root)
    model = normalized(build_model(model_name, info.num_classes, info.in_channels), normalize).to(device)

    def report(epoch: int, _loss: float) -> None:
        if log and epoch % max(1, epochs // 5) == 0:
            log(f"epoch {epoch}/{epochs}: test accuracy {evaluate(model, test_set):.4f}")

    start = time.perf_counter()
    fit(model, train_set, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
        device=device, on_epoch_end=report)
    result = {
        "model": model_name, "dataset": dataset, "num_classes": info.num_classes, "in_channels": info.in_channels,
        "normalize": normalize,
        "epochs": epochs, "seed": seed, "train_accuracy": evaluate(model, train_set),
        "test_accuracy": evaluate(model, test_set), "seconds": round(time.perf_counter() - start, 2),
    }
    if out is not None:
        save_checkpoint(out, model, **result)
    return model, result
