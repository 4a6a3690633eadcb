"""curvfast's detectors as pytorch-ood detectors, without depending on pytorch-ood.

curvfast's :class:`~curvfast.ood.Detector` already has pytorch-ood's calling contract (the model at
construction, ``fit(loader)``, ``predict(x)``, ``fit_logits``/``predict_logits`` or
``fit_features``/``predict_features``). When pytorch-ood is imported, curvfast's three base classes
are registered as virtual subclasses of ``pytorch_ood.api.Detector``, ``LogitsDetector`` and
``FeaturesDetector`` (``abc.ABCMeta.register``), so pytorch-ood's benchmarks and tools that check
``isinstance(detector, LogitsDetector)`` accept them::

    from pytorch_ood.metrics import OODMetrics
    from curvfast.ood import NormScaling
    detector = NormScaling(model).fit(id_train_loader)
    metrics = OODMetrics()
    for x, y in test_loader:
        metrics.update(detector(x), y)

The registration happens when ``pytorch_ood.api`` is imported, before or after curvfast.ood, so
importing curvfast.ood never imports pytorch-ood itself (which takes seconds).

curvfast's Mahalanobis and KNN compute pytorch-ood's statistics (KNN the same distance; Mahalanobis
2N times pytorch-ood's score, whose covariance is not divided by N). Unlike pytorch-ood,
``predict(x)`` scores in eval mode and restores the model's modes.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

from curvfast.ood._base import Detector, FeaturesDetector, LogitsDetector

__all__ = ["register_with_pytorch_ood"]

_API = "pytorch_ood.api"


def register_with_pytorch_ood(api: ModuleType) -> None:
    """Register curvfast's detector bases as virtual subclasses of pytorch-ood's.

    Called automatically when ``pytorch_ood.api`` is imported; calling it again does nothing new.

    Args:
        api: The ``pytorch_ood.api`` module.
    """
    api.Detector.register(Detector)
    api.LogitsDetector.register(LogitsDetector)
    api.FeaturesDetector.register(FeaturesDetector)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Finds ``pytorch_ood.api`` as the path finder would, and registers curvfast's bases once it has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _API:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            register_with_pytorch_ood(module)

        spec.loader.exec_module = exec_module
        return spec


def _install() -> None:
    if sys.modules.get(_API) is not None:
        register_with_pytorch_ood(sys.modules[_API])
    elif not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())


_install()
