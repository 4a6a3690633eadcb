"""Drop-in replacements for the finite-difference curvature of the memorization papers.

Garg et al., "Memorization Through the Lens of Curvature of Loss Function Around Samples", ICML 2024;
Ravikumar et al., "Unveiling Privacy, Memorization, and Input Curvature Links", ICML 2024.

Published as the ``CurveScore`` class (DeepakTatachar/Privacy-Memorization-Curvature,
``utils/loss_curve_score.py``) and ``get_regularized_curvature_for_batch`` (purdue-nrl/
Memorization-Curvature, ``score_imagenet_checkpoint.py``). With Rademacher r_k, v_k = h r_k,
g(x) = ∇ₓ CE(f(x)/temp, y) and n = ``niter``:

    curv(x) = (1/n) Σ_k ‖g(x + v_k) − g(x)‖          ≈ h‖H r‖,   (the memorization score)
    eig(x)  = (1/n) Σ_k v_kᵀ (g(x + v_k) − g(x))     ≈ h² r_kᵀ H r_k,   E = h²·tr(H).

**Scaling.** The published code differentiates the batch-MEAN loss, so every score is divided by
the batch size B (and the last, smaller batch gets another scale). By default these functions use
per-sample losses: their values are the published ones times B. ``batch_mean=True`` divides by B
to reproduce the published numbers.

The estimate is curvfast's batched ``fd`` estimator: one clean gradient instead of one per probe,
probes keyed by (seed, sample id, probe), fp32 with TF32 off, the model in eval mode with the
caller's mode restored. ``exact=True`` returns h·‖H‖_F for ``curv`` (the root mean square of the
probe terms: E‖h H r‖² = h²‖H‖_F²) and h²·tr(H) for ``eig``: exact for piecewise-linear networks,
where finite differences instead cross activation kinks.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..curvature._finite_difference import fd_probe_terms
from ..curvature._model import LogitFn, scoring_mode
from ._common import draw_seed, hessian_statistic, prepare, sample_ids_for, scaled_logits

__all__ = ["CurveScore", "get_regularized_curvature_for_batch", "fd_scores"]


def fd_scores(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, h: float = 1e-3, niter: int = 10, temp: float = 1,
    pred_labels: bool = False, seed: int | None = None, sample_ids: torch.Tensor | None = None, exact: bool = False,
    batch_mean: bool = False, pass_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(curv, eig)`` (B,) on the CPU, as in the module docstring.

    .. math:: \mathrm{curv}(x) = \frac{1}{n} \sum_k \lVert g(x + v_k) - g(x) \rVert \approx h \lVert H r \rVert,
              \qquad \mathrm{eig}(x) = \frac{1}{n} \sum_k v_k^T (g(x + v_k) - g(x)) \approx h^2 r_k^T H r_k

    Args:
        net: The model returning logits.
        x: The batch (B, ...).
        y: Its labels (B,).
        h: The probe step, > 0.
        niter: Probes n per sample.
        temp: The temperature of the loss CE(f(x)/temp, y).
        pred_labels: Score against the model's own predictions instead of ``y``.
        seed: Seeds the probes (None: drawn from torch's global generator).
        sample_ids: (B,) dataset indices keying the probes (default 0..B-1).
        exact: Return h·‖H‖_F for ``curv`` and h²·tr(H) for ``eig`` instead of the estimates.
        batch_mean: Divide by B, reproducing the published batch-mean scaling.
        pass_size: Probes per batched pass (None: automatic).

    Returns:
        ``(curv, eig)``, each (B,) on the CPU.

    Raises:
        ConfigError: For h <= 0, niter < 1, temp <= 0, a negative or non-int seed, or bad ``sample_ids``.
        TypeError: When ``net`` is not an ``nn.Module`` or the batch has the wrong dtypes.
        DataError: For a batch of the wrong shape (labels of another length, an empty or unbatched input).
        NonFiniteError: When the inputs hold NaN or Inf.
    """
    model, x, y = prepare(net, x, y, h, niter)
    transform = scaled_logits(temp)
    seed, ids = draw_seed(seed), sample_ids_for(sample_ids, x)
    logit_fn = LogitFn(model, transform)
    with scoring_mode(model):
        if pred_labels:
            with torch.no_grad():
                y = logit_fn(x).argmax(1)
        if exact:
            curv = h * hessian_statistic(model, x, y, "frobenius", transform, seed, ids)
            eig = h * h * hessian_statistic(model, x, y, "trace", transform, seed, ids)
        else:
            norms, directional, _ = fd_probe_terms(logit_fn, x, y, ids, probes=niter, seed=seed, step=h,
                                                   pass_size=pass_size)
            curv, eig = norms.mean(1), directional.mean(1)
    scale = x.shape[0] if batch_mean else 1
    return (curv / scale).detach().cpu(), (eig / scale).detach().cpu()


def get_regularized_curvature_for_batch(
    net: nn.Module, batch_data: torch.Tensor, batch_labels: torch.Tensor, h: float = 1e-3, niter: int = 10,
    temp: float = 1, *, seed: int | None = None, sample_ids: torch.Tensor | None = None, exact: bool = False,
    batch_mean: bool = False,
    pass_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eig_estimate, curv_estimate)`` (B,) on the CPU, in the published order.

    The published function reads ``net`` from its enclosing script; here it is the first argument
    (``functools.partial(get_regularized_curvature_for_batch, net)`` restores the published call).
    Keyword-only options as in :func:`fd_scores`.

    Args:
        net: The model returning logits.
        batch_data: The batch x (B, ...).
        batch_labels: Its labels (B,).
        h: The probe step, > 0.
        niter: Probes n per sample.
        temp: The temperature of the loss CE(f(x)/temp, y).
        seed: Seeds the probes (None: drawn from torch's global generator).
        sample_ids: (B,) dataset indices keying the probes (default 0..B-1).
        exact: Return the exact statistics instead of the estimates.
        batch_mean: Divide by B, reproducing the published batch-mean scaling.
        pass_size: Probes per batched pass (None: automatic).

    Returns:
        ``(eig_estimate, curv_estimate)``, each (B,) on the CPU.

    Raises:
        ConfigError: For h <= 0, niter < 1, temp <= 0, a negative or non-int seed, or bad ``sample_ids``.
        TypeError: When ``net`` is not an ``nn.Module`` or the batch has the wrong dtypes.
        DataError: For a batch of the wrong shape (labels of another length, an empty or unbatched input).
        NonFiniteError: When the inputs hold NaN or Inf.
    """
    curv, eig = fd_scores(net, batch_data, batch_labels, h=h, niter=niter, temp=temp, seed=seed, sample_ids=sample_ids,
                          exact=exact, batch_mean=batch_mean, pass_size=pass_size)
    return eig, curv


class CurveScore:
    """The published ``CurveScore``: same constructor, methods and return values.

    ``dataset`` has ``num_classes``, ``train_loader`` (unshuffled, yielding ``(inputs, targets)``),
    ``test_loader`` and ``train_length``. Keyword-only: ``seed`` (default: drawn from torch's global
    generator once per call), ``exact``, ``batch_mean`` (the published 1/B scaling), ``pass_size``.
    Whole-dataset scoring keys the probes by dataset position, so it does not depend on the batch size.

    Args:
        dataset: The published dataset object (``num_classes``, ``train_loader``, ``test_loader``,
            ``train_length``).
        model: The scored model, returning logits.
        device: Where the batches are moved.
        temp: The temperature of the loss.
        seed: Seeds the probes (None: drawn once per call).
        exact: Exact statistics instead of the finite-difference estimates.
        batch_mean: The published 1/B scaling.
        pass_size: Probes per batched pass (None: automatic).
    """

    def __init__(self, dataset: Any, model: nn.Module, device: str | torch.device, temp: float, *,
                 seed: int | None = None, exact: bool = False, batch_mean: bool = False, pass_size: int | None = None):
        self.model = model
        self.dataset = dataset
        self.num_classes = dataset.num_classes
        self.last_logits = None
        self.train_loader = dataset.train_loader
        self.test_loader = dataset.test_loader
        self.device = device
        self.temp = temp
        self.options = dict(exact=exact, batch_mean=batch_mean, pass_size=pass_size)
        self.seed = seed

    def find_z(self, net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
               h: float) -> tuple[torch.Tensor, float]:
        """CURE's direction z = h·(sign g + 1e-7) / (‖sign g‖ + 1e-7) per sample.

        g is the input gradient of the loss of the raw logits (Moosavi-Dezfooli et al., "Robustness via curvature
        regularization, and vice versa", CVPR 2019), and ‖g‖ is over the whole batch (mean loss with
        ``batch_mean``).

        Args:
            net: The model.
            inputs: The batch x.
            targets: Its labels.
            h: The step length.

        Returns:
            ``(z, ‖g‖)``.

        Raises:
            ConfigError: For h <= 0.
            TypeError: When ``net`` is not an ``nn.Module``.
            DataError: For a batch of the wrong shape.
        """
        model, x, y = prepare(net, inputs, targets, h, 1)
        with scoring_mode(model), torch.enable_grad():
            x = x.clone().requires_grad_(True)
            loss = F.cross_entropy(LogitFn(model)(x), y, reduction="mean" if self.options["batch_mean"] else "sum")
            (grad,) = torch.autograd.grad(loss, x)
        z = torch.sign(grad)
        norms = z.reshape(z.shape[0], -1).norm(dim=1).view(-1, *([1] * (z.dim() - 1)))
        return h * (z + 1e-7) / (norms + 1e-7), grad.norm().item()

    def regularizer(self, net: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, pred_labels: bool,
                    h: float = 1e-3, niter: int = 10, *,
                    sample_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(curv, eig)`` (B,) on the CPU: see the module docstring and :func:`fd_scores`.

        Args:
            net: The model returning logits.
            inputs: The batch x (B, ...).
            targets: Its labels (B,).
            pred_labels: Score against the model's own predictions instead of ``targets``.
            h: The probe step, > 0.
            niter: Probes per sample.
            sample_ids: (B,) dataset indices keying the probes (default 0..B-1).

        Returns:
            ``(curv, eig)``, each (B,) on the CPU.

        Raises:
            ConfigError: For h <= 0, niter < 1 or bad ``sample_ids``.
            DataError: For a batch of the wrong shape.
        """
        return fd_scores(net, inputs, targets, h=h, niter=niter, temp=self.temp, pred_labels=pred_labels,
                         seed=self.seed, sample_ids=sample_ids, **self.options)

    def score_true_labels_with_comparison(self, pred_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, labels)`` over the training set, in loader order; the labels are also kept as ``last_logits``.

        Args:
            pred_labels: Score against the model's own predictions instead of the true labels.

        Returns:
            ``(scores, labels)``, each (train_length,) float.
        """
        self.model.eval()
        scores, labels = self.rank_samples_true_labels_with_comparison(pred_labels=pred_labels)
        self.last_logits = labels
        return scores, labels

    def rank_samples_true_labels_with_comparison(self, pred_labels: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The memorization score of every training sample, probes keyed by its position in the loader.

        Args:
            pred_labels: Score against the model's own predictions instead of the true labels.

        Returns:
            ``(scores, labels)``, each (train_length,) float, in loader order.
        """
        scores = torch.zeros(self.dataset.train_length)
        labels = torch.zeros(self.dataset.train_length)
        seed = draw_seed(self.seed)
        start = 0
        for inputs, targets in self.train_loader:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            stop = start + inputs.shape[0]
            ids = torch.arange(start, stop, device=inputs.device)
            curv, _ = fd_scores(self.model, inputs, targets, temp=self.temp, pred_labels=pred_labels, seed=seed,
                                sample_ids=ids, **self.options)
            scores[start:stop] = curv
            labels[start:stop] = targets.detach().cpu().to(labels.dtype)
            start = stop
        return scores, labels
