"""Adversarial transferability (TREND): quantisers, attacks, the fit and metric, ensembles, CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from curvfast.attacks import attack, ensemble_direction, ensemble_pgd, majority_vote
from curvfast.pipelines.transfer import (
    DoReFaActivation, DoReFaWeight, Fit, Halftone, InputQuantizer, MemberSpec, build_member, dorefa, fit_saturating,
    halftone, pair_counts, pair_groups, parse_spec, quantize_uniform, saturating, select_members, sharpen_halftone,
    transfer_metric,
)
from curvfast.cli import main
from curvfast.errors import ConfigError, DataError, UnknownNameError, UnsupportedModelError
from curvfast.models import SmallCNN


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is as fast on a quiet machine and 10x faster
    than two on a loaded one (OpenMP threads spin at every barrier)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _images(batch=4, size=8, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, size, size, generator=gen, dtype=dtype)


# ---------------------------------------------------------------- input quantisation

@pytest.mark.parametrize("bits", [1, 2, 4, 6, 8])
def test_uniform_levels_are_bin_centres_of_the_sample_range(bits):
    x = _images(3) * torch.tensor([1.0, 0.5, 3.0], dtype=torch.float64).view(3, 1, 1, 1) + 0.2
    q = quantize_uniform(x, bits)
    n = 2 ** bits
    for b in range(3):
        lo, hi = x[b].min(), x[b].max()
        width = (hi - lo) / n
        index = (q[b] - lo) / width - 0.5                          # integer bin index for a bin centre
        assert torch.allclose(index, index.round(), atol=1e-9)
        index = index.round()
        assert index.min() >= 0 and index.max() <= n - 1
        assert (q[b] - x[b]).abs().max() <= width / 2 + 1e-12     # nearest-centre error bound
        expected = torch.floor((x[b] - lo) / width).clamp(0, n - 1)
        assert torch.equal(index, expected)


def test_one_bit_threshold_is_the_range_midpoint():
    x = torch.tensor([[[[0.0, 0.49, 0.51, 1.0]]]], dtype=torch.float64)
    assert quantize_uniform(x, 1).flatten().tolist() == [0.25, 0.25, 0.75, 0.75]


@pytest.mark.parametrize("quantiser", [lambda x: quantize_uniform(x, 2), halftone, sharpen_halftone], ids=["2bit", "halftone", "sharpen"])
def test_input_quantisers_use_per_sample_statistics(quantiser):
    x = _images(5)
    batch = quantiser(x)
    alone = torch.cat([quantiser(x[i:i + 1]) for i in range(5)])
    assert torch.equal(batch, alone)
    other = x.clone()
    other[0] = other[0] * 7 - 3                                   # a wildly different neighbour
    assert torch.equal(quantiser(other)[1:], batch[1:])


def test_constant_image_is_left_unchanged():
    x = torch.full((2, 1, 4, 4), 0.3, dtype=torch.float64)
    assert torch.equal(quantize_uniform(x, 3), x)
    assert torch.equal(halftone(x), x)


def test_halftone_is_binary_and_keeps_the_grey_level():
    x = torch.full((1, 1, 32, 32), 0.25, dtype=torch.float64)
    x[..., 0, 0], x[..., 0, 1] = 0.0, 1.0                         # fix the sample range to [0, 1]
    out = halftone(x)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert abs(out[..., 4:, :].mean().item() - 0.25) < 0.02       # error diffusion keeps the local mean
    # per-channel diffusion, common range: a second channel at 0.75 gives ~75% ones
    y = torch.cat([x, 1.0 - x], 1)
    out2 = halftone(y)
    assert abs(out2[:, 1, 4:, :].mean().item() - 0.75) < 0.02


@pytest.mark.parametrize("module", [InputQuantizer(1), InputQuantizer(3), Halftone("floyd_steinberg")], ids=["1bit", "3bit", "halftone_fs"])
def test_input_quantisers_pass_gradients_straight_through(module):
    x = _images(2).requires_grad_(True)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    out = module(x)
    (out * w).sum().backward()
    assert torch.equal(x.grad, w)                                 # BPDA: d q(x)/dx := identity
    assert not torch.equal(out, x)


def _floyd_steinberg_raster(x):
    """The textbook raster-order loop (the reference for the vectorised wavefront version)."""
    flat = x.flatten(1)
    lo, hi = flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)
    value = ((x - lo) / (hi - lo)).clone()
    out = torch.empty_like(value)
    height, width = x.shape[-2:]
    for i in range(height):
        for j in range(width):
            old = value[..., i, j]
            new = (old >= 0.5).to(value.dtype)
            out[..., i, j] = new
            err = old - new
            if j + 1 < width:
                value[..., i, j + 1] += err * (7 / 16)
            if i + 1 < height:
                if j > 0:
                    value[..., i + 1, j - 1] += err * (3 / 16)
                value[..., i + 1, j] += err * (5 / 16)
                if j + 1 < width:
                    value[..., i + 1, j + 1] += err * (1 / 16)
    return lo + out * (hi - lo)


@pytest.mark.parametrize("shape", [(3, 2, 7, 9), (2, 1, 12, 5), (1, 3, 1, 6), (2, 1, 6, 1)])
def test_vectorised_floyd_steinberg_equals_the_raster_loop(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.float64)
    assert torch.equal(halftone(x), _floyd_steinberg_raster(x))
    x32 = x.float()
    assert torch.equal(halftone(x32), _floyd_steinberg_raster(x32))


def test_sharpen_halftone_is_the_published_filter_with_a_sigmoid_surrogate_gradient():
    """Forward: (sign(K∗u + 1e-3) + 1)/2 with u = (x − mean_b)/(max_b − min_b) and the 3x3 kernel
    [[−1,−2,−1],[−2,16,−2],[−1,−2,−1]] (zero padding); backward: d/dx ½σ(K∗u + 1e-3)."""
    x = _images(3, size=6).repeat(1, 2, 1, 1)
    x[:, 1] = 1 - x[:, 1]
    kernel = np.array([[-1, -2, -1], [-2, 16, -2], [-1, -2, -1]], dtype=np.float64)
    xn = x.numpy()
    resp = np.empty_like(xn)
    for b in range(3):
        u = np.pad((xn[b] - xn[b].mean()) / (xn[b].max() - xn[b].min()), ((0, 0), (1, 1), (1, 1)))
        for c in range(2):
            for i in range(6):
                for j in range(6):
                    resp[b, c, i, j] = (u[c, i:i + 3, j:j + 3] * kernel).sum() + 1e-3
    out = sharpen_halftone(x)
    np.testing.assert_array_equal(out.numpy(), (np.sign(resp) + 1) / 2)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    xg = x.clone().requires_grad_(True)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    module_out = Halftone()(xg)
    assert torch.equal(module_out.detach(), out)
    (grad,) = torch.autograd.grad((module_out * w).sum(), xg)
    xs = x.clone().requires_grad_(True)
    lo = xs.detach().flatten(1).amin(1).view(-1, 1, 1, 1)  # the per-sample range is held constant (as in every quantiser)
    hi = xs.detach().flatten(1).amax(1).view(-1, 1, 1, 1)
    u = (xs - xs.mean(dim=(1, 2, 3), keepdim=True)) / (hi - lo)
    k = torch.from_numpy(kernel).expand(2, 1, 3, 3)
    surrogate = 0.5 * torch.sigmoid(torch.nn.functional.conv2d(u, k, padding=1, groups=2) + 1e-3)
    (expect,) = torch.autograd.grad((surrogate * w).sum(), xs)
    torch.testing.assert_close(grad, expect, rtol=1e-12, atol=1e-12)
    assert not torch.equal(grad, w)  # not the identity (straight-through) gradient
    with pytest.raises(UnknownNameError, match="halftone method"):
        Halftone("ordered")


# ---------------------------------------------------------------- DoReFa

@pytest.mark.parametrize("bits", [1, 2, 4])
def test_dorefa_weight_levels_and_gradient(bits):
    w = torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    q = DoReFaWeight(bits)(w)
    values = q.detach().unique()
    if bits == 1:
        scale = w.detach().abs().mean()
        assert torch.allclose(values.abs(), scale.expand_as(values))
        assert torch.equal(q.detach().sign(), torch.where(w >= 0, 1.0, -1.0).to(q.dtype))
    else:
        levels = 2 ** bits - 1
        k = (q.detach() + 1) / 2 * levels                          # q = 2 k / levels - 1
        assert torch.allclose(k, k.round(), atol=1e-9) and q.abs().max() <= 1
        assert len(values) <= levels + 1
    q.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_dorefa_activation_levels_and_clamp_gradient():
    x = torch.tensor([-0.5, 0.1, 0.4, 0.6, 0.9, 1.5], dtype=torch.float64, requires_grad=True)
    out = DoReFaActivation(2)(x)
    assert out.tolist() == pytest.approx([0.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0])
    out.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]      # clamp's true gradient, rounding straight-through


def test_dorefa_wrapper_keeps_first_and_last_layers_full_precision():
    torch.manual_seed(0)
    model = dorefa(SmallCNN(1, 10, width=8), weight_bits=2, activation_bits=4)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [parametrize.is_parametrized(m) for m in layers] == [False, True, True, True, False]
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, DoReFaActivation) for m in model.modules()) == 4
    out = model.eval()(_images(2, dtype=torch.float32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    with pytest.raises(UnsupportedModelError, match="nn.ReLU"):
        dorefa(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), activation_bits=2)
    with pytest.raises(ConfigError, match="bits"):
        DoReFaWeight(17)


# ---------------------------------------------------------------- model specs

def test_spec_strings_round_trip_and_bad_specs_are_explained():
    assert parse_spec("small_cnn+halftone").halftone == "sharpen" and parse_spec("small_cnn+halftonefs").halftone == "floyd_steinberg"
    for text in ["small_cnn", "small_cnn@1", "small_cnn+in2", "small_cnn+halftone@3", "small_cnn+halftonefs", "small_cnn+w2a4+adam",
                 "mlp2+a8"]:
        assert parse_spec(text).name == text
    assert parse_spec("small_cnn+in1@2") == MemberSpec("small_cnn", seed=2, input_bits=1)
    for bad, match in [("small_cnn+in9", "1..8"), ("small_cnn+foo", "unknown option"), ("small_cnn@x", "seed"),
                       ("small_cnn+in2+halftone", "either"), ("", "non-empty"), ("small_cnn+w20", "1..16")]:
        with pytest.raises(ConfigError, match=match):
            parse_spec(bad)
    with pytest.raises(UnknownNameError, match="unknown option"):
        parse_spec("small_cnn+foo")


def test_build_member_is_seeded_and_quantised():
    a = build_member(parse_spec("small_cnn+in2"), 10, (1, 8, 8))
    b = build_member(parse_spec("small_cnn+in2"), 10, (1, 8, 8))
    c = build_member(parse_spec("small_cnn+in2@1"), 10, (1, 8, 8))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values()))
    assert isinstance(a.quantizer, InputQuantizer) and a.quantizer.bits == 2


def test_pair_groups_name_the_single_differing_factor():
    specs = [parse_spec(s) for s in ["small_cnn", "small_cnn@1", "small_cnn+in1", "mlp2", "mlp2+in1@1"]]
    groups = pair_groups(specs)
    assert set(groups["seed"]) == {(0, 1), (1, 0)}
    assert set(groups["input_quantisation"]) == {(0, 2), (2, 0)}
    assert set(groups["architecture"]) == {(0, 3), (3, 0)}
    assert (1, 4) in groups["several"] and (0, 4) in groups["several"]


# ---------------------------------------------------------------- fit and metric

def test_fit_recovers_known_parameters():
    eps = np.array([0, 2, 4, 8, 16, 24, 32, 48, 64, 96]) / 255
    a, b = 312.0, -17.5
    fit = fit_saturating(eps, saturating(eps, a, b), pool=400)
    assert fit.a == pytest.approx(a, rel=1e-6) and fit.b == pytest.approx(b, rel=1e-6) and fit.rmse < 1e-6
    noisy = saturating(eps, a, b) + np.random.default_rng(0).normal(0, 3.0, len(eps))
    fit = fit_saturating(eps, noisy, pool=400)
    assert fit.a == pytest.approx(a, rel=0.03) and fit.b == pytest.approx(b, rel=0.1)


def test_fit_respects_the_pool_bound_and_degenerate_counts():
    eps = np.linspace(0, 0.4, 9)
    linear = 1000 * eps                                            # no plateau inside the sweep
    fit = fit_saturating(eps, linear, pool=250)
    assert fit.a <= 250 + 1e-9 and fit.b < 0
    zero = fit_saturating(eps, np.zeros_like(eps), pool=10)
    assert (zero.a, zero.b) == (0.0, 0.0)
    assert math.isnan(transfer_metric(zero, zero))
    with pytest.raises(DataError, match="same length"):
        fit_saturating(eps, linear[:-1])


def test_metric_divides_by_the_whole_fitted_self_count():
    eps = 8 / 255
    st, ss = Fit(a=80.0, b=-20.0, rmse=0.0, pool=100), Fit(a=100.0, b=-30.0, rmse=0.0, pool=100)
    expected = (80.0 * (1 - math.exp(-20.0 * eps))) / (100.0 * (1 - math.exp(-30.0 * eps)))
    assert transfer_metric(st, ss, eps) == pytest.approx(expected, rel=1e-12)
    published = 80.0 * (1 - math.exp(-20.0 * eps)) / 100.0 * (1 - math.exp(-30.0 * eps))  # the precedence bug
    assert published == pytest.approx(expected * (1 - math.exp(-30.0 * eps)) ** 2, rel=1e-12)
    assert abs(transfer_metric(st, ss, eps) - published) > 0.3
    assert 0 < transfer_metric(st, ss, eps) <= 1


def test_pair_counts_use_the_pool_both_models_get_right():
    correct = np.array([[1, 1, 1, 0], [1, 1, 0, 1]], dtype=bool)   # model 0 wrong on image 3, model 1 on image 2
    fooled = np.zeros((2, 1, 2, 4), dtype=bool)
    fooled[0, 0, 0] = [1, 1, 1, 1]                                 # attack on 0 fools 0 everywhere
    fooled[0, 0, 1] = [1, 0, 1, 1]                                 # ... and 1 on images 0, 2, 3
    fooled[1, 0, 1] = [0, 1, 0, 0]
    n_st, n_ss, pool = pair_counts(correct, fooled)
    assert pool.tolist() == [[3, 2], [2, 3]]
    assert n_st[0, 1, 0] == 1 and n_ss[0, 1, 0] == 2               # pool {0, 1}: transfers on 0 only
    assert n_st[0, 0, 0] == n_ss[0, 0, 0] == 3
    assert n_st[1, 0, 0] == 0 and n_ss[1, 0, 0] == 1


# ---------------------------------------------------------------- ensembles

def test_majority_vote_tie_breaking():
    def z(*row):
        return torch.tensor([row], dtype=torch.float64)

    # the majority wins however confident the minority is
    assert majority_vote([z(9.0, 0.0, 0.0), z(0.0, 0.0, 1.0), z(0.0, 0.0, 1.0)]).tolist() == [2]
    # one vote each for 0 and 1: the higher mean softmax probability wins (class 1: 0.55 vs 0.40)
    assert majority_vote([z(2.0, 0.0, 0.0), z(0.0, 5.0, 0.0)]).tolist() == [1]
    # votes and mean probabilities tie exactly (mirrored members): the lowest class index wins
    assert majority_vote([z(0.0, 1.0, 0.0), z(1.0, 0.0, 0.0)]).tolist() == [0]
    assert majority_vote([z(0.0, 0.0, 1.0), z(0.0, 1.0, 0.0)]).tolist() == [1]
    # batched: rows are independent
    batch = [torch.cat([z(9.0, 0.0, 0.0), z(2.0, 0.0, 0.0)]), torch.cat([z(0.0, 0.0, 1.0), z(0.0, 5.0, 0.0)]),
             torch.cat([z(0.0, 0.0, 1.0), z(0.0, 5.0, 0.0)])]
    assert majority_vote(batch).tolist() == [2, 1]


def test_member_selection_prefers_low_mutual_transfer():
    t = np.array([
        [1.0, 0.9, 0.2, 0.3],
        [0.8, 1.0, 0.4, 0.5],
        [0.1, 0.3, 1.0, 0.6],
        [0.4, 0.6, 0.5, 1.0],
    ])
    assert select_members(t, 2) == [0, 2]                          # mutual 0.15
    assert select_members(t, 3) == [0, 2, 3]                       # max mutual to {0, 2}: 3 -> 0.55, 1 -> 0.85
    assert select_members(t, 2, candidates=[1, 3]) == [1, 3]
    with pytest.raises(ConfigError, match="ensemble size"):
        select_members(t, 5)


def test_ensemble_direction_rules():
    g = [torch.tensor([3.0, -1.0, 1.0, 0.0]), torch.tensor([-1.0, -2.0, 1.0, 1.0]), torch.tensor([-1.0, -1.0, -1.0, 1.0])]
    assert ensemble_direction(g, "sum").tolist() == [1.0, -1.0, 1.0, 1.0]
    assert ensemble_direction(g, "vote").tolist() == [-1.0, -1.0, 1.0, 1.0]
    assert ensemble_direction(g, "agree").tolist() == [0.0, -1.0, 0.0, 0.0]
    with pytest.raises(UnknownNameError, match="rule"):
        ensemble_direction(g, "mean")


@pytest.fixture(scope="module")
def tiny_nets():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (12,), generator=gen)
    nets = [build_member(parse_spec(s), 10, (1, 8, 8)).eval() for s in ("small_cnn", "small_cnn+in2", "mlp2")]
    return nets, x, y


def test_single_member_ensemble_pgd_matches_torchattacks(tiny_nets):
    nets, x, y = tiny_nets
    ours = ensemble_pgd([nets[0]], x, y, rule="sum", eps=0.1, step=0.02, steps=5, seed=3)
    ref = attack(nets[0], x, y, name="pgd", eps=0.1, step=0.02, steps=5, seed=3)
    assert torch.equal(ours, ref)
    assert (ours - x).abs().max() <= 0.1 + 1e-6 and ours.min() >= 0 and ours.max() <= 1


def test_attacks_reach_quantised_models_through_bpda(tiny_nets):
    nets, x, y = tiny_nets
    quantised = nets[1]
    loss = nn.functional.cross_entropy
    for name, eps in [("pgd", 0.2), ("fgsm", 0.2), ("pgdl2", 2.0)]:
        adv = attack(quantised, x, y, name=name, eps=eps, step=0.05, steps=4, seed=0)
        assert loss(quantised(adv), y) > loss(quantised(x), y)   # a zero (true) gradient would leave the loss flat
    for rule in ("sum", "vote", "agree"):
        adv = ensemble_pgd(nets, x, y, rule=rule, eps=0.2, step=0.05, steps=3)
        assert (adv - x).abs().max() <= 0.2 + 1e-6
        assert sum(loss(n(adv), y) for n in nets) > sum(loss(n(x), y) for n in nets)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        attack(nets[0], x * 2, y)


def test_cw_attack_fools_and_respects_the_l2_radius(tiny_nets):
    _, x, _ = tiny_nets
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 10)).eval()  # an input-sensitive linear model
    y = net(x).argmax(1)  # its own labels: every image starts correctly classified
    free = attack(net, x, y, name="cw", eps=math.inf, steps=30)

    def margin(images):  # z_y − max_{k≠y} z_k: what CW drives below zero
        z = net(images)
        return z.gather(1, y[:, None])[:, 0] - z.scatter(1, y[:, None], -math.inf).amax(1)

    assert (net(free).argmax(1) != y).any() and (margin(free) <= margin(x) + 1e-6).all()
    small = attack(net, x, y, name="cw", eps=0.3, steps=30)
    assert ((small - x).flatten(1).norm(dim=1) <= 0.3 + 1e-5).all()
    assert small.min() >= 0 and small.max() <= 1


# ---------------------------------------------------------------- CLI end to end

def test_cli_writes_the_transfer_study(tmp_path, capsys):
    out = tmp_path / "run"
    models = "small_cnn,small_cnn@1,small_cnn+in1,mlp2"
    argv = ["transfer", "--dataset", "digits", "--out", str(out), "--models", models, "--eps", "0,16/255,48/255,96/255",
            "--robust-eps", "32/255", "--steps", "3", "--step", "0.05", "--epochs", "1", "--subset-size", "32",
            "--ensemble-size", "2", "--ensemble", "mine=small_cnn,small_cnn+in1,mlp2", "--accuracy-margin", "1", "--quiet"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    names = res["settings"]["models"]
    assert names == models.split(",") and res["settings"]["eps"][2] == pytest.approx(32 / 255)
    matrix = np.array(res["transfer_matrix"], dtype=float)
    assert matrix.shape == (4, 4)
    for s in range(4):
        assert np.isnan(matrix[s, s]) or matrix[s, s] == pytest.approx(1.0)
    assert set(res["metric"]) == {f"{s}->{t}" for s in names for t in names}
    assert set(res["fit"]["small_cnn->mlp2"]) == {"st", "ss"} and res["fit"]["small_cnn->mlp2"]["st"]["b"] <= 0
    assert {"seed", "input_quantisation", "architecture"} <= set(res["groups"])
    robust = res["robust_accuracy"]
    assert set(robust["single"]) == set(names)
    # "selected" is chosen on one half of the test images and robust accuracy measured on the other
    select, held = res["selection"]["select_index"], res["selection"]["evaluation_index"]
    assert not set(select) & set(held) and len(select) + len(held) == 32
    npz = np.load(out / "transfer.npz")
    pos = {int(i): k for k, i in enumerate(sorted(select + held))}
    clean = npz["clean_predictions"][:, [pos[i] for i in held]] == npz["labels"][[pos[i] for i in held]]
    np.testing.assert_allclose([robust["single"][n]["clean"] for n in names], clean.mean(1))
    assert {"seeds", "selected", "mine"} <= set(robust["ensembles"])
    mine = robust["ensembles"]["mine"]
    assert {"sum", "vote", "agree", "clean", "worst_case", "members"} <= set(mine)
    assert all(0 <= v <= 1 for rule in ("sum", "vote", "agree") for v in mine[rule])
    for f in ("transfer.npz", "transfer_matrix.png", "transfer_fits.png"):
        assert (out / f).stat().st_size > 0
    npz = np.load(out / "transfer.npz")
    assert npz["n_st"].shape == (4, 4, 5) and (npz["n_st"] <= npz["n_ss"]).all()
    assert sorted(p.name for p in (out / "models").iterdir()) == ["mlp2.pt", "small_cnn+in1.pt", "small_cnn.pt", "small_cnn_seed1.pt"]


def test_l2_study_skips_the_linf_ensemble_attacks(tmp_path):
    from curvfast.pipelines.transfer import Config, run

    config = Config(models=("small_cnn", "mlp2"), ensemble_size=2, eps=(0, 0.5, 1.0, 2.0), robust_eps=(1.0,), attack="pgdl2", steps=2,
                    step=0.5, epochs=1, subset_size=16, ensemble="both=small_cnn,mlp2", quiet=True)
    res = run(config)  # numbers work as radii from Python; no out: a temporary run folder
    robust = res["robust_accuracy"]
    assert robust["ensemble_attacks"] == [] and set(robust["single"]["mlp2"]) == {"clean", "pgdl2"}
    both = robust["ensembles"]["both"]
    assert "sum" not in both and both["worst_case"] == both["worst_single_source_transfer"]
    assert np.array(res["transfer_matrix"], dtype=float).shape == (2, 2)
    assert res["settings"]["eps"] == [0.0, 0.5, 1.0, 2.0] and res["settings"]["ensembles"] == {"both": ["small_cnn", "mlp2"]}


def test_config_radii_ensembles_and_subset_size_are_parsed_and_checked():
    from curvfast.pipelines.transfer import Config
    from curvfast.pipelines.transfer.pipeline import _resolve

    r = _resolve(Config(eps=("0", "8/255", " 0.5"), robust_eps=("8/255",), metric_eps="1/255", subset_size=None,
                        ensemble="a=small_cnn,mlp2; b=small_cnn@1,small_cnn@2,", models=Config().models))
    assert r["sweep"].tolist() == [0.0, 8 / 255, 0.5] and r["metric_eps"] == 1 / 255
    assert r["ensembles"] == {"a": ["small_cnn", "mlp2"], "b": ["small_cnn@1", "small_cnn@2"]}
    for bad, message in [({"ensemble": "mine"}, "NAME=MODEL"), ({"ensemble": "x=small_cnn,resnet9"}, "not among the models"),
                         ({"metric_eps": "1/0"}, "metric_eps takes numbers"), ({"subset_size": 1.5}, "subset-size takes an integer"),
                         ({"subset_size": 1}, "subset-size takes an integer >= 2"),
                         ({"models": ("small_cnn", "small_cnn@0")}, "two distinct"), ({"epochs": 0}, "must be >= 1")]:
        with pytest.raises(ConfigError, match=message):
            Config(**bad).validate()


def test_checkpoints_are_reused_only_for_the_same_training(tmp_path):
    from torch.utils.data import Subset

    from curvfast.pipelines.transfer import load_or_train
    from curvfast.data import DigitsDataset

    train, test = Subset(DigitsDataset("train"), range(64)), Subset(DigitsDataset("test"), range(32))
    spec = parse_spec("mlp2+in2@1")
    first, info = load_or_train(spec, train, test, 10, epochs=1, dataset="digits", folder=str(tmp_path))
    again, info2 = load_or_train(spec, train, test, 10, epochs=1, dataset="digits", folder=str(tmp_path))
    assert info["trained"] and not info2["trained"] and info2["test_accuracy"] == info["test_accuracy"]
    assert all(torch.equal(p, q) for p, q in zip(first.state_dict().values(), again.state_dict().values()))
    _, info3 = load_or_train(spec, train, test, 10, epochs=2, dataset="digits", folder=str(tmp_path))
    assert info3["trained"]                                        # other epochs: retrained, not reused


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["transfer", "--out", str(tmp_path), "--models", "small_cnn,small_cnn+in9"]) == 2
    assert "in9" in capsys.readouterr().err
    assert main(["transfer", "--out", str(tmp_path), "--eps", "0,abc"]) == 2
    assert "eps takes numbers or fractions" in capsys.readouterr().err
    assert main(["transfer", "--out", str(tmp_path), "--eps", "0,8/255", "--robust-eps", "8/255"]) == 2
    assert "two values" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["transfer", "--out", str(tmp_path), "--subset-size", "many"])
    assert "--subset-size takes an integer" in capsys.readouterr().err
    for old in ("--n-test", "--attack-batch"):  # the old names of subset_size and score_batch_size are refused
        with pytest.raises(SystemExit):
            main(["transfer", "--out", str(tmp_path), old, "16"])
        assert f"unrecognized arguments: {old}" in capsys.readouterr().err
