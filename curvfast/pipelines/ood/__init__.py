"""OoD benchmark on digits: norm-scaling, VRM and the standard baselines -> run folder (docs/ood.md).

Out-of-distribution detection: a pytorch-ood-shaped detector API, norm-scaling, the VRM
auxiliary-class detector, the standard baselines, metrics and an offline digits benchmark
(``curvfast ood``: :class:`Config`, :func:`run`).

Every detector's score is **higher = more likely OoD**::

    det = NormScaling().fit(model, id_train_loader)   # or fit_features(logits=..., labels=...)
    s = det.score(x)                                  # (B,), also det.predict(x)
    s = det.score_outputs(logits=z, features=h)       # from saved outputs
"""
from curvfast.pipelines.ood.base import Detector, OutputExtractor, collect_outputs
from curvfast.pipelines.ood.evaluation import METRIC_NAMES, ood_metrics
from curvfast.pipelines.ood.feature_detectors import KNN, Mahalanobis
from curvfast.pipelines.ood.logit_detectors import MSP, ODIN, Energy, MaxLogit
from curvfast.pipelines.ood.norm_scaling import NormScaling, per_class_statistic
from curvfast.pipelines.ood.pipeline import PRESETS, Config, run, summary
from curvfast.pipelines.ood.vrm import VRM, VRMTransform, vrm_batch

__all__ = [
    "Config", "PRESETS", "run", "summary",
    "Detector", "OutputExtractor", "collect_outputs", "ood_metrics", "METRIC_NAMES",
    "MSP", "MaxLogit", "Energy", "ODIN", "Mahalanobis", "KNN", "NormScaling", "per_class_statistic",
    "VRM", "VRMTransform", "vrm_batch",
]
