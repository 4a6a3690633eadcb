"""Mislabel detection: flip a fraction of the labels, train, rank samples, AUROC for the flipped ones.

Scores (higher = more likely mislabeled):
- curvature: input-loss curvature with the (noisy) training label, averaged over the epochs of
  training (Garg et al.); see :mod:`curvfast.pipelines.memorization.trajectory`.
- loss: the training-label cross-entropy, averaged the same way (and at the last epoch).
- cleanlab: confident learning (Northcutt et al.), 1 − self-confidence p̂(ỹ_i | x_i), where p̂ are
  out-of-sample predicted probabilities from K-fold cross-validation (each fold predicted by the
  model trained on the other K−1 folds), as cleanlab expects; plus cleanlab's
  ``find_label_issues`` set (prune by noise rate), reported as precision / recall.

AUROC = P[score(flipped) > score(clean)] via :func:`curvfast.metrics.auroc` with positive=True.
"""
from __future__ import annotations

import numpy as np
import torch

from curvfast.metrics import auroc
from curvfast.pipelines.common.multitrain import train_subset_models
from curvfast.pipelines.memorization.feldman import predict
from curvfast.errors import ConfigError

__all__ = ["flip_labels", "cross_val_pred_probs", "cleanlab_scores", "mislabel_report"]


def flip_labels(targets: torch.Tensor, fraction: float, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Flip exactly round(fraction·N) labels, chosen at random, each to a uniformly random *other*
    class. Returns (noisy targets, flipped mask (N,) bool)."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"noise fraction must be in (0, 1) (got {fraction})")
    rng = np.random.default_rng(seed)
    n = len(targets)
    count = int(round(fraction * n))
    if count < 1:
        raise ConfigError(f"noise fraction {fraction} flips no label of {n} samples; raise it")
    idx = rng.choice(n, size=count, replace=False)
    noisy = targets.clone()
    shift = torch.from_numpy(rng.integers(1, num_classes, size=count))  # 1..C-1: never the true class
    noisy[idx] = (targets[idx] + shift) % num_classes
    flipped = np.zeros(n, dtype=bool)
    flipped[idx] = True
    return noisy, flipped


def cross_val_pred_probs(make_model, images: torch.Tensor, labels: torch.Tensor, *, folds: int = 5, seed: int = 0,
                         **train_kwargs) -> np.ndarray:
    """(N, C) out-of-sample softmax probabilities from ``folds``-fold cross-validation; the fold
    models are trained together with the shared trainer (model k trains on all folds but k)."""
    if folds < 2:
        raise ConfigError(f"folds must be >= 2 (got {folds})")
    fold = np.random.default_rng(seed).permutation(len(images)) % folds
    keep = fold[None, :] != np.arange(folds)[:, None]
    models = train_subset_models(make_model, images, labels, keep, seed=seed, **train_kwargs)
    probs = predict(models, images, device=train_kwargs.get("device", "cpu"))  # (K, N, C)
    return probs[fold, np.arange(len(images))]


def cleanlab_scores(labels: np.ndarray, pred_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1 − cleanlab self-confidence quality (N,), cleanlab ``find_label_issues`` mask (N,))."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels)
    quality = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    issues = find_label_issues(labels, pred_probs, filter_by="prune_by_noise_rate")
    return 1.0 - quality, np.asarray(issues, dtype=bool)


def mislabel_report(scores: dict[str, np.ndarray], flipped: np.ndarray, issues: np.ndarray | None = None) -> dict:
    """AUROC of each score for the flipped samples, and cleanlab's issue set as precision / recall."""
    out = {"auroc": {name: auroc(s, flipped, positive=True) for name, s in scores.items()},
           "flipped": int(flipped.sum()), "samples": int(flipped.size)}
    if issues is not None:
        hits = int((issues & flipped).sum())
        out["cleanlab_issues"] = {"found": int(issues.sum()), "true_positives": hits,
                                  "precision": hits / max(int(issues.sum()), 1), "recall": hits / int(flipped.sum())}
    return out
