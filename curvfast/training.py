"""The one training loop (:func:`fit`), its recipe (:class:`TrainRecipe`), evaluation, the soft cross-entropy.

Also ``curvfast train`` (:func:`train_model`). The library's own, so that ``curvfast train`` and every pipeline
train the same way.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import numpy as np

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from curvfast.data import get_dataset
from curvfast.errors import ConfigError, TrainingDivergedError, UnknownNameError
from curvfast.checkpoints import model_record, save_model
from curvfast.models import build_model, normalized

__all__ = ["TrainRecipe", "train_model", "fit", "evaluate", "soft_cross_entropy", "SCHEDULES", "CURVFAST_TRAIN"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, batch_size: int = 256, workers: int = 0) -> float:
    """Top-1 accuracy of ``model`` on ``dataset``, in eval mode (the caller's mode is restored).

    Args:
        model: a classifier returning logits; its first parameter's device is used.
        dataset: a map-style dataset of ``(x, label)`` pairs.
        batch_size: samples per forward pass.
        workers: DataLoader worker processes.

    Returns:
        The fraction of samples whose arg-max logit is the label.
    """
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



@dataclasses.dataclass(frozen=True)
class TrainRecipe:
    """What :func:`fit` and :func:`train_model` train with: one recipe instead of eight keywords.

    Validated when built, so a recipe that exists can be trained with.

    Attributes:
        epochs: passes over the data (>= 1).
        batch_size: samples per step when the data is a map-style dataset (>= 1).
        lr: the learning rate; None takes the optimizer's default (sgd 0.05, the others 1e-3).
        weight_decay: L2 penalty of a named optimizer.
        optimizer: ``"sgd"`` (momentum 0.9), ``"adam"``, ``"adamw"``, ``"rmsprop"``, or a ready
            ``torch.optim.Optimizer`` over the model's parameters (Opacus' DP optimizer, decentralized SGD).
        schedule: cosine annealing of the learning rate to 0 stepped per epoch (``"cosine"``) or per step
            (``"cosine-step"``), or ``"constant"``.
        seed: seeds the shuffle of a map-style dataset and the ``batch_transform`` generator.

    Raises:
        ConfigError: ``epochs`` or ``batch_size`` < 1, or ``lr`` not a positive finite number.
        UnknownNameError: ``optimizer`` or ``schedule`` is not a known name.
    """

    epochs: int
    batch_size: int = 64
    lr: float | None = None
    weight_decay: float = 5e-4
    optimizer: str | torch.optim.Optimizer = "sgd"
    schedule: str = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        """Check every field (see Raises above)."""
        epochs, batch_size, lr = self.epochs, self.batch_size, self.lr
        if epochs < 1 or batch_size < 1:
            raise ConfigError(f"need epochs >= 1 and batch_size >= 1 (got epochs={epochs}, batch_size={batch_size})")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)
                               or lr <= 0):
            raise ConfigError(f"lr must be a positive finite learning rate (got {lr!r})")
        if self.schedule not in SCHEDULES:
            raise UnknownNameError(f"schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        if isinstance(self.optimizer, str) and self.optimizer not in _OPTIMIZERS:
            raise UnknownNameError(f"optimizer must be one of {', '.join(_OPTIMIZERS)} or a torch optimizer "
                                   f"(got {self.optimizer!r})")


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
    data: Any,
    recipe: TrainRecipe,
    *,
    batch_transform: Callable | None = None,
    loss_fn: Callable | None = None,
    device: str | torch.device = "cpu",
    on_epoch_start: Callable[[int], None] | None = None,
    on_epoch_end: Callable[[int, float], None] | None = None,
    progress: bool | None = False,
) -> torch.nn.Module:
    """The one training loop; trains ``model`` in place and returns it in eval mode.

    Each step minimises ``loss_fn(model, x, y)`` over a mini-batch, after ``batch_transform(x, y, rng)`` if given
    (the augmentation hook; ``rng`` a numpy Generator seeded by the recipe's seed). A NaN or Inf loss is checked
    once per epoch (no GPU sync per step). The caller seeds the initialisation.

    Args:
        model: the network; moved to ``device``.
        data: a map-style dataset, cut into mini-batches of ``recipe.batch_size`` reshuffled each epoch (order
            seeded by ``recipe.seed``), or any iterable of ``(x, y)`` batches used as it is (a DataLoader, e.g.
            Opacus' Poisson-sampled one).
        recipe: epochs, batch size, learning rate, weight decay, optimizer, schedule and seed.
        batch_transform: ``(x, y, rng) -> (x, y)`` applied to each batch before it is moved to ``device``.
        loss_fn: ``(model, x, y) -> scalar loss``; default the cross-entropy of ``model(x)`` against ``y``
            (class indices or probability vectors).
        device: where the model and the batches (tensors, or dicts / tuples of tensors) go.
        on_epoch_start: called with the 0-based epoch before it runs.
        on_epoch_end: called with the 1-based epoch and its mean loss after it ran.
        progress: a tqdm bar over the epochs (None: only on a terminal).

    Returns:
        ``model``, trained, in eval mode.

    Raises:
        TypeError: ``recipe`` is not a :class:`TrainRecipe`.
        TrainingDivergedError: the mean loss of an epoch is NaN or Inf.
    """
    if not isinstance(recipe, TrainRecipe):
        raise TypeError(f"recipe must be a TrainRecipe (got {type(recipe).__name__}): fit(model, data, "
                        "TrainRecipe(epochs=..., lr=...))")
    from tqdm.auto import tqdm

    model.to(device)
    if isinstance(recipe.optimizer, str):
        cls, default_lr, extra = _OPTIMIZERS[recipe.optimizer]
        params = [p for p in model.parameters() if p.requires_grad]
        opt = cls(params, lr=default_lr if recipe.lr is None else recipe.lr, weight_decay=recipe.weight_decay,
                  **extra)
    else:
        opt = recipe.optimizer
    if hasattr(data, "__getitem__") and not isinstance(data, (DataLoader, list, tuple)):  # a map-style dataset
        data = DataLoader(data, batch_size=recipe.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(recipe.seed))
    schedule = recipe.schedule
    steps = recipe.epochs * len(data) if schedule == "cosine-step" else recipe.epochs
    sched = None if schedule == "constant" else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = loss_fn or _cross_entropy
    rng = np.random.default_rng(recipe.seed)
    bar = tqdm(range(recipe.epochs), desc="train", unit="epoch", disable=not progress if progress is not None else None)
    for epoch in bar:
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


CURVFAST_TRAIN = TrainRecipe(epochs=30, lr=0.05)  # `curvfast train`'s recipe: SGD, momentum 0.9, cosine


def train_model(
    model_name: str = "small_cnn",
    dataset: str = "digits",
    recipe: TrainRecipe = CURVFAST_TRAIN,
    *,
    root: str | None = None,
    image_size: int | None = None,
    train_split: str = "train",
    test_split: str = "test",
    allow_outside_root: bool = False,
    normalize: str = "none",
    device: str = "cpu",
    out: str | None = None,
    log: Callable[[str], Any] | None = print,
) -> tuple[torch.nn.Module, dict]:
    """``curvfast train``: build a model by name and train it on a registered dataset with :func:`fit`.

    The recipe's seed also seeds the initialisation.

    Args:
        model_name: a zoo or torchvision model name (:func:`curvfast.models.build_model`).
        dataset: a registered dataset name (:func:`curvfast.data.get_dataset`).
        recipe: the training recipe; default :data:`CURVFAST_TRAIN`: 30 epochs of SGD with momentum 0.9, lr 0.05,
            batch 64, weight decay 5e-4, cosine schedule, seed 0.
        root: the folder holding the dataset (not needed for the bundled digits).
        image_size: resize and centre-crop every image to this side (None: as stored; an image folder of mixed sizes
            needs it).
        train_split: the split trained on (a split folder of an image folder, e.g. ``train``).
        test_split: the held-out split the accuracy is measured on (``val`` for an ImageNet layout).
        allow_outside_root: let image folders and file lists read files outside ``root`` (symlinks, list entries).
        normalize: ``none``, ``cifar10``, ``imagenet`` or ``MEAN/STD``: the input normalisation, put inside the
            model.
        device: where to train (``cpu``, ``cuda``, ``cuda:1``...).
        out: if given, a weights-only checkpoint is written there, holding the model name and build arguments.
        log: called with a test-accuracy line five times during training (None: silent).

    Returns:
        ``(model, info)``: the trained model in eval mode and a JSON-ready dict of the model, dataset, recipe
        epochs and seed, train and test accuracy and seconds.

    Raises:
        TypeError: ``recipe`` is not a :class:`TrainRecipe`.
        UnknownNameError: an unknown model, dataset or normalisation name.
        TrainingDivergedError: the training loss became NaN or Inf.
    """
    from curvfast.engine import parse_device

    device = parse_device(device)
    torch.manual_seed(recipe.seed)
    data = dict(root=root, image_size=image_size, allow_outside_root=allow_outside_root)
    train_set, info = get_dataset(dataset, train_split, **data)
    test_set, _ = get_dataset(dataset, test_split, **data)
    model = normalized(build_model(model_name, info.num_classes, info.in_channels), normalize).to(device)

    def report(epoch: int, _loss: float) -> None:
        if log and epoch % max(1, recipe.epochs // 5) == 0:
            log(f"epoch {epoch}/{recipe.epochs}: test accuracy {evaluate(model, test_set):.4f}")

    start = time.perf_counter()
    fit(model, train_set, recipe, device=device, on_epoch_end=report)
    result = {
        "model": model_name, "dataset": dataset, "num_classes": info.num_classes, "in_channels": info.in_channels,
        "normalize": normalize, "image_size": image_size, "train_split": train_split, "test_split": test_split,
        "epochs": recipe.epochs, "seed": recipe.seed, "train_accuracy": evaluate(model, train_set),
        "test_accuracy": evaluate(model, test_set), "seconds": round(time.perf_counter() - start, 2),
    }
    if out is not None:
        record = model_record(model_name, info.num_classes, info.in_channels, normalize=normalize,
                              input_shape=tuple(train_set[0][0].shape))
        save_model(out, model, record, **result)
    return model, result
