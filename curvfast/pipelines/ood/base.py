"""The detector interface (pytorch-ood's shape) and the logits/features a detector reads.

Every detector maps inputs to an **OoD score: higher = more likely out-of-distribution**.

- ``detector.fit(model, id_loader)``: run the model over in-distribution (training) data once,
  keep what the detector needs (class means, a feature bank, per-class statistics ...).
- ``detector.fit_features(logits=..., features=..., labels=...)``: the same from saved outputs.
- ``detector.score(x)`` (alias ``predict``): OoD scores (B,) for a batch of inputs.
- ``detector.score_outputs(logits=..., features=...)``: OoD scores from saved outputs.
- ``detector.score_loader(loader)``: a whole dataset, as a float64 numpy array.

The features are the input of the model's last ``nn.Linear`` (the penultimate representation,
flattened), captured with a forward hook; name another module with ``feature_layer=``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from curvfast.curvature.model import LogitFn, scoring_mode, unwrap_model

__all__ = ["Detector", "OutputExtractor", "collect_outputs"]


def _last_linear_name(model: nn.Module) -> str:
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(
            "the model has no nn.Linear layer to take features from; pass feature_layer='<module name>' "
            "(a name from model.named_modules()) whose input is the feature vector"
        )
    return names[-1]


class OutputExtractor:
    """``x -> (logits (B, C), features (B, D))``: one forward with a hook on ``feature_layer``'s input.

    ``feature_layer`` names a module of the (unwrapped) model; by default its last ``nn.Linear``,
    whose input is the penultimate representation h with logits z = W h + b.
    """

    def __init__(self, model: nn.Module, feature_layer: str | None = None, output_transform: Callable | None = None):
        self.model = unwrap_model(model)
        self.feature_layer = feature_layer or _last_linear_name(self.model)
        modules = dict(self.model.named_modules())
        if self.feature_layer not in modules:
            raise ValueError(f"feature_layer={self.feature_layer!r} is not a module of the model; pick a name from model.named_modules()")
        self.layer = modules[self.feature_layer]
        self.logit_fn = LogitFn(self.model, output_transform)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
        try:
            logits = self.logit_fn(x)
        finally:
            handle.remove()
        return logits, captured[-1].flatten(1)

    def class_weights(self) -> torch.Tensor | None:
        """The rows w_c of the feature layer's weight when it is a linear classifier, else None."""
        return self.layer.weight.detach() if isinstance(self.layer, nn.Linear) else None


@torch.no_grad()
def collect_outputs(extractor: OutputExtractor, loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, features and labels of every batch ``(x, y, ...)`` of ``loader`` (eval mode, on CPU)."""
    logits, feats, labels = [], [], []
    with scoring_mode(extractor.model):
        for batch in loader:
            x, y = batch[0], batch[1]
            z, h = extractor(x.to(extractor.device))
            logits.append(z.cpu())
            feats.append(h.cpu())
            labels.append(torch.as_tensor(y))
    if not logits:
        raise ValueError("id_loader yielded no batches; pass a loader over in-distribution training data")
    return torch.cat(logits), torch.cat(feats), torch.cat(labels)


def _as_loader(data, batch_size: int = 256):
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, torch.utils.data.Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    raise TypeError(f"expected a DataLoader or a map-style Dataset of (x, y) pairs (got {type(data).__name__})")


class Detector:
    """Base class. Subclasses implement :meth:`score_outputs` (and :meth:`fit_features` when they
    learn from in-distribution data); detectors that perturb inputs override :meth:`score`.

    Class attributes: ``name`` (the key in results), ``needs_fit`` (whether scoring requires a fit).
    """

    name = "detector"
    needs_fit = False

    def __init__(self):
        self.extractor: OutputExtractor | None = None
        self.fitted = False

    # -- fitting -----------------------------------------------------------------------------
    def attach(self, model: nn.Module, feature_layer: str | None = None, output_transform: Callable | None = None) -> "Detector":
        """Use ``model`` for :meth:`score` without fitting (enough for MSP, max-logit, energy, ODIN)."""
        self.extractor = OutputExtractor(model, feature_layer, output_transform)
        return self

    def fit(self, model: nn.Module, id_loader=None, *, feature_layer: str | None = None,
            output_transform: Callable | None = None) -> "Detector":
        """Attach ``model`` and, for detectors that learn from ID data, read ``id_loader`` (a DataLoader
        or Dataset of ``(x, y)`` in-distribution training samples) once."""
        self.attach(model, feature_layer, output_transform)
        if self.needs_fit:
            if id_loader is None:
                raise ValueError(f"{type(self).__name__}.fit needs id_loader=<in-distribution training data>")
            logits, feats, labels = collect_outputs(self.extractor, _as_loader(id_loader))
            self.fit_features(logits=logits, features=feats, labels=labels)
        else:
            self.fitted = True
        return self

    def fit_features(self, logits: torch.Tensor | None = None, features: torch.Tensor | None = None,
                     labels: torch.Tensor | None = None) -> "Detector":
        """Fit from saved in-distribution outputs. The base detector has nothing to learn."""
        self.fitted = True
        return self

    # -- scoring -----------------------------------------------------------------------------
    def score_outputs(self, logits: torch.Tensor | None = None, features: torch.Tensor | None = None) -> torch.Tensor:
        """OoD scores (B,) from saved logits (B, C) and/or features (B, D); higher = more OoD."""
        raise NotImplementedError

    def _check_ready(self) -> None:
        if self.needs_fit and not self.fitted:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(model, id_loader) or fit_features(...) first")
        if self.extractor is None:
            raise RuntimeError(f"{type(self).__name__} has no model; call fit(model, ...) or attach(model) first")

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """OoD scores (B,) for a batch of inputs; higher = more likely out-of-distribution."""
        self._check_ready()
        with torch.no_grad(), scoring_mode(self.extractor.model):
            logits, feats = self.extractor(x.to(self.extractor.device))
            return self.score_outputs(logits=logits, features=feats)

    predict = score

    def score_loader(self, data, batch_size: int = 256) -> np.ndarray:
        """Scores of every sample of a DataLoader / Dataset of ``(x, ...)`` items, in order."""
        parts = []
        for batch in _as_loader(data, batch_size):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            parts.append(self.score(x).double().cpu().numpy())
        return np.concatenate(parts) if parts else np.zeros(0)


def require(value: torch.Tensor | None, what: str, detector: str) -> torch.Tensor:
    """``value`` as a 2-D float tensor, or a clear error naming the missing output."""
    if value is None:
        raise ValueError(f"{detector} needs {what}; pass {what}=... (saved model outputs) or use fit/score with a model")
    if value.dim() != 2:
        raise ValueError(f"{detector}: {what} must be 2-D (N, dim), got shape {tuple(value.shape)}")
    return value
