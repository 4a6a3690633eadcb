"""Feldman-style memorization scores from models trained on random subsets.

For training sample i with label y_i (Feldman 2020; Feldman & Zhang 2020):

    mem(i) = P[f_S(x_i) = y_i | i ∈ S] − P[f_S(x_i) = y_i | i ∉ S],

the probability over the random subset S (each sample kept independently with probability
``fraction``) and the training randomness. With M models trained on subsets ``keep[m]`` the
estimate is the difference of two empirical frequencies,

    p̂_in(i) = k_in / n_in  (models that trained on i and predict y_i),
    p̂_out(i) = k_out / n_out (models that did not train on i and predict y_i).

Confidence interval: Newcombe's hybrid score interval for a difference of two independent
binomial proportions (Newcombe 1998, method 10), built from the two Wilson score intervals
(l_in, u_in) and (l_out, u_out):

    [d − sqrt((p̂_in − l_in)² + (u_out − p̂_out)²),  d + sqrt((u_in − p̂_in)² + (p̂_out − l_out)²)],  d = p̂_in − p̂_out.

It treats the M per-model outcomes of a sample as independent Bernoulli draws given IN/OUT,
which holds for independent subsets and seeds; it stays inside [−1, 1] and keeps its coverage
at the extreme frequencies (0 or 1) that dominate memorization scores, where the Wald interval
collapses to zero width.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm
from torch.utils.data import DataLoader

from curvfast.pipelines.common.data import as_float
from curvfast.errors import ConfigError, DataError

__all__ = ["random_subsets", "predict", "label_predictions", "MemorizationEstimate", "memorization_scores", "wilson_interval",
           "newcombe_interval"]


def random_subsets(models: int, samples: int, fraction: float, seed: int = 0) -> np.ndarray:
    """(models, samples) boolean membership matrix: each sample kept independently with probability ``fraction``."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"fraction must be in (0, 1) so every sample is both IN and OUT for some models (got {fraction})")
    if models < 2:
        raise ConfigError(f"models must be >= 2 to have IN and OUT models for a sample (got {models})")
    return np.random.default_rng(seed).random((models, samples)) < fraction


def _batches(data, batch_size: int):
    """Batches ``(x, y or None)`` of an image tensor (N, ...; uint8 from ``common.data.materialise`` is restored
    to float32) or a map-style dataset of ``(image, label)``."""
    if torch.is_tensor(data):
        return ((as_float(data[i:i + batch_size]), None) for i in range(0, len(data), batch_size))
    return iter(DataLoader(data, batch_size=batch_size))


@torch.no_grad()
def _probabilities(models, data, batch_size: int, device):
    """Yield ``(softmax probabilities (M, B, C), labels (B,) or None)`` batch by batch (eval mode, modes restored)."""
    device = torch.device(device)
    modes = [m.training for m in models]
    try:
        models = [m.to(device).eval() for m in models]
        for x, y in _batches(data, batch_size):
            x = x.to(device, non_blocking=True)
            yield torch.stack([m(x).softmax(1) for m in models]).double().cpu(), y
    finally:
        for model, mode in zip(models, modes):
            model.train(mode)


def predict(models, data, batch_size: int = 1024, device: str | torch.device = "cpu") -> np.ndarray:
    """Softmax probabilities (M, N, C) of each model on ``data``: an image tensor (N, ...) or a dataset
    of ``(image, label)`` streamed in batches."""
    return torch.cat([p for p, _ in _probabilities(models, data, batch_size, device)], 1).numpy()


def label_predictions(models, data, labels=None, batch_size: int = 1024,
                      device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``(correct (M, N) bool, p_label (M, N))``: whether model m predicts sample i's label, and the
    probability it gives that label, streamed over ``data`` (a dataset of ``(image, label)``, or an
    image tensor with ``labels``). Memory: one batch and the two (M, N) results, never (M, N, C)."""
    correct, p_label, start = [], [], 0
    for probs, y in _probabilities(models, data, batch_size, device):
        y = torch.as_tensor(labels[start:start + probs.shape[1]] if labels is not None else y)
        start += probs.shape[1]
        correct.append((probs.argmax(-1) == y).numpy())
        p_label.append(probs.gather(2, y.expand(probs.shape[0], -1)[..., None]).squeeze(2).numpy())
    return np.concatenate(correct, 1), np.concatenate(p_label, 1)


def wilson_interval(successes: np.ndarray, trials: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval (lower, upper) for a binomial proportion; NaN where ``trials == 0``."""
    z = norm.ppf(0.5 + confidence / 2.0)
    k, n = np.asarray(successes, dtype=np.float64), np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1.0 + z * z / n
        center = (p + z * z / (2 * n)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)


def newcombe_interval(k1, n1, k2, n2, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's hybrid score interval (method 10) for p1 − p2 from two independent binomials."""
    k1, n1, k2, n2 = (np.asarray(a, dtype=np.float64) for a in (k1, n1, k2, n2))
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    with np.errstate(invalid="ignore", divide="ignore"):
        p1, p2 = k1 / n1, k2 / n2
    d = p1 - p2
    return d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


@dataclass
class MemorizationEstimate:
    """Per-sample arrays (N,): ``mem`` = ``p_in − p_out``, its ``ci_low``/``ci_high``
    (Newcombe hybrid score interval at ``confidence``), and the IN/OUT model counts.
    ``mem`` is NaN for a sample that is never IN or never OUT."""

    mem: np.ndarray
    p_in: np.ndarray
    p_out: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    confidence: float

    def summary(self) -> dict:
        ok = np.isfinite(self.mem)
        return {
            "samples": int(self.mem.size), "estimable": int(ok.sum()), "confidence": self.confidence,
            "interval": "Newcombe hybrid score (method 10) from Wilson intervals of p_in and p_out",
            "mean": float(np.mean(self.mem[ok])), "median": float(np.median(self.mem[ok])),
            "fraction_above_0.5": float(np.mean(self.mem[ok] > 0.5)),
            "mean_ci_width": float(np.mean(self.ci_high[ok] - self.ci_low[ok])),
            "mean_models_in": float(self.n_in.mean()), "mean_models_out": float(self.n_out.mean()),
            "significant_positive": int(np.sum(self.ci_low[ok] > 0)),
        }


def memorization_scores(correct: np.ndarray, keep: np.ndarray, confidence: float = 0.95) -> MemorizationEstimate:
    """Estimate mem(i) from ``correct`` (M, N) — model m predicts y_i — and ``keep`` (M, N) — i ∈ S_m."""
    correct, keep = np.asarray(correct, dtype=bool), np.asarray(keep, dtype=bool)
    if correct.shape != keep.shape or correct.ndim != 2:
        raise DataError(f"correct and keep must be (models, samples) matrices of one shape (got {correct.shape} and {keep.shape})")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1) (got {confidence})")
    n_in, n_out = keep.sum(0), (~keep).sum(0)
    k_in, k_out = (correct & keep).sum(0), (correct & ~keep).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_in, p_out = k_in / n_in, k_out / n_out
    low, high = newcombe_interval(k_in, n_in, k_out, n_out, confidence)
    return MemorizationEstimate(p_in - p_out, p_in, p_out, n_in, n_out, low, high, confidence)
