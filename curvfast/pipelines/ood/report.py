"""Human-readable outputs of the OoD benchmark: a markdown table and PNG figures (written atomically)."""
from __future__ import annotations


import numpy as np

from curvfast import metrics
from curvfast.plots import pyplot, save_png

__all__ = ["markdown_table", "curvature_table", "roc_figure", "examples_figure"]


def _fmt(entry: dict, metric: str) -> str:
    return f"{100 * entry[metric]:.1f} ± {100 * entry['std'][metric]:.1f}"




def markdown_table(detectors: dict, metric: str = "auroc", sets: list[str] | None = None) -> str:
    """One row per detector: ``metric`` (in %) per OoD set and averaged, mean ± std over seeds."""
    sets = sets or list(next(iter(detectors.values()))["per_set"])
    lines = ["| detector | " + " | ".join(sets) + " | average |", "|---" * (len(sets) + 2) + "|"]
    for name, entry in detectors.items():
        cells = [_fmt(entry["per_set"][s], metric) for s in sets] + [_fmt(entry, metric)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curvature_table(curvature: dict) -> str:
    """The curvature detector's summary: one row per set, mean input curvature, AUROC and FPR95 (%), each
    mean ± standard error over seeds."""
    def cell(entry: dict, scale: float = 1.0, digits: int = 1) -> str:
        err = "n/a" if entry["stderr"] is None else f"{scale * entry['stderr']:.{digits}f}"
        return f"{scale * entry['mean']:.{digits}f} ± {err}"

    lines = [f"input curvature (tr H at the predicted class), mean ± s.e. over seeds {curvature['seeds']}",
             "| set | mean curvature | AUROC % | FPR95 % |", "|---|---|---|---|"]
    for name, entry in curvature["mean_curvature"].items():
        metrics = curvature["metrics"].get(name)
        rest = [cell(metrics["auroc"], 100), cell(metrics["fpr95"], 100)] if metrics else ["-", "-"]
        lines.append(f"| {name} | {cell(entry, digits=4)} | " + " | ".join(rest) + " |")
    return "\n".join(lines)


def roc_figure(arrays: dict, detectors: list[str], sets: list[str], path: str) -> None:
    """ROC curves (OoD positive) of ``detectors`` on each OoD set from ``arrays["<det>/<set>"]``; each panel's
    AUROCs in its title order, one legend (8 pt) for all panels."""
    plt = pyplot()
    cols = min(3, len(sets))
    rows = -(-len(sets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows + 0.8), squeeze=False)
    colors = dict(zip(detectors, plt.cm.tab10(np.arange(len(detectors)))))
    for ax in axes.flat[len(sets):]:
        ax.axis("off")
    for ax, s in zip(axes.flat, sets):
        best = []
        for det in detectors:
            ind, ood = arrays[f"{det}/id"], arrays[f"{det}/{s}"]
            labels = np.r_[np.zeros(ind.size), np.ones(ood.size)]
            fpr, tpr, _ = metrics.roc_curve(np.r_[ind, ood], labels, positive=1)
            ax.plot(fpr, tpr, color=colors[det], label=det, lw=1.2)
            best.append((metrics.auroc(np.r_[ind, ood], labels, positive=1), det))
        ax.plot([0, 1], [0, 1], "k:", lw=0.6)
        auc, det = max(best)
        ax.set_title(f"{s}\nbest AUROC {auc:.3f} ({det})", fontsize=9)
        ax.set_xlabel("FPR (ID flagged)", fontsize=8)
        ax.set_ylabel("TPR (OoD flagged)", fontsize=8)
        ax.tick_params(labelsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(detectors), 7), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.8 / (3.4 * rows + 0.8), 1, 1))
    save_png(fig, path, dpi=110, tight_layout=False)


def examples_figure(sets: dict, path: str, per_set: int = 8) -> None:
    """The first ``per_set`` images of each set (``{name: (N, C, H, W) tensor in [0, 1]}``), one row per
    set, each row drawn as one mosaic: grey images dark = ink (as digits are shown elsewhere), colour
    images as they are."""
    plt = pyplot()
    cmap = plt.get_cmap("gray_r").with_extremes(bad="#cc4444")  # the NaN columns that separate images
    fig, axes = plt.subplots(len(sets), 1, figsize=(1.0 * per_set, 1.15 * len(sets)), squeeze=False)
    for ax, (name, x) in zip(axes[:, 0], sets.items()):
        if x.shape[1] == 1:
            imgs = x[:per_set, 0].numpy()
            pad = np.full((imgs.shape[1], 1), np.nan)
            mosaic = np.concatenate([np.concatenate([im, pad], axis=1) for im in imgs], axis=1)[:, :-1]
            ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=0, vmax=1)
        else:  # colour: white one-pixel gaps
            imgs = x[:per_set].permute(0, 2, 3, 1).clamp(0, 1).numpy()
            pad = np.ones((imgs.shape[1], 1, imgs.shape[3]))
            ax.imshow(np.concatenate([np.concatenate([im, pad], axis=1) for im in imgs], axis=1)[:, :-1])
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    save_png(fig, path, dpi=100)
