"""``curvfast transfer``: the TREND transferability study (see docs/transfer.md)."""
from __future__ import annotations

import json
from fractions import Fraction

from curvfast.pipelines.transfer.attacks import SINGLE_ATTACKS
from curvfast.pipelines.transfer.pipeline import DEFAULT_EPS, DEFAULT_MODELS, DEFAULT_ROBUST_EPS
from curvfast.cli import add_threads_argument, apply_threads

__all__ = ["register", "run", "parse_eps_list"]


def parse_eps_list(text: str, arg: str = "--eps") -> list[float]:
    """Comma-separated radii, each a decimal or a fraction such as ``8/255``."""
    try:
        values = [float(Fraction(part.strip())) for part in text.split(",") if part.strip()]
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{arg} takes comma-separated numbers or fractions such as '0,4/255,8/255' (got {text!r})") from None
    if not values:
        raise ValueError(f"{arg} is empty; give comma-separated radii such as '0,4/255,8/255'")
    return values


def _parse_ensembles(items: list[str]) -> dict[str, list[str]]:
    out = {}
    for item in items:
        name, sep, members = item.partition("=")
        if not sep or not name or not members:
            raise ValueError(f"--ensemble takes NAME=MODEL,MODEL,... such as 'mine=small_cnn,mlp2,small_cnn+in1' (got {item!r})")
        out[name] = [m for m in members.split(",") if m]
    return out


def _fmt(values) -> str:
    return ",".join(f"{v * 255:g}/255" for v in values)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "transfer", help="adversarial transferability (TREND): transfer matrix, fitted metric, robust ensembles",
        description="Train a zoo of models (architecture, seed, optimiser, input/weight/activation quantisation), "
        "attack each over an eps sweep, fit N(eps) = a(1 - exp(b eps)) to the transfer counts, report "
        "N_hat_s->t / N_hat_s->s at --metric-eps, and attack majority-vote ensembles.",
    )
    p.add_argument("--dataset", default="digits")
    p.add_argument("--root", default=None, help="folder that already holds the dataset (never downloaded)")
    p.add_argument("--out", required=True, help="run folder for results.json, transfer.npz, PNGs and models/")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma-separated specs arch[+in<1-8>|+halftone|+halftonefs|+w<k>a<k>|+adam][@seed] (default: %(default)s)")
    p.add_argument("--attack", choices=SINGLE_ATTACKS, default="pgd")
    p.add_argument("--eps", default=_fmt(DEFAULT_EPS), help="eps sweep for the counts (default: %(default)s)")
    p.add_argument("--metric-eps", default="8/255", help="eps at which the fitted ratio is reported (default: %(default)s)")
    p.add_argument("--robust-eps", default=_fmt(DEFAULT_ROBUST_EPS), help="eps for robust accuracy (default: %(default)s)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--step", type=float, default=0.01, help="attack step size (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--n-test", default="200",
                   help="attack a seeded random subset of this many test images, or 'all' (default: %(default)s)")
    p.add_argument("--ensemble-size", type=int, default=3)
    p.add_argument("--ensemble", action="append", default=[], metavar="NAME=MODEL,MODEL,...", help="extra ensemble (repeatable)")
    p.add_argument("--accuracy-margin", type=float, default=0.03,
                   help="selected ensemble members are within this of the best clean accuracy (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    add_threads_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from curvfast.pipelines.transfer.pipeline import run_transfer

    apply_threads(args)
    metric_eps = parse_eps_list(args.metric_eps, "--metric-eps")
    if len(metric_eps) != 1:
        raise ValueError(f"--metric-eps takes one radius (got {args.metric_eps!r})")
    n_test = None if args.n_test == "all" else args.n_test
    if n_test is not None:
        try:
            n_test = int(n_test)
        except ValueError:
            raise ValueError(f"--n-test takes a positive integer or 'all' (got {args.n_test!r})") from None
    results = run_transfer(
        args.dataset, [m for m in args.models.split(",") if m], eps=parse_eps_list(args.eps), metric_eps=metric_eps[0],
        attack_name=args.attack, steps=args.steps, step=args.step, epochs=args.epochs, n_test=n_test,
        ensemble_size=args.ensemble_size, ensembles=_parse_ensembles(args.ensemble),
        robust_eps=parse_eps_list(args.robust_eps, "--robust-eps"), accuracy_margin=args.accuracy_margin,
        seed=args.seed, root=args.root, device=args.device, out=args.out, progress=False if args.quiet else None,
    )
    summary = {
        "out": args.out, "seconds": results["seconds"],
        "groups_mean_metric": {k: v["mean_metric"] for k, v in results["groups"].items()},
        "ensembles": {k: {r: v[r] for r in ("members", "clean", "worst_case")} for k, v in results["robust_accuracy"]["ensembles"].items()},
    }
    print(json.dumps(summary, indent=2))
    return 0
