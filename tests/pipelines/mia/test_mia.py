"""Membership inference (curvfast.pipelines.mia): attack statistics with known answers, metrics vs sklearn,
interchange round trips, bad input, DP models, and an end-to-end run on a small digits pool."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from scipy.stats import norm

from curvfast.errors import ConfigError, DataError, NonFiniteError, UnknownNameError
from curvfast.pipelines.mia import attacks as A
from curvfast.pipelines.mia import interchange
from curvfast.pipelines.mia.evaluate import REQUIRED_ATTACKS, attack_metrics, attack_scores
from curvfast.pipelines.mia.pipeline import Config, balanced_keep, run
from curvfast.pipelines.mia.signals import logit_confidence, model_signals
from conftest import read_results


def gaussian_world(num_shadows=400, num_samples=3000, d=1.0, views=1, seed=0):
    """Per-sample Gaussians: OUT ~ N(μ_i, σ_i²), IN ~ N(μ_i + d σ_i, σ_i²), μ_i and σ_i varying by sample.

    The optimal test for one view is monotone in (x − μ_i)/σ_i, with AUROC Φ(d/√2)."""
    rng = np.random.default_rng(seed)
    mu, sigma = rng.normal(0, 5, num_samples), rng.uniform(0.5, 2.0, num_samples)
    keep = balanced_keep(num_shadows + 1, num_samples, seed)
    noise = rng.normal(size=(num_shadows + 1, num_samples, views))
    signal = mu[None, :, None] + sigma[None, :, None] * (noise + d * keep[..., None])
    return signal[0], signal[1:], keep[1:], keep[0], mu, sigma


def manual_fit(shadow, mask, center=np.mean, ddof=1):
    """Per-sample centre and std with plain numpy loops over samples (the reference)."""
    n, v = shadow.shape[1:]
    mean, std = np.empty((n, v)), np.empty((n, v))
    for i in range(n):
        vals = shadow[mask[:, i], i]
        mean[i], std[i] = center(vals, 0), vals.std(0, ddof=ddof)
    return mean, std


# --- attack statistics ---------------------------------------------------------------------------

def test_lira_online_offline_match_scipy_formulas():
    """Carlini et al.'s reference fit: per-sample median and population std (ddof = 0)."""
    t, sh, keep, _, _, _ = gaussian_world(num_shadows=12, num_samples=50, views=2, seed=1)
    mi, si = manual_fit(sh, keep, np.median, ddof=0)
    mo, so = manual_fit(sh, ~keep, np.median, ddof=0)
    online = (norm.logpdf(t, mi, si) - norm.logpdf(t, mo, so)).mean(1)
    np.testing.assert_allclose(A.lira_online(t, sh, keep), online, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(A.lira_offline(t, sh, keep), norm.logcdf(t, mo, so).mean(1), rtol=1e-10, atol=1e-10)
    # global variance: one pooled within-sample σ per view, σ² = mean_i σ_i²
    pooled_in, pooled_out = np.sqrt((si**2).mean(0)), np.sqrt((so**2).mean(0))
    expect = (norm.logpdf(t, mi, pooled_in) - norm.logpdf(t, mo, pooled_out)).mean(1)
    np.testing.assert_allclose(A.lira_online(t, sh, keep, variance="global"), expect, rtol=1e-10, atol=1e-10)


def test_curvature_rules_match_formulas_and_quirk():
    t, sh, keep, _, _, _ = gaussian_world(num_shadows=10, num_samples=40, views=2, seed=2)
    ct, csh = np.exp(t), np.exp(sh)  # the attacks take curvatures and work on s = log(c + 1e-22)
    s_t = np.log(ct + 1e-22)
    mi, si = manual_fit(np.log(csh + 1e-22), keep)
    mo, so = manual_fit(np.log(csh + 1e-22), ~keep)
    nll = (norm.logpdf(s_t, mi, si) - norm.logpdf(s_t, mo, si)).mean(1)  # IN std for both Gaussians
    np.testing.assert_allclose(A.curvature_nll(ct, csh, keep), nll, rtol=1e-9, atol=1e-9)
    lr = np.log(np.exp(norm.logpdf(s_t, mi, si) - norm.logpdf(s_t, mo, so)).sum(1))  # ratios summed over views
    np.testing.assert_allclose(A.curvature_lr(ct, csh, keep), lr, rtol=1e-9, atol=1e-9)
    # the published rules: the population variance (np.nanvar, ddof 0), passed where the std belongs
    _, si0 = manual_fit(np.log(csh + 1e-22), keep, ddof=0)
    _, so0 = manual_fit(np.log(csh + 1e-22), ~keep, ddof=0)
    quirk = (norm.logpdf(s_t, mi, si0**2 + 1e-32) - norm.logpdf(s_t, mo, si0**2 + 1e-32)).sum(1)  # summed over views
    np.testing.assert_allclose(A.curvature_nll(ct, csh, keep, published_quirk=True), quirk, rtol=1e-9, atol=1e-9)
    assert not np.allclose(quirk, nll)
    # the published LR: ratio of the likelihoods summed over views, Σ_v N_in / (Σ_v N_out + eps) (variance + eps as std)
    lr_quirk = norm.pdf(s_t, mi, si0**2 + 1e-22).sum(1) / (norm.pdf(s_t, mo, so0**2 + 1e-22).sum(1) + 1e-22)
    np.testing.assert_allclose(A.curvature_lr(ct, csh, keep, published_quirk=True), lr_quirk, rtol=1e-9, atol=1e-12)
    # the published aggregation alone (our statistics), and with one view the two aggregations agree
    lr_sum = np.log(norm.pdf(s_t, mi, si).sum(1)) - np.log(norm.pdf(s_t, mo, so).sum(1))
    np.testing.assert_allclose(A.curvature_lr(ct, csh, keep, aggregation="likelihoods"), lr_sum, rtol=1e-9, atol=1e-9)
    assert not np.allclose(lr_sum, lr)
    one = A.curvature_lr(ct[:, :1], csh[..., :1], keep, aggregation="likelihoods")
    np.testing.assert_allclose(one, A.curvature_lr(ct[:, :1], csh[..., :1], keep), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("attack", ["lira_online", "lira_offline", "curvature_nll", "curvature_lr"])
def test_gaussian_attacks_reach_the_optimal_auroc(attack):
    """400 shadows fit the per-sample Gaussians well: AUROC within 0.015 of Φ(d/√2) = 0.760 for d = 1."""
    d = 1.0
    t, sh, keep, members, _, _ = gaussian_world(d=d, seed=3)
    if attack.startswith("curvature"):
        t, sh = np.exp(t), np.exp(sh)
    scores = getattr(A, attack)(t, sh, keep)
    from curvfast.metrics import auroc

    assert abs(auroc(scores, members, positive=True) - norm.cdf(d / math.sqrt(2))) < 0.015
    # a global threshold on the raw signal (LOSS-style) is far worse, since μ_i varies by sample
    raw = t[:, 0] if not attack.startswith("curvature") else np.log(t[:, 0])
    assert auroc(raw, members, positive=True) < 0.6


def test_curvature_attacks_flag_low_curvature_members():
    """Members have lower curvature: the score direction comes from the fitted Gaussians, not a sign."""
    t, sh, keep, members, _, _ = gaussian_world(d=-1.5, num_shadows=64, num_samples=1000, seed=4)
    from curvfast.metrics import auroc

    assert auroc(A.curvature_nll(np.exp(t), np.exp(sh), keep), members, positive=True) > 0.8


def test_loss_calibrated_attacks_by_hand():
    shadow = np.array([[1.0, 4.0], [3.0, 2.0], [5.0, 6.0], [7.0, 0.0]])  # (S=4, N=2)
    keep = np.array([[True, False], [True, True], [False, False], [False, True]])
    target = np.array([2.0, 6.0])
    np.testing.assert_allclose(A.loss_attack(target), [-2.0, -6.0])
    # sample 0: IN mean 2, OUT mean 6 -> τ 4; sample 1: IN mean 1, OUT mean 5 -> τ 3
    np.testing.assert_allclose(A.sablayrolles(target, shadow, keep), [2.0, -3.0])
    np.testing.assert_allclose(A.watson(target, shadow, keep), [4.0, -1.0])
    # sample 0: OUT losses {5, 7} both above 2 -> 1; sample 1: OUT {4, 6}: one above, none... 6 ties -> 0.5/2
    np.testing.assert_allclose(A.ye(target, shadow, keep), [1.0, 0.25])


def test_modified_entropy_matches_song_mittal_and_stays_finite():
    """Mentr = −(1 − p_y) log p_y − Σ_{c≠y} p_c log(1 − p_c), against float64 numpy where p is representable."""
    from curvfast.pipelines.mia.signals import modified_entropy

    rng = np.random.default_rng(8)
    logits = rng.normal(0, 3, size=(50, 7))
    y = rng.integers(0, 7, size=50)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(7, dtype=bool)[y]
    expect = np.where(onehot, -(1 - p) * np.log(p), -p * np.log1p(-p)).sum(1)
    got = modified_entropy(torch.from_numpy(logits), torch.from_numpy(y))
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-10, atol=1e-12)
    # a wrong class predicted with p → 1: −p log(1 − p) = 80 (log(1 − p) = −80 from the other logits), not inf
    extreme = modified_entropy(torch.tensor([[0.0, 80.0, 0.0]], dtype=torch.float64), torch.tensor([0]))
    assert torch.isfinite(extreme).all() and extreme.item() == pytest.approx(80.0 + 80.0 - math.log(2.0), rel=1e-6)
    # the attack: members (confidently right) score higher, views averaged
    np.testing.assert_allclose(A.modified_entropy(np.stack([expect, expect], 1)), -expect)


# --- metrics over targets vs sklearn --------------------------------------------------------------

def test_summarise_matches_sklearn_per_target():
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(5)
    members = rng.random((3, 500)) < 0.5
    scores = rng.normal(size=(3, 500)) + 0.7 * members
    report = attack_metrics(scores, members)
    aucs, tprs, bal = [], [], []
    for s, m in zip(scores, members):
        fpr, tpr, _ = roc_curve(m, s)
        aucs.append(roc_auc_score(m, s))
        tprs.append(tpr[fpr <= 0.01].max())
        bal.append(((tpr + 1 - fpr) / 2).max())
    assert report["auroc"] == pytest.approx(np.mean(aucs), abs=1e-12)
    assert report["auroc_std"] == pytest.approx(np.std(aucs), abs=1e-12)
    assert report["tpr_at_fpr"]["0.01"] == pytest.approx(np.mean(tprs), abs=1e-12)
    assert report["balanced_accuracy"] == pytest.approx(np.mean(bal), abs=1e-12)
    assert len(report["per_target"]) == 3


# --- signals ----------------------------------------------------------------------------------------

def test_logit_confidence_is_stable_and_exact():
    logits = torch.tensor([[2.0, 0.5, -1.0], [120.0, 0.0, 0.0], [-30.0, 5.0, 4.0]])
    y = torch.tensor([0, 0, 0])
    p = torch.softmax(logits.double(), 1)[:, 0]
    reference = torch.log(p) - torch.log1p(-p)
    phi = logit_confidence(logits, y)
    assert torch.isfinite(phi).all()
    torch.testing.assert_close(phi[[0, 2]].double(), reference[[0, 2]], rtol=1e-6, atol=1e-6)
    assert phi[1].item() == pytest.approx(120.0 - math.log(2.0), abs=1e-4)  # p_y rounds to 1 in float64


def test_model_signals_views_and_batching(digits_small):
    torch.manual_seed(0)
    from curvfast.models import build_model

    model = build_model("small_cnn", 10, 1, width=8).eval()
    x, y = digits_small.dataset.images[:20], digits_small.dataset.targets[:20]
    ids = torch.arange(100, 120)
    a = model_signals(model, x, y, signals=("loss", "curv_zo"), views=("identity", "hflip"), batch_size=7, probes=3, indices=ids)
    b = model_signals(model, x, y, signals=("loss", "curv_zo"), views=("identity", "hflip"), batch_size=20, probes=3, indices=ids)
    for k in a:
        assert a[k].shape == (20, 2)
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7)  # probes keyed by dataset index, not batch position
    flipped = model_signals(model, torch.flip(x, dims=(-1,)), y, signals=("loss",), indices=ids)
    np.testing.assert_allclose(flipped["loss"][:, 0], a["loss"][:, 1], rtol=1e-6)
    assert (a["curv_zo"] >= 0).all() and (a["loss"] >= 0).all()


# --- bad input ----------------------------------------------------------------------------------------

def test_bad_keep_and_shapes_raise_clear_errors():
    t, sh, keep, _, _, _ = gaussian_world(num_shadows=6, num_samples=20, seed=6)
    never_out = keep.copy()
    never_out[:, 3] = True
    with pytest.raises(DataError, match="OUT in fewer than"):
        A.lira_online(t, sh, never_out)
    never_in = keep.copy()
    never_in[:, 5] = False
    with pytest.raises(DataError, match=r"IN in fewer than .*samples \[5\]"):
        A.curvature_nll(np.exp(t), np.exp(sh), never_in)
    with pytest.raises(DataError, match="target has shape"):
        A.lira_online(t[:10], sh, keep)
    with pytest.raises(ValueError, match="keep has 5 models"):
        A.lira_offline(t, sh, keep[:5])
    with pytest.raises(ValueError, match="boolean"):
        A.check_membership(np.full((3, 4), 2))
    with pytest.raises(ValueError, match="curvature signals must be >= 0"):
        A.curvature_lr(-np.exp(t), np.exp(sh), keep)
    signals = {"loss": sh[..., None] if sh.ndim == 2 else sh}
    with pytest.raises(ConfigError, match="targets and shadows must be different"):
        attack_scores(signals, keep, [0], [0, 1])
    with pytest.raises(UnknownNameError, match="unknown attacks"):
        attack_scores(signals, keep, [0], [1, 2], names=["no_such_attack"])
    with pytest.raises(UnknownNameError, match="variance must be one of"):
        A.lira_online(t, sh, keep, variance="pooled")
    with_nan = t.copy()
    with_nan[..., 0] = np.nan
    with pytest.raises(NonFiniteError, match="NaN/inf"):
        A.lira_online(with_nan, sh, keep)


@pytest.mark.parametrize("argv, message", [
    (["--signals", "loss,curvature"], "--signals takes a comma-separated subset of loss, conf"),
    (["--views", "identity,rotate"], "--views takes a comma-separated subset of identity, hflip, auto"),
    (["--attacks", "loss,oracle"], "--attacks takes a comma-separated subset of loss"),
    (["--dp-clip", "1"], "unrecognized arguments: --dp-clip"),
    (["--pool-size", "10"], "unrecognized arguments: --pool-size"),  # now --subset-size
    (["--checkpoints", "x"], "unrecognized arguments: --checkpoints"),  # now --checkpoint (the folder)
])
def test_cli_refuses_bad_lists_and_old_flags(tmp_path, capsys, argv, message):
    from curvfast.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["mia", *argv, "--out", str(tmp_path)])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "{tmp}"], "no *.pt checkpoints"),
    (["--views", "auto,hflip"], "--views auto stands alone"),
    (["--dp-epsilon", "0"], "--dp-epsilon must be > 0 or inf"),
    (["--import-lira", "{tmp}", "--import-matrices", "{tmp}"], "pass one of --import-lira and --import-matrices"),
    (["--export-lira", "{tmp}/lira", "--signals", "loss"], "include conf in --signals"),
])
def test_cli_reports_bad_settings_with_exit_status_2(tmp_path, capsys, argv, message):
    from curvfast.cli import main

    assert main(["mia", *[a.format(tmp=tmp_path) for a in argv], "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


def test_views_auto_resolves_by_dataset():
    assert Config(dataset="cifar10").resolved_views() == ("identity", "hflip")
    assert Config(dataset="digits").resolved_views() == ("identity",)
    assert Config(dataset="cifar10", views=("identity",)).resolved_views() == ("identity",)


# --- interchange ---------------------------------------------------------------------------------------

def test_lira_and_matrix_round_trips(tmp_path):
    rng = np.random.default_rng(7)
    keep = balanced_keep(5, 30, 0)
    conf = rng.normal(size=(5, 30, 2))
    interchange.export_lira(str(tmp_path / "lira"), keep, conf)
    assert np.load(tmp_path / "lira" / "experiment-3_5" / "scores" / "0000000000.npy").shape == (30, 1, 2)
    k2, c2 = interchange.import_lira(str(tmp_path / "lira"))
    np.testing.assert_array_equal(k2, keep)
    np.testing.assert_array_equal(c2, conf)
    interchange.export_matrices(str(tmp_path / "mpm"), keep, {"loss": -conf, "conf": conf}, view=1)
    assert np.load(tmp_path / "mpm" / "memberships.npy").shape == (30, 5)
    k3, s3 = interchange.import_matrices(str(tmp_path / "mpm"))
    np.testing.assert_array_equal(k3, keep)
    np.testing.assert_array_equal(s3["conf"][..., 0], conf[..., 1])
    np.testing.assert_array_equal(s3["loss"][..., 0], -conf[..., 1])
    with pytest.raises(ConfigError, match="view=2"):
        interchange.export_matrices(str(tmp_path / "bad"), keep, {"conf": conf}, view=2)
    with pytest.raises(FileNotFoundError, match="experiment"):
        interchange.import_lira(str(tmp_path))


# --- end to end ------------------------------------------------------------------------------------------

def test_end_to_end_small_digits_pool(tmp_path):
    cfg = Config(subset_size=80, shadows=4, targets=1, epochs=1, width=8, signals=("loss", "conf", "curv_exact", "curv_zo"),
                 probes=2, quiet=True)
    results = run(cfg, out=tmp_path / "run")
    with open(tmp_path / "run" / "results.json") as f:
        on_disk = json.load(f)
    assert on_disk["attacks"].keys() == results["attacks"].keys()
    for name in REQUIRED_ATTACKS:
        entry = on_disk["attacks"][name]
        assert 0.0 <= entry["auroc"] <= 1.0 and 0.5 <= entry["balanced_accuracy"] <= 1.0
        assert set(entry["tpr_at_fpr"]) == {"0.01", "0.001", "0.0001"}
    assert os.path.getsize(tmp_path / "run" / "roc.png") > 1000
    with np.load(tmp_path / "run" / "signals.npz") as z:
        assert z["keep"].shape == (5, 80) and z["curv_zo"].shape == (5, 80, 1)
        assert (z["keep"][1:].sum(0) == 2).all()  # every sample IN for exactly half of the shadows
        first = z["curv_exact"].copy()
    again = run(cfg, out=tmp_path / "run")  # cached signals: no training, same numbers
    assert again["seconds"]["train"] == 0.0 and again["seconds"]["signals"] == 0.0
    assert again["attacks"]["loss"]["auroc"] == results["attacks"]["loss"]["auroc"]
    with np.load(tmp_path / "run" / "signals.npz") as z:
        np.testing.assert_array_equal(z["curv_exact"], first)
    (tmp_path / "run" / "signals.npz").write_bytes(b"truncated")  # a corrupt cache: recomputed from the saved models
    third = run(cfg, out=tmp_path / "run")
    assert third["seconds"]["train"] == 0.0 and third["seconds"]["signals"] > 0.0
    assert third["attacks"]["loss"]["auroc"] == results["attacks"]["loss"]["auroc"]
    with np.load(tmp_path / "run" / "signals.npz") as z:
        np.testing.assert_array_equal(z["curv_exact"], first)


def test_every_registered_estimator_is_a_curvature_signal_with_its_attacks():
    from curvfast.curvature import METHODS
    from curvfast.pipelines.common.contract import field_choices
    from curvfast.pipelines.mia.evaluate import attack_table
    from curvfast.pipelines.mia.signals import curvature_signals

    assert curvature_signals() == {f"curv_{m}": m for m in METHODS}
    assert set(field_choices(Config, "signals")) == {"loss", "conf", "maxconf", "mentr", *curvature_signals()}
    assert {f"curv_{m}_{kind}" for m in METHODS for kind in ("nll", "lr")} <= set(field_choices(Config, "attacks"))
    assert attack_table()["curv_deflated_lr"][0] == "curv_deflated"


# --- checkpoints, augmentation ----------------------------------------------------------------------------

def test_checkpoints_load_in_natural_order_and_count_must_match(tmp_path):
    """model_2.pt precedes model_10.pt (a lexicographic sort would misalign the rows of keep.npy)."""
    from curvfast.io import save_checkpoint
    from curvfast.models import build_model
    from curvfast.pipelines.mia.pipeline import _models_from_checkpoints, natural_order

    assert natural_order(["a/model_10.pt", "a/model_2.pt", "a/model_1.pt"]) == ["a/model_1.pt", "a/model_2.pt", "a/model_10.pt"]
    folder = tmp_path / "ckpts"
    for m in (0, 1, 2, 10, 11):
        net = build_model("small_cnn", 10, 1, width=4)
        torch.nn.init.constant_(net.state_dict()[next(iter(net.state_dict()))], float(m))  # weight tells which file
        save_checkpoint(str(folder / f"model_{m}.pt"), net, model="small_cnn")
    keep = balanced_keep(5, 20, 0)
    np.save(tmp_path / "keep.npy", keep)
    cfg = Config(checkpoint=str(folder), keep=str(tmp_path / "keep.npy"), width=4)
    make = lambda: build_model("small_cnn", 10, 1, width=4)  # noqa: E731
    models, loaded_keep = _models_from_checkpoints(cfg, make, 20)
    assert [float(next(iter(m.state_dict().values())).flatten()[0]) for m in models] == [0.0, 1.0, 2.0, 10.0, 11.0]
    np.testing.assert_array_equal(loaded_keep, keep)
    np.save(tmp_path / "keep4.npy", keep[:4])
    cfg.keep = str(tmp_path / "keep4.npy")
    with pytest.raises(ConfigError, match="4 rows but .* holds 5 checkpoints"):
        _models_from_checkpoints(cfg, make, 20)


def test_checkpoints_with_another_class_count_are_refused_naming_the_file(tmp_path):
    from curvfast.errors import CheckpointError
    from curvfast.io import save_checkpoint
    from curvfast.models import build_model
    from curvfast.pipelines.mia.pipeline import _models_from_checkpoints

    folder = tmp_path / "ckpts"
    save_checkpoint(str(folder / "model_0.pt"), build_model("small_cnn", 10, 1, width=4), model="small_cnn")
    save_checkpoint(str(folder / "model_1.pt"), build_model("small_cnn", 100, 1, width=4), model="small_cnn")
    np.save(tmp_path / "keep.npy", balanced_keep(2, 20, 0))
    cfg = Config(checkpoint=str(folder), keep=str(tmp_path / "keep.npy"), width=4)
    make = lambda: build_model("small_cnn", 10, 1, width=4)  # noqa: E731
    with pytest.raises(CheckpointError, match=r"model_1\.pt.*does not fit.*--model"):
        _models_from_checkpoints(cfg, make, 20)


def test_augment_auto_uses_crop_flip_for_natural_images_only(tmp_path, monkeypatch):
    assert Config(dataset="cifar10").resolved_augment() == "crop-flip"
    assert Config(dataset="digits").resolved_augment() == "none"
    assert Config(dataset="cifar10", dp_epsilon=4.0).resolved_augment() == "none"
    with pytest.raises(ConfigError, match="augment must be one of"):
        Config(augment="rotate").resolved_augment()
    from curvfast.pipelines.mia import pipeline

    seen = {}
    real = pipeline.train_subset_models

    def spy(*args, **kwargs):
        seen["augment"] = kwargs.get("augment")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_subset_models", spy)
    cfg = Config(subset_size=40, shadows=4, targets=1, epochs=1, width=4, augment="crop-flip", signals=("loss",), quiet=True)
    results = run(cfg, out=tmp_path / "run")
    assert seen["augment"] is not None and results["settings"]["augment_used"] == "crop-flip"


# --- members and non-members: a swapped member set must fail ----------------------------------------------

def test_evaluation_scores_members_as_members(tmp_path):
    """Signals made so members sit 1.5σ above non-members: every attack clearly above 0.5, and the
    reported members are the keep rows of the targets."""
    rng = np.random.default_rng(9)
    keep = balanced_keep(12, 400, 3)
    mu, sigma = rng.normal(0, 3, 400), rng.uniform(0.5, 1.5, 400)
    conf = mu[None, :, None] + sigma[None, :, None] * (rng.normal(size=(12, 400, 1)) + 1.5 * keep[..., None])
    interchange.export_matrices(str(tmp_path / "mpm"), keep, {"conf": conf, "loss": -conf})
    cfg = Config(import_matrices=str(tmp_path / "mpm"), targets=2, attacks=("loss", "lira_online", "lira_offline", "watson"),
                 quiet=True)
    results = run(cfg, out=tmp_path / "run")
    auroc = {n: a["auroc"] for n, a in results["attacks"].items()}
    assert auroc["loss"] > 0.58  # a global threshold suffers from the per-sample spread of μ
    for name in ("lira_online", "lira_offline", "watson"):  # calibrated per sample (Φ(1.5/√2) = 0.86 with exact fits;
        assert auroc[name] > 0.72, (name, auroc[name])       # 5 IN / 5 OUT shadows per sample cost a few points)
    with np.load(tmp_path / "run" / "scores.npz") as z:
        np.testing.assert_array_equal(z["members"], keep[:2])


def test_end_to_end_attacks_find_members_of_an_overfit_target(tmp_path):
    """160 digits, models on 80 each for 30 epochs (train 100%, held-out ~83%): LOSS, LiRA and Mentr
    are clearly above chance for the true members. Swapping members and non-members fails this."""
    cfg = Config(subset_size=160, shadows=8, targets=2, epochs=30, width=16, signals=("loss", "conf", "mentr", "curv_exact"),
                 quiet=True)
    results = run(cfg, out=tmp_path / "run")
    assert results["accuracy"]["train_mean"] > 0.95 and results["accuracy"]["heldout_mean"] < 0.9
    auroc = {n: a["auroc"] for n, a in results["attacks"].items()}
    for name in ("loss", "mentr", "lira_online", "lira_offline", "sablayrolles"):
        assert auroc[name] > 0.7, (name, auroc[name])
    assert auroc["curv_exact_nll"] > 0.55


# --- the contract: DP-SGD models, import / export through run, a failed run ----------------------------------

def test_dp_run_trains_batchnorm_free_models_and_keeps_curv_exact(tmp_path):
    """Under --dp-epsilon every model is trained by common.dp with BatchNorm replaced by the identity, so the
    exact curvature signal stays available; the resolved config is recorded."""
    cfg = Config(subset_size=40, shadows=4, targets=1, epochs=1, width=4, signals=("loss", "curv_exact"), dp_epsilon=8.0, quiet=True)
    results = run(cfg, out=tmp_path / "run")
    assert results["settings"]["dp_epsilon"] == 8.0 and results["settings"]["dp_max_grad_norm"] == 1.0
    assert results["settings"]["augment_used"] == "none" and results["settings"]["views_used"] == ["identity"]
    assert np.isfinite(results["attacks"]["curv_exact_nll"]["auroc"])
    state = torch.load(tmp_path / "run" / "models" / "model_000.pt", weights_only=True)["state_dict"]
    assert not any("running_mean" in k for k in state)


def test_import_export_round_trip_through_run(tmp_path):
    """Signals imported from matrices and exported in LiRA's layout give the same AUROCs when imported back."""
    rng = np.random.default_rng(4)
    keep = balanced_keep(10, 200, 1)
    conf = rng.normal(size=(10, 200, 1)) + 0.8 * keep[..., None]
    interchange.export_matrices(str(tmp_path / "mpm"), keep, {"conf": conf})
    first = run(Config(import_matrices=str(tmp_path / "mpm"), targets=2, export_lira=str(tmp_path / "lira"), quiet=True),
                out=tmp_path / "a")
    again = run(Config(import_lira=str(tmp_path / "lira"), targets=2, quiet=True), out=tmp_path / "b")
    assert first["attacks"].keys() == again["attacks"].keys() and "lira_online" in first["attacks"]
    for name in first["attacks"]:
        assert first["attacks"][name]["auroc"] == again["attacks"][name]["auroc"]


def test_non_finite_auroc_fails_the_run_after_writing_results(tmp_path, monkeypatch, capsys):
    from curvfast.cli import main
    from curvfast.pipelines.mia import pipeline

    real = pipeline.attack_metrics
    monkeypatch.setattr(pipeline, "attack_metrics", lambda *a, **k: {**real(*a, **k), "auroc": float("nan")})
    keep = balanced_keep(10, 100, 1)
    interchange.export_matrices(str(tmp_path / "mpm"), keep, {"conf": np.random.default_rng(0).normal(size=(10, 100, 1))})
    assert main(["mia", "--import-matrices", str(tmp_path / "mpm"), "--targets", "2", "--out", str(tmp_path / "r")]) == 1
    assert "no finite AUROC" in capsys.readouterr().err
    written = read_results(tmp_path / "r")  # strict JSON: the undefined AUROCs are null
    assert written["attacks"] and all(a["auroc"] is None for a in written["attacks"].values())


# --- paper scale: any dataset, device, presets, streaming --------------------------------------------------

def test_smoke_preset_on_a_cifar_shaped_folder_with_normalisation_and_augmentation(tmp_path, cifar_folder):
    from curvfast.cli import main

    out = tmp_path / "run"
    assert main(["mia", "--preset", "smoke", "--dataset", "imagefolder", "--root", str(cifar_folder), "--normalize", "cifar10",
                 "--augment", "crop-flip", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    res = read_results(out)
    s = res["settings"]
    assert (s["dataset"], s["normalize"], s["augment"], s["device"], s["split"]) == ("imagefolder", "cifar10", "crop-flip", "cpu", "train")
    assert (s["shadows"], s["subset_size"], s["augment_used"], s["views_used"]) == (4, 100, "crop-flip", ["identity", "hflip"])
    assert res["population"] == {**res["population"], "samples": 100, "models": 5}
    for name in ("loss", "lira_online", "curv_zo_nll", "curv_zo_lr"):
        assert 0.0 <= res["attacks"][name]["auroc"] <= 1.0
    from curvfast.io import load_checkpoint

    state = load_checkpoint(str(out / "models" / "model_000.pt"))["state_dict"]
    assert "mean" in state and "std" in state  # the normalisation lives inside the saved model
    assert 0.0 <= res["accuracy"]["train_mean"] <= 1.0


def test_streamed_signals_match_the_whole_tensor_and_accuracy(digits_small):
    """compute_signals over a DataLoader (any batch size) equals the per-model tensor path; correct[m]
    is the plain-image accuracy of model m."""
    from torch.utils.data import DataLoader, TensorDataset

    from curvfast.models import build_model
    from curvfast.pipelines.mia.signals import compute_signals

    x, y = digits_small.dataset.images[:30], digits_small.dataset.targets[:30]
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model("small_cnn", 10, 1, width=8).eval())
    ids = torch.arange(50, 80)
    kw = dict(signals=("loss", "conf", "curv_exact"), views=("hflip",), probes=2, indices=ids)
    streamed, correct = compute_signals(models, DataLoader(TensorDataset(x, y), batch_size=7), **kw)
    for m, model in enumerate(models):
        alone = model_signals(model, x, y, batch_size=30, **kw)
        for k in alone:
            np.testing.assert_allclose(streamed[k][m], alone[k], rtol=1e-5, atol=1e-6)
        with torch.no_grad():
            np.testing.assert_array_equal(correct[m], (model(x).argmax(1) == y).numpy())
    with pytest.raises(DataError, match="indices has 30 entries"):
        compute_signals(models, TensorDataset(x[:20], y[:20]), **kw)


def test_a_cuda_device_without_a_gpu_is_refused(tmp_path, capsys, monkeypatch):
    from curvfast.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["mia", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
