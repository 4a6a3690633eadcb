"""Post-hoc detectors on the penultimate features h (B, D). Every score: higher = more OoD.

- Mahalanobis (Lee et al. 2018): class means mu_c and one shared covariance
  Sigma = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T estimated on ID training features;
  s(x) = min_c (h - mu_c)^T Sigma^+ (h - mu_c). (The paper's input pre-processing and
  multi-layer ensemble are not used: the single-layer, no-perturbation variant is the one most
  benchmarks report.)
- KNN (Sun et al. 2022): L2-normalised features u = h / ||h||, a bank of the normalised ID
  training features, s(x) = || u - u_(k) || the distance to the k-th nearest training feature.

Both fit in float64; scoring uses matrix products, so FLOP counters see their cost.
"""
from __future__ import annotations

import torch

from curvfast.pipelines.ood.base import Detector, require

__all__ = ["Mahalanobis", "KNN"]


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """(K, D) mean feature of each class 0..K-1; every class must have a sample."""
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    counts = torch.bincount(labels, minlength=k)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {missing} have no in-distribution sample; fit on data with every class")
    sums = torch.zeros(k, features.shape[1], dtype=features.dtype).index_add_(0, labels, features)
    return sums / counts.unsqueeze(1).to(features.dtype)


def detector_labels(labels, n: int, detector: str) -> torch.Tensor:
    if labels is None:
        raise ValueError(f"{detector}.fit_features needs labels=... (the ID training labels)")
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.numel() != n:
        raise ValueError(f"{detector}: {labels.numel()} labels for {n} samples")
    return labels


class Mahalanobis(Detector):
    """Minimum Mahalanobis distance to a class mean under the shared (tied) covariance."""

    name = "mahalanobis"
    needs_fit = True

    def fit_features(self, logits=None, features=None, labels=None):
        h = require(features, "features", "Mahalanobis").double()
        y = detector_labels(labels, h.shape[0], "Mahalanobis")
        self.means = class_means(h, y)
        centered = h - self.means[y]
        cov = centered.T @ centered / h.shape[0]
        self.precision = torch.linalg.pinv(cov, hermitian=True)
        self.fitted = True
        return self

    def score_outputs(self, logits=None, features=None):
        h = require(features, "features", "Mahalanobis").double()
        means, precision = self.means.to(h.device), self.precision.to(h.device)
        # (h - mu)^T P (h - mu) = h^T P h - 2 h^T P mu + mu^T P mu, for every class at once
        hp = h @ precision
        d2 = (hp * h).sum(1, keepdim=True) - 2 * hp @ means.T + ((means @ precision) * means).sum(1)
        return d2.amin(1)


class KNN(Detector):
    """Distance to the k-th nearest L2-normalised ID training feature (k = 50 on CIFAR in the paper;
    default 10 here for a bank of about a thousand digits)."""

    name = "knn"
    needs_fit = True

    def __init__(self, k: int = 10):
        super().__init__()
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int (got {k!r})")
        self.k = k

    def fit_features(self, logits=None, features=None, labels=None):
        h = require(features, "features", "KNN").double()
        if h.shape[0] < self.k:
            raise ValueError(f"KNN with k={self.k} needs at least k training features (got {h.shape[0]}); lower k")
        self.bank = torch.nn.functional.normalize(h, dim=1)
        self.fitted = True
        return self

    def score_outputs(self, logits=None, features=None):
        u = torch.nn.functional.normalize(require(features, "features", "KNN").double(), dim=1)
        sim = u @ self.bank.to(u.device).T  # ||u - b||^2 = 2 - 2 u.b for unit vectors
        kth = sim.topk(self.k, dim=1).values[:, -1]
        return (2 - 2 * kth).clamp_min(0).sqrt()
