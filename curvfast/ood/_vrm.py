"""The VRM detector: a (K+1)-class classifier whose extra class is learned from noise (docs/ood.md).

No outlier data set is used. Each training batch (x_i, y_i), i = 1..B, with K real classes, becomes

- **intra-class mixup** for the real classes: a partner j(i) is drawn from the samples of the
  *same* class in the batch (a random permutation within each class), lambda_i ~ Beta(alpha, alpha),
  x'_i = lambda_i x_i + (1 - lambda_i) x_j(i), target e_{y_i} (both ends share the label);
- **mixup with Gaussian noise** for the auxiliary class K: M = round(aux_fraction * B) samples
  x_m (drawn without replacement from the batch), noise eps_m ~ N(noise_mean, noise_std^2) per
  pixel, mu_m ~ Beta(alpha, alpha), x''_m = mu_m x_m + (1 - mu_m) eps_m, and, as in mixup with the
  noise carrying the auxiliary label, the soft target mu_m e_{y_m} + (1 - mu_m) e_K.

The network has K + 1 outputs (one extra row in the last linear layer). Scores (higher = more OoD):

- ``variant="aux"`` (default): s(x) = softmax(z)_K, the probability of the auxiliary class, i.e.
  one minus the probability of *not* being auxiliary;
- ``variant="msp"``: s(x) = -max_{c < K} softmax(z)_c, MSP over the (K+1)-way softmax.

The detector learns K by ``fit`` on the ID training data (or ``num_classes=K``) and refuses a network
without an auxiliary output.

Predictions for the K real classes are argmax_{c < K} z_c.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from curvfast.errors import ConfigError, DataError, NonFiniteError, UnknownNameError, UnsupportedModelError
from curvfast.ood._base import LogitsDetector, RequiresFittingError, id_samples, register_detector, require, scores_like

__all__ = ["VRMBatch", "vrm_batch", "VRMTransform", "VRM"]


@dataclass
class VRMBatch:
    """One VRM training batch: the first B rows are the intra-class mixes, the last M the noise mixes.

    Attributes:
        inputs: The mixed inputs (B + M, ...).
        targets: Their soft targets (B + M, K + 1), probabilities.
        partner: The same-class partner j(i) of each of the first B rows (B,).
        lam: Their mixing weights lambda_i (B,).
        noise_source: The batch rows the M noise mixes start from (M,).
        noise_lam: Their image weights mu_m (M,).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    partner: torch.Tensor
    lam: torch.Tensor
    noise_source: torch.Tensor
    noise_lam: torch.Tensor


def _within_class_partners(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    partner = np.empty_like(y)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        partner[idx] = rng.permutation(idx)
    return partner


def _check_args(alpha: float, aux_fraction: float, noise_std: float) -> None:
    if not all(math.isfinite(v) for v in (alpha, aux_fraction, noise_std)):
        raise NonFiniteError(f"VRM's alpha, aux_fraction and noise_std must be finite (got alpha={alpha}, "
                             f"aux_fraction={aux_fraction}, noise_std={noise_std})")
    if alpha <= 0 or not 0 <= aux_fraction <= 1 or noise_std < 0:
        raise ConfigError(
            f"VRM needs alpha > 0, 0 <= aux_fraction <= 1 and noise_std >= 0 (got alpha={alpha}, "
            f"aux_fraction={aux_fraction}, noise_std={noise_std})"
        )


def vrm_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    rng: np.random.Generator,
    *,
    alpha: float = 1.0,
    aux_fraction: float = 0.5,
    noise_mean: float = 0.5,
    noise_std: float = 0.5,
) -> VRMBatch:
    """Build one VRM training batch from ``(x, y)`` (see the module docstring).

    Args:
        x: Inputs (B, ...).
        y: Labels (B,) in 0..K-1.
        num_classes: K, the number of real classes.
        rng: The generator of partners, mixing weights and noise.
        alpha: The Beta(alpha, alpha) parameter of the mixing weights, > 0.
        aux_fraction: M / B, in [0, 1].
        noise_mean: The mean of the Gaussian noise.
        noise_std: Its standard deviation, >= 0.

    Returns:
        The :class:`VRMBatch`.

    Raises:
        ConfigError: A setting is out of range.
        NonFiniteError: A setting is not finite.
        DataError: A label is outside 0..K-1.
    """
    _check_args(alpha, aux_fraction, noise_std)
    y_np = torch.as_tensor(y).long().numpy()
    if y_np.size and (y_np.min() < 0 or y_np.max() >= num_classes):
        raise DataError(f"labels must lie in 0..{num_classes - 1} (the K real classes); got {y_np.min()}..{y_np.max()}")
    b = len(y_np)
    shape = (-1,) + (1,) * (x.dim() - 1)
    partner = _within_class_partners(y_np, rng)
    lam = torch.from_numpy(rng.beta(alpha, alpha, size=b)).to(x.dtype)
    mixed = lam.view(shape) * x + (1 - lam.view(shape)) * x[torch.from_numpy(partner)]
    eye = torch.eye(num_classes + 1, dtype=x.dtype)
    targets = eye[torch.from_numpy(y_np)]

    m = int(round(aux_fraction * b))
    source = rng.choice(b, size=m, replace=False)
    mu = torch.from_numpy(rng.beta(alpha, alpha, size=m)).to(x.dtype)
    noise = torch.from_numpy(rng.normal(noise_mean, noise_std, size=(m,) + tuple(x.shape[1:]))).to(x.dtype)
    noisy = mu.view(shape) * x[torch.from_numpy(source)] + (1 - mu.view(shape)) * noise
    aux_targets = mu.unsqueeze(1) * eye[torch.from_numpy(y_np[source])] + (1 - mu.unsqueeze(1)) * eye[num_classes]
    return VRMBatch(
        inputs=torch.cat([mixed, noisy]), targets=torch.cat([targets, aux_targets]),
        partner=torch.from_numpy(partner), lam=lam, noise_source=torch.from_numpy(source), noise_lam=mu,
    )


class VRMTransform:
    """``(x, y, rng) -> (inputs, soft targets)``: :func:`vrm_batch` as a batch transform for training.

    Args:
        num_classes: K, the number of real classes.
        alpha: See :func:`vrm_batch`.
        aux_fraction: See :func:`vrm_batch`.
        noise_mean: See :func:`vrm_batch`.
        noise_std: See :func:`vrm_batch`.

    Raises:
        ConfigError: A setting is out of range.
        NonFiniteError: A setting is not finite.
    """

    def __init__(self, num_classes: int, alpha: float = 1.0, aux_fraction: float = 0.5, noise_mean: float = 0.5,
                 noise_std: float = 0.5):
        _check_args(alpha, aux_fraction, noise_std)
        self.num_classes = num_classes
        self.kwargs = dict(alpha=alpha, aux_fraction=aux_fraction, noise_mean=noise_mean, noise_std=noise_std)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One transformed batch.

        Args:
            x: Inputs (B, ...).
            y: Labels (B,) in 0..K-1.
            rng: The generator of partners, mixing weights and noise.

        Returns:
            ``(inputs (B + M, ...), soft targets (B + M, K + 1))``.
        """
        batch = vrm_batch(x, y, self.num_classes, rng, **self.kwargs)
        return batch.inputs, batch.targets


@register_detector("vrm")
class VRM(LogitsDetector):
    r"""OoD score of a (K+1)-output VRM network: the auxiliary-class probability (or MSP over real classes).

    .. math:: s_{aux}(x) = \operatorname{softmax}(z)_K, \quad s_{msp}(x) = -\max_{c < K} \operatorname{softmax}(z)_c

    Logits alone cannot tell a VRM network from a plain classifier, so VRM must learn K before it scores:
    from ``num_classes=K`` (then its logits must have K + 1 columns), or from ``fit`` on the ID training
    data, which refuses a model whose last output is one of the data's classes (a label K' - 1 with K'
    outputs: no auxiliary output left).

    Args:
        model: The (K+1)-output network (None for :meth:`fit_logits` / :meth:`predict_logits` only).
        variant: ``"aux"`` or ``"msp"``.
        num_classes: K, the number of real classes (None: learnt by ``fit``).
        **outputs: ``output_transform``, see :class:`~curvfast.ood.Detector` (no ``feature_layer``: logits only).

    Raises:
        UnknownNameError: ``variant`` is neither.
        ConfigError: ``num_classes`` is not an int >= 2.
    """

    auxiliary_class = True
    requires_fit = True

    def __init__(self, model: nn.Module | None = None, variant: str = "aux", num_classes: int | None = None,
                 **outputs):
        super().__init__(model, **outputs)
        if variant not in ("aux", "msp"):
            raise UnknownNameError(f"variant must be 'aux' or 'msp' (got {variant!r})")
        if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                        or num_classes < 2):
            raise ConfigError(f"num_classes must be an int >= 2, the real classes K (got {num_classes!r})")
        self.variant, self.num_classes = variant, num_classes
        self.fitted = num_classes is not None

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RequiresFittingError(
                "VRM does not know K, the number of real classes: logits alone cannot tell a VRM network from a plain "
                "classifier; call fit(id_loader) (or fit_logits) on the ID training data, or pass num_classes=K"
            )

    def fit_logits(self, logits: torch.Tensor, y: torch.Tensor) -> "VRM":
        """Learn K from the ID training data and check that the network has an auxiliary output.

        Args:
            logits: ID training logits (N, K + 1).
            y: Their classes (N,), in 0..K-1 (< 0: an OoD sample, dropped).

        Returns:
            The fitted detector.

        Raises:
            UnsupportedModelError: A label names the last output (no auxiliary class), or the logits do not
                have ``num_classes + 1`` columns.
            DataError: Bad logits or labels.
            NonFiniteError: Logits holding NaN or Inf.
        """
        z = require(logits, "logits", "VRM")
        width = z.shape[1]
        _, labels = id_samples(z, y, "VRM", width)
        if int(labels.max()) >= width - 1:
            raise UnsupportedModelError(
                f"VRM scores a (K+1)-output network whose last output is the auxiliary class; this one has {width} "
                f"outputs and the fit data has class {width - 1}, so it has no auxiliary output: train a K + 1 output "
                "network with VRMTransform (curvfast ood does), or use a K-class detector (msp, ...)"
            )
        if self.num_classes is None:
            self.num_classes = width - 1
        self._check_width(width)
        self.fitted = True
        return self

    def _check_width(self, width: int) -> None:
        if width != self.num_classes + 1:
            raise UnsupportedModelError(
                f"VRM with K = {self.num_classes} real classes needs logits of K + 1 = {self.num_classes + 1} outputs "
                f"(the last one auxiliary); got {width}: train it with VRMTransform, or give the right num_classes"
            )

    def predict_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """VRM scores (B,), in the dtype of ``logits``.

        Args:
            logits: Logits (B, K + 1), the last class auxiliary.

        Returns:
            The scores.

        Raises:
            RequiresFittingError: K is not known (no fit, no ``num_classes``).
            UnsupportedModelError: The logits do not have K + 1 columns.
            DataError: Logits missing or not 2-D.
            NonFiniteError: Logits holding NaN or Inf.
        """
        self._check_fitted()
        z = require(logits, "logits", "VRM")
        self._check_width(z.shape[1])
        p = torch.softmax(z.double(), dim=1)
        return scores_like(p[:, -1] if self.variant == "aux" else -p[:, :-1].amax(1), z)

    @staticmethod
    def predict_class(logits: torch.Tensor) -> torch.Tensor:
        """The real-class prediction argmax_{c < K} z_c.

        Args:
            logits: Logits (B, K + 1).

        Returns:
            Class indices (B,).
        """
        return logits[:, :-1].argmax(1)
