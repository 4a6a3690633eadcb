"""Summary of an IDKD run (``results.json``) and its accuracy plot, written by rank 0."""
from __future__ import annotations

import os
from dataclasses import asdict

import numpy as np

from curvfast.io import write_json
from curvfast.pipelines.common.plots import pyplot, save_png

__all__ = ["run_summary", "write_results"]

_LABEL_STATS = ("num_targets", "photo_fraction", "digit_label_accuracy")


def _mean(values) -> float:
    values = [v for v in values if v == v]  # drop NaN (a node with no digit targets)
    return float(np.mean(values)) if values else float("nan")


def run_summary(cfg, topology, nodes: list[dict], steps: tuple[int, int], data) -> dict:
    """Per-method ``mean_accuracy`` (mean over nodes of each node model's test accuracy), ``node_accuracy``,
    ``comm_bytes`` (bytes sent by all nodes over the whole run: shared initial training, label exchange and
    fine-tuning), ``label_bytes`` and its share ``label_overhead``, and the distilled-label statistics."""
    nodes = sorted(nodes, key=lambda n: n["node"])
    methods = {}
    for m in cfg.methods:
        per = [n["methods"][m] for n in nodes]
        comm, label = [p["comm_bytes"] for p in per], [p["label_bytes"] for p in per]
        acc = [p["accuracy"] for p in per]
        entry = {"mean_accuracy": float(np.mean(acc)), "std_accuracy": float(np.std(acc)), "node_accuracy": acc,
                 "comm_bytes": int(sum(comm)), "comm_bytes_per_node": comm, "label_bytes": int(sum(label)),
                 "label_overhead": float(sum(label) / sum(comm)) if sum(comm) else 0.0}
        if m != "dsgd":
            entry.update({f"mean_{k}": _mean([p[k] for p in per]) for k in _LABEL_STATS})
            entry["accepted_digits"] = int(sum(p["own_accepted_digits"] for p in per))
            entry["accepted_photos"] = int(sum(p["own_accepted_photos"] for p in per))
        methods[m] = entry
    public_digits = int(data.public_is_digit.sum())
    return {
        "settings": asdict(cfg),
        "topology": {"name": topology.name, "nodes": topology.num_nodes, "spectral_gap": topology.spectral_gap(),
                     "neighbours": [list(n) for n in topology.neighbours], "weights": topology.weights.tolist()},
        "data": {"private": len(data.private_y), "public_digits": public_digits,
                 "public_photos": len(data.public_y) - public_digits, "test": len(data.test_y)},
        "steps": {"initial": steps[0], "finetune": steps[1]},
        "initial": {"mean_accuracy": float(np.mean([n["initial_accuracy"] for n in nodes])),
                    "node_accuracy": [n["initial_accuracy"] for n in nodes]},
        "methods": methods,
        "detector": {"name": cfg.detector, "mean_auroc_digits_vs_photos": _mean(
            [n["detector_auroc_digits_vs_photos"] for n in nodes if n["detector_auroc_digits_vs_photos"] is not None])},
        "nodes": nodes,
        "seconds": max(n["seconds"] for n in nodes),
    }


def write_results(out: str, summary: dict) -> None:
    """``out/results.json`` and ``out/accuracy.png`` (per-node test accuracy of every method), atomically."""
    plt = pyplot()
    write_json(os.path.join(out, "results.json"), summary)
    methods = summary["methods"]
    n = summary["topology"]["nodes"]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * n + 2) + 2.5, 3.2))
    width = 0.8 / len(methods)
    for k, name in enumerate(summary["settings"]["methods"]):
        entry = methods[name]
        ax.bar(np.arange(n) + k * width, entry["node_accuracy"], width,
               label=f"{name} (mean {entry['mean_accuracy']:.3f})")
    ax.set_xticks(np.arange(n) + 0.4 - width / 2, [str(i) for i in range(n)])
    ax.set_xlabel("node")
    ax.set_ylabel("test accuracy")
    s = summary["settings"]
    ax.set_title(f"{s['topology']}, {n} nodes, Dirichlet alpha={s['alpha']}")
    lowest = min(min(e["node_accuracy"]) for e in methods.values())
    ax.set_ylim(max(0.0, lowest - 0.1), 1.0)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_png(fig, os.path.join(out, "accuracy.png"), dpi=120)
