"""OoD benchmark on digits: norm-scaling, VRM and the standard baselines -> run folder (docs/ood.md).

The application of :mod:`curvfast.ood` (the detectors, their registry and the metrics): an offline
benchmark (``curvfast ood``: :class:`Config`, :func:`run`) that trains a K-class and a (K+1)-class
VRM network per seed and scores every registered detector against five OoD sets.
"""
from curvfast.pipelines.ood.pipeline import OOD_SETS, PRESETS, Config, ood_sets, run, summary

__all__ = ["Config", "PRESETS", "run", "summary", "ood_sets", "OOD_SETS"]
