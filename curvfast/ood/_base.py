"""The detector interface (pytorch-ood's shape), the registry, and the logits/features a detector reads.

Every detector maps inputs to an **OoD score: higher = more likely out-of-distribution**. The one API
is pytorch-ood's (0.4.0, ``pytorch_ood.api``): the model is given at construction, then

- ``detector.fit(id_loader, device=None)``: run the model over in-distribution (training) batches
  ``(x, y)`` once and keep what the detector needs (class means, a feature bank, per-class statistics);
  a no-op for detectors with ``requires_fit = False``;
- ``detector.fit_logits(logits, y)`` / ``detector.fit_features(x, y)``: the same from saved outputs;
- ``detector.predict(x)`` (also ``detector(x)``): OoD scores (B,) of a batch of inputs;
- ``detector.predict_logits(logits)`` / ``detector.predict_features(x)``: OoD scores from saved outputs.

A :class:`LogitsDetector` reads the logits z (B, C), a :class:`FeaturesDetector` the penultimate
features h (B, D): the input of the model's last ``nn.Linear``, flattened, captured with a forward
hook (name another module with ``feature_layer=``). Detectors are registered by name in
:data:`DETECTORS` (:func:`register_detector`). When pytorch-ood is installed they are registered as
virtual subclasses of its ``Detector``, ``LogitsDetector`` and ``FeaturesDetector``
(:mod:`curvfast.ood._pytorch_ood`); curvfast does not need it.
"""
from __future__ import annotations

import abc
import math
from typing import Callable, ClassVar, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from curvfast.curvature._model import LogitFn, scoring_mode, unwrap_model
from curvfast.errors import ConfigError, CurvfastError, DataError, NonFiniteError, UnknownNameError

__all__ = ["Detector", "LogitsDetector", "FeaturesDetector", "OutputExtractor", "collect_outputs", "DETECTORS",
           "register_detector", "detector_class", "RequiresFittingError", "ModelNotSetError"]


class RequiresFittingError(CurvfastError, RuntimeError):
    """``predict`` was called on a detector that learns from in-distribution data before any ``fit``."""


class ModelNotSetError(ConfigError):
    """``fit(loader)`` or ``predict(x)`` was called on a detector constructed without a model."""


def _last_linear_name(model: nn.Module) -> str:
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError(
            "the model has no nn.Linear layer to take features from; pass feature_layer='<module name>' "
            "(a name from model.named_modules()) whose input is the feature vector"
        )
    return names[-1]


class OutputExtractor:
    """``x -> (logits (B, C), features (B, D))``: one forward with a hook on ``feature_layer``'s input.

    Args:
        model: The classifier (wrappers such as DDP are unwrapped).
        feature_layer: A name from ``model.named_modules()`` whose input is the feature vector; by
            default the last ``nn.Linear``, whose input is the penultimate representation h with
            logits z = W h + b.
        output_transform: Picks the logits from the model's output (e.g. ``lambda out: out["logits"]``).

    Raises:
        ConfigError: The model has no ``nn.Linear`` (and no ``feature_layer`` was named), or
            ``feature_layer`` is not one of its modules.
    """

    def __init__(self, model: nn.Module, feature_layer: str | None = None, output_transform: Callable | None = None):
        self.model = unwrap_model(model)
        self.feature_layer = feature_layer or _last_linear_name(self.model)
        modules = dict(self.model.named_modules())
        if self.feature_layer not in modules:
            raise ConfigError(f"feature_layer={self.feature_layer!r} is not a module of the model; "
                              "pick a name from model.named_modules()")
        self.layer = modules[self.feature_layer]
        self.logit_fn = LogitFn(self.model, output_transform)

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (CPU for a model without parameters)."""
        return next(self.model.parameters(), torch.empty(0)).device

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and features of a batch.

        Args:
            x: A batch of inputs on the model's device.

        Returns:
            ``(logits (B, C), features (B, D))``.
        """
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
        try:
            logits = self.logit_fn(x)
        finally:
            handle.remove()
        return logits, captured[-1].flatten(1)

    def class_weights(self) -> torch.Tensor | None:
        """The rows w_c of the feature layer's weight.

        Returns:
            The (K, D) weight when the feature layer is an ``nn.Linear`` classifier, else None.
        """
        return self.layer.weight.detach() if isinstance(self.layer, nn.Linear) else None


@torch.no_grad()
def collect_outputs(extractor: OutputExtractor, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, features and labels of every batch ``(x, y, ...)`` of ``loader`` (eval mode, on CPU).

    Args:
        extractor: The model's :class:`OutputExtractor`.
        loader: A ``DataLoader`` (or any iterable) of ``(x, y, ...)`` batches.

    Returns:
        ``(logits (N, C), features (N, D), labels (N,))`` on the CPU.

    Raises:
        DataError: The loader yielded no batches.
    """
    logits, feats, labels = [], [], []
    with scoring_mode(extractor.model):
        for batch in loader:
            x, y = batch[0], batch[1]
            z, h = extractor(x.to(extractor.device))
            logits.append(z.cpu())
            feats.append(h.cpu())
            labels.append(torch.as_tensor(y))
    if not logits:
        raise DataError("the in-distribution loader yielded no batches; pass a loader over in-distribution "
                        "training data")
    return torch.cat(logits), torch.cat(feats), torch.cat(labels)


def _as_loader(data, batch_size: int = 256):
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, torch.utils.data.Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    raise DataError(f"expected a DataLoader or a map-style Dataset of (x, y) pairs (got {type(data).__name__})")


DETECTORS: dict[str, type["Detector"]] = {}
"""Every registered detector class by name (its ``name`` attribute), in registration order."""

_D = TypeVar("_D", bound=type)


def register_detector(name: str) -> Callable[[_D], _D]:
    """Class decorator: register a :class:`Detector` subclass in :data:`DETECTORS` under ``name``.

    Registered detectors are benchmarked by ``curvfast ood`` and offered by ``curvfast idkd --detector``.
    Their constructor must accept the model as its first argument and have defaults for the rest.

    Args:
        name: The key in :data:`DETECTORS` and in results; also set as the class's ``name``.

    Returns:
        The decorator, which returns the class unchanged (apart from ``name``).

    Raises:
        ConfigError: ``name`` is taken by another class, or the class is not a :class:`Detector`.
    """
    def decorate(cls: _D) -> _D:
        if not (isinstance(cls, type) and issubclass(cls, Detector)):
            raise ConfigError(f"register_detector({name!r}) decorates Detector subclasses (got {cls!r})")
        if DETECTORS.get(name, cls) is not cls:
            raise ConfigError(f"detector name {name!r} is taken by {DETECTORS[name].__qualname__}; pick another name")
        cls.name = name
        DETECTORS[name] = cls
        return cls

    return decorate


def detector_class(name: str) -> type["Detector"]:
    """The registered detector class called ``name``.

    Args:
        name: A key of :data:`DETECTORS`.

    Returns:
        The class.

    Raises:
        UnknownNameError: ``name`` is not registered.
    """
    if name not in DETECTORS:
        raise UnknownNameError(f"detector must be one of {tuple(DETECTORS)} (got {name!r}); "
                               "register others with curvfast.ood.register_detector")
    return DETECTORS[name]


class Detector(abc.ABC):
    """Base of every OoD detector: pytorch-ood's ``Detector`` contract (see the module docstring).

    Subclass :class:`LogitsDetector` or :class:`FeaturesDetector`, not this class.

    Args:
        model: The classifier whose outputs are read; None when only ``fit_logits``/``fit_features``
            and ``predict_logits``/``predict_features`` are used.
        feature_layer: The module whose input is the feature vector (default: the last ``nn.Linear``).
        output_transform: Picks the logits from the model's output.

    Attributes:
        name: The detector's key in :data:`DETECTORS` and in results.
        requires_fit: Whether scoring needs a fit on in-distribution data first.
        auxiliary_class: Whether the detector scores a (K+1)-output network whose last class is an
            auxiliary OoD class (VRM), not a plain K-class classifier.
        hyperparameter_space: pytorch-ood's hyperparameter search space (empty: none tuned).
    """

    name: ClassVar[str] = "detector"
    requires_fit: ClassVar[bool] = False
    auxiliary_class: ClassVar[bool] = False
    hyperparameter_space: ClassVar[dict] = {}

    def __init__(self, model: nn.Module | None = None, *, feature_layer: str | None = None,
                 output_transform: Callable | None = None):
        self.model = model
        self.extractor = None if model is None else OutputExtractor(model, feature_layer, output_transform)
        self.fitted = not self.requires_fit

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`predict`.

        Args:
            x: A batch of inputs.

        Returns:
            The OOD scores, as :meth:`predict` returns them.
        """
        return self.predict(x)

    def to(self, device: str | torch.device) -> "Detector":
        """Move the model and the fitted tensors to ``device``.

        Args:
            device: The target device.

        Returns:
            The detector.
        """
        device = torch.device(device)
        if self.model is not None:
            self.model.to(device)
        for key, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(self, key, value.to(device))
        return self

    def _model_extractor(self, what: str) -> OutputExtractor:
        if self.extractor is None:
            raise ModelNotSetError(f"{type(self).__name__}.{what} needs the model: pass it to the constructor, "
                                   f"{type(self).__name__}(model, ...), or use the fit_*/predict_* methods on saved "
                                   "outputs")
        return self.extractor

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RequiresFittingError(f"{type(self).__name__} is not fitted; call fit(id_loader), fit_logits or "
                                       "fit_features first")

    def fit(self, data_loader, device: str | torch.device | None = None) -> "Detector":
        """Fit on in-distribution data: one pass of the model over ``data_loader``.

        A no-op when ``requires_fit`` is False.

        Args:
            data_loader: A ``DataLoader`` (or map-style ``Dataset``) of in-distribution ``(x, y)`` pairs.
            device: Move the model and the detector's state there first (default: where the model is).

        Returns:
            The fitted detector.

        Raises:
            ModelNotSetError: The detector has no model.
            DataError: The loader is not a loader, is empty, or its labels do not fit the detector.
        """
        if not self.requires_fit:
            return self
        extractor = self._model_extractor("fit")
        if device is not None:
            self.to(device)
        logits, features, labels = collect_outputs(extractor, _as_loader(data_loader))
        return self._fit_outputs(logits, features, labels)

    @abc.abstractmethod
    def _fit_outputs(self, logits: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> "Detector":
        """Fit from the outputs ``fit`` collected (dispatches to ``fit_logits`` or ``fit_features``)."""

    @abc.abstractmethod
    def _predict_outputs(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Scores from one forward's outputs (dispatches to ``predict_logits`` or ``predict_features``)."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """OoD scores of a batch of inputs, in eval mode (the model's modes are restored after).

        Args:
            x: A batch of inputs; moved to the model's device.

        Returns:
            Scores (B,); higher = more likely out-of-distribution.

        Raises:
            ModelNotSetError: The detector has no model.
            RequiresFittingError: The detector needs a fit first.
        """
        extractor = self._model_extractor("predict")
        self._check_fitted()
        with torch.no_grad(), scoring_mode(extractor.model):
            logits, features = extractor(x.to(extractor.device))
            return self._predict_outputs(logits, features)


class LogitsDetector(Detector):
    """A detector that reads the logits z (B, C).

    Subclasses implement :meth:`predict_logits` and, when ``requires_fit``, :meth:`fit_logits`.
    """

    def fit_logits(self, logits: torch.Tensor, y: torch.Tensor) -> "LogitsDetector":
        """Fit on saved in-distribution logits (no-op when ``requires_fit`` is False).

        Args:
            logits: Training logits (N, C).
            y: Their class labels (N,).

        Returns:
            The fitted detector.
        """
        return self

    @abc.abstractmethod
    def predict_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """OoD scores from saved logits.

        Args:
            logits: Logits (B, C).

        Returns:
            Scores (B,), float64; higher = more likely out-of-distribution.
        """

    def _fit_outputs(self, logits, features, labels):
        return self.fit_logits(logits, labels)

    def _predict_outputs(self, logits, features):
        return self.predict_logits(logits)


class FeaturesDetector(Detector):
    """A detector that reads the penultimate features h (B, D).

    Subclasses implement :meth:`predict_features` and, when ``requires_fit``, :meth:`fit_features`.
    """

    @property
    def encoder(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``x -> features (B, D)`` through the model (pytorch-ood's name), None without a model."""
        return None if self.extractor is None else (lambda x: self.extractor(x)[1])

    def fit_features(self, x: torch.Tensor, y: torch.Tensor | None = None) -> "FeaturesDetector":
        """Fit on saved in-distribution features (no-op when ``requires_fit`` is False).

        Args:
            x: Training features (N, D).
            y: Their class labels (N,), for detectors that use them.

        Returns:
            The fitted detector.
        """
        return self

    @abc.abstractmethod
    def predict_features(self, x: torch.Tensor) -> torch.Tensor:
        """OoD scores from saved features.

        Args:
            x: Features (B, D).

        Returns:
            Scores (B,), float64; higher = more likely out-of-distribution.
        """

    def _fit_outputs(self, logits, features, labels):
        return self.fit_features(features, labels)

    def _predict_outputs(self, logits, features):
        return self.predict_features(features)


def require(value: torch.Tensor | None, what: str, detector: str) -> torch.Tensor:
    """``value`` as a 2-D tensor, or a clear error naming the missing output.

    Args:
        value: The logits or features passed in.
        what: Their name in the message (``"logits"``, ``"features"``).
        detector: The detector's name in the message.

    Returns:
        ``value``.

    Raises:
        DataError: ``value`` is None or not 2-D.
    """
    if value is None:
        raise DataError(f"{detector} needs {what}; pass {what} (saved model outputs) or use fit/predict with a model")
    if value.dim() != 2:
        raise DataError(f"{detector}: {what} must be 2-D (N, dim), got shape {tuple(value.shape)}")
    return value


def check_temperature(temperature: float, what: str = "temperature") -> float:
    """``temperature`` as a float, refused unless finite and > 0.

    Args:
        temperature: The softmax temperature.
        what: Its name in the message.

    Returns:
        ``float(temperature)``.

    Raises:
        NonFiniteError: ``temperature`` is NaN or infinite.
        ConfigError: ``temperature`` is <= 0.
    """
    temperature = float(temperature)
    if not math.isfinite(temperature):
        raise NonFiniteError(f"{what} must be finite (got {temperature})")
    if temperature <= 0:
        raise ConfigError(f"{what} must be > 0 (got {temperature})")
    return temperature
