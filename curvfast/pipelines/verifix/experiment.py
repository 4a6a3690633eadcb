"""The end-to-end noisy-label experiment behind ``curvfast verifix``.

train split → (train part, validation part) → noisy labels on both → train a zoo model on the
noisy train part → verified set (lowest curvature per class) → Verifix (α chosen on the
validation part) → clean test accuracy before and after. Only the test report uses clean labels
(unless ``clean_validation``: a trusted, hand-checked validation set).
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from curvfast.data import get_dataset
from curvfast.io import save_checkpoint, write_json, write_npz
from curvfast.models import build_model
from curvfast.pipelines.common.training import evaluate, fit
from curvfast.pipelines.verifix.noise import add_label_noise
from curvfast.pipelines.verifix.selection import select_verified
from curvfast.pipelines.verifix.verifix import verifix

__all__ = ["Relabeled", "fit", "run_experiment", "run_seeds"]


class Relabeled(Dataset):
    """``base`` with its labels replaced by ``labels`` (items: (x, label))."""

    def __init__(self, base, labels: torch.Tensor):
        if len(base) != len(labels):
            raise ValueError(f"labels ({len(labels)}) must match the dataset length ({len(base)})")
        self.base, self.labels = base, torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.base[i][0], int(self.labels[i])


def _targets(dataset) -> torch.Tensor:
    if hasattr(dataset, "targets"):
        return torch.as_tensor(dataset.targets, dtype=torch.int64)
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


def _check_settings(verified_size, selection, alphas, route) -> None:
    """Fail before training on settings that would only be rejected after it."""
    from curvfast.linalg import ROUTES
    from curvfast.pipelines.verifix.selection import SELECTION_METHODS

    if not isinstance(verified_size, int) or verified_size < 1:
        raise ValueError(f"verified_size must be a positive int (got {verified_size!r})")
    if selection not in SELECTION_METHODS:
        raise ValueError(f"selection must be one of {SELECTION_METHODS} (got {selection!r})")
    if alphas is not None and (len(alphas) == 0 or any(not float(a) >= 1 for a in alphas)):
        raise ValueError(f"alphas must be a non-empty list of values >= 1 (got {list(alphas)})")
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES} (got {route!r})")


def _split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1) (got {fraction!r})")
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(round(fraction * n))
    return np.sort(perm[cut:]), np.sort(perm[:cut])


def run_experiment(
    *, dataset: str = "digits", model: str = "small_cnn", noise: float = 0.25, noise_type: str = "symmetric",
    epochs: int = 60, lr: float = 0.05, batch_size: int = 64, val_fraction: float = 0.2, clean_validation: bool = False,
    verified_size: int = 200, selection: str = "auto", alphas=None, max_rows: int | None = 50_000, route: str = "auto",
    rank: int | None = None, seed: int = 0, root: str | None = None, device: str = "cpu", out: str | None = None,
    progress: bool | None = None, log=print,
) -> dict:
    """One seed of the experiment; with ``out`` writes results.json, verified.npz and model.pt there."""
    timings, t0 = {}, time.perf_counter()
    _check_settings(verified_size, selection, alphas, route)
    train_full, info = get_dataset(dataset, "train", root=root)
    test_set, _ = get_dataset(dataset, "test", root=root)
    clean = _targets(train_full)
    noisy, flipped = add_label_noise(clean, noise, info.num_classes, kind=noise_type, seed=seed)
    train_idx, val_idx = _split(len(clean), val_fraction, seed)
    train_set = Relabeled(Subset(train_full, train_idx.tolist()), noisy[train_idx])
    val_set = Relabeled(Subset(train_full, val_idx.tolist()), (clean if clean_validation else noisy)[val_idx])
    timings["data_and_noise"] = time.perf_counter() - t0

    t = time.perf_counter()
    torch.manual_seed(seed)  # the initialisation too, not only the training order
    net = fit(build_model(model, info.num_classes, info.in_channels), train_set, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    timings["train"] = time.perf_counter() - t
    if log:
        log(f"seed {seed}: trained {model} on {len(train_set)} samples with {noise:.0%} {noise_type} noise ({timings['train']:.1f} s)")

    t = time.perf_counter()
    sel = select_verified(net, train_set, verified_size, method=selection, seed=seed, device=device, progress=progress)
    timings["selection"] = time.perf_counter() - t
    verified = Subset(train_set, sel.indices.tolist())
    corrected, report = verifix(
        net, verified, val_set, **({"alphas": alphas} if alphas else {}), max_rows=max_rows, route=route, rank=rank,
        seed=seed, device=device, progress=progress,
    )
    timings.update({f"verifix_{k}": v for k, v in report.seconds.items()})

    t = time.perf_counter()
    before, after = evaluate(net, test_set), evaluate(corrected, test_set)
    timings["evaluate"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    verified_flipped = flipped[train_idx][sel.indices]
    result = {
        "accuracy_before": before, "accuracy_after": after, "alpha": report.alpha, "verified_size": int(len(sel.indices)),
        "verified_clean_fraction": float(1.0 - verified_flipped.float().mean()),
        "train_noise_rate": float(flipped[train_idx].float().mean()), "selection_method": sel.method,
        "train_accuracy_noisy_labels": evaluate(net, train_set), "verifix": report.to_dict(),
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "settings": {
            "dataset": dataset, "model": model, "noise": noise, "noise_type": noise_type, "epochs": epochs, "lr": lr,
            "batch_size": batch_size, "val_fraction": val_fraction, "clean_validation": clean_validation,
            "selection": selection, "max_rows": max_rows, "route": route, "rank": rank, "seed": seed,
            "train_size": len(train_set), "validation_size": len(val_set), "test_size": len(test_set),
        },
    }
    if log:
        log(f"seed {seed}: test accuracy {before:.4f} -> {after:.4f} (alpha={report.alpha}, verified clean {result['verified_clean_fraction']:.3f})")
    if out is not None:
        write_json(os.path.join(out, "results.json"), result)
        write_npz(
            os.path.join(out, "verified.npz"), train_index=train_idx, validation_index=val_idx, verified=sel.indices,
            curvature=sel.scores if sel.scores is not None else np.full(len(train_idx), np.nan),
            noisy_label=noisy.numpy(), clean_label=clean.numpy(), flipped=flipped.numpy(),
        )
        save_checkpoint(
            os.path.join(out, "model.pt"), corrected, model=model, num_classes=info.num_classes, in_channels=info.in_channels,
            alpha=report.alpha if report.alpha is not None else 0.0,
        )
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_seeds(seeds: list[int], *, out: str | None = None, log=print, **kwargs) -> dict:
    """``run_experiment`` per seed (in ``out/seed_<k>/`` when several); the summary carries
    mean ± sample std of the accuracies. With one seed the summary is that seed's result."""
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if len(seeds) == 1:
        return run_experiment(seed=seeds[0], out=out, log=log, **kwargs)
    runs = [run_experiment(seed=s, out=None if out is None else os.path.join(out, f"seed_{s}"), log=log, **kwargs) for s in seeds]
    summary = {"seeds": list(seeds), "settings": {k: v for k, v in runs[0]["settings"].items() if k != "seed"}}
    for key in ("accuracy_before", "accuracy_after", "verified_clean_fraction"):
        summary[key], summary[f"{key}_std"] = _mean_std([r[key] for r in runs])
    summary["gain"], summary["gain_std"] = _mean_std([r["accuracy_after"] - r["accuracy_before"] for r in runs])
    summary["alpha"] = [r["alpha"] for r in runs]
    summary["verified_size"] = runs[0]["verified_size"]
    summary["seconds"] = {k: round(statistics.fmean([r["seconds"][k] for r in runs]), 3) for k in runs[0]["seconds"]}
    summary["runs"] = [{k: r[k] for k in ("accuracy_before", "accuracy_after", "alpha", "verified_clean_fraction")} | {"seed": s} for s, r in zip(seeds, runs)]
    if out is not None:
        write_json(os.path.join(out, "results.json"), summary)
    return summary
