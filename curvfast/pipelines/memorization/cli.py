"""``curvfast memorization --dataset digits --out DIR [--dp] [...]``."""
from __future__ import annotations

import json

from curvfast.pipelines.memorization.pipeline import MemorizationConfig, run_memorization


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise ValueError(f"--dp-epsilons must be comma-separated numbers such as 1,2,4,8 (got {text!r})") from err
    if not values or min(values) <= 0:
        raise ValueError(f"--dp-epsilons needs positive values (got {text!r})")
    return values


def register(subparsers) -> None:
    d = MemorizationConfig()
    p = subparsers.add_parser("memorization", help="Feldman memorization vs curvature, mislabel detection, DP-SGD (docs/memorization.md)")
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--root", default=None, help="folder that already holds the dataset (never downloaded)")
    p.add_argument("--out", required=True, help="run folder: results.json, scores.npz, mislabel.npz, PNGs")
    p.add_argument("--model", default=d.model, help="mlp (default), small_cnn, or a torchvision name")
    p.add_argument("--width", type=int, default=None, help="hidden width: mlp 256, small_cnn 32 by default")
    p.add_argument("--models", type=int, default=d.models, help="subset models for the memorization estimate")
    p.add_argument("--fraction", type=float, default=d.fraction, help="subset fraction per model")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--models-per-pass", type=int, default=d.models_per_pass)
    p.add_argument("--loop", action="store_true", help="train models one by one per step instead of stacked (vmap)")
    p.add_argument("--proxy-models", type=int, default=d.proxy_models, help="full-data runs for the epoch-averaged curvature")
    p.add_argument("--method", default=d.method, choices=("auto", "exact", "sampled", "hutchinson", "deflated", "fd", "zo"))
    p.add_argument("--probes", type=int, default=None)
    p.add_argument("--noise", type=float, default=d.noise, help="fraction of labels flipped for mislabel detection")
    p.add_argument("--folds", type=int, default=d.folds, help="cross-validation folds for cleanlab's probabilities")
    p.add_argument("--dp", action="store_true", help="also run the DP-SGD sweep (Opacus)")
    p.add_argument("--dp-epsilons", type=_floats, default=d.dp_epsilons, help="comma-separated ε values (default 1,2,4,8,16,50)")
    p.add_argument("--dp-models", type=int, default=d.dp_models, help="DP models per ε (random 50%% subsets)")
    p.add_argument("--dp-epochs", type=int, default=d.dp_epochs)
    p.add_argument("--dp-lr", type=float, default=d.dp_lr, help="RMSprop learning rate, constant (no schedule)")
    p.add_argument("--dp-batch-size", type=int, default=d.dp_batch_size, help="expected Poisson batch size of DP-SGD")
    p.add_argument("--delta", type=float, default=d.delta)
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm)
    p.add_argument("--top", type=int, default=d.top, help="images in the top-memorized / top-curvature grids")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = MemorizationConfig(
        dataset=args.dataset, root=args.root, model=args.model, width=args.width, models=args.models, fraction=args.fraction,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, models_per_pass=args.models_per_pass, stack=not args.loop,
        proxy_models=args.proxy_models, method=args.method, probes=args.probes, noise=args.noise, folds=args.folds, dp=args.dp,
        dp_epsilons=args.dp_epsilons, dp_models=args.dp_models, dp_epochs=args.dp_epochs, dp_lr=args.dp_lr, dp_batch_size=args.dp_batch_size, delta=args.delta,
        max_grad_norm=args.max_grad_norm, top=args.top, seed=args.seed, progress=False if args.quiet else None,
    )
    res = run_memorization(cfg, args.out)
    summary = {k: res[k] for k in ("memorization", "correlation", "mislabel_auroc", "flipped_labels_fitted", "seconds")}
    summary["mislabel_trivial_baselines"] = res["mislabel"]["trivial_baselines"]
    if "dp" in res:
        summary["dp"] = [{k: r[k] for k in ("epsilon", "accuracy", "mean_curvature", "mean_memorization", "mia_auroc")} for r in res["dp"]]
    print(json.dumps(summary, indent=2))
    return 0
