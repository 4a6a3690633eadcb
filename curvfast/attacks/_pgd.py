"""Attacks: torchattacks for single models, in-house L-inf PGD for ensembles.

Single-model attacks are torchattacks' ``PGD`` (L-inf), ``FGSM``, ``PGDL2`` and ``CW`` (Carlini &
Wagner's L2 attack, as in TREND's tables: minimise ‖δ‖² + c·max(max_{k≠y} z_k − z_y, −κ) over
tanh-parametrised images with Adam; c = 1, κ = 0, ``steps`` Adam steps of learning rate 0.01; the
result is then projected onto the L2 ball of radius ``eps`` so that a sweep over eps is meaningful,
and ``eps=inf`` keeps the unconstrained attack). They differentiate
the model's forward, so quantised members are attacked through their straight-through gradients
(BPDA) with no extra code. torchattacks has no attack that combines several models' gradients
sign-wise, so ``ensemble_pgd`` is in-house: the same PGD iteration as torchattacks' (uniform random
start in the eps-ball, x <- clip_[0,1](Pi_eps(x + alpha d))) with the ascent direction d built
from the members' input gradients g_m = d CE(f_m(x), y) / dx by one of three rules:

    sum    d = sign(sum_m g_m)                 (one gradient of the summed losses)
    vote   d = sign(sum_m sign(g_m))           (each member one vote per pixel)
    agree  d = sign(g_1) where every sign(g_m) agrees, else 0 (steps only where all members agree)
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from curvfast.curvature._checks import check_labels
from curvfast.curvature._model import scoring_mode
from curvfast.errors import ConfigError, DataError, NonFiniteError, UnknownNameError, UnsupportedModelError

__all__ = ["SINGLE_ATTACKS", "ENSEMBLE_RULES", "attack", "ensemble_pgd", "ensemble_direction", "pgd_linf",
           "input_grads", "check_pgd_settings", "check_attack_inputs", "check_labels_fit"]

SINGLE_ATTACKS = ("pgd", "fgsm", "pgdl2", "cw")
ENSEMBLE_RULES = ("sum", "vote", "agree")


def check_attack_inputs(x: torch.Tensor, y, models: Sequence[nn.Module], names: Sequence[str], *,
                        same_device: bool = True) -> torch.Tensor:
    """Refuse images and labels an attack cannot use as given; return the labels as int64.

    Args:
        x: The images (B, ...): floating point, finite, in [0, 1], of the models' dtype (and device).
        y: Integer class labels (B,), a tensor or anything ``torch.as_tensor`` takes.
        models: The attacked models (the dtype and device of their first parameter are checked).
        names: How each model is named in a message (``"the model"``, ``"member 0"`` ...).
        same_device: Refuse images on another device than a model (False: the caller moves them).

    Returns:
        ``y`` as an int64 tensor on ``x``'s device.

    Raises:
        TypeError: ``x`` is not a floating-point tensor, ``y`` does not hold integers, or a model's
            parameters have another dtype than ``x``.
        curvfast.errors.NonFiniteError: ``x`` holds NaN or Inf (the message names the samples).
        curvfast.errors.DataError: ``x`` is unbatched, empty or outside [0, 1], ``y`` is missing or has
            another length, or a model is on another device.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(f"images must be a floating-point tensor (got {got}); convert integer images first, "
                        "e.g. x = x.float() / 255")
    if x.dim() < 2 or x.shape[0] == 0:
        raise DataError(f"images must be a non-empty batch (B, ...) (got shape {tuple(x.shape)})")
    finite = torch.isfinite(x.flatten(1)).all(1)
    if not bool(finite.all()):
        raise NonFiniteError(f"images hold NaN or Inf in sample(s) {(~finite).nonzero().flatten()[:10].tolist()}; "
                             "clean the inputs first")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1:
        raise DataError(
            f"attacks work on images in [0, 1] (got values from {low:.4g} to {high:.4g}); rescale the images and "
            "normalise inside the model, or with the attack's set_normalization_used (then pass normalised images)"
        )
    if y is None:
        raise DataError("the attack needs labels (B,): the true classes (the targets, in a targeted mode)")
    y = torch.as_tensor(y)
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"labels must hold integer class labels (got {y.dtype}); convert with y.long()")
    if y.shape != (x.shape[0],):
        raise DataError(f"labels must have shape (B,) = ({x.shape[0]},) to match the images (got {tuple(y.shape)})")
    for model, name in zip(models, names):
        param = next((p for p in model.parameters() if p.is_floating_point()), None)
        if param is not None and param.dtype != x.dtype:
            raise TypeError(f"images are {x.dtype} but {name}'s parameters are {param.dtype}; cast one to match "
                            f"(x.to({param.dtype}) or model.to({x.dtype}))")
        if same_device and param is not None and param.device != x.device:
            raise DataError(f"images are on {x.device} but {name} is on {param.device}; move one with .to()")
    return y.to(device=x.device, dtype=torch.int64)


def check_labels_fit(models: Sequence[nn.Module], logits: Sequence[Callable[[torch.Tensor], torch.Tensor]],
                     x: torch.Tensor, y: torch.Tensor) -> None:
    """Refuse labels outside ``[0, C)`` of any model, C read from its output on one sample (eval mode).

    Args:
        models: The attacked modules, put in eval mode for the check (their modes are restored).
        logits: The callables the attack differentiates, one per model (normalisation applied).
        x: The images (B, ...).
        y: The labels (B,), int64.

    Raises:
        curvfast.errors.UnsupportedModelError: A model's output is not logits (B, C).
        curvfast.errors.DataError: A label lies outside ``[0, C)``.
    """
    for model, fn in zip(models, logits):
        with torch.no_grad(), scoring_mode(model):
            z = fn(x[:1])
        if not isinstance(z, torch.Tensor) or z.dim() != 2:
            raise UnsupportedModelError(f"an attacked model must return logits (B, C) (got "
                                        f"{tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__})")
        check_labels(y, z.shape[1])


def check_pgd_settings(eps: float, step: float, steps: int) -> None:
    """Refuse a PGD radius below 0, a step size that is not positive or fewer than one step.

    Args:
        eps: The attack radius; must be >= 0.
        step: The step size; must be > 0.
        steps: The number of steps; must be >= 1.

    Raises:
        curvfast.errors.ConfigError: Naming the bad value.
    """
    if not eps >= 0:
        raise ConfigError(f"eps must be >= 0 (got {eps})")
    if not step > 0 or steps < 1:
        raise ConfigError(f"step must be > 0 and steps >= 1 (got step={step}, steps={steps})")


def attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, name: str = "pgd", eps: float = 8 / 255,
    step: float = 0.01, steps: int = 40, random_start: bool = True, seed: int = 0, batch_size: int = 512,
) -> torch.Tensor:
    """Untargeted adversarial examples for one model with torchattacks.

    The attacks: ``pgd`` (L-inf PGD), ``fgsm``, ``pgdl2`` (L2 PGD with ``eps`` the L2 radius) and ``cw``
    (Carlini-Wagner L2 projected onto the L2 ball of radius ``eps``). The random start is seeded by ``seed``
    without touching the global RNG; eps = 0 returns ``x``.

    Args:
        model: The attacked classifier (logits out, inputs in [0, 1]).
        x: The images (B, ...), float, in [0, 1].
        y: The true labels (B,).
        name: One of :data:`SINGLE_ATTACKS`.
        eps: The attack radius (L-inf, or L2 for ``pgdl2`` and ``cw``).
        step: The PGD step size (torchattacks' ``alpha``).
        steps: The number of PGD (or Adam, for ``cw``) steps.
        random_start: Start PGD at a uniform random point of the eps-ball.
        seed: Seeds the random start.
        batch_size: Images attacked per call of the torchattacks attack.

    Returns:
        The adversarial images, shaped like ``x``.

    Raises:
        curvfast.errors.UnknownNameError: For an unknown ``name``.
        curvfast.errors.ConfigError: For bad PGD settings (see :func:`check_pgd_settings`).
        TypeError, curvfast.errors.DataError, curvfast.errors.NonFiniteError: For images or labels the
            attack cannot use (see :func:`check_attack_inputs` and :func:`check_labels_fit`).
    """
    import torchattacks

    if name not in SINGLE_ATTACKS:
        raise UnknownNameError(f"attack must be one of {SINGLE_ATTACKS} (got {name!r})")
    y = check_attack_inputs(x, y, [model], ["the model"], same_device=False)  # torchattacks moves x to the model
    check_labels_fit([model], [model], x.to(next(model.parameters(), x).device), y)
    check_pgd_settings(eps, step, steps)
    if eps == 0:
        return x.clone()
    if name == "pgd":
        atk = torchattacks.PGD(model, eps=eps, alpha=step, steps=steps, random_start=random_start)
    elif name == "pgdl2":
        atk = torchattacks.PGDL2(model, eps=eps, alpha=step, steps=steps, random_start=random_start)
    elif name == "cw":
        cw = torchattacks.CW(model, c=1.0, kappa=0.0, steps=steps, lr=0.01)
        atk = lambda xb, yb: _project_l2(xb, cw(xb, yb), eps)  # noqa: E731
    else:
        atk = torchattacks.FGSM(model, eps=eps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.cat([atk(xb, yb) for xb, yb in zip(x.split(batch_size), y.split(batch_size))])


def _project_l2(x: torch.Tensor, adv: torch.Tensor, radius: float) -> torch.Tensor:
    """Return x + δ·min(1, radius/‖δ‖₂) per sample (the identity for radius = inf)."""
    delta = adv - x
    norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    return (x + delta * (radius / norm).clamp(max=1.0)).clamp(0, 1)


def ensemble_direction(grads: list[torch.Tensor], rule: str) -> torch.Tensor:
    """Ascent direction from the members' input gradients (see the module docstring).

    Args:
        grads: The members' input gradients, all of one shape.
        rule: One of :data:`ENSEMBLE_RULES` (``sum``, ``vote`` or ``agree``).

    Returns:
        The direction d, shaped like one gradient, with entries in {-1, 0, 1}.

    Raises:
        curvfast.errors.UnknownNameError: For an unknown ``rule``.
    """
    if rule not in ENSEMBLE_RULES:
        raise UnknownNameError(f"ensemble attack rule must be one of {ENSEMBLE_RULES} (got {rule!r})")
    if rule == "sum":
        return torch.stack(grads).sum(0).sign()
    signs = torch.stack([g.sign() for g in grads])
    if rule == "vote":
        return signs.sum(0).sign()
    agree = (signs == signs[:1]).all(0) & (signs[0] != 0)
    return torch.where(agree, signs[0], torch.zeros_like(signs[0]))


def input_grads(members: Iterable[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, y: torch.Tensor,
                sign: float = 1.0) -> list[torch.Tensor]:
    r"""The members' input gradients of the cross-entropy.

    .. math:: g_m = \partial (s \cdot \mathrm{CE}(f_m(x), y)) / \partial x

    Args:
        members: Callables returning logits (modules or wrapped modules).
        x: The inputs (B, ...); a detached copy is differentiated.
        y: The labels (B,).
        sign: ``s``; -1 descends the loss (a targeted attack).

    Returns:
        One gradient per member, each shaped like ``x``.
    """
    with torch.enable_grad():  # also inside a caller's no_grad block
        x = x.detach().requires_grad_(True)
        return [torch.autograd.grad(sign * F.cross_entropy(m(x), y), x)[0] for m in members]


def pgd_linf(x: torch.Tensor, direction: Callable[[torch.Tensor], torch.Tensor], *, eps: float, step: float,
             steps: int, random_start: bool) -> torch.Tensor:
    r"""Torchattacks' L-inf PGD iteration from ``x`` with the ascent direction ``direction(adv)``.

    A uniform random start in the eps-ball (with ``random_start``), then ``steps`` times

    .. math:: x \leftarrow \mathrm{clip}_{[0,1]}(\Pi_\epsilon(x + \mathrm{step} \cdot d(x)))

    Args:
        x: The clean images (B, ...) in [0, 1].
        direction: Maps the current adversarial images to the ascent direction d (same shape).
        eps: The L-inf radius.
        step: The step size.
        steps: The number of steps.
        random_start: Start at a uniform random point of the eps-ball.

    Returns:
        The adversarial images, detached, shaped like ``x``.
    """
    adv = x.clone().detach()
    if random_start:
        adv = (adv + torch.empty_like(adv).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        adv = adv + step * direction(adv)
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1).detach()
    return adv


def ensemble_pgd(
    members: list[nn.Module], x: torch.Tensor, y: torch.Tensor, *, rule: str = "sum", eps: float = 8 / 255,
    step: float = 0.01, steps: int = 40, random_start: bool = True, seed: int = 0, batch_size: int = 512,
) -> torch.Tensor:
    """L-inf PGD against several models at once, each step along ``ensemble_direction(rule)``.

    Members are run in eval mode (their modes are restored); the random start is seeded by ``seed``.
    As a torchattacks attack: ``curvfast.attacks.EnsemblePGD``.

    Args:
        members: The ensemble's classifiers (logits out, inputs in [0, 1]).
        x: The images (B, ...), float, in [0, 1].
        y: The true labels (B,).
        rule: How the members' gradients are combined, one of :data:`ENSEMBLE_RULES`.
        eps: The L-inf radius.
        step: The step size.
        steps: The number of steps.
        random_start: Start at a uniform random point of the eps-ball.
        seed: Seeds the random start.
        batch_size: Images attacked at once.

    Returns:
        The adversarial images, shaped like ``x``.

    Raises:
        curvfast.errors.ConfigError: With no members or bad PGD settings (an unknown ``rule``:
            :class:`~curvfast.errors.UnknownNameError`).
        TypeError, curvfast.errors.DataError, curvfast.errors.NonFiniteError: For images or labels the
            attack cannot use (see :func:`check_attack_inputs` and :func:`check_labels_fit`).
    """
    if not members:
        raise ConfigError("ensemble_pgd needs at least one member")
    y = check_attack_inputs(x, y, members, [f"member {i}" for i in range(len(members))])
    check_labels_fit(members, members, x, y)
    check_pgd_settings(eps, step, steps)
    ensemble_direction([x[:1]], rule)  # validates the rule before any work
    if eps == 0:
        return x.clone()
    modes = [m.training for m in members]
    for m in members:
        m.eval()
    out = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
                direction = lambda adv, yb=yb: ensemble_direction(input_grads(members, adv, yb), rule)  # noqa: E731
                out.append(pgd_linf(xb, direction, eps=eps, step=step, steps=steps, random_start=random_start))
    finally:
        for m, mode in zip(members, modes):
            m.train(mode)
    return torch.cat(out)
