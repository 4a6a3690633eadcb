"""``curvfast verifix``: train on noisy labels, correct with Verifix, report clean test accuracy."""
from __future__ import annotations

import json

from curvfast.linalg import ROUTES
from curvfast.pipelines.verifix.noise import NOISE_TYPES
from curvfast.pipelines.verifix.projector import PUBLISHED_ALPHAS
from curvfast.pipelines.verifix.selection import SELECTION_METHODS

__all__ = ["register", "run"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "verifix", help="train on noisy labels, correct the model with Verifix, report clean test accuracy before/after",
        description="Trains a zoo model on labels with synthetic noise, picks a verified set (lowest input-loss curvature "
        "per class), applies Verifix's soft projector W <- W P to every Conv2d/Linear layer with alpha chosen on a "
        "validation split, and writes DIR/results.json (accuracy_before, accuracy_after, alpha, verified_size, seconds).",
    )
    p.add_argument("--dataset", default="digits")
    p.add_argument("--root", default=None, help="folder that already holds the dataset (never downloaded)")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--noise", type=float, default=0.25, help="noise rate in [0, 1)")
    p.add_argument("--noise-type", choices=NOISE_TYPES, default="symmetric")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--val-fraction", type=float, default=0.2, help="part of the train split held out to choose alpha")
    p.add_argument("--clean-validation", action="store_true", help="validation split with clean labels (trusted set); default noisy")
    p.add_argument("--verified-size", type=int, default=200, help="class-balanced verified set size")
    p.add_argument("--selection", choices=SELECTION_METHODS, default="auto", help="curvature estimator ranking the verified set, or random")
    p.add_argument("--alphas", type=float, nargs="+", default=list(PUBLISHED_ALPHAS))
    p.add_argument("--max-rows", type=int, default=50_000, help="rows (patches) per layer, 0 for all")
    p.add_argument("--route", choices=ROUTES, default="auto", help="spectrum route: exact Gram, randomized, or by size")
    p.add_argument("--rank", type=int, default=None, help="truncated rank allowed for the randomized route")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="several seeds -> DIR/seed_k/ and mean ± std in DIR/results.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.set_defaults(func=run)


def run(args) -> int:
    from curvfast.pipelines.verifix.experiment import run_seeds

    if args.max_rows < 0:
        raise ValueError(f"--max-rows must be >= 0 (0 = all rows) (got {args.max_rows})")
    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1 (got {args.epochs})")
    summary = run_seeds(
        args.seeds, out=args.out, log=None if args.quiet else print, dataset=args.dataset, root=args.root, model=args.model,
        noise=args.noise, noise_type=args.noise_type, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
        val_fraction=args.val_fraction, clean_validation=args.clean_validation, verified_size=args.verified_size,
        selection=args.selection, alphas=args.alphas, max_rows=args.max_rows or None, route=args.route, rank=args.rank,
        device=args.device, progress=False if args.quiet else None,
    )
    keys = ("accuracy_before", "accuracy_before_std", "accuracy_after", "accuracy_after_std", "alpha", "verified_size", "seconds")
    print(json.dumps({k: summary[k] for k in keys if k in summary} | {"out": args.out}, indent=2))
    return 0
