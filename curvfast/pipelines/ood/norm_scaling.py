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
  (the classifier row for ``source="logits"``, the class-mean feature for ``source="class_means"``);
- ``"none"``: s_c = 1 (plain MSP).

``source`` picks the similarity: ``"logits"`` (a_c = z_c, the model's logits) or ``"class_means"``
(a_c = h . mu_c, the dot product of the feature with the mean ID feature of class c, the paper's
"dot product of the latent representation with the mean class representation").
"""
from __future__ import annotations

import torch

from curvfast.pipelines.ood.base import Detector, require
from curvfast.pipelines.ood.feature_detectors import detector_labels, class_means

__all__ = ["NormScaling", "per_class_statistic", "NORM_STATISTICS", "SOURCES"]

NORM_STATISTICS = ("mean", "max", "rms", "std", "weight_norm", "none")
SOURCES = ("logits", "class_means")


def per_class_statistic(similarity: torch.Tensor, labels: torch.Tensor, statistic: str) -> torch.Tensor:
    """s_c (K,) from the similarities a (N, K) of ID samples with labels y: statistic of
    {a_ic : y_i = c} for each class c (``"mean"``, ``"max"``, ``"rms"``, ``"std"``; ``"none"`` gives ones)."""
    k = similarity.shape[1]
    if statistic == "none":
        return torch.ones(k, dtype=similarity.dtype)
    own = similarity.gather(1, labels.unsqueeze(1)).squeeze(1)  # a_{i, y_i}
    out = torch.empty(k, dtype=similarity.dtype)
    for c in range(k):
        vals = own[labels == c]
        if vals.numel() == 0:
            raise ValueError(f"class {c} has no in-distribution sample; norm-scaling needs every class in the fit data")
        if statistic == "mean":
            out[c] = vals.mean()
        elif statistic == "max":
            out[c] = vals.max()
        elif statistic == "rms":
            out[c] = vals.pow(2).mean().sqrt()
        elif statistic == "std":
            out[c] = vals.std(correction=0)
        else:
            raise ValueError(f"statistic must be one of {NORM_STATISTICS} (got {statistic!r})")
    return out


class NormScaling(Detector):
    """Per-class normalised logits, then MSP. See the module docstring for the math."""

    name = "norm_scaling"
    needs_fit = True

    def __init__(self, statistic: str = "mean", source: str = "logits", temperature: float = 1.0):
        super().__init__()
        if statistic not in NORM_STATISTICS:
            raise ValueError(f"statistic must be one of {NORM_STATISTICS} (got {statistic!r})")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES} (got {source!r})")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (got {temperature})")
        self.statistic, self.source, self.temperature = statistic, source, float(temperature)

    def similarity(self, logits=None, features=None) -> torch.Tensor:
        if self.source == "logits":
            return require(logits, "logits", "NormScaling(source='logits')").double()
        h = require(features, "features", "NormScaling(source='class_means')").double()
        return h @ self.means.to(h.device).T

    def fit_features(self, logits=None, features=None, labels=None, class_weights: torch.Tensor | None = None):
        """Estimate s_c. ``class_weights`` (K, D) are the classifier rows for ``statistic="weight_norm"``
        with ``source="logits"``; after ``fit(model, ...)`` they are read from the model."""
        if self.source == "class_means":
            h = require(features, "features", "NormScaling(source='class_means')").double()
            self.means = class_means(h, detector_labels(labels, h.shape[0], "NormScaling"))
        sim = self.similarity(logits, features)
        y = detector_labels(labels, sim.shape[0], "NormScaling")
        if self.statistic == "weight_norm":
            reps = self.means if self.source == "class_means" else class_weights
            if reps is None and self.extractor is not None:
                reps = self.extractor.class_weights()
            if reps is None:
                raise ValueError("statistic='weight_norm' with source='logits' needs "
                                 "class_weights=<classifier weight (K, D)> or fit(model, ...)")
            scale = reps.double().norm(dim=1).cpu()
        else:
            scale = per_class_statistic(sim, y, self.statistic)
        if scale.shape[0] != sim.shape[1]:
            raise ValueError(f"{scale.shape[0]} per-class statistics for {sim.shape[1]} classes")
        if not (scale > 0).all():
            bad = torch.nonzero(scale <= 0).flatten().tolist()
            raise ValueError(
                f"norm-scaling statistic {self.statistic!r} is <= 0 for classes {bad} (their own-class similarity is "
                "not positive on ID data); use statistic='rms' or 'weight_norm'"
            )
        self.scale = scale
        self.fitted = True
        return self

    def scaled_logits(self, logits=None, features=None) -> torch.Tensor:
        """z~_c = a_c * s_bar / s_c."""
        sim = self.similarity(logits, features)
        scale = self.scale.to(sim.device)
        return sim * (scale.mean() / scale)

    def score_outputs(self, logits=None, features=None):
        return -torch.softmax(self.scaled_logits(logits, features) / self.temperature, dim=1).amax(1)
