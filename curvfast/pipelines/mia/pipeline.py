"""``curvfast mia``: models on random halves, cached signals, attacks, results.

Models 0..T−1 are the targets and T..T+N−1 the shadows (``leave_one_out=True``: every model is a
target in turn, all others its shadows, as in Carlini et al., "Membership Inference Attacks From
First Principles", S&P 2022). ``published=True`` runs the published Curvature Clues protocol where it
differs from ours (:data:`PUBLISHED`; docs/mia.md, Deviations). Each is trained once on its subset ``keep[m]``
(:func:`curvfast.pipelines.common.multitrain.train_subset_models`, or DP-SGD with Opacus when
``dp_epsilon`` is set: :func:`curvfast.pipelines.common.dp.train_dp_model`) and saved under
``out/models/``, or loaded from existing checkpoints with a given keep matrix, or the signals are
imported from a LiRA / ML Privacy Meter layout (:mod:`.interchange`). Signals are computed in one
pass over a DataLoader of the population (one batch in memory at a time, on ``device``), cached in
``out/signals.npz`` with the settings that produced them, and reused when the settings match.
Training alone holds the population as one float32 tensor (each step gathers a batch per model).

Outputs in ``out``: ``results.json`` (settings, model accuracies, and ``attacks``: per attack AUROC,
balanced accuracy and TPR at 1%/0.1%/0.01% FPR, mean and std over targets), ``signals.npz``
(``keep`` (models x samples), every signal (models x samples x views), ``index``, ``label``),
``scores.npz`` (each attack's (targets x samples) scores) and ``roc.png``. An attack whose AUROC
is not finite fails the run (:class:`~curvfast.pipelines.common.contract.RunFailed`, exit status
1) after these files are written.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Subset

from curvfast import parse_device
from curvfast.checkpoints import model_record, save_model
from curvfast.errors import CheckpointError, ConfigError
from curvfast.io import load_checkpoint, map_floats, write_json, write_npz
from curvfast.pipelines.common.augment import AUGMENTATIONS, PADDINGS, image_augmentation
from curvfast.pipelines.common.cache import cached, differences
from curvfast.pipelines.common.contract import RunFailed, config_dict, field_choices, option, run_folder, write_results
from curvfast.pipelines.common.data import DataOptions, as_float, build_network, dataset_labels, load_split, loader, materialise
from curvfast.pipelines.common.dp import dp_compatible, train_dp_model
from curvfast.pipelines.common.multitrain import SCHEDULES, train_subset_models
from curvfast.pipelines.mia import interchange
from curvfast.pipelines.mia.attacks import check_membership
from curvfast.models import parse_normalization
from curvfast.pipelines.mia.evaluate import (
    BASELINE_VIEWS, FPRS, REQUIRED_ATTACKS, attack_metrics, attack_scores, attack_table, is_published_variant, plot_rocs,
)
from curvfast.pipelines.mia.signals import FLIP_SAFE, H_UNITS, SIGNALS, VIEWS, compute_signals, signal_choices

__all__ = ["Config", "PRESETS", "PUBLISHED", "run", "summary", "balanced_keep", "load_population", "natural_order"]

AUGMENTS = ("auto", *AUGMENTATIONS)
# shadows and targets share the DP recipe; BatchNorm becomes the identity so curv_exact stays exact
DP_BATCHNORM = "identity"

# what --published sets: the published Curvature Clues protocol where it differs from ours (docs/mia.md, Deviations)
PUBLISHED = {
    "schedule": "step",            # train/train_cifar10.py: MultiStepLR ×0.1 at int(0.6 E), int(0.8 E)
    "crop_padding": "zeros",       # utils/load_dataset.py: transforms.RandomCrop(img_dim, padding=4)
    "h_units": "normalized",       # precompute_scores/precompute_cifar10_scores.py perturbs the normalised image
    "baseline_views": "published",  # the notebooks' single-signal baselines read one view (aug 0)
    "published_quirk": True,       # the notebooks' attack rules beside ours (curvature, LiRA, Ye et al.)
    "targets": 3,                  # conditonal_mia_aug_cifar10.ipynb: test_seeds = range(end, end + 3)
    "leave_one_out": False,
}
DEFAULT_TARGETS = 4
# the published input normalisation (utils/load_dataset.py; curvfast's "cifar10" uses the images' true std)
PUBLISHED_CIFAR10_NORMALIZE = "0.4914,0.4822,0.4465/0.2023,0.1994,0.2010"

PRESETS = {
    # the tests' settings: seconds on a laptop CPU (the training split: every dataset has one)
    # (curv_exact is left out: on 32x32 RGB it costs about 13 ms per sample, model and view on this CPU)
    "smoke": {"split": "train", "subset_size": 100, "width": 8, "shadows": 4, "targets": 1, "epochs": 2, "probes": 2,
              "signals": ("loss", "conf", "curv_zo")},
    # Curvature Clues as published: train/train_cifar10.py's recipe (300 epochs, SGD lr 0.1 momentum 0.9 ×0.1 at
    # 180 / 240, wd 1e-4, crop (zero padding 4) + flip, the published normalisation) with the batch of 256 that
    # scripts/train_cifar10_shadow_models.sh passes (train_cifar10.py's default is 128); 64 shadows on random halves
    # and 3 fixed targets (conditonal_mia_aug_cifar10.ipynb), identity + flip views, zo h = 1e-3 in normalised units,
    # 10 probes. Ours: the model implementation, device, loader workers, score batch size, every signal.
    "paper": {"dataset": "cifar10", "split": "train", "model": "cifar_resnet18", "normalize": PUBLISHED_CIFAR10_NORMALIZE,
              "augment": "crop-flip", "shadows": 64, "published": True, "epochs": 300, "batch_size": 256, "lr": 0.1,
              "weight_decay": 1e-4, "probes": 10, "device": "cuda", "workers": 4},
}


@dataclass
class Config(DataOptions):
    """The experiment's settings (defaults: the digits recipe of docs/mia.md)."""

    augment: str = option("auto", f"auto: crop-flip for {', '.join(FLIP_SAFE)}, none otherwise and under DP-SGD",
                          choices=AUGMENTS)
    split: str = option("all", "the attacked population: train, test or all (every sample; digits and split-less folders)")
    subset_size: int | None = option(None, "of the split, the population attacked (size sweeps)")
    model: str = option("small_cnn")
    width: int = option(16, "small_cnn channel width")
    shadows: int = option(16, "shadow models")
    targets: int | None = option(None, f"target models (the first --targets checkpoints with --checkpoint); default "
                                       f"{DEFAULT_TARGETS}, {PUBLISHED['targets']} under --published")
    leave_one_out: bool = option(False, "every model is a target in turn, the others its shadows")
    published: bool = option(False, "the published Curvature Clues protocol where it differs: --schedule step "
                                    "--crop-padding zeros --h-units normalized --baseline-views published "
                                    "--published-quirk, 3 targets, no leave-one-out")
    schedule: str = option("cosine", "learning-rate schedule: cosine, or step (x0.1 at 60%% and 80%% of the epochs, "
                                     "published)", choices=SCHEDULES)
    crop_padding: str = option("reflect", "padding of the random crop (published: zeros)", choices=PADDINGS)
    h_units: str = option("pixel", "units of the zo step h: [0, 1] pixels, or normalized by --normalize (published)",
                          choices=H_UNITS)
    baseline_views: str = option("mean", "views read by LOSS, Mentr, Sablayrolles, Watson, Ye: mean over all, or "
                                         "published (the flipped view; Mentr the identity)", choices=BASELINE_VIEWS)
    epochs: int = option(20, "training epochs of every model")
    batch_size: int = option(64)
    lr: float = option(0.05, "SGD learning rate")
    weight_decay: float = option(5e-4, "SGD weight decay")
    seed: int = option(0)
    views: tuple[str, ...] = option(("auto",), f"views of each sample; auto: hflip too for {', '.join(FLIP_SAFE)}",
                                    choices=VIEWS + ("auto",))
    signals: tuple[str, ...] = option(SIGNALS, "membership signals to compute (curv_<estimator>: the input-loss curvature "
                                               "by that estimator)", choices=signal_choices)
    probes: int = option(10, "zo / fd probes (published: 10)")
    score_batch_size: int = option(512, "here: computing the signals")
    dp_epsilon: float | None = option(None)
    dp_delta: float = option(1e-5)
    dp_max_grad_norm: float = option(1.0)
    dp_lr: float = option(1e-3, "RMSprop learning rate of DP-SGD (constant, no schedule)")
    checkpoint: str | None = option(None, "here a FOLDER of such *.pt checkpoints, one per model (natural name order, "
                                          "model_2 before model_10; the first --targets are targets)")
    keep: str | None = option(None, "(models x samples) membership .npy for --checkpoint")
    import_lira: str | None = option(None, "attack a LiRA experiment folder (experiment-*/keep.npy, scores/*.npy)")
    import_matrices: str | None = option(None, "attack ML Privacy Meter style memberships.npy + signals_*.npy")
    export_lira: str | None = option(None, "also write the confidence signal in LiRA's layout here")
    export_matrices: str | None = option(None, "also write samples x models signal / membership matrices here")
    attacks: tuple[str, ...] | None = option(None, "attacks to run (None: every attack whose signal exists)",
                                             choices=lambda: tuple(attack_table()))
    published_quirk: bool = option(False, "also run the published code's attack rules beside ours: curv_*_published "
                                          "(variance as std, ddof 0; LR: ratio of summed likelihoods), curv_*_lr_sum "
                                          "(that aggregation alone), lira_published (max probability), ye_published")
    device: str = option("cpu")
    quiet: bool = option(False)

    def validate(self) -> None:
        """Refuse settings that cannot run, naming the option (:class:`~curvfast.errors.ConfigError`)."""
        parse_device(self.device)
        dataclasses.replace(self, augment=self.resolved_augment()).check_data_options()
        for name in ("signals", "views", "attacks"):
            values, allowed = getattr(self, name), field_choices(Config, name)
            if values is None and name == "attacks":
                continue
            if not values or any(v not in allowed for v in values):
                raise ConfigError(f"--{name} takes a comma-separated subset of {', '.join(allowed)} (got {values!r})")
        if "auto" in self.views and len(self.views) > 1:
            raise ConfigError(f"--views auto stands alone (got {','.join(self.views)})")
        if self.dp_epsilon is not None and not (self.dp_epsilon > 0):
            raise ConfigError(f"--dp-epsilon must be > 0 or inf (got {self.dp_epsilon})")
        if self.checkpoint is None and (self.shadows < 1 or self.num_targets < 1):
            raise ConfigError(f"need --shadows >= 1 and --targets >= 1 (got {self.shadows}, {self.num_targets})")
        if self.published and self.leave_one_out:
            raise ConfigError("--published evaluates fixed targets (the notebooks' 3 test models); drop --leave-one-out "
                              "or --published")
        for name, allowed in (("schedule", SCHEDULES), ("crop_padding", PADDINGS), ("h_units", H_UNITS),
                              ("baseline_views", BASELINE_VIEWS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)} "
                                  f"(got {getattr(self, name)!r})")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1 (got {self.epochs})")
        if self.import_lira and self.import_matrices:
            raise ConfigError("pass one of --import-lira and --import-matrices, not both")
        if self.export_lira and not (self.import_lira or self.import_matrices) and "conf" not in self.signals:
            raise ConfigError("--export-lira writes the confidence signal; include conf in --signals")
        self.resolved_augment()

    @property
    def num_targets(self) -> int:
        """``--targets``, or its default: 4, the published 3 under ``--published``."""
        if self.targets is not None:
            return self.targets
        return PUBLISHED["targets"] if self.published else DEFAULT_TARGETS

    def protocol(self) -> dict:
        """The protocol choices that ran: each option, or its published value (:data:`PUBLISHED`) under ``--published``."""
        names = ("schedule", "crop_padding", "h_units", "baseline_views", "published_quirk")
        chosen = {name: PUBLISHED[name] if self.published else getattr(self, name) for name in names}
        return {**chosen, "targets": self.num_targets, "leave_one_out": self.leave_one_out}

    def zo_normalization(self):
        """``(mean, std)`` of ``--normalize`` when the zo step is in normalised units, else None (pixel units)."""
        return parse_normalization(self.normalize) if self.protocol()["h_units"] == "normalized" else None

    def resolved_views(self) -> tuple[str, ...]:
        """``auto``: the image and its horizontal flip for natural images (:data:`FLIP_SAFE`), the image only otherwise."""
        if self.views != ("auto",):
            return self.views
        return ("identity", "hflip") if self.dataset.lower() in FLIP_SAFE else ("identity",)

    def resolved_augment(self) -> str:
        """``auto``: random crop + horizontal flip for natural images (:data:`FLIP_SAFE`, the papers'
        training), nothing for digits-like data (a flip changes the digit; an 8x8 digit has no margin
        to crop). DP-SGD training takes no augmentation."""
        if self.augment not in AUGMENTS:
            raise ConfigError(f"--augment must be one of {', '.join(AUGMENTS)} (got {self.augment!r})")
        if self.augment != "auto":
            return self.augment
        return "crop-flip" if self.dataset.lower() in FLIP_SAFE and self.dp_epsilon is None else "none"

    def training_key(self) -> dict:
        """What the trained models depend on, as JSON values (the models/settings.json they are reused by)."""
        plain = config_dict(self)
        keys = ("dataset", "split", "image_size", "normalize", "subset_size", "model", "width", "shadows",
                "leave_one_out", "epochs", "batch_size", "lr", "weight_decay", "seed", "dp_epsilon", "dp_delta",
                "dp_max_grad_norm", "dp_lr", "checkpoint", "keep")
        protocol = self.protocol()
        return {**{k: plain[k] for k in keys}, "targets": self.num_targets, "augment": self.resolved_augment(),
                "schedule": protocol["schedule"], "crop_padding": protocol["crop_padding"]}

    def signal_key(self) -> dict:
        """What the signals depend on (recorded in signals.npz, which is reused when it matches)."""
        return {**self.training_key(), "views": list(self.resolved_views()), "signals": list(self.signals), "probes": self.probes,
                "h_units": self.protocol()["h_units"]}

    @property
    def progress(self) -> bool | None:
        return False if self.quiet else None


def balanced_keep(num_models: int, num_samples: int, seed: int = 0) -> np.ndarray:
    """(models, samples) keep matrix in which every sample is IN for exactly ⌊M/2⌋ or ⌈M/2⌉ models.

    Column i ranks M uniform draws and takes the lower half (Carlini et al.'s construction), so
    each model gets a random ~50% subset and every sample is IN and OUT about equally often
    (for odd M, whether a sample gets the extra IN is a fair coin).
    """
    if num_models < 1 or num_samples < 1:
        raise ConfigError(f"need at least 1 model and 1 sample (got {num_models}, {num_samples})")
    rng = np.random.default_rng(seed)
    ranks = rng.random((num_models, num_samples)).argsort(0).argsort(0)
    half = np.where(rng.random(num_samples) < 0.5, num_models // 2, (num_models + 1) // 2)
    return ranks < half


def experiment_keep(config: Config, num_samples: int) -> np.ndarray:
    """Targets' rows then shadows' rows, each group balanced on its own (every sample IN for half the
    shadows, whatever the targets drew); leave-one-out balances all models together."""
    if config.leave_one_out:
        return balanced_keep(config.num_targets + config.shadows, num_samples, config.seed)
    return np.vstack([balanced_keep(config.num_targets, num_samples, config.seed),
                      balanced_keep(config.shadows, num_samples, config.seed + 1)])


def load_population(config: Config):
    """``(population, labels (N,), dataset indices (N,), DatasetInfo)``: the attacked samples as a
    dataset read lazily (the split, or a random ``subset_size`` subset of it, in index order)."""
    dataset, info = load_split(config, config.split)
    labels = torch.as_tensor(dataset_labels(dataset))
    index = np.arange(len(labels))
    if config.subset_size is not None:
        if not 2 <= config.subset_size <= len(labels):
            raise ConfigError(f"--subset-size must be between 2 and the dataset size {len(labels)} (got {config.subset_size})")
        index = np.sort(np.random.default_rng([config.seed, 1]).choice(len(labels), config.subset_size, replace=False))
        dataset = Subset(dataset, index.tolist())
    return dataset, labels[torch.from_numpy(index)].contiguous(), index, info


def _make_model(config: Config, info, input_shape):
    """A zero-argument model factory (normalisation inside; under DP-SGD its BatchNorm layers are
    replaced: :data:`DP_BATCHNORM`) and the checkpoint record that rebuilds its models."""
    kwargs = {"width": config.width} if config.model == "small_cnn" else {}
    record = model_record(config.model, info.num_classes, info.in_channels, normalize=config.normalize,
                          model_kwargs=kwargs, input_shape=input_shape,
                          batchnorm=DP_BATCHNORM if config.dp_epsilon is not None else "batchnorm")
    if config.dp_epsilon is not None:
        return lambda: dp_compatible(build_network(config, config.model, info, input_shape, **kwargs), DP_BATCHNORM), record
    return lambda: build_network(config, config.model, info, input_shape, **kwargs), record


def _train_dp_models(config: Config, make_model, images, labels, keep) -> list:
    """Model m trained on ``images[keep[m]]`` with DP-SGD, built and noised under seed ``config.seed + m``."""
    from tqdm.auto import tqdm

    models = []
    for m in tqdm(range(keep.shape[0]), desc=f"DP-SGD eps={config.dp_epsilon:g}", unit="model",
                  disable=not config.progress if config.progress is not None else None):
        rows = torch.from_numpy(np.flatnonzero(keep[m]))
        model, _ = train_dp_model(make_model, as_float(images[rows]), labels[rows], epsilon=config.dp_epsilon, delta=config.dp_delta,
                                  max_grad_norm=config.dp_max_grad_norm, epochs=config.epochs, batch_size=config.batch_size,
                                  lr=config.dp_lr, seed=config.seed + m, batchnorm=DP_BATCHNORM, device=config.device)
        models.append(model)
    return models


def natural_order(paths) -> list[str]:
    """Sort file names with their digit runs compared as numbers: ``model_2.pt`` before ``model_10.pt``."""
    def key(path):
        return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", os.path.basename(path))]

    return sorted(paths, key=key)


def _load_into(model, path: str, config: Config):
    """``model`` with the weights of checkpoint ``path``, in eval mode; a checkpoint of another shape is refused."""
    try:
        model.load_state_dict(load_checkpoint(path)["state_dict"])
    except RuntimeError as err:  # size mismatch (another class count or width), missing or unexpected keys
        raise CheckpointError(
            f"checkpoint {path!r} does not fit the --model {config.model!r} built for --dataset {config.dataset!r} "
            f"({(str(err).splitlines()[1:] or [str(err)])[0].strip()}); pass the --model, --width and --dataset it was "
            "trained with"
        ) from err
    return model.eval()


def _models_from_checkpoints(config: Config, make_model, num_samples):
    files = natural_order(glob.glob(os.path.join(config.checkpoint, "*.pt")))
    if not files:
        raise FileNotFoundError(f"no *.pt checkpoints in the --checkpoint folder {config.checkpoint!r}")
    if config.keep is None:
        raise ConfigError("--checkpoint FOLDER needs --keep FILE.npy: the (models x samples) membership matrix of those "
                          "checkpoints")
    keep = check_membership(np.load(config.keep), num_samples, need_in=0, need_out=0)
    if keep.shape[0] != len(files):
        raise ConfigError(f"--keep has {keep.shape[0]} rows but {config.checkpoint!r} holds {len(files)} checkpoints: row m of --keep "
                         "must describe the m-th checkpoint in natural name order (model_2.pt before model_10.pt)")
    models = []
    for f in files:
        models.append(_load_into(make_model(), f, config))
    return models, keep


def _train(config: Config, folder: str, make_model, record: dict, population, labels, keep):
    model_dir = os.path.join(folder, "models")
    files = [os.path.join(model_dir, f"model_{m:03d}.pt") for m in range(keep.shape[0])]
    key = config.training_key()
    if all(map(os.path.isfile, files)) and not differences(_read_json(os.path.join(model_dir, "settings.json")), key):
        models = []
        for f in files:
            models.append(_load_into(make_model(), f, config))
        return models, 0.0
    start = time.perf_counter()
    images = materialise(population, config, batch_size=config.score_batch_size)  # uint8 for 8-bit images
    if config.dp_epsilon is not None:
        models = _train_dp_models(config, make_model, images, labels, keep)
    else:
        protocol = config.protocol()
        models = train_subset_models(make_model, images, labels, keep, epochs=config.epochs, batch_size=config.batch_size,
                                     lr=config.lr, weight_decay=config.weight_decay, seed=config.seed,
                                     augment=image_augmentation(config.resolved_augment(), protocol["crop_padding"]),
                                     schedule=protocol["schedule"], device=config.device, progress=config.progress)
    del images
    seconds = time.perf_counter() - start
    for f, model in zip(files, models):
        save_model(f, model, record)
    write_json(os.path.join(model_dir, "settings.json"), key)
    return models, seconds


def _read_json(path):
    """The JSON object in ``path``; None when there is none or it is unreadable (a cache miss)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _load_signals(path):
    """``(recorded settings, arrays)`` of a signals.npz."""
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    return json.loads(str(data.pop("settings"))), data


def _save_signals(path, data, settings):
    write_npz(path, settings=json.dumps(settings), **data)


def _accuracies(correct, keep):
    acc = []
    for c, row in zip(correct, keep):
        acc.append({"in": float(c[row].mean()), "out": float(c[~row].mean()) if (~row).any() else None})
    return acc


def _roles(config: Config, num_models: int):
    if config.leave_one_out:
        return [([t], [m for m in range(num_models) if m != t]) for t in range(num_models)]
    targets = config.num_targets
    if not 1 <= targets < num_models:
        raise ConfigError(f"--targets must be between 1 and the number of models - 1 = {num_models - 1} (got {targets})")
    return [(list(range(targets)), list(range(targets, num_models)))]


def _experiment(config: Config, folder: str) -> dict:
    """Train (or load) the models, compute (or reuse) the signals in ``folder``, attack."""
    t0 = time.perf_counter()
    population, labels, index, info = load_population(config)
    make_model, record = _make_model(config, info, tuple(population[0][0].shape))
    if config.checkpoint is not None:
        models, keep = _models_from_checkpoints(config, make_model, len(labels))
    else:
        keep = experiment_keep(config, len(labels))
        models = None
    for _, shadow_ids in _roles(config, keep.shape[0]):
        check_membership(keep[shadow_ids], need_in=2, need_out=2)
    seconds = {"train": 0.0, "signals": 0.0}

    def compute():
        trained = models
        if trained is None:
            trained, seconds["train"] = _train(config, folder, make_model, record, population, labels, keep)
        start = time.perf_counter()
        data = loader(population, config, batch_size=config.score_batch_size, device=config.device)
        signals, correct = compute_signals(trained, data, signals=config.signals, views=config.resolved_views(),
                                           probes=config.probes, seed=config.seed, indices=torch.from_numpy(index),
                                           device=config.device, progress=config.progress,
                                           zo_normalization=config.zo_normalization())
        seconds["signals"] = time.perf_counter() - start
        return {"keep": keep, "index": index, "label": labels.numpy(), "accuracy": json.dumps(_accuracies(correct, keep)),
                **signals}

    stored, _ = cached(os.path.join(folder, "signals.npz"), config.signal_key(), compute, load=_load_signals,
                       save=_save_signals)
    signals = {s: stored[s] for s in config.signals}
    return _attack_and_report(config, folder, signals, stored["keep"], json.loads(str(stored["accuracy"])), t0,
                              seconds["train"], seconds["signals"])


def _imported(config: Config, folder: str) -> dict:
    """Attacks only, on signals computed elsewhere (LiRA's layout or ML Privacy Meter's matrices)."""
    if config.import_lira:
        keep, conf = interchange.import_lira(config.import_lira)
        signals = {"conf": conf}
    else:
        keep, signals = interchange.import_matrices(config.import_matrices)
    keep = check_membership(keep, need_in=0, need_out=0)
    signals = {k: (v[..., None] if v.ndim == 2 else v) for k, v in signals.items()}
    write_npz(os.path.join(folder, "signals.npz"), keep=keep, **signals)
    return _attack_and_report(config, folder, signals, keep, None, time.perf_counter(), 0.0, 0.0)


def _export(config: Config, folder: str) -> None:
    """``--export-lira`` / ``--export-matrices``: the run's signals in the other tools' layouts."""
    with np.load(os.path.join(folder, "signals.npz")) as z:
        signals = {k: z[k] for k in signal_choices() if k in z.files}
        keep = z["keep"]
    if config.export_lira:
        if "conf" not in signals:
            raise ConfigError("--export-lira writes the confidence signal, and these signals have none")
        interchange.export_lira(config.export_lira, keep, signals["conf"])
    if config.export_matrices:
        interchange.export_matrices(config.export_matrices, keep, signals)


def run(config: Config, out: str | None = None) -> dict:
    """Run the experiment (or attack imported signals) into the run folder ``out``; returns the
    ``results.json`` content. Raises :class:`RunFailed` after writing it when an attack's AUROC is
    not finite."""
    config.validate()
    with run_folder(out) as folder:
        results = _imported(config, folder) if config.import_lira or config.import_matrices else _experiment(config, folder)
        if config.export_lira or config.export_matrices:
            _export(config, folder)
        bad = [n for n, a in results["attacks"].items() if not math.isfinite(a["auroc"])]
        for name in bad:  # undefined metrics are written as null (results.json is strict JSON)
            results["attacks"][name] = map_floats(results["attacks"][name], lambda v: v if math.isfinite(v) else None)
        write_results(folder, results)
    if bad:
        raise RunFailed(f"no finite AUROC for {', '.join(bad)}; results.json records the run")
    return results


def summary(results: dict) -> dict:
    """What ``curvfast mia`` prints: run time, mean accuracies, and each attack's AUROC and TPR at 1% FPR."""
    return {"seconds": results["seconds"], "accuracy": {k: v for k, v in results["accuracy"].items() if k != "per_model"},
            "attacks": {n: {"auroc": round(a["auroc"], 4), "tpr@1%": round(a["tpr_at_fpr"]["0.01"], 4)}
                        for n, a in results["attacks"].items()}}


def _attack_and_report(config: Config, folder: str, signals, keep, accuracy, t0, train_seconds, signal_seconds) -> dict:
    names, protocol = config.attacks, config.protocol()
    if names is None:
        names = [n for n, (sig, _) in attack_table().items()
                 if sig in signals and (protocol["published_quirk"] or not is_published_variant(n))]
    roles = _roles(config, keep.shape[0])
    scores = {n: [] for n in names}
    targets = []
    views = config.resolved_views() if not (config.import_lira or config.import_matrices) else None
    for t_ids, s_ids in roles:
        for name, s in attack_scores(signals, keep, t_ids, s_ids, names, views=views,
                                     baseline_views=protocol["baseline_views"]).items():
            scores[name].append(s)
        targets += t_ids
    scores = {n: np.concatenate(v) for n, v in scores.items()}
    members = keep[targets]
    attacks = {n: attack_metrics(s, members, FPRS) for n, s in scores.items()}
    missing = [n for n in REQUIRED_ATTACKS if n not in attacks]
    plot_rocs(scores, members, os.path.join(folder, "roc.png"),
              title=f"{config.dataset}, {len(targets)} targets, {keep.shape[0] - (1 if config.leave_one_out else len(targets))} shadows")
    write_npz(os.path.join(folder, "scores.npz"), targets=np.array(targets), members=members, **scores)
    acc_in = [a["in"] for a in accuracy or []]
    acc_out = [a["out"] for a in accuracy or [] if a["out"] is not None]
    results = {
        "settings": {**config_dict(config), "augment_used": config.resolved_augment(), "views_used": list(config.resolved_views()),
                     "protocol": protocol},
        "population": {"samples": int(keep.shape[1]), "models": int(keep.shape[0]), "targets": targets,
                       "in_fraction": float(keep.mean())},
        "accuracy": {"train_mean": float(np.mean(acc_in)) if acc_in else None, "heldout_mean": float(np.mean(acc_out)) if acc_out else None,
                     "per_model": accuracy},
        "attacks": attacks,
        "not_computed": missing,
        "notes": "balanced_accuracy picks its threshold on the evaluated target itself (optimistic); "
                 "balanced_accuracy_eer is at the equal-error threshold, as the published notebooks compute it. "
                 f"TPR at FPR below {1 / max(1, (~members).sum(1).min()):.2g} rests on fewer than one non-member.",
        "seconds": {"train": round(train_seconds, 1), "signals": round(signal_seconds, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    }
    return results
