"""``curvfast <command>`` (also ``python -m curvfast``): doctor, train, score, demo, and the pipelines.

Each pipeline ``curvfast.pipelines.<command>`` owns one sub-command, generated from its ``Config``
(:mod:`curvfast.pipelines.common.contract`).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys


from . import __version__



def _cmd_doctor(args) -> int:
    from .doctor import report as doctor_report

    report = doctor_report()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key, value in report.items():
        print(f"{key:16s} {value}")
    if not report["extension"]:
        print("\nThe native extension is not loaded: curvfast runs on its pure-torch reference ops (correct, slower).")
        print("Rebuild it with: pip install --no-build-isolation -e .")
    return 0


def _cmd_train(args) -> int:
    from .training import TrainRecipe, train_model

    recipe = TrainRecipe(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    _, info = train_model(
        args.model, args.dataset, recipe, root=args.root, normalize=args.normalize, device=args.device, out=args.out,
        log=None if args.quiet else print,
    )
    print(json.dumps(info, indent=2))
    return 0


def _cmd_score(args) -> int:
    """Score with one or several checkpoints; under torchrun every rank runs this, rank 0 reports."""
    from . import distributed
    from .checkpoints import folder_name, load_model
    from .data import get_dataset
    from .engine import score, score_models

    names = [folder_name(c) for c in args.checkpoint]
    if len(set(names)) != len(names):  # same file name in different folders: number them
        names = [f"{i}-{n}" for i, n in enumerate(names)]
    models = {n: load_model(c, args.model, args.dataset, args.root) for n, c in zip(names, args.checkpoint)}
    dataset, _ = get_dataset(args.dataset, args.split, root=args.root, image_size=args.image_size,
                             allow_outside_root=args.allow_outside_root)
    options = dict(
        method=args.method, statistic=args.statistic, probes=args.probes, seed=args.seed, batch_size=args.batch_size,
        device=args.device, num_workers=args.workers, out=args.out, chunk_size=args.chunk_size or None,
        overwrite=args.overwrite, timeout=args.timeout, progress=False if args.quiet else None,
    )
    if args.accept_gauss_newton:
        options["accept_gauss_newton"] = True
    try:
        if len(models) == 1:  # out/scores.npz, out/results.json
            res = score(models[names[0]], dataset, **options)
            report, run = {"settings": res.settings, "summary": res.summary()}, res.run
        else:  # out/<name>/scores.npz, ... and an index out/results.json
            results = score_models(models, dataset, **options)
            report = {"models": {n: {"settings": r.settings, "summary": r.summary()} for n, r in results.items()}}
            run = next(iter(results.values())).run
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
            print(json.dumps({**report, "run": run, "out": args.out}, indent=2))
    finally:
        distributed.shutdown()
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, epochs=args.epochs, seed=args.seed, top=args.top)
    return 0


CORE_COMMANDS = ("doctor", "train", "score", "demo")


def _pipelines_for(argv: list[str] | None) -> tuple[str, ...]:
    """The pipelines whose sub-command parsing ``argv`` needs: the one named, none for a core command, every one
    otherwise (``--help``, no command, a misspelt one: the choices are listed). Importing a pipeline costs up to a
    second (pytorch-ood, Opacus...), paid by every torchrun rank of ``curvfast score``."""
    first = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    if first in CORE_COMMANDS:
        return ()
    from .pipelines import COMMANDS

    return (first,) if first in COMMANDS else COMMANDS


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``curvfast`` parser: the core commands, then one generated sub-command per pipeline (only what
    parsing ``argv`` needs when it is given; every command when it is None)."""
    parser = argparse.ArgumentParser(prog="curvfast", description="Per-sample input loss curvature for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"curvfast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("doctor", help="versions, native extension, CUDA kernels, GPU")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("train", help="train a zoo model on a registered dataset -> checkpoint")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--root", default=None, help="folder that already holds the dataset (never downloaded)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--normalize", default="none",
                   help="input normalisation inside the model: none, cifar10, imagenet or MEAN/STD (per channel, "
                        "comma-separated)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "score", help="score every sample of a dataset with one or several checkpoints -> run folder",
        description="Resumable: the same command again computes only missing chunks. Under "
        "`torchrun --nproc_per_node=N -m curvfast score ...` the samples are sharded over N processes.",
    )
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="one or several checkpoints (shadow models); several are scored in one pass over the data")
    p.add_argument("--model", default=None, help="zoo/torchvision name if the checkpoint does not record it")
    p.add_argument("--dataset", default="digits",
                   help="digits, imagefolder, filelist (streaming, ImageNet size), cifar10, ...")
    p.add_argument("--split", default="train")
    p.add_argument("--root", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--allow-outside-root", action="store_true",
                   help="let a file list name images outside its folder (absolute paths, '..')")
    from .curvature import ESTIMATORS, METHODS, STATISTICS

    own = tuple(e.name for e in ESTIMATORS.values() if e.own_statistic)  # fd, zo: their published quantity
    p.add_argument("--method", choices=tuple(METHODS), default="auto", help="curvature estimator (default: auto)")
    p.add_argument("--statistic", choices=(*STATISTICS, *own), default=None,
                   help="trace (default), frobenius, top_eigenvalue, spectrum; fd and zo return their own quantity")
    p.add_argument("--probes", type=int, default=None)
    p.add_argument("--accept-gauss-newton", action="store_true",
                   help="let exact/sampled score a smooth model: the Gauss-Newton value tr(JᵀAJ), not tr(H)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=1024,
                   help="samples per resumable chunk file (default 1024; 0: no chunk files, not resumable)")
    p.add_argument("--overwrite", action="store_true",
                   help="discard a run folder started with other settings/models/data")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds a rank waits for the others before failing (longer than one chunk takes)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per rank under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank")
    p.add_argument("--out", required=True, help="run folder for results.json, scores.npz, manifest.json and chunks/")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("demo", help="train on digits, score every training digit exactly, plot the most curved")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=24)
    p.set_defaults(func=_cmd_demo)

    from .pipelines.common import contract

    for command in _pipelines_for(argv):
        contract.register(sub, command, importlib.import_module(f"curvfast.pipelines.{command}"))
    return parser


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures a user can fix (bad settings or data, files, diverged training, a busy run folder, a dead peer),
    reported as one ``error:`` line with exit code 2. ImportError: an optional dependency is
    missing. Anything else is a bug and keeps its traceback."""
    from .chunks import ChunkError, RunFolderBusy
    from .distributed import PeerError

    return (ValueError, TypeError, OSError, ImportError, FloatingPointError, ChunkError, RunFolderBusy, PeerError)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the command; a user-fixable failure prints one ``error:`` line and returns 2."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return args.func(args)
    except expected_errors() as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"curvfast {args.command}: error: {message}", file=sys.stderr)
        return 2
