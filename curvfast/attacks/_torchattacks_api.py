"""The ensemble attacks as ``torchattacks.attack.Attack`` subclasses (needs torchattacks).

Used like any torchattacks attack::

    from curvfast.attacks import EnsemblePGD
    atk = EnsemblePGD([full_precision, one_bit, two_bit, halftone], eps=8/255, alpha=2/255, steps=10, rule="vote")
    atk.set_normalization_used(mean, std)          # members take normalised inputs
    adv = atk(images, labels)

The attack's ``model`` is the majority-vote ensemble (``MajorityVote``), so torchattacks' model-mode
handling (``set_model_training_mode``; eval by default), device, targeted modes
(``set_mode_targeted_*``) and ``save`` work as for a single model; after each call every member is
back in the mode its owner left it in. Each step follows
``ensemble_direction(rule)`` of the members' input gradients (``sum``, ``vote`` or ``agree``, see
:mod:`curvfast.attacks`), in torchattacks' PGD iteration; with one member every rule is
exactly ``torchattacks.PGD``. Defaults are torchattacks' PGD defaults (the TREND study uses
alpha = 0.01, steps = 40).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchattacks.attack import Attack
from torch import nn

from ._pgd import check_pgd_settings, ensemble_direction, input_grads, pgd_linf
from ._vote import MajorityVote

__all__ = ["EnsemblePGD"]


class EnsemblePGD(Attack):
    """L-inf PGD against an ensemble, each member's gradient combined by ``rule``.

    Args:
        members: The ensemble's classifiers, or a ready :class:`~curvfast.attacks.MajorityVote`.
        eps: The L-inf radius.
        alpha: The step size.
        steps: The number of steps.
        random_start: Start at a uniform random point of the eps-ball.
        rule: How the members' gradients are combined: ``sum``, ``vote`` or ``agree``.

    Raises:
        curvfast.errors.ConfigError: For bad PGD settings, an unknown ``rule``
            (:class:`~curvfast.errors.UnknownNameError`) or no members.
    """

    def __init__(self, members: Sequence[nn.Module] | MajorityVote, eps: float = 8 / 255, alpha: float = 2 / 255,
                 steps: int = 10, random_start: bool = True, rule: str = "sum"):
        model = members if isinstance(members, MajorityVote) else MajorityVote(list(members))
        super().__init__("EnsemblePGD", model)
        check_pgd_settings(eps, alpha, steps)
        ensemble_direction([torch.zeros(1)], rule)  # validates the rule
        self.eps, self.alpha, self.steps, self.random_start, self.rule = eps, alpha, steps, random_start, rule
        self.supported_mode = ["default", "targeted"]

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        """Torchattacks' call (mode switch, normalisation), then every module's own train/eval flag restored.

        Torchattacks restores from the container's flag, which the members' owners never set.

        Args:
            inputs: The images (B, ...) in [0, 1].
            labels: The true labels (B,).
            *args: Passed on to ``torchattacks.attack.Attack.__call__``.
            **kwargs: Passed on to ``torchattacks.attack.Attack.__call__``.

        Returns:
            The adversarial images.
        """
        modes = [(m, m.training) for m in self.model.modules()]
        try:
            return super().__call__(inputs, labels, *args, **kwargs)
        finally:
            for m, mode in modes:
                m.training = mode

    def _member_logits(self, member: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The member on attack-space inputs, normalised as torchattacks' ``get_logits`` does."""
        def logits(x: torch.Tensor) -> torch.Tensor:
            return member(self.normalize(x) if self._normalization_applied is False else x)
        return logits

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Run the ensemble PGD (torchattacks calls this through ``__call__``).

        Args:
            images: The images (B, ...) in [0, 1].
            labels: The true labels (B,); in a targeted mode, torchattacks' target labels are attacked instead.

        Returns:
            The adversarial images.
        """
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        sign = 1.0
        if self.targeted:  # descend the loss of the target class
            labels, sign = self.get_target_label(images, labels), -1.0
        members = [self._member_logits(m) for m in self.model.members]

        def direction(adv: torch.Tensor) -> torch.Tensor:
            return ensemble_direction(input_grads(members, adv, labels, sign), self.rule)

        return pgd_linf(images, direction, eps=self.eps, step=self.alpha, steps=self.steps,
                        random_start=self.random_start)
