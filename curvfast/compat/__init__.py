"""Drop-in replacements for the published curvature scorers: swap one import, keep the experiment.

One module per published source file, mirroring its path under the repository's name::

    curvfast.compat.curvature_clues.precompute_scores.precompute_cifar10_scores      get_curvature_for_batch_zo_v2
    curvfast.compat.privacy_memorization_curvature.utils.loss_curve_score            CurveScore
    curvfast.compat.memorization_curvature.score_imagenet_checkpoint                 get_regularized_curvature_for_batch

:data:`DROP_INS` lists every one (docs/compat.md is the swap table). Each drop-in has its published
signature and return order, and by default gives the published numbers: with the same
``torch.manual_seed`` it makes the same ``torch.randint_like`` draws in the same order, computes the same
statistic (the fd scorers' batch-mean 1/B included) up to float32 rounding, and leaves torch's generator
where the published function leaves it. curvfast's improvements are keyword-only opt-ins: ``seed=``
(batch-independent Philox probes keyed by sample id), ``per_sample=True`` (the fd scorers without the 1/B),
``exact=True`` (the Hessian statistic the estimate approximates); ``output_transform=`` lets a net return a
tuple. The inputs are checked as strictly as :func:`curvfast.curvature.input_curvature` checks them.

Two published names map to one variant each and are importable from here too:
``get_curvature_for_batch_zo`` (Curvature-Clues ImageNet) and ``CurveScore``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ._zo import modified_entropy
from .curvature_clues.precompute_scores import (precompute_cifar10_mentr_scores, precompute_cifar10_scores,
                                                precompute_cifar100_mentr_scores, precompute_cifar100_scores,
                                                precompute_cifar100_scores_dp, precompute_imagenet_scores)
from .memorization_curvature import score_imagenet_checkpoint
from .privacy_memorization_curvature import (calc_curv_fz_imagenet_models, calc_curv_fz_models,
                                             private_model_curve_scorer)
from .curvature_clues.precompute_scores.precompute_imagenet_scores import get_curvature_for_batch_zo
from .privacy_memorization_curvature.utils.loss_curve_score import CurveScore

__all__ = ["DROP_INS", "DropIn", "get_curvature_for_batch_zo", "CurveScore", "modified_entropy"]


@dataclass(frozen=True)
class DropIn:
    """One published scorer and its drop-in.

    Args:
        repository: The published GitHub repository, ``owner/name``.
        path: The file defining the scorer there.
        name: The scorer's name (a function or a class).
        returns: What it returns, in order.
        replacement: The drop-in (same name, in the module mirroring ``path``).
        binds_net: The published function is nested in ``main()`` and reads ``net`` from it: bind it with
            ``functools.partial(..., net=net)`` where the nested definition was.
    """

    repository: str
    path: str
    name: str
    returns: str
    replacement: Callable
    binds_net: bool = False

    @property
    def module(self) -> str:
        """The drop-in's module: the published path under the repository's package."""
        package = self.repository.split("/")[1].lower().replace("-", "_")
        return f"{__name__}.{package}." + self.path.removesuffix(".py").replace("/", ".")

    @property
    def import_line(self) -> str:
        """The line that imports the drop-in, under the published name."""
        return f"from {self.module} import {self.name}"


_CC, _PMC, _MC = ("DeepakTatachar/Curvature-Clues", "DeepakTatachar/Privacy-Memorization-Curvature",
                  "purdue-nrl/Memorization-Curvature")
_ZO3, _ZO4 = "(curv_estimate, loss_pos, max_prob)", "(curv_estimate, loss_pos, max_prob, m_entropy), curv_estimate 0"
_FD = "get_regularized_curvature_for_batch"

DROP_INS: tuple[DropIn, ...] = (
    DropIn(_CC, "precompute_scores/precompute_cifar10_scores.py", "get_curvature_for_batch_zo_v2", _ZO3,
           precompute_cifar10_scores.get_curvature_for_batch_zo_v2),
    DropIn(_CC, "precompute_scores/precompute_cifar100_scores.py", "get_curvature_for_batch_zo_v2", _ZO3,
           precompute_cifar100_scores.get_curvature_for_batch_zo_v2),
    DropIn(_CC, "precompute_scores/precompute_cifar100_scores_dp.py", "get_curvature_for_batch_zo_v2", _ZO3,
           precompute_cifar100_scores_dp.get_curvature_for_batch_zo_v2),
    DropIn(_CC, "precompute_scores/precompute_cifar10_mentr_scores.py", "get_curvature_for_batch_zo_v2", _ZO4,
           precompute_cifar10_mentr_scores.get_curvature_for_batch_zo_v2),
    DropIn(_CC, "precompute_scores/precompute_cifar100_mentr_scores.py", "get_curvature_for_batch_zo_v2", _ZO4,
           precompute_cifar100_mentr_scores.get_curvature_for_batch_zo_v2),
    DropIn(_CC, "precompute_scores/precompute_imagenet_scores.py", "get_curvature_for_batch_zo",
           "(curv_estimate, loss, max_prob, m_entropy)", precompute_imagenet_scores.get_curvature_for_batch_zo),
    DropIn(_PMC, "calc_curv_fz_models.py", _FD, "(curvature, eig_values)",
           calc_curv_fz_models.get_regularized_curvature_for_batch),
    DropIn(_PMC, "calc_curv_fz_imagenet_models.py", _FD, "(curvature, eig_values, correct)",
           calc_curv_fz_imagenet_models.get_regularized_curvature_for_batch),
    DropIn(_PMC, "private_model_curve_scorer.py", _FD, "(curvature, eig_values)",
           private_model_curve_scorer.get_regularized_curvature_for_batch, binds_net=True),
    DropIn(_PMC, "utils/loss_curve_score.py", "CurveScore",
           "find_z: (z, norm_grad); regularizer: (regs, eigs); score_true_labels_with_comparison: (scores, labels)",
           CurveScore),
    DropIn(_MC, "score_imagenet_checkpoint.py", _FD, "(eig_estimate, curv_estimate)",
           score_imagenet_checkpoint.get_regularized_curvature_for_batch, binds_net=True),
)
