"""Training the three streams (CoViAR) and reading out every exit's clip logits."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from curvfast.training import TrainRecipe, fit
from curvfast.pipelines.pkd.networks import STREAM_ORDER, segment_mean
from curvfast.pipelines.pkd.pkd import exit_logits_from_features

__all__ = ["train_streams", "collect_exit_logits"]


def train_streams(streams: nn.ModuleDict, loader: DataLoader, epochs: int, lr: float = 2e-3, weight_decay: float = 1e-4,
                  progress: bool = False) -> list[dict]:
    """Train each stream (backbone + head) by cross-entropy on its segment-averaged logits (TSN
    consensus), AdamW with a cosine schedule stepped per batch. The streams share batches but no
    parameters, so one optimiser over the sum of their losses trains each independently. Returns
    the per-epoch mean loss of each stream."""
    history, totals = [], {}

    def start(epoch: int) -> None:
        loader.dataset.set_epoch(epoch)
        totals.update(dict.fromkeys(STREAM_ORDER, 0.0), batches=0)

    def loss(model, batch, y):
        losses = {name: F.cross_entropy(model[name](batch[name]), y) for name in STREAM_ORDER}
        for name, value in losses.items():
            totals[name] += value.item()
        totals["batches"] += 1
        return sum(losses.values())

    def end(epoch: int, _mean: float) -> None:
        history.append({"epoch": epoch - 1, **{f"{name}_loss": totals[name] / totals["batches"] for name in STREAM_ORDER}})

    opt = torch.optim.AdamW(streams.parameters(), lr=lr, weight_decay=weight_decay)
    fit(streams, loader, TrainRecipe(epochs=epochs, optimizer=opt, schedule="cosine-step"), loss_fn=loss,
        on_epoch_start=start, on_epoch_end=end, device=_device(streams), progress=progress)
    return history


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def collect_exit_logits(streams: nn.ModuleDict, exits: nn.ModuleDict, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode clip logits of the 12 exits in ``STREAM_ORDER`` (IC1-3 then head, per stream):
    returns ``(logits (N, 12, C) float64, labels (N,))`` on the CPU (the batches run on the streams' device)."""
    streams.eval(), exits.eval()
    segments, device = loader.dataset.num_segments, _device(streams)
    out, labels = [], []
    for batch, y in loader:
        per_exit = []
        for name in STREAM_ORDER:
            feats = streams[name].features(batch[name].to(device, non_blocking=True).flatten(0, 1))
            per_exit += exit_logits_from_features(feats, exits[name], segments)
            per_exit.append(segment_mean(streams[name].head(feats[-1]), segments))
        out.append(torch.stack(per_exit, 1).double().cpu())
        labels.append(y)
    return torch.cat(out).numpy(), torch.cat(labels).numpy()
