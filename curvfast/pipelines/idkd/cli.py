"""``curvfast idkd``: decentralized learning with in-distribution knowledge distillation.

Standalone it starts ``--nodes`` worker processes with torchrun itself; started under an outer
``torchrun`` (``RANK``/``WORLD_SIZE`` set, e.g. across machines) every process runs its own node.
"""
from __future__ import annotations

import os
import sys
from dataclasses import fields

from curvfast.pipelines.idkd.config import METHODS, IDKDConfig
from curvfast.pipelines.idkd.detectors import DETECTORS
from curvfast.pipelines.idkd.optim import ALGORITHMS
from curvfast.pipelines.idkd.topology import TOPOLOGIES

_DEFAULTS = {f.name: f.default for f in fields(IDKDConfig)}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "idkd", help="decentralized learning with in-distribution knowledge distillation (torchrun)",
        description="Train --nodes models on a graph (QGM gossip, Dirichlet non-IID digits), then compare "
                    "fine-tuning with IDKD (MSP-filtered public labels from neighbours), vanilla KD and plain "
                    "decentralized SGD. Writes OUT/results.json and OUT/accuracy.png.")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--nodes", type=int, default=None,
                   help=f"number of nodes (default {_DEFAULTS['nodes']}; under torchrun: WORLD_SIZE)")
    p.add_argument("--topology", choices=TOPOLOGIES, default=_DEFAULTS["topology"],
                   help="ring, torus, social (the 15-node Florentine families graph) or full")
    p.add_argument("--alpha", type=float, default=_DEFAULTS["alpha"], help="Dirichlet concentration (smaller = more skewed)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--algorithm", choices=ALGORITHMS, default=_DEFAULTS["algorithm"],
                   help="qgm (quasi-global momentum) or dsgdm (local momentum)")
    for name, kind, help_text in (
        ("seed", int, "partition, public split, initial model and batch order"),
        ("width", int, "SmallCNN width"),
        ("epochs", int, "initial decentralized training, in epochs of the private set"),
        ("finetune_epochs", int, "fine-tuning epochs of private + public data (same steps for every method)"),
        ("batch_size", int, "per node"),
        ("lr", float, "step size of the initial training"),
        ("finetune_lr", float, "step size of the fine-tuning"),
        ("momentum", float, None),
        ("weight_decay", float, None),
        ("public_fraction", float, "share of the digits' train split held out as the unlabeled public set"),
        ("public_photos", int, "real-photo patches added to the public set (default: as many as public digits)"),
        ("calib_fraction", float, "share of each node's data held out to calibrate its MSP threshold"),
        ("knn_k", int, "k of the knn detector"),
        ("tpr", float, "the MSP threshold accepts this share of a node's own held-out data"),
        ("temperature", float, "soft labels are softmax(logits / T)"),
        ("timeout", float, "seconds before a neighbour exchange is declared failed"),
        ("threads", int, "torch threads per node process"),
        ("fail_node", int, "fault injection: this node raises at --fail-step of the initial training"),
        ("fail_step", int, None),
    ):
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=_DEFAULTS[name],
                       help=(help_text + " " if help_text else "") + f"(default {_DEFAULTS[name]})")
    p.add_argument("--detector", choices=DETECTORS, default=_DEFAULTS["detector"],
                   help="IDKD's in-distribution filter: msp (max softmax probability, the paper's) or knn "
                        "(k-th nearest-neighbour distance to the node's own penultimate features)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cuda: NCCL when every process has its own GPU, else gloo staged through host memory")
    p.add_argument("--quiet", action="store_true", help="no progress bar; torchrun output to OUT/torchrun.log")
    p.set_defaults(func=run)


def _config(args) -> IDKDConfig:
    values = {f.name: getattr(args, f.name) for f in fields(IDKDConfig) if hasattr(args, f.name)}
    world = os.environ.get("WORLD_SIZE")
    if values["nodes"] is None:
        values["nodes"] = int(world) if world else _DEFAULTS["nodes"]
    return IDKDConfig(**values).validate()


def format_table(summary: dict) -> str:
    rows = [f"{'method':12s} {'mean acc':>9s} {'std':>6s} {'comm MB':>9s} {'labels %':>9s} {'public kept':>12s} {'photos %':>9s} {'label acc':>10s}"]
    for name in summary["settings"]["methods"]:
        m = summary["methods"][name]
        kd = name != "dsgd"
        rows.append(f"{name:12s} {m['mean_accuracy']:9.4f} {m['std_accuracy']:6.3f} {m['comm_bytes'] / 1e6:9.2f} "
                    f"{100 * m['label_overhead']:9.3f} "
                    + (f"{m['mean_num_targets']:12.1f} {100 * m['mean_photo_fraction']:9.2f} "
                       f"{m['mean_digit_label_accuracy']:10.4f}" if kd else f"{'-':>12s} {'-':>9s} {'-':>10s}"))
    return "\n".join(rows)


def run(args) -> int:
    from curvfast.pipelines.idkd.launch import IDKDRunError, launch

    cfg = _config(args)
    try:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # inside an outer torchrun
            from curvfast.pipelines.idkd.worker import run_process

            if int(os.environ["WORLD_SIZE"]) != cfg.nodes:
                raise ValueError(f"--nodes {cfg.nodes} differs from torchrun's WORLD_SIZE {os.environ['WORLD_SIZE']}")
            summary = run_process(cfg)
            if summary is None:  # not rank 0
                return 0
        else:
            summary = launch(cfg)
    except IDKDRunError as err:
        print(f"curvfast idkd: error: {err}", file=sys.stderr)
        return 1
    print(format_table(summary))
    print(f"initial decentralized model: mean accuracy {summary['initial']['mean_accuracy']:.4f}; "
          f"{summary['seconds']:.1f} s; wrote {os.path.join(cfg.out, 'results.json')}")
    return 0
