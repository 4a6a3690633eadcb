"""Train many copies of one architecture on different subsets of one dataset, together.

Membership inference (shadow models) and Feldman-style memorization need tens to hundreds of
models, each trained on its own random subset ``S_m`` of the data. Training them one after the
other wastes the small-model regime: each step is too small to keep the cores busy. Here the M
models' parameters and buffers are stacked (``torch.func.stack_module_state``) and one step
runs ``vmap(grad(loss))`` over the stack, so M models advance in one call.

Each model follows the same recipe as :func:`curvfast.training.train_model`: SGD with momentum
0.9, weight decay, a cosine schedule (or ``schedule="step"``: ×0.1 at 60% and 80% of the epochs, the
published Curvature Clues recipe, ``train/train_cifar10.py``), mini-batches drawn without replacement from its own
subset (a fresh permutation of ``S_m`` each epoch, cycled when ``|S_m|`` is not a multiple of
the batch size). The update of model m depends only on model m's data: the stacked SGD is
element-wise, and BatchNorm statistics are per model (its buffers are stacked too), so the
result is the same as training the models one by one with the same batches.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from curvfast.pipelines.common.data import as_float
from curvfast.errors import ConfigError, DataError

__all__ = ["SCHEDULES", "step_milestones", "train_subset_models", "subset_batches"]

SCHEDULES = ("cosine", "step")


def step_milestones(epochs: int) -> list[int]:
    """The epochs at which the ``"step"`` schedule multiplies the learning rate by 0.1: int(0.6 E), int(0.8 E)
    (``MultiStepLR`` in Curvature Clues' ``train/train_cifar10.py`` and Garg et al.'s ``train_imagenet.py``)."""
    return [int(0.6 * epochs), int(0.8 * epochs)]


def subset_batches(keep: np.ndarray, batch_size: int, epochs: int, seed: int, model_ids=None) -> list[np.ndarray]:
    """Per-step index arrays of shape (M, batch_size): model m's batches from its own subset.

    Steps per epoch are ``ceil(mean_m |S_m| / batch_size)``; each model walks through fresh
    permutations of its subset (seeded by ``(seed, model_ids[m])``, default ``m``) and wraps into
    the next permutation, so a model's batches do not depend on which models train beside it.
    """
    keep = np.asarray(keep, dtype=bool)
    if keep.ndim != 2:
        raise DataError(f"keep must be a (models, samples) boolean matrix (got shape {keep.shape})")
    sizes = keep.sum(1)
    if (sizes == 0).any():
        raise DataError(f"models {np.flatnonzero(sizes == 0).tolist()} have empty training subsets in `keep`")
    steps = epochs * math.ceil(sizes.mean() / batch_size)
    out = np.empty((steps, keep.shape[0], batch_size), dtype=np.int64)
    model_ids = range(keep.shape[0]) if model_ids is None else model_ids
    for m, (row, model_id) in enumerate(zip(keep, model_ids)):
        members = np.flatnonzero(row)
        rng = np.random.default_rng([seed, model_id])
        need = steps * batch_size
        stream = np.concatenate([rng.permutation(members) for _ in range(math.ceil(need / members.size))])
        out[:, m, :] = stream[:need].reshape(steps, batch_size)
    return list(out)


def train_subset_models(
    make_model: Callable[[], nn.Module],
    images: torch.Tensor,
    targets: torch.Tensor,
    keep: np.ndarray,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    seed: int = 0,
    models_per_pass: int = 32,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
    schedule: str = "cosine",
    stack: bool | None = None,
    on_group: Callable[[list[int], list[nn.Module]], None] | None = None,
    progress: bool | None = False,
) -> list[nn.Module]:
    """Train ``keep.shape[0]`` models, model m on ``images[keep[m]]``; return them in eval mode on CPU.

    ``make_model()`` builds one fresh model; model m is initialised under ``torch.manual_seed(seed + m)``,
    so a model's weights do not depend on how many others train beside it. ``models_per_pass``
    bounds memory: groups of that many models are trained together. ``augment(x, generator)``
    (optional) transforms each step's stacked batch (M, B, ...). ``images`` (float, or uint8 from
    ``common.data.materialise``: each gathered batch is turned into float32 q / 255) are moved to
    ``device`` whole (N·C·H·W bytes for uint8, 4x that for float32): each step gathers one batch per
    model from them.

    ``on_group(ids, models)`` (optional) receives each group as soon as it is trained (on ``device``,
    eval mode), and the group is then dropped: the call returns ``[]`` and never holds more than
    ``models_per_pass`` models, which is what hundreds of large models need.

    ``stack=True`` runs the group as one ``vmap`` over stacked weights, ``False`` loops over the
    models inside each step; ``None`` stacks on CUDA only. On this project's 2-core CPU, 8 digits
    SmallCNNs for 3 epochs took 2.7 s stacked against 1.6 s looped; on a GPU, small models leave
    the device idle and stacking is what fills it.
    """
    from tqdm.auto import tqdm

    keep = np.asarray(keep, dtype=bool)
    if keep.shape[1] != len(images) or len(images) != len(targets):
        raise DataError(f"keep has {keep.shape[1]} columns, images {len(images)} rows, targets {len(targets)}: they must agree")
    if models_per_pass < 1:
        raise ConfigError(f"models_per_pass must be >= 1 (got {models_per_pass})")
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)} (got {schedule!r})")
    device = torch.device(device)
    images, targets = images.to(device), targets.to(device)
    train_group = _train_stacked if (device.type == "cuda" if stack is None else stack) else _train_looped
    models: list[nn.Module] = []
    bar = tqdm(total=keep.shape[0], desc="training models", unit="model", disable=not progress if progress is not None else None)
    for start in range(0, keep.shape[0], models_per_pass):
        ids = list(range(start, min(start + models_per_pass, keep.shape[0])))
        batches = _Ticking(subset_batches(keep[ids], batch_size, epochs, seed, model_ids=ids), bar, len(ids))
        group = train_group(make_model, images, targets, batches, ids, epochs=epochs, lr=lr,
                            weight_decay=weight_decay, seed=seed, augment=augment, schedule=schedule)
        if on_group is None:
            models += [m.eval().cpu() for m in group]
        else:
            on_group(ids, [m.eval() for m in group])
        bar.n = ids[-1] + 1  # whole models after each group (the steps' fractions may round)
        bar.refresh()
    bar.close()
    return models


class _Ticking:
    """A group's step batches that move ``bar`` by ``models / steps`` per step: the bar counts models and moves
    every step, not once per group (a group of 64 models is minutes of training)."""

    def __init__(self, batches, bar, models: int):
        self.batches, self.bar, self.share = batches, bar, models / max(len(batches), 1)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            yield batch
            self.bar.update(self.share)


def _fresh_models(make_model, ids, seed, device):
    models = []
    for m in ids:
        torch.manual_seed(seed + m)
        models.append(make_model().to(device).train())
    return models


def _recipe(tensors, lr, weight_decay, epochs, schedule):
    opt = torch.optim.SGD(tensors, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if schedule == "step":
        return opt, torch.optim.lr_scheduler.MultiStepLR(opt, step_milestones(epochs), gamma=0.1)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)


def _run_steps(batches, epochs, images, targets, augment, gen, end_epoch, step_fn):
    """Shared loop: gather each step's (M, B) batch, augment, take one optimiser step, schedule per epoch."""
    steps_per_epoch = len(batches) // epochs
    for step, idx in enumerate(batches):
        idx = torch.from_numpy(idx).to(images.device)
        x, y = as_float(images[idx]), targets[idx]
        if augment is not None:
            x = augment(x, gen)
        step_fn(x, y)
        if (step + 1) % steps_per_epoch == 0:
            end_epoch()


def _train_stacked(make_model, images, targets, batches, ids, *, epochs, lr, weight_decay, seed, augment, schedule):
    """All models of the group in one ``vmap(grad(loss))`` call per step (pays on a GPU)."""
    members = _fresh_models(make_model, ids, seed, images.device)
    params, buffers = stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta")

    def loss_fn(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

    step_grad = vmap(grad(loss_fn), randomness="different")
    opt, sched = _recipe(list(params.values()), lr, weight_decay, epochs, schedule)

    def step_fn(x, y):
        grads = step_grad(params, buffers, x, y)
        for name, p in params.items():
            p.grad = grads[name]
        opt.step()

    _run_steps(batches, epochs, images, targets, augment, torch.Generator().manual_seed(seed), sched.step, step_fn)
    for i, model in enumerate(members):
        model.load_state_dict({k: v[i].detach().clone() for k, v in {**params, **buffers}.items()})
    return members


def _train_looped(make_model, images, targets, batches, ids, *, epochs, lr, weight_decay, seed, augment, schedule):
    """The same steps, one model at a time within each step (faster on a CPU, as measured)."""
    members = _fresh_models(make_model, ids, seed, images.device)
    recipes = [_recipe(list(m.parameters()), lr, weight_decay, epochs, schedule) for m in members]

    def end_epoch():
        for _, sched in recipes:
            sched.step()

    def step_fn(x, y):
        for i, (model, (opt, _)) in enumerate(zip(members, recipes)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[i]), y[i]).backward()
            opt.step()

    _run_steps(batches, epochs, images, targets, augment, torch.Generator().manual_seed(seed), end_epoch, step_fn)
    return members
