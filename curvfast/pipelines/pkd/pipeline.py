"""The whole PKD + WISE experiment: data -> streams -> CE and PKD internal classifiers -> WISE ->
results, arrays and plots in a run folder."""
from __future__ import annotations

import copy
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from curvfast.io import save_checkpoint, write_json, write_npz
from curvfast.pipelines.pkd.video import (CompressedVideoDataset, SyntheticConfig, folder_clipset, hmdb51_clips, stratified_split,
                     synthetic_actions, ucf101_clips)
from curvfast.pipelines.pkd.video.synthetic import cache_root
from curvfast.pipelines.pkd.macs import exit_macs
from curvfast.pipelines.pkd.networks import STREAM_ORDER, build_exits, build_streams
from curvfast.pipelines.pkd.pkd import PUBLISHED_BOUNDARIES, train_exits
from curvfast.pipelines.pkd.plots import accuracy_vs_macs_plot, exit_accuracy_plot
from curvfast.pipelines.pkd.training import collect_exit_logits, train_streams
from curvfast.pipelines.pkd.wise import fit_wise, wise_sweep

__all__ = ["PKDConfig", "load_clips", "run_pkd", "EXIT_NAMES", "TAU_GRID"]

EXIT_NAMES = [f"{s}/{e}" for s in STREAM_ORDER for e in ("ic1", "ic2", "ic3", "head")]
TAU_GRID = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1 - 1e-4, 1 - 1e-5, 1 - 1e-6, 1 - 1e-8, 1 - 1e-10, 1.0)


@dataclass
class PKDConfig:
    """Settings of one run. ``dataset``: "synthetic" (bundled, generated offline), "ucf101" or
    "hmdb51" (a folder the user already has, ``root``; re-encoded at ``size`` x ``size``, first
    ``frames`` frames). ``wise_holdout``: 0 fits WISE on the training clips' logits (published);
    a fraction in (0, 1) keeps that stratified part of the training clips out of stream and IC
    training and fits WISE on its logits instead (weights not fooled by overfit training logits)."""

    dataset: str = "synthetic"
    root: str | None = None
    fold: int = 1
    clips_per_class: int = 32
    size: int = 32
    frames: int = 24
    segments: int = 3
    stream_epochs: int = 15
    exit_epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-3
    alpha: float = 0.1           # WISE L1 weight of the prefixes longer than alpha_free_exits (published 0.1)
    alpha_free_exits: int = 5    # prefixes of at most this many exits get no L1 term (published 5)
    exit_relu: bool = False      # a ReLU inside the ICs (the published ICs have none)
    tau: float = 0.999999
    wise_holdout: float = 0.0
    boundaries: tuple[float, float] = PUBLISHED_BOUNDARIES
    seed: int = 0

    def validate(self) -> None:
        if self.dataset not in ("synthetic", "ucf101", "hmdb51"):
            raise ValueError(f"dataset must be 'synthetic', 'ucf101' or 'hmdb51' (got {self.dataset!r})")
        if self.dataset != "synthetic" and self.root is None:
            raise ValueError(f"dataset {self.dataset!r} needs --root <folder holding it>; curvfast never downloads videos")
        for name in ("segments", "stream_epochs", "exit_epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (got {getattr(self, name)})")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must lie in (0, 1] (got {self.tau})")
        if not 0 <= self.wise_holdout < 1:
            raise ValueError(f"wise_holdout must lie in [0, 1) (got {self.wise_holdout})")
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0 (got {self.alpha})")
        if self.alpha_free_exits < 0:
            raise ValueError(f"alpha_free_exits must be >= 0 (got {self.alpha_free_exits})")


def load_clips(config: PKDConfig, progress: bool = False):
    """``(train, test)`` ClipSets for the configured dataset."""
    if config.dataset == "synthetic":
        return synthetic_actions(SyntheticConfig(config.clips_per_class, config.size, config.frames, seed=config.seed),
                                 progress=progress)
    lister = ucf101_clips if config.dataset == "ucf101" else hmdb51_clips
    cache = os.path.join(cache_root(), config.dataset, f"{config.size}px-{config.frames}f")
    return tuple(folder_clipset(*lister(config.root, split, config.fold), cache, config.size, config.frames)
                 for split in ("train", "test"))


def _loader(clips, config: PKDConfig, train: bool) -> DataLoader:
    data = CompressedVideoDataset(clips, config.segments, train=train, seed=config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    return DataLoader(data, batch_size=config.batch_size, shuffle=train, generator=gen if train else None)


def _accuracies(logits: np.ndarray, labels: np.ndarray) -> list[float]:
    return [float(v) for v in (logits.argmax(-1) == labels[:, None]).mean(0)]


def _ensemble_accuracy(logits: np.ndarray, labels: np.ndarray, exits: list[int]) -> float:
    """Accuracy of the plain average of the chosen exits' softmax outputs."""
    z = logits[:, exits] - logits[:, exits].max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    return float((probs.mean(1).argmax(-1) == labels).mean())


def _wise(train_logits, train_labels, test_logits, test_labels, macs, config: PKDConfig) -> dict:
    weights = fit_wise(train_logits, train_labels, config.alpha, config.alpha_free_exits)
    sweep = wise_sweep(test_logits, test_labels, weights, macs["cumulative"], TAU_GRID)
    chosen = wise_sweep(test_logits, test_labels, weights, macs["cumulative"], [config.tau])[0]
    return {**chosen, "alpha": config.alpha, "weights": [w.tolist() for w in weights], "sweep": sweep}


def _hold_out(clips, config: PKDConfig):
    """``(clips to train on, clips to fit WISE on)``: the same set unless ``wise_holdout`` > 0."""
    if config.wise_holdout == 0:
        return clips, clips
    held = stratified_split(clips.labels, config.wise_holdout, config.seed + 1)
    train, wise = clips.subset(~held), clips.subset(held)
    missing = sorted(set(range(len(clips.classes))) - set(train.labels.tolist()))
    if missing:
        raise ValueError(f"wise_holdout={config.wise_holdout} leaves classes {missing} without training clips; "
                         "lower --wise-holdout or use more clips per class")
    return train, wise


def run_pkd(config: PKDConfig, out: str, progress: bool = False, log=print) -> dict:
    """Run the experiment; write ``results.json``, ``logits.npz``, ``models.pt`` and two PNGs to ``out``."""
    config.validate()
    os.makedirs(out, exist_ok=True)
    timing, start = {}, time.perf_counter()
    train_clips, test_clips = load_clips(config, progress)
    train_clips, wise_clips = _hold_out(train_clips, config)
    timing["data_s"] = time.perf_counter() - start
    num_classes = len(train_clips.classes)
    log(f"data: {len(train_clips)} train / {len(test_clips)} test clips, {num_classes} classes; WISE fitted on "
        + (f"{len(wise_clips)} held-out clips" if config.wise_holdout > 0 else "the training clips"))

    torch.manual_seed(config.seed)
    streams = build_streams(num_classes)
    ce_exits = build_exits(streams, num_classes, relu=config.exit_relu)
    pkd_exits = copy.deepcopy(ce_exits)  # both IC sets start from the same weights
    train_loader = _loader(train_clips, config, train=True)
    t0 = time.perf_counter()
    stream_history = train_streams(streams, train_loader, config.stream_epochs, config.lr, progress=progress)
    timing["streams_s"] = time.perf_counter() - t0
    log(f"streams: {config.stream_epochs} epochs in {timing['streams_s']:.0f} s, final losses "
        + ", ".join(f"{k} {v:.3f}" for k, v in stream_history[-1].items() if k != "epoch"))
    t0 = time.perf_counter()
    exit_history = train_exits(streams, ce_exits, pkd_exits, train_loader, config.exit_epochs, config.lr,
                               boundaries=config.boundaries, progress=progress)
    timing["exits_s"] = time.perf_counter() - t0
    log(f"ICs: {config.exit_epochs} epochs in {timing['exits_s']:.0f} s (CE and PKD sets together)")

    fit_loader, test_loader = _loader(wise_clips, config, train=False), _loader(test_clips, config, train=False)
    logits = {}
    for kind, exits in (("ce", ce_exits), ("pkd", pkd_exits)):
        logits[f"fit_{kind}"], fit_labels = collect_exit_logits(streams, exits, fit_loader)
        logits[f"test_{kind}"], test_labels = collect_exit_logits(streams, exits, test_loader)
    macs = exit_macs(streams, ce_exits, config.size, config.segments)
    ic_accuracy = {kind: _accuracies(logits[f"test_{kind}"], test_labels) for kind in ("ce", "pkd")}
    t0 = time.perf_counter()
    wise = {kind: _wise(logits[f"fit_{kind}"], fit_labels, logits[f"test_{kind}"], test_labels, macs, config)
            for kind in ("ce", "pkd")}
    timing["wise_s"] = time.perf_counter() - t0
    heads = [EXIT_NAMES.index(f"{s}/head") for s in STREAM_ORDER]
    ics = [i for i in range(len(EXIT_NAMES)) if i not in heads]
    plain = _ensemble_accuracy(logits["test_pkd"], test_labels, list(range(len(EXIT_NAMES))))
    gains = {"ic_mean": float(np.mean(np.subtract(ic_accuracy["pkd"], ic_accuracy["ce"])[ics])),
             "wise_pkd_minus_ce": wise["pkd"]["accuracy"] - wise["ce"]["accuracy"],
             "wise_pkd_minus_plain_ensemble": wise["pkd"]["accuracy"] - plain}
    timing["total_s"] = time.perf_counter() - start

    results = {
        "settings": {**asdict(config), "boundaries": list(config.boundaries)},
        "classes": train_clips.classes, "num_train": len(train_clips), "num_test": len(test_clips),
        "num_wise_fit": len(wise_clips),
        "exits": EXIT_NAMES, "ic_accuracy": ic_accuracy,
        "stream_accuracy": {s: ic_accuracy["ce"][EXIT_NAMES.index(f"{s}/head")] for s in STREAM_ORDER},
        "macs": {k: v.tolist() for k, v in macs.items()},
        "wise": {**wise["pkd"], "ce": wise["ce"]},
        "plain_ensemble_accuracy": plain, "plain_ensemble_macs": int(macs["cumulative"][-1]),
        "heads_ensemble_accuracy": _ensemble_accuracy(logits["test_pkd"], test_labels, heads),
        "gains": gains, "history": {"streams": stream_history, "exits": exit_history},
        "timing": {k: round(v, 2) for k, v in timing.items()},
    }
    write_json(os.path.join(out, "results.json"), results)
    write_npz(os.path.join(out, "logits.npz"), fit_labels=fit_labels, test_labels=test_labels, **logits)
    save_checkpoint(os.path.join(out, "models.pt"), nn.ModuleDict({"streams": streams, "ce": ce_exits, "pkd": pkd_exits}),
                    num_classes=num_classes, dataset=config.dataset)
    accuracy_vs_macs_plot(os.path.join(out, "accuracy_vs_macs.png"), EXIT_NAMES, macs["standalone"], ic_accuracy,
                          {k: wise[k]["sweep"] for k in wise}, wise["pkd"], (plain, float(macs["cumulative"][-1])))
    exit_accuracy_plot(os.path.join(out, "ic_accuracy.png"), EXIT_NAMES, ic_accuracy)
    return results
