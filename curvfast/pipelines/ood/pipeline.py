"""The OoD benchmark: ID classes of a dataset against held-out classes and four synthetic OoD sets.

In-distribution: the classes ``id_classes`` (default 0-5) of ``--dataset`` (default the bundled
digits); models are trained on their training split and ID test scores come from their test split.
OoD sets, shaped like the ID images, in [0, 1]:

- ``heldout_classes``: test images of the other classes (digits 6-9 by default): near OoD, same
  pen, same scanner;
- ``photo_patches``: real-photo crops (``curvfast.data._photos.photo_patches``; grey, repeated over
  the colour channels of RGB data);
- ``uniform_noise``: i.i.d. U[0, 1] pixels;
- ``inverted``: ID test images with 1 - x (white ink on black for digits);
- ``shuffled``: ID test images with their C·H·W values randomly permuted (same intensity
  histogram, no structure).

Every seed trains two small CNNs with the same recipe and initialisation seed: a K-class network
read by the post-hoc detectors, and a (K+1)-class VRM network. Metrics are reported per OoD set
and averaged over sets, as mean and standard deviation over seeds.

Your own model and data: ``--checkpoint PATH`` (a classifier of the ID classes, e.g. from ``curvfast train``) is
read by the post-hoc detectors instead of a network trained here (VRM, which trains its own network, is then
left out, and ``id_classes`` may name every class); ``--ood-folders A,B`` adds each folder of images (resized to
the ID images' shape) as an OoD set named by its folder.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from curvfast.data import DatasetInfo
from curvfast.data import photo_manifest, photo_patches
from curvfast import parse_device
from curvfast.io import write_npz
from curvfast.pipelines.common.contract import config_dict, option, run_folder, write_results
from curvfast.pipelines.common.data import DataOptions, build_network, load_split
from curvfast.errors import ConfigError, DataError
from curvfast.ood import (
    DETECTORS, METRIC_NAMES, NORM_STATISTICS, VRM, NormScaling, NormScalingFeatures, VRMTransform, gains, ood_metrics,
    vrm_batch,
)
from curvfast.pipelines.ood.overhead import count_parameters, inference_flops, state_bytes, train_step_cost
from curvfast.checkpoints import load_model
from curvfast.pipelines.ood.report import curvature_table, examples_figure, markdown_table, roc_figure
from curvfast.pipelines.ood.training import ClassSubset, folder_images, stack_images
from curvfast.training import TrainRecipe, fit

__all__ = ["Config", "PRESETS", "run", "summary", "ood_sets", "OOD_SETS"]

PRESETS = {
    "smoke": {"seeds": (0,), "epochs": 3},  # the tests' settings: seconds on a laptop CPU
    # CIFAR-10 classes 0-5 in distribution, 6-9 held out, a common CIFAR recipe (ResNet-18, crop-flip, SGD 0.1 with
    # cosine decay over 100 epochs): ours, the papers' recipe is not in what we have; --published's choices (KNN's
    # k = 50 of Sun et al. 2022) are the published part (docs/ood.md, "Deviations" and "Paper scale").
    "paper": {"dataset": "cifar10", "model": "cifar_resnet18", "normalize": "cifar10", "augment": "crop-flip", "epochs": 100,
              "batch_size": 128, "lr": 0.1, "published": True, "device": "cuda", "workers": 4},
}
KNN_K = 10  # KNN's k on the digits bank (811 samples); the published k (Sun et al. 2022, CIFAR-10: 50 000) is 50
PUBLISHED_KNN_K = 50

CURVATURE = "curvature"  # curvfast.ood.InputCurvature's name: its numbers are also summarised on their own
PROPOSED = ("norm_scaling", "norm_scaling_features", "vrm", "vrm_msp")  # the methods under study; the rest are baselines
OOD_SETS = ("heldout_classes", "photo_patches", "uniform_noise", "inverted", "shuffled")


@dataclass
class Config(DataOptions):
    """The benchmark's settings (defaults: ours, sized for 8x8 digits; docs/ood.md, "Deviations", says which are
    published)."""

    id_classes: tuple[int, ...] = option((0, 1, 2, 3, 4, 5), "in-distribution classes; the dataset's others are held out as OoD")
    model: str = option("small_cnn")
    epochs: int = option(30, "training epochs of each network")
    batch_size: int = option(64)
    lr: float = option(0.05, "SGD learning rate")
    seeds: tuple[int, ...] = option((0, 1, 2), "training seeds; results are mean and std over them")
    knn_k: int | None = option(None, f"KNN detector's k (unset: {KNN_K}, or {PUBLISHED_KNN_K} with --published)")
    odin_temperature: float = option(1000.0, "ODIN's softmax temperature")
    odin_eps: float = option(0.0014, "ODIN's input perturbation size")
    norm_statistic: str = option("mean", "norm-scaling's per-class statistic", choices=NORM_STATISTICS)
    vrm_alpha: float = option(1.0, "VRM's Beta(alpha, alpha) mixing weights")
    vrm_aux_fraction: float = option(0.5, "VRM's auxiliary (noise-mix) samples per real sample")
    vrm_noise_mean: float = option(0.5, "VRM's noise mean")
    vrm_noise_std: float = option(0.5, "VRM's noise standard deviation")
    checkpoint: str | None = option(None, "your trained classifier of the ID classes (curvfast train --out PATH): the "
                                          "post-hoc detectors read it instead of a network trained here; VRM, which "
                                          "trains its own network, is left out")
    ood_folders: tuple[str, ...] = option((), "folders of your OoD images (any depth), each an extra OoD set named by "
                                              "its folder; images are resized to the ID images' shape")
    published: bool = option(False, "every published choice this benchmark can run: KNN's k = "
                                    f"{PUBLISHED_KNN_K} (Sun et al. 2022) unless --knn-k is given (docs/ood.md, "
                                    "Deviations: the other published choices cannot be run here)")
    device: str = option("cpu")
    quiet: bool = option(False)

    def knn_neighbours(self) -> int:
        """KNN's k: ``knn_k`` if set, else the published 50 under ``published``, else 10."""
        if self.knn_k is not None:
            return self.knn_k
        return PUBLISHED_KNN_K if self.published else KNN_K

    def validate(self, num_classes: int) -> None:
        """Fail before training, naming the option, on settings that cannot work for a dataset of ``num_classes``."""
        self.check_data_options()
        ids = list(self.id_classes)
        if len(ids) < 2 or len(set(ids)) != len(ids) or not all(0 <= c < num_classes for c in ids):
            raise ConfigError(f"id_classes must be at least 2 distinct classes in 0..{num_classes - 1} (got {ids})")
        if len(ids) == num_classes and self.checkpoint is None:
            raise ConfigError("id_classes must leave at least one class out for the heldout_classes OoD set")
        if len(ids) == num_classes and not self.ood_folders:
            raise ConfigError("with every class in distribution there is no heldout_classes OoD set; name your OoD "
                              "data with --ood-folders, or leave a class out of --id-classes")
        if not self.seeds:
            raise ConfigError("seeds must name at least one seed")
        parse_device(self.device)
        _posthoc_detectors(self, None)  # the constructors check the statistic, k, T and eps
        VRMTransform(len(ids), self.vrm_alpha, self.vrm_aux_fraction, self.vrm_noise_mean, self.vrm_noise_std)


def ood_sets(id_test: torch.Tensor, heldout: torch.Tensor, seed: int = 0,
             folders: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The five OoD sets (see the module docstring; ``heldout_classes`` left out when empty) and ``folders``
    (your own OoD images by set name); the synthetic ones have len(id_test) samples."""
    n = len(id_test)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(id_test[0].numel(), generator=gen) for _ in range(n)])
    flat = id_test.flatten(1)
    return ({"heldout_classes": heldout} if len(heldout) else {}) | {
        "photo_patches": photo_patches(n, size=id_test.shape[-1], seed=seed).expand(-1, id_test.shape[1], -1, -1).contiguous(),
        "uniform_noise": torch.rand(id_test.shape, generator=gen),
        "inverted": 1.0 - id_test,
        "shuffled": flat.gather(1, perm).view_as(id_test),
    } | (folders or {})


def _detector_settings(config: Config) -> dict[str, dict]:
    """The constructor arguments the benchmark's options set, by detector name (the others run with defaults)."""
    return {"odin": {"temperature": config.odin_temperature, "eps": config.odin_eps}, "knn": {"k": config.knn_neighbours()},
            "norm_scaling": {"statistic": config.norm_statistic},
            "norm_scaling_features": {"statistic": config.norm_statistic}}


def _posthoc_detectors(config: Config, model) -> dict:
    """Every registered detector of a K-class classifier (``curvfast.ood.DETECTORS``), reading ``model``."""
    settings = _detector_settings(config)
    return {name: cls(model, **settings.get(name, {})) for name, cls in DETECTORS.items() if not cls.auxiliary_class}


def _auxiliary_detectors(model) -> dict:
    """Every registered detector of a (K+1)-output network, reading ``model``, and VRM's MSP variant."""
    dets = {name: cls(model) for name, cls in DETECTORS.items() if cls.auxiliary_class}
    return dets | {"vrm_msp": VRM(model, "msp")}


def _ablation_detectors(model) -> dict:
    return {f"norm_scaling[{src},{stat}]": make(model, stat) for src, make in
            (("logits", NormScaling), ("class_means", NormScalingFeatures)) for stat in NORM_STATISTICS}


def _aggregate(per_seed: list[dict]) -> dict:
    """per_seed[s][set][metric] -> {metric: mean, "std": {...}, "per_set": {set: {metric: mean, "std": ...}}}."""
    sets = list(per_seed[0])
    per_set = {}
    for name in sets:
        vals = {m: [r[name][m] for r in per_seed] for m in METRIC_NAMES}
        per_set[name] = {m: float(np.mean(v)) for m, v in vals.items()} | {"std": {m: float(np.std(v)) for m, v in vals.items()}}
    avg = {m: [np.mean([r[s][m] for s in sets]) for r in per_seed] for m in METRIC_NAMES}
    return {m: float(np.mean(v)) for m, v in avg.items()} | {"std": {m: float(np.std(v)) for m, v in avg.items()}, "per_set": per_set}


def _mean_stderr(values) -> dict:
    """Mean and standard error (sample std / sqrt(n); None for one value) of per-seed numbers."""
    values = np.asarray(values, dtype=np.float64)
    stderr = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None
    return {"mean": float(values.mean()), "stderr": stderr}


def _curvature_summary(means: list[dict], metrics: list[dict], seeds) -> dict:
    """The curvature detector's numbers: mean input curvature (trace of the loss Hessian at the predicted class)
    of each set and its AUROC / FPR95 per OoD set, each as mean and standard error over seeds."""
    return {
        "score": "tr of the input Hessian of the cross-entropy at the predicted class (curvfast.ood.InputCurvature, "
                 "method auto: exact for piecewise-linear nets); higher = OoD",
        "seeds": list(seeds),
        "mean_curvature": {s: _mean_stderr([m[s] for m in means]) | {"per_seed": [m[s] for m in means]}
                           for s in means[0]},
        "metrics": {s: {k: _mean_stderr([m[s][k] for m in metrics]) for k in ("auroc", "fpr95")} for s in metrics[0]},
    }


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean())


def _train_pair(config: Config, id_train, shape: tuple[int, ...], seed: int, progress):
    """The K-class baseline and the (K+1)-class VRM network, same recipe, augmentation and initialisation seed
    (VRM mixes the augmented batch)."""
    k = len(config.id_classes)
    recipe = TrainRecipe(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=seed)
    common = dict(device=config.device, progress=sys.stderr.isatty() if progress is None else progress)
    augment = config.batch_transform(seed)
    torch.manual_seed(seed)
    base = build_network(config, config.model, DatasetInfo(k, shape[0]), shape)
    info_base = _timed_fit(base, id_train, recipe, batch_transform=augment, **common)
    torch.manual_seed(seed)
    vrm_net = build_network(config, config.model, DatasetInfo(k + 1, shape[0]), shape)
    transform = VRMTransform(k, config.vrm_alpha, config.vrm_aux_fraction, config.vrm_noise_mean, config.vrm_noise_std)
    # a fresh augmentation generator with the same seed: both networks see the same crops and flips
    batches = transform if augment is None else _then(config.batch_transform(seed), transform)
    info_vrm = _timed_fit(vrm_net, id_train, recipe, batch_transform=batches, **common)
    return base, vrm_net, transform, {"baseline": info_base, "vrm": info_vrm}


def _timed_fit(model, dataset, recipe: TrainRecipe, **kwargs) -> dict:
    """Train with the pipelines' one loop (SGD, momentum 0.9, weight decay 5e-4, cosine schedule);
    return ``{"epochs", "steps", "seconds"}``."""
    start = time.perf_counter()
    fit(model, dataset, recipe, **kwargs)
    steps = recipe.epochs * -(-len(dataset) // recipe.batch_size)
    return {"epochs": recipe.epochs, "steps": steps, "seconds": round(time.perf_counter() - start, 2)}


class _Stacked:
    """A test split held as tensors: ``images`` (N, C, H, W), ``targets`` (N,)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.targets)


def _folder_sets(folders: tuple[str, ...], shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Your OoD folders as sets named by their folder (numbered where two share a name)."""
    names = [os.path.basename(os.path.normpath(f)) or f for f in folders]
    if len(set(names)) != len(names):
        names = [f"{i}-{n}" for i, n in enumerate(names)]
    return {name: folder_images(f, shape) for name, f in zip(names, folders)}


def _user_model(config: Config, sample: torch.Tensor):
    """``--checkpoint``'s model on the device in eval mode; its outputs must be the ID classes."""
    model = load_model(config.checkpoint, None, config.dataset, config.root).to(config.device).eval()
    with torch.no_grad():
        outputs = model(sample.to(config.device)).shape[-1]
    if outputs != len(config.id_classes):
        raise ConfigError(f"checkpoint {config.checkpoint!r} has {outputs} outputs but id_classes names "
                          f"{len(config.id_classes)} classes; pass --id-classes with the {outputs} classes it was "
                          "trained on, in the dataset's order")
    return model


def _then(first, second):
    """The batch transform ``second(first(batch))``."""
    return lambda x, y, rng: second(*first(x, y, rng), rng)


def _training_overhead(config: Config, id_train, base, vrm_net, transform: VRMTransform, seed: int) -> dict:
    """FLOPs and saved-activation bytes of one training step of each network, and FLOPs per epoch."""
    loader = torch.utils.data.DataLoader(id_train, batch_size=config.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    x, y = next(iter(loader))
    vb = vrm_batch(x, y, transform.num_classes, np.random.default_rng(seed), **transform.kwargs)
    cost = {"baseline": train_step_cost(base, x.to(config.device), y.to(config.device)),
            "vrm": train_step_cost(vrm_net, vb.inputs.to(config.device), vb.targets.to(config.device))}
    for v in cost.values():
        v["flops_per_epoch"] = v["flops"] * len(loader)
    return cost


def run(config: Config, out: str | None = None) -> dict:
    """Train, fit, score, evaluate; write ``out``: ``results.json``, ``scores.npz`` (the first seed's
    scores as ``"<detector>/<set>"``, ``"<detector>/id"`` for the ID test set), ``roc.png`` and
    ``ood_examples.png``. Returns the results. ``out`` is checked (and created) before anything is trained."""
    if out is not None and os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {os.fspath(out)!r} is a file, not a folder; name a run folder (new or existing)")
    with run_folder(out) as folder:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(f"--out {folder!r} is not writable; choose a folder you can write to")
        return _run(config, folder)


def _run(config: Config, folder: str) -> dict:
    """The body of :func:`run`, writing into the existing run folder ``folder``."""
    train_all, info = load_split(config, "train")
    test_all, _ = load_split(config, "test")
    config.validate(info.num_classes)
    say = (lambda _msg: None) if config.quiet else print
    progress = False if config.quiet else None
    ids = list(config.id_classes)
    k = len(ids)
    held = [c for c in range(info.num_classes) if c not in ids]
    id_train = ClassSubset(train_all, ids)
    id_test = _Stacked(*stack_images(ClassSubset(test_all, ids), workers=config.workers))
    shape = tuple(id_test.images.shape[1:])
    heldout = stack_images(ClassSubset(test_all, held), workers=config.workers)[0] if held else id_test.images[:0]
    folders = _folder_sets(config.ood_folders, shape)
    user_model = None if config.checkpoint is None else _user_model(config, id_test.images[:1])
    seeds = config.seeds[:1] if user_model is not None else config.seeds  # one model: nothing to vary
    per_seed: dict[str, list] = {}
    accuracy: dict[str, list] = {"baseline": []} | ({} if user_model is not None else {"vrm": []})
    timings: dict[str, list] = {}
    arrays: dict[str, np.ndarray] = {}
    overhead: dict = {}
    failures: dict[str, list] = {}
    curvature_means: list[dict] = []
    start = time.perf_counter()
    overhead_training = None
    for seed in seeds:
        sets = {"id": id_test.images} | ood_sets(id_test.images, heldout, seed=seed, folders=folders)
        set_names = [s for s in sets if s != "id"]
        if user_model is None:
            base, vrm_net, transform, train_info = _train_pair(config, id_train, shape, seed, progress)
        else:
            base, vrm_net, train_info = user_model, None, {}
        for net_name, net, logits_slice in (("baseline", base, slice(None)), ("vrm", vrm_net, slice(0, k))):
            if net is None:
                continue
            with torch.no_grad():
                accuracy[net_name].append(_accuracy(net(id_test.images.to(config.device))[:, logits_slice].cpu(), id_test.targets))
            if net_name in train_info:
                timings.setdefault(f"train_{net_name}_s", []).append(train_info[net_name]["seconds"])
        say(f"seed {seed}: ID test accuracy " + ", ".join(f"{n} {v[-1]:.4f}" for n, v in accuracy.items()))

        detectors = [(name, det, base) for name, det in (_posthoc_detectors(config, base) | _ablation_detectors(base)).items()]
        if vrm_net is not None:
            detectors += [(name, det, vrm_net) for name, det in _auxiliary_detectors(vrm_net).items()]
        for name, det, net in detectors:
            t0 = time.perf_counter()
            try:
                det.fit(DataLoader(id_train, batch_size=256))
            except DataError as err:  # an ablation statistic undefined for this model (e.g. a mean <= 0)
                if not name.startswith("norm_scaling["):
                    raise
                failures.setdefault(name, []).append(f"seed {seed}: {err}")
                continue
            fit_s = time.perf_counter() - t0
            scores = {s: det.predict(x).cpu().numpy() for s, x in sets.items()}
            per_seed.setdefault(name, []).append({s: ood_metrics(scores["id"], scores[s]) for s in set_names})
            if name == CURVATURE:
                curvature_means.append({s: float(v.mean()) for s, v in scores.items()})
            timings.setdefault(f"fit_{name}_s", []).append(fit_s)
            if seed == seeds[0]:
                arrays.update({f"{name}/{s}": v for s, v in scores.items()})
                overhead[name] = {
                    "model_parameters": count_parameters(net),
                    "inference_flops_per_sample": inference_flops(det, id_test.images.to(config.device)),
                    "state_bytes": state_bytes(det),
                    "fit_seconds": round(fit_s, 4),
                }
        if seed == seeds[0] and vrm_net is not None:
            overhead_training = _training_overhead(config, id_train, base, vrm_net, transform, seed)

    detectors = {name: _aggregate(runs) for name, runs in per_seed.items() if not name.startswith("norm_scaling[")}
    best = max((n for n in detectors if n not in PROPOSED), key=lambda n: detectors[n]["auroc"])
    comparison = {"best_baseline": best} | {
        f"{m}_vs_{ref}": gains(detectors[m], detectors[r])
        for m in ("norm_scaling", "vrm") if m in detectors for ref, r in (("msp", "msp"), ("best_baseline", best))
    }
    results = {
        "settings": config_dict(config) | {"k": k, "heldout_classes": held, "ood_sets": set_names,
                                   "seeds_run": list(seeds), "knn_k_used": config.knn_neighbours(),
                                   "id_train": len(id_train), "id_test": len(id_test), "heldout_test": len(heldout),
                                   "photo_sources": photo_manifest()},
        "conventions": {
            "score": "higher = more likely OoD",
            "auroc": "OoD positive", "aupr_in": "ID positive, score negated", "aupr_out": "OoD positive",
            "fpr95": "fraction of OoD accepted at the threshold that accepts 95% of ID (TPR of ID = 0.95)",
            "aggregation": "mean and std over seeds; 'auroc' etc. at the detector level are the average over OoD sets",
        },
        "id_accuracy": {m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_seed": v} for m, v in accuracy.items()},
        "detectors": detectors,
        "comparison": comparison,
        "curvature": _curvature_summary(curvature_means, per_seed[CURVATURE], seeds),
        "ablation": {"norm_scaling": {name: _aggregate(runs) for name, runs in per_seed.items() if name.startswith("norm_scaling[")},
                     "failures": failures},
        "overhead": {"detectors": overhead, "training": overhead_training},
        "timings": {n: float(np.median(v)) for n, v in timings.items()},
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_npz(os.path.join(folder, "scores.npz"), **arrays)
    shown = [d for d in ("msp", "energy", "odin", "mahalanobis", "knn", "norm_scaling", "vrm", CURVATURE) if d in detectors]
    roc_figure(arrays, shown, set_names, os.path.join(folder, "roc.png"))
    examples_figure({"id": id_test.images} | ood_sets(id_test.images, heldout, seed=seeds[0], folders=folders),
                    os.path.join(folder, "ood_examples.png"))
    write_results(folder, results)
    if not config.quiet:
        headline = detectors
        for metric in ("auroc", "fpr95"):
            print(f"\n{metric} (%), mean ± std over seeds {list(seeds)}\n" + markdown_table(headline, metric))
        print("\n" + curvature_table(results["curvature"]))
    return results


def summary(results: dict) -> dict:
    """What ``curvfast ood`` prints: ID accuracy per network and the run time."""
    return {"id_accuracy": {k: v["mean"] for k, v in results["id_accuracy"].items()}, "seconds": results["seconds"]}
