"""``curvfast transfer`` at any scale: the common data options, presets, checkpoints keyed by them."""
from __future__ import annotations

import shutil

import pytest
import torch

from curvfast.cli import main
from tests.conftest import run_smoke_on_folder
from curvfast.io import load_checkpoint
from curvfast.models import Normalized
from curvfast.pipelines.transfer import Config, InputQuantized, build_member, parse_spec, run

pytest.importorskip("torchattacks", reason="transfer's attacks need torchattacks")


def test_smoke_preset_on_a_cifar_shaped_folder_with_normalisation_and_augmentation(cifar_folder, tmp_path):
    out = tmp_path / "run"
    res = run_smoke_on_folder("transfer", cifar_folder, out)
    settings = res["settings"]
    assert settings["models"] == ["small_cnn", "small_cnn@1", "small_cnn+in1"] and settings["subset_size"] == 16  # the preset
    assert all(0.0 <= m["test_accuracy"] <= 1.0 and m["seconds"] > 0 for m in res["models"])
    assert set(res["timings"]) == {"curvature", "attack_sweep", "ensemble_attacks"}
    curv = res["curvature"]  # every member's input curvature beside its transferability, in the default run
    assert set(curv["members"]) == set(settings["models"]) and {m["method"] for m in curv["members"].values()} == {"exact"}
    assert curv["correlation"]["sources"] <= 3 and (out / "curvature_transfer.png").stat().st_size > 0
    ckpt = load_checkpoint(str(out / "models" / "small_cnn+in1.pt"))
    assert (ckpt["normalize"], ckpt["augment"], ckpt["root"]) == ("cifar10", "crop-flip", str(cifar_folder))
    assert any(k.endswith("mean") for k in ckpt["state_dict"])  # the normalisation is inside the model


def test_a_folder_without_a_test_split_is_refused_before_anything_runs(cifar_folder, tmp_path, capsys):
    root = tmp_path / "classes_only"
    shutil.copytree(cifar_folder / "train", root)
    out = tmp_path / "run"
    assert main(["transfer", "--preset", "smoke", "--dataset", "imagefolder", "--root", str(root), "--out", str(out),
                 "--quiet"]) == 2
    assert "no 'test' split" in capsys.readouterr().err and not out.exists()


def test_members_quantise_the_raw_image_then_normalise():
    net = build_member(parse_spec("small_cnn+in1"), 10, (3, 32, 32), normalize="cifar10")
    assert isinstance(net, InputQuantized) and isinstance(net.model, Normalized)
    plain = build_member(parse_spec("small_cnn"), 10, (3, 32, 32))
    assert not isinstance(plain, Normalized)
    x = torch.rand(2, 3, 32, 32)
    inner = build_member(parse_spec("small_cnn"), 10, (3, 32, 32), normalize="cifar10")
    torch.testing.assert_close(inner(x), plain((x - inner.mean) / inner.std))  # same seed, same weights


def test_checkpoints_are_not_reused_across_normalisations(cifar_folder, tmp_path):
    from torch.utils.data import Subset

    from curvfast.data import get_dataset
    from curvfast.pipelines.common.data import DataOptions
    from curvfast.pipelines.transfer import load_or_train

    train, _ = get_dataset("imagefolder", "train", root=str(cifar_folder))
    train = Subset(train, range(0, 300, 10))
    spec = parse_spec("small_cnn")
    kw = dict(epochs=1, dataset="imagefolder", folder=str(tmp_path))
    _, first = load_or_train(spec, train, train, 10, options=DataOptions(normalize="cifar10"), **kw)
    _, again = load_or_train(spec, train, train, 10, options=DataOptions(normalize="cifar10"), **kw)
    _, other = load_or_train(spec, train, train, 10, options=DataOptions(normalize="none"), **kw)
    assert first["trained"] and not again["trained"] and other["trained"]


def test_explicit_options_override_the_paper_preset():
    from curvfast.pipelines.common.contract import preset_config
    import curvfast.pipelines.transfer as transfer

    paper = preset_config(transfer, "paper", epochs=2, device="cpu")
    assert paper.dataset == "cifar10" and "cifar_resnet18+halftone" in paper.models and paper.metric_eps == "8/255"
    assert (paper.epochs, paper.device, paper.steps, paper.step) == (2, "cpu", 40, 0.01)


@pytest.mark.parametrize("field, value, message", [
    ("device", "cuda:0" if not torch.cuda.is_available() else "tpu", "cuda|device"), ("normalize", "cifar11", "normalize"),
    ("augment", "rotate", "augment"), ("batch_size", 0, "batch_size"),
])
def test_data_and_device_options_are_checked_before_any_data_is_read(field, value, message):
    with pytest.raises(ValueError, match=message):
        run(Config(dataset="imagefolder", root="/nonexistent", **{field: value}))


@pytest.mark.parametrize("size", [4, 9])
def test_an_ensemble_larger_than_the_zoo_is_refused_before_training(size):
    from curvfast.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"ensemble-size={size}.*3 models"):
        run(Config(dataset="imagefolder", root="/nonexistent", models=("small_cnn", "small_cnn@1", "mlp2"),
                   ensemble_size=size))


def test_score_batch_size_bounds_every_forward_after_training_and_changes_no_result(monkeypatch, tmp_path):
    """--score-batch-size reaches the attacks, the ensemble attacks, the predictions and the ensemble votes:
    no network sees more images at once, and the study is the same as with one batch for all."""
    import curvfast.pipelines.transfer.pipeline as pipeline

    seen = []
    trained = pipeline.load_or_train

    def watched(*args, **kwargs):
        net, info = trained(*args, **kwargs)
        net.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape[0]))
        return net, info

    monkeypatch.setattr(pipeline, "load_or_train", watched)
    common = dict(models=("small_cnn", "mlp2"), ensemble_size=2, eps=(0, 16 / 255, 32 / 255), robust_eps=(32 / 255,), steps=2, step=0.05,
                  epochs=1, subset_size=20, ensemble="both=small_cnn,mlp2", quiet=True)
    small = run(Config(score_batch_size=3, **common), out=str(tmp_path / "small"))
    assert seen and max(seen) == 3
    seen.clear()
    whole = run(Config(**common), out=str(tmp_path / "whole"))
    assert max(seen) == 20
    for key in ("transfer_matrix", "robust_accuracy", "metric"):
        assert small[key] == whole[key], key
    with pytest.raises(ValueError, match="score_batch_size"):
        run(Config(score_batch_size=0, **common))
