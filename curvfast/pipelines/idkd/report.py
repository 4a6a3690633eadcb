"""Summary of an IDKD run (``results.json``), its accuracy plot (written by rank 0) and its table."""
from __future__ import annotations

import numpy as np
import torch

from curvfast.metrics import auroc
from curvfast.pipelines.common.contract import config_dict
from curvfast.plots import pyplot, save_png

__all__ = ["run_summary", "accuracy_figure", "format_table", "curvature_stats"]

_LABEL_STATS = ("num_targets", "photo_fraction", "digit_label_accuracy")


def _mean(values) -> float | None:
    """Mean over the nodes where a value is defined (None: a node without held-out digits among its targets);
    None where it is defined nowhere."""
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


_CURVATURE_STATS = ("auroc_digits_vs_photos", "mean_public_digits", "mean_public_photos", "mean_accepted",
                    "mean_rejected")


def curvature_stats(curvature: torch.Tensor, is_digit: torch.Tensor, accepted: torch.Tensor) -> dict:
    """One node's input curvature of the public set (tr H at the predicted class, per sample): how well low
    curvature picks the held-out digits among the photos (AUROC, digits positive), and its mean over the public
    digits, the photos, and the samples the node's filter accepted / rejected (None where a group is empty)."""
    def mean(mask: torch.Tensor):
        return float(curvature[mask].double().mean()) if mask.any() else None

    both = 0 < int(is_digit.sum()) < len(is_digit)
    return {"auroc_digits_vs_photos": auroc(-curvature.numpy(), is_digit.numpy(), positive=True) if both else None,
            "mean_public_digits": mean(is_digit), "mean_public_photos": mean(~is_digit),
            "mean_accepted": mean(accepted), "mean_rejected": mean(~accepted)}


def _over_nodes(values) -> dict:
    """Mean and standard error (sample std / sqrt(n)) over the nodes where a value is defined."""
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return {"mean": float(values.mean()) if len(values) else None, "nodes": int(len(values)),
            "stderr": float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else None}


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
        "settings": config_dict(cfg),
        "topology": {"name": topology.name, "nodes": topology.num_nodes, "mixing": topology.mixing,
                     "spectral_gap": topology.spectral_gap(),
                     "neighbours": [list(n) for n in topology.neighbours], "weights": topology.weights.tolist()},
        "data": {"private": len(data.private_y), "public_digits": public_digits,
                 "public_photos": len(data.public_y) - public_digits, "test": len(data.test)},
        "steps": {"initial": steps[0], "finetune": steps[1]},
        "initial": {"mean_accuracy": float(np.mean([n["initial_accuracy"] for n in nodes])),
                    "node_accuracy": [n["initial_accuracy"] for n in nodes]},
        "methods": methods,
        "detector": {"name": cfg.detector, "threshold": "calibrated" if cfg.msp_threshold is None else
                     f"fixed MSP > {cfg.msp_threshold}",
                     "mean_auroc_digits_vs_photos": _mean([n["detector_auroc_digits_vs_photos"] for n in nodes])},
        "curvature": {"score": "tr of the input Hessian of the loss at the predicted class (curvfast.ood.InputCurvature)",
                      "filter": cfg.detector,
                      **{k: _over_nodes([n["curvature"][k] for n in nodes]) for k in _CURVATURE_STATS}},
        "nodes": nodes,
        "seconds": max(n["seconds"] for n in nodes),
    }


def accuracy_figure(summary: dict, path: str) -> None:
    """Per-node test accuracy of every method (the legend names IDKD's filter), bars, written atomically as PNG to
    ``path``."""
    plt = pyplot()
    methods = summary["methods"]
    n = summary["topology"]["nodes"]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * n + 2) + 2.5, 3.2))
    width = 0.8 / len(methods)
    for k, name in enumerate(summary["settings"]["methods"]):
        entry = methods[name]
        label = f"idkd, {summary['detector']['name']} filter" if name == "idkd" else name
        ax.bar(np.arange(n) + k * width, entry["node_accuracy"], width,
               label=f"{label} (mean {entry['mean_accuracy']:.3f})")
    ax.set_xticks(np.arange(n) + 0.4 - width / 2, [str(i) for i in range(n)])
    ax.set_xlabel("node")
    ax.set_ylabel("test accuracy")
    s = summary["settings"]
    ax.set_title(f"{s['topology']}, {n} nodes, Dirichlet alpha={s['dirichlet_alpha']}")
    lowest = min(min(e["node_accuracy"]) for e in methods.values())
    ax.set_ylim(max(0.0, lowest - 0.1), 1.0)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_png(fig, path, dpi=120)


def format_table(summary: dict) -> str:
    """One row per method: mean and std of the node accuracies, communication, label overhead and, for
    the KD methods, the public targets kept, their photo share and the digit targets' accuracy; then the
    in-distribution filter used, the public set's input curvature, the initial model's accuracy and the run time."""
    rows = [f"{'method':12s} {'mean acc':>9s} {'std':>6s} {'comm MB':>9s} {'labels %':>9s} {'public kept':>12s} "
            f"{'photos %':>9s} {'label acc':>10s}"]
    for name in summary["settings"]["methods"]:
        m = summary["methods"][name]
        kd = name != "dsgd"
        rows.append(f"{name:12s} {m['mean_accuracy']:9.4f} {m['std_accuracy']:6.3f} {m['comm_bytes'] / 1e6:9.2f} "
                    f"{100 * m['label_overhead']:9.3f} "
                    + (f"{m['mean_num_targets']:12.1f} {_num(m['mean_photo_fraction'], 100, 2):>9s} "
                       f"{_num(m['mean_digit_label_accuracy']):>10s}" if kd else f"{'-':>12s} {'-':>9s} {'-':>10s}"))
    det, curv = summary["detector"], summary["curvature"]
    rows.append(f"in-distribution filter: {det['name']}, threshold {det['threshold']} (AUROC held-out digits vs photos "
                f"{_num(det['mean_auroc_digits_vs_photos'])})")
    rows.append("input curvature of the public set, mean ± s.e. over nodes: digits "
                f"{_pm(curv['mean_public_digits'])}, photos {_pm(curv['mean_public_photos'])}; accepted by the filter "
                f"{_pm(curv['mean_accepted'])}, rejected {_pm(curv['mean_rejected'])}; curvature's AUROC digits vs "
                f"photos {_pm(curv['auroc_digits_vs_photos'])}")
    rows.append(f"initial decentralized model: mean accuracy {summary['initial']['mean_accuracy']:.4f}; "
                f"{summary['seconds']:.1f} s")
    return "\n".join(rows)


def _num(value, scale: float = 1.0, digits: int = 4) -> str:
    return "n/a" if value is None else f"{scale * value:.{digits}f}"


def _pm(entry: dict) -> str:
    return f"{_num(entry['mean'])} ± {_num(entry['stderr'])}"
