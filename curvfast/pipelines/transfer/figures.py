"""PNG figures of a transfer study (matplotlib, Agg backend, written atomically)."""
from __future__ import annotations


import numpy as np

from curvfast.plots import pyplot, save_png

__all__ = ["transfer_heatmap", "fit_curves", "curvature_scatter"]


def transfer_heatmap(matrix: np.ndarray, names: list[str], path: str, title: str) -> None:
    """Source (rows) x target (columns) heatmap with each cell's value; undefined cells are grey."""
    plt = pyplot()
    n = len(names)
    fig, ax = plt.subplots(figsize=(max(5.4, 1.0 + 0.62 * n), 1.1 + 0.55 * n))  # room for a two-line title
    masked = np.ma.masked_invalid(np.asarray(matrix, dtype=np.float64))
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=1.0)
    for (s, t), value in np.ndenumerate(matrix):
        text = "n/a" if not np.isfinite(value) else f"{value:.2f}".replace("-0.00", "0.00")  # a fit's signed zero
        ax.text(t, s, text, ha="center", va="center", fontsize=7, color="white" if np.isfinite(value) and value < 0.6 else "black")
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("target t")
    ax.set_ylabel("source s (attacked)")
    fig.suptitle(title, fontsize=9)  # centred on the figure: a long title is not clipped by a narrow heatmap
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    save_png(fig, path, tight_layout=False)


def fit_curves(eps: np.ndarray, n_st: np.ndarray, fits_st, names: list[str], path: str, metric_eps: float) -> None:
    """One panel per source: the transfer counts N_{s->t}(eps) (dots) and their fits (lines of the same colour).

    Counts and fits are drawn on the same axes (eps as attacked, counts of images); each panel's title gives its
    largest fit error, since a single saturating exponential cannot follow S-shaped counts (zero, then a jump)."""
    plt = pyplot()
    n = len(names)
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows + 0.25 * -(-n // 6)), squeeze=False)
    grid = np.linspace(0.0, float(np.max(eps)), 200)
    colors = plt.get_cmap("tab10" if n <= 10 else "tab20")(np.arange(n))
    for s, ax in enumerate(axes.flat):
        if s >= n:
            ax.axis("off")
            continue
        for t in range(n):
            ax.plot(eps, n_st[s, t], "o", ms=4, color=colors[t], mec="k", mew=0.4, zorder=3)
            ax.plot(grid, fits_st[s][t](grid), "-", lw=1.2, color=colors[t], label=names[t], zorder=2)
        ax.axvline(metric_eps, color="k", lw=0.6, ls=":")
        worst = max(fits_st[s][t].rmse for t in range(n))
        ax.set_title(f"source {names[s]} (fit rmse <= {worst:.2g})", fontsize=8)
        ax.set_xlabel("eps", fontsize=8)
        ax.set_ylabel("N_s->t (images)", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, [f"target {name}" for name in labels], loc="lower center", ncol=min(n, 6), fontsize=8,
               frameon=False)
    fig.suptitle("transfer counts (dots) and fits N(eps) = a(1 - exp(b eps)) (lines); dotted: metric eps", fontsize=9)
    fig.tight_layout(rect=(0, 0.25 * -(-n // 6) / (2.9 * rows + 0.25 * -(-n // 6)), 1, 0.95))  # room for the legend's rows
    save_png(fig, path, dpi=100, tight_layout=False)


def curvature_scatter(curvature: dict, path: str, title: str) -> None:
    """Each source's mean input curvature (± s.e. over images) against its transferability, with the correlations."""
    plt = pyplot()
    members = {n: m for n, m in curvature["members"].items() if m["transferability"] is not None}
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for name, m in members.items():
        ax.errorbar(m["mean_curvature"], m["transferability"], xerr=m["stderr"], fmt="o", ms=4, capsize=2)
        ax.annotate(name, (m["mean_curvature"], m["transferability"]), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xscale("symlog", linthresh=1e-3)
    c = curvature["correlation"]
    stats = "n/a" if c["spearman"] is None else f"Spearman {c['spearman']:.2f}, Pearson {c['pearson']:.2f}"
    ax.set_title(f"{title}\n{stats} ({c['sources']} sources)", fontsize=8)
    ax.set_xlabel("mean tr H of the source on the attacked images (symlog)", fontsize=8)
    ax.set_ylabel("mean T_s->t over targets", fontsize=8)
    fig.tight_layout()
    save_png(fig, path, tight_layout=False)
