"""``curvfast ood``: the offline OoD benchmark (digits ID, five OoD sets) -> a run folder."""
from __future__ import annotations

import json
import os

from curvfast.io import write_json, write_npz

__all__ = ["register", "run"]

HEADLINE = ("msp", "max_logit", "energy", "odin", "mahalanobis", "knn", "norm_scaling", "vrm", "vrm_msp")


def _ints(text: str, arg: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise ValueError(f"{arg} must be comma-separated integers such as 0,1,2 (got {text!r})") from err


def register(subparsers) -> None:
    from curvfast.pipelines.ood.norm_scaling import STATISTICS

    p = subparsers.add_parser("ood", help="OoD benchmark on digits: norm-scaling, VRM and baselines -> run folder")
    p.add_argument("--out", required=True, help="run folder: results.json, scores.npz, roc.png, ood_examples.png")
    p.add_argument("--id-classes", default="0,1,2,3,4,5", help="in-distribution digit classes; the rest are held out as OoD")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--model", default="small_cnn", help="zoo model name (1-channel input)")
    p.add_argument("--norm-statistic", choices=STATISTICS, default="mean", help="norm-scaling's per-class statistic")
    p.add_argument("--knn-k", type=int, default=10)
    p.add_argument("--odin-temperature", type=float, default=1000.0)
    p.add_argument("--odin-eps", type=float, default=0.0014)
    p.add_argument("--vrm-alpha", type=float, default=1.0, help="Beta(alpha, alpha) mixing weights")
    p.add_argument("--vrm-aux-fraction", type=float, default=0.5, help="auxiliary (noise-mix) samples per real sample")
    p.add_argument("--vrm-noise-mean", type=float, default=0.5)
    p.add_argument("--vrm-noise-std", type=float, default=0.5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.set_defaults(func=run)


def run(args) -> int:
    from curvfast.pipelines.ood.benchmark import OOD_SETS, BenchmarkConfig, ood_sets, run_benchmark
    from curvfast.pipelines.ood.report import examples_figure, markdown_table, roc_figure

    cfg = BenchmarkConfig(
        id_classes=_ints(args.id_classes, "--id-classes"), model=args.model, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seeds=_ints(args.seeds, "--seeds"), knn_k=args.knn_k, odin_temperature=args.odin_temperature,
        odin_eps=args.odin_eps, norm_statistic=args.norm_statistic, vrm_alpha=args.vrm_alpha,
        vrm_aux_fraction=args.vrm_aux_fraction, vrm_noise_mean=args.vrm_noise_mean, vrm_noise_std=args.vrm_noise_std,
        device=args.device,
    )
    results, arrays = run_benchmark(cfg, progress=False if args.quiet else None, log=None if args.quiet else print)
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "results.json"), results)
    write_npz(os.path.join(args.out, "scores.npz"), **arrays)
    roc_figure(arrays, ["msp", "energy", "odin", "mahalanobis", "knn", "norm_scaling", "vrm"], list(OOD_SETS), os.path.join(args.out, "roc.png"))
    from curvfast.data import DigitsDataset
    from curvfast.pipelines.ood.training import subset_by_class

    test = DigitsDataset("test")
    id_test = subset_by_class(test.images, test.targets, cfg.id_classes).images
    heldout = subset_by_class(test.images, test.targets, results["settings"]["heldout_classes"]).images
    examples_figure({"id": id_test} | ood_sets(id_test, heldout, seed=cfg.seeds[0]), os.path.join(args.out, "ood_examples.png"))
    if not args.quiet:
        headline = {n: results["detectors"][n] for n in HEADLINE}
        for metric in ("auroc", "fpr95"):
            print(f"\n{metric} (%), mean ± std over seeds {list(cfg.seeds)}\n" + markdown_table(headline, metric))
        print("\n" + json.dumps({"id_accuracy": {k: v["mean"] for k, v in results["id_accuracy"].items()}, "seconds": results["seconds"], "out": args.out}))
    return 0
