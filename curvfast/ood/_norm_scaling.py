"""Norm-scaling: per-class normalisation of the logits, then MSP (docs/ood.md).

A logit is an (unnormalised) angular similarity to a class representation,
z_c = w_c . h = ||w_c|| ||h|| cos(theta_c). Classes have different similarity distributions, so
one threshold on max_c softmax(z)_c means different uncertainties for different classes.
Norm-scaling divides each class's similarity by a per-class statistic s_c estimated on the
in-distribution training samples *of that class*, so that a similarity of s_c means "typical for
class c" for every c:

    z~_c = a_c(x) * s_bar / s_c,     s_bar = (1/K) sum_c s_c,
    score(x) = -max_c softmax(z~ / T)_c            (higher = more OoD).

s_bar keeps the logits on their original overall scale, so ``statistic="none"`` is exactly MSP
and the ablation isolates the per-class part. The exact published formula was not available;
curvfast uses ``statistic="mean"`` by default and ablates the alternatives:

- ``"mean"``: s_c = mean of a_c over ID training samples of class c;
- ``"max"``: s_c = max of a_c over those samples;
- ``"rms"`` (norm-based): s_c = sqrt(mean a_c^2) over those samples, the L2 norm of the class's
  similarities divided by sqrt(n_c);
- ``"std"``: s_c = standard deviation of a_c over those samples (the spread, not the location);
- ``"weight_norm"`` (norm-based): s_c = ||w_c||, the norm of the class representation itself
  (the classifier row for :class:`NormScaling`, the class-mean feature for :class:`NormScalingFeatures`);
- ``"none"``: s_c = 1 (plain MSP).

Two detectors, one per similarity: :class:`NormScaling` reads the logits (a_c = z_c), and
:class:`NormScalingFeatures` the penultimate features (a_c = h . mu_c, the dot product of the
feature with the mean ID feature of class c, the paper's "dot product of the latent representation with the mean
class representation").
"""
from __future__ import annotations

import torch
from torch import nn

from curvfast.errors import DataError, UnknownNameError
from curvfast.ood._base import FeaturesDetector, LogitsDetector, check_temperature, register_detector, require
from curvfast.ood._feature_detectors import class_means, detector_labels

__all__ = ["NormScaling", "NormScalingFeatures", "per_class_statistic", "NORM_STATISTICS"]

NORM_STATISTICS = ("mean", "max", "rms", "std", "weight_norm", "none")


def _check_statistic(statistic: str) -> str:
    if statistic not in NORM_STATISTICS:
        raise UnknownNameError(f"statistic must be one of {NORM_STATISTICS} (got {statistic!r})")
    return statistic


def per_class_statistic(similarity: torch.Tensor, labels: torch.Tensor, statistic: str) -> torch.Tensor:
    """The per-class statistic s_c of the own-class similarities of ID samples.

    Args:
        similarity: Similarities a (N, K) of ID samples to each class.
        labels: Their classes y (N,).
        statistic: ``"mean"``, ``"max"``, ``"rms"`` or ``"std"`` of {a_ic : y_i = c} for each class c;
            ``"none"`` gives ones.

    Returns:
        s (K,).

    Raises:
        UnknownNameError: ``statistic`` is not one of these.
        DataError: A class has no sample.
    """
    k = similarity.shape[1]
    if statistic == "none":
        return torch.ones(k, dtype=similarity.dtype)
    if statistic not in ("mean", "max", "rms", "std"):
        raise UnknownNameError(f"statistic must be one of ('mean', 'max', 'rms', 'std', 'none') (got {statistic!r})")
    own = similarity.gather(1, labels.unsqueeze(1)).squeeze(1)  # a_{i, y_i}
    out = torch.empty(k, dtype=similarity.dtype)
    for c in range(k):
        vals = own[labels == c]
        if vals.numel() == 0:
            raise DataError(f"class {c} has no in-distribution sample; norm-scaling needs every class in the fit data")
        if statistic == "mean":
            out[c] = vals.mean()
        elif statistic == "max":
            out[c] = vals.max()
        elif statistic == "rms":
            out[c] = vals.pow(2).mean().sqrt()
        else:
            out[c] = vals.std(correction=0)
    return out


class _NormScalingMath:
    """What both norm-scaling detectors share: the settings, the fit of s_c and the score."""

    statistic: str
    temperature: float
    scale: torch.Tensor

    def __init__(self, model: nn.Module | None = None, statistic: str = "mean", temperature: float = 1.0, **outputs):
        super().__init__(model, **outputs)  # the detector base that follows this mixin
        self.statistic, self.temperature = _check_statistic(statistic), check_temperature(temperature)

    def _fit_scale(self, sim: torch.Tensor, labels: torch.Tensor, reps: torch.Tensor | None, missing: str) -> None:
        """Set s_c from the ID similarities ``sim`` (N, K).

        ``reps`` (K, D) are the class representations whose norms ``"weight_norm"`` reads (``missing`` says how to
        give them).
        """
        if self.statistic == "weight_norm":
            if reps is None:
                raise DataError(missing)
            scale = reps.double().norm(dim=1).cpu()
        else:
            scale = per_class_statistic(sim, labels, self.statistic)
        if scale.shape[0] != sim.shape[1]:
            raise DataError(f"{scale.shape[0]} per-class statistics for {sim.shape[1]} classes")
        if not (scale > 0).all():
            bad = torch.nonzero(scale <= 0).flatten().tolist()
            raise DataError(
                f"norm-scaling statistic {self.statistic!r} is <= 0 for classes {bad} (their own-class similarity is "
                "not positive on ID data); use statistic='rms' or 'weight_norm'"
            )
        self.scale = scale
        self.fitted = True

    def _rescaled(self, sim: torch.Tensor) -> torch.Tensor:
        scale = self.scale.to(sim.device)
        return sim * (scale.mean() / scale)

    def _score(self, sim: torch.Tensor) -> torch.Tensor:
        return -torch.softmax(self._rescaled(sim) / self.temperature, dim=1).amax(1)


@register_detector("norm_scaling")
class NormScaling(_NormScalingMath, LogitsDetector):
    r"""Per-class normalised logits, then MSP: a_c = z_c (see the module docstring for the math).

    .. math:: s(x) = -\max_c \operatorname{softmax}(z_c \bar s / (s_c T))

    Args:
        model: The classifier (None for the ``*_logits`` methods only).
        statistic: The per-class statistic s_c, one of :data:`NORM_STATISTICS`.
        temperature: The softmax temperature T > 0.
        **outputs: ``feature_layer`` / ``output_transform``, see :class:`~curvfast.ood.Detector`.

    Raises:
        UnknownNameError: ``statistic`` is not one of :data:`NORM_STATISTICS`.
        ConfigError: ``temperature`` <= 0.
        NonFiniteError: ``temperature`` is not finite.
    """

    requires_fit = True

    def fit_logits(self, logits: torch.Tensor, y: torch.Tensor,
                   class_weights: torch.Tensor | None = None) -> "NormScaling":
        """Estimate s_c from ID training logits.

        Args:
            logits: ID training logits (N, K).
            y: Their classes (N,).
            class_weights: The classifier rows (K, D) for ``statistic="weight_norm"``; read from the
                model when it was given.

        Returns:
            The fitted detector.

        Raises:
            DataError: Bad logits or labels, a class without samples, a statistic <= 0, or
                ``"weight_norm"`` without classifier rows.
        """
        sim = require(logits, "logits", "NormScaling").double()
        if class_weights is None and self.extractor is not None:
            class_weights = self.extractor.class_weights()
        self._fit_scale(sim, detector_labels(y, sim.shape[0], "NormScaling"), class_weights,
                        "statistic='weight_norm' needs class_weights=<classifier weight (K, D)> or NormScaling(model)")
        return self

    def scaled_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The normalised logits z~_c = z_c * s_bar / s_c.

        Args:
            logits: Logits (B, K).

        Returns:
            z~ (B, K), float64.
        """
        self._check_fitted()
        return self._rescaled(require(logits, "logits", "NormScaling").double())

    def predict_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Scores -max_c softmax(z~ / T)_c (B,), float64.

        Args:
            logits: Logits (B, K).

        Returns:
            The scores.

        Raises:
            RequiresFittingError: Not fitted.
            DataError: Logits missing or not 2-D.
        """
        self._check_fitted()
        return self._score(require(logits, "logits", "NormScaling").double())


@register_detector("norm_scaling_features")
class NormScalingFeatures(_NormScalingMath, FeaturesDetector):
    """Norm-scaling on a_c = h . mu_c, the penultimate feature against the class-mean ID features.

    Args:
        model: The classifier (None for the ``*_features`` methods only).
        statistic: The per-class statistic s_c, one of :data:`NORM_STATISTICS` (``"weight_norm"``: ||mu_c||).
        temperature: The softmax temperature T > 0.
        **outputs: ``feature_layer`` / ``output_transform``, see :class:`~curvfast.ood.Detector`.

    Raises:
        UnknownNameError: ``statistic`` is not one of :data:`NORM_STATISTICS`.
        ConfigError: ``temperature`` <= 0.
        NonFiniteError: ``temperature`` is not finite.
    """

    requires_fit = True

    def fit_features(self, x: torch.Tensor, y: torch.Tensor | None = None) -> "NormScalingFeatures":
        """The class means mu_c, then s_c, from ID training features.

        Args:
            x: ID training features (N, D).
            y: Their classes (N,).

        Returns:
            The fitted detector.

        Raises:
            DataError: Bad features or labels, a class without samples, a statistic <= 0.
        """
        h = require(x, "features", "NormScalingFeatures").double()
        labels = detector_labels(y, h.shape[0], "NormScalingFeatures")
        self.means = class_means(h, labels)
        self._fit_scale(h @ self.means.T, labels, self.means, "")
        return self

    def similarity(self, x: torch.Tensor) -> torch.Tensor:
        """The similarities a_c = h . mu_c.

        Args:
            x: Features (B, D).

        Returns:
            a (B, K), float64.
        """
        self._check_fitted()
        h = require(x, "features", "NormScalingFeatures").double()
        return h @ self.means.to(h.device).T

    def predict_features(self, x: torch.Tensor) -> torch.Tensor:
        """Scores -max_c softmax(a~ / T)_c (B,), float64.

        Args:
            x: Features (B, D).

        Returns:
            The scores.

        Raises:
            RequiresFittingError: Not fitted.
            DataError: Features missing or not 2-D.
        """
        return self._score(self.similarity(x))
