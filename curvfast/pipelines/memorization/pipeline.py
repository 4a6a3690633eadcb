"""``curvfast memorization``: memorization ground truth, the curvature proxy, mislabel detection, DP-SGD.

Stages (all on the training split of the dataset, N samples):
1. Feldman memorization (Feldman & Zhang, "What Neural Networks Memorize and Why", NeurIPS 2020):
   ``models`` models on random ``fraction`` subsets (shared stacked trainer),
   mem(i) = P[f(x_i) = y_i | i ∈ S] − P[f(x_i) = y_i | i ∉ S] with Newcombe 95% intervals (:mod:`.feldman`).
2. Curvature proxy (Garg et al., "Memorization Through the Lens of Curvature of Loss Function Around
   Samples", ICML 2024): ``proxy_models`` models on the full split, scored after every epoch →
   curvature averaged over epochs and models (:mod:`.trajectory`); agreement with mem.
3. Mislabel detection: ``noise`` of the labels flipped; curvature / loss averaged over training
   and cleanlab confident learning (Northcutt et al., JAIR 2021) on cross-validated probabilities
   → AUROC (:mod:`.mislabel`).
4. Optional (``dp=True``): DP-SGD sweep over ε with the bounds of Ravikumar et al., "Unveiling
   Privacy, Memorization, and Input Curvature Links" (ICML 2024) (:mod:`.dp`).

Writes ``results.json``, ``scores.npz`` (aligned with the split's index), ``mislabel.npz`` and PNGs.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

import curvfast.curvature as curvature
from curvfast import __version__, parse_device
from curvfast.errors import ConfigError, UnknownNameError
from curvfast.io import write_npz
from curvfast.pipelines.common.contract import config_dict, field_choices, option, run_folder, write_results
from curvfast.pipelines.common.data import DataOptions, as_float, dataset_labels, load_split, materialise
from curvfast.pipelines.common.multitrain import SCHEDULES, train_subset_models
from curvfast.plots import image_grid
from curvfast.pipelines.memorization.agreement import agreement
from curvfast.pipelines.memorization.dp import (BOUND_FORMS, DESIGNS, PUBLISHED_EPSILONS, dp_sweep,
                                                fit_unveiling_bounds)
from curvfast.pipelines.memorization.feldman import label_predictions, memorization_scores, random_subsets
from curvfast.pipelines.memorization.figures import dp_plot, histograms, sample_caption, scatter_plot
from curvfast.pipelines.memorization.mislabel import cleanlab_scores, cross_val_pred_probs, flip_labels, mislabel_report
from curvfast.pipelines.memorization.models import model_factory
from curvfast.pipelines.memorization.trajectory import curvature_trajectory

__all__ = ["Config", "PRESETS", "PUBLISHED", "run", "summary"]

CIFAR100_NORMALIZATION = "0.5071,0.4865,0.4409/0.2673,0.2564,0.2762"  # CIFAR-100 training set's channel mean / std

PRESETS = {
    # the tests' settings: seconds on a laptop CPU
    "smoke": {"subset_models": 4, "epochs": 2, "width": 16, "proxy_models": 1, "folds": 2, "top": 8, "dp_models": 2, "dp_epochs": 1,
              "dp_epsilons": (8.0,)},
    # Garg et al. / Feldman & Zhang on CIFAR-100: ResNet-18 with crop-flip on 70% subsets, SGD lr 0.1 momentum 0.9,
    # wd 1e-4, 300 epochs, ×0.1 steps at 60%/80%, the published protocol (--published); subset_models, batch_size,
    # models_per_pass and proxy_models are ours (docs/memorization.md, "Deviations from the published code")
    "paper": {"dataset": "cifar100", "model": "cifar_resnet18", "normalize": CIFAR100_NORMALIZATION, "augment": "crop-flip",
              "subset_models": 2000, "fraction": 0.7, "epochs": 300, "batch_size": 128, "lr": 0.1, "weight_decay": 1e-4,
              "published": True, "models_per_pass": 8, "proxy_models": 2, "device": "cuda", "workers": 4},
}

#: what ``--published`` sets (each field only where it is left at its default; docs/memorization.md, Deviations):
#: Garg et al.'s fd statistic with its h and probes scored at every 4th epoch (``score_imagenet_checkpoint.py``) after
#: a ×0.1 step schedule (``train_imagenet.py``), Unveiling's ε grid, memorization design, DP batch size and fitted
#: curve (``scripts/create_privacy_vs_curve_dp_train_jobs.sh``, ``create_index_for_private_mem.py``,
#: ``curv_privacy.ipynb``)
PUBLISHED = {"method": "fd", "probes": 10, "step": 1e-3, "score_every": 4, "lr_schedule": "step",
             "dp_epsilons": PUBLISHED_EPSILONS, "dp_design": "published", "dp_fraction": 0.7, "dp_batch_size": 256,
             "bound_form": "published"}


@dataclass
class Config(DataOptions):
    """The pipeline's settings (defaults: the digits recipe of docs/memorization.md)."""

    model: str = option("mlp")
    width: int | None = option(None, "model width (mlp: hidden units, small_cnn: channels); "
                                     "unset: the model's default, mlp 256, small_cnn 32")
    subset_models: int = option(64, "subset models for the Feldman memorization estimate")
    fraction: float = option(0.7, "subset fraction per model")
    # no early stop: long enough to fit (memorize) the flipped labels, the papers' premise
    epochs: int = option(100, "training epochs of the subset, proxy and mislabel models")
    batch_size: int = option(32)
    lr: float = option(0.1, "SGD learning rate")
    # no weight decay: memorization needs models that fit their training set
    weight_decay: float = option(0.0, "SGD weight decay")
    lr_schedule: str = option("cosine", "learning-rate schedule of the proxy and mislabel runs (step: x0.1 at 60% "
                                        "and 80% of the epochs, published); subset and fold models keep the cosine",
                              choices=SCHEDULES)
    published: bool = option(False, "the published protocol: fd statistic (h 1e-3, 10 probes) every 4th epoch, "
                                    "step schedule, Unveiling's eps grid, memorization design, DP batch 256 and "
                                    "fitted curve (each only where its option is left at the default)")
    models_per_pass: int = option(64, "models trained together in one stacked pass")
    # stacked vmap training: measured faster than looping for the MLP on this CPU
    loop: bool = option(False, "train models one by one per step instead of stacked (vmap)")
    proxy_models: int = option(2, "full-data runs whose per-epoch curvature is averaged")
    method: str = option("auto", choices=lambda: curvature.METHODS)
    probes: int | None = option(None, "probes of the random curvature estimators; None: the estimator's default")
    step: float = option(1e-3, "finite-difference step h of --method fd|zo")
    score_every: int = option(1, "score the checkpoints of epochs 1, 1+k, 1+2k, ... (published: every 4th)")
    compare_methods: tuple[str, ...] = option((), "also score the same checkpoints with these estimators (e.g. fd); "
                                                  "agreement and mislabel AUROC under compare_methods",
                                              choices=lambda: curvature.METHODS)
    confidence: float = option(0.95, "confidence level of the memorization intervals")
    noise: float = option(0.1, "fraction of labels flipped for mislabel detection")
    folds: int = option(5, "cross-validation folds for cleanlab's probabilities")
    dp: bool = option(False, "also run the DP-SGD sweep (Opacus)")
    dp_epsilons: tuple[float, ...] = option((1.0, 2.0, 4.0, 8.0, 16.0, 50.0), "privacy budgets ε of the DP-SGD sweep")
    dp_models: int = option(4, "DP models per ε (random subsets)")
    dp_fraction: float = option(0.5, "subset fraction per DP model (published design: of the samples outside the top)")
    dp_design: str = option("subsets", "DP membership: subsets (each sample IN with --dp-fraction) or published "
                                       "(Unveiling: --dp-fraction of the rest plus half of the top memorized)",
                            choices=DESIGNS)
    dp_top_fraction: float = option(0.01, "share of the training set counted as most memorized by stage 1 for "
                                          "--dp-design published (published: 500 of 50,000)")
    bound_form: str = option("linear", "curve fitted to mean curvature against eps: linear A(1-e^-eps)+c2 (ours) or "
                                       "published (a+b e^-c eps) d (1-e^-eps)+e", choices=BOUND_FORMS)
    dp_epochs: int = option(20, "DP-SGD epochs")
    dp_lr: float = option(1e-3, "RMSprop learning rate of DP-SGD (constant, no schedule)")
    dp_batch_size: int = option(64, "expected Poisson batch size of DP-SGD")
    dp_delta: float = option(1e-5)
    dp_max_grad_norm: float = option(1.0)
    top: int = option(32, "images in the top-memorized / top-curvature grids")
    seed: int = option(0)
    score_batch_size: int = option(512, "here: scoring curvature")
    device: str = option("cpu")
    quiet: bool = option(False)

    def validate(self) -> None:
        """Refuse settings that cannot run, naming the option (:class:`~curvfast.errors.ConfigError`)."""
        self.check_data_options()
        parse_device(self.device)
        for name in ("subset_models", "epochs", "batch_size", "proxy_models", "folds", "dp_models", "dp_epochs", "dp_batch_size",
                     "top", "models_per_pass", "score_batch_size", "score_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.subset_models < 2:
            raise ConfigError(f"--subset-models must be >= 2 so every sample has IN and OUT models (got {self.subset_models})")
        if not self.step > 0:
            raise ConfigError(f"--step must be > 0 (got {self.step})")
        for name in ("fraction", "dp_fraction", "confidence", "dp_top_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be in (0, 1) (got {getattr(self, name)})")
        if not self.dp_epsilons or not all(e > 0 for e in self.dp_epsilons):
            raise ConfigError(f"--dp-epsilons needs positive values such as 1,2,4,8 (got {self.dp_epsilons})")
        if self.method not in field_choices(Config, "method"):
            raise UnknownNameError(f"--method must be one of {', '.join(field_choices(Config, 'method'))} (got {self.method!r})")

    def applied(self) -> tuple["Config", dict]:
        """``(config, published)``: with ``published`` on, the config with every :data:`PUBLISHED` value set
        where the field is still at its default (a value given explicitly is kept), and the values set."""
        if not self.published:
            return self, {}
        defaults = {f.name: f.default for f in dataclasses.fields(Config)}
        chosen = {k: v for k, v in PUBLISHED.items() if getattr(self, k) == defaults[k]}
        return dataclasses.replace(self, **chosen), chosen


def _training_tensors(config: Config, dataset):
    """The training split as (N, C, H, W) images and (N,) labels: what training many models on random
    subsets needs (each step gathers one batch per model). 8-bit images are held as uint8 (N·C·H·W bytes;
    ``common.data.materialise``), every consumer restores their float32 values bit for bit."""
    images = materialise(dataset, config, batch_size=config.score_batch_size)
    return images, torch.from_numpy(dataset_labels(dataset))


def _grid(images, order, titles, path, suptitle):
    image_grid(as_float(images[order]).numpy(), titles, path, suptitle=suptitle)


def run(config: Config, out: str | None = None) -> dict:
    """Run every stage and write the run folder ``out``; returns the results (also in results.json)."""
    config.validate()
    config.applied()[0].validate()
    with run_folder(out) as folder:
        return write_results(folder, _stages(config, folder))


def summary(results: dict) -> dict:
    """What ``curvfast memorization`` prints: the headline numbers of each stage."""
    shown = {k: results[k] for k in ("memorization", "correlation", "mislabel_auroc", "flipped_labels_fitted", "seconds")}
    shown["mislabel_trivial_baselines"] = results["mislabel"]["trivial_baselines"]
    if "dp" in results:
        shown["dp"] = [{k: r[k] for k in ("epsilon", "accuracy", "mean_curvature", "mean_memorization", "mia_auroc")}
                       for r in results["dp"]]
    return shown


def _stages(config: Config, out: str) -> dict:
    config, published = config.applied()
    progress = False if config.quiet else None
    start = time.perf_counter()
    train, info = load_split(config, "train")
    test, _ = load_split(config, "test")  # streamed from its source whenever it is read
    images, targets = _training_tensors(config, train)
    n = len(targets)
    make = model_factory(config.model, info.num_classes, tuple(images.shape[1:]), config.width, config.normalize)
    common = dict(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
                  models_per_pass=config.models_per_pass, stack=not config.loop, augment=config.augmentation(),
                  device=config.device)
    predictions = dict(device=config.device)  # batches of 1024 samples
    seconds = {}

    # 1. Feldman memorization: each group of models is scored as soon as it is trained, then dropped
    t = time.perf_counter()
    keep = random_subsets(config.subset_models, n, config.fraction, config.seed)
    correct, p_label = np.empty(keep.shape, dtype=bool), np.empty(keep.shape)
    test_acc = np.empty(config.subset_models)

    def score_group(ids, group):
        correct[ids], p_label[ids] = label_predictions(group, images, targets, **predictions)
        test_acc[ids] = label_predictions(group, test, **predictions)[0].mean(1)

    train_subset_models(make, images, targets, keep, seed=config.seed, progress=progress, on_group=score_group, **common)
    est = memorization_scores(correct, keep, config.confidence)
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN for samples never IN or never OUT
        soft_mem = np.where(keep, p_label, 0).sum(0) / keep.sum(0) - np.where(~keep, p_label, 0).sum(0) / (~keep).sum(0)
    seconds["memorization"] = time.perf_counter() - t

    # 2. curvature averaged over training epochs
    t = time.perf_counter()
    full = np.ones((config.proxy_models, n), dtype=bool)
    scoring = dict(method=config.method, probes=config.probes, score_seed=config.seed,
                   score_batch_size=config.score_batch_size, score_every=config.score_every, step=config.step,
                   extra_methods=config.compare_methods, schedule=config.lr_schedule)
    traj = curvature_trajectory(make, images, targets, full, **scoring,
                                seed=config.seed + 10_000, progress=progress, **common)
    curv_avg, curv_final, loss_avg = traj.averaged(), traj.final(), traj.averaged("loss")
    seconds["curvature_trajectory"] = time.perf_counter() - t
    correlation = agreement(curv_avg, est.mem)
    comparisons = {"final_epoch_curvature": agreement(curv_final, est.mem), "loss_averaged_over_epochs": agreement(loss_avg, est.mem),
                   "curvature_vs_soft_memorization": agreement(curv_avg, soft_mem)}

    # 3. mislabel detection
    t = time.perf_counter()
    noisy, flipped = flip_labels(targets, config.noise, info.num_classes, config.seed)
    ntraj = curvature_trajectory(make, images, noisy, full, **scoring,
                                 seed=config.seed + 20_000, progress=progress, **common)
    pred_probs = cross_val_pred_probs(make, images, noisy, folds=config.folds, seed=config.seed + 30_000, progress=progress, **common)
    cl_score, cl_issues = cleanlab_scores(noisy.numpy(), pred_probs)
    mis_scores = {"curvature": ntraj.averaged(), "loss": ntraj.averaged("loss"), "cleanlab": cl_score,
                  "curvature_final_epoch": ntraj.final(), "loss_final_epoch": ntraj.final("loss")}
    mislabel = mislabel_report(mis_scores, flipped, cl_issues)
    fits_noisy = label_predictions(ntraj.models, images, noisy, **predictions)[0].mean(0)  # (N,) over proxy models
    mislabel["final_fit_of_noisy_labels"] = {"flipped": float(fits_noisy[flipped].mean()), "clean": float(fits_noisy[~flipped].mean())}
    shuffled = np.random.default_rng(config.seed).permutation(mis_scores["curvature"])
    mislabel["trivial_baselines"] = {"constant": 0.5, "shuffled_curvature": mislabel_report({"s": shuffled}, flipped)["auroc"]["s"]}
    compared = {m: {"correlation": agreement(traj.averaged(m), est.mem),
                    "mislabel_auroc": mislabel_report({"averaged": ntraj.averaged(m), "final_epoch": ntraj.final(m)},
                                                      flipped)["auroc"]}
                for m in config.compare_methods}
    seconds["mislabel"] = time.perf_counter() - t

    # 4. DP-SGD
    dp_rows, bounds = None, None
    if config.dp:
        t = time.perf_counter()
        dp_rows = dp_sweep(make, images, targets, test, epsilons=config.dp_epsilons, models=config.dp_models,
                           fraction=config.dp_fraction, delta=config.dp_delta, epochs=config.dp_epochs, batch_size=config.dp_batch_size,
                           lr=config.dp_lr, max_grad_norm=config.dp_max_grad_norm, method=config.method, probes=config.probes,
                           step=config.step, seed=config.seed + 40_000, design=config.dp_design,
                           top=np.argsort(-np.nan_to_num(est.mem, nan=-2), kind="stable")[
                               :max(2, round(config.dp_top_fraction * n))],
                           score_batch_size=config.score_batch_size, device=config.device, progress=progress)
        bounds = fit_unveiling_bounds(dp_rows, config.bound_form)
        dp_plot(dp_rows, bounds, os.path.join(out, "dp.png"))
        seconds["dp"] = time.perf_counter() - t

    # files
    write_npz(os.path.join(out, "scores.npz"), index=np.arange(n), label=targets.numpy(), memorization=est.mem,
              mem_ci_low=est.ci_low, mem_ci_high=est.ci_high, p_in=est.p_in, p_out=est.p_out, n_in=est.n_in, n_out=est.n_out,
              soft_memorization=soft_mem, curvature=curv_avg, curvature_final=curv_final, loss=loss_avg,
              curvature_per_epoch=traj.curvature, loss_per_epoch=traj.loss, scored_epochs=np.asarray(traj.epochs),
              **{f"curvature_{m}": traj.averaged(m) for m in config.compare_methods})
    write_npz(os.path.join(out, "mislabel.npz"), index=np.arange(n), label=targets.numpy(), noisy_label=noisy.numpy(),
              flipped=flipped, cleanlab_issue=cl_issues, pred_probs=pred_probs, **mis_scores)
    scatter_plot(curv_avg, est.mem, os.path.join(out, "curvature_vs_memorization.png"), yerr=(est.mem - est.ci_low, est.ci_high - est.mem),
                 xlabel=f"input-loss curvature ({config.method}), averaged over scored epochs",
                 ylabel="memorization mem(i) (95% CI)",
                 title=f"{config.dataset}: " + ", ".join(
                     f"{name.capitalize()} " + ("undefined" if correlation[name] is None else f"{correlation[name]:.3f}")
                     for name in ("pearson", "spearman", "cosine")))
    histograms([("memorization mem(i)", {"all": est.mem}, False), ("curvature averaged over epochs", {"all": curv_avg}, True),
                ("mislabel run: curvature",
                 {"clean": mis_scores["curvature"][~flipped], "flipped": mis_scores["curvature"][flipped]}, True)],
               os.path.join(out, "histograms.png"))
    top_mem = np.argsort(-np.nan_to_num(est.mem, nan=-2))[: config.top]
    def caption(i: int) -> str:
        return sample_caption(train, int(i), int(targets[i]))

    _grid(images, top_mem, [f"{caption(i)}\nmem={est.mem[i]:.2f} c={curv_avg[i]:.2g}" for i in top_mem],
          os.path.join(out, "top_memorized.png"), f"most memorized {config.dataset} training images (mem, curvature)")
    top_curv = np.argsort(-curv_avg)[: config.top]
    _grid(images, top_curv, [f"{caption(i)}\nc={curv_avg[i]:.2g} mem={est.mem[i]:.2f}" for i in top_curv],
          os.path.join(out, "top_curvature.png"), f"highest epoch-averaged curvature ({config.dataset})")

    results = {
        "settings": {**config_dict(config), "published_applied": published, "scored_epochs": traj.epochs,
                     "train_size": n, "curvature_method": config.method, "curvfast": __version__, "torch": torch.__version__},
        "memorization": {**est.summary(), "subset_model_test_accuracy": float(test_acc.mean()),
                         "subset_model_train_accuracy_in": float(correct[keep].mean())},
        "correlation": correlation,
        "correlation_baselines": comparisons,
        "mislabel_auroc": mislabel["auroc"],
        "flipped_labels_fitted": mislabel["final_fit_of_noisy_labels"]["flipped"],
        "mislabel": mislabel,
        "compare_methods": compared,
        "seconds": {k: round(v, 1) for k, v in {**seconds, "total": time.perf_counter() - start}.items()},
    }
    if dp_rows is not None:
        results["dp"] = dp_rows
        results["dp_bounds"] = bounds
    return results
