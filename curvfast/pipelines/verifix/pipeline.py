"""The end-to-end noisy-label experiment behind ``curvfast verifix`` (:class:`Config`, :func:`run`).

train split → (train part, validation part) → noisy labels on both → train a zoo model on the
noisy train part → verified set (lowest input-loss curvature per class) → Verifix (α chosen on the
validation part) → clean test accuracy before and after. Only the test report uses clean labels
(unless ``clean_validation``: a trusted, hand-checked validation set; or the published code's two
oracles, ``oracle_ranking`` and ``oracle_alpha``, which read the true labels / the flip mask; ``published``
turns both on). Verifix: the soft projector
W ← W·P_α of every Conv2d/Linear layer, P_α built from the spectrum of the layer's inputs on the
verified set (Kodge, Ravikumar, Saha and Roy, "Verifix: Post-Training Correction to Improve
Label Noise Robustness with Verified Samples", 2024). The verified set has the lowest curvature
because memorised (flipped) labels sit in high-curvature regions (Garg, Ravikumar and Roy 2024).
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from curvfast import parse_device
from curvfast.errors import CheckpointError, ConfigError, DataError
from curvfast.checkpoints import model_record, save_model
from curvfast.io import load_checkpoint, write_npz
from curvfast.linalg import ROUTES
from curvfast.pipelines.common.cache import describe, differences
from curvfast.pipelines.common.contract import config_dict, field_choices, option, run_folder, write_results
from curvfast.pipelines.common.data import DataOptions, build_network, dataset_labels, load_split, loader
from curvfast.training import TrainRecipe, evaluate, fit
from curvfast.pipelines.verifix.noise import NOISE_TYPES, add_label_noise
from curvfast.pipelines.verifix.projector import PUBLISHED_ALPHAS
from curvfast.pipelines.verifix.selection import select_verified, selection_methods
from curvfast.pipelines.verifix.spectra import PUBLISHED_MAX_ROWS
from curvfast.pipelines.verifix.verifix import verifix

__all__ = ["Config", "PRESETS", "run", "summary", "Relabeled"]

PRESETS = {
    # the tests' settings: seconds on a laptop CPU
    "smoke": {"epochs": 2, "verified_size": 20, "method": "random", "alphas": (1e4, 1e5), "seeds": (0,)},
    # Kodge et al. 2024, CIFAR-10 (example_scripts/{train,verifix}_cifar_example.sh of their code):
    # ResNet-18, 350 epochs of SGD at lr 0.01, batch 64, 25% symmetric noise, 10% validation split,
    # 1000 verified samples ranked by curvature, alpha in {1e4, 3e4, 1e5, 3e5, 1e6} (the default grid),
    # random crop + flip and the CIFAR-10 normalisation, and the published code's two oracles (utils.py: the
    # ranking under the true labels over the whole split, alpha on the unflipped validation samples; turn them
    # off with published=False). docs/verifix.md lists what differs.
    "paper": {"dataset": "cifar10", "model": "cifar_resnet18", "noise": 0.25, "epochs": 350, "lr": 0.01,
              "batch_size": 64, "val_fraction": 0.1, "verified_size": 1000, "method": "fd",
              "normalize": "cifar10", "augment": "crop-flip", "device": "cuda", "published": True},
}


@dataclass
class Config(DataOptions):
    """The experiment's settings (defaults: the published recipe on 8x8 digits)."""

    model: str = option("small_cnn")
    noise: float = option(0.25, "fraction of training labels flipped (label noise rate, in [0, 1))")
    noise_type: str = option("symmetric", "symmetric (uniform over the other classes) or asymmetric (pair flip c -> c+1)",
                             choices=NOISE_TYPES)
    epochs: int = option(60, "training epochs of each network")
    lr: float = option(0.05, "SGD learning rate")
    batch_size: int = option(64)
    val_fraction: float = option(0.2, "part of the train split held out to choose alpha")
    clean_validation: bool = option(False, "validation split with clean labels (a trusted set); default: noisy")
    oracle_ranking: bool = option(False, "rank the verified set by curvature under the TRUE labels over the whole train "
                                         "split (train and validation parts), class-balanced by true label, as the "
                                         "published code does (an oracle); default: noisy labels, train part only")
    oracle_alpha: bool = option(False, "choose alpha by accuracy on the validation samples whose labels were NOT flipped, "
                                       "as the published code does (an oracle: it reads the flip mask)")
    published: bool = option(False, "the published protocol: turns on --oracle-ranking and --oracle-alpha, and ranks "
                                    "by --method fd unless a method other than auto is given")
    verified_size: int = option(200, "class-balanced verified set size")
    method: str = option("auto", "ranking the verified set, or random", choices=selection_methods)
    alphas: tuple[float, ...] = option(PUBLISHED_ALPHAS, "soft projector strengths alpha tried on the validation split")
    max_rows: int = option(PUBLISHED_MAX_ROWS, "rows (patches) per layer, 0 for all")
    route: str = option("auto", "spectrum route: exact Gram, randomized, or by size", choices=ROUTES)
    rank: int | None = option(None, "truncated rank allowed for the randomized route")
    seeds: tuple[int, ...] = option((0,), "training seeds; results are mean and std over them")
    checkpoint: str | None = option(None, "correct this noisy-label model instead of training one: the trained.pt of an "
                                          "earlier run with the same data, model, noise, split and seed")
    device: str = option("cpu")
    quiet: bool = option(False)

    def __post_init__(self) -> None:
        """Resolve ``published`` into the options it stands for, so that ``settings`` records what ran."""
        if self.published:
            self.oracle_ranking = self.oracle_alpha = True
            if self.method == "auto":
                self.method = "fd"  # utils.py get_regularized_curvature_for_batch: Garg et al.'s fd statistic

    def validate(self) -> None:
        """Fail before training on settings that would only be rejected after it."""
        self.check_data_options()
        parse_device(self.device)
        if not 0.0 <= float(self.noise) < 1.0:
            raise ConfigError(f"noise rate must be in [0, 1) (got {self.noise!r})")
        if self.noise_type not in NOISE_TYPES:
            raise ConfigError(f"noise_type must be one of {NOISE_TYPES} (got {self.noise_type!r})")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1 (got {self.epochs})")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1) (got {self.val_fraction!r})")
        if not isinstance(self.verified_size, int) or self.verified_size < 1:
            raise ConfigError(f"verified_size must be a positive int (got {self.verified_size!r})")
        if self.method not in field_choices(Config, "method"):
            raise ConfigError(f"--method must be one of {', '.join(field_choices(Config, 'method'))} (got {self.method!r})")
        if len(self.alphas) == 0 or any(not float(a) >= 1 for a in self.alphas):
            raise ConfigError(f"alphas must be a non-empty list of values >= 1 (got {list(self.alphas)})")
        if self.max_rows < 0:
            raise ConfigError(f"max_rows must be >= 0 (0 = all rows) (got {self.max_rows})")
        if self.route not in ROUTES:
            raise ConfigError(f"route must be one of {ROUTES} (got {self.route!r})")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"rank must be >= 1 (got {self.rank})")
        if not self.seeds:
            raise ConfigError("seeds must name at least one seed")
        if self.checkpoint is not None and len(self.seeds) != 1:
            raise ConfigError(f"a checkpoint holds the model of one seed; give one seed with it (got seeds={list(self.seeds)})")


class Relabeled(Dataset):
    """``base`` with its labels replaced by ``labels`` (items: (x, label))."""

    def __init__(self, base, labels: torch.Tensor):
        if len(base) != len(labels):
            raise DataError(f"labels ({len(labels)}) must match the dataset length ({len(base)})")
        self.base, self.labels = base, torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.base[i][0], int(self.labels[i])


def _unflipped(train_full, val_idx: np.ndarray, clean: torch.Tensor, flipped: torch.Tensor) -> Relabeled:
    """The validation samples whose labels were not flipped (their labels: the true ones), on which the
    published code scores α (utils.py ``activation_projection_based_unlearning``: ``val_loader_clean``)."""
    keep = val_idx[~flipped[val_idx].numpy()]
    if len(keep) == 0:
        raise DataError(f"every one of the {len(val_idx)} validation labels was flipped: --oracle-alpha has no sample "
                        "to score alpha on; lower --noise or raise --val-fraction")
    return Relabeled(Subset(train_full, keep.tolist()), clean[keep])


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train part, validation part) of range(n), each sorted; the validation part has round(fraction·n)."""
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(round(fraction * n))
    return np.sort(perm[cut:]), np.sort(perm[:cut])


# what a trained model depends on: a checkpoint is reused only when all of these match the run
_TRAINED_WITH = ("dataset", "image_size", "model", "normalize", "noise", "noise_type", "val_fraction")


def _checked_checkpoint(config: Config, seed: int) -> dict:
    """The state dict of ``config.checkpoint``, refused unless it was trained with this run's data, model,
    noise, split and seed (other labels would make the correction meaningless)."""
    ckpt = load_checkpoint(config.checkpoint)
    differ = differences(ckpt, {k: getattr(config, k) for k in _TRAINED_WITH} | {"seed": seed})
    if differ:
        raise CheckpointError(f"checkpoint {config.checkpoint!r} was trained with other settings than this run "
                              f"({describe(differ)}); give the same options, or no checkpoint to train a model")
    return ckpt["state_dict"]


def _trained_model(config: Config, seed: int, info, input_shape: tuple[int, ...], train_set, state: dict | None):
    """The model trained on the noisy labels: ``state`` (a checked checkpoint's weights) or trained here."""
    torch.manual_seed(seed)  # the initialisation too, not only the training order
    net = build_network(config, config.model, info, input_shape)
    if state is not None:
        net.load_state_dict(state)
        return net.to(config.device).eval()
    data = loader(train_set, config, batch_size=config.batch_size, device=config.device, shuffle=True, seed=seed)
    recipe = TrainRecipe(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=seed)
    return fit(net, data, recipe, device=config.device, batch_transform=config.batch_transform(seed))


def _run_seed(config: Config, seed: int, data: tuple, out: str, say, state: dict | None = None) -> dict:
    """One seed of the experiment on ``data`` = (train split, test split, DatasetInfo), starting from the
    trained weights ``state`` if given; writes results.json, verified.npz, trained.pt and model.pt to
    ``out`` and returns the results."""
    progress = False if config.quiet else None
    timings, t0 = {}, time.perf_counter()
    train_full, test_set, info = data
    clean = torch.as_tensor(dataset_labels(train_full))
    noisy, flipped = add_label_noise(clean, config.noise, info.num_classes, kind=config.noise_type, seed=seed)
    train_idx, val_idx = _split(len(clean), config.val_fraction, seed)
    train_set = Relabeled(Subset(train_full, train_idx.tolist()), noisy[train_idx])
    val_set = Relabeled(Subset(train_full, val_idx.tolist()), (clean if config.clean_validation else noisy)[val_idx])
    timings["data_and_noise"] = time.perf_counter() - t0

    t = time.perf_counter()
    net = _trained_model(config, seed, info, tuple(train_full[0][0].shape), train_set, state)
    timings["train"] = time.perf_counter() - t
    say(f"seed {seed}: {'loaded' if config.checkpoint else 'trained'} {config.model} on {len(train_set)} samples with "
        f"{config.noise:.0%} {config.noise_type} noise ({timings['train']:.1f} s)")
    os.makedirs(out, exist_ok=True)
    record = model_record(config.model, info.num_classes, info.in_channels, normalize=config.normalize,
                          input_shape=tuple(train_full[0][0].shape))
    if config.checkpoint is None:  # the model before correction, for reruns with other selections or alphas
        save_model(os.path.join(out, "trained.pt"), net, record, seed=seed, epochs=config.epochs,
                   **{k: getattr(config, k) for k in _TRAINED_WITH})

    t = time.perf_counter()
    # the ranked pool: the train part under its noisy labels, or (oracle, as published) the whole split under the true ones
    pool, pool_index = (train_full, np.arange(len(clean))) if config.oracle_ranking else (train_set, train_idx)
    sel = select_verified(net, pool, config.verified_size, method=config.method, seed=seed, device=config.device,
                          num_workers=config.workers, progress=progress)
    verified_index = pool_index[sel.indices]  # into the train split
    timings["selection"] = time.perf_counter() - t
    alpha_set = _unflipped(train_full, val_idx, clean, flipped) if config.oracle_alpha else val_set
    corrected, report = verifix(
        net, Subset(pool, sel.indices.tolist()), alpha_set, alphas=config.alphas, max_rows=config.max_rows or None,
        route=config.route, rank=config.rank, seed=seed, device=config.device, workers=config.workers, progress=progress,
    )
    timings.update({f"verifix_{k}": v for k, v in report.seconds.items()})

    t = time.perf_counter()
    before, after = evaluate(net, test_set, workers=config.workers), evaluate(corrected, test_set, workers=config.workers)
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    result = {
        "accuracy_before": before, "accuracy_after": after, "alpha": report.alpha, "verified_size": int(len(sel.indices)),
        "verified_clean_fraction": float(1.0 - flipped[verified_index].float().mean()),
        "verified_from_validation": int(np.isin(verified_index, val_idx).sum()), "alpha_validation_size": len(alpha_set),
        "train_noise_rate": float(flipped[train_idx].float().mean()), "selection_method": sel.method,
        "train_accuracy_noisy_labels": evaluate(net, train_set, workers=config.workers), "verifix": report.to_dict(),
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "settings": config_dict(config) | {"seed": seed, "train_size": len(train_set), "validation_size": len(val_set),
                                           "test_size": len(test_set)},
    }
    say(f"seed {seed}: test accuracy {before:.4f} -> {after:.4f} (alpha={report.alpha}, "
        f"verified clean {result['verified_clean_fraction']:.3f})")
    write_npz(
        os.path.join(out, "verified.npz"), train_index=train_idx, validation_index=val_idx, ranked_index=pool_index,
        verified=sel.indices, verified_split_index=verified_index,
        curvature=sel.scores if sel.scores is not None else np.full(len(pool_index), np.nan),
        noisy_label=noisy.numpy(), clean_label=clean.numpy(), flipped=flipped.numpy(),
    )
    save_model(os.path.join(out, "model.pt"), corrected, record, alpha=report.alpha if report.alpha is not None else 0.0)
    return write_results(out, result)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run(config: Config, out: str | None = None) -> dict:
    """Run the experiment once per seed and write ``out``: ``results.json``, ``verified.npz`` (split
    indices; ``ranked_index``: the split indices of the ranked pool, the train part or with ``oracle_ranking``
    the whole split; ``curvature`` per ranked sample; ``verified``: positions in that pool and
    ``verified_split_index``: the same samples as split indices; noisy/clean labels, flip mask), ``trained.pt`` (the model
    trained on the noisy labels, which ``checkpoint`` takes back: unless it came from one) and
    ``model.pt`` (the corrected model); with several seeds each seed's run goes to ``out/seed_<k>/`` and
    ``out/results.json`` holds mean ± sample std of the accuracies. Returns the results."""
    config.validate()
    say = (lambda _msg: None) if config.quiet else print
    seeds = list(config.seeds)
    train_full, info = load_split(config, "train")
    test_set, _ = load_split(config, "test")  # the real test split: a folder without one is refused here
    data = (train_full, test_set, info)
    state = None if config.checkpoint is None else _checked_checkpoint(config, seeds[0])  # validate() allows one seed
    with run_folder(out) as folder:
        if len(seeds) == 1:
            return _run_seed(config, seeds[0], data, folder, say, state)
        runs = [_run_seed(config, s, data, os.path.join(folder, f"seed_{s}"), say) for s in seeds]
        results = {"seeds": seeds, "settings": {k: v for k, v in runs[0]["settings"].items() if k != "seed"}}
        for key in ("accuracy_before", "accuracy_after", "verified_clean_fraction"):
            results[key], results[f"{key}_std"] = _mean_std([r[key] for r in runs])
        results["gain"], results["gain_std"] = _mean_std([r["accuracy_after"] - r["accuracy_before"] for r in runs])
        results["alpha"] = [r["alpha"] for r in runs]
        results["verified_size"] = runs[0]["verified_size"]
        results["seconds"] = {k: round(statistics.fmean([r["seconds"][k] for r in runs]), 3) for k in runs[0]["seconds"]}
        results["runs"] = [{k: r[k] for k in ("accuracy_before", "accuracy_after", "alpha", "verified_clean_fraction")} | {"seed": s}
                           for s, r in zip(seeds, runs)]
        return write_results(folder, results)


def summary(results: dict) -> dict:
    """What ``curvfast verifix`` prints: clean test accuracy before/after (± std over seeds), α, verified size, seconds."""
    keys = ("accuracy_before", "accuracy_before_std", "accuracy_after", "accuracy_after_std", "alpha", "verified_size", "seconds")
    return {k: results[k] for k in keys if k in results}
