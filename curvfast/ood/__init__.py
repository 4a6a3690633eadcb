"""Out-of-distribution detection: one detector API (pytorch-ood's), a registry, metrics.

Every detector's score is **higher = more likely OoD**, and every detector has pytorch-ood's
(0.4.0) calling contract; with pytorch-ood installed they are its detectors too
(:mod:`curvfast.ood._pytorch_ood`), without it nothing changes::

    from curvfast.ood import DETECTORS, NormScaling, ood_metrics
    det = NormScaling(model).fit(id_train_loader)   # or NormScaling(None).fit_logits(logits, labels)
    s = det.predict(x)                              # (B,), also det(x)
    s = det.predict_logits(saved_logits)            # from saved outputs
    ood_metrics(det.predict(x_id), det.predict(x_ood))["auroc"]

:data:`DETECTORS` maps names to detector classes; :func:`register_detector` adds one, and it is then
benchmarked by ``curvfast ood`` and offered by ``curvfast idkd --detector``.
"""
from curvfast.ood._base import (
    DETECTORS, Detector, FeaturesDetector, LogitsDetector, ModelNotSetError, OutputExtractor, RequiresFittingError,
    UnscaledClassWarning, collect_outputs, detector_class, register_detector,
)
from curvfast.ood._logit_detectors import MSP, ODIN, Energy, MaxLogit  # first: the registry's order
from curvfast.ood._feature_detectors import KNN, Mahalanobis, class_means
from curvfast.ood._evaluation import METRIC_NAMES, gains, ood_metrics
from curvfast.ood._norm_scaling import NORM_STATISTICS, NormScaling, NormScalingFeatures, per_class_statistic
from curvfast.ood._pytorch_ood import register_with_pytorch_ood
from curvfast.ood._vrm import VRM, VRMBatch, VRMTransform, vrm_batch
from curvfast.ood._curvature import InputCurvature

__all__ = [
    "Detector", "LogitsDetector", "FeaturesDetector", "DETECTORS", "register_detector", "detector_class",
    "RequiresFittingError", "ModelNotSetError", "UnscaledClassWarning", "OutputExtractor", "collect_outputs",
    "ood_metrics", "gains", "METRIC_NAMES",
    "MSP", "MaxLogit", "Energy", "ODIN", "Mahalanobis", "KNN", "class_means",
    "NormScaling", "NormScalingFeatures", "per_class_statistic", "NORM_STATISTICS",
    "VRM", "VRMBatch", "VRMTransform", "vrm_batch", "register_with_pytorch_ood", "InputCurvature",
]
