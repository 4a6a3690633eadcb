"""pytorch-ood 0.4.0's contracts for its detectors, checked of curvfast's (our tests, their expectations).

What pytorch-ood's own suite and base classes expect of a detector, written down here:

- a smoke test: a random classifier (a tanh hidden layer, dropout, a linear head), ``fit`` on a few random
  points through a small-batch loader, ``predict`` gives one finite score per sample, for many seeds;
  labels may be floats holding whole numbers;
- the taxonomy: a logits detector has ``fit_logits``/``predict_logits`` and no feature methods, a features
  detector the reverse;
- ``fit`` drops samples labelled < 0 (its marker for OoD samples, ``pytorch_ood.utils.is_known``);
- scores in the model's dtype (float32 for a float32 model);
- a logits detector needs only the model's output (no ``nn.Linear``); a features detector takes the
  features from ``feature_layer=``.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from curvfast import ood
from curvfast.errors import ConfigError
from curvfast.ood import (
    KNN, MSP, VRM, FeaturesDetector, LogitsDetector, Mahalanobis, NormScaling, NormScalingFeatures, ood_metrics,
)

SEEDS = range(20)


pytestmark = pytest.mark.usefixtures("one_thread")


class TanhClassifier(nn.Module):
    """The shape of pytorch-ood's test model: linear -> tanh -> dropout -> linear head (random weights)."""

    def __init__(self, d_in: int = 10, hidden: int = 10, classes: int = 3):
        super().__init__()
        self.hidden = nn.Linear(d_in, hidden)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.drop(torch.tanh(self.hidden(x))))


class NoLinear(nn.Module):
    """Logits from a bare parameter product: a model without any nn.Linear."""

    def __init__(self, d_in: int = 10, classes: int = 3):
        super().__init__()
        self.w = nn.Parameter(torch.randn(d_in, classes))

    def forward(self, x):
        return torch.tanh(x) @ self.w


def _fits(cls) -> dict:
    """Constructor settings that let every registered detector fit on 24 points."""
    return {"k": 3} if cls is KNN else {}


def _plain_detectors():
    return [cls for cls in ood.DETECTORS.values() if not cls.auxiliary_class]


def _smoke_data(seed: int, n: int = 24, classes: int = 3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=gen), torch.randint(0, classes, (n,), generator=gen)


@pytest.mark.parametrize("cls", _plain_detectors(), ids=lambda c: c.name)
def test_smoke_random_models_and_seeds(cls):
    """Random model, 24 random points in batches of 6, 20 seeds: one finite float32 score per sample."""
    for seed in SEEDS:
        torch.manual_seed(seed)
        model = TanhClassifier()
        x, y = _smoke_data(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ood.UnscaledClassWarning)  # random logits: some classes have no scale
            det = cls(model, **_fits(cls)).fit(DataLoader(TensorDataset(x, y), batch_size=6))
        s = det.predict(torch.randn(32, 10))
        assert s.shape == (32,) and s.dtype == torch.float32 and torch.isfinite(s).all(), (cls.name, seed)


def test_smoke_vrm_on_a_random_network_with_an_auxiliary_output():
    for seed in SEEDS:
        torch.manual_seed(seed)
        model = TanhClassifier(classes=4)  # 3 real classes + the auxiliary one
        x, y = _smoke_data(seed)
        for variant in ("aux", "msp"):
            s = VRM(model, variant).fit(DataLoader(TensorDataset(x, y), batch_size=6)).predict(torch.randn(8, 10))
            assert s.shape == (8,) and s.dtype == torch.float32 and torch.isfinite(s).all()


@pytest.mark.parametrize("cls", [c for c in _plain_detectors() if c.requires_fit], ids=lambda c: c.name)
def test_float_labels_at_batch_1(cls):
    """pytorch-ood's Mahalanobis test: float labels 0./1. for a 3-output model, batch size 1 (class 2 never seen)."""
    torch.manual_seed(123)
    model = TanhClassifier()
    x = torch.randn(20, 10)
    y = torch.cat([torch.zeros(10), torch.ones(10)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ood.UnscaledClassWarning)
        det = cls(model, **_fits(cls)).fit(DataLoader(TensorDataset(x, y)))
    assert torch.isfinite(det.predict(10 * torch.ones(10, 10))).all()


def test_taxonomy():
    """Logits detectors expose only the logits methods, features detectors only the features ones; a detector of
    the inputs themselves (the curvature detector differentiates the model at x) exposes neither."""
    model = TanhClassifier()
    for cls in ood.DETECTORS.values():
        det = cls(model)
        logits, features = isinstance(det, LogitsDetector), isinstance(det, FeaturesDetector)
        assert not (logits and features), cls.name
        assert logits or features or cls is ood.InputCurvature, cls.name
        for name in ("fit_logits", "predict_logits"):
            assert hasattr(det, name) == logits, (cls.name, name)
        for name in ("fit_features", "predict_features", "encoder"):
            assert hasattr(det, name) == features, (cls.name, name)
    assert isinstance(NormScaling(model), LogitsDetector) and isinstance(VRM(model), LogitsDetector)
    assert isinstance(NormScalingFeatures(model), FeaturesDetector)


def test_taxonomy_as_pytorch_ood_sees_it():
    api = pytest.importorskip("pytorch_ood.api")
    model = TanhClassifier()
    for cls in ood.DETECTORS.values():
        det = cls(model)
        assert isinstance(det, api.LogitsDetector) == isinstance(det, LogitsDetector), cls.name
        assert isinstance(det, api.FeaturesDetector) == isinstance(det, FeaturesDetector), cls.name


def _with_ood_rows(x, y, seed=9, n=10):
    """The same data with ``n`` junk samples labelled -1 (pytorch-ood's OoD label) interleaved."""
    gen = torch.Generator().manual_seed(seed)
    junk = 50 * torch.randn(n, x.shape[1], generator=gen)
    xs, ys = torch.cat([junk[:5], x, junk[5:]]), torch.cat([-torch.ones(5), y.float(), -torch.ones(n - 5)])
    return xs, ys


@pytest.mark.parametrize("cls", [c for c in _plain_detectors() if c.requires_fit], ids=lambda c: c.name)
def test_negative_labels_are_dropped_in_fit(cls):
    torch.manual_seed(0)
    model = TanhClassifier().eval()
    x, y = _smoke_data(0, n=30)
    xo, yo = _with_ood_rows(x, y)
    probe = torch.randn(16, 10)
    clean = cls(model, **_fits(cls)).fit(DataLoader(TensorDataset(x, y), batch_size=6)).predict(probe)
    mixed = cls(model, **_fits(cls)).fit(DataLoader(TensorDataset(xo, yo), batch_size=6)).predict(probe)
    torch.testing.assert_close(mixed, clean)
    with torch.no_grad():  # and in the saved-output methods
        z, h = model(xo), torch.tanh(model.hidden(xo))
    saved = cls(None, **_fits(cls))
    saved = saved.fit_logits(z, yo) if isinstance(saved, LogitsDetector) else saved.fit_features(h, yo)
    with torch.no_grad():
        z_probe, h_probe = model(probe), torch.tanh(model.hidden(probe))
    got = saved.predict_logits(z_probe) if isinstance(saved, LogitsDetector) else saved.predict_features(h_probe)
    torch.testing.assert_close(got, clean)


def test_dropping_matches_pytorch_ood_mahalanobis():
    """pytorch-ood drops the -1 samples in fit; the fitted scores agree (theirs = ours / (2N), tests/ood/test_ood.py)."""
    pood = pytest.importorskip("pytorch_ood.detector")
    torch.manual_seed(0)
    model = TanhClassifier().eval()
    x, y = _smoke_data(1, n=40)
    xo, yo = _with_ood_rows(x, y)
    loader = DataLoader(TensorDataset(xo, yo.long()), batch_size=6)
    encoder = lambda t: torch.tanh(model.hidden(t))  # noqa: E731
    theirs = pood.Mahalanobis(encoder).fit(loader)
    ours = Mahalanobis(model).fit(loader)
    probe = torch.randn(8, 10)
    torch.testing.assert_close(ours.predict(probe) / (2 * 40), theirs.predict(probe), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("cls", _plain_detectors(), ids=lambda c: c.name)
def test_scores_follow_the_model_dtype(cls):
    x, y = _smoke_data(0)
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        model = TanhClassifier().to(dtype).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ood.UnscaledClassWarning)
            det = cls(model, **_fits(cls)).fit(DataLoader(TensorDataset(x.to(dtype), y), batch_size=6))
        assert det.predict(x[:4].to(dtype)).dtype == dtype, (cls.name, dtype)


@pytest.mark.parametrize("cls", [c for c in ood.DETECTORS.values() if issubclass(c, LogitsDetector)],
                         ids=lambda c: c.name)
def test_logits_detectors_need_no_linear_layer(cls):
    torch.manual_seed(0)
    model = NoLinear(classes=4).eval()
    x, y = _smoke_data(0)  # labels 0..2: VRM reads class 3 as the auxiliary one
    kw = {"eps": 0.0} if cls is ood.ODIN else {}  # ODIN's perturbation needs the model, not only its logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ood.UnscaledClassWarning)
        det = cls(model, **kw).fit(DataLoader(TensorDataset(x, y), batch_size=6))
        with torch.no_grad():
            expected = cls(None, **kw).fit_logits(model(x), y).predict_logits(model(x[:5]))
    torch.testing.assert_close(det.predict(x[:5]), expected)


def test_feature_layer():
    """Features detectors read the input of ``feature_layer``; norm-scaling's weight_norm reads its rows."""
    torch.manual_seed(0)
    model = TanhClassifier().eval()
    x, y = _smoke_data(0)
    loader = DataLoader(TensorDataset(x, y), batch_size=6)
    for cls in (Mahalanobis, NormScalingFeatures, KNN):
        kw = _fits(cls)
        torch.testing.assert_close(cls(model, feature_layer="drop", **kw).fit(loader).predict(x),
                                   cls(model, **kw).fit(loader).predict(x))  # dropout's input = the head's input
    wn = NormScaling(model, "weight_norm", feature_layer="head").fit(loader)
    torch.testing.assert_close(wn.scale, model.head.weight.detach().double().norm(dim=1))
    with pytest.raises(TypeError, match="feature_layer"):
        MSP(model, feature_layer="head")  # MSP reads only the logits
    with pytest.raises(ConfigError, match="nn.Linear"):
        NormScaling(model, "weight_norm", feature_layer="drop")
    with pytest.raises(ConfigError, match="nn.Linear"):
        NormScaling(NoLinear(), "weight_norm")


# -- norm-scaling: a class without a usable scale, ties -------------------------------------------
def test_norm_scaling_leaves_a_class_without_a_usable_statistic_unscaled():
    """A class with no sample, or whose statistic is <= 0, gets the mean of the others' statistics (z~_c = z_c)."""
    z = torch.tensor([[3.0, -1.0, 0.5], [1.0, 0.0, 0.2], [0.5, -2.0, 0.1], [0.0, -4.0, 0.3]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])  # class 1's own logits -2, -4: mean < 0; class 2 has no sample
    with pytest.warns(ood.UnscaledClassWarning, match=r"classes \[1, 2\]"):
        det = NormScaling(None, "mean").fit_logits(z, y)
    assert det.unscaled_classes == [1, 2]
    torch.testing.assert_close(det.scale, torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(det.scaled_logits(z), z)
    with pytest.warns(ood.UnscaledClassWarning):
        none_valid = NormScaling(None, "mean").fit_logits(-z.abs() - 1, y)  # every own-class mean < 0: plain MSP
    torch.testing.assert_close(none_valid.predict_logits(z), NormScaling(None, "none").fit_logits(z, y).predict_logits(z))


def test_norm_scaling_score_is_the_log_odds_of_msp():
    """score = log((1 - p) / p), p = max softmax(z~/T): increasing in MSP's -p, so the same ranking, without saturation."""
    gen = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(50, 5, generator=gen, dtype=torch.float64)
    y = torch.arange(50) % 5
    det = NormScaling(None, "none", temperature=2.0).fit_logits(z, y)
    p = torch.softmax(z / 2.0, 1).amax(1)
    torch.testing.assert_close(det.predict_logits(z), torch.log((1 - p) / p))
    big = z.float() * 40  # float32 MSP saturates to exactly -1 here; the log-odds keep every sample apart
    msp = MSP(None).predict_logits(big)
    s = det.predict_logits(big)
    assert (msp == -1).float().mean() > 0.5 and s.dtype == torch.float32
    assert len(set(s.tolist())) == len(s)
    exact = -torch.softmax(big.double() / 2.0, 1).amax(1)  # float64 -p, where it still resolves the samples
    resolved = exact > -1
    assert 5 < resolved.sum() < len(s)
    order = exact[resolved].argsort()
    assert (s[resolved][order].diff() >= 0).all()


def test_norm_scaling_features_does_not_saturate():
    """Class-mean similarities h.mu_c are large (||h||^2 scale); the old -max softmax tied most ID samples at -1."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    h = 20 * torch.eye(4, 16)[y] + torch.randn(200, 16, generator=gen)  # well separated, confident classes
    h_ood = 20 * torch.randn(100, 16, generator=gen).abs() / 4
    det = NormScalingFeatures(None).fit_features(h.float(), y)
    s_id, s_ood = det.predict_features(h.float()), det.predict_features(h_ood.float())
    assert s_id.dtype == torch.float32
    assert torch.unique(s_id).numel() == len(s_id)  # no ties
    sim = det.similarity(h.double())
    old = -torch.softmax(sim * (det.scale.mean() / det.scale), 1).amax(1).float()
    assert (old == -1).float().mean() > 0.9  # what the MSP-form score gave: ~all ID samples tied
    sim_ood = det.similarity(h_ood.double())
    old_ood = -torch.softmax(sim_ood * (det.scale.mean() / det.scale), 1).amax(1).float()
    new, before = ood_metrics(s_id.numpy(), s_ood.numpy()), ood_metrics(old.numpy(), old_ood.numpy())
    assert new["auroc"] > before["auroc"] and new["fpr95"] < before["fpr95"], (new, before)
