r"""Privacy-Memorization-Curvature ``utils/loss_curve_score.py``: ``CurveScore``.

Same constructor, attributes and methods: ``find_z`` (CURE's direction and the batch's gradient norm),
``regularizer`` (``(regs / niter, eigs / niter)``, the finite-difference scores of :mod:`curvfast.compat._fd`),
``score_true_labels_with_comparison`` and ``rank_samples_true_labels_with_comparison`` (the memorization
score of every training sample, in loader order, with its label).

Identical by default: the published probes (n ``torch.randint_like`` draws per ``regularizer`` call, on the
batch's device), the batch-mean loss (each batch its own 1/B), ``net.eval()`` as published, the numbers up
to float32 rounding and torch's generator left where the published class leaves it. Stricter than
published: a loader that yields fewer or more samples than ``train_length`` is refused (the published
class leaves the missing ones at score 0, label 0, or fails on the extra ones); the caller's tensors and
the net's parameter gradients are left untouched (the published methods set ``requires_grad`` on the
inputs and clear the net's gradients).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..._common import prepare
from ..._fd import fd_scores, find_z_direction
from ....errors import DataError

__all__ = ["CurveScore"]


class CurveScore:
    """The published ``CurveScore``: same constructor, methods and return values.

    The keyword-only arguments are curvfast's opt-ins, applied to every method.

    Args:
        dataset: The published dataset object: ``num_classes``, ``train_loader`` (unshuffled, yielding
            ``(inputs, targets)``), ``test_loader`` and ``train_length``.
        model: The scored model (an ``nn.Module`` or a callable returning logits).
        device: Where the batches are moved.
        temp: The loss temperature of ``regularizer``.
        seed: Opt-in: curvfast's Philox probes keyed by (seed, sample id, probe), the sample id being the
            position in the loader, so whole-dataset scores do not depend on the batch size; torch's global
            generator is not touched. None: the published draws.
        exact: Opt-in: exact statistics instead of the finite-difference estimates.
        per_sample: Opt-in: per-sample losses instead of the published batch mean.
        output_transform: Picks the logits out of the model's output (e.g. ``lambda out: out[0]``).
        pass_size: Probes per batched pass (None: sized from the input).
    """

    def __init__(self, dataset: Any, model: nn.Module | Callable, device: str | torch.device, temp: float, *,
                 seed: int | None = None, exact: bool = False, per_sample: bool = False,
                 output_transform: Callable | None = None, pass_size: int | None = None):
        self.model = model
        self.dataset = dataset
        self.criterion = nn.CrossEntropyLoss()
        self.num_classes = dataset.num_classes
        self.last_logits = None
        self.train_loader = dataset.train_loader
        self.test_loader = dataset.test_loader
        self.device = device
        self.temp = temp
        self.seed = seed
        self.options = dict(exact=exact, per_sample=per_sample, pass_size=pass_size)
        self.output_transform = output_transform

    def find_z(self, net: nn.Module | Callable, inputs: torch.Tensor, targets: torch.Tensor,
               h: float) -> tuple[torch.Tensor, float]:
        r"""CURE's direction and the gradient norm: ``(z, norm_grad)``, as published.

        .. math:: z_b = h (\mathrm{sign}\, g_b + 10^{-7}) / (\lVert \mathrm{sign}\, g_b \rVert + 10^{-7})

        with g the input gradient of the batch-mean cross-entropy of the raw logits and ``norm_grad`` its
        norm over the whole batch (``per_sample``: of the summed loss).

        Args:
            net: The model; put in eval mode, as published.
            inputs: The batch x (B, ...).
            targets: Its labels (B,).
            h: The length of each z_b.

        Returns:
            ``(z, norm_grad)``: z like ``inputs``, the norm a float.

        Raises:
            ConfigError: A bad h.
            DataError: A batch that does not fit the net, or a label outside [0, C).
            NonFiniteError: NaN or Inf in the inputs, the weights or the gradient.
        """
        return find_z_direction(net, inputs, targets, h, per_sample=self.options["per_sample"],
                                output_transform=self.output_transform)

    def regularizer(self, net: nn.Module | Callable, inputs: torch.Tensor, targets: torch.Tensor, pred_labels: bool,
                    h: float = 1e-3, niter: int = 10, *,
                    sample_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(regs / niter, eigs / niter)``: the curvature and eigenvalue scores (B,) on the CPU, as published.

        Args:
            net: The model; put in eval mode, as published.
            inputs: The batch x (B, ...).
            targets: Its labels (B,).
            pred_labels: Score against the net's own predictions (argmax of the raw logits) instead.
            h: The probe step.
            niter: Probes n.
            sample_ids: Opt-in, with the constructor's ``seed``: the samples' dataset indices (default 0..B-1).

        Returns:
            ``(curvature, eig_values)``, each (B,) on the CPU.

        Raises:
            ConfigError: A bad h, niter, temp or sample ids.
            DataError: A batch that does not fit the net, or a label outside [0, C).
            NonFiniteError: NaN or Inf in the inputs, the weights or a score.
        """
        batch = prepare(net, inputs, targets, h=h, niter=niter, temp=self.temp, output_transform=self.output_transform,
                        sets_eval=True)
        curvature, eig_values, _ = fd_scores(batch, h=h, niter=niter, temp=self.temp, pred_labels=pred_labels,
                                             seed=self.seed, sample_ids=sample_ids, **self.options)
        return curvature, eig_values

    def score_true_labels_with_comparison(self, pred_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, labels)`` over the training set, in loader order; the labels are also kept as ``last_logits``.

        Args:
            pred_labels: Score against the model's own predictions instead of the true labels.

        Returns:
            ``(scores, labels)``, each (train_length,) float.

        Raises:
            DataError: The loader yields another number of samples than ``train_length``.
        """
        if isinstance(self.model, nn.Module):
            self.model.eval()
        scores, labels = self.rank_samples_true_labels_with_comparison(pred_labels=pred_labels)
        self.last_logits = labels
        return scores, labels

    def rank_samples_true_labels_with_comparison(self, pred_labels: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The memorization score of every training sample, with the published defaults h = 1e-3, n = 10.

        Args:
            pred_labels: Score against the model's own predictions instead of the true labels.

        Returns:
            ``(scores, labels)``, each (train_length,) float, in loader order.

        Raises:
            DataError: The loader yields another number of samples than ``train_length``.
        """
        length = self.dataset.train_length
        scores, labels = torch.zeros(length), torch.zeros(length)
        start = 0
        for inputs, targets in self.train_loader:
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            stop = start + inputs.shape[0]
            if stop > length:
                raise DataError(f"the train loader yields more than train_length = {length} samples; set "
                                "dataset.train_length to the loader's sample count")
            ids = None if self.seed is None else torch.arange(start, stop, device=inputs.device)
            scores[start:stop], _ = self.regularizer(self.model, inputs, targets, pred_labels, sample_ids=ids)
            labels[start:stop] = targets.detach().cpu().to(labels.dtype)
            start = stop
        if start != length:
            raise DataError(f"the train loader yielded {start} samples but train_length is {length}: the other "
                            f"{length - start} would be left at score 0 and label 0; set dataset.train_length to the "
                            "loader's sample count (and do not drop the last batch)")
        return scores, labels
