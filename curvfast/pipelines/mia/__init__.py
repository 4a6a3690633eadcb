"""Membership inference with input curvature (Curvature Clues) and the standard baselines.

- :mod:`.signals`: per-(model, sample, view) loss, logit-scaled confidence, exact / zo / fd curvature.
- :mod:`.attacks`: LOSS, modified entropy, LiRA online/offline, curvature NLL/LR, Sablayrolles, Watson, Ye;
  function-level, scores with higher = more likely a member.
- :mod:`.evaluate`: the attack registry, per-target metrics (mean ± std), log-log ROC plot.
- :mod:`.experiment`: balanced keep matrix, training (or checkpoints), cached signals, results.
- :mod:`.dp`: DP-SGD models with Opacus. :mod:`.interchange`: LiRA and ML Privacy Meter layouts.
"""
from curvfast.pipelines.mia.attacks import (
    curvature_lr, curvature_nll, lira_offline, lira_online, loss_attack, modified_entropy, sablayrolles, watson, ye,
)
from curvfast.pipelines.mia.experiment import MIAConfig, balanced_keep, run_mia

__all__ = [
    "loss_attack", "modified_entropy", "lira_online", "lira_offline", "curvature_nll", "curvature_lr", "sablayrolles",
    "watson", "ye",
    "MIAConfig", "balanced_keep", "run_mia",
]
