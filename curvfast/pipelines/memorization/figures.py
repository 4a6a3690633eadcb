"""PNG figures of the memorization pipeline (matplotlib, Agg backend, written atomically)."""
from __future__ import annotations


import os

import numpy as np

from curvfast.plots import pyplot, save_png
from curvfast.pipelines.memorization.dp import published_curve

__all__ = ["scatter_plot", "histograms", "dp_plot", "sample_caption"]


def sample_caption(dataset, index: int, label: int, width: int = 18) -> str:
    """A grid title naming sample ``index``: its file (image folders, file lists) and class name, else the index
    and the class name (or label) -- what a user can look up in their own data.

    ``dataset``: torchvision's ``ImageFolder`` (``samples``, ``classes``), curvfast's streaming datasets
    (``path(i)``, ``classes``) or any other (``classes`` if it has them)."""
    classes = getattr(dataset, "classes", None)
    name = str(classes[label]) if classes is not None and 0 <= label < len(classes) else f"y={label}"
    if hasattr(dataset, "samples"):
        path = dataset.samples[index][0]
    elif callable(getattr(dataset, "path", None)):
        path = dataset.path(index)
    else:
        return f"#{index} {name}"
    file = os.path.basename(path)
    file = file if len(file) <= width else "…" + file[-(width - 1):]
    return f"{file}\n{name}"



def scatter_plot(x: np.ndarray, y: np.ndarray, path: str, *, xlabel: str, ylabel: str, title: str, yerr=None) -> None:
    """Scatter of y against x (log x axis when x is positive), with optional asymmetric error bars
    ``yerr = (lower, upper)`` drawn for every sample."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    if yerr is not None:
        ax.errorbar(x, y, yerr=yerr, fmt="none", ecolor="0.8", elinewidth=0.5, zorder=1)
    ax.scatter(x, y, s=6, alpha=0.6, zorder=2)
    if np.all(x > 0):
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    save_png(fig, path)


def histograms(panels: list[tuple[str, dict[str, np.ndarray], bool]], path: str) -> None:
    """One histogram panel per ``(title, {legend: values}, log_x)``."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (title, series, log_x) in zip(axes[0], panels):
        values = np.concatenate([v[np.isfinite(v)] for v in series.values()])
        bins = np.geomspace(max(values[values > 0].min(), 1e-12), values.max(), 40) if log_x else 40
        for name, v in series.items():
            ax.hist(v[np.isfinite(v)], bins=bins, alpha=0.6, label=name, density=len(series) > 1)
        if log_x:
            ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        if len(series) > 1:
            ax.legend(fontsize=8)
    save_png(fig, path)


def dp_plot(rows: list[dict], bounds: dict, path: str) -> None:
    """Accuracy, mean curvature, mean memorization and membership AUROC against ε (no-DP at the
    right edge), with the Unveiling bounds: mem ≤ 1 − e^{−ε} and the fitted E[Curv] ≤ A(1 − e^{−ε}) + c2."""
    plt = pyplot()
    dp = [r for r in rows if r["epsilon"] is not None]
    eps = np.array([r["epsilon"] for r in dp], dtype=float)
    grid = np.geomspace(eps.min(), eps.max(), 200)
    nodp = next((r for r in rows if r["epsilon"] is None), None)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    panels = [("accuracy", "test accuracy", None), ("mean_curvature", "mean train curvature (members)", "curvature"),
              ("mean_memorization", "mean memorization", "memorization"), ("mia_auroc", "membership AUROC (loss attack)", None)]
    for ax, (key, label, bound) in zip(axes, panels):
        ax.plot(eps, [r[key] for r in dp], "o-", label="DP-SGD")
        if nodp is not None:
            ax.axhline(nodp[key], color="k", ls=":", label="no DP")
        if bound == "memorization":
            ax.plot(grid, 1 - np.exp(-grid), "r--", label="bound 1 − e^{−ε}")
        if bound == "curvature" and bounds.get("curvature_fit"):
            fit = bounds["curvature_fit"]
            ax.plot(grid, fit["A"] * (1 - np.exp(-grid)) + fit["c2"], "r--", label=f"fit A(1−e^{{−ε}})+c2, A={fit['A']:.3g}")
            pub = bounds.get("published_curvature_fit", {})
            if "a" in pub:
                ax.plot(grid, published_curve(grid, *(pub[k] for k in "abcde")), "g:", lw=1.5,
                        label="published form (a+b·e^{−cε})·d·(1−e^{−ε})+e")
            env = bounds.get("curvature_envelope")
            if env:
                ax.plot(grid, env["A"] * (1 - np.exp(-grid)) + env["c2"], "m-.", lw=1, label="bound through the points")
        ax.set_xscale("log")
        ax.set_xlabel("ε")
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=7)
    save_png(fig, path)
