"""The pipeline contract, and the command line generated from it.

A pipeline is a package ``curvfast.pipelines.<command>`` that exposes

- ``Config``: a dataclass; every field is one option of ``curvfast <command>``, with its default
  and a one-line help (:func:`option`). Fields named in :data:`COMMON_HELP` mean the same thing in
  every pipeline and get that help text, so ``--help`` shows one name per idea;
- ``run(config, out=None) -> dict``: runs the pipeline, writes its run folder ``out`` (``None``: a
  temporary folder, removed afterwards) and returns the dict it wrote as ``out/results.json``;
- optionally ``summary(results) -> dict | None``: the part of the results the command prints (None:
  nothing, e.g. on the non-reporting ranks of a multi-process run);
- optionally ``PRESETS``: ``{"smoke": {...}, "paper": {...}}``, field values that ``--preset NAME``
  (or :func:`preset_config`) applies over the defaults; options given explicitly override a preset.

The command line is generated from ``Config`` (:func:`register`): field ``batch_size`` becomes
``--batch-size``; a ``bool`` becomes ``--x`` / ``--no-x``; a ``tuple`` a comma-separated list;
``choices`` are checked; an optional number (``int | None``) takes ``none`` for None. The command
itself adds ``--out`` (the run folder) and ``--threads`` (torch's CPU threads, a process setting,
so not part of a config). Defaults therefore live in one place: the dataclass.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import tempfile
import types
import typing

import torch

from curvfast.io import map_floats, write_json
from curvfast.errors import ConfigError, CurvfastError, UnknownNameError

__all__ = ["COMMON_HELP", "RunFailed", "option", "field_choices", "config_dict", "preset_config", "run_folder", "write_results",
           "add_config_arguments", "register", "main_for",
           "plain_text", "check_model"]

COMMON_HELP = {
    "dataset": "dataset name: images: digits (bundled), imagefolder, filelist, cifar10, cifar100, svhn, mnist, fashionmnist "
               "(read from --root, never downloaded); videos (pkd): its page lists them",
    "root": "folder that already holds the dataset (never downloaded)",
    "model": "zoo name (small_cnn, cifar_resnet18, mlp, mlp2) or a torchvision architecture",
    "checkpoint": "trained weights to start from (a checkpoint written by curvfast)",
    "device": "cpu, cuda or cuda:N",
    "batch_size": "training mini-batch size",
    "workers": "DataLoader worker processes",
    "image_size": "resize and centre-crop images to this size (unset: as stored)",
    "normalize": "input normalisation inside the model: none, cifar10, imagenet or MEAN/STD (per channel, comma-separated)",
    "augment": "training augmentation: none, crop (reflect-pad H/8, random crop) or crop-flip (and a horizontal flip)",
    "seed": "random seed (data order, initialisation, probes)",
    "method": "curvature estimator (a name of curvfast.curvature.METHODS)",
    "subset_size": "attack or score a seeded random subset of this many samples; unset or none: all",
    "score_batch_size": "samples per batch in passes that do not train: scoring, attacks, predictions",
    "quiet": "no progress bars or log lines",
    "dp_epsilon": "train with DP-SGD (Opacus) at this privacy budget ε (inf: the same recipe without noise)",
    "dp_delta": "DP-SGD's δ",
    "dp_max_grad_norm": "DP-SGD's per-sample gradient clipping norm C",
}


class RunFailed(CurvfastError, RuntimeError):
    """The run itself failed (a node crashed, an attack produced no finite score): exit status 1,
    where a setting the user can fix is a :class:`~curvfast.errors.ConfigError` (exit status 2)."""


def option(default=dataclasses.MISSING, help: str | None = None, *, choices=None):  # noqa: A002 (argparse's word)
    """A ``Config`` field: its default, one line of help (for a :data:`COMMON_HELP` name: omitted, or a
    note appended to the common help) and, optionally, the allowed values (for a tuple field: of each element).

    ``choices`` may be a tuple or a function returning one, called each time a parser is built: a list read
    from a registry (``lambda: curvfast.curvature.METHODS``) then includes whatever was registered since.
    """
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def field_choices(config_cls, name: str) -> tuple | None:
    """The allowed values of ``config_cls``'s field ``name`` now (None: any), resolving a registry function."""
    choices = next(f for f in dataclasses.fields(config_cls) if f.name == name).metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def preset_config(pipeline, preset: str = "default", **overrides):
    """``pipeline.Config`` with the named preset's values over the defaults and ``overrides`` over both."""
    presets = getattr(pipeline, "PRESETS", {})
    if preset != "default" and preset not in presets:
        raise UnknownNameError(f"preset must be one of {', '.join(['default', *presets])} (got {preset!r})")
    return pipeline.Config(**{**presets.get(preset, {}), **overrides})


def config_dict(config) -> dict:
    """The resolved config as plain JSON values (what ``results.json`` records).

    An infinite float setting (``--dp-epsilon inf``: no DP) is recorded as the string ``"inf"`` or
    ``"-inf"``, so that ``results.json`` stays strict JSON (:func:`curvfast.io.write_json`).
    """
    def plain(value: float):
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else value

    return json.loads(json.dumps(map_floats(dataclasses.asdict(config), plain), default=str))


@contextlib.contextmanager
def run_folder(out: str | os.PathLike | None):
    """Yield the run folder ``out`` (created), or a temporary one removed on exit when ``out`` is None."""
    if out is None:
        with tempfile.TemporaryDirectory(prefix="curvfast-") as tmp:
            yield tmp
    else:
        os.makedirs(out, exist_ok=True)
        yield os.fspath(out)


def write_results(out: str, results: dict) -> dict:
    """Write ``results`` atomically to ``out/results.json`` and return it."""
    write_json(os.path.join(out, "results.json"), results)
    return results


def plain_text(text: str) -> str:
    """Docstring text as help shows it: reST roles (:func:`~a.b.c` -> c, :class:`x <y>` -> x) and literals
    (``x`` -> x) without their markup."""
    text = re.sub(r":[a-z]+:`~?([^`<]*?)\s*<[^`>]*>`", r"\1", text)  # :role:`text <target>`
    text = re.sub(r":[a-z]+:`~([^`]*\.)?([^`.]+)`", r"\2", text)  # :role:`~a.b.c`
    text = re.sub(r":[a-z]+:`([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``", r"\1", text)


def check_model(name: str) -> None:
    """Refuse an unknown model name now, before data are loaded or processes started (one
    :class:`~curvfast.errors.UnknownNameError` line naming the choices, as building it would raise)."""
    from curvfast.models import available_models, build_model

    if name not in available_models():
        build_model(name, 2)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar_parser(tp, flag: str):
    """argparse ``type=`` for int / float / str (float accepts inf), with the option named in errors."""
    if tp is bool or tp not in (int, float, str):
        raise TypeError(f"{flag}: Config fields must be bool, int, float, str, an optional one or a tuple of one (got {tp!r})")
    if tp is str:
        return str

    def parse(text: str):
        try:
            value = tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes {'an integer' if tp is int else 'a number'} (got {text!r})") from None
        if tp is float and math.isnan(value):
            raise argparse.ArgumentTypeError(f"{flag} takes a number, not nan")
        return value

    return parse


def _none_or(parse):
    """argparse ``type=`` of an optional number: ``none`` (any case) is None, anything else what ``parse`` makes of it."""
    def parse_optional(text: str):
        return None if text.strip().lower() == "none" else parse(text)

    return parse_optional


def _list_parser(element, flag: str, choices):
    """argparse ``type=`` for a comma-separated tuple of ``element`` values, each in ``choices``."""
    one = _scalar_parser(element, flag)

    def parse(text: str):
        values = tuple(one(v.strip()) for v in text.split(",") if v.strip())
        if not values:
            raise argparse.ArgumentTypeError(f"{flag} takes a comma-separated list (got {text!r})")
        bad = [v for v in values if choices is not None and v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"{flag} takes a comma-separated subset of {', '.join(map(str, choices))} (got {text!r})")
        return values

    return parse


def _unwrap_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(inner) == 1:
            return inner[0]
    return tp


def add_config_arguments(parser: argparse.ArgumentParser, config_cls) -> None:
    """One option per field of the dataclass ``config_cls`` (see the module docstring). An option the
    user does not give is absent from the parsed namespace (its default, shown in the help, is the
    dataclass's), so presets can tell explicit options from defaults."""
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        flag, tp = _flag(f.name), _unwrap_optional(hints[f.name])
        own, common = f.metadata.get("help"), COMMON_HELP.get(f.name)
        help_text = f"{common}; {own}" if common and own else common or own  # a common name keeps its meaning
        if not help_text:
            raise TypeError(f"{config_cls.__qualname__}.{f.name} has no help: declare it with option(default, help)")
        choices = field_choices(config_cls, f.name)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kwargs: dict = {"dest": f.name, "help": plain_text(help_text), "required": required, "default": argparse.SUPPRESS}
        default = None if required else f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if default is not None and tp is not bool:
            kwargs["help"] += f" (default: {','.join(map(str, default)) if isinstance(default, tuple) else default})"
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is tuple:
            kwargs["type"] = _list_parser(typing.get_args(tp)[0], flag, choices)
            kwargs["metavar"] = "A,B,..."
        else:
            kwargs["type"] = _scalar_parser(tp, flag)
            if tp in (int, float) and tp is not hints[f.name]:  # an optional number: "none" unsets it
                kwargs["type"] = _none_or(kwargs["type"])
            if choices is not None:
                kwargs["choices"] = choices
        kwargs["help"] = kwargs["help"].replace("%", "%%")  # argparse formats help with %: a literal "60%" must survive
        parser.add_argument(flag, **kwargs)


def register(subparsers, command: str, pipeline) -> None:
    """Add ``curvfast <command>`` for the pipeline module ``pipeline``: the first line of its docstring is
    the one-line help, its first two paragraphs the description."""
    paragraphs = plain_text(pipeline.__doc__ or command).strip().split("\n\n")
    p = subparsers.add_parser(command, help=paragraphs[0].splitlines()[0], description="\n\n".join(paragraphs[:2]),
                              formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    add_config_arguments(p, pipeline.Config)
    presets = getattr(pipeline, "PRESETS", {})
    if presets:
        p.add_argument("--preset", choices=("default", *presets), default="default",
                       help="smoke: seconds on a laptop CPU (the tests' settings); paper: the published setting; "
                            "options given explicitly override the preset")
    p.add_argument("--out", required=True, help="run folder: results.json and the pipeline's other outputs")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is fastest for tiny models on a busy machine)")
    p.set_defaults(func=main_for(pipeline))


def main_for(pipeline):
    """The command function of ``pipeline``: build its Config (defaults, then the preset, then the
    explicit options), set the threads, run it, print its summary as JSON (unless quiet). Exit status 0,
    or 1 on :class:`RunFailed`."""

    def main(args) -> int:
        explicit = {f.name: getattr(args, f.name) for f in dataclasses.fields(pipeline.Config) if hasattr(args, f.name)}
        config = preset_config(pipeline, getattr(args, "preset", "default"), **explicit)
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError(f"--threads must be >= 1 (got {args.threads})")
            torch.set_num_threads(args.threads)
        try:
            results = pipeline.run(config, out=args.out)
        except RunFailed as err:
            print(f"curvfast {args.command}: error: {err}", file=sys.stderr)
            return 1
        if not getattr(config, "quiet", False):
            if getattr(args, "preset", "default") == "smoke":
                print(f"curvfast {args.command}: --preset smoke is a plumbing check (tiny data, few epochs): its numbers "
                      "show that the pipeline runs, not how well the methods work (they may sit near chance)",
                      file=sys.stderr)
            shown = pipeline.summary(results) if hasattr(pipeline, "summary") else results
            if shown is not None:
                print(json.dumps({**shown, "out": args.out}, indent=1, default=str))
        return 0

    return main
