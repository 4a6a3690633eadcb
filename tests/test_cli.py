"""The CLI end to end on digits: doctor, train, score, and errors as exit code 2 with a message."""
import json
import os
import subprocess
import sys

import numpy as np

from curvfast.cli import main


def test_doctor_json_reports_the_extension():
    out = subprocess.run([sys.executable, "-m", "curvfast", "doctor", "--json"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["extension"] is True, report["extension_error"]
    if os.environ.get("CURVFAST_REQUIRE_CUDA_BUILD") == "1":  # our CI: the CUDA kernels must have compiled
        assert report["cuda_compiled"] is True
    assert isinstance(report["cuda_compiled"], bool)
    assert report["torch"].startswith("2.")


def test_train_then_score(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    assert main(["train", "--epochs", "2", "--out", str(ckpt), "--quiet"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "small_cnn" and 0.0 <= info["test_accuracy"] <= 1.0
    out = tmp_path / "run"
    assert main(["score", "--checkpoint", str(ckpt), "--split", "test", "--out", str(out), "--quiet"]) == 0
    scores = np.load(out / "scores.npz")
    assert len(scores["score"]) == 450 and np.all(scores["score"] > 0)
    assert json.loads((out / "results.json").read_text())["settings"]["method"] == "exact"


def test_score_with_bad_checkpoint_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("garbage")
    assert main(["score", "--checkpoint", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_doctor_says_when_the_references_are_in_use():
    import os

    env = dict(os.environ, CURVFAST_DISABLE_NATIVE="1")
    out = subprocess.run([sys.executable, "-m", "curvfast", "doctor"], env=env, capture_output=True, text=True, check=True).stdout
    assert "pure-torch reference ops" in out
    report = json.loads(subprocess.run([sys.executable, "-m", "curvfast", "doctor", "--json"], env=env,
                                       capture_output=True, text=True, check=True).stdout)
    assert report["extension"] is False and "CURVFAST_DISABLE_NATIVE" in report["extension_error"]


def test_normalisation_travels_with_the_checkpoint(tmp_path):
    """`train --normalize` records it; `score` rebuilds the wrapper and scores [0, 1] inputs through it."""
    ckpt = tmp_path / "m.pt"
    assert main(["train", "--epochs", "1", "--normalize", "0.5/0.25", "--out", str(ckpt), "--quiet"]) == 0
    from curvfast.checkpoints import load_model
    from curvfast.models import Normalized

    model = load_model(str(ckpt), None, "digits", None)
    assert isinstance(model, Normalized) and model.std.item() == 0.25
    assert main(["score", "--checkpoint", str(ckpt), "--split", "test", "--out", str(tmp_path / "s"), "--quiet"]) == 0
