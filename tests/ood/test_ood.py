"""OoD detection: metrics vs sklearn, every detector on a constructed case (float64 references),
norm-scaling's per-class statistics, VRM batch generation, overhead counters, the CLI end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from curvfast.errors import ConfigError, DataError, NonFiniteError, UnknownNameError, UnsupportedModelError
from curvfast.ood import (
    KNN, MSP, ODIN, VRM, Energy, Mahalanobis, MaxLogit, ModelNotSetError, NormScaling, NormScalingFeatures,
    OutputExtractor, RequiresFittingError, UnscaledClassWarning, collect_outputs, ood_metrics, per_class_statistic,
    vrm_batch,
)
from curvfast.pipelines.ood.overhead import count_parameters, inference_flops, state_bytes, train_step_cost
from curvfast.cli import main
from tests.conftest import run_smoke_on_folder

TOL = 1e-12  # float64 closed forms


pytestmark = pytest.mark.usefixtures("one_thread")


def _linear_model(d: int = 4, k: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 5), nn.ReLU(), nn.Linear(5, k)).double().eval()


# -- metrics ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_ood_metrics_match_sklearn(seed):
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    rng = np.random.default_rng(seed)
    ind = np.round(rng.normal(0, 1, 300), 1)  # rounding makes ties
    ood = np.round(rng.normal(1, 1, 200), 1)
    got = ood_metrics(ind, ood)
    s = np.r_[ind, ood]
    is_ood = np.r_[np.zeros(300), np.ones(200)]
    assert got["auroc"] == pytest.approx(roc_auc_score(is_ood, s), abs=1e-12)
    assert got["aupr_out"] == pytest.approx(average_precision_score(is_ood, s), abs=1e-12)
    assert got["aupr_in"] == pytest.approx(average_precision_score(1 - is_ood, -s), abs=1e-12)
    fpr, tpr, _ = roc_curve(1 - is_ood, -s)  # ID positive: FPR = OoD accepted
    assert got["fpr95"] == pytest.approx(fpr[np.searchsorted(tpr, 0.95, side="left")], abs=1e-12)


def test_ood_metrics_direction():
    perfect = ood_metrics([0.0, 0.1, 0.2], [1.0, 2.0])
    assert perfect == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    assert ood_metrics([1.0, 2.0], [0.0, 0.1])["auroc"] == 0.0  # higher score must mean OoD


# -- logit detectors -----------------------------------------------------------------------------
def test_logit_detectors_closed_forms():
    z = torch.tensor([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, -1.0, 0.5]], dtype=torch.float64)
    p = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
    torch.testing.assert_close(MSP().predict_logits(z), -p.max(1).values, atol=TOL, rtol=0)
    torch.testing.assert_close(MaxLogit().predict_logits(z), torch.tensor([-10.0, -1.0, -2.0], dtype=torch.float64))
    torch.testing.assert_close(Energy(None, 2.0).predict_logits(z), -2.0 * torch.log(torch.exp(z / 2).sum(1)), atol=TOL, rtol=0)
    assert MSP().predict_logits(z)[1] == pytest.approx(-1 / 3)  # uniform logits: the most OoD
    assert MSP().predict_logits(z).argmax() == 1


def test_odin_perturbation_matches_manual_gradient():
    model = _linear_model()
    x = torch.randn(6, 1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    det = ODIN(model, temperature=10.0, eps=0.05)

    def ce(xi):
        z = model(xi.unsqueeze(0)) / 10.0
        return -torch.log_softmax(z, 1)[0, z.argmax()]

    grads = torch.stack([torch.func.grad(ce)(xi) for xi in x])
    x_tilde = x - 0.05 * grads.sign()
    expected = -torch.softmax(model(x_tilde) / 10.0, 1).max(1).values
    torch.testing.assert_close(det.predict(x), expected, atol=TOL, rtol=0)
    # the perturbation raises the (tempered) top softmax score, i.e. lowers the OoD score
    assert (det.predict(x) <= ODIN(model, 10.0, 0.0).predict(x) + 1e-12).all()
    # on saved logits ODIN is temperature-scaled MSP
    torch.testing.assert_close(ODIN(None, 10.0).predict_logits(model(x)), -torch.softmax(model(x) / 10, 1).max(1).values)
    assert not model.training and all(p.requires_grad for p in model.parameters())


# -- feature detectors -------------------------------------------------------------------------
def test_mahalanobis_matches_numpy():
    rng = np.random.default_rng(0)
    mus = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0]])
    a = np.array([[1.0, 0.3, 0.0], [0.0, 0.5, 0.2], [0.0, 0.0, 2.0]])
    y = np.repeat([0, 1], 200)
    h = mus[y] + rng.normal(size=(400, 3)) @ a
    det = Mahalanobis().fit_features(torch.from_numpy(h), torch.from_numpy(y))
    cen = h - np.stack([h[y == c].mean(0) for c in range(2)])[y]
    prec = np.linalg.inv(cen.T @ cen / 400)
    q = rng.normal(size=(7, 3)) * 3
    means = np.stack([h[y == c].mean(0) for c in range(2)])
    ref = np.min([np.einsum("nd,de,ne->n", q - m, prec, q - m) for m in means], axis=0)
    np.testing.assert_allclose(det.predict_features(torch.from_numpy(q)).numpy(), ref, rtol=1e-10)
    assert det.predict_features(torch.from_numpy(means)).abs().max() < 1e-10  # a class mean is at distance 0


def test_knn_matches_brute_force():
    rng = np.random.default_rng(1)
    bank, q = rng.normal(size=(50, 4)), rng.normal(size=(9, 4))
    det = KNN(k=5).fit_features(torch.from_numpy(bank))
    u = q / np.linalg.norm(q, axis=1, keepdims=True)
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    ref = np.sort(np.linalg.norm(u[:, None] - b[None], axis=2), axis=1)[:, 4]
    np.testing.assert_allclose(det.predict_features(torch.from_numpy(q)).numpy(), ref, atol=1e-7)
    assert det.predict_features(torch.from_numpy(bank[:1] * 7.0))[0] < ref.max()  # scale-invariant
    with pytest.raises(DataError, match="k=60"):
        KNN(k=60).fit_features(torch.from_numpy(bank))


# -- norm-scaling ------------------------------------------------------------------------------
def test_norm_scaling_statistic_is_per_class():
    # class 0's own logits (column 0 of class-0 rows): 2, 4; class 1's own logits: 10, 30.
    # Other entries are large on purpose: they must not enter any class's statistic.
    z = torch.tensor([[2.0, 99.0], [4.0, 50.0], [77.0, 10.0], [88.0, 30.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    torch.testing.assert_close(per_class_statistic(z, y, "mean"), torch.tensor([3.0, 20.0], dtype=torch.float64))
    torch.testing.assert_close(per_class_statistic(z, y, "max"), torch.tensor([4.0, 30.0], dtype=torch.float64))
    torch.testing.assert_close(per_class_statistic(z, y, "rms"), torch.tensor([10.0**0.5, 500.0**0.5], dtype=torch.float64))
    torch.testing.assert_close(per_class_statistic(z, y, "std"), torch.tensor([1.0, 10.0], dtype=torch.float64))
    det = NormScaling(None, "mean").fit_logits(z, y)
    q = torch.tensor([[3.0, 20.0], [6.0, 0.0]], dtype=torch.float64)
    # z~_c = z_c * s_bar / s_c with s = (3, 20), s_bar = 11.5: a "typical" logit of each class becomes equal
    torch.testing.assert_close(det.scaled_logits(q), torch.tensor([[11.5, 11.5], [23.0, 0.0]], dtype=torch.float64))
    assert det.predict_logits(q)[0] == pytest.approx(0.0)  # p = 1/2: the score log((1 - p) / p) is 0


def test_norm_scaling_none_is_msp_and_weight_norm_reads_the_classifier():
    model = _linear_model(k=3)
    x = torch.randn(30, 1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(30) % 3
    data = torch.utils.data.TensorDataset(x, y)
    none = NormScaling(model, "none").fit(data)  # its score r = log((1 - p) / p) of MSP's p: -p = -1 / (1 + e^r)
    torch.testing.assert_close(-1 / (1 + none.predict(x).exp()), MSP(model).predict(x), atol=TOL, rtol=0)
    wn = NormScaling(model, "weight_norm").fit(data)
    torch.testing.assert_close(wn.scale, model[-1].weight.detach().norm(dim=1))
    cm = NormScalingFeatures(model, "weight_norm").fit(data)
    h = model[:-1](x).detach()
    means = torch.stack([h[y == c].mean(0) for c in range(3)])
    torch.testing.assert_close(cm.similarity(h), h @ means.T)
    torch.testing.assert_close(cm.scale, means.norm(dim=1))


def test_norm_scaling_errors():
    with pytest.raises(UnknownNameError, match="statistic"):
        NormScaling(None, "median")
    z = torch.tensor([[-1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    with pytest.warns(UnscaledClassWarning, match="classes \\[0\\]"):  # a mean <= 0: class 0 left unscaled
        assert NormScaling(None, "mean").fit_logits(z, torch.tensor([0, 1])).unscaled_classes == [0]
    with pytest.warns(UnscaledClassWarning, match="classes \\[1\\]"):  # no sample of class 1 (-1: an OoD sample)
        NormScaling(None, "mean").fit_logits(z.abs(), torch.tensor([0, -1]))
    with pytest.raises(DataError, match="labels must lie in \\[0, 2\\)"):
        NormScaling(None, "mean").fit_logits(z, torch.tensor([0, 2]))
    with pytest.raises(RequiresFittingError, match="not fitted"):
        NormScaling(_linear_model()).predict(torch.zeros(1, 1, 4, dtype=torch.float64))
    with pytest.raises(NonFiniteError, match="temperature must be finite"):
        NormScaling(None, temperature=float("nan"))
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        Energy(None, temperature=0.0)


# -- VRM -----------------------------------------------------------------------------------------
def test_vrm_batch_mixes_within_class_and_labels_aux():
    k, b = 3, 60
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, k, (b,), generator=gen)
    x = torch.rand(b, 1, 4, 4, generator=gen, dtype=torch.float64)
    vb = vrm_batch(x, y, k, np.random.default_rng(0), alpha=1.0, aux_fraction=0.5, noise_mean=0.5, noise_std=0.2)
    m = 30
    assert vb.inputs.shape == (b + m, 1, 4, 4) and vb.targets.shape == (b + m, k + 1)
    # intra-class mixup: partners share the label, inputs are the stated convex combinations, hard targets
    assert (y[vb.partner] == y).all()
    assert (vb.partner != torch.arange(b)).float().mean() > 0.5  # a permutation, not the identity
    lam = vb.lam.view(-1, 1, 1, 1)
    torch.testing.assert_close(vb.inputs[:b], lam * x + (1 - lam) * x[vb.partner], atol=TOL, rtol=0)
    torch.testing.assert_close(vb.targets[:b], torch.eye(k + 1, dtype=torch.float64)[y])
    # noise mixup: target mass 1 - mu on the auxiliary class K, mu on the source's class
    src, mu = vb.noise_source, vb.noise_lam
    assert len(set(src.tolist())) == m
    torch.testing.assert_close(vb.targets[b:, k], 1 - mu)
    torch.testing.assert_close(vb.targets[b:].gather(1, y[src].unsqueeze(1)).squeeze(1), mu)
    torch.testing.assert_close(vb.targets.sum(1), torch.ones(b + m, dtype=torch.float64))
    keep = (1 - mu) > 0.2
    noise = (vb.inputs[b:] - mu.view(-1, 1, 1, 1) * x[src]) / (1 - mu).view(-1, 1, 1, 1)
    noise = noise[keep].flatten()
    assert abs(noise.mean().item() - 0.5) < 0.05 and abs(noise.std().item() - 0.2) < 0.04  # ~400 draws: 4+ sigma
    with pytest.raises(DataError, match="labels must lie"):
        vrm_batch(x, y + 1, k, np.random.default_rng(0))


def test_vrm_scores():
    z = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]], dtype=torch.float64)  # K = 2 real classes + aux
    p = torch.softmax(z, 1)
    torch.testing.assert_close(VRM(None, "aux", num_classes=2).predict_logits(z), p[:, 2])
    torch.testing.assert_close(VRM(None, "msp").fit_logits(z, torch.tensor([0, 1])).predict_logits(z), -p[:, :2].max(1).values)
    assert VRM(num_classes=2).predict_logits(z).argmax() == 1
    assert VRM.predict_class(z).tolist() == [0, 0]


# -- API on a real model, overhead ---------------------------------------------------------------
def test_fit_on_model_equals_fit_on_saved_outputs(digits_small):
    from curvfast.models import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, width=8).eval()
    loader = torch.utils.data.DataLoader(digits_small, batch_size=40)
    extractor = OutputExtractor(model)
    assert extractor.feature_layer == "fc"
    logits, feats, labels = collect_outputs(extractor, loader)
    x = torch.stack([digits_small[i][0] for i in range(10)])
    z, h = (t.detach() for t in extractor(x))
    # untrained: own-class logits are not positive on average, so norm-scaling uses "rms" here
    for make in (Mahalanobis, KNN, lambda m: NormScalingFeatures(m, "mean")):
        fitted = make(model).fit(loader)
        torch.testing.assert_close(fitted.predict(x), make(None).fit_features(feats, labels).predict_features(h))
    fitted = NormScaling(model, "rms").fit(loader)
    torch.testing.assert_close(fitted.predict(x), NormScaling(None, "rms").fit_logits(logits, labels).predict_logits(z))


def test_overhead_counters():
    from curvfast.models import build_model

    torch.manual_seed(0)
    base, aux = build_model("small_cnn", 4, 1, width=8), build_model("small_cnn", 5, 1, width=8)
    assert count_parameters(aux) - count_parameters(base) == 8 + 1  # one extra classifier row and bias
    x = torch.rand(16, 1, 8, 8)
    y = torch.arange(16) % 4
    vb = vrm_batch(x, y, 4, np.random.default_rng(0), aux_fraction=0.5)
    c_base, c_vrm = train_step_cost(base, x, y), train_step_cost(aux, vb.inputs, vb.targets)
    assert c_vrm["flops"] / c_base["flops"] == pytest.approx(24 / 16, rel=0.01)  # FLOPs scale with the batch
    assert c_vrm["activation_bytes"] / c_base["activation_bytes"] == pytest.approx(24 / 16, rel=0.05)
    msp, odin = MSP(base.eval()), ODIN(base.eval())
    assert inference_flops(odin, x) == pytest.approx(3 * inference_flops(msp, x), rel=0.01)  # fwd + bwd (2x) + fwd
    assert state_bytes(KNN(k=2).fit_features(torch.rand(20, 8))) == 20 * 8 * 8


def test_cli_end_to_end(tmp_path):
    out = tmp_path / "ood"
    rc = main(["ood", "--preset", "smoke", "--out", str(out), "--id-classes", "0,1,2", "--quiet"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    photos = res["settings"]["photo_sources"]  # the pinned photo list, with its source and pixel hashes
    assert [p["source"] for p in photos][:3] == ["sklearn.datasets.load_sample_image('china.jpg')",
                                                 "sklearn.datasets.load_sample_image('flower.jpg')", "skimage.data.astronaut()"]
    assert len(photos) == 10 and all(len(p["sha256"]) == 64 for p in photos)
    for name in ("msp", "max_logit", "energy", "odin", "mahalanobis", "knn", "norm_scaling", "norm_scaling_features",
                 "vrm", "vrm_msp"):
        entry = res["detectors"][name]
        assert set(entry["per_set"]) == {"heldout_classes", "photo_patches", "uniform_noise", "inverted", "shuffled"}
        for metric in ("auroc", "aupr_in", "aupr_out", "fpr95"):
            vals = [entry["per_set"][s][metric] for s in entry["per_set"]]
            assert 0.0 <= entry[metric] <= 1.0 and entry[metric] == pytest.approx(np.mean(vals))
    assert res["detectors"]["mahalanobis"]["per_set"]["uniform_noise"]["auroc"] > 0.9  # far OoD is easy
    assert len(res["ablation"]["norm_scaling"]) + len(res["ablation"]["failures"]) == 12  # 6 statistics x 2 sources
    assert res["overhead"]["detectors"]["vrm"]["model_parameters"] - res["overhead"]["detectors"]["msp"]["model_parameters"] == 33
    arrays = np.load(out / "scores.npz")
    assert arrays["vrm/id"].shape == (res["settings"]["id_test"],)
    assert (out / "roc.png").stat().st_size > 0 and (out / "ood_examples.png").stat().st_size > 0
    assert main(["ood", "--out", str(out), "--id-classes", "0", "--quiet"]) == 2  # one ID class: user error
    assert main(["ood", "--out", str(out), "--vrm-aux-fraction", "2", "--quiet"]) == 2  # checked before training
    assert main(["ood", "--out", str(out), "--knn-k", "0", "--quiet"]) == 2


def test_detectors_agree_with_pytorch_ood():
    """Cross-check against pytorch-ood 0.4.0 (float32 there, hence the tolerances)."""
    pood = pytest.importorskip("pytorch_ood.detector")
    model = _linear_model(k=4).float()
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(40, 1, 4, generator=gen), torch.arange(40) % 4
    for ours, theirs in ((MSP(model), pood.MaxSoftmax(model)), (MaxLogit(model), pood.MaxLogit(model)),
                         (Energy(model), pood.EnergyBased(model))):
        torch.testing.assert_close(ours.predict(x).float(), theirs.predict(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ODIN(model, 1000.0, 0.01).predict(x).float(), pood.ODIN(model, eps=0.01).predict(x),
                               atol=1e-6, rtol=1e-4)
    h = model[:-1](x).detach()
    theirs = pood.Mahalanobis(None).fit_features(h, y).predict_features(h)
    ours = Mahalanobis().fit_features(h, y).predict_features(h)
    # pytorch-ood sums the centred outer products without dividing by N and scores 0.5 d^2: theirs = d^2 / (2N)
    torch.testing.assert_close(ours.float() / (2 * 40), theirs, atol=1e-6, rtol=1e-3)


def test_api_errors_name_the_fix():
    model = _linear_model()
    with pytest.raises(ConfigError, match="feature_layer='nope' is not a module"):
        Mahalanobis(model, feature_layer="nope")
    with pytest.raises(ModelNotSetError, match="needs the model"):
        KNN().fit(torch.utils.data.TensorDataset(torch.zeros(3, 1, 4), torch.zeros(3)))
    with pytest.raises(ModelNotSetError, match="needs the model"):
        MSP().predict(torch.zeros(1, 1, 4, dtype=torch.float64))
    with pytest.raises(DataError, match="needs features"):
        Mahalanobis().fit_features(None, torch.zeros(3))
    with pytest.raises(DataError, match="labels"):
        Mahalanobis().fit_features(torch.zeros(3, 2))
    with pytest.raises(UnsupportedModelError, match="K \\+ 1 = 3"):
        VRM(num_classes=2).predict_logits(torch.zeros(2, 2))
    with pytest.raises(DataError, match="DataLoader or a map-style Dataset"):
        KNN(model).fit([1, 2, 3])
    with pytest.raises(ConfigError, match="k must be a positive int"):
        KNN(model, k=0)


def test_cli_runs_on_a_cifar_shaped_folder_with_normalisation_and_augmentation(cifar_folder, tmp_path):
    """Paper-scale path on the CPU: an RGB image folder, normalisation inside the model, crop-flip training."""
    out = tmp_path / "ood"
    res = run_smoke_on_folder("ood", cifar_folder, out, "--epochs", "2")
    settings = res["settings"]
    assert settings["seeds"] == [0]
    assert settings["heldout_classes"] == [6, 7, 8, 9] and settings["id_test"] == 60 and settings["heldout_test"] == 40
    assert 0.0 <= res["detectors"]["msp"]["auroc"] <= 1.0 and (out / "ood_examples.png").stat().st_size > 0


def test_id_classes_are_checked_against_the_dataset(cifar_folder, tmp_path):
    assert main(["ood", "--dataset", "imagefolder", "--root", str(cifar_folder), "--id-classes", "0,10", "--quiet",
                 "--out", str(tmp_path)]) == 2
