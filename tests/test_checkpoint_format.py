"""One checkpoint format for every command: `curvfast score` and `curvfast.load_checkpoint` load every checkpoint any
command writes (issue 31: score failed on mia's shadow models with "Error(s) in loading state_dict for SmallCNN:",
their width unrecorded), or refuse one that is not a classifier in one line."""
import glob
import os

import pytest
import torch

import curvfast
from curvfast.checkpoints import load_model, model_record, remove_batchnorm, save_model
from curvfast.cli import main
from curvfast.errors import CheckpointError
from curvfast.models import SmallCNN, build_model, normalized


def _loads(ckpt) -> None:
    """``curvfast.load_checkpoint`` (what `curvfast score` loads with) rebuilds a digits classifier."""
    from curvfast.data import DigitsDataset

    x = torch.stack([DigitsDataset("test")[i][0] for i in range(4)])
    assert curvfast.load_checkpoint(str(ckpt))(x).shape == (4, 10)


def _scores(ckpt, tmp_path, capsys) -> None:
    """`curvfast score` on the test digits: exit status 0 and a table."""
    out = tmp_path / f"score_{os.path.basename(ckpt)}"
    status = main(["score", "--checkpoint", str(ckpt), "--split", "test", "--method", "exact", "--chunk-size", "0",
                   "--out", str(out), "--quiet"])
    assert status == 0, capsys.readouterr().err
    assert (out / "samples.csv").is_file()


def test_the_record_rebuilds_width_normalisation_and_removed_batchnorm(tmp_path):
    torch.manual_seed(0)
    net = normalized(remove_batchnorm(build_model("small_cnn", 10, 1, width=6)), "0.5/0.25")
    record = model_record("small_cnn", 10, 1, normalize="0.5/0.25", model_kwargs={"width": 6}, batchnorm="identity")
    save_model(str(tmp_path / "m.pt"), net, record, seed=3)
    loaded = curvfast.load_checkpoint(str(tmp_path / "m.pt"))
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(loaded(x), net.eval()(x))


def test_an_old_checkpoint_without_its_width_says_what_to_do(tmp_path):
    torch.save({"state_dict": SmallCNN(1, 10, width=8).state_dict(), "model": "small_cnn"}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="does not fit model 'small_cnn'.*size mismatch.*predates"):
        load_model(str(tmp_path / "old.pt"), dataset="digits")


def test_score_loads_train_and_mia_checkpoints(tmp_path, capsys):
    ckpt = tmp_path / "train.pt"
    assert main(["train", "--epochs", "1", "--normalize", "0.5/0.25", "--out", str(ckpt), "--quiet"]) == 0
    _scores(ckpt, tmp_path, capsys)
    assert main(["mia", "--preset", "smoke", "--subset-size", "40", "--epochs", "1", "--signals", "loss",
                 "--out", str(tmp_path / "mia"), "--quiet"]) == 0
    shadows = sorted(glob.glob(str(tmp_path / "mia" / "**" / "model_*.pt"), recursive=True))
    assert len(shadows) == 5  # 4 shadows + 1 target
    _loads(shadows[-1])
    _scores(shadows[0], tmp_path, capsys)  # width 8: the failing case


def test_score_loads_verifix_checkpoints(tmp_path, capsys):
    assert main(["verifix", "--preset", "smoke", "--epochs", "1", "--out", str(tmp_path / "v"), "--quiet"]) == 0
    found = sorted(glob.glob(str(tmp_path / "v" / "**" / "*.pt"), recursive=True))
    assert {os.path.basename(f) for f in found} == {"trained.pt", "model.pt"}
    for f in found:
        _loads(f)


def test_score_loads_plain_transfer_members_and_refuses_quantised_ones_in_one_line(tmp_path, capsys):
    assert main(["transfer", "--preset", "smoke", "--models", "small_cnn,small_cnn+in1",
                 "--subset-size", "8", "--out", str(tmp_path / "t"), "--quiet"]) == 0
    models = tmp_path / "t" / "models"
    _loads(models / "small_cnn.pt")
    assert main(["score", "--checkpoint", str(models / "small_cnn+in1.pt"), "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "quantised transfer member" in err


def test_pkd_models_are_refused_in_one_line(tmp_path, capsys):
    from curvfast.io import save_checkpoint

    save_checkpoint(str(tmp_path / "models.pt"), torch.nn.ModuleDict({"ce": torch.nn.Linear(2, 2)}), num_classes=2,
                    kind="pkd's stream networks and exits (a ModuleDict; rebuild it with pkd's build_streams)")
    assert main(["score", "--checkpoint", str(tmp_path / "models.pt"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not one classifier" in err
