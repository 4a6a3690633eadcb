"""`curvfast ood` on the user's own model (--checkpoint) and OoD image folders (--ood-folders)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from curvfast.cli import main
from curvfast.io import save_checkpoint
from curvfast.models import SmallCNN
from tests.conftest import read_results


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    """A (random) small CNN of digits 0-2, saved as `curvfast train` saves one."""
    path = tmp_path_factory.mktemp("ckpt") / "digits.pt"
    torch.manual_seed(0)
    save_checkpoint(str(path), SmallCNN(1, 3), model="small_cnn", num_classes=3, in_channels=1)
    return path


def _ood_folder(path, n: int = 6):
    """Colour images of mixed sizes, one level of subfolders: read at any depth, resized to 1x8x8."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = path / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10 + i, 14, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return path


def test_ood_reads_the_users_checkpoint_and_folders(digits_checkpoint, tmp_path, capsys):
    folder = _ood_folder(tmp_path / "my_noise")
    out = tmp_path / "run"
    argv = ["ood", "--preset", "smoke", "--checkpoint", str(digits_checkpoint), "--id-classes", "0,1,2",
            "--norm-statistic", "rms", "--ood-folders", str(folder), "--out", str(out)]
    assert main(argv) == 0
    assert "plumbing check" in capsys.readouterr().err
    res = read_results(out)
    assert res["settings"]["checkpoint"] == str(digits_checkpoint) and res["settings"]["seeds_run"] == [0]
    assert set(res["detectors"]["msp"]["per_set"]) == {"heldout_classes", "photo_patches", "uniform_noise", "inverted",
                                                       "shuffled", "my_noise"}
    assert "vrm" not in res["detectors"] and set(res["id_accuracy"]) == {"baseline"}
    assert np.load(out / "scores.npz")["msp/my_noise"].shape == (6,)


def test_ood_refuses_a_checkpoint_of_other_classes(digits_checkpoint, tmp_path, capsys):
    argv = ["ood", "--checkpoint", str(digits_checkpoint), "--id-classes", "0,1", "--out", str(tmp_path / "r"),
            "--quiet"]
    assert main(argv) == 2
    assert "has 3 outputs but id_classes names 2 classes" in capsys.readouterr().err


def test_ood_folder_errors_are_one_line(digits_checkpoint, tmp_path, capsys):
    base = ["ood", "--checkpoint", str(digits_checkpoint), "--id-classes", "0,1,2", "--quiet", "--out",
            str(tmp_path / "r")]
    assert main([*base, "--ood-folders", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert main([*base, "--ood-folders", str(tmp_path / "empty")]) == 2
    assert main([*base, "--id-classes", "0,1,2,3,4,5,6,7,8,9"]) == 2  # every class in distribution, no OoD folder
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "is not a folder" in err[0] and "no images" in err[1] and "--ood-folders" in err[2]
