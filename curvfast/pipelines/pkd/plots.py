"""Accuracy-versus-compute figures of the PKD run, written atomically as PNG."""
from __future__ import annotations

import numpy as np

from curvfast.plots import pyplot, save_png

__all__ = ["accuracy_vs_macs_plot", "exit_accuracy_plot", "flatness_plot"]

_MARKERS = {"residual": "s", "mv": "^", "iframe": "o"}


def accuracy_vs_macs_plot(path: str, exit_names: list[str], standalone_macs, ic_accuracy: dict[str, list[float]],
                          wise_sweeps: dict[str, list[dict]], chosen: dict, ensemble: tuple[float, float]) -> None:
    """Test accuracy against MACs per clip: each exit on its own (CE and PKD ICs), the WISE early
    exit over a sweep of thresholds (one curve per IC set), the chosen threshold and the plain ensemble."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    macs = np.asarray(standalone_macs, np.float64) / 1e6
    for kind, color in (("ce", "tab:gray"), ("pkd", "tab:blue")):
        for name, marker in _MARKERS.items():
            idx = [i for i, e in enumerate(exit_names) if e.startswith(name + "/")]
            ax.scatter(macs[idx], np.asarray(ic_accuracy[kind])[idx], marker=marker, color=color, alpha=0.8,
                       label=f"{kind.upper()} exits, {name}")
    for kind, color in (("ce", "tab:orange"), ("pkd", "tab:red")):
        rows = sorted(wise_sweeps[kind], key=lambda r: r["macs"])
        ax.plot([r["macs"] / 1e6 for r in rows], [r["accuracy"] for r in rows], "-", color=color, lw=1.5,
                label=f"WISE on {kind.upper()} ICs (threshold sweep)")
    ax.scatter([chosen["macs"] / 1e6], [chosen["accuracy"]], s=140, facecolors="none", edgecolors="tab:red", lw=2,
               label=f"WISE, tau={chosen['tau']:g}")
    ax.scatter([ensemble[1] / 1e6], [ensemble[0]], marker="*", s=160, color="black", label="plain ensemble (12 exits)")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("MMACs per clip (all segments)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("accuracy vs compute: exits, WISE early exit, ensemble")
    save_png(fig, path)


def exit_accuracy_plot(path: str, exit_names: list[str], ic_accuracy: dict[str, list[float]]) -> None:
    """Bars: test accuracy of every exit, CE-trained ICs beside PKD-trained ICs."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(exit_names))
    ax.bar(x - 0.2, ic_accuracy["ce"], 0.4, label="CE ICs", color="tab:gray")
    ax.bar(x + 0.2, ic_accuracy["pkd"], 0.4, label="PKD ICs", color="tab:blue")
    ax.set_xticks(x, exit_names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    save_png(fig, path)


def flatness_plot(path: str, flatness: dict) -> None:
    """Two panels, tr(H) and the top eigenvalue of each stream's training-loss Hessian: the mean over seeds with
    its standard error (bars) and every seed (dots, with the Hutchinson standard error of its trace)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    names = flatness["published_hierarchy"]  # flattest first, as published
    for ax, stat, label in ((axes[0], "trace", "tr(H)"), (axes[1], "top_eigenvalue", "top eigenvalue of H")):
        stats = [flatness["streams"][n] for n in names]
        se = [s[f"{stat}_se"] or 0.0 for s in stats]
        ax.bar(range(len(names)), [s[f"{stat}_mean"] for s in stats], yerr=se, capsize=4, color="tab:blue", alpha=0.6)
        for i, s in enumerate(stats):
            values = [r[stat] for r in s["per_seed"]]
            errs = [r["trace_stderr"] or 0.0 for r in s["per_seed"]] if stat == "trace" else None
            ax.errorbar(np.full(len(values), i) + np.linspace(-0.15, 0.15, len(values)), values, yerr=errs, fmt="o",
                        color="black", ms=3, lw=0.8)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    holds = flatness["hierarchy_holds"]
    fig.suptitle(f"stream flatness over seeds {flatness['seeds']}: published order I-frame < residual < MV "
                 f"{'holds' if holds['trace'] else 'does not hold'} for the trace", fontsize=9)
    save_png(fig, path)
