"""``curvfast mia``: shadow/target models, cached signals, LOSS / LiRA / calibrated / curvature attacks."""
from __future__ import annotations

import json
import math

from curvfast.pipelines.mia.evaluate import ATTACKS
from curvfast.pipelines.mia.signals import FLIP_SAFE, SIGNALS, VIEWS
from curvfast.cli import add_threads_argument, apply_threads


def _names(text: str, allowed, option: str) -> tuple:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ValueError(f"{option} takes a comma-separated subset of {', '.join(allowed)} (got {text!r})")
    return names


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "mia", help="membership inference: train shadows + targets, compute signals, run LOSS/LiRA/curvature attacks",
        description="Train N shadow and T target models on balanced random halves of a dataset (or load checkpoints + "
                    "a keep matrix), cache per-(model, sample, view) signals, run the attacks and write results.json, "
                    "signals.npz, scores.npz and roc.png into --out.",
    )
    p.add_argument("--dataset", default="digits")
    p.add_argument("--split", default="all", help="the attacked population (default: every sample of the dataset)")
    p.add_argument("--root", default=None, help="folder that already holds a torchvision / image-folder dataset")
    p.add_argument("--pool-size", type=int, default=None, help="attack a random subset of this many samples (size sweeps)")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--width", type=int, default=16, help="small_cnn channel width")
    p.add_argument("--shadows", type=int, default=16)
    p.add_argument("--targets", type=int, default=4)
    p.add_argument("--leave-one-out", action="store_true", help="every model is a target in turn, the others its shadows")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (non-private training)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--views", default="auto", help=f"comma list of {', '.join(VIEWS)}; auto: hflip too for {', '.join(FLIP_SAFE)}")
    p.add_argument("--augment", default="auto", choices=("auto", "none", "crop", "crop_flip"),
                   help=f"training augmentation of shadows and targets; auto: crop_flip for {', '.join(FLIP_SAFE)} "
                        "(reflect-pad H/8, random crop, horizontal flip), none otherwise and under DP-SGD")
    p.add_argument("--signals", default="loss,conf,mentr,curv_exact,curv_zo,curv_fd", help=f"comma list of {', '.join(SIGNALS)}")
    p.add_argument("--probes", type=int, default=10, help="zo / fd probes (published: 10)")
    p.add_argument("--score-batch-size", type=int, default=512)
    p.add_argument("--dp-epsilon", type=float, default=None, help="train every model with DP-SGD (Opacus) at this ε; inf = same recipe without DP")
    p.add_argument("--dp-delta", type=float, default=1e-5)
    p.add_argument("--dp-clip", type=float, default=1.0)
    p.add_argument("--dp-lr", type=float, default=1e-3, help="RMSprop learning rate for DP-SGD")
    p.add_argument("--checkpoints", default=None,
                   help="folder of existing *.pt checkpoints (natural name order, model_2 before model_10; first --targets are targets)")
    p.add_argument("--keep", default=None, help="(models x samples) membership .npy for --checkpoints")
    p.add_argument("--import-lira", default=None, help="attack a LiRA experiment folder (experiment-*/keep.npy, scores/*.npy)")
    p.add_argument("--import-matrices", default=None, help="attack ML Privacy Meter style memberships.npy + signals_*.npy")
    p.add_argument("--export-lira", default=None, help="also write the confidence signal in LiRA's layout here")
    p.add_argument("--export-matrices", default=None, help="also write samples x models signal / membership matrices here")
    p.add_argument("--attacks", default=None, help=f"comma list (default: every attack whose signal exists); from {', '.join(ATTACKS)}")
    p.add_argument("--published-quirk", action="store_true",
                   help="also run the curvature attacks as the published code does (variance as std; LR: ratio of summed likelihoods)")
    p.add_argument("--out", required=True, help="run folder")
    add_threads_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def config_from_args(args):
    from curvfast.pipelines.mia.experiment import MIAConfig

    views = ("identity", "hflip") if args.views == "auto" and args.dataset.lower() in FLIP_SAFE else (
        ("identity",) if args.views == "auto" else _names(args.views, VIEWS, "--views"))
    if args.dp_epsilon is not None and not (args.dp_epsilon > 0):
        raise ValueError(f"--dp-epsilon must be > 0 or inf (got {args.dp_epsilon})")
    return MIAConfig(
        out=args.out, dataset=args.dataset, split=args.split, root=args.root, pool_size=args.pool_size, model=args.model,
        width=args.width, shadows=args.shadows, targets=args.targets, leave_one_out=args.leave_one_out, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, views=views, augment=args.augment,
        signals=_names(args.signals, SIGNALS, "--signals"), probes=args.probes, score_batch_size=args.score_batch_size,
        dp_epsilon=args.dp_epsilon, dp_delta=args.dp_delta, dp_clip=args.dp_clip, dp_lr=args.dp_lr,
        checkpoints=args.checkpoints, keep_file=args.keep,
        attacks=None if args.attacks is None else _names(args.attacks, tuple(ATTACKS), "--attacks"),
        published_quirk=args.published_quirk, progress=False if args.quiet else None,
    )


def run(args) -> int:
    import numpy as np

    from curvfast.pipelines.mia import interchange
    from curvfast.pipelines.mia.experiment import evaluate_signals, run_mia

    cfg = config_from_args(args)
    apply_threads(args)
    if args.import_lira and args.import_matrices:
        raise ValueError("pass one of --import-lira and --import-matrices, not both")
    if args.import_lira:
        keep, conf = interchange.import_lira(args.import_lira)
        results = evaluate_signals(cfg, {"conf": conf}, keep)
    elif args.import_matrices:
        keep, signals = interchange.import_matrices(args.import_matrices)
        results = evaluate_signals(cfg, signals, keep)
    else:
        results = run_mia(cfg)
    if args.export_lira or args.export_matrices:
        with np.load(f"{args.out}/signals.npz") as z:
            signals = {k: z[k] for k in SIGNALS if k in z.files}
            keep = z["keep"]
        if args.export_lira:
            if "conf" not in signals:
                raise ValueError("--export-lira writes the confidence signal; include conf in --signals")
            interchange.export_lira(args.export_lira, keep, signals["conf"])
        if args.export_matrices:
            interchange.export_matrices(args.export_matrices, keep, signals)
    table = {n: {"auroc": round(a["auroc"], 4), "tpr@1%": round(a["tpr_at_fpr"]["0.01"], 4)} for n, a in results["attacks"].items()}
    print(json.dumps({"out": args.out, "seconds": results["seconds"], "accuracy": {k: v for k, v in results["accuracy"].items()
                                                                                  if k != "per_model"}, "attacks": table}, indent=1))
    return 0 if all(math.isfinite(a["auroc"]) for a in results["attacks"].values()) else 1
