"""mia's published options against faithful re-implementations of the published Curvature Clues code.

Sources (DeepakTatachar/Curvature-Clues): ``conditonal_mia_aug_cifar10.ipynb`` (the attack rules, balanced accuracy,
the 3 fixed targets), ``precompute_scores/precompute_cifar10_scores.py`` (the views, max probability, zo on the
normalised image), ``train/train_cifar10.py`` (MultiStepLR at 0.6 / 0.8 of the epochs), ``utils/load_dataset.py``
(``RandomCrop(padding=4)``: zero padding). The rules are re-written here from the notebooks, not imported.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import norm

from curvfast.pipelines.mia import attacks as A
from curvfast.pipelines.mia.evaluate import attack_metrics, attack_scores, balanced_accuracy_eer


def _published_fits(values, keep):
    """Per (sample, view): mean and nanvar (ddof 0) of the IN and OUT shadow values."""
    inside = np.where(keep[..., None], values, np.nan)
    outside = np.where(~keep[..., None], values, np.nan)
    return np.nanmean(inside, 0), np.nanvar(inside, 0), np.nanmean(outside, 0), np.nanvar(outside, 0)


def _notebook_likelihood_ratio(t, sh, keep, eps=1e-22):
    """The notebooks' get_likelihood_ratio: Σ_v likelihood(x, mean, var + eps) / (Σ_v ... + eps), var used as std."""
    mi, vi, mo, vo = _published_fits(sh, keep)
    inside = sum(norm.pdf(t[:, v], mi[:, v], vi[:, v] + eps) for v in range(t.shape[1]))
    outside = sum(norm.pdf(t[:, v], mo[:, v], vo[:, v] + eps) for v in range(t.shape[1]))
    return inside / (outside + eps)


def _data(seed=0, shadows=10, samples=12, views=2):
    rng = np.random.default_rng(seed)
    curv = rng.lognormal(size=(shadows, samples, views))
    keep = rng.random((shadows, samples)) < 0.5
    keep[:3], keep[3:6] = True, False  # at least three IN and three OUT shadows per sample
    return rng.lognormal(size=(samples, views)), curv, keep


def test_published_lr_uses_the_population_variance_as_the_standard_deviation():
    target, shadow, keep = _data()
    t, sh = np.log(target + A.CURVATURE_EPS), np.log(shadow + A.CURVATURE_EPS)
    got = A.curvature_lr(target, shadow, keep, published_quirk=True)
    np.testing.assert_allclose(got, _notebook_likelihood_ratio(t, sh, keep), rtol=1e-9)


def test_published_nll_uses_the_in_variance_for_both():
    target, shadow, keep = _data(1)
    t, sh = np.log(target + A.CURVATURE_EPS), np.log(shadow + A.CURVATURE_EPS)
    mi, vi, mo, _ = _published_fits(sh, keep)
    expected = (norm.logpdf(t, mi, vi + 1e-32) - norm.logpdf(t, mo, vi + 1e-32)).sum(1)  # -(Σ nll_in − Σ nll_out)
    np.testing.assert_allclose(A.curvature_nll(target, shadow, keep, published_quirk=True), expected, rtol=1e-9)


def test_the_default_rule_keeps_the_sample_variance():
    """Without the quirk: ddof = 1 and the standard deviation, per-view ratios summed."""
    target, shadow, keep = _data(2)
    t, sh = np.log(target + A.CURVATURE_EPS), np.log(shadow + A.CURVATURE_EPS)
    inside = np.where(keep[..., None], sh, np.nan)
    outside = np.where(~keep[..., None], sh, np.nan)
    si, so = np.nanstd(inside, 0, ddof=1), np.nanstd(outside, 0, ddof=1)
    ratio = norm.logpdf(t, np.nanmean(inside, 0), si) - norm.logpdf(t, np.nanmean(outside, 0), so)
    expected = np.log(np.exp(ratio).sum(1))
    np.testing.assert_allclose(A.curvature_lr(target, shadow, keep), expected, rtol=1e-9)


def test_published_lira_is_the_likelihood_ratio_of_the_logit_scaled_max_probability():
    """The notebooks' 'Carlini et al.': logit_scale(max prob) = log(p / (1 − p + eps) + eps), then the LR rule."""
    from curvfast.pipelines.mia.signals import logit_confidence

    rng = np.random.default_rng(3)
    logits = torch.randn(11, 16, 2, 5, dtype=torch.float64) * 2  # (models, samples, views, classes)
    p_max = torch.softmax(logits, -1).max(-1).values.numpy()
    published = np.log(p_max / (1 - p_max + 1e-22) + 1e-22)
    ours = logit_confidence(logits.reshape(-1, 5), logits.reshape(-1, 5).argmax(1)).reshape(11, 16, 2).numpy()
    np.testing.assert_allclose(ours, published, rtol=1e-9, atol=1e-9)  # the maxconf signal
    keep = rng.random((10, 16)) < 0.5
    keep[:2], keep[2:4] = True, False
    got = A.lira_published(ours[0], ours[1:], keep)
    np.testing.assert_allclose(got, _notebook_likelihood_ratio(published[0], published[1:], keep), rtol=1e-6)


def test_published_ye_is_the_out_loss_percentile_rule():
    rng = np.random.default_rng(4)
    loss = rng.exponential(size=(9, 30, 2))
    keep = rng.random((8, 30)) < 0.5  # the 8 shadows' memberships
    keep[:2], keep[2:4] = True, False
    threshold = np.nanpercentile(np.where(~keep, loss[1:, :, 0], np.nan), 1e-4 * 100, axis=0)  # alpha = 1e-4
    expected = -(loss[0, :, 0] - threshold)
    np.testing.assert_allclose(A.ye_published(loss[0, :, :1], loss[1:, :, :1], keep), expected, rtol=1e-12)
    assert not np.allclose(A.ye(loss[0, :, :1], loss[1:, :, :1], keep), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_accuracy_at_the_eer_threshold_is_the_notebooks(seed):
    from sklearn.metrics import balanced_accuracy_score, roc_curve

    rng = np.random.default_rng(seed)
    members = rng.random(300) < 0.5
    scores = np.round(rng.normal(size=300) + 0.6 * members, 1)  # ties: the ROC has straight runs
    fpr, tpr, thr = roc_curve(members, scores, pos_label=1)  # the notebook's call (drop_intermediate by default)
    optimal = thr[np.argmin(np.abs(fpr + tpr - 1))]
    expected = balanced_accuracy_score(members, (scores >= optimal).astype(int))
    assert balanced_accuracy_eer(scores, members) == pytest.approx(expected, abs=1e-12)
    report = attack_metrics(scores[None], members[None])
    assert report["balanced_accuracy_eer"] == pytest.approx(expected, abs=1e-12)
    assert report["balanced_accuracy"] >= report["balanced_accuracy_eer"]  # ours: the best threshold


def test_published_baseline_views_read_the_flipped_view_for_the_loss_and_the_identity_for_mentr():
    rng = np.random.default_rng(5)
    keep = rng.random((7, 20)) < 0.5
    keep[1:3], keep[3:5] = True, False
    signals = {"loss": rng.exponential(size=(7, 20, 2)), "mentr": rng.exponential(size=(7, 20, 2))}
    names = ["loss", "mentr", "watson", "sablayrolles", "ye"]
    views = ("identity", "hflip")
    published = attack_scores(signals, keep, [0], list(range(1, 7)), names, views=views, baseline_views="published")
    mean = attack_scores(signals, keep, [0], list(range(1, 7)), names, views=views)
    np.testing.assert_allclose(published["loss"][0], -signals["loss"][0, :, 1])  # the notebooks' aug 0: the flip
    np.testing.assert_allclose(published["mentr"][0], -signals["mentr"][0, :, 0])  # the Mentr script: the identity
    np.testing.assert_allclose(mean["loss"][0], -signals["loss"][0].mean(1))
    out = ~keep[1:]
    np.testing.assert_allclose(published["watson"][0], -(signals["loss"][0, :, 1] - (signals["loss"][1:, :, 1] * out).sum(0) / out.sum(0)))
    one_view = attack_scores({"loss": signals["loss"][..., :1]}, keep, [0], list(range(1, 7)), ["loss"],
                             views=("identity",), baseline_views="published")
    np.testing.assert_allclose(one_view["loss"][0], -signals["loss"][0, :, 0])  # no flip computed: the one view


def test_step_schedule_is_multisteplr_at_60_and_80_percent():
    from curvfast.pipelines.common.multitrain import train_subset_models

    seen = []

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.lin(x.flatten(1))

    images, labels = torch.rand(8, 1, 2, 2), torch.tensor([0, 1] * 4)
    keep = np.ones((1, 8), dtype=bool)
    original = torch.optim.SGD.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    torch.optim.SGD.step = spy
    try:
        train_subset_models(Probe, images, labels, keep, epochs=10, batch_size=8, lr=0.1, schedule="step")
    finally:
        torch.optim.SGD.step = original
    # one step per epoch; train_cifar10.py: MultiStepLR(milestones=[int(0.6 E), int(0.8 E)], gamma=0.1), stepped per epoch
    expected = [0.1 * 0.1 ** ((e >= int(0.6 * 10)) + (e >= int(0.8 * 10))) for e in range(10)]
    np.testing.assert_allclose(seen, expected, rtol=1e-12)


def test_zero_padded_crop_is_torchvision_randomcrop_padding():
    from curvfast.pipelines.common.augment import crop_flip

    x = torch.rand(64, 3, 8, 8) + 1.0  # no zeros inside the image
    out = crop_flip(x, torch.Generator().manual_seed(0), flip=False, pad=1, padding="zeros")
    # transforms.RandomCrop(8, padding=1): a window of the zero-padded image; shifted crops show zero rows or columns
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for img, src in zip(out, padded):
        assert any(torch.equal(img, src[:, r:r + 8, c:c + 8]) for r in range(3) for c in range(3))
    assert (out == 0).any() and not (crop_flip(x, torch.Generator().manual_seed(0), flip=False, pad=1) == 0).any()


def test_zo_in_normalised_units_is_the_published_estimator_on_the_normalised_image():
    from curvfast.curvature import input_curvature
    from curvfast.models import normalized
    from curvfast.pipelines.mia.signals import compute_signals

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    stats = ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    net = net.double()  # float64: above the float32 loss-rounding floor of zo
    model = normalized(net, "0.4,0.5,0.6/0.2,0.25,0.3").double().eval()
    x, y = torch.rand(6, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    got, _ = compute_signals([model], [(x, y)], signals=("curv_zo",), probes=3, zo_normalization=stats)
    mean, std = (torch.tensor(v, dtype=torch.float64).reshape(1, 3, 1, 1) for v in stats)
    expected = input_curvature(net, (x - mean) / std, y, method="zo", probes=3, sample_ids=torch.arange(6)).value
    np.testing.assert_allclose(got["curv_zo"][0, :, 0], expected.numpy(), rtol=1e-6)
    pixel, _ = compute_signals([model], [(x, y)], signals=("curv_zo",), probes=3)
    assert not np.allclose(pixel["curv_zo"], got["curv_zo"], rtol=1e-2)


def test_published_switch_sets_and_records_the_protocol(tmp_path):
    from curvfast.errors import ConfigError
    from curvfast.pipelines.mia import PRESETS, Config, run

    cfg = Config(subset_size=40, shadows=4, epochs=2, width=4, signals=("loss", "conf", "maxconf", "curv_zo"), probes=1,
                 published=True, quiet=True)
    assert cfg.protocol() == {"schedule": "step", "crop_padding": "zeros", "h_units": "normalized",
                              "baseline_views": "published", "published_quirk": True, "targets": 3,
                              "leave_one_out": False}
    assert Config().protocol()["targets"] == 4 and Config(targets=2, published=True).num_targets == 2
    results = run(cfg, out=tmp_path / "run")
    assert results["settings"]["protocol"] == cfg.protocol() and results["population"]["targets"] == [0, 1, 2]
    assert {"lira_published", "ye_published", "curv_zo_lr_published", "curv_zo_lr_sum"} <= set(results["attacks"])
    settings = json.loads((tmp_path / "run" / "models" / "settings.json").read_text())
    assert settings["schedule"] == "step" and settings["crop_padding"] == "zeros"
    with pytest.raises(ConfigError, match="leave-one-out"):
        Config(published=True, leave_one_out=True).validate()
    paper = Config(**PRESETS["paper"])
    assert (paper.epochs, paper.lr, paper.weight_decay, paper.shadows, paper.num_targets) == (300, 0.1, 1e-4, 64, 3)
    assert paper.protocol()["schedule"] == "step" and paper.normalize.endswith("/0.2023,0.1994,0.2010")
