"""One-line errors: every pipeline and core command, given a misspelt model, option or dataset, prints one
``curvfast <command>: error: ...`` line and exits with status 2 (idkd printed 82 lines and exited 1; a misspelt option
printed the top-level usage with a truncated command list)."""
import pytest

from curvfast.cli import build_parser, main

PIPELINES = ("mia", "memorization", "verifix", "ood", "pkd", "idkd", "transfer")
MODEL_OPTION = {"pkd": ("--backbone", "smal"), "transfer": ("--models", "small_cnn,resnt18")}  # their model options


def _one_line_error(argv, capsys) -> str:
    """Run ``curvfast argv``; assert exit status 2 and one stderr line naming the command; return that line."""
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's errors
        status = exit_.code
    err = capsys.readouterr().err.strip()
    assert status == 2, (status, err)
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"curvfast {argv[0]}: error: "), err
    return err


@pytest.mark.parametrize("command", PIPELINES)
def test_a_misspelt_model_is_one_line(command, capsys, tmp_path):
    flag, value = MODEL_OPTION.get(command, ("--model", "resnt18"))
    err = _one_line_error([command, "--preset", "smoke", flag, value, "--out", str(tmp_path / "o")], capsys)
    assert value.split(",")[-1] in err


@pytest.mark.parametrize("command", PIPELINES)
def test_a_misspelt_dataset_is_one_line(command, capsys, tmp_path):
    err = _one_line_error([command, "--preset", "smoke", "--dataset", "digts", "--out", str(tmp_path / "o")], capsys)
    assert "digts" in err


@pytest.mark.parametrize("command", [*PIPELINES, "train", "score"])
def test_a_misspelt_option_is_one_line_naming_the_nearest(command, capsys, tmp_path):
    extra = ["--checkpoint", "m.pt"] if command == "score" else []
    err = _one_line_error([command, *extra, "--seeed", "3", "--out", str(tmp_path / "o")], capsys)
    assert "unrecognized arguments: --seeed 3" in err and "did you mean --seed" in err
    assert "{doctor" not in err  # not the top-level usage


@pytest.mark.parametrize("argv", [["train", "--model", "resnt18", "--out", "x.pt"],
                                  ["train", "--dataset", "digts", "--out", "x.pt"],
                                  ["score", "--checkpoint", "missing.pt", "--out", "r"]])
def test_core_commands_fail_in_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line_error(argv, capsys)


@pytest.mark.parametrize("command", ["train", "score", "top"])
def test_core_help_states_the_defaults(command, capsys):
    with pytest.raises(SystemExit):
        build_parser([command]).parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    expected = {"train": ["--epochs EPOCHS training epochs (default: 30)", "(default: small_cnn)"],
                "score": ["(default: auto)", "(default: train)", "(default: 1024"],
                "top": ["(default: 24)"]}[command]
    for piece in expected:
        assert piece in text


@pytest.mark.parametrize("command", PIPELINES)
def test_pipeline_help_is_plain_text(command, capsys):
    with pytest.raises(SystemExit):
        build_parser([command]).parse_args([command, "--help"])
    text = capsys.readouterr().out
    for markup in ("``", ":func:", ":class:", ":mod:", ":data:", ":meth:"):
        assert markup not in text, (markup, text)
