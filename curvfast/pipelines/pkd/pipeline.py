"""The whole PKD + WISE experiment (``curvfast pkd``): data -> streams -> their flatness (loss Hessians, over
seeds) -> CE and PKD internal classifiers -> WISE -> results, arrays and plots in a run folder.

Progressive knowledge distillation of early exits and WISE (weighted ensembles of the exits with
an L1 penalty, stopped at the first confident prefix) on the three CoViAR streams of compressed
video (Wu et al., "Compressed Video Action Recognition", CVPR 2018)."""
from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from curvfast import parse_device
from curvfast.io import save_checkpoint, write_npz
from curvfast.pipelines.common.contract import config_dict, option, run_folder, write_results
from curvfast.pipelines.pkd.flatness import stream_batches, stream_flatness, summarise_flatness
from curvfast.pipelines.pkd.macs import exit_macs
from curvfast.pipelines.pkd.networks import BACKBONES, STREAM_ORDER, build_exits, build_streams
from curvfast.pipelines.pkd.pkd import EXIT_OPTIMIZERS, PUBLISHED_BOUNDARIES, PUBLISHED_ORDER, train_exits
from curvfast.pipelines.pkd.plots import accuracy_vs_macs_plot, exit_accuracy_plot, flatness_plot
from curvfast.pipelines.pkd.training import collect_exit_logits, train_streams
from curvfast.pipelines.pkd.video import (CompressedVideoDataset, SyntheticConfig, folder_clipset, hmdb51_clips,
                                          stratified_split, synthetic_actions, ucf101_clips, videofolder_clips)
from curvfast.pipelines.pkd.video.synthetic import cache_root
from curvfast.pipelines.pkd.wise import FIRST_EXITS, WISE_SOLVERS, fit_wise, wise_sweep
from curvfast.errors import ConfigError, UnknownNameError

__all__ = ["Config", "PRESETS", "PUBLISHED", "run", "summary", "load_clips", "EXIT_NAMES", "TAU_GRID", "DATASETS"]

EXIT_NAMES = [f"{s}/{e}" for s in STREAM_ORDER for e in ("ic1", "ic2", "ic3", "head")]
TAU_GRID = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1 - 1e-4, 1 - 1e-5, 1 - 1e-6, 1 - 1e-8, 1 - 1e-10, 1.0)
DATASETS = ("synthetic", "videofolder", "ucf101", "hmdb51")
ORDERS = ("published", "flatness")
SYNTHETIC_FRAMES = 24
LISTERS = {"videofolder": videofolder_clips, "ucf101": ucf101_clips, "hmdb51": hmdb51_clips}
FALLBACKS = ("last-prefix", "heads")
# what --published sets (Efstathia-Soufleri/PKD: run_training_{CE,KD}.sh, train_freeze_backbone_IC_*.py,
# wise_ucf101_kinetics_pretrained.py); the CE budget becomes half the PKD one unless --ce-epochs is given
PUBLISHED = {"exit_optimizer": "published", "wise_solver": "sgd", "wise_first_exit": "raw", "wise_published_test": True,
             "wise_fallback": "heads"}

PRESETS = {
    "smoke": {"clips_per_class": 2, "size": 16, "frames": 13, "stream_epochs": 1, "exit_epochs": 1, "batch_size": 8},
    # The published setting: UCF-101 split 1, whole clips at 224 x 224, 3 TSN segments, ResNet-50 I-frame and
    # ResNet-18 MV / residual streams, trained 510 epochs at batch 80 as in CoViAR's UCF-101 commands, and PKD's
    # 300 IC epochs with the published protocol (--published: CE ICs 150 epochs, the published IC optimiser and
    # WISE). The streams start from random weights here (CoViAR and PKD: pretrained).
    "paper": {"dataset": "ucf101", "fold": 1, "size": 224, "frames": None, "segments": 3, "backbone": "coviar",
              "stream_epochs": 510, "exit_epochs": 300, "batch_size": 80, "device": "cuda", "workers": 8,
              "published": True},
}


@dataclass
class Config:
    """Settings of one run. ``dataset``: "synthetic" (bundled, generated offline), "videofolder" (a
    UCF-101-layout folder ``root``: ``<class>/<clip>`` videos with split lists, or ``train/`` and
    ``test/`` folders), "ucf101" or "hmdb51" (the official layouts and split lists); a folder is
    re-encoded at ``size`` x ``size`` (whole clips unless ``frames``) and cached on disk once.
    ``wise_holdout``: 0 fits WISE on the training clips' logits (published);
    a fraction in (0, 1) keeps that stratified part of the training clips out of stream and IC
    training and fits WISE on its logits instead (weights not fooled by overfit training logits)."""

    dataset: str = option("synthetic", choices=DATASETS)
    root: str | None = option(None)
    fold: int = option(1, "official split 1-3 (UCF-101 / HMDB-51; videofolder: its <split>list0N.txt)")
    clips_per_class: int = option(32, "synthetic dataset size")
    size: int = option(32, "frame side in pixels (a multiple of 16)")
    frames: int | None = option(None, f"first frames of each clip (GOP 12; default: whole clips; synthetic: {SYNTHETIC_FRAMES})")
    segments: int = option(3, "TSN segments per clip")
    backbone: str = option("small", "stream networks: small (CPU-sized ResNets), resnet18 (all three), coviar "
                                    "(ResNet-50 I-frames, ResNet-18 MV and residual)", choices=tuple(BACKBONES))
    stream_epochs: int = option(15, "training epochs of the three streams")
    exit_epochs: int = option(12, "training epochs of the PKD internal classifiers (and of the CE ones unless "
                                  "--ce-epochs)")
    ce_epochs: int | None = option(None, "training epochs of the CE-baseline internal classifiers (default: "
                                         "--exit-epochs; with --published half of it, the published 150 against 300)")
    exit_optimizer: str = option("adamw-cosine", "IC optimiser: adamw-cosine (--lr, cosine per batch) or published "
                                                 "(Adam eps 1e-3, per-stream rates, step decays)",
                                 choices=EXIT_OPTIMIZERS)
    batch_size: int = option(32)
    lr: float = option(2e-3, "AdamW learning rate of streams and internal classifiers")
    wise_alpha: float = option(0.1, "WISE L1 weight of the prefixes longer than --wise-free-exits (published 0.1)")
    wise_free_exits: int = option(5, "WISE prefixes of at most this many exits are fitted without L1 (published 5)")
    wise_solver: str = option("fista", "WISE weights: fista (the exact minimiser) or sgd (published: 500 steps, lr 0.1, "
                                       "from w = 1)", choices=WISE_SOLVERS)
    wise_first_exit: str = option("fitted", "WISE's first exit: fitted (a fitted weight) or raw (published: the raw "
                                            "logits)", choices=FIRST_EXITS)
    wise_published_test: bool = option(False, "WISE's published confidence test: softmax of the prefix mean, > tau "
                                              "(default: of the weighted sum, >= tau)")
    wise_fallback: str = option("last-prefix", "clips no prefix is confident on: last-prefix (all 12 exits, fitted) or "
                                               "heads (published: a weighted sum of the 3 heads)", choices=FALLBACKS)
    published: bool = option(False, "the published protocol: sets --exit-optimizer published --wise-solver sgd "
                                    "--wise-first-exit raw --wise-published-test --wise-fallback heads and, unless "
                                    "given, --ce-epochs to half of --exit-epochs")
    exit_relu: bool = option(False, "put a ReLU inside the internal classifiers (the published ICs have none)")
    tau: float = option(0.999999, "WISE early-exit confidence threshold")
    wise_holdout: float = option(0.0, "fraction of training clips kept out of training to fit WISE on (0: fit on training logits)")
    boundaries: tuple[float, ...] = option(PUBLISHED_BOUNDARIES, "PKD teacher schedule: fractions of the IC epochs taught "
                                                                 "by the MV head, then by the residual head")
    order: str = option("published", "PKD teacher order: published (MV head, then residual head) or flatness (the two "
                                     "sharpest streams by measured tr(H), sharpest first)", choices=ORDERS)
    flatness_seeds: int = option(3, "stream trainings (seeds seed, seed+1, ...) whose loss Hessians are measured; the "
                                    "first is the run's own streams")
    flatness_clips: int = option(32, "training clips the loss Hessian of each stream is measured on")
    flatness_probes: int = option(16, "Hutchinson probes per stream for tr(H)")
    device: str = option("cpu")
    workers: int = option(0)
    prepare_only: bool = option(False, "prepare the clip cache ($CURVFAST_CACHE) and stop: no training (a CPU job with PyAV, "
                                       "before training on a GPU node)")
    seed: int = option(0)
    data_seed: int | None = option(None, "seed of the synthetic clips (default: --seed); fixing it varies only the "
                                         "networks' initialisation and batch order with --seed")
    quiet: bool = option(False)

    def validate(self) -> None:
        """Check every setting (:class:`~curvfast.errors.ConfigError` naming the option); resolve the synthetic set's ``frames``."""
        if self.dataset not in DATASETS:
            raise UnknownNameError(f"--dataset must be one of {', '.join(DATASETS)} (got {self.dataset!r})")
        if self.dataset != "synthetic" and self.root is None:
            raise ConfigError(f"dataset {self.dataset!r} needs --root <folder holding it>; curvfast never downloads videos")
        if self.dataset == "synthetic" and self.frames is None:
            self.frames = SYNTHETIC_FRAMES
        if self.published:
            for name, value in PUBLISHED.items():
                setattr(self, name, value)
        for name, choices in (("exit_optimizer", EXIT_OPTIMIZERS), ("wise_solver", WISE_SOLVERS),
                              ("wise_first_exit", FIRST_EXITS), ("wise_fallback", FALLBACKS)):
            if getattr(self, name) not in choices:
                raise UnknownNameError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)} "
                                       f"(got {getattr(self, name)!r})")
        if self.ce_epochs is None:
            self.ce_epochs = max(1, round(self.exit_epochs / 2)) if self.published else self.exit_epochs
        if self.frames is not None and self.frames < 2:
            raise ConfigError(f"--frames must be >= 2 (got {self.frames}); leave it out for whole clips")
        if self.size < 16 or self.size % 16:
            raise ConfigError(f"--size must be a multiple of 16 (whole macroblocks), >= 16 (got {self.size})")
        if self.backbone not in BACKBONES:
            raise UnknownNameError(f"--backbone must be one of {', '.join(BACKBONES)} (got {self.backbone!r})")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"--workers must be an int >= 0 (got {self.workers!r})")
        parse_device(self.device)
        if self.order not in ORDERS:
            raise UnknownNameError(f"--order must be one of {', '.join(ORDERS)} (got {self.order!r})")
        if self.flatness_probes < 2:
            raise ConfigError(f"--flatness-probes must be >= 2 for a standard error (got {self.flatness_probes})")
        for name in ("segments", "stream_epochs", "exit_epochs", "ce_epochs", "batch_size", "flatness_seeds",
                     "flatness_clips"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"--tau must lie in (0, 1] (got {self.tau})")
        if not 0 <= self.wise_holdout < 1:
            raise ConfigError(f"--wise-holdout must lie in [0, 1) (got {self.wise_holdout})")
        if self.wise_alpha < 0:
            raise ConfigError(f"--wise-alpha must be >= 0 (got {self.wise_alpha})")
        if self.wise_free_exits < 0:
            raise ConfigError(f"--wise-free-exits must be >= 0 (got {self.wise_free_exits})")
        if len(self.boundaries) != 2 or not 0 <= self.boundaries[0] <= self.boundaries[1] <= 1:
            raise ConfigError(f"--boundaries takes two fractions b0,b1 with 0 <= b0 <= b1 <= 1 (got {self.boundaries})")


def load_clips(config: Config, progress: bool = False):
    """``(train, test)`` ClipSets for the configured dataset: a folder's clips are prepared once into the
    cache (``$CURVFAST_CACHE``, in ``workers`` processes, resumable) and read lazily from there."""
    if config.dataset == "synthetic":
        seed = config.seed if config.data_seed is None else config.data_seed
        return synthetic_actions(SyntheticConfig(config.clips_per_class, config.size, config.frames, seed=seed),
                                 progress=progress)
    cache = os.path.join(cache_root(), "compressed", f"{config.size}px-{config.frames or 'all'}f")
    lists = [LISTERS[config.dataset](config.root, split, config.fold) for split in ("train", "test")]  # both splits checked first
    return tuple(folder_clipset(*listed, cache, config.size, config.frames, config.workers, progress) for listed in lists)


def _loader(clips, config: Config, train: bool) -> DataLoader:
    """Batches of ``clips`` in ``workers`` processes (not persistent: each epoch's workers see ``set_epoch``),
    pinned for a GPU, shuffled by ``seed``."""
    data = CompressedVideoDataset(clips, config.segments, train=train, seed=config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    return DataLoader(data, batch_size=config.batch_size, shuffle=train, generator=gen if train else None,
                      num_workers=config.workers, pin_memory=parse_device(config.device).type == "cuda")


def _accuracies(logits: np.ndarray, labels: np.ndarray) -> list[float]:
    return [float(v) for v in (logits.argmax(-1) == labels[:, None]).mean(0)]


def _ensemble_accuracy(logits: np.ndarray, labels: np.ndarray, exits: list[int]) -> float:
    """Accuracy of the plain average of the chosen exits' softmax outputs."""
    z = logits[:, exits] - logits[:, exits].max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    return float((probs.mean(1).argmax(-1) == labels).mean())


def _wise(train_logits, train_labels, test_logits, test_labels, macs, config: Config) -> dict:
    """WISE fitted on ``train_logits`` and swept on ``test_logits`` with the configured solver, first exit,
    confidence test and fallback (the heads' fallback weights fitted like a 3-exit prefix without L1)."""
    weights = fit_wise(train_logits, train_labels, config.wise_alpha, config.wise_free_exits, config.wise_solver,
                       config.wise_first_exit)
    fallback, record = None, None
    if config.wise_fallback == "heads":
        heads = [EXIT_NAMES.index(f"{s}/head") for s in STREAM_ORDER]
        fallback = (heads, fit_wise(train_logits[:, heads], train_labels, 0.0, len(heads), config.wise_solver)[-1])
        record = {"exits": [EXIT_NAMES[i] for i in heads], "weights": fallback[1].tolist()}
    rule = {"published_test": config.wise_published_test, "fallback": fallback}
    sweep = wise_sweep(test_logits, test_labels, weights, macs["cumulative"], TAU_GRID, **rule)
    chosen = wise_sweep(test_logits, test_labels, weights, macs["cumulative"], [config.tau], **rule)[0]
    return {**chosen, "alpha": config.wise_alpha, "solver": config.wise_solver, "first_exit": config.wise_first_exit,
            "published_test": config.wise_published_test, "fallback": record,
            "weights": [w.tolist() for w in weights], "sweep": sweep}


def _hold_out(clips, config: Config):
    """``(clips to train on, clips to fit WISE on)``: the same set unless ``wise_holdout`` > 0."""
    if config.wise_holdout == 0:
        return clips, clips
    held = stratified_split(clips.labels, config.wise_holdout, config.seed + 1)
    train, wise = clips.subset(~held), clips.subset(held)
    missing = sorted(set(range(len(clips.classes))) - set(train.labels.tolist()))
    if missing:
        raise ConfigError(f"wise_holdout={config.wise_holdout} leaves classes {missing} without training clips; "
                         "lower --wise-holdout or use more clips per class")
    return train, wise


def _flatness(streams: nn.ModuleDict, train_clips, config: Config, progress: bool) -> dict:
    """tr(H) and the top eigenvalue of every stream's training loss, for the run's streams and for
    ``flatness_seeds - 1`` more stream trainings (seeds seed+1, ...), on ``flatness_clips`` training clips."""
    device = parse_device(config.device)
    chosen = np.zeros(len(train_clips), bool)
    chosen[np.random.default_rng(config.seed).permutation(len(train_clips))[:config.flatness_clips]] = True
    loader = _loader(train_clips.subset(chosen), config, train=False)
    seeds = [config.seed + i for i in range(config.flatness_seeds)]
    per_seed = []
    for seed in seeds:
        if seed != config.seed:
            torch.manual_seed(seed)
            streams = build_streams(len(train_clips.classes), backbone=config.backbone).to(device)
            train_streams(streams, _loader(train_clips, dataclasses.replace(config, seed=seed), train=True),
                          config.stream_epochs, config.lr, progress=progress)
        per_seed.append({name: stream_flatness(streams[name], stream_batches(loader, name, device), config.flatness_probes,
                                               seed) for name in STREAM_ORDER})
    return summarise_flatness(per_seed, seeds)


def run(config: Config, out: str | None = None) -> dict:
    """Run the experiment; write ``results.json``, ``logits.npz``, ``models.pt`` and two PNGs to the
    run folder ``out`` (None: a temporary one). Returns the results."""
    config.validate()
    progress = not config.quiet and sys.stderr.isatty()
    log = (lambda _msg: None) if config.quiet else print
    timing, start = {}, time.perf_counter()
    train_clips, test_clips = load_clips(config, progress)
    train_clips, wise_clips = _hold_out(train_clips, config)
    timing["data_s"] = time.perf_counter() - start
    if config.prepare_only:
        with run_folder(out) as folder:
            return write_results(folder, {"settings": config_dict(config), "prepared_only": True, "classes": train_clips.classes,
                                          "num_train": len(train_clips), "num_test": len(test_clips),
                                          "timing": {k: round(v, 2) for k, v in timing.items()}})
    num_classes = len(train_clips.classes)
    log(f"data: {len(train_clips)} train / {len(test_clips)} test clips, {num_classes} classes; WISE fitted on "
        + (f"{len(wise_clips)} held-out clips" if config.wise_holdout > 0 else "the training clips"))

    torch.manual_seed(config.seed)
    streams = build_streams(num_classes, backbone=config.backbone)
    ce_exits = build_exits(streams, num_classes, relu=config.exit_relu)
    pkd_exits = copy.deepcopy(ce_exits)  # both IC sets start from the same weights
    device = parse_device(config.device)
    streams, ce_exits, pkd_exits = streams.to(device), ce_exits.to(device), pkd_exits.to(device)
    train_loader = _loader(train_clips, config, train=True)
    t0 = time.perf_counter()
    stream_history = train_streams(streams, train_loader, config.stream_epochs, config.lr, progress=progress)
    timing["streams_s"] = time.perf_counter() - t0
    log(f"streams: {config.stream_epochs} epochs in {timing['streams_s']:.0f} s, final losses "
        + ", ".join(f"{k} {v:.3f}" for k, v in stream_history[-1].items() if k != "epoch"))
    t0 = time.perf_counter()
    flatness = _flatness(streams, train_clips, config, progress)
    order = tuple(flatness["order"]) if config.order == "flatness" else PUBLISHED_ORDER
    flatness.update(teacher_order=list(order), order_from=config.order)
    timing["flatness_s"] = time.perf_counter() - t0
    log(f"flatness ({config.flatness_seeds} seeds, {timing['flatness_s']:.0f} s): mean tr(H) "
        + ", ".join(f"{n} {flatness['streams'][n]['trace_mean']:.3g}" for n in STREAM_ORDER)
        + f"; flattest first {flatness['flattest_first']['trace']}; teachers {list(order)}")
    t0 = time.perf_counter()
    exit_history = train_exits(streams, ce_exits, pkd_exits, train_loader, config.exit_epochs, config.lr,
                               boundaries=config.boundaries, progress=progress, order=order,
                               ce_epochs=config.ce_epochs, optimizer=config.exit_optimizer)
    timing["exits_s"] = time.perf_counter() - t0
    log(f"ICs: {config.exit_epochs} PKD / {config.ce_epochs} CE epochs ({config.exit_optimizer}) in "
        f"{timing['exits_s']:.0f} s (both sets in one loop)")

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
        "settings": config_dict(config),
        "classes": train_clips.classes, "num_train": len(train_clips), "num_test": len(test_clips),
        "num_wise_fit": len(wise_clips),
        "exits": EXIT_NAMES, "ic_accuracy": ic_accuracy,
        "budgets": {"ce_epochs": sum(h["ce_loss"] is not None for h in exit_history),
                    "pkd_epochs": sum(h["pkd_loss"] is not None for h in exit_history)},
        "stream_accuracy": {s: ic_accuracy["ce"][EXIT_NAMES.index(f"{s}/head")] for s in STREAM_ORDER},
        "macs": {k: v.tolist() for k, v in macs.items()},
        "wise": {**wise["pkd"], "ce": wise["ce"]},
        "plain_ensemble_accuracy": plain, "plain_ensemble_macs": int(macs["cumulative"][-1]),
        "heads_ensemble_accuracy": _ensemble_accuracy(logits["test_pkd"], test_labels, heads),
        "gains": gains, "flatness": flatness, "history": {"streams": stream_history, "exits": exit_history},
        "timing": {k: round(v, 2) for k, v in timing.items()},
    }
    with run_folder(out) as folder:
        write_npz(os.path.join(folder, "logits.npz"), fit_labels=fit_labels, test_labels=test_labels, **logits)
        save_checkpoint(os.path.join(folder, "models.pt"),
                        nn.ModuleDict({"streams": streams, "ce": ce_exits, "pkd": pkd_exits}),
                        num_classes=num_classes, dataset=config.dataset, backbone=config.backbone,
                        kind="pkd's stream networks and exits (a ModuleDict; rebuild it with pkd's build_streams)")
        accuracy_vs_macs_plot(os.path.join(folder, "accuracy_vs_macs.png"), EXIT_NAMES, macs["standalone"], ic_accuracy,
                              {k: wise[k]["sweep"] for k in wise}, wise["pkd"], (plain, float(macs["cumulative"][-1])))
        exit_accuracy_plot(os.path.join(folder, "ic_accuracy.png"), EXIT_NAMES, ic_accuracy)
        flatness_plot(os.path.join(folder, "flatness.png"), flatness)
        return write_results(folder, results)


def summary(results: dict) -> dict:
    """What ``curvfast pkd`` prints: IC accuracies, WISE at the chosen threshold, the plain ensemble, the gains
    (with ``--prepare-only``: the clip counts)."""
    if results.get("prepared_only"):
        return {k: results[k] for k in ("num_train", "num_test", "timing")}
    flat = results["flatness"]
    return {"ic_accuracy": results["ic_accuracy"], "wise": {k: results["wise"][k] for k in ("tau", "accuracy", "macs")},
            "flatness": {"trace_mean": {n: s["trace_mean"] for n, s in flat["streams"].items()},
                         "hierarchy_holds": flat["hierarchy_holds"], "teacher_order": flat["teacher_order"]},
            "plain_ensemble_accuracy": results["plain_ensemble_accuracy"], "gains": results["gains"]}
