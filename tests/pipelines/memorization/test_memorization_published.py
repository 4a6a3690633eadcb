"""The published protocol of `curvfast memorization` (--published and its per-point options) and the per-batch bar.

Each published rule is re-implemented here from the authors' code (read in the fetched repositories
purdue-nrl/Memorization-Curvature and DeepakTatachar/Privacy-Memorization-Curvature), never imported from ours.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from curvfast.data import DigitsDataset
from curvfast.errors import ConfigError
from curvfast.pipelines.common.contract import preset_config
from curvfast.pipelines.memorization import pipeline as memorization
from curvfast.pipelines.memorization.dp import (PUBLISHED_EPSILONS, fit_unveiling_bounds, published_curve,
                                                published_subsets, published_top_k_memorization)
from curvfast.pipelines.memorization.models import model_factory
from curvfast.pipelines.memorization.pipeline import PRESETS, Config
from curvfast.pipelines.memorization.trajectory import (curvature_per_model, curvature_trajectory, epoch_lr,
                                                        train_with_checkpoints)
from curvfast.pipelines.common.data import PackedDataset


@pytest.fixture(scope="module")
def digits():
    ds = DigitsDataset("train")
    return ds.images[:96], ds.targets[:96]


def test_step_schedule_is_published_multisteplr():
    """train_imagenet.py: MultiStepLR(milestones=[int(0.6 E), int(0.8 E)], gamma=0.1), stepped once per epoch."""
    for epochs in (5, 10, 300):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(0.6 * epochs), int(0.8 * epochs)], gamma=0.1)
        for e in range(epochs):
            assert epoch_lr(0.1, e, epochs, "step") == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12), (epochs, e)
            opt.step()
            sched.step()
    with pytest.raises(ConfigError, match="schedule must be one of"):
        epoch_lr(0.1, 0, 10, "linear")


def test_score_every_scores_the_published_checkpoints(digits):
    """score_imagenet_checkpoint.py scores `range(0, E, 4)` of the checkpoints saved after epochs 1..E: 1, 5, 9."""
    x, y = digits
    traj = curvature_trajectory(model_factory("mlp", 10, (1, 8, 8), 16), x, y, np.ones((1, 96), bool), epochs=6, lr=0.1,
                                batch_size=32, score_every=4, extra_methods=("fd",))
    assert traj.epochs == [e + 1 for e in range(0, 6, 4)] == [1, 5]
    assert traj.curvature.shape == traj.extra["fd"].shape == (2, 1, 96)
    np.testing.assert_allclose(traj.averaged("fd"), traj.extra["fd"][:, 0].mean(0))


def test_trajectory_progress_bar_moves_every_batch(digits, monkeypatch):
    """Issue 31: the bar moved once per epoch; now once per training step (4 steps per epoch here)."""
    import tqdm.auto

    bars = []

    class Recorder:
        def __init__(self, *args, total=None, **kwargs):
            self.total, self.updates = total, []
            bars.append(self)

        def update(self, n=1):
            self.updates.append(n)

        def set_postfix_str(self, *_):
            pass

        def refresh(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    x, y = digits
    seen = []
    train_with_checkpoints(model_factory("mlp", 10, (1, 8, 8), 16), x[:128], y[:128], np.ones((2, 96), bool), epochs=3,
                           lr=0.1, batch_size=24, progress=True,
                           on_epoch=lambda e, ms: seen.append((e, len(bars[0].updates))))
    outer = bars[0]
    assert outer.total == 3 * 4 and sum(outer.updates) == 12
    assert seen == [(1, 4), (2, 8), (3, 12)]  # it moved during each epoch, not only at its end


def test_fd_step_reaches_the_estimator(digits):
    """--step is the published h: the fd statistic ‖∇L(x+hv) − ∇L(x)‖ of a ReLU net is ≈ h‖Hv‖, so 2h doubles it."""
    x, y = digits
    torch.manual_seed(0)
    model = model_factory("mlp", 10, (1, 8, 8), 16)().eval()
    data = PackedDataset(x[:32], y[:32])
    small = curvature_per_model([model], data, method="fd", probes=10, step=1e-4)[0][0]
    large = curvature_per_model([model], data, method="fd", probes=10, step=2e-4)[0][0]
    ok = small > 0
    assert np.median(large[ok] / small[ok]) == pytest.approx(2.0, rel=0.05)


def test_published_membership_design():
    """create_index_for_private_mem.py: 70% of the samples outside the top, plus a random half of the top."""
    top = np.array([3, 7, 11, 20, 41, 42])
    keep = published_subsets(5, 60, top, 0.7, seed=1)
    rest = np.setdiff1d(np.arange(60), top)
    assert (keep[:, top].sum(1) == 3).all() and (keep[:, rest].sum(1) == int(0.7 * 54)).all()
    assert len({tuple(r) for r in keep}) == 5  # each model draws its own subset


def test_published_memorization_statistic_by_hand():
    """calc_private_memorization.py: pr1 = (prob*mask).mean(0), pr0 = (prob*(1-mask)).mean(0), mean |pr1-pr0| on top."""
    p = np.array([[0.9, 0.2, 0.5], [0.1, 0.4, 0.5], [0.8, 0.6, 0.5]])
    keep = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0]], bool)
    top = np.array([0, 1])
    pr1 = [(0.9 + 0.8) / 3, 0.4 / 3]
    pr0 = [0.1 / 3, (0.2 + 0.6) / 3]
    assert published_top_k_memorization(p, keep, top) == pytest.approx(np.mean(np.abs(np.subtract(pr1, pr0))))


def test_published_bound_form_fits_the_authors_curve():
    """curv_privacy.ipynb fits (a + b e^{-c eps}) d (1 - e^{-eps}) + e; data of that shape are fitted exactly,
    which our linear form A (1 - e^{-eps}) + c2 cannot do."""
    eps = np.asarray(PUBLISHED_EPSILONS)
    curv = published_curve(eps, 1.3, 0.6, 0.02, 0.009, 0.001)  # near the published start: their scale
    rows = [{"epsilon": e, "mean_curvature": c, "mean_memorization": 0.0, "train_size": 100.0}
            for e, c in zip(eps, curv)]
    fit = fit_unveiling_bounds(rows, "published")
    pub = fit["published_curvature_fit"]
    np.testing.assert_allclose(published_curve(eps, *(pub[k] for k in "abcde")), curv, rtol=1e-5, atol=1e-9)
    assert pub["r2"] == pytest.approx(1.0, abs=1e-8) and fit["curvature_fit"]["r2"] < 0.9
    assert "published_curvature_fit" not in fit_unveiling_bounds(rows)
    assert "need at least 5" in fit_unveiling_bounds(rows[:3], "published")["published_curvature_fit"]["note"]


def test_published_switch_sets_every_point_and_keeps_explicit_values():
    config, applied = Config(published=True, dp_epsilons=(1.0, 5.0)).applied()
    assert (config.method, config.probes, config.step, config.score_every) == ("fd", 10, 1e-3, 4)
    assert config.lr_schedule == "step"
    assert (config.dp_design, config.dp_fraction, config.dp_batch_size, config.bound_form) == ("published", 0.7, 256,
                                                                                                 "published")
    assert config.dp_epsilons == (1.0, 5.0) and "dp_epsilons" not in applied  # given explicitly: kept
    assert Config(published=True).applied()[0].dp_epsilons == PUBLISHED_EPSILONS
    assert Config().applied() == (Config(), {})


def test_paper_preset_is_the_published_recipe():
    """Garg et al.'s CIFAR setting: ResNet-18, SGD lr 0.1, momentum 0.9 (the shared trainer's), wd 1e-4, 300 epochs,
    x0.1 steps at 60%/80%, fraction 0.7, crop-flip; the published protocol on."""
    config, _ = preset_config(memorization, "paper").applied()
    assert PRESETS["paper"]["published"] is True
    assert (config.dataset, config.model, config.augment) == ("cifar100", "cifar_resnet18", "crop-flip")
    assert (config.fraction, config.epochs, config.lr, config.weight_decay) == (0.7, 300, 0.1, 1e-4)
    assert (config.lr_schedule, config.method) == ("step", "fd")
