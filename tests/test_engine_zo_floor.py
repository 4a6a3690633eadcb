"""zo's rounding-floor flag through dataset scoring: results, samples table, summary, warning, the CLI flag."""
import csv
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import curvfast
from curvfast.checkpoints import model_record, save_model
from curvfast.cli import main
from curvfast.engine import load_result
from curvfast.models import SmallCNN


def _data():
    x = torch.rand(24, 16, generator=torch.Generator().manual_seed(0))
    return TensorDataset(x, torch.arange(24) % 4)


def _flat_linear():
    torch.manual_seed(1)
    net = nn.Linear(16, 4)
    with torch.no_grad():
        net.weight.mul_(1e-4)  # curvature ~1e-10, far below the float32 floor ulp(L)/(4h) ≈ 6e-5
    return net


@pytest.mark.parametrize("chunk_size", [None, 8])
def test_flagged_scores_reach_the_table_the_summary_and_a_warning(tmp_path, chunk_size):
    out = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match="24 of 24 zo scores .* --float64-losses"):
        res = curvfast.score(_flat_linear(), _data(), method="zo", probes=2, batch_size=8, out=str(out),
                             chunk_size=chunk_size)
    assert res.below_rounding_floor.all() and res.summary()["below_rounding_floor"] == 24
    meta = json.loads((out / "results.json").read_text())
    assert meta["summary"]["below_rounding_floor"] == 24
    with open(out / "samples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["below_rounding_floor"] for r in rows] == ["True"] * 24
    back = load_result(str(out))
    np.testing.assert_array_equal(back.rounding_floor, res.rounding_floor)
    assert back.below_rounding_floor.all()


def test_float64_losses_clears_the_flag_and_other_methods_have_none(recwarn):
    res = curvfast.score(_flat_linear(), _data(), method="zo", probes=2, batch_size=8, float64_losses=True)
    assert res.summary()["below_rounding_floor"] == 0 and res.settings["float64_losses"] is True
    assert not [w for w in recwarn if "rounding floor" in str(w.message)]
    exact = curvfast.score(_flat_linear(), _data(), method="exact", batch_size=8)
    assert exact.below_rounding_floor is None and "below_rounding_floor" not in exact.summary()
    assert "below_rounding_floor" not in exact.columns()


def test_score_float64_losses_flag(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "data" / "val" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(tmp_path / "data" / "val" / c / f"{i}.png")
    torch.manual_seed(0)
    ckpt = tmp_path / "m.pt"
    save_model(str(ckpt), SmallCNN(3, 2, width=4), model_record("small_cnn", 2, 3, model_kwargs={"width": 4}))
    out = tmp_path / "run"
    assert main(["score", "--checkpoint", str(ckpt), "--dataset", "imagefolder", "--root", str(tmp_path / "data"),
                 "--split", "val", "--method", "zo", "--probes", "1", "--float64-losses", "--chunk-size", "0",
                 "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "results.json").read_text())
    assert meta["settings"]["float64_losses"] is True and "below_rounding_floor" in meta["summary"]
