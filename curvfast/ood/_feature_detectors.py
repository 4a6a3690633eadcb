"""Post-hoc detectors on the penultimate features h (B, D). Every score: higher = more OoD.

- Mahalanobis (Lee et al. 2018): class means mu_c and one shared covariance
  Sigma = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T estimated on ID training features;
  s(x) = min_c (h - mu_c)^T Sigma^+ (h - mu_c). (The paper's input pre-processing and
  multi-layer ensemble are not used: the single-layer, no-perturbation variant is the one most
  benchmarks report.)
- KNN (Sun et al. 2022): L2-normalised features u = h / ||h||, a bank of the normalised ID
  training features, s(x) = || u - u_(k) || the distance to the k-th nearest training feature.

Both fit in float64 (on the samples labelled >= 0, as pytorch-ood) and score in the features' dtype;
scoring uses matrix products, so FLOP counters see their cost. Mahalanobis compares a feature with the
classes the fit data holds (a class without a training sample has no mean and is not one of the minimised
terms) and needs at least two samples of one class for its covariance.
"""
from __future__ import annotations

import torch
from torch import nn

from curvfast.errors import ConfigError, DataError
from curvfast.ood._base import FeaturesDetector, id_samples, register_detector, require, scores_like

__all__ = ["Mahalanobis", "KNN", "class_means", "present_class_means"]


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


def present_class_means(features: torch.Tensor,
                        labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mean feature of each class that has a sample.

    Args:
        features: Features (N, D).
        labels: Their classes (N,), >= 0.

    Returns:
        ``(classes (K',), means (K', D), index (N,))``: the classes present, in increasing order, their
        means, and each sample's row in them.
    """
    classes, index = labels.unique(return_inverse=True)
    return classes, class_means(features, index, len(classes)), index


@register_detector("mahalanobis")
class Mahalanobis(FeaturesDetector):
    r"""Minimum Mahalanobis distance to a class mean under the shared (tied) covariance (Lee et al., NeurIPS 2018).

    .. math:: s(x) = \min_c (h - \mu_c)^\top \Sigma^{+} (h - \mu_c)

    The minimum runs over the classes of the fit data (``classes``, each with its mean).

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
            DataError: Features missing or not 2-D, labels missing, not matching or not whole numbers, no
                sample labelled >= 0, or no class with two samples (the covariance would be zero).
            NonFiniteError: Features holding NaN or Inf.
        """
        h, labels = id_samples(require(x, "features", "Mahalanobis").double(), y, "Mahalanobis")
        self.classes, self.means, index = present_class_means(h, labels)
        centered = h - self.means[index]
        if not bool(centered.any()):
            raise DataError(
                f"Mahalanobis needs at least two samples of one class to estimate the shared covariance (got "
                f"{h.shape[0]} sample(s) of {len(self.classes)} class(es) with no spread: the covariance is zero); "
                "fit on more in-distribution samples"
            )
        cov = centered.T @ centered / h.shape[0]
        self.precision = torch.linalg.pinv(cov, hermitian=True)
        self.fitted = True
        return self

    def predict_features(self, x: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance to the nearest class mean (B,), computed in float64.

        Args:
            x: Features (B, D).

        Returns:
            The scores, in the dtype of ``x``.

        Raises:
            RequiresFittingError: Not fitted.
            DataError: Features missing or not 2-D.
            NonFiniteError: Features holding NaN or Inf.
        """
        self._check_fitted()
        x = require(x, "features", "Mahalanobis")
        h = x.double()
        means, precision = self.means.to(h.device), self.precision.to(h.device)
        # (h - mu)^T P (h - mu) = h^T P h - 2 h^T P mu + mu^T P mu, for every class at once
        hp = h @ precision
        d2 = (hp * h).sum(1, keepdim=True) - 2 * hp @ means.T + ((means @ precision) * means).sum(1)
        return scores_like(d2.amin(1), x)


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
        """Keep the L2-normalised training features as the bank (labels only mark OoD samples, which are dropped).

        Args:
            x: ID training features (N, D), N >= k.
            y: Their labels (N,), or None: every sample is in-distribution.

        Returns:
            The fitted detector.

        Raises:
            DataError: Features missing, not 2-D, or fewer than k; labels not matching.
            NonFiniteError: Features holding NaN or Inf.
        """
        h = require(x, "features", "KNN").double()
        if y is not None:
            h, _ = id_samples(h, y, "KNN")
        if h.shape[0] < self.k:
            raise DataError(f"KNN with k={self.k} needs at least k training features (got {h.shape[0]}); lower k")
        self.bank = torch.nn.functional.normalize(h, dim=1)
        self.fitted = True
        return self

    def predict_features(self, x: torch.Tensor) -> torch.Tensor:
        """Distance of each normalised feature to its k-th nearest bank entry (B,), computed in float64.

        Args:
            x: Features (B, D).

        Returns:
            The scores, in the dtype of ``x``.

        Raises:
            RequiresFittingError: Not fitted.
            DataError: Features missing or not 2-D.
            NonFiniteError: Features holding NaN or Inf.
        """
        self._check_fitted()
        x = require(x, "features", "KNN")
        u = torch.nn.functional.normalize(x.double(), dim=1)
        sim = u @ self.bank.to(u.device).T  # ||u - b||^2 = 2 - 2 u.b for unit vectors
        kth = sim.topk(self.k, dim=1).values[:, -1]
        return scores_like((2 - 2 * kth).clamp_min(0).sqrt(), x)
