"""The pipelines' one contract (``Config`` + ``run(config, out=None) -> dict``), the CLI generated
from it, and the house rules: one package per command, no pipeline imports another, one option
name per idea."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import pathlib

import pytest

from curvfast.cli import build_parser, main
from curvfast.pipelines import COMMANDS
from curvfast.curvature import METHODS
from curvfast.errors import CurvfastError, UnknownNameError
from curvfast.pipelines.common.contract import COMMON_HELP, RunFailed, add_config_arguments, field_choices, option

from conftest import REPO

PIPELINES = REPO / "curvfast" / "pipelines"
# names a pipeline once used for an idea that now has one common name
ALIASES = {"--dp-clip": "--dp-max-grad-norm", "--max-grad-norm": "--dp-max-grad-norm", "--delta": "--dp-delta",
           "--epsilon": "--dp-epsilon", "--num-workers": "--workers", "--arch": "--model",
           "--selection": "--method", "--estimator": "--method", "--checkpoints": "--checkpoint",
           "--pool-size": "--subset-size", "--n-test": "--subset-size", "--attack-batch": "--score-batch-size",
           "--eval-batch-size": "--score-batch-size"}


def _subparsers():
    return next(a for a in build_parser()._actions if a.dest == "command").choices


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_is_a_package_with_config_and_run(command):
    module = importlib.import_module(f"curvfast.pipelines.{command}")
    assert dataclasses.is_dataclass(module.Config)
    params = list(inspect.signature(module.run).parameters.values())
    assert [p.name for p in params[:2]] == ["config", "out"] and params[1].default is None
    assert command in _subparsers()
    assert (PIPELINES.parent.parent / "docs" / f"{command}.md").exists()


def _imported_modules(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names)


@pytest.mark.parametrize("command", COMMANDS + ("common",))
def test_no_pipeline_imports_another(command):
    allowed = {command, "common"}
    for path in (PIPELINES / command).rglob("*.py"):
        for name in _imported_modules(path):
            parts = name.split(".")
            if parts[:2] == ["curvfast", "pipelines"] and len(parts) > 2:
                assert parts[2] in allowed, f"{path.relative_to(PIPELINES)} imports {name}"
            if command == "common":
                assert parts[:2] != ["curvfast", "pipelines"] or parts[2:3] == ["common"], f"common imports {name}"


def test_an_option_has_one_name_and_one_meaning_across_pipelines():
    helps: dict[str, set] = {}
    for command, parser in _subparsers().items():
        if command not in COMMANDS:
            continue
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag not in ALIASES, f"curvfast {command} {flag}: call it {ALIASES[flag]}"
                helps.setdefault(flag, set()).add((action.help or "").split(" (default")[0])
    for name, text in COMMON_HELP.items():
        flag = "--" + name.replace("_", "-")
        assert all(h.startswith(text) for h in helps.get(flag, ())), f"{flag} has several meanings: {helps[flag]}"
    for command in COMMANDS:  # a list of curvature estimators is read from the registry, not copied by hand
        config = importlib.import_module(f"curvfast.pipelines.{command}").Config
        if "method" in {f.name for f in dataclasses.fields(config)}:
            assert set(METHODS) <= set(field_choices(config, "method")), f"curvfast {command} --method misses estimators"


@dataclasses.dataclass
class _Toy:
    size: int = option(3, "a size")
    rates: tuple[float, ...] = option((0.5, 1.0), "some rates")
    kinds: tuple[str, ...] = option(("a",), "kinds", choices=("a", "b"))
    mode: str = option("x", "a mode", choices=("x", "y"))
    name: str | None = option(None, "an optional name")
    limit: int | None = option(4, "an optional number")
    flag: bool = option(False, "a switch")
    seed: int = option(0)


def _parse(argv):
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_config_arguments(parser, _Toy)
    return _Toy(**vars(parser.parse_args(argv)))


def test_generated_options_parse_types_lists_choices_and_bools():
    assert _parse([]) == _Toy()
    cfg = _parse(["--size", "5", "--rates", "1,inf", "--kinds", "b,a", "--mode", "y", "--name", "n", "--flag", "--seed", "2"])
    assert cfg == _Toy(5, (1.0, float("inf")), ("b", "a"), "y", "n", 4, True, 2)
    assert _parse(["--no-flag"]).flag is False
    assert _parse(["--limit", "none"]).limit is None and _parse(["--limit", "7"]).limit == 7  # an optional number unsets
    assert _parse(["--name", "none"]).name == "none"  # a string keeps the word (normalize none is a value)


@pytest.mark.parametrize("argv, message", [
    (["--size", "1.5"], "--size takes an integer"),
    (["--rates", "1,x"], "--rates takes a number"),
    (["--rates", "nan"], "not nan"),
    (["--kinds", "a,c"], "subset of a, b"),
    (["--rates", ","], "comma-separated list"),
])
def test_generated_options_refuse_bad_values_naming_the_option(argv, message):
    with pytest.raises(argparse.ArgumentError, match=message):
        _parse(argv)


def test_a_percent_sign_in_help_is_printed_not_formatted():
    @dataclasses.dataclass
    class Percent:
        share: float = option(0.6, "decay at 60% of the epochs")

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Percent)
    assert "decay at 60% of the epochs (default: 0.6)" in " ".join(parser.format_help().split())


@pytest.mark.parametrize("command", COMMANDS)
def test_every_pipeline_help_renders(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "--out" in capsys.readouterr().out


def test_a_field_without_help_is_refused():
    @dataclasses.dataclass
    class NoHelp:
        size: int = 3

    with pytest.raises(TypeError, match="NoHelp.size has no help"):
        add_config_arguments(argparse.ArgumentParser(), NoHelp)


def test_threads_below_one_is_a_clear_error(tmp_path, capsys):
    assert main(["ood", "--out", str(tmp_path), "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_presets_apply_under_explicit_options():
    import types

    from curvfast.pipelines.common.contract import preset_config, register

    seen = []
    fake = types.SimpleNamespace(
        __doc__="a toy pipeline\n\nthat records its config", Config=_Toy, PRESETS={"smoke": {"size": 1, "flag": True}},
        run=lambda config, out=None: seen.append(config) or {"ok": True})
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"), "toy", fake)
    for argv, expected in [([], _Toy()), (["--preset", "smoke"], _Toy(size=1, flag=True)),
                           (["--preset", "smoke", "--size", "7", "--no-flag"], _Toy(size=7, flag=False))]:
        args = parser.parse_args(["toy", "--out", "o", *argv])
        assert args.func(args) == 0 and seen[-1] == expected
    assert preset_config(fake, "smoke", seed=4) == _Toy(size=1, flag=True, seed=4)
    with pytest.raises(UnknownNameError, match="preset must be one of default, smoke"):
        preset_config(fake, "paper")


def test_run_failed_is_a_curvfast_error_and_a_runtime_error():
    """``except CurvfastError`` catches a failed run too; ``except RuntimeError`` still does."""
    assert issubclass(RunFailed, CurvfastError) and issubclass(RunFailed, RuntimeError)


def test_option_prefixes_are_not_guessed(capsys):
    """`--ensemble` must not silently mean `--ensemble-size`: generated parsers take whole option names only."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ood", "--out", "o", "--epoch", "3"])
    assert "unrecognized arguments: --epoch" in capsys.readouterr().err


def test_the_parser_builds_only_the_pipeline_a_command_line_names():
    """A command line imports the one pipeline it runs (none for a core command): every torchrun rank of
    `curvfast score` used to import all seven, pytorch-ood and Opacus included. --help still lists every command."""
    import subprocess
    import sys

    from curvfast.cli import CORE_COMMANDS

    assert set(_subparsers()) == set(CORE_COMMANDS) | set(COMMANDS)
    probe = ("import sys; from curvfast.cli import build_parser; build_parser(sys.argv[1:]); "
             "print(sorted({m.split('.')[2] for m in sys.modules if m.startswith('curvfast.pipelines.')} - {'common'}))")
    for argv, expected in ((["score", "--method", "exact"], []), (["ood", "--out", "o"], ["ood"]),
                           (["mia", "--help"], ["mia"]), (["--help"], sorted(COMMANDS)), (["nonsense"], sorted(COMMANDS))):
        proc = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip() == str(expected), (argv, proc.stdout)
    help_text = subprocess.run([sys.executable, "-m", "curvfast", "--help"], capture_output=True, text=True, timeout=120).stdout
    assert all(command in help_text for command in (*CORE_COMMANDS, *COMMANDS))
