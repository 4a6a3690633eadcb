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
from torch import nn

from curvfast.errors import ConfigError, DataError
from curvfast.ood._base import FeaturesDetector, register_detector, require

__all__ = ["Mahalanobis", "KNN", "class_means", "detector_labels"]


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """The mean feature of each class.

    Args:
        features: Features (N, D).
        labels: Their classes (N,), in 0..K-1.
        num_classes: K (default: the largest label + 1).

    Returns:
        The (K, D) class means.

    Raises:
        DataError: A class has no sample.
    """
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    counts = torch.bincount(labels, minlength=k)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise DataError(f"classes {missing} have no in-distribution sample; fit on data with every class")
    sums = torch.zeros(k, features.shape[1], dtype=features.dtype).index_add_(0, labels, features)
    return sums / counts.unsqueeze(1).to(features.dtype)


def detector_labels(labels, n: int, detector: str) -> torch.Tensor:
    """The training labels a detector fits on, as a flat int64 tensor.

    Args:
        labels: The labels (any tensor-like), or None.
        n: The number of training samples they must label.
        detector: The detector's name in the message.

    Returns:
        The labels (n,).

    Raises:
        DataError: ``labels`` is None, has the wrong length or a negative entry.
    """
    if labels is None:
        raise DataError(f"{detector} fits on labelled data: pass the ID training labels")
    labels = torch.as_tensor(labels).long().reshape(-1)
    if labels.numel() != n:
        raise DataError(f"{detector}: {labels.numel()} labels for {n} samples")
    if labels.numel() and int(labels.min()) < 0:
        raise DataError(f"{detector}: labels must be class indices >= 0 (got {int(labels.min())}); "
                        "fit on in-distribution samples only")
    return labels


@register_detector("mahalanobis")
class Mahalanobis(FeaturesDetector):
    r"""Minimum Mahalanobis distance to a class mean under the shared (tied) covariance (Lee et al., NeurIPS 2018).

    .. math:: s(x) = \min_c (h - \mu_c)^\top \Sigma^{+} (h - \mu_c)

    Args:
        model: The classifier (None for the ``*_features`` methods only).
        **outputs: ``feature_layer`` / ``output_transform``, see :class:`~curvfast.ood.Detector`.
    """

    requires_fit = True

    def fit_features(self, x: torch.Tensor, y: torch.Tensor | None = None) -> "Mahalanobis":
        """Class means and the pseudo-inverse of the shared covariance, in float64.

        Args:
            x: ID training features (N, D).
            y: Their classes (N,).

        Returns:
            The fitted detector.

        Raises:
            DataError: Features missing or not 2-D, labels missing or not matching, a class without samples.
        """
        h = require(x, "features", "Mahalanobis").double()
        labels = detector_labels(y, h.shape[0], "Mahalanobis")
        self.means = class_means(h, labels)
        centered = h - self.means[labels]
        cov = centered.T @ centered / h.shape[0]
        self.precision = torch.linalg.pinv(cov, hermitian=True)
        self.fitted = True
        return self

    def predict_features(self, x: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance to the nearest class mean (B,), float64.

        Args:
            x: Features (B, D).

        Returns:
            The scores.

        Raises:
            RequiresFittingError: Not fitted.
            DataError: Features missing or not 2-D.
        """
        self._check_fitted()
        h = require(x, "features", "Mahalanobis").double()
        means, precision = self.means.to(h.device), self.precision.to(h.device)
        # (h - mu)^T P (h - mu) = h^T P h - 2 h^T P mu + mu^T P mu, for every class at once
        hp = h @ precision
        d2 = (hp * h).sum(1, keepdim=True) - 2 * hp @ means.T + ((means @ precision) * means).sum(1)
        return d2.amin(1)


@register_detector("knn")
class KNN(FeaturesDetector):
    r"""Distance to the k-th nearest L2-normalised ID training feature (Sun et al., ICML 2022).

    .. math:: s(x) = \lVert u - u_{(k)} \rVert_2, \quad u = h / \lVert h \rVert_2

    Args:
        model: The classifier (None for the ``*_features`` methods only).
        k: The neighbour rank (50 on CIFAR in the paper; default 10 here for a bank of about a
            thousand digits).
        **outputs: ``feature_layer`` / ``output_transform``, see :class:`~curvfast.ood.Detector`.

    Raises:
        ConfigError: ``k`` is not a positive int.
    """

    requires_fit = True

    def __init__(self, model: nn.Module | None = None, k: int = 10, **outputs):
        super().__init__(model, **outputs)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k must be a positive int (got {k!r})")
        self.k = k

    def fit_features(self, x: torch.Tensor, y: torch.Tensor | None = None) -> "KNN":
        """Keep the L2-normalised training features as the bank (labels are not used).

        Args:
            x: ID training features (N, D), N >= k.
            y: Ignored.

        Returns:
            The fitted detector.

        Raises:
            DataError: Features missing, not 2-D, or fewer than k.
        """
        h = require(x, "features", "KNN").double()
        if h.shape[0] < self.k:
            raise DataError(f"KNN with k={self.k} needs at least k training features (got {h.shape[0]}); lower k")
        self.bank = torch.nn.functional.normalize(h, dim=1)
        self.fitted = True
        return self

    def predict_features(self, x: torch.Tensor) -> torch.Tensor:
        """Distance of each normalised feature to its k-th nearest bank entry (B,), float64.

        Args:
            x: Features (B, D).

        Returns:
            The scores.

        Raises:
            RequiresFittingError: Not fitted.
            DataError: Features missing or not 2-D.
        """
        self._check_fitted()
        u = torch.nn.functional.normalize(require(x, "features", "KNN").double(), dim=1)
        sim = u @ self.bank.to(u.device).T  # ||u - b||^2 = 2 - 2 u.b for unit vectors
        kth = sim.topk(self.k, dim=1).values[:, -1]
        return (2 - 2 * kth).clamp_min(0).sqrt()
