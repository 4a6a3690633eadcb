"""Issue 31's first hour: a user's own ImageNet-layout folder (train/ and val/) -> a checkpoint -> scores tied to
their files: provenance in results.json, a per-sample table (CSV and parquet) with paths and class names,
`curvfast top` and a top-K figure."""
import csv
import json
import os

import numpy as np
import pytest

import curvfast
from curvfast.cli import main

CLASSES = ("cat", "dog", "fox")


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """``root/{train,val}/<class>/<name>.png``: 3 classes, 6 train and 3 val 16x16 RGB images each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("my_images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(0.25 + 0.25 * c, 0.2, (16, 16, 3)), 0, 1)
                Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{name}_{i}.png")
    return root


@pytest.fixture(scope="module")
def scored(user_folder, tmp_path_factory):
    """The documented commands: train, then score the val/ split; returns (checkpoint, run folder)."""
    tmp = tmp_path_factory.mktemp("first_hour")
    ckpt, run = tmp / "model.pt", tmp / "run"
    assert main(["train", "--dataset", "imagefolder", "--root", str(user_folder), "--test-split", "val",
                 "--epochs", "1", "--batch-size", "8", "--out", str(ckpt), "--quiet"]) == 0
    assert main(["score", "--checkpoint", str(ckpt), "--dataset", "imagefolder", "--root", str(user_folder),
                 "--split", "val", "--batch-size", "4", "--out", str(run), "--quiet"]) == 0
    return ckpt, run


def _rows(run):
    with open(run / "samples.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_results_record_their_provenance(scored, user_folder):
    ckpt, run = scored
    prov = json.loads((run / "results.json").read_text())["provenance"]
    assert prov["dataset"] == "imagefolder" and prov["split"] == "val"
    assert prov["root"] == os.path.abspath(user_folder) and prov["checkpoint"] == os.path.abspath(ckpt)
    assert prov["model"] == "small_cnn" and prov["curvfast"] == curvfast.__version__
    assert prov["command_line"].startswith("curvfast score --checkpoint ")


def test_the_table_ties_every_score_to_its_file(scored, user_folder):
    _, run = scored
    rows = _rows(run)
    assert list(rows[0]) == ["index", "path", "label", "class_name", "prediction", "score", "loss"]
    expected = sorted((c, f) for c in CLASSES for f in os.listdir(user_folder / "val" / c))  # ImageFolder's order
    assert [(r["class_name"], os.path.basename(r["path"])) for r in rows] == expected
    assert all(os.path.isfile(r["path"]) and r["class_name"] == os.path.basename(os.path.dirname(r["path"]))
               and CLASSES[int(r["label"])] == r["class_name"] and int(r["prediction"]) in range(3) for r in rows)
    with np.load(run / "scores.npz") as z:
        np.testing.assert_array_equal([float(r["score"]) for r in rows], z["score"])  # CSV floats are exact


def test_parquet_and_the_dataframe_hold_the_same_table(scored):
    import pandas as pd

    _, run = scored
    parquet = pd.read_parquet(run / "samples.parquet")
    frame = curvfast.engine.load_result(str(run)).to_frame()
    csv_frame = pd.read_csv(run / "samples.csv")
    pd.testing.assert_frame_equal(parquet, csv_frame)
    pd.testing.assert_frame_equal(frame.reset_index(drop=True)[list(parquet)].drop(columns="path"),
                                  parquet.drop(columns="path"), check_dtype=False)
    assert frame["path"].tolist() == parquet["path"].tolist()


def test_top_prints_the_most_curved_files_and_draws_them(scored, capsys):
    _, run = scored
    png = run / "top.png"
    assert main(["top", "--k", "4", "--png", str(png), str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, table = lines[0].split(), lines[1:5]
    assert header == ["index", "path", "class_name", "label", "prediction", "score", "loss"]
    best = sorted(_rows(run), key=lambda r: -float(r["score"]))[:4]
    assert [line.split()[1] for line in table] == [r["path"] for r in best]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_top_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["top", str(tmp_path / "nothing")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_files_follow_a_subset_and_the_streaming_folder(user_folder):
    """The table's paths are the scored samples' own, through a Subset and for the streaming image folder too."""
    import torch
    from torch.utils.data import Subset

    from curvfast.data import get_dataset
    from curvfast.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(3, 3, width=4)
    for name in ("imagefolder", "filelist"):
        data, _ = get_dataset(name, "val", root=str(user_folder))
        res = curvfast.score(model, Subset(data, [7, 2]), method="exact", batch_size=2)
        files = [os.path.relpath(f, user_folder) for f in res.files]
        assert files == [os.path.join("val", "fox", "fox_1.png"), os.path.join("val", "cat", "cat_2.png")], name
