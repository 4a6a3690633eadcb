"""The ensemble attacks as ``torchattacks.attack.Attack`` subclasses (needs torchattacks).

Used like any torchattacks attack::

    from curvfast.attacks import EnsemblePGD
    atk = EnsemblePGD([full_precision, one_bit, two_bit, halftone], eps=8/255, alpha=2/255, steps=10, rule="vote")
    atk.set_normalization_used(mean, std)          # members take normalised inputs
    adv = atk(images, labels)

The attack's ``model`` is the majority-vote ensemble (:class:`~curvfast.attacks.MajorityVote`), one per list
of members (attacks built on the same members share it, as ``torchattacks.MultiAttack`` requires), whose
forward returns logits (the log vote shares), so torchattacks' ``get_logits``, ``MultiAttack``, ``save``,
device and targeted modes (``set_mode_targeted_*``) work as for a single model. Model modes follow
torchattacks (eval during the attack by default, ``set_model_training_mode`` to change it), and after
``__call__``, ``save`` and ``get_output_with_eval_nograd`` every module of every member is back in the mode
its owner left it in. Each step follows ``ensemble_direction(rule)`` of the members' input gradients
(``sum``, ``vote`` or ``agree``, see :mod:`curvfast.attacks`), in torchattacks' PGD iteration; with one member
every rule is exactly ``torchattacks.PGD``. Defaults are torchattacks' PGD defaults (the TREND study uses
alpha = 0.01, steps = 40). Images and labels are checked as :func:`~curvfast.attacks.ensemble_pgd` checks
them (after torchattacks has inverted a normalisation set with ``set_normalization_used``).
"""
from __future__ import annotations

import weakref
from typing import Callable, Sequence

import torch
from torchattacks.attack import Attack
from torch import nn

from curvfast.curvature._model import scoring_mode
from curvfast.errors import ConfigError

from ._pgd import check_attack_inputs, check_labels_fit, check_pgd_settings, ensemble_direction, input_grads, pgd_linf
from ._vote import MajorityVote

__all__ = ["EnsemblePGD"]

_ENSEMBLES: "weakref.WeakValueDictionary[tuple[int, ...], MajorityVote]" = weakref.WeakValueDictionary()


def _ensemble_of(members) -> MajorityVote:
    """The one :class:`MajorityVote` of these members (same modules, same order), built on first use.

    A live ensemble holds its members, so their ids in the key cannot be reused while it exists.
    """
    if isinstance(members, MajorityVote):
        return members
    if isinstance(members, nn.Module) and not isinstance(members, nn.ModuleList):
        raise ConfigError(
            f"EnsemblePGD takes a list of models, the ensemble's members; got one {type(members).__name__}, "
            "whose layers are not an ensemble: pass [model] for a one-member ensemble (or use torchattacks.PGD)"
        )
    members = list(members)
    for i, m in enumerate(members):
        if not isinstance(m, nn.Module):
            raise ConfigError(f"EnsemblePGD's members must be nn.Modules; member {i} is a {type(m).__name__}")
    key = tuple(id(m) for m in members)
    ensemble = _ENSEMBLES.get(key)
    if ensemble is None:
        ensemble = _ENSEMBLES[key] = MajorityVote(members)
    return ensemble


class EnsemblePGD(Attack):
    """L-inf PGD against an ensemble, each member's gradient combined by ``rule``.

    Args:
        members: The ensemble's classifiers (a list or ``nn.ModuleList``), or a ready
            :class:`~curvfast.attacks.MajorityVote`; not one model.
        eps: The L-inf radius.
        alpha: The step size.
        steps: The number of steps.
        random_start: Start at a uniform random point of the eps-ball.
        rule: How the members' gradients are combined: ``sum``, ``vote`` or ``agree``.

    Raises:
        curvfast.errors.ConfigError: For bad PGD settings, an unknown ``rule``
            (:class:`~curvfast.errors.UnknownNameError`), no members, one model instead of a list, or a
            member that is not an ``nn.Module``.
    """

    def __init__(self, members: Sequence[nn.Module] | MajorityVote, eps: float = 8 / 255, alpha: float = 2 / 255,
                 steps: int = 10, random_start: bool = True, rule: str = "sum"):
        super().__init__("EnsemblePGD", _ensemble_of(members))
        check_pgd_settings(eps, alpha, steps)
        ensemble_direction([torch.zeros(1)], rule)  # validates the rule
        self.eps, self.alpha, self.steps, self.random_start, self.rule = eps, alpha, steps, random_start, rule
        self.supported_mode = ["default", "targeted"]

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        """Torchattacks' call (mode switch, normalisation), then every module's own train/eval flag restored.

        Args:
            inputs: The images (B, ...) in [0, 1] (normalised, after ``set_normalization_used``).
            labels: The true labels (B,).
            *args: Passed on to ``torchattacks.attack.Attack.__call__``.
            **kwargs: Passed on to ``torchattacks.attack.Attack.__call__``.

        Returns:
            The adversarial images.
        """
        with scoring_mode(self.model):
            return super().__call__(inputs, labels, *args, **kwargs)

    def save(self, *args, **kwargs):
        """Torchattacks' ``save`` (attack a loader, write the adversarial set), then every member's modes restored.

        Args:
            *args: Passed on to ``torchattacks.attack.Attack.save``.
            **kwargs: Passed on to ``torchattacks.attack.Attack.save``.

        Returns:
            What torchattacks' ``save`` returns.
        """
        with scoring_mode(self.model):
            return super().save(*args, **kwargs)

    @torch.no_grad()
    def get_output_with_eval_nograd(self, inputs: torch.Tensor) -> torch.Tensor:
        """The ensemble's logits in eval mode, every member's modes restored after.

        Args:
            inputs: The images (normalised as for ``get_logits``).

        Returns:
            The logits (B, C), the log vote shares.
        """
        with scoring_mode(self.model):
            return self.get_logits(inputs)

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

        Raises:
            TypeError, curvfast.errors.DataError, curvfast.errors.NonFiniteError: For images or labels the
                attack cannot use (see :func:`~curvfast.attacks.ensemble_pgd`).
        """
        modules = list(self.model.members)
        images = images.clone().detach().to(self.device)
        labels = check_attack_inputs(images, None if labels is None else torch.as_tensor(labels).to(self.device),
                                     modules, [f"member {i}" for i in range(len(modules))])
        members = [self._member_logits(m) for m in modules]
        sign = 1.0
        if self.targeted:  # descend the loss of the target class
            labels, sign = torch.as_tensor(self.get_target_label(images, labels)).long(), -1.0
        check_labels_fit(modules, members, images, labels)

        def direction(adv: torch.Tensor) -> torch.Tensor:
            return ensemble_direction(input_grads(members, adv, labels, sign), self.rule)

        return pgd_linf(images, direction, eps=self.eps, step=self.alpha, steps=self.steps,
                        random_start=self.random_start)
