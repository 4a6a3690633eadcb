"""Memorization pipeline: Feldman estimator and its intervals, agreement measures, mislabel
detection, per-epoch curvature, Opacus models and the CLI schema."""
import json

import numpy as np
import pytest
import torch

from curvfast.curvature import input_curvature
from curvfast.data import DigitsDataset
from curvfast.errors import ConfigError, DataError, UnknownNameError
from curvfast.pipelines.memorization import (
    agreement, cosine_similarity, curvature_trajectory, mislabel_report, flip_labels, memorization_scores,
    newcombe_interval, predict, random_subsets, top_k_overlap, train_with_checkpoints, wilson_interval,
)
from curvfast.pipelines.memorization.dp import fit_unveiling_bounds
from curvfast.pipelines.memorization.mislabel import cleanlab_scores, cross_val_pred_probs
from curvfast.pipelines.memorization.models import model_factory
from curvfast.pipelines.memorization.pipeline import Config
from curvfast.pipelines.common.multitrain import train_subset_models
from conftest import read_results


@pytest.fixture(scope="module")
def digits():
    ds = DigitsDataset("train")
    return ds.images, ds.targets


# ---------------------------------------------------------------- estimator and intervals

@pytest.mark.parametrize("k1,n1,k2,n2,low,high", [  # Newcombe (1998), Stat. Med. 17:873, Table II, method 10
    (56, 70, 48, 80, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.1705, 0.8090),
    (0, 10, 0, 20, -0.1611, 0.2775),
])
def test_newcombe_interval_matches_published_values(k1, n1, k2, n2, low, high):
    lo, hi = newcombe_interval(k1, n1, k2, n2)
    assert abs(lo - low) < 1e-4 and abs(hi - high) < 1e-4


def test_wilson_interval_published_value():
    lo, hi = wilson_interval(81, 263)  # Newcombe (1998) example: 81/263 -> 0.2553 to 0.3662
    assert abs(lo - 0.2553) < 1e-4 and abs(hi - 0.3662) < 1e-4


def test_memorization_hand_computed():
    keep = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], dtype=bool)
    correct = np.array([[1, 1], [1, 0], [0, 1], [1, 0]], dtype=bool)
    est = memorization_scores(correct, keep)
    np.testing.assert_allclose(est.p_in, [1.0, 1.0])
    np.testing.assert_allclose(est.p_out, [0.5, 0.0])
    np.testing.assert_allclose(est.mem, [0.5, 1.0])
    assert (est.ci_low <= est.mem).all() and (est.mem <= est.ci_high).all()


def test_memorization_recovers_known_probabilities_with_coverage():
    """Outcomes drawn with known P[correct | in] and P[correct | out]: the estimate converges and
    the 95% intervals cover the truth for about 95% of the samples."""
    rng = np.random.default_rng(0)
    models, samples = 300, 600
    p_in = rng.choice([1.0, 0.9, 0.95], size=samples)
    p_out = p_in - rng.choice([0.0, 0.3, 0.8], size=samples).clip(max=p_in)
    keep = random_subsets(models, samples, 0.7, seed=1)
    correct = rng.random((models, samples)) < np.where(keep, p_in, p_out)
    est = memorization_scores(correct, keep)
    truth = p_in - p_out
    assert np.abs(est.mem - truth).max() < 0.25
    assert np.abs(est.mem - truth).mean() < 0.05
    coverage = np.mean((est.ci_low <= truth) & (truth <= est.ci_high))
    assert coverage > 0.92, coverage


def test_never_out_sample_is_nan_not_an_error():
    keep = np.array([[1, 1], [1, 0]], dtype=bool)
    est = memorization_scores(np.ones_like(keep), keep)
    assert np.isnan(est.mem[0]) and est.mem[1] == 0.0
    assert est.summary()["estimable"] == 1


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ConfigError, match="fraction"):
        random_subsets(4, 10, 1.0)
    with pytest.raises(DataError, match="one shape"):
        memorization_scores(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(UnknownNameError, match="--method must be one of"):
        Config(method="no_such_estimator").validate()


def test_memorization_of_a_relabelled_image_from_real_training(digits):
    """Known answer from real training: 0s and 1s, one '0' relabelled '1'. Models that train on it
    learn the wrong label (memorize), models that do not predict '0': mem ≈ 1 there, ≈ 0 elsewhere."""
    x, y = digits
    idx = torch.cat([torch.nonzero(y == 0)[:40, 0], torch.nonzero(y == 1)[:40, 0]])
    x, y = x[idx], y[idx].clone()
    y[0] = 1  # the odd one
    keep = random_subsets(24, len(y), 0.5, seed=0)
    models = train_subset_models(model_factory("mlp", 10, (1, 8, 8), 64), x, y, keep, epochs=40, batch_size=16,
                                 lr=0.1, weight_decay=0.0, seed=0, models_per_pass=24, stack=True)
    correct = predict(models, x).argmax(-1) == y.numpy()[None]
    est = memorization_scores(correct, keep)
    assert est.mem[0] > 0.7 and est.ci_low[0] > 0.3
    assert np.abs(est.mem[1:]).mean() < 0.05


# ---------------------------------------------------------------- agreement

def test_agreement_measures():
    a = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    res = agreement(a, a ** 2, top_fractions=(0.4,))
    assert res["spearman"] == pytest.approx(1.0) and res["pearson"] < 1.0
    assert res["top_k"][0]["overlap"] == 1.0
    assert cosine_similarity([1, 0, 0], [1, 1, 0]) == pytest.approx(1 / np.sqrt(2))
    assert top_k_overlap(a, -a, 2) == 0.0
    assert agreement(a, -a)["spearman"] == pytest.approx(-1.0)


def test_agreement_reports_constant_and_shuffled_baselines():
    """A constant score has cosine Σb/(√N‖b‖) with b (high for non-negative, concentrated b: the
    trivial level a cosine figure must beat); a shuffled score has correlation ≈ 0 and chance overlap."""
    rng = np.random.default_rng(0)
    b = np.abs(rng.normal(size=2000)) ** 3
    a = b + 0.1 * rng.random(2000)
    res = agreement(a, b, top_fractions=(0.05,), permutations=10)
    const, shuf = res["baselines"]["constant"], res["baselines"]["shuffled"]
    assert const["cosine"] == pytest.approx(b.sum() / (np.sqrt(b.size) * np.linalg.norm(b)))
    assert const["pearson"] is None and const["top_k"][0]["overlap"] is None
    top = np.argsort(-b)[:100]
    assert const["top_k"][0]["cosine"] == pytest.approx(b[top].sum() / (10 * np.linalg.norm(b[top])))
    assert abs(shuf["pearson"]) < 0.05 and abs(shuf["spearman"]) < 0.05 and shuf["permutations"] == 10
    assert shuf["top_k"][0]["overlap"] == pytest.approx(0.05, abs=0.03)
    assert res["cosine"] > 0.99 > shuf["cosine"]


def test_a_cosine_with_a_zero_vector_is_undefined_not_nan():
    """Seen in a CIFAR-shaped smoke run: results.json held `"cosine": NaN` (not JSON) in the shuffled baseline's top-k,
    with a RuntimeWarning, because a few permutations put only zero curvatures among the top samples. A cosine with a
    zero vector is undefined (None); a baseline averages the permutations where it is defined."""
    import warnings

    assert cosine_similarity([0.0, 0.0, 0.0], [1.0, 2.0, 3.0]) is None
    a = np.array([0.0] * 6 + [1.0, 2.0, 3.0, 4.0])  # the 3 samples with the highest b have a = 0
    b = np.array([9.0, 8.0, 7.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = agreement(a, b, top_fractions=(0.3,), permutations=50, seed=1)
    assert res["top_k"][0]["cosine"] is None
    shuffled = res["baselines"]["shuffled"]["top_k"][0]["cosine"]
    defined = []
    rng = np.random.default_rng(1)  # the baseline's draws
    top = np.argsort(-b, kind="stable")[:3]
    for _ in range(50):
        p = rng.permutation(a)
        if np.linalg.norm(p[top]) > 0:
            defined.append(p[top] @ b[top] / (np.linalg.norm(p[top]) * np.linalg.norm(b[top])))
    assert 0 < len(defined) < 50
    assert shuffled == pytest.approx(np.mean(defined))


# ---------------------------------------------------------------- per-epoch curvature

def test_checkpoint_training_reuses_shared_trainer(digits):
    """One epoch through train_with_checkpoints is exactly the shared trainer's one-epoch model."""
    x, y = digits[0][:128], digits[1][:128]
    keep = np.ones((2, 128), dtype=bool)
    make = model_factory("mlp", 10, (1, 8, 8), 32)
    seen = []
    models = train_with_checkpoints(make, x, y, keep, epochs=1, lr=0.1, seed=3, batch_size=32,
                                    on_epoch=lambda e, ms: seen.append(e))
    ref = train_subset_models(make, x, y, keep, epochs=1, lr=0.1, seed=3, batch_size=32)
    assert seen == [1]
    for a, b in zip(models[1].state_dict().values(), ref[1].state_dict().values()):
        torch.testing.assert_close(a, b)


def test_curvature_trajectory_scores_every_epoch(digits):
    x, y = digits[0][:96], digits[1][:96]
    keep = np.ones((2, 96), dtype=bool)
    keep[1, :10] = False
    traj = curvature_trajectory(model_factory("mlp", 10, (1, 8, 8), 32), x, y, keep, epochs=3, lr=0.1, batch_size=32)
    assert traj.curvature.shape == traj.loss.shape == (3, 2, 96)
    res = input_curvature(traj.models[0], x, y, method="exact")  # last epoch's scores are the final model's
    np.testing.assert_allclose(traj.curvature[-1, 0], res.value.double().numpy(), rtol=1e-5, atol=1e-8)
    avg = traj.averaged()
    np.testing.assert_allclose(avg[:10], traj.curvature[:, 0, :10].mean(0))  # only model 0 trained on these
    np.testing.assert_allclose(avg[10:], traj.curvature[:, :, 10:].mean((0, 1)))


# ---------------------------------------------------------------- mislabel detection

def test_flip_labels():
    y = torch.arange(200) % 10
    noisy, flipped = flip_labels(y, 0.1, 10, seed=0)
    assert flipped.sum() == 20
    assert (noisy[torch.from_numpy(flipped)] != y[torch.from_numpy(flipped)]).all()
    assert (noisy[torch.from_numpy(~flipped)] == y[torch.from_numpy(~flipped)]).all()
    assert noisy.max() < 10


def test_default_recipe_memorizes_the_flipped_labels(digits):
    """The premise of curvature-based mislabel detection (Garg et al.): the model fits the noisy
    labels. The default memorization recipe (MLP, epochs, lr, batch, no weight decay; trained
    epoch by epoch as the pipeline does) must fit >= 90% of the 10% flipped digits labels."""
    x, y = digits
    d = Config()
    noisy, flipped = flip_labels(y, d.noise, 10, seed=d.seed)
    make = model_factory(d.model, 10, (1, 8, 8), d.width)
    models = train_with_checkpoints(make, x, noisy, np.ones((1, len(y)), dtype=bool), epochs=d.epochs, on_epoch=lambda e, m: None,
                                    lr=d.lr, batch_size=d.batch_size, weight_decay=d.weight_decay, stack=False)
    fits = predict(models, x).argmax(-1)[0] == noisy.numpy()
    assert fits[flipped].mean() >= 0.9 and fits[~flipped].mean() > 0.99


def test_mislabel_auroc_small_run(digits):
    """200 digits, 15% flipped, MLP trained to fit the noisy labels: all three rankings find the
    flipped ones far above chance (measured with this seed: curvature 0.84, loss 0.998, cleanlab 0.988)."""
    x, y = digits[0][:200], digits[1][:200]
    noisy, flipped = flip_labels(y, 0.15, 10, seed=0)
    make = model_factory("mlp", 10, (1, 8, 8), 128)
    kw = dict(epochs=20, batch_size=16, lr=0.1, weight_decay=0.0, stack=True)
    traj = curvature_trajectory(make, x, noisy, np.ones((1, 200), dtype=bool), **kw)
    probs = cross_val_pred_probs(make, x, noisy, folds=2, **kw)
    cl, issues = cleanlab_scores(noisy.numpy(), probs)
    rep = mislabel_report({"curvature": traj.averaged(), "loss": traj.averaged("loss"), "cleanlab": cl}, flipped, issues)
    assert rep["auroc"]["curvature"] > 0.7, rep
    assert rep["auroc"]["loss"] > 0.9 and rep["auroc"]["cleanlab"] > 0.9, rep
    assert rep["cleanlab_issues"]["recall"] > 0.5


# ---------------------------------------------------------------- DP-SGD (training itself: test_pipelines_common_dp.py)

def test_unveiling_fit_recovers_constants():
    eps = [1, 2, 4, 8, 16, 50]
    rows = [{"epsilon": e, "mean_curvature": 3.0 * (1 - np.exp(-e)) + 0.5, "mean_memorization": 0.1 * (1 - np.exp(-e)),
             "train_size": 99.0} for e in eps]
    fit = fit_unveiling_bounds(rows + [{"epsilon": None}])
    assert fit["curvature_fit"]["A"] == pytest.approx(3.0) and fit["curvature_fit"]["c2"] == pytest.approx(0.5)
    assert fit["curvature_fit"]["L"] == pytest.approx(0.03)
    assert all(b["holds"] for b in fit["memorization_bound"])


# ---------------------------------------------------------------- CLI

def test_cli_writes_required_schema(tmp_path):
    from curvfast.cli import main

    out = tmp_path / "run"
    rc = main(["memorization", "--dataset", "digits", "--out", str(out), "--subset-models", "4", "--epochs", "1", "--width", "16",
               "--proxy-models", "1", "--folds", "2", "--dp", "--dp-epsilons", "8", "--dp-models", "2", "--dp-epochs", "1",
               "--dp-max-grad-norm", "2", "--dp-delta", "1e-4", "--top", "8", "--quiet", "--published"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["dp_max_grad_norm"] == 2.0 and res["dp"][0]["delta"] == 1e-4
    # --published is recorded with what it set; the explicit --dp-epsilons 8 is kept
    assert res["settings"]["published"] is True and res["settings"]["method"] == "fd"
    applied = res["settings"]["published_applied"]
    assert applied["dp_design"] == "published" and "dp_epsilons" not in applied
    assert res["dp"][0]["mean_memorization_top_k"] is not None
    assert set(res["correlation"]) >= {"pearson", "spearman", "cosine"}
    assert set(res["mislabel_auroc"]) >= {"curvature", "loss", "cleanlab"}
    assert [r["epsilon"] for r in res["dp"]] == [8.0, None]
    assert set(res["dp"][0]) >= {"epsilon", "accuracy", "mean_curvature", "mia_auroc", "mean_memorization"}
    for name in ("scores.npz", "mislabel.npz", "curvature_vs_memorization.png", "histograms.png", "top_memorized.png", "dp.png"):
        assert (out / name).stat().st_size > 0
    with np.load(out / "scores.npz") as z:
        assert z["memorization"].shape == (1347,)


@pytest.mark.parametrize("argv, message", [
    (["--fraction", "1.5"], "--fraction must be in (0, 1)"),
    (["--dp-epsilons", "1,0"], "--dp-epsilons needs positive values"),
    (["--subset-models", "1"], "--subset-models must be >= 2"),
])
def test_cli_bad_argument_exits_2(tmp_path, capsys, argv, message):
    from curvfast.cli import main

    assert main(["memorization", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("old", ["--max-grad-norm", "--delta"])
def test_cli_dp_flags_have_the_common_names(tmp_path, capsys, old):
    from curvfast.cli import main

    with pytest.raises(SystemExit):
        main(["memorization", "--out", str(tmp_path), old, "1"])
    assert f"unrecognized arguments: {old}" in capsys.readouterr().err


# ---------------------------------------------------------------- paper scale: any dataset, device, presets, streaming

def test_smoke_preset_on_a_cifar_shaped_folder_with_normalisation_and_augmentation(tmp_path, cifar_folder):
    from curvfast.cli import main

    out = tmp_path / "run"
    assert main(["memorization", "--preset", "smoke", "--dataset", "imagefolder", "--root", str(cifar_folder), "--normalize",
                 "cifar10", "--augment", "crop-flip", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    res = read_results(out)
    s = res["settings"]
    assert (s["dataset"], s["normalize"], s["augment"], s["device"], s["subset_models"], s["epochs"]) == \
        ("imagefolder", "cifar10", "crop-flip", "cpu", 4, 2)
    assert res["settings"]["train_size"] == 300 and res["memorization"]["samples"] == 300
    assert 0.0 <= res["memorization"]["subset_model_test_accuracy"] <= 1.0
    with np.load(out / "scores.npz") as z:
        assert z["memorization"].shape == (300,) and np.isfinite(z["curvature"]).all()


def test_streamed_label_predictions_match_the_probabilities(digits):
    """label_predictions over a dataset (any batch size) = argmax / label column of predict's (M, N, C)."""
    from torch.utils.data import TensorDataset

    from curvfast.pipelines.memorization.feldman import label_predictions

    x, y = digits[0][:50], digits[1][:50]
    make = model_factory("mlp", 10, (1, 8, 8), 16, normalize="0.3/0.2")
    models = [make(), make()]
    probs = predict(models, x)
    correct, p_label = label_predictions(models, TensorDataset(x, y), batch_size=7)
    np.testing.assert_array_equal(correct, probs.argmax(-1) == y.numpy()[None])
    np.testing.assert_allclose(p_label, probs[:, np.arange(50), y.numpy()], rtol=1e-5)  # batch size changes float rounding
    np.testing.assert_allclose(predict(models, TensorDataset(x, y), batch_size=7), probs, rtol=1e-5)


def test_on_group_hands_each_group_over_and_keeps_none(digits):
    x, y = digits[0][:64], digits[1][:64]
    keep = random_subsets(5, 64, 0.5, seed=1)
    make = model_factory("mlp", 10, (1, 8, 8), 8)
    kw = dict(epochs=1, batch_size=16, seed=3, models_per_pass=2, stack=False)
    whole = train_subset_models(make, x, y, keep, **kw)
    seen = []
    assert train_subset_models(make, x, y, keep, on_group=lambda ids, group: seen.append((ids, group)), **kw) == []
    assert [ids for ids, _ in seen] == [[0, 1], [2, 3], [4]]
    for ids, group in seen:
        for i, model in zip(ids, group):
            for a, b in zip(model.state_dict().values(), whole[i].state_dict().values()):
                torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_cuda_device_without_a_gpu_is_refused(tmp_path, capsys, monkeypatch):
    from curvfast.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["memorization", "--device", "cuda:0", "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_8bit_training_images_are_held_as_uint8_and_give_the_float_runs_results(tmp_path, cifar_folder, monkeypatch):
    """The training split of an 8-bit image folder is held as uint8 (a quarter of float32's memory: 614 MB -> 154 MB
    for CIFAR-10) and every stage (subset training, predictions, curvature trajectories, mislabel folds, DP sweep,
    grids) restores the float32 values itself: the run equals one on float32 tensors bit for bit."""
    import importlib

    from curvfast.cli import main
    from curvfast.pipelines.common.data import as_float

    stages = importlib.import_module("curvfast.pipelines.memorization.pipeline")
    held, original = [], stages._training_tensors

    def packed(config, dataset):
        images, labels = original(config, dataset)
        held.append(images)
        return images, labels

    def unpacked(config, dataset):
        images, labels = original(config, dataset)
        return as_float(images), labels

    runs = {}
    for name, tensors in (("packed", packed), ("float", unpacked)):
        monkeypatch.setattr(stages, "_training_tensors", tensors)
        out = tmp_path / name
        assert main(["memorization", "--preset", "smoke", "--dataset", "imagefolder", "--root", str(cifar_folder), "--normalize",
                     "cifar10", "--augment", "crop-flip", "--dp", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
        res = json.loads((out / "results.json").read_text())
        res.pop("seconds")
        with np.load(out / "scores.npz") as z:
            runs[name] = (res, {k: z[k] for k in z.files})
    assert held[0].dtype == torch.uint8 and held[0].shape == (300, 3, 32, 32)
    assert runs["packed"][0] == runs["float"][0]
    for key, value in runs["float"][1].items():
        np.testing.assert_array_equal(runs["packed"][1][key], value, err_msg=key)
