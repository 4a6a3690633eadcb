"""curvfast's OoD detectors as pytorch-ood detectors (``pytorch_ood.api`` subclasses).

Used exactly like pytorch-ood's own detectors, and evaluated with ``pytorch_ood.metrics.OODMetrics``::

    from curvfast.pipelines.ood.pytorch_ood import NormScaling, VRM
    detector = NormScaling(model).fit(id_train_loader)     # or .fit_logits(logits, labels)
    scores = detector(x)                                    # = detector.predict(x); higher = more OoD
    scores = detector.predict_logits(saved_logits)

- ``NormScaling(model, statistic, temperature)``: a ``LogitsDetector`` (per-class normalised logits, then MSP);
- ``NormScalingFeatures(model, statistic, temperature)``: the class-mean variant, a ``FeaturesDetector``
  (``fit_features(z, y)``, ``predict_features(z)`` on penultimate features);
- ``VRM(model, variant)``: a ``LogitsDetector`` for a (K+1)-output VRM network (no fit needed);
- ``PytorchOODDetector(detector, model)``: any other curvfast detector (MSP, ODIN, Mahalanobis ...)
  behind the same API, as ``curvfast ood`` runs them.

curvfast's Mahalanobis and KNN compute pytorch-ood's statistics (KNN the same distance; Mahalanobis
2N times pytorch-ood's score, whose covariance is not divided by N), so they are not duplicated here.
Unlike pytorch-ood, ``predict(x)`` scores in eval mode and restores the model's mode. Without
pytorch-ood installed the classes keep the same methods on a minimal base.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from curvfast.pipelines.ood.base import Detector as CurvfastDetector
from curvfast.pipelines.ood.norm_scaling import NormScaling as _NormScaling
from curvfast.pipelines.ood.vrm import VRM as _VRM

try:
    from pytorch_ood.api import Detector, FeaturesDetector, LogitsDetector, ModelNotSetException, RequiresFittingException
except ImportError:  # pytorch-ood is optional: the same calling contract on a minimal base
    class Detector:  # type: ignore[no-redef]
        requires_fit = False

        def __call__(self, *args, **kwargs):
            return self.predict(*args, **kwargs)

    LogitsDetector = FeaturesDetector = Detector  # type: ignore[misc]

    class RequiresFittingException(RuntimeError):  # type: ignore[no-redef]
        pass

    class ModelNotSetException(ValueError):  # type: ignore[no-redef]
        pass

__all__ = ["PytorchOODDetector", "NormScaling", "NormScalingFeatures", "VRM"]


class PytorchOODDetector(Detector):
    """A curvfast detector ``core`` behind pytorch-ood's API, reading ``model`` (logits, and the input
    of its last ``nn.Linear`` as features). ``model`` may be None when only ``*_logits`` /
    ``*_features`` are used."""

    def __init__(self, core: CurvfastDetector, model: nn.Module | None, feature_layer: str | None = None,
                 output_transform: Callable | None = None):
        super().__init__()
        self.core, self.model = core, model
        self.requires_fit = core.needs_fit
        self._outputs = dict(feature_layer=feature_layer, output_transform=output_transform)
        if model is not None:
            core.attach(model, **self._outputs)

    def fit(self, data_loader) -> "PytorchOODDetector":
        """Read the in-distribution ``(x, y)`` batches of ``data_loader`` through the model once."""
        if self.model is None:
            raise ModelNotSetException("fit(data_loader) needs the model: pass it to the constructor, or use fit_logits / fit_features")
        self.core.fit(self.model, data_loader, **self._outputs)
        return self

    def fit_logits(self, logits: torch.Tensor, y: torch.Tensor) -> "PytorchOODDetector":
        self.core.fit_features(logits=logits.detach().cpu(), labels=y.detach().cpu())
        return self

    def fit_features(self, x: torch.Tensor, y: torch.Tensor) -> "PytorchOODDetector":
        self.core.fit_features(features=x.detach().cpu(), labels=y.detach().cpu())
        return self

    def _check_fitted(self) -> None:
        if self.requires_fit and not self.core.fitted:
            raise RequiresFittingException(f"{type(self).__name__}: call fit(loader), fit_logits or fit_features before predict")

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Outlier scores (B,) of a batch of inputs; higher = more likely OoD."""
        if self.model is None:
            raise ModelNotSetException
        self._check_fitted()
        return self.core.score(x)

    def predict_logits(self, logits: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return self.core.score_outputs(logits=logits)

    def predict_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return self.core.score_outputs(features=x)


class NormScaling(PytorchOODDetector, LogitsDetector):
    """Norm-scaling on the logits (see :mod:`curvfast.pipelines.ood.norm_scaling`): a pytorch-ood ``LogitsDetector``."""

    requires_fit = True

    def __init__(self, model: nn.Module | None, statistic: str = "mean", temperature: float = 1.0):
        super().__init__(_NormScaling(statistic, "logits", temperature), model)


class NormScalingFeatures(PytorchOODDetector, FeaturesDetector):
    """Norm-scaling on h·μ_c, the penultimate feature against the class-mean features: a ``FeaturesDetector``."""

    requires_fit = True

    def __init__(self, model: nn.Module | None, statistic: str = "mean", temperature: float = 1.0,
                 feature_layer: str | None = None):
        super().__init__(_NormScaling(statistic, "class_means", temperature), model, feature_layer)


class VRM(PytorchOODDetector, LogitsDetector):
    """The VRM score of a (K+1)-output network (see :mod:`curvfast.pipelines.ood.vrm`): a ``LogitsDetector``."""

    def __init__(self, model: nn.Module | None, variant: str = "aux"):
        super().__init__(_VRM(variant), model)
