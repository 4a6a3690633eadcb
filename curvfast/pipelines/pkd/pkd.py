"""Progressive knowledge distillation (PKD) of the internal classifiers, and the CE baseline.

The backbones and heads are trained first and frozen. Every IC then learns from a teacher's
softmax (temperature 1) by soft cross-entropy,

    L_PKD = - sum_c softmax(z_teacher)_c log softmax(z_IC)_c ,

where the teacher changes over training: the motion-vector stream's head first, then the residual
stream's head, then the IC's own stream head. Published schedule (300 epochs): MV for epochs 0-49,
residual for 50-99, own head from 100 on; ``PUBLISHED_BOUNDARIES`` keeps those fractions for any
number of epochs. The baseline ICs (``ce``) minimise the label cross-entropy on the same frozen
features, with the same optimiser, epochs and batches: both sets are trained in one loop, so they
see exactly the same segment draws.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from curvfast.training import TrainRecipe, fit, soft_cross_entropy
from curvfast.pipelines.pkd.networks import STREAM_ORDER, segment_mean
from curvfast.errors import ConfigError, UnknownNameError

__all__ = ["PUBLISHED_BOUNDARIES", "PUBLISHED_ORDER", "pkd_teacher", "exit_logits_from_features", "train_exits"]

PUBLISHED_BOUNDARIES = (50 / 300, 100 / 300)
PUBLISHED_ORDER = ("mv", "residual")


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


def train_exits(streams: nn.ModuleDict, ce_exits: nn.ModuleDict, pkd_exits: nn.ModuleDict, loader: DataLoader,
                epochs: int, lr: float = 2e-3, weight_decay: float = 1e-4,
                boundaries: tuple[float, float] = PUBLISHED_BOUNDARIES, progress: bool = False,
                order: tuple[str, str] = PUBLISHED_ORDER) -> list[dict]:
    """Train the CE-baseline ICs and the PKD ICs on the frozen ``streams`` (AdamW, cosine schedule
    stepped per batch). Each batch minimises the sum of the CE ICs' label cross-entropies and the
    PKD ICs' soft cross-entropies to their current teachers. Returns one record per epoch: the PKD
    teacher of each stream and the mean CE / PKD losses per IC."""
    streams.eval()
    for p in streams.parameters():
        p.requires_grad_(False)
    segments = loader.dataset.num_segments
    history, state = [], {}

    def start(epoch: int) -> None:
        loader.dataset.set_epoch(epoch)
        state.update(teachers={name: pkd_teacher(epoch, epochs, name, boundaries, order) for name in STREAM_ORDER},
                     totals=torch.zeros(2), batches=0)

    def loss(_model, batch, y):
        feats, heads = _frozen_pass(streams, batch, segments)
        ce_loss = pkd_loss = 0.0
        for name in STREAM_ORDER:
            target = F.softmax(heads[state["teachers"][name]], dim=1)
            for z in exit_logits_from_features(feats[name], ce_exits[name], segments):
                ce_loss = ce_loss + F.cross_entropy(z, y)
            for z in exit_logits_from_features(feats[name], pkd_exits[name], segments):
                pkd_loss = pkd_loss + soft_cross_entropy(z, target)
        state["totals"] += torch.tensor([ce_loss.item(), pkd_loss.item()])
        state["batches"] += 1
        return ce_loss + pkd_loss  # disjoint parameters: the two sets do not interact

    def end(epoch: int, _mean: float) -> None:
        totals, batches = state["totals"], state["batches"]
        history.append({"epoch": epoch - 1, "teachers": state["teachers"], "ce_loss": totals[0].item() / batches / 9,
                        "pkd_loss": totals[1].item() / batches / 9})

    opt = torch.optim.AdamW(list(ce_exits.parameters()) + list(pkd_exits.parameters()), lr=lr, weight_decay=weight_decay)
    fit(nn.ModuleDict({"ce": ce_exits, "pkd": pkd_exits}), loader,
        TrainRecipe(epochs=epochs, optimizer=opt, schedule="cosine-step"), loss_fn=loss, on_epoch_start=start,
        on_epoch_end=end, device=next(ce_exits.parameters()).device, progress=progress)
    return history
