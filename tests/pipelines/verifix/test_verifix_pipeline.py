"""``curvfast verifix`` at any scale: the common data options, presets, the real test split."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from curvfast.cli import main
from tests.conftest import run_smoke_on_folder
from curvfast.io import load_checkpoint
from curvfast.pipelines.verifix import Config, Relabeled, run
from curvfast.pipelines.common.data import dataset_labels


def test_smoke_preset_on_a_cifar_shaped_folder_with_normalisation_and_augmentation(cifar_folder, tmp_path):
    out = tmp_path / "run"
    res = run_smoke_on_folder("verifix", cifar_folder, out)
    settings = res["settings"]
    assert settings["epochs"] == 2 and settings["verified_size"] == 20  # the smoke preset, resolved
    # accuracy is measured on the 100 images of test/, never on the 300 training images
    assert settings["test_size"] == 100 and settings["train_size"] + settings["validation_size"] == 300
    assert 0.0 <= res["accuracy_before"] <= 1.0 and 0.0 <= res["accuracy_after"] <= 1.0
    ckpt = load_checkpoint(str(out / "model.pt"))
    assert ckpt["normalize"] == "cifar10" and "mean" in ckpt["state_dict"]  # normalisation inside the model


def test_a_folder_without_a_test_split_is_refused_before_anything_runs(cifar_folder, tmp_path, capsys):
    root = tmp_path / "classes_only"
    shutil.copytree(cifar_folder / "train", root)  # class folders only: the training split, no test images
    out = tmp_path / "run"
    assert main(["verifix", "--preset", "smoke", "--dataset", "imagefolder", "--root", str(root), "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no 'test' split" in err and str(root / "test") in err
    assert not out.exists()


def test_explicit_options_override_the_preset():
    from curvfast.pipelines.common.contract import preset_config
    import curvfast.pipelines.verifix as verifix

    paper = preset_config(verifix, "paper", epochs=3, device="cpu")
    assert (paper.dataset, paper.model, paper.verified_size, paper.normalize, paper.augment) == \
        ("cifar10", "cifar_resnet18", 1000, "cifar10", "crop-flip")
    assert paper.epochs == 3 and paper.device == "cpu"


@pytest.mark.parametrize("field, value, message", [
    ("device", "cuda:0" if not torch.cuda.is_available() else "tpu", "cuda|device"), ("normalize", "cifar11", "normalize"),
    ("augment", "rotate", "augment"), ("workers", -1, "workers"),
])
def test_data_and_device_options_are_checked_before_any_data_is_read(field, value, message):
    with pytest.raises(ValueError, match=message):
        run(Config(dataset="imagefolder", root="/nonexistent", **{field: value}))


def test_labels_are_read_without_decoding_images():
    class Images(TensorDataset):
        def __getitem__(self, i):
            raise AssertionError("an image was decoded")

    x, y = torch.zeros(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    base = Images(x, y)
    base.targets = y
    noisy = Relabeled(Subset(base, [5, 1, 3]), torch.tensor([1, 1, 0]))
    assert dataset_labels(Subset(base, [5, 1, 3])).tolist() == [2, 1, 0]
    assert dataset_labels(Subset(noisy, [2, 0])).tolist() == [0, 1]
    assert dataset_labels(TensorDataset(x, y)).tolist() == y.tolist()  # no label attribute: item by item
    assert dataset_labels(TensorDataset(x, y)).dtype == np.int64


def test_a_rerun_corrects_the_saved_noisy_model_instead_of_training_again(cifar_folder, tmp_path, capsys):
    common = ["verifix", "--preset", "smoke", "--dataset", "imagefolder", "--root", str(cifar_folder), "--quiet"]
    assert main([*common, "--out", str(tmp_path / "first")]) == 0
    first = json.loads((tmp_path / "first" / "results.json").read_text())
    trained = str(tmp_path / "first" / "trained.pt")
    assert main([*common, "--checkpoint", trained, "--alphas", "1e4", "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["accuracy_before"] == first["accuracy_before"]  # the same model, not a retrained one
    assert again["train_accuracy_noisy_labels"] == first["train_accuracy_noisy_labels"]
    assert again["settings"]["checkpoint"] == trained and not (tmp_path / "again" / "trained.pt").exists()
    # other noise or another seed would pair the model with labels it was not trained on: refused
    assert main([*common, "--checkpoint", trained, "--noise", "0.4", "--out", str(tmp_path / "bad")]) == 2
    assert "noise: 0.25 there, 0.4 here" in capsys.readouterr().err
    assert main([*common, "--checkpoint", trained, "--seeds", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "seed: 0 there, 1 here" in capsys.readouterr().err and not (tmp_path / "bad").exists()
