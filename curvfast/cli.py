"""``curvfast <command>`` (also ``python -m curvfast``): doctor, train, score, demo, and the pipelines.

Each pipeline ``curvfast.pipelines.<command>`` owns one sub-command, generated from its ``Config``
(:mod:`curvfast.pipelines.common.contract`).
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import shlex
import sys

from . import __version__


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line naming the command (``curvfast mia: error: ...``, exit
    status 2), with the nearest option for a misspelt one; unknown options are reported by the sub-command
    they were given to, not by the top-level parser."""

    def parse_args(self, args=None, namespace=None):  # noqa: D102 (argparse's)
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            target = getattr(self, "commands", {}).get(getattr(parsed, "command", None), self)
            known = [o for a in target._actions for o in a.option_strings if o not in ("-h", "--help")]
            near = [m for e in extra if e.startswith("--")
                    for m in difflib.get_close_matches(e.split("=")[0], known, n=1, cutoff=0.6)]
            target.error(f"unrecognized arguments: {' '.join(extra)}"
                         + (f" (did you mean {', '.join(dict.fromkeys(near))}?)" if near else ""))
        return parsed

    def error(self, message: str):  # noqa: D102 (argparse's)
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}; see {self.prog} --help\n")


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that states each option's default (when it has one worth stating)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "(default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        if action.option_strings and action.nargs != 0:
            return f"{text} (default: %(default)s)".strip()
        return text



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
        args.model, args.dataset, recipe, root=args.root, image_size=args.image_size, train_split=args.train_split,
        test_split=args.test_split, allow_outside_root=args.allow_outside_root, normalize=args.normalize,
        device=args.device, out=args.out, log=None if args.quiet else print,
    )
    info["checkpoint"] = os.path.abspath(args.out)
    print(json.dumps(info, indent=2))
    return 0


def _cmd_score(args) -> int:
    """Score with one or several checkpoints; under torchrun every rank runs this, rank 0 reports."""
    from . import distributed
    from .checkpoints import folder_name, load_model_with_record
    from .data import get_dataset
    from .engine import score, score_models

    names = [folder_name(c) for c in args.checkpoint]
    if len(set(names)) != len(names):  # same file name in different folders: number them
        names = [f"{i}-{n}" for i, n in enumerate(names)]
    models, records = {}, {}
    for n, c in zip(names, args.checkpoint):
        models[n], record = load_model_with_record(c, args.model, args.dataset, args.root)
        records[n] = {"checkpoint": os.path.abspath(c), "model": args.model or record.get("model")}
    dataset, _ = get_dataset(args.dataset, args.split, root=args.root, image_size=args.image_size,
                             allow_outside_root=args.allow_outside_root)
    provenance = {"dataset": args.dataset, "root": args.root and os.path.abspath(args.root), "split": args.split,
                  "image_size": args.image_size, "command_line": shlex.join(["curvfast", *args.argv])}
    provenance |= records[names[0]] if len(names) == 1 else {"models": records}
    options = dict(
        method=args.method, statistic=args.statistic, probes=args.probes, seed=args.seed, batch_size=args.batch_size,
        precision=args.precision, channels_last=args.channels_last, device=args.device, num_workers=args.workers,
        out=args.out, chunk_size=args.chunk_size or None, overwrite=args.overwrite, timeout=args.timeout,
        progress=False if args.quiet else None, provenance=provenance,
    )
    if args.accept_gauss_newton:
        options["accept_gauss_newton"] = True
    if args.float64_losses:
        options["float64_losses"] = True
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


def _top_table(res, rows) -> str:
    """``rows`` of a run's per-sample table as aligned plain text (paths in full, numbers to 4 significant digits)."""
    columns = res.columns()
    order = ("index", "path", "class_name", "label", "prediction", "score", "stderr", "loss")
    names = [c for c in order if c in columns]

    def cell(value) -> str:
        return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    table = [names] + [[cell(columns[c][r]) for c in names] for r in rows]
    widths = [max(len(line[j]) for line in table) for j in range(len(names))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in table)


def _cmd_top(args) -> int:
    """Print a run's ``--k`` most curved samples (rank, file, class, score...); ``--png`` draws them."""
    from .engine import load_result

    if args.k < 1:
        raise ValueError(f"--k must be >= 1 (got {args.k})")
    res = load_result(args.run)
    rows = res.top(args.k).tolist()
    print(_top_table(res, rows))
    if args.png:
        from .data import get_dataset

        prov = res.provenance
        if not isinstance(prov.get("dataset"), str) or prov.get("split") is None:
            raise ValueError(f"run {args.run!r} does not record its dataset by name (scored from Python?); draw the "
                             "images with ScoreResult.save_top_images(dataset, path)")
        dataset, _ = get_dataset(prov["dataset"], prov["split"], root=prov.get("root"),
                                 image_size=prov.get("image_size"))
        if len(dataset) != len(res.index) or (res.files and hasattr(dataset, "samples")
                                               and dataset.samples[int(res.index[-1])][0] != res.files[-1]):
            raise ValueError(f"the dataset at {prov.get('root')!r} changed since run {args.run!r} scored it; "
                             "score it again")
        res.save_top_images(dataset, args.png, k=args.k)
        print(f"wrote {args.png}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, epochs=args.epochs, seed=args.seed, top=args.top)
    return 0


CORE_COMMANDS = ("doctor", "train", "score", "top", "demo")


def _batch_size(text: str) -> int | str:
    """``--batch-size``: a positive int or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int or 'auto' (got {text!r})")
    return value


def _pipelines_for(argv: list[str] | None) -> tuple[str, ...]:
    """The pipelines whose sub-command parsing ``argv`` needs: the one named, none for a core command, every one
    otherwise (``--help``, no command, a misspelt one: the choices are listed). Importing a pipeline costs up to a
    second (pytorch-ood, Opacus...), paid by every torchrun rank of ``curvfast score``."""
    first = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    if first in CORE_COMMANDS:
        return ()
    from .pipelines import COMMANDS

    return (first,) if first in COMMANDS else COMMANDS


def _data_arguments(p: argparse.ArgumentParser) -> None:
    """``--image-size`` and ``--allow-outside-root``, as train and score take them."""
    p.add_argument("--image-size", type=int, default=None,
                   help="resize and centre-crop images to this size (unset: as stored; mixed sizes need it)")
    p.add_argument("--allow-outside-root", action="store_true",
                   help="let a file list name images outside its folder and folder scans follow symlinks out of it")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``curvfast`` parser: the core commands, then one generated sub-command per pipeline (only what
    parsing ``argv`` needs when it is given; every command when it is None)."""
    parser = Parser(prog="curvfast", description="Per-sample input loss curvature for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"curvfast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices

    p = sub.add_parser("doctor", help="versions, native extension, CUDA kernels, GPU")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("train", help="train a zoo model on a registered dataset -> checkpoint",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--model", default="small_cnn", help="zoo name (small_cnn, cifar_resnet18, mlp, mlp2) or a "
                                                         "torchvision architecture (resnet18...)")
    p.add_argument("--dataset", default="digits",
                   help="digits (bundled), imagefolder (--root holds train/ and test/ of class folders), filelist, "
                        "cifar10, ...")
    p.add_argument("--root", default=None, help="folder that already holds the dataset (never downloaded)")
    _data_arguments(p)
    p.add_argument("--train-split", default="train", help="split folder trained on")
    p.add_argument("--test-split", default="test", help="held-out split folder for the accuracy (val: ImageNet layout)")
    p.add_argument("--epochs", type=int, default=30, help="training epochs")
    p.add_argument("--batch-size", type=int, default=64, help="mini-batch size")
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (momentum 0.9, cosine schedule)")
    p.add_argument("--seed", type=int, default=0, help="seeds the initialisation and the data order")
    p.add_argument("--normalize", default="none",
                   help="input normalisation inside the model: none, cifar10, imagenet or MEAN/STD (per channel, "
                        "comma-separated)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")
    p.add_argument("--quiet", action="store_true", help="no accuracy lines while training")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "score", help="score every sample of a dataset with one or several checkpoints -> run folder",
        description="Resumable: the same command again computes only missing chunks. Under "
        "`torchrun --nproc_per_node=N -m curvfast score ...` the samples are sharded over N processes.",
        formatter_class=DefaultsFormatter,
    )
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="one or several checkpoints (shadow models); several are scored in one pass over the data")
    p.add_argument("--model", default=None, help="zoo/torchvision name if the checkpoint does not record it")
    p.add_argument("--dataset", default="digits",
                   help="digits, imagefolder, filelist (streaming, ImageNet size), cifar10, ...")
    p.add_argument("--split", default="train", help="the split folder under --root to score (train, test, val...)")
    p.add_argument("--root", default=None, help="folder that already holds the dataset (never downloaded)")
    _data_arguments(p)
    from .curvature import ESTIMATORS, METHODS, PRECISIONS, STATISTICS

    own = tuple(e.name for e in ESTIMATORS.values() if e.own_statistic)  # fd, zo: their published quantity
    p.add_argument("--method", choices=tuple(METHODS), default="auto", help="curvature estimator (default: auto)")
    p.add_argument("--statistic", choices=(*STATISTICS, *own), default=None,
                   help="trace (default), frobenius, top_eigenvalue, spectrum; fd and zo return their own quantity")
    p.add_argument("--probes", type=int, default=None, help="probes of a random method (default: the estimator's)")
    p.add_argument("--accept-gauss-newton", action="store_true",
                   help="let exact/sampled score a smooth model: the Gauss-Newton value tr(JᵀAJ), not tr(H)")
    p.add_argument("--seed", type=int, default=0, help="keys the random probes with each sample's index")
    p.add_argument("--batch-size", type=_batch_size, default=64,
                   help="samples per batch, or auto: the largest that fits the GPU's free memory (64 on a CPU)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (TF32 off, the reference), tf32, or bf16 (exact/sampled: fp32 logits, bf16 VJPs)")
    p.add_argument("--float64-losses", action="store_true",
                   help="zo: compute the stencil's losses with a float64 copy of the model, removing the float32 "
                        "rounding floor ulp(L)/(4h) (docs/estimators.md)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last memory format for the model and 4-D inputs (faster convolutions on some GPUs)")
    p.add_argument("--chunk-size", type=int, default=1024,
                   help="samples per resumable chunk file; 0: no chunk files, not resumable")
    p.add_argument("--overwrite", action="store_true",
                   help="discard a run folder started with other settings/models/data")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds a rank waits for the others before failing (longer than one chunk takes)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per rank under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank")
    p.add_argument("--out", required=True, help="run folder for results.json, scores.npz, manifest.json and chunks/")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("top", help="print a run's most curved samples (file, class, score); --png draws them",
                       formatter_class=DefaultsFormatter)
    p.add_argument("run", metavar="RUN", help="a `curvfast score` run folder (of several models: RUN/<name>)")
    p.add_argument("--k", type=int, default=24, help="how many samples")
    p.add_argument("--png", default=None, help="also draw them as an image grid into this PNG file")
    p.set_defaults(func=_cmd_top)

    p = sub.add_parser("demo", help="train on digits, score every training digit exactly, plot the most curved",
                       formatter_class=DefaultsFormatter)
    p.add_argument("--out", default="runs/demo", help="run folder")
    p.add_argument("--epochs", type=int, default=30, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--top", type=int, default=24, help="digits in the figure")
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
    args.argv = list(argv)
    try:
        return args.func(args)
    except expected_errors() as err:
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"curvfast {args.command}: error: {message}", file=sys.stderr)
        return 2
