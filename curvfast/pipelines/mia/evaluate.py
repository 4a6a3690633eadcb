"""Run the attacks against each target model and summarise them with curvfast.metrics.

For target t with shadows S (models disjoint from t): members are ``keep[t]`` and every sample
of the population is scored, so each target is evaluated on about half members, half non-members.
Metrics per target: AUROC, balanced accuracy (``balanced_accuracy``: the best over thresholds chosen
on the target's own scores, an optimistic, oracle-threshold number; ``balanced_accuracy_eer``: at the
equal-error threshold, as the published notebooks compute it, :func:`balanced_accuracy_eer`), TPR at
1%, 0.1%, 0.01% FPR; reported as mean and standard deviation over targets. With N samples, FPRs below 2/N rest on one or two non-members;
``tpr_at_fpr`` then reports the TPR at the strictest threshold that admits no more than the
allowed number of false positives (often zero of them).
"""
from __future__ import annotations

from functools import partial

import numpy as np

from curvfast import metrics
from curvfast.plots import pyplot, save_png
from curvfast.pipelines.mia import attacks as A
from curvfast.pipelines.mia.signals import curvature_signals
from curvfast.errors import ConfigError, DataError, UnknownNameError

__all__ = ["attack_table", "REQUIRED_ATTACKS", "FPRS", "PUBLISHED_VIEWS", "BASELINE_VIEWS", "attack_scores", "attack_metrics",
           "baseline_view", "balanced_accuracy_eer", "is_published_variant", "mean_roc", "plot_rocs"]

FPRS = (0.01, 0.001, 0.0001)

# name -> (signal it reads, function(target, shadow, keep) -> scores); the curvature attacks: attack_table()
_OUTPUT_ATTACKS = {
    "loss": ("loss", lambda t, s, k: A.loss_attack(t)),
    "mentr": ("mentr", lambda t, s, k: A.modified_entropy(t)),
    "lira_online": ("conf", A.lira_online),
    "lira_online_global": ("conf", partial(A.lira_online, variance="global")),
    "lira_offline": ("conf", A.lira_offline),
    "lira_offline_global": ("conf", partial(A.lira_offline, variance="global")),
    "sablayrolles": ("loss", A.sablayrolles),
    "watson": ("loss", A.watson),
    "ye": ("loss", A.ye),
    "ye_published": ("loss", A.ye_published),
    "lira_published": ("maxconf", A.lira_published),
}
# the single-signal baselines and the one view the published notebooks read for each (their aug 0: the flipped
# view of precompute_cifar10_scores.py for the loss; the identity of precompute_cifar10_mentr_scores.py for Mentr)
PUBLISHED_VIEWS = {"loss": "hflip", "sablayrolles": "hflip", "watson": "hflip", "ye": "hflip", "ye_published": "hflip",
                   "mentr": "identity"}
BASELINE_VIEWS = ("mean", "published")  # ours: every view averaged; the notebooks': PUBLISHED_VIEWS


def attack_table() -> dict:
    """``{attack: (signal it reads, function(target, shadow, keep) -> scores)}``: the attacks on the output
    signals, then four per curvature signal ``curv_<estimator>`` (:func:`~.signals.curvature_signals`, read now):
    ``<signal>_nll``, ``<signal>_lr``, their ``_published`` variants and ``<signal>_lr_sum`` (the published
    aggregation over views, ratio of the summed likelihoods, with our statistics)."""
    table = dict(_OUTPUT_ATTACKS)
    for signal in curvature_signals():
        table[f"{signal}_nll"] = (signal, A.curvature_nll)
        table[f"{signal}_lr"] = (signal, A.curvature_lr)
        table[f"{signal}_lr_sum"] = (signal, partial(A.curvature_lr, aggregation="likelihoods"))
        table[f"{signal}_nll_published"] = (signal, partial(A.curvature_nll, published_quirk=True))
        table[f"{signal}_lr_published"] = (signal, partial(A.curvature_lr, published_quirk=True))
    return table


REQUIRED_ATTACKS = ("loss", "lira_online", "lira_offline", "curv_zo_nll", "curv_zo_lr", "curv_exact_nll")


def is_published_variant(name: str) -> bool:
    """Whether attack ``name`` is a published-code variant run only under ``--published-quirk`` (or when named)."""
    return name.endswith("_published") or name.endswith("_lr_sum")


def attack_scores(signals: dict, keep: np.ndarray, targets, shadows, names=None, *, views=None,
                  baseline_views: str = "mean") -> dict[str, np.ndarray]:
    """``{attack: (T, N) scores}`` for each target in ``targets`` against the ``shadows`` (model indices).

    ``signals``: ``{signal: (M, N, V)}``; attacks whose signal is absent are skipped unless named.
    ``baseline_views="published"``: each single-signal baseline of :data:`PUBLISHED_VIEWS` reads only the view the
    published notebooks read, where ``views`` (the V view names) has it (``"mean"``: the mean over every view).
    """
    if baseline_views not in BASELINE_VIEWS:
        raise UnknownNameError(f"baseline_views must be one of {BASELINE_VIEWS} (got {baseline_views!r})")
    targets, shadows = list(targets), list(shadows)
    if set(targets) & set(shadows):
        raise ConfigError(f"targets and shadows must be different models (both contain {sorted(set(targets) & set(shadows))})")
    if not targets or not shadows:
        raise ConfigError("need at least one target and one shadow model")
    table = attack_table()
    names = [n for n in table if table[n][0] in signals and not is_published_variant(n)] if names is None else list(names)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UnknownNameError(f"unknown attacks {unknown}; choose from {sorted(table)}")
    out = {}
    for name in names:
        signal, fn = table[name]
        if signal not in signals:
            raise ConfigError(f"attack {name!r} needs signal {signal!r}, which was not computed")
        values = signals[signal]
        if values.shape[:2] != keep.shape:
            raise DataError(f"signal {signal!r} has (models, samples) = {values.shape[:2]} but keep has {keep.shape}")
        view = baseline_view(name, views, baseline_views)
        if view is not None:
            values = values[..., [view]]
        out[name] = np.stack([fn(values[t], values[shadows], keep[shadows]) for t in targets])
    return out


def baseline_view(name: str, views, baseline_views: str) -> int | None:
    """The index in ``views`` of the one view attack ``name`` reads under ``baseline_views``, None for all of them."""
    if baseline_views != "published" or name not in PUBLISHED_VIEWS or views is None:
        return None
    views = list(views)
    return views.index(PUBLISHED_VIEWS[name]) if PUBLISHED_VIEWS[name] in views else None


def balanced_accuracy_eer(scores, members) -> float:
    """Balanced accuracy at the threshold where FPR + TPR is closest to 1 (FNR = FPR, the equal-error point), as the
    published notebooks compute it: over the corners of scikit-learn's ``roc_curve`` (its ``drop_intermediate``
    keeps only the points where the curve turns), the first minimiser of |FPR + TPR − 1|, then predicting member
    for scores >= that threshold: (TPR + 1 − FPR) / 2 there."""
    members = np.asarray(members, dtype=bool)
    fpr, tpr, _ = metrics.roc_curve(scores, members, positive=True)
    fp, tp = np.rint(fpr[1:] * (~members).sum()), np.rint(tpr[1:] * members.sum())  # counts, past the (0, 0) start
    if fp.size > 2:
        corners = np.r_[True, (np.diff(fp, 2) != 0) | (np.diff(tp, 2) != 0), True]
        fpr, tpr = np.r_[0.0, fpr[1:][corners]], np.r_[0.0, tpr[1:][corners]]
    k = int(np.argmin(np.abs(fpr + tpr - 1)))
    return float((tpr[k] + 1 - fpr[k]) / 2)


def attack_metrics(scores: np.ndarray, members: np.ndarray, fprs=FPRS) -> dict:
    """Mean and std over targets of ``metrics.detection_report`` and :func:`balanced_accuracy_eer`; ``per_target``
    keeps each one."""
    reports = [{**metrics.detection_report(s, m, positive=True, fprs=fprs), "balanced_accuracy_eer": balanced_accuracy_eer(s, m)}
               for s, m in zip(scores, members)]
    keys = ("auroc", "balanced_accuracy", "balanced_accuracy_eer")
    out = {k: float(np.mean([r[k] for r in reports])) for k in keys}
    out.update({f"{k}_std": float(np.std([r[k] for r in reports])) for k in keys})
    out["tpr_at_fpr"] = {f: float(np.mean([r["tpr_at_fpr"][f] for r in reports])) for f in reports[0]["tpr_at_fpr"]}
    out["tpr_at_fpr_std"] = {f: float(np.std([r["tpr_at_fpr"][f] for r in reports])) for f in reports[0]["tpr_at_fpr"]}
    out["per_target"] = reports
    return out


def mean_roc(scores: np.ndarray, members: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """TPR averaged over targets at each FPR of ``grid`` (each target's ROC is a step function)."""
    tprs = []
    for s, m in zip(scores, members):
        fpr, tpr, _ = metrics.roc_curve(s, m, positive=True)
        tprs.append(tpr[np.searchsorted(fpr, grid, side="right") - 1])
    return np.mean(tprs, axis=0)


def plot_rocs(scores: dict[str, np.ndarray], members: np.ndarray, path: str, title: str = "", highlight: int = 5) -> None:
    """Log-log ROC curves (mean TPR over targets) of every attack, with the chance line, as a PNG.

    The ``highlight`` attacks of highest AUROC are drawn in colour and named in the legend; the others are thin grey
    lines (one legend entry says how many), so 15 attacks stay readable."""
    plt = pyplot()
    floor = 1.0 / members.shape[1]
    grid = np.logspace(np.log10(floor), 0, 200)
    fig, ax = plt.subplots(figsize=(8, 5))
    aucs = {name: float(np.mean([metrics.auroc(si, mi, positive=True) for si, mi in zip(s, members)]))
            for name, s in scores.items()}
    ranked = sorted(scores, key=lambda name: -aucs[name])
    top, rest = ranked[:highlight], ranked[highlight:]
    for i, name in enumerate(rest):
        ax.loglog(grid, np.maximum(mean_roc(scores[name], members, grid), floor), color="0.7", lw=0.8, zorder=1,
                  label=f"{len(rest)} other attacks (AUROC {aucs[rest[-1]]:.3f}-{aucs[rest[0]]:.3f})" if i == 0 else None)
    colors = plt.cm.tab10(np.arange(len(top)))
    for color, name in zip(colors, top):
        style = "-" if name.startswith("curv") else "--" if name.startswith("lira") else "-."
        ax.loglog(grid, np.maximum(mean_roc(scores[name], members, grid), floor), style, color=color, lw=1.8, zorder=3,
                  label=f"{name} (AUROC {aucs[name]:.3f})")
    ax.loglog(grid, grid, color="black", lw=0.8, ls=":", label="chance")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title + (f" (top {len(top)} of {len(scores)} attacks by AUROC in colour)" if rest else ""), fontsize=9)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_png(fig, path)
