"""Post-hoc detectors that read only the logits z (B, C). Every score: higher = more OoD.

- MSP (Hendrycks & Gimpel 2017): s(x) = -max_c softmax(z)_c.
- Max-logit (Hendrycks et al. 2022): s(x) = -max_c z_c.
- Energy (Liu et al. 2020): s(x) = E(x; T) = -T log sum_c exp(z_c / T).
- ODIN (Liang et al. 2018): temperature scaling plus an input perturbation that raises the
  top softmax score, x~ = x - eps * sign(-grad_x log softmax(z(x)/T)_yhat), then
  s(x) = -max_c softmax(z(x~)/T)_c. On saved logits (no input to perturb) it reduces to
  temperature-scaled MSP.

Each computes in float64 and returns the scores in the logits' dtype (pytorch-ood's float32 for a float32
model), so -p saturates to exactly -1 for p > 1 - 6e-8 in float32, as in pytorch-ood.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from curvfast.curvature._model import scoring_mode
from curvfast.errors import ConfigError, NonFiniteError
from curvfast.ood._base import LogitsDetector, check_inputs, check_temperature, register_detector, require, scores_like

__all__ = ["MSP", "MaxLogit", "Energy", "ODIN"]


@register_detector("msp")
class MSP(LogitsDetector):
    r"""Maximum softmax probability (Hendrycks & Gimpel, ICLR 2017).

    .. math:: s(x) = -\max_c \operatorname{softmax}(z)_c

    Args:
        model: The classifier (None for :meth:`predict_logits` only).
        **outputs: ``output_transform``, see :class:`~curvfast.ood.Detector` (no ``feature_layer``: logits only).
    """

    def predict_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Scores -max_c p_c (B,), in the dtype of ``logits``.

        Args:
            logits: Logits (B, C).

        Returns:
            The scores.

        Raises:
            DataError: ``logits`` is missing or not 2-D.
        """
        z = require(logits, "logits", "MSP")
        return scores_like(-torch.softmax(z.double(), dim=1).amax(1), z)


@register_detector("max_logit")
class MaxLogit(LogitsDetector):
    r"""Maximum logit (Hendrycks et al., ICML 2022).

    .. math:: s(x) = -\max_c z_c

    Args:
        model: The classifier (None for :meth:`predict_logits` only).
        **outputs: ``output_transform``, see :class:`~curvfast.ood.Detector` (no ``feature_layer``: logits only).
    """

    def predict_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Scores -max_c z_c (B,), in the dtype of ``logits``.

        Args:
            logits: Logits (B, C).

        Returns:
            The scores.

        Raises:
            DataError: ``logits`` is missing or not 2-D.
        """
        z = require(logits, "logits", "MaxLogit")
        return scores_like(-z.double().amax(1), z)


@register_detector("energy")
class Energy(LogitsDetector):
    r"""Free energy (Liu et al., NeurIPS 2020); T = 1 in the paper.

    .. math:: s(x) = -T \log \sum_c \exp(z_c / T)

    Args:
        model: The classifier (None for :meth:`predict_logits` only).
        temperature: T > 0.
        **outputs: ``output_transform``, see :class:`~curvfast.ood.Detector` (no ``feature_layer``: logits only).

    Raises:
        ConfigError: ``temperature`` <= 0.
        NonFiniteError: ``temperature`` is not finite.
    """

    def __init__(self, model: nn.Module | None = None, temperature: float = 1.0, **outputs):
        super().__init__(model, **outputs)
        self.temperature = check_temperature(temperature)

    def predict_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Scores -T logsumexp(z / T) (B,), in the dtype of ``logits``.

        Args:
            logits: Logits (B, C).

        Returns:
            The scores.

        Raises:
            DataError: ``logits`` is missing or not 2-D.
        """
        z = require(logits, "logits", "Energy")
        return scores_like(-self.temperature * torch.logsumexp(z.double() / self.temperature, dim=1), z)


@register_detector("odin")
class ODIN(LogitsDetector):
    r"""ODIN (Liang et al., ICLR 2018) with the paper's defaults T = 1000, eps = 0.0014.

    The defaults assume inputs in [0, 1] and no normalisation layer.

    .. math:: \tilde x = x - \epsilon \operatorname{sign}(\nabla_x \mathrm{CE}(z(x)/T, \hat y)), \quad
              s(x) = -\max_c \operatorname{softmax}(z(\tilde x)/T)_c

    Args:
        model: The classifier (None for :meth:`predict_logits` only).
        temperature: T > 0.
        eps: The perturbation size, >= 0 (0: temperature-scaled MSP).
        **outputs: ``output_transform``, see :class:`~curvfast.ood.Detector` (no ``feature_layer``: logits only).

    Raises:
        ConfigError: ``temperature`` <= 0 or ``eps`` < 0.
        NonFiniteError: ``temperature`` or ``eps`` is not finite.
    """

    def __init__(self, model: nn.Module | None = None, temperature: float = 1000.0, eps: float = 0.0014, **outputs):
        super().__init__(model, **outputs)
        if not math.isfinite(eps):
            raise NonFiniteError(f"eps must be finite (got {eps})")
        if eps < 0:
            raise ConfigError(f"eps must be >= 0 (got {eps})")
        self.temperature, self.eps = check_temperature(temperature), float(eps)

    def predict_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled MSP of saved logits (no input to perturb), (B,), in the dtype of ``logits``.

        Args:
            logits: Logits (B, C).

        Returns:
            The scores.

        Raises:
            DataError: ``logits`` is missing or not 2-D.
        """
        z = require(logits, "logits", "ODIN")
        return scores_like(-torch.softmax(z.double() / self.temperature, dim=1).amax(1), z)

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        """The perturbed input x - eps * sign(grad_x of the cross-entropy of z(x)/T against its own prediction).

        Args:
            x: A batch of inputs on the model's device.

        Returns:
            The perturbed batch (detached).

        Raises:
            ModelNotSetError: The detector has no model.
        """
        logit_fn = self._model_extractor("perturb").logit_fn
        with torch.enable_grad():
            # differentiate w.r.t. a non-leaf copy: FlopCounterMode's backward hooks reject leaf inputs
            x = x.detach().requires_grad_(True) * 1.0
            z = logit_fn(x) / self.temperature
            loss = torch.nn.functional.cross_entropy(z, z.argmax(1), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
        return (x - self.eps * grad.sign()).detach()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """ODIN scores of a batch of inputs: perturb, then temperature-scaled MSP.

        Args:
            x: A batch of inputs; moved to the model's device.

        Returns:
            Scores (B,) in the dtype of the model's output; higher = more likely out-of-distribution.

        Raises:
            ModelNotSetError: The detector has no model.
            NonFiniteError: ``x``, or the model's output on it, holds NaN or Inf.
        """
        extractor = self._model_extractor("predict")
        check_inputs(x)
        with scoring_mode(extractor.model):
            x = x.to(extractor.device)
            x_tilde = self.perturb(x) if self.eps > 0 else x
            with torch.no_grad():
                return self.predict_logits(extractor.logit_fn(x_tilde))
