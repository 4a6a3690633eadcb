"""The membership-inference experiment: models on random halves, cached signals, attacks, results.

Models 0..T−1 are the targets and T..T+N−1 the shadows (``leave_one_out=True``: every model is a
target in turn, all others its shadows, as in Carlini et al.'s evaluation). Each is trained once
on its subset ``keep[m]`` (:func:`curvfast.pipelines.common.multitrain.train_subset_models`, or DP-SGD with
Opacus when ``dp_epsilon`` is set) and saved under ``out/models/``, or loaded from existing
checkpoints with a given keep matrix. Signals are cached in ``out/signals.npz`` with the settings
that produced them, and reused when the settings match.

Outputs in ``out``: ``results.json`` (settings, model accuracies, and ``attacks``: per attack AUROC,
balanced accuracy and TPR at 1%/0.1%/0.01% FPR, mean and std over targets), ``signals.npz``
(``keep`` (models x samples), every signal (models x samples x views), ``index``, ``label``),
``scores.npz`` (each attack's (targets x samples) scores) and ``roc.png``.
"""
from __future__ import annotations

import glob
import json
import os
import re
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from curvfast.data import get_dataset
from curvfast.io import load_checkpoint, save_checkpoint, write_json, write_npz
from curvfast.models import build_model
from curvfast.pipelines.mia.attacks import check_membership
from curvfast.pipelines.mia.evaluate import FPRS, REQUIRED_ATTACKS, attack_scores, plot_rocs, attack_metrics
from curvfast.pipelines.mia.signals import FLIP_SAFE, SIGNALS, compute_signals

__all__ = ["MIAConfig", "balanced_keep", "crop_flip", "load_population", "natural_order", "run_mia", "evaluate_signals"]

DEFAULT_SIGNALS = ("loss", "conf", "mentr", "curv_exact", "curv_zo", "curv_fd")
AUGMENTS = ("auto", "none", "crop", "crop_flip")


@dataclass
class MIAConfig:
    out: str
    dataset: str = "digits"
    split: str = "all"
    root: str | None = None
    pool_size: int | None = None
    model: str = "small_cnn"
    width: int = 16
    shadows: int = 16
    targets: int = 4
    leave_one_out: bool = False
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 5e-4
    seed: int = 0
    views: tuple = ("identity",)
    augment: str = "auto"
    signals: tuple = DEFAULT_SIGNALS
    probes: int = 10
    score_batch_size: int = 512
    dp_epsilon: float | None = None
    dp_delta: float = 1e-5
    dp_clip: float = 1.0
    dp_lr: float = 1e-3
    checkpoints: str | None = None
    keep_file: str | None = None
    attacks: tuple | None = None
    published_quirk: bool = False
    progress: bool | None = None

    def training_key(self) -> dict:
        keys = ("dataset", "split", "pool_size", "model", "width", "shadows", "targets", "leave_one_out", "epochs", "batch_size", "lr",
                "weight_decay", "seed", "dp_epsilon", "dp_delta", "dp_clip", "dp_lr", "checkpoints", "keep_file")
        return {**{k: getattr(self, k) for k in keys}, "augment": self.resolved_augment()}

    def resolved_augment(self) -> str:
        """``auto``: random crop + horizontal flip for natural images (:data:`FLIP_SAFE`, the papers'
        training), nothing for digits-like data (a flip changes the digit; an 8x8 digit has no margin
        to crop). DP-SGD training takes no augmentation."""
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS} (got {self.augment!r})")
        if self.augment != "auto":
            return self.augment
        return "crop_flip" if self.dataset.lower() in FLIP_SAFE and self.dp_epsilon is None else "none"

    def signal_key(self) -> dict:
        return {**self.training_key(), "views": list(self.views), "signals": list(self.signals), "probes": self.probes}


def balanced_keep(num_models: int, num_samples: int, seed: int = 0) -> np.ndarray:
    """(models, samples) keep matrix in which every sample is IN for exactly ⌊M/2⌋ or ⌈M/2⌉ models.

    Column i ranks M uniform draws and takes the lower half (Carlini et al.'s construction), so
    each model gets a random ~50% subset and every sample is IN and OUT about equally often
    (for odd M, whether a sample gets the extra IN is a fair coin).
    """
    if num_models < 1 or num_samples < 1:
        raise ValueError(f"need at least 1 model and 1 sample (got {num_models}, {num_samples})")
    rng = np.random.default_rng(seed)
    ranks = rng.random((num_models, num_samples)).argsort(0).argsort(0)
    half = np.where(rng.random(num_samples) < 0.5, num_models // 2, (num_models + 1) // 2)
    return ranks < half


def experiment_keep(cfg: "MIAConfig", num_samples: int) -> np.ndarray:
    """Targets' rows then shadows' rows, each group balanced on its own (every sample IN for half the
    shadows, whatever the targets drew); leave-one-out balances all models together."""
    if cfg.leave_one_out:
        return balanced_keep(cfg.targets + cfg.shadows, num_samples, cfg.seed)
    return np.vstack([balanced_keep(cfg.targets, num_samples, cfg.seed), balanced_keep(cfg.shadows, num_samples, cfg.seed + 1)])


def crop_flip(x: torch.Tensor, gen: torch.Generator, *, flip: bool = True, pad: int | None = None) -> torch.Tensor:
    """Random-translation crop (reflect padding by ``pad`` pixels, default H // 8: 4 for 32x32 as in
    Carlini et al.'s and Curvature Clues' training) and, with ``flip``, a horizontal flip with
    probability ½, drawn independently per image of a batch (..., C, H, W)."""
    shape = x.shape
    x = x.reshape(-1, *shape[-3:])
    n, _, h, w = x.shape
    pad = max(1, h // 8) if pad is None else pad
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dr = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dc = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dr[:, None] + torch.arange(h))[:, :, None]  # (n, h, 1)
    cols = (dc[:, None] + torch.arange(w))[:, None, :]  # (n, 1, w)
    out = padded.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flip:
        mirror = torch.rand(n, generator=gen) < 0.5
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    return out.reshape(shape).contiguous()


def _augment_fn(name: str):
    return {"none": None, "crop": lambda x, g: crop_flip(x, g, flip=False), "crop_flip": crop_flip}[name]


def load_population(cfg: MIAConfig):
    """``(images (N, C, H, W), labels (N,), dataset indices (N,), num_classes)`` of the attacked population."""
    dataset, info = get_dataset(cfg.dataset, cfg.split, root=cfg.root)
    if hasattr(dataset, "images") and hasattr(dataset, "targets") and torch.is_tensor(dataset.images):
        images, labels = dataset.images, dataset.targets
    else:
        items = [dataset[i] for i in range(len(dataset))]
        images = torch.stack([x for x, _ in items])
        labels = torch.tensor([int(y) for _, y in items], dtype=torch.int64)
    index = np.arange(len(labels))
    if cfg.pool_size is not None:
        if not 2 <= cfg.pool_size <= len(labels):
            raise ValueError(f"pool_size must be between 2 and the dataset size {len(labels)} (got {cfg.pool_size})")
        index = np.sort(np.random.default_rng([cfg.seed, 1]).choice(len(labels), cfg.pool_size, replace=False))
    sel = torch.from_numpy(index)
    return images[sel].contiguous(), labels[sel].contiguous(), index, info.num_classes


def _make_model(cfg: MIAConfig, num_classes: int, in_channels: int):
    kwargs = {"width": cfg.width} if cfg.model == "small_cnn" else {}
    if cfg.dp_epsilon is not None:
        from curvfast.pipelines.mia.dp import dp_model

        return lambda: dp_model(cfg.model, num_classes, in_channels, **kwargs)
    return lambda: build_model(cfg.model, num_classes, in_channels, **kwargs)


def natural_order(paths) -> list[str]:
    """Sort file names with their digit runs compared as numbers: ``model_2.pt`` before ``model_10.pt``."""
    def key(path):
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", os.path.basename(path))]

    return sorted(paths, key=key)


def _models_from_checkpoints(cfg: MIAConfig, make_model, num_samples):
    files = natural_order(glob.glob(os.path.join(cfg.checkpoints, "*.pt")))
    if not files:
        raise FileNotFoundError(f"no *.pt checkpoints in --checkpoints {cfg.checkpoints!r}")
    if cfg.keep_file is None:
        raise ValueError("--checkpoints needs --keep FILE.npy: the (models x samples) membership matrix of those checkpoints")
    keep = check_membership(np.load(cfg.keep_file), num_samples, need_in=0, need_out=0)
    if keep.shape[0] != len(files):
        raise ValueError(f"--keep has {keep.shape[0]} rows but {cfg.checkpoints!r} holds {len(files)} checkpoints: row m of --keep "
                         "must describe the m-th checkpoint in natural name order (model_2.pt before model_10.pt)")
    models = []
    for f in files:
        model = make_model()
        model.load_state_dict(load_checkpoint(f)["state_dict"])
        models.append(model.eval())
    return models, keep


def _train(cfg: MIAConfig, make_model, images, labels, keep):
    model_dir = os.path.join(cfg.out, "models")
    files = [os.path.join(model_dir, f"model_{m:03d}.pt") for m in range(keep.shape[0])]
    key = cfg.training_key()
    if all(map(os.path.isfile, files)) and _read_json(os.path.join(model_dir, "settings.json")) == key:
        models = []
        for f in files:
            model = make_model()
            model.load_state_dict(load_checkpoint(f)["state_dict"])
            models.append(model.eval())
        return models, 0.0
    start = time.perf_counter()
    if cfg.dp_epsilon is not None:
        from curvfast.pipelines.mia.dp import train_dp_models

        models = train_dp_models(make_model, images, labels, keep, epsilon=cfg.dp_epsilon, delta=cfg.dp_delta,
                                 clip=cfg.dp_clip, lr=cfg.dp_lr, epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                                 progress=cfg.progress)
    else:
        from curvfast.pipelines.common.multitrain import train_subset_models

        models = train_subset_models(make_model, images, labels, keep, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                     lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed,
                                     augment=_augment_fn(cfg.resolved_augment()), progress=cfg.progress)
    seconds = time.perf_counter() - start
    for f, model in zip(files, models):
        save_checkpoint(f, model, model=cfg.model)
    write_json(os.path.join(model_dir, "settings.json"), key)
    return models, seconds


def _read_json(path):
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _cached_signals(path, key):
    if not os.path.isfile(path):
        return None
    with np.load(path) as z:
        if "settings" not in z or json.loads(str(z["settings"])) != key:
            return None
        return {k: z[k] for k in z.files}


@torch.no_grad()
def _accuracies(models, images, labels, keep):
    acc = []
    for model, row in zip(models, keep):
        correct = (model(images).argmax(1) == labels).numpy()
        acc.append({"in": float(correct[row].mean()), "out": float(correct[~row].mean()) if (~row).any() else None})
    return acc


def _roles(cfg: MIAConfig, num_models: int):
    if cfg.leave_one_out:
        return [([t], [m for m in range(num_models) if m != t]) for t in range(num_models)]
    if not 1 <= cfg.targets < num_models:
        raise ValueError(f"targets must be between 1 and the number of models - 1 = {num_models - 1} (got {cfg.targets})")
    return [(list(range(cfg.targets)), list(range(cfg.targets, num_models)))]


def _validate(cfg: MIAConfig):
    bad = [s for s in cfg.signals if s not in SIGNALS]
    if bad or not cfg.signals:
        raise ValueError(f"signals must be a non-empty subset of {SIGNALS} (got {list(cfg.signals)})")
    if cfg.checkpoints is None and (cfg.shadows < 1 or cfg.targets < 1):
        raise ValueError(f"need --shadows >= 1 and --targets >= 1 (got {cfg.shadows}, {cfg.targets})")
    if cfg.epochs < 1:
        raise ValueError(f"epochs must be >= 1 (got {cfg.epochs})")
    cfg.resolved_augment()


def run_mia(cfg: MIAConfig) -> dict:
    """Run the whole experiment into ``cfg.out``; returns the ``results.json`` content."""
    _validate(cfg)
    t0 = time.perf_counter()
    os.makedirs(cfg.out, exist_ok=True)
    images, labels, index, num_classes = load_population(cfg)
    make_model = _make_model(cfg, num_classes, images.shape[1])
    train_seconds = 0.0
    if cfg.checkpoints is not None:
        models, keep = _models_from_checkpoints(cfg, make_model, len(labels))
    else:
        keep = experiment_keep(cfg, len(labels))
        models = None
    for _, shadow_ids in _roles(cfg, keep.shape[0]):
        check_membership(keep[shadow_ids], need_in=2, need_out=2)
    signal_path = os.path.join(cfg.out, "signals.npz")
    cached = _cached_signals(signal_path, cfg.signal_key())
    signal_seconds = 0.0
    if cached is not None:
        signals = {s: cached[s] for s in cfg.signals}
        keep, accuracy = cached["keep"], json.loads(str(cached["accuracy"]))
    else:
        if models is None:
            models, train_seconds = _train(cfg, make_model, images, labels, keep)
        start = time.perf_counter()
        signals = compute_signals(models, images, labels, signals=cfg.signals, views=cfg.views, probes=cfg.probes,
                                  seed=cfg.seed, batch_size=cfg.score_batch_size, indices=torch.from_numpy(index),
                                  progress=cfg.progress)
        signal_seconds = time.perf_counter() - start
        accuracy = _accuracies(models, images, labels, keep)
        write_npz(signal_path, keep=keep, index=index, label=labels.numpy(), accuracy=json.dumps(accuracy),
                  settings=json.dumps(cfg.signal_key()), **signals)
    return _attack_and_report(cfg, signals, keep, accuracy, t0, train_seconds, signal_seconds)


def evaluate_signals(cfg: MIAConfig, signals: dict, keep) -> dict:
    """Attacks only, on signals computed elsewhere (e.g. imported from LiRA or ML Privacy Meter)."""
    keep = check_membership(keep, need_in=0, need_out=0)
    os.makedirs(cfg.out, exist_ok=True)
    signals = {k: (v[..., None] if v.ndim == 2 else v) for k, v in signals.items()}
    write_npz(os.path.join(cfg.out, "signals.npz"), keep=keep, **signals)
    return _attack_and_report(cfg, signals, keep, None, time.perf_counter(), 0.0, 0.0)


def _attack_and_report(cfg, signals, keep, accuracy, t0, train_seconds, signal_seconds):
    names = cfg.attacks
    if names is None:
        from curvfast.pipelines.mia.evaluate import ATTACKS

        names = [n for n, (sig, _) in ATTACKS.items() if sig in signals and (cfg.published_quirk or not n.endswith("_published"))]
    roles = _roles(cfg, keep.shape[0])
    scores = {n: [] for n in names}
    targets = []
    for t_ids, s_ids in roles:
        for name, s in attack_scores(signals, keep, t_ids, s_ids, names).items():
            scores[name].append(s)
        targets += t_ids
    scores = {n: np.concatenate(v) for n, v in scores.items()}
    members = keep[targets]
    attacks = {n: attack_metrics(s, members, FPRS) for n, s in scores.items()}
    missing = [n for n in REQUIRED_ATTACKS if n not in attacks]
    plot_rocs(scores, members, os.path.join(cfg.out, "roc.png"),
              title=f"{cfg.dataset}, {len(targets)} targets, {keep.shape[0] - (1 if cfg.leave_one_out else len(targets))} shadows")
    write_npz(os.path.join(cfg.out, "scores.npz"), targets=np.array(targets), members=members, **scores)
    acc_in = [a["in"] for a in accuracy or []]
    acc_out = [a["out"] for a in accuracy or [] if a["out"] is not None]
    results = {
        "settings": {**{k: v for k, v in asdict(cfg).items() if k not in ("progress",)}, "augment_used": cfg.resolved_augment()},
        "population": {"samples": int(keep.shape[1]), "models": int(keep.shape[0]), "targets": targets,
                       "in_fraction": float(keep.mean())},
        "accuracy": {"train_mean": float(np.mean(acc_in)) if acc_in else None, "heldout_mean": float(np.mean(acc_out)) if acc_out else None,
                     "per_model": accuracy},
        "attacks": attacks,
        "not_computed": missing,
        "notes": "balanced_accuracy picks its threshold on the evaluated target itself (optimistic). "
                 f"TPR at FPR below {1 / max(1, (~members).sum(1).min()):.2g} rests on fewer than one non-member.",
        "seconds": {"train": round(train_seconds, 1), "signals": round(signal_seconds, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    }
    write_json(os.path.join(cfg.out, "results.json"), results)
    return results
