"""``curvfast pkd``: streams on compressed video, CE vs PKD internal classifiers, WISE early exit."""
from __future__ import annotations

import json
import sys
from curvfast.cli import add_threads_argument, apply_threads

__all__ = ["register", "run"]


def register(subparsers) -> None:
    from curvfast.pipelines.pkd.pipeline import PKDConfig

    d = PKDConfig()
    p = subparsers.add_parser("pkd", help="PKD + WISE on compressed video (I-frame / MV / residual streams)",
                              description="Train three CoViAR streams on MPEG-4 Part 2 video, internal classifiers "
                                          "by CE and by progressive distillation, and WISE; writes results.json, "
                                          "logits.npz, models.pt and accuracy-vs-MACs plots to --out.")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--dataset", choices=("synthetic", "ucf101", "hmdb51"), default=d.dataset)
    p.add_argument("--root", default=None, help="folder that already holds UCF-101 / HMDB-51 (never downloaded)")
    p.add_argument("--fold", type=int, default=d.fold, help="official split 1-3 (UCF-101 / HMDB-51)")
    p.add_argument("--clips-per-class", type=int, default=d.clips_per_class, help="synthetic dataset size")
    p.add_argument("--size", type=int, default=d.size, help="frame side in pixels (a multiple of 16)")
    p.add_argument("--frames", type=int, default=d.frames, help="frames per clip (GOP 12)")
    p.add_argument("--segments", type=int, default=d.segments)
    p.add_argument("--stream-epochs", type=int, default=d.stream_epochs)
    p.add_argument("--exit-epochs", type=int, default=d.exit_epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--alpha", type=float, default=d.alpha, help="WISE L1 weight of the prefixes longer than --alpha-free-exits (published 0.1)")
    p.add_argument("--alpha-free-exits", type=int, default=d.alpha_free_exits,
                   help="prefixes of at most this many exits are fitted without L1 (published 5)")
    p.add_argument("--exit-relu", action="store_true", help="put a ReLU inside the internal classifiers (the published ICs have none)")
    p.add_argument("--tau", type=float, default=d.tau, help="WISE early-exit confidence threshold")
    p.add_argument("--wise-holdout", type=float, default=d.wise_holdout,
                   help="fraction of training clips kept out of training to fit WISE on (0: fit on training logits)")
    p.add_argument("--seed", type=int, default=d.seed)
    add_threads_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.set_defaults(func=run)


def run(args) -> int:
    from curvfast.pipelines.pkd.pipeline import PKDConfig, run_pkd

    apply_threads(args)
    config = PKDConfig(
        dataset=args.dataset, root=args.root, fold=args.fold, clips_per_class=args.clips_per_class, size=args.size,
        frames=args.frames, segments=args.segments, stream_epochs=args.stream_epochs, exit_epochs=args.exit_epochs,
        batch_size=args.batch_size, lr=args.lr, alpha=args.alpha, alpha_free_exits=args.alpha_free_exits, exit_relu=args.exit_relu, tau=args.tau, wise_holdout=args.wise_holdout,
        seed=args.seed,
    )
    res = run_pkd(config, args.out, progress=not args.quiet and sys.stderr.isatty(),
                  log=(lambda *a: None) if args.quiet else print)
    summary = {
        "ic_accuracy": res["ic_accuracy"], "wise": {k: res["wise"][k] for k in ("tau", "accuracy", "macs")},
        "plain_ensemble_accuracy": res["plain_ensemble_accuracy"], "gains": res["gains"], "out": args.out,
    }
    print(json.dumps(summary, indent=2))
    return 0
