"""Membership inference: train shadows + targets, compute signals, run LOSS / LiRA / curvature attacks (docs/mia.md).

Train N shadow and T target models on balanced random halves of a dataset (or load checkpoints
and a keep matrix, or import LiRA / ML Privacy Meter signals), cache per-(model, sample, view)
signals, run the attacks and write results.json, signals.npz, scores.npz and roc.png into --out
(``curvfast mia``: :class:`Config`, :func:`run`).

- :mod:`.signals`: per-(model, sample, view) loss, logit-scaled confidence, exact / zo / fd curvature.
- :mod:`.attacks`: LOSS, modified entropy, LiRA online/offline, curvature NLL/LR, Sablayrolles, Watson, Ye, and the
  published code's rules (``published_quirk``, ``lira_published``, ``ye_published``);
  function-level, scores with higher = more likely a member.
- :mod:`.evaluate`: the attack registry, per-target metrics (mean ± std), log-log ROC plot.
- :mod:`.pipeline`: balanced keep matrix, training (or checkpoints, DP-SGD with Opacus), cached signals, results.
- :mod:`.interchange`: LiRA and ML Privacy Meter layouts.
"""
from curvfast.pipelines.mia.attacks import (
    curvature_lr, curvature_nll, lira_offline, lira_online, lira_published, loss_attack, modified_entropy, sablayrolles, watson,
    ye, ye_published,
)
from curvfast.pipelines.mia.pipeline import PRESETS, PUBLISHED, Config, balanced_keep, run, summary

__all__ = [
    "Config", "PRESETS", "PUBLISHED", "run", "summary",
    "loss_attack", "modified_entropy", "lira_online", "lira_offline", "lira_published", "curvature_nll", "curvature_lr",
    "sablayrolles", "watson", "ye", "ye_published", "balanced_keep",
]
