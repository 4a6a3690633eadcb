r"""The input-curvature detector: the curvature of the loss at the predicted class, w.r.t. the input.

For an input :math:`x` with logits :math:`z = f(x)` and predicted class :math:`\hat y = \arg\max_c z_c`,

.. math:: s(x) = \operatorname{tr} \frac{\partial^2 \ell(f(x), \hat y)}{\partial x^2},

computed by :func:`curvfast.curvature.input_curvature` (``method="auto"``: exact for piecewise-linear
nets, where :math:`H = J^\top (\operatorname{diag}(p) - p p^\top) J`; the deflated Hutchinson estimate
otherwise). Sign: **high curvature = OoD**, chosen from data (docs/ood.md, Results): on the digits
benchmark in-distribution inputs sit in flat, confidently classified regions, out-of-distribution ones
nearer the decision boundaries, where :math:`\operatorname{diag}(p) - p p^\top` is large. The score
reads no training data (``requires_fit = False``) and needs the inputs: it cannot be computed from
saved logits or features. Input curvature as a signal follows Garg, Ravikumar and Roy, "Memorization
through the lens of curvature of loss function around samples" (ICML 2024), applied here to OoD inputs.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from curvfast.curvature import LogitFn, input_curvature, scoring_mode
from curvfast.errors import ConfigError, DataError
from curvfast.ood._base import Detector, ModelNotSetError, register_detector

__all__ = ["InputCurvature"]


@register_detector("curvature")
class InputCurvature(Detector):
    r"""Input loss curvature at the predicted class; higher = more curved = more likely OoD.

    .. math:: s(x) = \operatorname{tr} \nabla_x^2\, \ell(f(x), \arg\max_c f(x)_c)

    Args:
        model: The classifier (logits out); None only to construct it for option checks.
        method: An estimator of :func:`curvfast.curvature.input_curvature` (default ``"auto"``: exact for
            piecewise-linear nets, deflated otherwise).
        statistic: The Hessian statistic (``"trace"`` default, ``"frobenius"``, ``"top_eigenvalue"``).
        probes: Probes of a random method (default: the estimator's).
        seed: Keys a random method's probes (with each sample's position in the batch passed to ``predict``).
        output_transform: Picks the logits from the model's output.
        batch_size: Samples per curvature call: ``predict`` scores a large batch in chunks of this size (the
            scores do not depend on it), so that one autograd graph never spans the whole batch.

    Raises:
        ConfigError: ``batch_size`` < 1.
    """

    def __init__(self, model: nn.Module | None = None, *, method: str = "auto", statistic: str = "trace",
                 probes: int | None = None, seed: int = 0, output_transform: Callable | None = None,
                 batch_size: int = 256):
        super().__init__(None, output_transform=output_transform)
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1 (got {batch_size})")
        self.model = model
        self.method, self.statistic, self.probes, self.seed = method, statistic, probes, seed
        self.output_transform, self.batch_size = output_transform, int(batch_size)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Curvature scores of a batch at each sample's predicted class (in the inputs' dtype, on the model's device).

        Args:
            x: A batch of inputs; moved to the model's device.

        Returns:
            Scores (B,); higher = more likely out-of-distribution.

        Raises:
            ModelNotSetError: The detector has no model.
        """
        if self.model is None:
            raise ModelNotSetError("InputCurvature.predict needs the model: pass it to the constructor, "
                                   "InputCurvature(model)")
        x = x.to(next(self.model.parameters(), torch.empty(0)).device)
        scores = []
        for ids in torch.arange(len(x)).split(self.batch_size):
            with torch.no_grad(), scoring_mode(self.model):
                predicted = LogitFn(self.model, self.output_transform)(x[ids]).argmax(1)
            result = input_curvature(self.model, x[ids], predicted, method=self.method, statistic=self.statistic,
                                     probes=self.probes, seed=self.seed, sample_ids=ids,
                                     output_transform=self.output_transform)
            scores.append(result.value.detach())
        return torch.cat(scores)

    def _fit_outputs(self, logits, features, labels):
        return self

    def _predict_outputs(self, logits, features):
        raise DataError("the curvature detector needs the inputs, not saved logits or features; call predict(x)")
