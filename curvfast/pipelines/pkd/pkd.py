"""Progressive knowledge distillation (PKD) of the internal classifiers, and the CE baseline.

The backbones and heads are trained first and frozen. Every IC then learns from a teacher's
softmax (temperature 1) by soft cross-entropy,

    L_PKD = - sum_c softmax(z_teacher)_c log softmax(z_IC)_c ,

where the teacher changes over training: the motion-vector stream's head first, then the residual
stream's head, then the IC's own stream head. Published schedule (300 epochs): MV for epochs 0-49,
residual for 50-99, own head from 100 on; ``PUBLISHED_BOUNDARIES`` keeps those fractions for any
number of epochs. The baseline ICs (``ce``) minimise the label cross-entropy on the same frozen
features: both sets are trained in one loop over the same batches, so epoch e of either set sees
exactly the same segment draws. The two sets may get different budgets (``ce_epochs``; the published
code trains the CE baseline for 150 epochs against PKD's 300, ``run_training_CE.sh`` /
``run_training_KD.sh`` of Efstathia-Soufleri/PKD); a set whose budget is spent stops (no forward, no step).

Two optimisers (``EXIT_OPTIMIZERS``): ``"adamw-cosine"`` (curvfast) is AdamW at one learning rate,
annealed per batch by a cosine over each set's own epochs; ``"published"`` is the published code's
Adam (eps 1e-3, L2 weight decay 1e-4) at each stream's learning rate (``PUBLISHED_EXIT_LR``), decayed
by 0.1 at the published epochs (``PUBLISHED_LR_STEPS``, as fractions of each set's epochs), with the
PKD ICs' linear bias left out of the optimiser as the published PKD script leaves it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from curvfast.training import TrainRecipe, fit, soft_cross_entropy
from curvfast.pipelines.pkd.networks import STREAM_ORDER, segment_mean
from curvfast.errors import ConfigError, UnknownNameError

__all__ = ["PUBLISHED_BOUNDARIES", "PUBLISHED_ORDER", "EXIT_OPTIMIZERS", "PUBLISHED_EXIT_LR", "PUBLISHED_LR_STEPS",
           "pkd_teacher", "exit_learning_rate", "exit_logits_from_features", "train_exits"]

PUBLISHED_BOUNDARIES = (50 / 300, 100 / 300)
PUBLISHED_ORDER = ("mv", "residual")
EXIT_OPTIMIZERS = ("adamw-cosine", "published")
# run_training_CE.sh / run_training_KD.sh: --lr 0.0003 (iframe, ResNet-50), 0.01 (mv), 0.005 (residual)
PUBLISHED_EXIT_LR = {"iframe": 3e-4, "mv": 1e-2, "residual": 5e-3}
# the same scripts: --lr-steps 50 100 of --epochs 150 (CE), 150 200 250 of --epochs 300 (KD); --lr-decay 0.1
PUBLISHED_LR_STEPS = {"ce": (50 / 150, 100 / 150), "pkd": (150 / 300, 200 / 300, 250 / 300)}
PUBLISHED_EXIT_WEIGHT_DECAY, PUBLISHED_ADAM_EPS = 1e-4, 1e-3


def pkd_teacher(epoch: int, epochs: int, stream: str, boundaries: tuple[float, float] = PUBLISHED_BOUNDARIES,
                order: tuple[str, str] = PUBLISHED_ORDER) -> str:
    """The stream whose head teaches ``stream``'s ICs at ``epoch`` (0-based) of ``epochs``: ``order[0]`` (published:
    "mv") before ``boundaries[0] * epochs``, ``order[1]`` ("residual") before ``boundaries[1] * epochs``, then
    ``stream``."""
    if stream not in STREAM_ORDER:
        raise UnknownNameError(f"stream must be one of {STREAM_ORDER} (got {stream!r})")
    if len(order) != 2 or any(o not in STREAM_ORDER for o in order):
        raise UnknownNameError(f"order must name two of {STREAM_ORDER} (got {order!r})")
    if not 0 <= boundaries[0] <= boundaries[1] <= 1:
        raise ConfigError(f"boundaries must satisfy 0 <= b0 <= b1 <= 1 (got {boundaries})")
    if not 0 <= epoch < epochs:
        raise ConfigError(f"epoch must lie in [0, {epochs}) (got {epoch})")
    if epoch < round(boundaries[0] * epochs):
        return order[0]
    if epoch < round(boundaries[1] * epochs):
        return order[1]
    return stream


def exit_learning_rate(optimizer: str, kind: str, stream: str, step: int, steps_per_epoch: int, epochs: int,
                       lr: float) -> float:
    """Learning rate of ``kind``'s ("ce" or "pkd") ICs of ``stream`` at batch ``step`` (0-based, counted from
    the start of IC training) of a set trained ``epochs`` epochs of ``steps_per_epoch`` batches.

    ``"adamw-cosine"``: ``lr * (1 + cos(pi * step / (epochs * steps_per_epoch))) / 2`` (the cosine annealing
    to 0 of :class:`torch.optim.lr_scheduler.CosineAnnealingLR` stepped per batch). ``"published"``:
    ``PUBLISHED_EXIT_LR[stream] * 0.1 ** m``, m the number of ``PUBLISHED_LR_STEPS[kind]`` epochs (fractions
    of ``epochs``, rounded) reached by the step's epoch (``lr`` unused).

    Raises:
        UnknownNameError: ``optimizer``, ``kind`` or ``stream`` is not a known name.
    """
    if optimizer not in EXIT_OPTIMIZERS:
        raise UnknownNameError(f"optimizer must be one of {', '.join(EXIT_OPTIMIZERS)} (got {optimizer!r})")
    if kind not in PUBLISHED_LR_STEPS or stream not in STREAM_ORDER:
        raise UnknownNameError(f"kind must be ce or pkd and stream one of {STREAM_ORDER} (got {kind!r}, {stream!r})")
    if optimizer == "adamw-cosine":
        return lr * (1 + math.cos(math.pi * step / (epochs * steps_per_epoch))) / 2
    epoch = step // steps_per_epoch
    return PUBLISHED_EXIT_LR[stream] * 0.1 ** sum(epoch >= round(f * epochs) for f in PUBLISHED_LR_STEPS[kind])


def exit_logits_from_features(features: list[torch.Tensor], ics: nn.ModuleList, segments: int) -> list[torch.Tensor]:
    """Clip logits of the three ICs from a stream's stage features (segment-averaged)."""
    return [segment_mean(ic(h), segments) for ic, h in zip(ics, features[:3])]


def _frozen_pass(streams: nn.ModuleDict, batch: dict, segments: int):
    """Stage features and segment-averaged head logits of every stream, without gradients."""
    feats, heads = {}, {}
    with torch.no_grad():
        for name in STREAM_ORDER:
            f = streams[name].features(batch[name].flatten(0, 1))
            feats[name], heads[name] = f, segment_mean(streams[name].head(f[-1]), segments)
    return feats, heads


def _param_groups(sets: dict[str, nn.ModuleDict], optimizer: str) -> list[dict]:
    """One parameter group per (set, stream), tagged with both; the published PKD script's optimiser leaves
    out the IC's linear bias (``IC*_classifier.bias``)."""
    groups = []
    for kind, exits in sets.items():
        for name in STREAM_ORDER:
            params = [p for key, p in exits[name].named_parameters()
                      if not (optimizer == "published" and kind == "pkd" and key.endswith("fc.bias"))]
            groups.append({"params": params, "kind": kind, "stream": name})
    return groups


def train_exits(streams: nn.ModuleDict, ce_exits: nn.ModuleDict, pkd_exits: nn.ModuleDict, loader: DataLoader,
                epochs: int, lr: float = 2e-3, weight_decay: float = 1e-4,
                boundaries: tuple[float, float] = PUBLISHED_BOUNDARIES, progress: bool = False,
                order: tuple[str, str] = PUBLISHED_ORDER, ce_epochs: int | None = None,
                optimizer: str = "adamw-cosine") -> list[dict]:
    """Train the CE-baseline ICs (``ce_epochs``, default ``epochs``) and the PKD ICs (``epochs``) on the frozen
    ``streams``, with ``optimizer`` (see :func:`exit_learning_rate`; ``lr`` and ``weight_decay`` serve
    ``"adamw-cosine"``). Each batch minimises the sum of the active CE ICs' label cross-entropies and the active
    PKD ICs' soft cross-entropies to their current teachers. Returns one record per epoch: the PKD teacher of
    each stream (None once PKD's budget is spent) and the mean CE / PKD losses per IC (None for a finished set).

    Raises:
        ConfigError: ``epochs`` or ``ce_epochs`` < 1.
        UnknownNameError: ``optimizer`` is not one of ``EXIT_OPTIMIZERS``.
    """
    ce_epochs = epochs if ce_epochs is None else ce_epochs
    if epochs < 1 or ce_epochs < 1:
        raise ConfigError(f"epochs and ce_epochs must be >= 1 (got {epochs}, {ce_epochs})")
    if optimizer not in EXIT_OPTIMIZERS:
        raise UnknownNameError(f"optimizer must be one of {', '.join(EXIT_OPTIMIZERS)} (got {optimizer!r})")
    streams.eval()
    for p in streams.parameters():
        p.requires_grad_(False)
    segments, steps_per_epoch = loader.dataset.num_segments, len(loader)
    budget = {"ce": ce_epochs, "pkd": epochs}
    history, state = [], {"step": 0}

    def start(epoch: int) -> None:
        loader.dataset.set_epoch(epoch)
        active = {kind: epoch < budget[kind] for kind in budget}
        teachers = ({name: pkd_teacher(epoch, epochs, name, boundaries, order) for name in STREAM_ORDER}
                    if active["pkd"] else None)
        state.update(epoch=epoch, active=active, teachers=teachers, totals=torch.zeros(2), batches=0)

    def loss(_model, batch, y):
        for group in opt.param_groups:  # this batch's learning rate, before fit steps the optimiser
            group["lr"] = exit_learning_rate(optimizer, group["kind"], group["stream"], state["step"], steps_per_epoch,
                                             budget[group["kind"]], lr) if state["active"][group["kind"]] else 0.0
        state["step"] += 1
        feats, heads = _frozen_pass(streams, batch, segments)
        ce_loss = pkd_loss = torch.zeros((), device=y.device)
        for name in STREAM_ORDER:
            if state["active"]["ce"]:
                for z in exit_logits_from_features(feats[name], ce_exits[name], segments):
                    ce_loss = ce_loss + F.cross_entropy(z, y)
            if state["active"]["pkd"]:
                target = F.softmax(heads[state["teachers"][name]], dim=1)
                for z in exit_logits_from_features(feats[name], pkd_exits[name], segments):
                    pkd_loss = pkd_loss + soft_cross_entropy(z, target)
        state["totals"] += torch.tensor([ce_loss.item(), pkd_loss.item()])
        state["batches"] += 1
        return ce_loss + pkd_loss  # disjoint parameters: the two sets do not interact

    def end(epoch: int, _mean: float) -> None:
        means = [total / state["batches"] / 9 for total in state["totals"].tolist()]
        history.append({"epoch": epoch - 1, "teachers": state["teachers"],
                        **{f"{kind}_loss": m if state["active"][kind] else None for kind, m in zip(budget, means)}})

    groups = _param_groups({"ce": ce_exits, "pkd": pkd_exits}, optimizer)
    opt = (torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay) if optimizer == "adamw-cosine" else
           torch.optim.Adam(groups, lr=PUBLISHED_EXIT_LR["mv"], weight_decay=PUBLISHED_EXIT_WEIGHT_DECAY,
                            eps=PUBLISHED_ADAM_EPS))
    fit(nn.ModuleDict({"ce": ce_exits, "pkd": pkd_exits}), loader,
        TrainRecipe(epochs=max(budget.values()), optimizer=opt, schedule="constant"), loss_fn=loss,
        on_epoch_start=start, on_epoch_end=end, device=next(ce_exits.parameters()).device, progress=progress)
    return history
