"""``curvfast memorization``: memorization ground truth, the curvature proxy, mislabel detection, DP-SGD.

Stages (all on the training split of the dataset, N samples):
1. Feldman memorization: ``models`` models on random ``fraction`` subsets (shared stacked
   trainer) → mem(i) with Newcombe 95% intervals (:mod:`.feldman`).
2. Curvature proxy: ``proxy_models`` models on the full split, scored after every epoch →
   curvature averaged over epochs and models (:mod:`.trajectory`); agreement with mem.
3. Mislabel detection: ``noise`` of the labels flipped; curvature / loss averaged over training
   and cleanlab confident learning on cross-validated probabilities → AUROC (:mod:`.mislabel`).
4. Optional (``dp=True``): DP-SGD sweep over ε with the Unveiling bounds (:mod:`.dp`).

Writes ``results.json``, ``scores.npz`` (aligned with the split's index), ``mislabel.npz`` and PNGs.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from curvfast import __version__
from curvfast.data import get_dataset
from curvfast.io import write_json, write_npz
from curvfast.pipelines.common.multitrain import train_subset_models
from curvfast.pipelines.common.plots import image_grid
from curvfast.pipelines.memorization.agreement import agreement
from curvfast.pipelines.memorization.dp import dp_sweep, fit_unveiling_bounds
from curvfast.pipelines.memorization.feldman import memorization_scores, predict, random_subsets
from curvfast.pipelines.memorization.figures import dp_plot, histograms, scatter_plot
from curvfast.pipelines.memorization.mislabel import cleanlab_scores, cross_val_pred_probs, mislabel_report, flip_labels
from curvfast.pipelines.memorization.models import model_factory
from curvfast.pipelines.memorization.trajectory import curvature_trajectory

__all__ = ["MemorizationConfig", "run_memorization"]


@dataclass
class MemorizationConfig:
    dataset: str = "digits"
    root: str | None = None
    model: str = "mlp"
    width: int | None = None     # mlp: 256, small_cnn: 32
    models: int = 64             # Feldman subset models
    fraction: float = 0.7
    epochs: int = 100           # no early stop: long enough to fit (memorize) the flipped labels, the papers' premise
    batch_size: int = 32
    lr: float = 0.1
    weight_decay: float = 0.0    # no weight decay: memorization needs models that fit their training set
    models_per_pass: int = 64
    stack: bool = True           # stacked vmap training; measured faster than looping for the MLP on this CPU
    proxy_models: int = 2        # full-data runs whose per-epoch curvature is averaged
    method: str = "auto"
    probes: int | None = None
    confidence: float = 0.95
    noise: float = 0.1
    folds: int = 5
    dp: bool = False
    dp_epsilons: tuple[float, ...] = (1, 2, 4, 8, 16, 50)
    dp_models: int = 4
    dp_fraction: float = 0.5
    dp_epochs: int = 20
    dp_lr: float = 1e-3
    dp_batch_size: int = 64
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    top: int = 32
    seed: int = 0
    progress: bool | None = None


def _tensors(dataset):
    if hasattr(dataset, "images") and hasattr(dataset, "targets"):
        return dataset.images.float(), torch.as_tensor(dataset.targets).long()
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]).float(), torch.tensor([int(y) for _, y in items])


def _check(cfg: MemorizationConfig) -> None:
    for name in ("models", "epochs", "batch_size", "proxy_models", "folds", "dp_models", "dp_epochs", "top", "models_per_pass"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1 (got {getattr(cfg, name)})")
    if cfg.models < 2:
        raise ValueError(f"models must be >= 2 so every sample has IN and OUT models (got {cfg.models})")


def _grid(images, order, titles, path, suptitle):
    image_grid(images[order].numpy(), titles, path, suptitle=suptitle)


def run_memorization(cfg: MemorizationConfig, out: str) -> dict:
    """Run every stage and write the run folder ``out``; returns the results dict (also in results.json)."""
    _check(cfg)
    start = time.perf_counter()
    train, info = get_dataset(cfg.dataset, "train", root=cfg.root)
    test, _ = get_dataset(cfg.dataset, "test", root=cfg.root)
    images, targets = _tensors(train)
    test_images, test_targets = _tensors(test)
    n = len(targets)
    make = model_factory(cfg.model, info.num_classes, tuple(images.shape[1:]), cfg.width)
    common = dict(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                  models_per_pass=cfg.models_per_pass, stack=cfg.stack)
    seconds = {}
    os.makedirs(out, exist_ok=True)

    # 1. Feldman memorization
    t = time.perf_counter()
    keep = random_subsets(cfg.models, n, cfg.fraction, cfg.seed)
    models = train_subset_models(make, images, targets, keep, seed=cfg.seed, progress=cfg.progress, **common)
    probs = predict(models, images)
    correct = probs.argmax(-1) == targets.numpy()[None]
    est = memorization_scores(correct, keep, cfg.confidence)
    p_label = probs[:, np.arange(n), targets.numpy()]
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN for samples never IN or never OUT
        soft_mem = np.where(keep, p_label, 0).sum(0) / keep.sum(0) - np.where(~keep, p_label, 0).sum(0) / (~keep).sum(0)
    test_acc = (predict(models, test_images).argmax(-1) == test_targets.numpy()[None]).mean(1)
    del models, probs
    seconds["memorization"] = time.perf_counter() - t

    # 2. curvature averaged over training epochs
    t = time.perf_counter()
    full = np.ones((cfg.proxy_models, n), dtype=bool)
    traj = curvature_trajectory(make, images, targets, full, method=cfg.method, probes=cfg.probes, score_seed=cfg.seed,
                                seed=cfg.seed + 10_000, progress=cfg.progress, **common)
    curv_avg, curv_final, loss_avg = traj.averaged(), traj.final(), traj.averaged("loss")
    seconds["curvature_trajectory"] = time.perf_counter() - t
    correlation = agreement(curv_avg, est.mem)
    comparisons = {"final_epoch_curvature": agreement(curv_final, est.mem), "loss_averaged_over_epochs": agreement(loss_avg, est.mem),
                   "curvature_vs_soft_memorization": agreement(curv_avg, soft_mem)}

    # 3. mislabel detection
    t = time.perf_counter()
    noisy, flipped = flip_labels(targets, cfg.noise, info.num_classes, cfg.seed)
    ntraj = curvature_trajectory(make, images, noisy, full, method=cfg.method, probes=cfg.probes, score_seed=cfg.seed,
                                 seed=cfg.seed + 20_000, progress=cfg.progress, **common)
    pred_probs = cross_val_pred_probs(make, images, noisy, folds=cfg.folds, seed=cfg.seed + 30_000, progress=cfg.progress, **common)
    cl_score, cl_issues = cleanlab_scores(noisy.numpy(), pred_probs)
    mis_scores = {"curvature": ntraj.averaged(), "loss": ntraj.averaged("loss"), "cleanlab": cl_score,
                  "curvature_final_epoch": ntraj.final(), "loss_final_epoch": ntraj.final("loss")}
    mislabel = mislabel_report(mis_scores, flipped, cl_issues)
    fits_noisy = (predict(ntraj.models, images).argmax(-1) == noisy.numpy()[None]).mean(0)  # (N,) over proxy models
    mislabel["final_fit_of_noisy_labels"] = {"flipped": float(fits_noisy[flipped].mean()), "clean": float(fits_noisy[~flipped].mean())}
    shuffled = np.random.default_rng(cfg.seed).permutation(mis_scores["curvature"])
    mislabel["trivial_baselines"] = {"constant": 0.5, "shuffled_curvature": mislabel_report({"s": shuffled}, flipped)["auroc"]["s"]}
    seconds["mislabel"] = time.perf_counter() - t

    # 4. DP-SGD
    dp_rows, bounds = None, None
    if cfg.dp:
        t = time.perf_counter()
        dp_rows = dp_sweep(make, images, targets, test_images, test_targets, epsilons=cfg.dp_epsilons, models=cfg.dp_models,
                           fraction=cfg.dp_fraction, delta=cfg.delta, epochs=cfg.dp_epochs, batch_size=cfg.dp_batch_size,
                           lr=cfg.dp_lr, max_grad_norm=cfg.max_grad_norm, method=cfg.method, probes=cfg.probes,
                           seed=cfg.seed + 40_000, progress=cfg.progress)
        bounds = fit_unveiling_bounds(dp_rows)
        dp_plot(dp_rows, bounds, os.path.join(out, "dp.png"))
        seconds["dp"] = time.perf_counter() - t

    # files
    write_npz(os.path.join(out, "scores.npz"), index=np.arange(n), label=targets.numpy(), memorization=est.mem,
              mem_ci_low=est.ci_low, mem_ci_high=est.ci_high, p_in=est.p_in, p_out=est.p_out, n_in=est.n_in, n_out=est.n_out,
              soft_memorization=soft_mem, curvature=curv_avg, curvature_final=curv_final, loss=loss_avg,
              curvature_per_epoch=traj.curvature, loss_per_epoch=traj.loss)
    write_npz(os.path.join(out, "mislabel.npz"), index=np.arange(n), label=targets.numpy(), noisy_label=noisy.numpy(),
              flipped=flipped, cleanlab_issue=cl_issues, pred_probs=pred_probs, **mis_scores)
    scatter_plot(curv_avg, est.mem, os.path.join(out, "curvature_vs_memorization.png"), yerr=(est.mem - est.ci_low, est.ci_high - est.mem),
                 xlabel="input-loss curvature (trace), averaged over epochs", ylabel="memorization mem(i) (95% CI)",
                 title=f"{cfg.dataset}: Pearson {correlation['pearson']:.3f}, Spearman {correlation['spearman']:.3f}, cosine {correlation['cosine']:.3f}")
    histograms([("memorization mem(i)", {"all": est.mem}, False), ("curvature averaged over epochs", {"all": curv_avg}, True),
                ("mislabel run: curvature", {"clean": mis_scores["curvature"][~flipped], "flipped": mis_scores["curvature"][flipped]}, True)],
               os.path.join(out, "histograms.png"))
    top_mem = np.argsort(-np.nan_to_num(est.mem, nan=-2))[: cfg.top]
    _grid(images, top_mem, [f"#{i} y={int(targets[i])}\nmem={est.mem[i]:.2f} c={curv_avg[i]:.2g}" for i in top_mem],
          os.path.join(out, "top_memorized.png"), f"most memorized {cfg.dataset} training images (mem, curvature)")
    top_curv = np.argsort(-curv_avg)[: cfg.top]
    _grid(images, top_curv, [f"#{i} y={int(targets[i])}\nc={curv_avg[i]:.2g} mem={est.mem[i]:.2f}" for i in top_curv],
          os.path.join(out, "top_curvature.png"), f"highest epoch-averaged curvature ({cfg.dataset})")

    results = {
        "settings": {**{k: v for k, v in asdict(cfg).items() if k != "progress"},
                     "train_size": n, "curvature_method": cfg.method, "curvfast": __version__, "torch": torch.__version__},
        "memorization": {**est.summary(), "subset_model_test_accuracy": float(test_acc.mean()),
                         "subset_model_train_accuracy_in": float(correct[keep].mean())},
        "correlation": correlation,
        "correlation_baselines": comparisons,
        "mislabel_auroc": mislabel["auroc"],
        "flipped_labels_fitted": mislabel["final_fit_of_noisy_labels"]["flipped"],
        "mislabel": mislabel,
        "seconds": {k: round(v, 1) for k, v in {**seconds, "total": time.perf_counter() - start}.items()},
    }
    if dp_rows is not None:
        results["dp"] = dp_rows
        results["dp_bounds"] = bounds
    write_json(os.path.join(out, "results.json"), results)
    return results
