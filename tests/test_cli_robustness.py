"""The CLI under hostile input: every expected failure is one `error:` line and exit code 2."""
from __future__ import annotations

import json

import pytest
import torch

from curvfast.cli import main


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from curvfast.io import save_checkpoint
    from curvfast.models import build_model

    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    net = build_model("small_cnn", 10, 1)
    meta = {"model": "small_cnn", "num_classes": 10, "in_channels": 1}
    save_checkpoint(str(folder / "good model.pt"), net, **meta)
    save_checkpoint(str(folder / "ten.pt"), net, **{**meta, "num_classes": "ten"})
    save_checkpoint(str(folder / "no_channels.pt"), net, model="small_cnn", num_classes=10)
    with torch.no_grad():
        next(net.parameters())[0] = float("nan")
    save_checkpoint(str(folder / "nan.pt"), net, **meta)
    return folder


def _score_args(ckpt, out, *extra):
    return ["score", "--checkpoint", str(ckpt), "--split", "test", "--out", str(out), "--quiet", "--chunk-size", "0",
            *extra]


CLI_CASES = {
    "NaN checkpoint": (lambda c, t: _score_args(c / "nan.pt", t / "r"), "NaN"),
    "num_classes='ten' in the metadata": (lambda c, t: _score_args(c / "ten.pt", t / "r"), "num_classes"),
    "--device meta": (lambda c, t: _score_args(c / "good model.pt", t / "r", "--device", "meta"), "device"),
    "--device tpu7": (lambda c, t: _score_args(c / "good model.pt", t / "r", "--device", "tpu7"), "device"),
    "--out names a file": (lambda c, t: _score_args(c / "good model.pt", c / "ten.pt"), "not a folder"),
    "--out cannot be created": (lambda c, t: _score_args(c / "good model.pt", "/proc/curvfast-run"), "/proc/curvfast-run"),
    "--timeout nan": (lambda c, t: _score_args(c / "good model.pt", t / "r", "--timeout", "nan"), "timeout"),
    "train --lr nan": (lambda c, t: ["train", "--epochs", "1", "--lr", "nan", "--out", str(t / "m.pt"), "--quiet"], "lr"),
    "train --epochs 0": (lambda c, t: ["train", "--epochs", "0", "--out", str(t / "m.pt"), "--quiet"], "epochs"),
    "train --device tpu": (lambda c, t: ["train", "--device", "tpu", "--out", str(t / "m.pt"), "--quiet"], "device"),
    "train --out names a folder": (lambda c, t: ["train", "--epochs", "1", "--out", str(t), "--quiet"], "is a folder"),
    "--checkpoint names a folder": (lambda c, t: _score_args(c, t / "r"), "is a folder"),
    "--image-size on 8x8 digits": (lambda c, t: _score_args(c / "good model.pt", t / "r", "--image-size", "0"),
                                   "image_size"),
    "--split bogus": (lambda c, t: _score_args(c / "good model.pt", t / "r", "--split", "bogus"), "split"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_expected_failures_exit_2(case, checkpoints, tmp_path, capsys):
    argv, match = CLI_CASES[case]
    assert main(argv(checkpoints, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and match in err, err


def test_cli_checkpoint_names_with_spaces_and_missing_in_channels(checkpoints, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _score_args(checkpoints / "good model.pt", out)
    argv[argv.index("--checkpoint") + 1:argv.index("--checkpoint") + 2] = [str(checkpoints / "good model.pt"),
                                                                          str(checkpoints / "no_channels.pt")]
    assert main(argv) == 0, capsys.readouterr().err
    index = json.loads((out / "results.json").read_text())
    assert set(index["models"]) == {"good_model", "no_channels"}
