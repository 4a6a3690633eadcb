"""The detector interface (pytorch-ood's shape), the registry, and the logits/features a detector reads.

Every detector maps inputs to an **OoD score: higher = more likely out-of-distribution**. The one API
is pytorch-ood's (0.4.0, ``pytorch_ood.api``): the model is given at construction, then

- ``detector.fit(id_loader, device=None)``: run the model over in-distribution (training) batches
  ``(x, y)`` once and keep what the detector needs (class means, a feature bank, per-class statistics);
  a no-op for detectors with ``requires_fit = False``;
- ``detector.fit_logits(logits, y)`` / ``detector.fit_features(x, y)``: the same from saved outputs;
- ``detector.predict(x)`` (also ``detector(x)``): OoD scores (B,) of a batch of inputs;
- ``detector.predict_logits(logits)`` / ``detector.predict_features(x)``: OoD scores from saved outputs.

A :class:`LogitsDetector` reads the logits z (B, C) and needs nothing of the model but its output (no
``nn.Linear``, no ``feature_layer=``); a :class:`FeaturesDetector` reads the penultimate features h (B, D):
the input of the model's last ``nn.Linear``, flattened, captured with a forward hook (name another module
with ``feature_layer=``). As in pytorch-ood, ``fit`` drops the samples labelled < 0 (its mark of an OoD
sample) and scores come in the dtype of the model's output (float32 for a float32 model; the detectors
compute in float64 and round once). Inputs, logits and features holding NaN or Inf are refused
(:class:`~curvfast.errors.NonFiniteError`), never scored. Detectors are registered by name in
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

from curvfast.curvature._checks import check_labels
from curvfast.curvature._model import LogitFn, scoring_mode, unwrap_model
from curvfast.errors import ConfigError, CurvfastError, DataError, NonFiniteError, UnknownNameError

__all__ = ["Detector", "LogitsDetector", "FeaturesDetector", "OutputExtractor", "collect_outputs", "DETECTORS",
           "register_detector", "detector_class", "RequiresFittingError", "ModelNotSetError", "UnscaledClassWarning"]


class RequiresFittingError(CurvfastError, RuntimeError):
    """``predict`` was called on a detector that learns from in-distribution data before any ``fit``."""


class ModelNotSetError(ConfigError):
    """``fit(loader)`` or ``predict(x)`` was called on a detector constructed without a model."""


class UnscaledClassWarning(UserWarning):
    """A norm-scaling fit found no usable per-class statistic for some classes and left them unscaled."""


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
        features: Capture the features; False (and no ``feature_layer``): logits only, any model.

    Raises:
        ConfigError: Features are asked for but the model has no ``nn.Linear`` (and no ``feature_layer``
            was named), or ``feature_layer`` is not one of its modules.
    """

    def __init__(self, model: nn.Module, feature_layer: str | None = None, output_transform: Callable | None = None,
                 *, features: bool = True):
        self.model = unwrap_model(model)
        self.feature_layer, self.layer = None, None
        if features or feature_layer is not None:
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
            ``(logits (B, C), features (B, D))``; features None when they are not captured.
        """
        if self.layer is None:
            return self.logit_fn(x), None
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
            The (K, D) weight when the feature layer is an ``nn.Linear`` classifier, else None (also
            when no layer is read).
        """
        return self.layer.weight.detach() if isinstance(self.layer, nn.Linear) else None


@torch.no_grad()
def collect_outputs(extractor: OutputExtractor, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, features and labels of every batch ``(x, y, ...)`` of ``loader`` (eval mode, on CPU).

    Args:
        extractor: The model's :class:`OutputExtractor`.
        loader: A ``DataLoader`` (or any iterable) of ``(x, y, ...)`` batches.

    Returns:
        ``(logits (N, C), features (N, D), labels (N,))`` on the CPU (features None when the extractor
        captures none).

    Raises:
        DataError: The loader yielded no batches.
    """
    logits, feats, labels = [], [], []
    with scoring_mode(extractor.model):
        for batch in loader:
            x, y = batch[0], batch[1]
            z, h = extractor(x.to(extractor.device))
            logits.append(z.cpu())
            feats.append(None if h is None else h.cpu())
            labels.append(torch.as_tensor(y).reshape(-1))
    if not logits:
        raise DataError("the in-distribution loader yielded no batches; pass a loader over in-distribution "
                        "training data")
    return torch.cat(logits), None if feats[0] is None else torch.cat(feats), torch.cat(labels)


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
        feature_layer: The module whose input is the feature vector (default: the last ``nn.Linear``);
            only for detectors that read a layer (``takes_feature_layer``).
        output_transform: Picks the logits from the model's output.

    Raises:
        TypeError: ``feature_layer`` given to a detector that reads only the logits.
        ConfigError: ``feature_layer`` is not a module of the model, or the detector reads features of a
            model without ``nn.Linear`` and no ``feature_layer`` was named.

    Attributes:
        name: The detector's key in :data:`DETECTORS` and in results.
        requires_fit: Whether scoring needs a fit on in-distribution data first.
        auxiliary_class: Whether the detector scores a (K+1)-output network whose last class is an
            auxiliary OoD class (VRM), not a plain K-class classifier.
        hyperparameter_space: pytorch-ood's hyperparameter search space (empty: none tuned).
        takes_feature_layer: Whether the detector reads a layer of the model (``feature_layer=``).
    """

    name: ClassVar[str] = "detector"
    requires_fit: ClassVar[bool] = False
    auxiliary_class: ClassVar[bool] = False
    hyperparameter_space: ClassVar[dict] = {}
    takes_feature_layer: ClassVar[bool] = False

    def __init__(self, model: nn.Module | None = None, *, feature_layer: str | None = None,
                 output_transform: Callable | None = None):
        if feature_layer is not None and not self.takes_feature_layer:
            raise TypeError(f"{type(self).__name__} reads only the model's logits: feature_layer= does not apply "
                            "(drop it, or use a features detector)")
        self.model = model
        self.extractor = None if model is None else OutputExtractor(
            model, feature_layer, output_transform, features=feature_layer is not None or self._reads_layer())
        self.fitted = not self.requires_fit

    def _reads_layer(self) -> bool:
        """Whether the extractor must capture ``feature_layer`` (features detectors; norm-scaling's weight_norm)."""
        return False

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
        require(logits, "logits", type(self).__name__)
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
            Scores (B,) in the dtype of the model's output; higher = more likely out-of-distribution.

        Raises:
            ModelNotSetError: The detector has no model.
            RequiresFittingError: The detector needs a fit first.
            NonFiniteError: ``x``, or the model's output on it, holds NaN or Inf.
        """
        extractor = self._model_extractor("predict")
        self._check_fitted()
        check_inputs(x)
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
            Scores (B,) in the dtype of ``logits``; higher = more likely out-of-distribution.
        """

    def _fit_outputs(self, logits, features, labels):
        return self.fit_logits(logits, labels)

    def _predict_outputs(self, logits, features):
        return self.predict_logits(logits)


class FeaturesDetector(Detector):
    """A detector that reads the penultimate features h (B, D).

    Subclasses implement :meth:`predict_features` and, when ``requires_fit``, :meth:`fit_features`.
    """

    takes_feature_layer = True

    def _reads_layer(self) -> bool:
        return True

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
            Scores (B,) in the dtype of ``x``; higher = more likely out-of-distribution.
        """

    def _fit_outputs(self, logits, features, labels):
        if labels is not None:  # the logits tell the class count, which saved features do not
            features, labels = id_samples(features, labels, type(self).__name__, logits.shape[1])
        return self.fit_features(features, labels)

    def _predict_outputs(self, logits, features):
        return self.predict_features(features)


def _bad_rows(t: torch.Tensor) -> list[int]:
    return (~torch.isfinite(t.reshape(t.shape[0], -1)).all(1)).nonzero().flatten()[:10].tolist()


def check_inputs(x: torch.Tensor) -> None:
    """Refuse a batch of floating-point inputs holding NaN or Inf (a detector cannot score them).

    Args:
        x: The inputs (B, ...).

    Raises:
        NonFiniteError: Naming the samples.
    """
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() and not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"the inputs hold NaN or Inf in sample(s) {_bad_rows(x)}; a detector cannot score them: "
                             "clean or drop those samples")


def require(value: torch.Tensor | None, what: str, detector: str) -> torch.Tensor:
    """``value`` as a finite 2-D tensor, or a clear error naming the missing or broken output.

    Args:
        value: The logits or features passed in.
        what: Their name in the message (``"logits"``, ``"features"``).
        detector: The detector's name in the message.

    Returns:
        ``value``.

    Raises:
        DataError: ``value`` is None or not 2-D.
        NonFiniteError: ``value`` holds NaN or Inf (the message names the rows).
    """
    if value is None:
        raise DataError(f"{detector} needs {what}; pass {what} (saved model outputs) or use fit/predict with a model")
    if value.dim() != 2:
        raise DataError(f"{detector}: {what} must be 2-D (N, dim), got shape {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteError(f"{detector}: the {what} hold NaN or Inf in row(s) {_bad_rows(value)}; check the model's "
                             "weights and its inputs")
    return value


def scores_like(scores: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Scores computed in float64, returned in the dtype of the outputs they come from (pytorch-ood's contract).

    Args:
        scores: The scores (B,).
        outputs: The logits or features they were computed from.

    Returns:
        ``scores`` in ``outputs``' floating dtype (float32 for integer outputs).
    """
    return scores.to(outputs.dtype if outputs.is_floating_point() else torch.float32)


def id_samples(values: torch.Tensor, labels, detector: str,
               num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The in-distribution rows a detector fits on: samples labelled < 0 dropped, labels as int64.

    pytorch-ood marks OoD samples with negative labels and its ``fit`` drops them; so does every
    curvfast detector. Float labels are accepted when they hold whole numbers (pytorch-ood's tests
    build labels with ``torch.zeros``).

    Args:
        values: The logits or features (N, ...).
        labels: Their labels (N,), any tensor-like, or None.
        detector: The detector's name in the message.
        num_classes: C, when known (the logits' width): labels must lie in ``[0, C)``.

    Returns:
        ``(values[keep], labels[keep])`` with ``keep = labels >= 0``.

    Raises:
        DataError: No labels, labels of another length, labels that are not whole numbers, no label
            >= 0, or a label >= ``num_classes``.
    """
    if labels is None:
        raise DataError(f"{detector} fits on labelled data: pass the ID training labels")
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.numel() != values.shape[0]:
        raise DataError(f"{detector}: {labels.numel()} labels for {values.shape[0]} samples")
    if labels.dtype == torch.bool or labels.is_complex():
        raise DataError(f"{detector}: labels must be whole class indices (got {labels.dtype})")
    if labels.is_floating_point():
        whole = torch.isfinite(labels) & (labels == labels.round())
        if not bool(whole.all()):
            raise DataError(f"{detector}: labels must be whole class indices (got {labels[~whole][0].item()}); "
                            "pass integer labels (< 0 for OoD samples)")
    labels = labels.long().to(values.device)
    keep = labels >= 0
    if not bool(keep.any()):
        raise DataError(f"{detector}: no in-distribution sample to fit on: every label is negative, pytorch-ood's mark "
                        "of an OoD sample; fit on in-distribution (training) data")
    values, labels = values[keep], labels[keep]
    if num_classes is not None:
        check_labels(labels, num_classes)
    return values, labels


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
