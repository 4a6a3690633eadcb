"""Norm-scaling: per-class normalisation of the logits, then MSP (docs/ood.md).

A logit is an (unnormalised) angular similarity to a class representation,
z_c = w_c . h = ||w_c|| ||h|| cos(theta_c). Classes have different similarity distributions, so
one threshold on max_c softmax(z)_c means different uncertainties for different classes.
Norm-scaling divides each class's similarity by a per-class statistic s_c estimated on the
in-distribution training samples *of that class*, so that a similarity of s_c means "typical for
class c" for every c:

    z~_c = a_c(x) * s_bar / s_c,     s_bar = (1/K) sum_c s_c,
    p(x) = max_c softmax(z~ / T)_c,     score(x) = log((1 - p) / p)      (higher = more OoD).

The score is the log-odds of "not the top class": a strictly increasing function of MSP's -p, so every
ranking metric (AUROC, AUPR, FPR95) is MSP's on the rescaled logits wherever -p itself resolves the
samples; computed as logsumexp_{c != top}(z~_c / T) - z~_top / T, it never saturates. (-p does: on the
class-mean similarities, whose scale is ||h||^2, p rounds to exactly 1 for most ID samples, in float64 and
more so in float32, and those samples tie.) Two samples tie only when their rescaled logits have the same
log-odds; the metrics count a tie as half (``curvfast.metrics``, as sklearn).

s_bar keeps the logits on their original overall scale, so ``statistic="none"`` ranks exactly as MSP
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

**A class without a usable statistic** (no training sample, or s_c <= 0: e.g. ``"mean"`` on a random
network, whose own-class logits are not positive on average; s_c is a scale and must be positive) is left
unscaled: its s_c is set to the mean of the usable statistics, so z~_c = z_c * s_bar / s_c = z_c (exactly
so when no class has a usable statistic: plain MSP ranking). The fit warns
(:class:`~curvfast.ood.UnscaledClassWarning`) and lists them in ``unscaled_classes``.

Two detectors, one per similarity: :class:`NormScaling` reads the logits (a_c = z_c), and
:class:`NormScalingFeatures` the penultimate features (a_c = h . mu_c, the dot product of the
feature with the mean ID feature of class c, the paper's "dot product of the latent representation with the mean
class representation"; the classes are those of the fit data).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from curvfast.errors import ConfigError, DataError, UnknownNameError
from curvfast.ood._base import (
    FeaturesDetector, LogitsDetector, UnscaledClassWarning, check_temperature, id_samples, register_detector, require,
    scores_like,
)
from curvfast.ood._feature_detectors import present_class_means

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
        labels: Their classes y (N,), in 0..K-1.
        statistic: ``"mean"``, ``"max"``, ``"rms"`` or ``"std"`` of {a_ic : y_i = c} for each class c;
            ``"none"`` gives ones.

    Returns:
        s (K,); NaN for a class without a sample.

    Raises:
        UnknownNameError: ``statistic`` is not one of these.
    """
    k = similarity.shape[1]
    if statistic == "none":
        return torch.ones(k, dtype=similarity.dtype)
    if statistic not in ("mean", "max", "rms", "std"):
        raise UnknownNameError(f"statistic must be one of ('mean', 'max', 'rms', 'std', 'none') (got {statistic!r})")
    own = similarity.gather(1, labels.unsqueeze(1)).squeeze(1)  # a_{i, y_i}
    out = torch.full((k,), float("nan"), dtype=similarity.dtype)
    for c in range(k):
        vals = own[labels == c]
        if vals.numel() == 0:
            continue
        if statistic == "mean":
            out[c] = vals.mean()
        elif statistic == "max":
            out[c] = vals.max()
        elif statistic == "rms":
            out[c] = vals.pow(2).mean().sqrt()
        else:
            out[c] = vals.std(correction=0)
    return out


def _log_odds(u: torch.Tensor) -> torch.Tensor:
    """log((1 - p) / p) with p = max_c softmax(u)_c, as logsumexp over the other classes minus the top one."""
    top, idx = u.max(1)
    return torch.logsumexp(u.scatter(1, idx.unsqueeze(1), float("-inf")), 1) - top


class _NormScalingMath:
    """What both norm-scaling detectors share: the settings, the fit of s_c and the score."""

    statistic: str
    temperature: float
    scale: torch.Tensor
    unscaled_classes: list[int]

    def __init__(self, model: nn.Module | None = None, statistic: str = "mean", temperature: float = 1.0, **outputs):
        self.statistic, self.temperature = _check_statistic(statistic), check_temperature(temperature)
        super().__init__(model, **outputs)  # the detector base that follows this mixin

    def _fit_scale(self, sim: torch.Tensor, labels: torch.Tensor, reps: torch.Tensor | None, missing: str,
                   classes: list[int]) -> None:
        """Set s_c from the ID similarities ``sim`` (N, K) (``classes``: the class id of each column).

        ``reps`` (K, D) are the class representations whose norms ``"weight_norm"`` reads (``missing`` says how to
        give them). A class whose statistic is not a positive number is left unscaled (the module docstring).
        """
        if sim.shape[1] < 2:
            raise DataError(f"{type(self).__name__} needs at least two classes in the fit data (got {sim.shape[1]})")
        if self.statistic == "weight_norm":
            if reps is None:
                raise DataError(missing)
            scale = reps.double().norm(dim=1).cpu()
        else:
            scale = per_class_statistic(sim, labels, self.statistic)
        if scale.shape[0] != sim.shape[1]:
            raise DataError(f"{scale.shape[0]} per-class statistics for {sim.shape[1]} classes")
        usable = torch.isfinite(scale) & (scale > 0)
        self.unscaled_classes = [classes[i] for i in torch.nonzero(~usable).flatten().tolist()]
        if self.unscaled_classes:
            fill = scale[usable].mean() if bool(usable.any()) else torch.tensor(1.0, dtype=scale.dtype)
            scale = torch.where(usable, scale, fill)
            warnings.warn(UnscaledClassWarning(
                f"{type(self).__name__}: no usable statistic {self.statistic!r} for classes {self.unscaled_classes} "
                "(no fit sample, or a statistic <= 0: their own-class similarity is not positive on ID data); they are "
                "left unscaled (s_c = the mean of the other statistics); statistic='rms' or 'weight_norm' is positive "
                "for any trained network"), stacklevel=3)
        self.scale = scale
        self.fitted = True

    def _rescaled(self, sim: torch.Tensor) -> torch.Tensor:
        if sim.shape[1] != self.scale.shape[0]:
            raise DataError(f"{type(self).__name__} was fitted on {self.scale.shape[0]} classes; got similarities to "
                            f"{sim.shape[1]}")
        scale = self.scale.to(sim.device)
        return sim * (scale.mean() / scale)

    def _score(self, sim: torch.Tensor) -> torch.Tensor:
        return _log_odds(self._rescaled(sim) / self.temperature)


@register_detector("norm_scaling")
class NormScaling(_NormScalingMath, LogitsDetector):
    r"""Per-class normalised logits, then the log-odds of MSP: a_c = z_c (the module docstring has the math).

    .. math:: s(x) = \log \frac{1 - p}{p}, \quad p = \max_c \operatorname{softmax}(z_c \bar s / (s_c T))

    Reads only the logits (any model), except ``statistic="weight_norm"``, which reads the rows of the
    ``nn.Linear`` classifier (the last one, or ``feature_layer``).

    Args:
        model: The classifier (None for the ``*_logits`` methods only).
        statistic: The per-class statistic s_c, one of :data:`NORM_STATISTICS`.
        temperature: The softmax temperature T > 0.
        **outputs: ``output_transform``, and ``feature_layer``: the ``nn.Linear`` classifier whose rows
            ``"weight_norm"`` reads (see :class:`~curvfast.ood.Detector`).

    Raises:
        UnknownNameError: ``statistic`` is not one of :data:`NORM_STATISTICS`.
        ConfigError: ``temperature`` <= 0; ``"weight_norm"`` on a model whose classifier layer is not an
            ``nn.Linear``.
        NonFiniteError: ``temperature`` is not finite.
    """

    requires_fit = True
    takes_feature_layer = True

    def __init__(self, model: nn.Module | None = None, statistic: str = "mean", temperature: float = 1.0, **outputs):
        super().__init__(model, statistic, temperature, **outputs)
        if self.extractor is not None and self._reads_layer() and self.extractor.class_weights() is None:
            raise ConfigError(
                f"statistic='weight_norm' reads the rows of the nn.Linear classifier; "
                f"{self.extractor.feature_layer!r} is a {type(self.extractor.layer).__name__}: name the nn.Linear "
                "whose output is the logits with feature_layer="
            )

    def _reads_layer(self) -> bool:
        return self.statistic == "weight_norm"

    def fit_logits(self, logits: torch.Tensor, y: torch.Tensor,
                   class_weights: torch.Tensor | None = None) -> "NormScaling":
        """Estimate s_c from ID training logits (samples labelled < 0 dropped).

        Args:
            logits: ID training logits (N, K).
            y: Their classes (N,), in 0..K-1 (< 0: an OoD sample, dropped).
            class_weights: The classifier rows (K, D) for ``statistic="weight_norm"``; read from the
                model when it was given.

        Returns:
            The fitted detector.

        Raises:
            DataError: Bad logits or labels (a label >= K), fewer than two classes, or ``"weight_norm"``
                without classifier rows.
            NonFiniteError: Logits holding NaN or Inf.
        """
        sim = require(logits, "logits", "NormScaling").double()
        sim, labels = id_samples(sim, y, "NormScaling", sim.shape[1])
        if class_weights is None and self.extractor is not None:
            class_weights = self.extractor.class_weights()
        self._fit_scale(sim, labels, class_weights,
                        "statistic='weight_norm' needs class_weights=<classifier weight (K, D)> or NormScaling(model)",
                        list(range(sim.shape[1])))
        return self

    def scaled_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The normalised logits z~_c = z_c * s_bar / s_c.

        Args:
            logits: Logits (B, K).

        Returns:
            z~ (B, K), in the dtype of ``logits``.
        """
        self._check_fitted()
        z = require(logits, "logits", "NormScaling")
        return self._rescaled(z.double()).to(z.dtype)

    def predict_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Scores log((1 - p) / p), p = max_c softmax(z~ / T)_c.

        Args:
            logits: Logits (B, K).

        Returns:
            The scores (B,), in the dtype of ``logits``.

        Raises:
            RequiresFittingError: Not fitted.
            DataError: Logits missing, not 2-D, or of another class count than the fit.
            NonFiniteError: Logits holding NaN or Inf.
        """
        self._check_fitted()
        z = require(logits, "logits", "NormScaling")
        return scores_like(self._score(z.double()), z)


@register_detector("norm_scaling_features")
class NormScalingFeatures(_NormScalingMath, FeaturesDetector):
    r"""Norm-scaling on a_c = h . mu_c, the penultimate feature against the class-mean ID features.

    .. math:: s(x) = \log \frac{1 - p}{p}, \quad p = \max_c \operatorname{softmax}((h \cdot \mu_c) \bar s / (s_c T))

    The classes are those of the fit data (``classes``); each needs a mean, so a class without a training
    sample is not one of the softmax's terms.

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
        """The class means mu_c, then s_c, from ID training features (samples labelled < 0 dropped).

        Args:
            x: ID training features (N, D).
            y: Their classes (N,).

        Returns:
            The fitted detector.

        Raises:
            DataError: Bad features or labels, or fewer than two classes.
            NonFiniteError: Features holding NaN or Inf.
        """
        h, labels = id_samples(require(x, "features", "NormScalingFeatures").double(), y, "NormScalingFeatures")
        self.classes, self.means, index = present_class_means(h, labels)
        self._fit_scale(h @ self.means.T, index, self.means, "", self.classes.tolist())
        return self

    def similarity(self, x: torch.Tensor) -> torch.Tensor:
        """The similarities a_c = h . mu_c, one column per class of ``classes``.

        Args:
            x: Features (B, D).

        Returns:
            a (B, K'), float64.
        """
        self._check_fitted()
        h = require(x, "features", "NormScalingFeatures").double()
        return h @ self.means.to(h.device).T

    def predict_features(self, x: torch.Tensor) -> torch.Tensor:
        """Scores log((1 - p) / p), p = max_c softmax(a~ / T)_c.

        Args:
            x: Features (B, D).

        Returns:
            The scores (B,), in the dtype of ``x``.

        Raises:
            RequiresFittingError: Not fitted.
            DataError: Features missing or not 2-D.
            NonFiniteError: Features holding NaN or Inf.
        """
        return scores_like(self._score(self.similarity(x)), x)
