"""PKD and WISE: the teacher schedule, distillation towards the scheduled teacher, WISE weight fitting
(optimality conditions on constructed logits), the early exit, MACs, and the `curvfast pkd` run."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from curvfast.errors import ConfigError, MissingDependencyError, UnknownNameError
from curvfast.pipelines.pkd import (
    EXIT_NAMES, STREAM_ORDER, StreamNet, build_exits, build_streams, collect_exit_logits, count_macs, exit_macs,
    fit_prefix_weights, fit_wise, pkd_teacher, train_exits, wise_early_exit, wise_objective,
    wise_sweep,
)
from curvfast.pipelines.pkd.video import ClipSet, CompressedRepresentation, CompressedVideoDataset
from curvfast.training import soft_cross_entropy
from conftest import read_results

TINY = {  # streams small enough for a unit test
    "iframe": {"widths": (4, 8, 8, 16), "blocks": (1, 1, 1, 1), "stem_stride": 2},
    "mv": {"widths": (4, 4, 8, 8), "blocks": (1, 1, 1, 1), "stem_stride": 2},
    "residual": {"widths": (4, 4, 8, 8), "blocks": (1, 1, 1, 1), "stem_stride": 2},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_pkd_teacher_schedule_follows_the_published_epochs():
    # published: 300 epochs, MV head for 0-49, residual head for 50-99, own head from 100
    for stream in STREAM_ORDER:
        got = [pkd_teacher(e, 300, stream) for e in range(300)]
        assert got[:50] == ["mv"] * 50 and got[50:100] == ["residual"] * 50 and got[100:] == [stream] * 200
    assert [pkd_teacher(e, 6, "iframe") for e in range(6)] == ["mv", "residual"] + ["iframe"] * 4
    assert [pkd_teacher(e, 4, "iframe", boundaries=(0.5, 0.5)) for e in range(4)] == ["mv", "mv", "iframe", "iframe"]
    with pytest.raises(UnknownNameError, match="stream"):
        pkd_teacher(0, 10, "flow")
    with pytest.raises(ConfigError, match="epoch"):
        pkd_teacher(10, 10, "mv")


def test_soft_cross_entropy_matches_kl_plus_entropy():
    gen = torch.Generator().manual_seed(0)
    z, t = torch.randn(7, 5, generator=gen, dtype=torch.float64), torch.randn(7, 5, generator=gen, dtype=torch.float64)
    q = t.softmax(1)
    kl = torch.nn.functional.kl_div(z.log_softmax(1), q, reduction="batchmean")
    entropy = -(q * q.log()).sum(1).mean()
    torch.testing.assert_close(soft_cross_entropy(z, q), kl + entropy)
    # with hard one-hot targets it is the ordinary cross-entropy
    y = torch.randint(0, 5, (7,), generator=gen)
    torch.testing.assert_close(soft_cross_entropy(z, torch.eye(5, dtype=torch.float64)[y]),
                               torch.nn.functional.cross_entropy(z, y))


def _random_clips(n: int, classes: int, size: int = 16, frames: int = 13, seed: int = 0) -> ClipSet:
    rng = np.random.default_rng(seed)
    mask = np.zeros(frames, bool)
    mask[::12] = True
    reps = [CompressedRepresentation(
        iframes=rng.integers(0, 256, (int(mask.sum()), 3, size, size), dtype=np.uint8),
        iframe_mask=mask,
        mv=rng.normal(0, 3, (frames, 2, size, size)).astype(np.float16),
        residual=rng.normal(0, 10, (frames, 3, size, size)).astype(np.float16)) for _ in range(n)]
    return ClipSet(reps, rng.integers(0, classes, n), [str(c) for c in range(classes)])


def test_pkd_ics_learn_the_scheduled_teacher_and_ce_ics_the_labels():
    """With the MV head as the only teacher, PKD ICs end closer to it (in KL) than CE ICs do,
    and CE ICs fit the labels better."""
    torch.manual_seed(0)
    classes, clips = 4, _random_clips(48, 4)
    loader = DataLoader(CompressedVideoDataset(clips, num_segments=2, train=True), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    streams = build_streams(classes, TINY)
    ce, pkd = build_exits(streams, classes), build_exits(streams, classes)
    pkd.load_state_dict(ce.state_dict())
    history = train_exits(streams, ce, pkd, loader, epochs=12, lr=1e-2, boundaries=(1.0, 1.0))
    assert all(h["teachers"] == {s: "mv" for s in STREAM_ORDER} for h in history)
    assert not any(p.requires_grad for p in streams.parameters())  # backbones frozen
    fit = DataLoader(CompressedVideoDataset(clips, num_segments=2), batch_size=16)
    z_ce, y = collect_exit_logits(streams, ce, fit)
    z_pkd, _ = collect_exit_logits(streams, pkd, fit)
    teacher = torch.from_numpy(z_pkd[:, EXIT_NAMES.index("mv/head")]).softmax(1)
    ics = [i for i, name in enumerate(EXIT_NAMES) if not name.endswith("head")]
    kl = {k: [torch.nn.functional.kl_div(torch.from_numpy(z[:, i]).log_softmax(1), teacher, reduction="batchmean").item()
              for i in ics] for k, z in (("ce", z_ce), ("pkd", z_pkd))}
    assert np.mean(kl["pkd"]) < 0.5 * np.mean(kl["ce"]), kl
    acc = {k: (z[:, ics].argmax(-1) == y[:, None]).mean() for k, z in (("ce", z_ce), ("pkd", z_pkd))}
    assert acc["ce"] > acc["pkd"], acc
    np.testing.assert_array_equal(z_ce[:, EXIT_NAMES.index("iframe/head")], z_pkd[:, EXIT_NAMES.index("iframe/head")])


def _constructed_logits(n=600, classes=5, seed=0):
    """Exit 0 informative, exit 1 pure noise, exit 2 weakly informative."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    onehot = np.eye(classes)[y]
    z = np.stack([3 * onehot + rng.normal(0, 1, (n, classes)),
                  3 * rng.normal(0, 1, (n, classes)),
                  1 * onehot + rng.normal(0, 1, (n, classes))], axis=1)
    return z, y


@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.05])
def test_wise_weights_satisfy_the_l1_optimality_conditions(alpha):
    z, y = _constructed_logits()
    w = fit_prefix_weights(z, y, alpha=alpha)
    _, grad = wise_objective(w, z, y, alpha)
    nonzero = w != 0
    # subgradient condition: grad_j + alpha sign(w_j) = 0 where w_j != 0, |grad_j| <= alpha where w_j = 0
    np.testing.assert_allclose(grad[nonzero] + alpha * np.sign(w[nonzero]), 0, atol=1e-6)
    assert (np.abs(grad[~nonzero]) <= alpha + 1e-9).all()
    assert w[0] > w[2] > 0  # the informative exit weighs most
    if alpha >= 0.01:
        assert w[1] == 0.0  # L1 zeroes the noise exit exactly
    # no other weight vector nearby does better
    best = wise_objective(w, z, y, alpha)[0]
    rng = np.random.default_rng(1)
    assert all(wise_objective(w + 1e-3 * rng.normal(size=3), z, y, alpha)[0] >= best - 1e-12 for _ in range(20))


def test_wise_prefixes_and_early_exit():
    z, y = _constructed_logits()
    weights = fit_wise(z, y, alpha=0.01)
    assert [len(w) for w in weights] == [1, 2, 3]
    macs = np.array([10, 20, 40])
    pred, stop = wise_early_exit(z, weights, tau=0.0)
    assert (stop == 0).all() and (pred == z[:, 0].argmax(1)).all()  # everyone leaves at the first exit
    pred, stop = wise_early_exit(z, weights, tau=1.0 + 1e-9)  # unreachable: everyone uses the full prefix
    assert (stop == 2).all()
    rows = wise_sweep(z, y, weights, macs, [0.0, 0.5, 0.9, 0.99, 0.9999])
    assert rows[0]["macs"] == 10 and all(a["macs"] <= b["macs"] for a, b in zip(rows, rows[1:]))
    # a clip stops at the first prefix whose combined softmax clears tau
    hand = np.zeros((2, 3, 2))
    hand[0, 0] = [20.0, 0.0]  # confident at once
    hand[1, :, :] = [0.0, 0.1]  # never confident
    pred, stop = wise_early_exit(hand, [np.array([1.0]), np.array([1.0, 1.0]), np.array([1.0, 1.0, 1.0])], tau=0.999)
    assert stop.tolist() == [0, 2] and pred.tolist() == [0, 1]


def test_wise_uses_the_published_l1_schedule():
    """Prefixes of at most 5 exits are fitted without L1, longer ones with alpha = 0.1 (published)."""
    from curvfast.pipelines.pkd import Config

    d = Config()
    assert (d.wise_alpha, d.wise_free_exits, d.exit_relu) == (0.1, 5, False)
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 300)
    z = np.stack([(1 + k % 3) * np.eye(4)[y] + rng.normal(0, 1.5, (300, 4)) for k in range(7)], axis=1)
    weights = fit_wise(z, y, alpha=0.1, free_exits=5)
    for k, w in enumerate(weights):
        expect = fit_prefix_weights(z[:, : k + 1], y, alpha=0.0 if k < 5 else 0.1)
        np.testing.assert_allclose(w, expect, rtol=1e-12, atol=1e-12)
    assert not np.allclose(weights[6], fit_prefix_weights(z, y, alpha=0.0), atol=1e-3)  # L1 acts after the fifth exit
    with pytest.raises(ConfigError, match="free_exits"):
        fit_wise(z, y, free_exits=-1)


def test_internal_classifiers_have_no_nonlinearity_by_default():
    """As in the published PKD code, an IC (conv, BN, pool, linear) is affine in its features."""
    streams = build_streams(5, TINY)
    ic = build_exits(streams, 5)["mv"][0].eval()
    assert not any(isinstance(m, torch.nn.ReLU) for m in ic.modules())
    with torch.no_grad():
        for m in ic.modules():  # non-trivial eval-mode BN statistics
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
        c = ic.body[0].in_channels
        a, b = torch.randn(2, c, 8, 8, generator=torch.Generator().manual_seed(0))
        mix = ic((0.3 * a + 0.7 * b)[None])
        torch.testing.assert_close(mix, 0.3 * ic(a[None]) + 0.7 * ic(b[None]), rtol=1e-4, atol=1e-5)
    relu_ic = build_exits(streams, 5, relu=True)["mv"][0]
    assert any(isinstance(m, torch.nn.ReLU) for m in relu_ic.modules())


def test_macs_of_exits():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    assert count_macs(conv, torch.zeros(1, 3, 8, 8)) == 8 * 3 * 9 * 64
    streams = build_streams(5, TINY)
    exits = build_exits(streams, 5)
    macs = exit_macs(streams, exits, frame_size=16, segments=3)
    np.testing.assert_array_equal(macs["cumulative"], np.cumsum(macs["increment"]))
    for s, name in enumerate(STREAM_ORDER):  # the head exit on its own is one full forward of the stream
        net = streams[name].eval()
        full = count_macs(net, torch.zeros(1, 1, net.stem[0].in_channels, 16, 16))
        assert macs["standalone"][4 * s + 3] == 3 * full


def test_stream_net_averages_segments():
    torch.manual_seed(0)
    net = StreamNet(2, 6, widths=(4, 4, 8, 8), stem_stride=2).eval()
    x = torch.randn(3, 4, 2, 16, 16)
    out = net(x)
    assert out.shape == (3, 6)
    per_segment = torch.stack([net(x[:, i:i + 1]) for i in range(4)], 1)
    torch.testing.assert_close(out, per_segment.mean(1))
    with pytest.raises(ConfigError, match="4 entries"):
        StreamNet(2, 6, widths=(4, 8))


def test_cli_pkd_writes_results_and_plots(tmp_path, monkeypatch):
    pytest.importorskip("av")
    from curvfast.cli import main

    monkeypatch.setenv("CURVFAST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    rc = main(["pkd", "--out", str(out), "--clips-per-class", "2", "--size", "16", "--frames", "13",
               "--stream-epochs", "1", "--exit-epochs", "1", "--threads", "1", "--quiet", "--flatness-clips", "4",
               "--flatness-probes", "2", "--order", "flatness"])
    assert rc == 0
    res = read_results(out)
    flat = res["flatness"]
    assert flat["seeds"] == [0, 1, 2] and flat["order_from"] == "flatness"
    assert flat["teacher_order"] == flat["order"] and res["history"]["exits"][0]["teachers"]["iframe"] == flat["order"][0]
    for stream in flat["streams"].values():
        assert len(stream["per_seed"]) == 3 and stream["trace_se"] is not None and stream["top_eigenvalue_se"] is not None
    assert len(res["ic_accuracy"]["ce"]) == len(res["ic_accuracy"]["pkd"]) == 12 == len(res["exits"])
    assert res["ic_accuracy"]["ce"][3] == res["ic_accuracy"]["pkd"][3]  # heads are shared
    assert 0 <= res["wise"]["accuracy"] <= 1 and res["wise"]["macs"] <= res["macs"]["cumulative"][-1]
    assert 0 <= res["plain_ensemble_accuracy"] <= 1 and len(res["wise"]["weights"]) == 12
    assert res["budgets"] == {"ce_epochs": 1, "pkd_epochs": 1} and res["settings"]["ce_epochs"] == 1  # matched
    assert res["wise"]["solver"] == "fista" and res["wise"]["fallback"] is None and not res["settings"]["published"]
    for name in ("accuracy_vs_macs.png", "ic_accuracy.png", "flatness.png", "logits.npz", "models.pt"):
        assert os.path.getsize(out / name) > 0
    assert main(["pkd", "--out", str(out), "--dataset", "ucf101"]) == 2  # needs --root
    assert main(["pkd", "--out", str(out), "--clips-per-class", "2", "--size", "16", "--frames", "13",
                 "--wise-holdout", "0.5", "--quiet"]) == 2  # would leave classes without training clips
    assert main(["pkd", "--out", str(out), "--tau", "1.5"]) == 2
    assert main(["pkd", "--out", str(out), "--boundaries", "0.6,0.3"]) == 2
    assert main(["pkd", "--out", str(out), "--flatness-probes", "1"]) == 2


def test_run_without_a_folder_repeats_the_cli_run(tmp_path, monkeypatch):
    """``run(config)`` (temporary run folder) returns what the CLI run of the same seed wrote; with ``--published``
    both record and use the published choices (CE ICs at half PKD's budget, WISE's published rule)."""
    pytest.importorskip("av")
    from curvfast.cli import main
    from curvfast.pipelines.pkd import Config, run, summary

    monkeypatch.setenv("CURVFAST_CACHE", str(tmp_path / "cache"))
    small = dict(clips_per_class=2, size=16, frames=13, stream_epochs=1, exit_epochs=2, flatness_seeds=1, flatness_clips=2,
                 flatness_probes=2)
    results = run(Config(**small, published=True, quiet=True))
    assert results["budgets"] == {"ce_epochs": 1, "pkd_epochs": 2} and results["settings"]["ce_epochs"] == 1
    assert [h["ce_loss"] is None for h in results["history"]["exits"]] == [False, True]
    assert results["settings"]["exit_optimizer"] == "published" and results["wise"]["solver"] == "sgd"
    assert results["wise"]["weights"][0] == [1.0] and results["wise"]["published_test"]  # the raw first exit
    assert results["wise"]["fallback"]["exits"] == ["residual/head", "mv/head", "iframe/head"]
    assert results["settings"]["boundaries"] == list(Config().boundaries)
    assert results["flatness"]["teacher_order"] == ["mv", "residual"]  # the published order stays the default
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in small.items()]
    assert main(["pkd", "--out", str(tmp_path / "run"), *argv, "--published", "--quiet"]) == 0
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary(written) == summary(results) and written["history"] == results["history"]


@pytest.mark.parametrize("backbone", ["resnet18", "coviar"])
def test_torchvision_backbones_are_streams_with_exits_and_macs(backbone):
    """--backbone resnet18 / coviar: torchvision ResNets (ResNet-50 for CoViAR's I-frames) behind the same
    stream interface: 2-channel MV input, stage widths for the ICs, segment-averaged logits, MACs per exit."""
    torch.manual_seed(0)
    streams = build_streams(5, backbone=backbone)
    assert streams["iframe"].widths == ((256, 512, 1024, 2048) if backbone == "coviar" else (64, 128, 256, 512))
    assert streams["mv"].widths == (64, 128, 256, 512) and streams["mv"].stem[0].in_channels == 2
    exits = build_exits(streams, 5)
    x = torch.randn(2, 3, 2, 32, 32)
    assert streams["mv"](x[:, :, :2]).shape == (2, 5)
    macs = exit_macs(streams, exits, 32, 3)
    assert (np.diff(macs["cumulative"]) > 0).all()
    heavier = macs["standalone"][11] / macs["standalone"][3]  # I-frame head vs residual head
    assert heavier > 1.5 if backbone == "coviar" else heavier == 1
    with pytest.raises(UnknownNameError, match="backbone"):
        build_streams(5, backbone="resnet9000")


def test_missing_pyav_names_the_pip_extra(monkeypatch):
    """Without PyAV the video code raises MissingDependencyError (still an ImportError) naming curvfast[pkd]."""
    from curvfast.pipelines.pkd.video.codec import require_av

    monkeypatch.setitem(sys.modules, "av", None)  # `import av` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"curvfast\[pkd\]"):
        require_av()
