"""Post-hoc detectors that read only the logits z (B, C). Every score: higher = more OoD.

- MSP (Hendrycks & Gimpel 2017): s(x) = -max_c softmax(z)_c.
- Max-logit (Hendrycks et al. 2022): s(x) = -max_c z_c.
- Energy (Liu et al. 2020): s(x) = E(x; T) = -T log sum_c exp(z_c / T).
- ODIN (Liang et al. 2018): temperature scaling plus an input perturbation that raises the
  top softmax score, x~ = x - eps * sign(-grad_x log softmax(z(x)/T)_yhat), then
  s(x) = -max_c softmax(z(x~)/T)_c. On saved logits (no input to perturb) it reduces to
  temperature-scaled MSP.
"""
from __future__ import annotations

import torch

from curvfast.curvature.model import scoring_mode
from curvfast.pipelines.ood.base import Detector, require

__all__ = ["MSP", "MaxLogit", "Energy", "ODIN"]


class MSP(Detector):
    """Maximum softmax probability: s = -max_c p_c."""

    name = "msp"

    def score_outputs(self, logits=None, features=None):
        return -torch.softmax(require(logits, "logits", "MSP").double(), dim=1).amax(1)


class MaxLogit(Detector):
    """Maximum logit: s = -max_c z_c."""

    name = "max_logit"

    def score_outputs(self, logits=None, features=None):
        return -require(logits, "logits", "MaxLogit").double().amax(1)


class Energy(Detector):
    """Free energy: s = -T logsumexp(z / T) (T = 1 in the paper)."""

    name = "energy"

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 (got {temperature})")
        self.temperature = float(temperature)

    def score_outputs(self, logits=None, features=None):
        z = require(logits, "logits", "Energy").double()
        return -self.temperature * torch.logsumexp(z / self.temperature, dim=1)


class ODIN(Detector):
    """ODIN with the paper's defaults T = 1000, eps = 0.0014 (inputs in [0, 1], no normalisation layer)."""

    name = "odin"

    def __init__(self, temperature: float = 1000.0, eps: float = 0.0014):
        super().__init__()
        if temperature <= 0 or eps < 0:
            raise ValueError(f"need temperature > 0 and eps >= 0 (got temperature={temperature}, eps={eps})")
        self.temperature, self.eps = float(temperature), float(eps)

    def score_outputs(self, logits=None, features=None):
        z = require(logits, "logits", "ODIN").double()
        return -torch.softmax(z / self.temperature, dim=1).amax(1)

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        """x - eps * sign(grad_x of the cross-entropy of z(x)/T against its own prediction)."""
        logit_fn = self.extractor.logit_fn
        with torch.enable_grad():
            # differentiate w.r.t. a non-leaf copy: FlopCounterMode's backward hooks reject leaf inputs
            x = x.detach().requires_grad_(True) * 1.0
            z = logit_fn(x) / self.temperature
            loss = torch.nn.functional.cross_entropy(z, z.argmax(1), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
        return (x - self.eps * grad.sign()).detach()

    def score(self, x):
        self._check_ready()
        with scoring_mode(self.extractor.model):
            x = x.to(self.extractor.device)
            x_tilde = self.perturb(x) if self.eps > 0 else x
            with torch.no_grad():
                return self.score_outputs(logits=self.extractor.logit_fn(x_tilde))
