"""Verifix: conv patch geometry, streamed = one-shot projector, the soft projector, label noise,
verified-set selection, and an end-to-end correction that improves a small noisy run."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset, TensorDataset

from curvfast.pipelines.verifix import (
    add_label_noise, apply_projectors, layer_rows, layer_spectra, projectors_for, select_verified, soft_projector,
    soft_scaling, target_layers, verifix,
)
from curvfast.pipelines.verifix.patches import ConvPatches, layer_operator
from curvfast.pipelines.verifix.selection import _balanced_quota
from curvfast.pipelines.verifix.spectra import RowSampler, _layer_groups
from curvfast.linalg import SpectrumResult, StreamingRandomizedSVD

F64 = torch.float64

CONV_GEOMETRIES = [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(0, 2), dilation=(2, 1)),
    dict(kernel_size=3, dilation=2, padding="same"),
    dict(kernel_size=4, padding="same"),  # even kernel: asymmetric 'same' padding
    dict(kernel_size=3, padding=2, padding_mode="reflect"),
    dict(kernel_size=3, padding=1, padding_mode="circular", stride=2),
    dict(kernel_size=1, stride=2),
    dict(kernel_size=3, padding=1, groups=2),
    dict(kernel_size=3, padding=1, groups=4),  # depthwise (C_in = groups)
    dict(kernel_size=3, stride=2, dilation=2, padding=2, groups=2),
    dict(kernel_size=(1, 3), stride=(1, 2), padding=(0, 1), dilation=(1, 2), groups=4),
    dict(kernel_size=3, stride=(2, 1), padding=1, padding_mode="replicate", groups=2),
]
GEOMETRY_IDS = [",".join(f"{k}={v}" for k, v in g.items()) for g in CONV_GEOMETRIES]


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=GEOMETRY_IDS)
def test_conv_rows_reproduce_the_convolution(geometry):
    """rows(x) @ W_flatᵀ (per group) == conv(x) − bias, in float64, for the layer's own geometry."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6 if geometry.get("groups", 1) == 2 else 8, **geometry).double()
    x = torch.randn(3, 4, 9, 10, dtype=F64)
    out = conv(x) - conv.bias.view(1, -1, 1, 1)
    rows, positions = layer_rows(conv, x)
    g = conv.groups
    assert rows.shape == (g, 3 * positions, conv.weight[0].numel()) and positions == out.shape[2] * out.shape[3]
    w = conv.weight.reshape(g, conv.out_channels // g, -1)
    pred = (rows @ w.mT)  # (g, B·L, C_out/g)
    pred = pred.view(g, 3, positions, -1).permute(1, 0, 3, 2).reshape(3, conv.out_channels, *out.shape[2:])
    assert torch.allclose(pred, out, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("subset", [False, True])
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=GEOMETRY_IDS)
def test_conv_patches_equal_unfold_rows(geometry, subset):
    """The no-unfold operator gives the unfold rows' XᵀX, Xᵀ(XQ), ‖X‖² and row count (float64, 1e-10
    relative), for every geometry and for a row subset (a mask on the output positions)."""
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 8, **geometry).double()
    x = torch.randn(3, 4, 11, 10, dtype=F64)
    rows, positions = layer_rows(conv, x)
    keep = torch.randperm(rows.shape[1], generator=torch.Generator().manual_seed(1))[: rows.shape[1] // 3].sort().values if subset else None
    ref = rows if keep is None else rows[:, keep]
    op, op_positions = layer_operator(conv, x, keep)
    assert isinstance(op, ConvPatches) and op_positions == positions and op.rows == ref.shape[1]
    g, d = ref.shape[0], ref.shape[2]
    gram = torch.zeros(g, d, d, dtype=F64)
    op.add_gram_to(gram)
    q = torch.randn(g, d, 5, dtype=F64)
    z = torch.zeros(g, d, 5, dtype=F64)
    op.add_gram_times_to(z, q)
    want_gram, want_z = ref.mT @ ref, ref.mT @ (ref @ q)
    assert (gram - want_gram).abs().max() <= 1e-10 * want_gram.abs().max()
    assert (z - want_z).abs().max() <= 1e-10 * want_z.abs().max()
    assert torch.allclose(op.energy(), ref.square().sum((1, 2)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("geometry", [CONV_GEOMETRIES[2], CONV_GEOMETRIES[-3]], ids=[GEOMETRY_IDS[2], GEOMETRY_IDS[-3]])
def test_randomized_sketch_by_convolutions_equals_unfold(geometry):
    """Truncated randomized route (rank 4 of d, 2 power iterations): the same Nyström spectrum
    whether its products come from convolutions or from unfold rows; tolerance 1e-8 on U diag(s²) Uᵀ
    relative to its norm (the two differ only by the rounding of the products)."""
    torch.manual_seed(5)
    conv = nn.Conv2d(4, 8, **geometry).double()
    xs = [torch.randn(2, 4, 12, 12, dtype=F64) for _ in range(3)]
    results = []
    for by_conv in (True, False):
        sketch = StreamingRandomizedSVD(conv.weight[0].numel(), 4, oversample=3, power_iters=2, groups=conv.groups, seed=2)
        while not sketch.done:
            for x in xs:
                sketch.update(layer_operator(conv, x)[0] if by_conv else layer_rows(conv, x)[0])
            sketch.end_pass()
        res = sketch.result()
        results.append((res.u * res.s.square().unsqueeze(-2)) @ res.u.mT)
    assert torch.linalg.matrix_norm(results[0] - results[1]).max() <= 1e-8 * torch.linalg.matrix_norm(results[1]).max()


def test_linear_rows_flatten_leading_dims():
    lin = nn.Linear(5, 3).double()
    x = torch.randn(2, 4, 5, dtype=F64)
    rows, positions = layer_rows(lin, x)
    assert positions == 4 and torch.equal(rows[0], x.reshape(8, 5))


def test_target_layers_and_bad_names():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3), nn.Conv1d(1, 1, 1))
    assert list(target_layers(model)) == ["0", "3"]  # Conv1d is not a target
    with pytest.raises(ValueError, match="not Conv2d/Linear"):
        target_layers(model, ["1"])


class Net(nn.Module):
    """Grouped conv + BN + strided conv + linear: every kind of target layer, in float64."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.c3 = nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2)
        self.fc = nn.Linear(6 * 8 * 8, 3)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = F.relu(self.bn(self.c2(h)))
        return self.fc(F.relu(self.c3(h)).flatten(1))


def one_shot_projectors(model, x, alpha, max_rows=None, seed=0):
    """The baseline: materialise every layer's rows for all of ``x`` at once, torch.linalg.svd, P."""
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: inputs.__setitem__(n, a[0])) for n, m in target_layers(model).items()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    out = {}
    for i, (name, module) in enumerate(target_layers(model).items()):
        rows, positions = layer_rows(module, inputs[name])
        keep = RowSampler(len(x), positions, max_rows, seed + 7919 * i).local(0, len(x))  # layer i's row subset
        rows = rows if keep is None else rows[:, keep]
        _, s, vh = torch.linalg.svd(rows, full_matrices=False)
        spec = SpectrumResult(vh.mT, s, rows.square().sum((1, 2)), rows.shape[1], "svd")
        out[name] = soft_projector(spec, alpha)
    return out


@pytest.mark.parametrize("max_rows,route", [(None, "gram"), (150, "gram"), (None, "auto")])
def test_streamed_projector_equals_one_shot(max_rows, route):
    torch.manual_seed(1)
    model = Net().double().eval()
    x = torch.randn(37, 2, 16, 16, dtype=F64)
    ref = one_shot_projectors(model, x, 1e4, max_rows=max_rows, seed=3)
    for batch in (5, 37):  # independent of batching
        spectra = layer_spectra(model, x, max_rows=max_rows, route=route, batch_size=batch, seed=3, progress=False)
        got = projectors_for(spectra, 1e4)
        for name in got:
            assert torch.allclose(got[name], ref[name], atol=1e-9), name
        assert spectra["c2"].groups == 2 and spectra["c2"].spectrum.u.shape == (2, 18, 18)
        # auto: fc has 37 rows < d = 384, so the (then exact) randomized route is the cheaper one
        assert spectra["fc"].spectrum.route == ("randomized" if route == "auto" else "gram")
        if max_rows is not None:
            assert all(s.spectrum.rows == min(max_rows, s.total_rows) for s in spectra.values())


def test_layers_in_groups_under_a_state_budget_give_the_same_spectra():
    """state_budget packs consecutive layers; one layer per group (budget 1 byte) or all at once
    (None) stream the same rows into the same sketches."""
    torch.manual_seed(6)
    model = Net().double().eval()
    targets = target_layers(model)
    assert _layer_groups(targets, None, lambda m: 1) == [["c1", "c2", "c3", "fc"]]
    assert _layer_groups(targets, 1, lambda m: 1) == [["c1"], ["c2"], ["c3"], ["fc"]]
    assert _layer_groups(targets, 2, lambda m: 1) == [["c1", "c2"], ["c3", "fc"]]
    x = torch.randn(12, 2, 16, 16, dtype=F64)
    one = projectors_for(layer_spectra(model, x, state_budget=None, batch_size=5, progress=False), 1e4)
    each = projectors_for(layer_spectra(model, x, state_budget=1, batch_size=5, progress=False), 1e4)
    for name in one:
        assert torch.allclose(one[name], each[name], atol=1e-12), name
    with pytest.raises(ValueError, match="state_budget"):
        layer_spectra(model, x, state_budget=0, progress=False)


def test_randomized_route_at_full_rank_equals_one_shot():
    torch.manual_seed(2)
    model = Net().double().eval()
    x = torch.randn(20, 2, 16, 16, dtype=F64)
    ref = one_shot_projectors(model, x, 3e4)
    spectra = layer_spectra(model, x, route="randomized", rank=18, power_iters=1, batch_size=8, max_rows=None, progress=False)
    assert spectra["c2"].spectrum.route == "randomized"
    got = projectors_for(spectra, 3e4)
    for name in ("c1", "c2"):  # d = 18: rank 18 is the whole space, the Nyström step is then exact
        assert torch.allclose(got[name], ref[name], atol=1e-7), name


def test_soft_scaling_shape():
    r = torch.tensor([0.0, 1e-6, 1 / 10001, 1e-2, 1.0], dtype=F64)
    lam = soft_scaling(r, 1e4)
    assert lam[0] == 0 and lam[-1] == 1 and abs(lam[2] - 0.5) < 1e-12  # λ = 1/2 at r = 1/(α+1)
    assert torch.all(lam.diff() > 0) and abs(lam[1] - 1e-2 / (1 + 1e-2 - 1e-6)) < 1e-12
    with pytest.raises(ValueError, match="alpha"):
        soft_scaling(r, 0.5)


def test_apply_projectors_multiplies_flattened_weights():
    torch.manual_seed(3)
    model = Net().double()
    w = model.c2.weight.detach().clone().reshape(2, 2, 18)
    p = torch.linalg.qr(torch.randn(2, 18, 18, dtype=F64))[0]
    apply_projectors(model, {"c2": p})
    assert torch.allclose(model.c2.weight.reshape(2, 2, 18), w @ p, atol=1e-13)


def test_shared_layer_is_refused():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    with pytest.raises(ValueError, match="more than once"):
        layer_spectra(model, torch.randn(6, 4), progress=False)


def test_symmetric_and_asymmetric_noise():
    y = torch.arange(10).repeat(100)
    noisy, flipped = add_label_noise(y, 0.25, 10, seed=0)
    assert flipped.sum() == 250 and torch.all(noisy[flipped] != y[flipped]) and torch.equal(noisy[~flipped], y[~flipped])
    assert torch.equal(noisy, add_label_noise(y, 0.25, 10, seed=0)[0])
    counts = torch.bincount((noisy[flipped] - y[flipped]) % 10, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 10  # uniform over the 9 other classes
    pair, flipped = add_label_noise(y, 0.4, 10, kind="asymmetric", seed=1)
    assert flipped.sum() == 400 and torch.all(pair[flipped] == (y[flipped] + 1) % 10)
    only, flipped = add_label_noise(y, 0.5, 10, kind="asymmetric", mapping={2: 7, 3: 8}, seed=1)
    assert flipped.sum() == 100 and set(only[flipped].tolist()) == {7, 8}
    with pytest.raises(ValueError, match="rate"):
        add_label_noise(y, 1.0, 10)


def test_balanced_quota():
    assert _balanced_quota(np.array([50, 50, 50]), 30).tolist() == [10, 10, 10]
    assert _balanced_quota(np.array([3, 50, 50]), 30).tolist() == [3, 14, 13]
    assert _balanced_quota(np.array([5, 5]), 10).tolist() == [5, 5]


def test_selection_takes_lowest_curvature_per_class(digits_small):
    from curvfast.engine import score

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    sel = select_verified(model, digits_small, 20, method="exact", progress=False)
    curv = score(model, digits_small, method="exact", progress=False).score
    labels = np.array([digits_small[i][1] for i in range(len(digits_small))])
    assert len(sel.indices) == 20 and sel.method == "exact"
    for c in np.unique(labels[sel.indices]):
        members = np.flatnonzero(labels == c)
        chosen = np.intersect1d(sel.indices, members)
        rest = np.setdiff1d(members, chosen)
        assert len(rest) == 0 or curv[chosen].max() <= curv[rest].min()
    assert np.bincount(labels[sel.indices], minlength=10).max() <= 2 + 1
    rand = select_verified(model, digits_small, 20, method="random", seed=1, progress=False)
    assert rand.scores is None and len(rand.indices) == 20


@pytest.fixture(scope="module")
def noisy_mlp():
    """A ReLU MLP that memorised 40% symmetric noise on 1000 training digits (full-batch Adam, seed 0)."""
    from curvfast.data import DigitsDataset

    train = DigitsDataset("train")
    noisy, _ = add_label_noise(train.targets, 0.4, 10, seed=0)
    x = train.images
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(400):
        opt.zero_grad()
        F.cross_entropy(net(x[:1000]), noisy[:1000]).backward()
        opt.step()
    return net.eval(), TensorDataset(x[:1000], noisy[:1000]), TensorDataset(x[1000:], noisy[1000:])


def test_verifix_improves_a_noisy_model(noisy_mlp):
    """Measured (seeds 0-3): clean test accuracy 0.59-0.65 before, 0.78-0.81 after. Asserted: +5 points."""
    from curvfast.data import DigitsDataset
    from curvfast.pipelines.common.training import evaluate

    net, train, val = noisy_mlp
    test = DigitsDataset("test")
    assert evaluate(net, train) == 1.0  # the noise is memorised
    original = {k: v.clone() for k, v in net.state_dict().items()}
    sel = select_verified(net, train, 100, progress=False)
    fixed, report = verifix(net, Subset(train, sel.indices.tolist()), val, progress=False)
    before, after = evaluate(net, test), evaluate(fixed, test)
    assert report.alpha is not None and report.validation_after > report.validation_before
    assert after >= before + 0.05, (before, after)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in original.items())  # the input model is untouched
    # 100 verified rows: the 64-dim input takes the Gram route; the 256-dim hidden layer has fewer
    # rows than dimensions, where the randomized route at rank = rows is exact and cheaper
    assert [layer["route"] for layer in report.layers] == ["gram", "randomized"]
    assert report.layers[1]["dim"] == 256 and report.layers[0]["rows_used"] == 100


def test_verifix_keeps_the_original_when_nothing_helps(noisy_mlp):
    net, train, _ = noisy_mlp
    x = train.tensors[0][:200]
    perfect = TensorDataset(x, net(x).argmax(1))  # the model is already 100% right here: no α can beat it
    fixed, report = verifix(net, Subset(train, range(50)), perfect, alphas=(1e4, 1e6), progress=False)
    assert report.alpha is None and report.kept_original and report.validation_before == 1.0
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in fixed.state_dict().items())


def test_cli_writes_results(tmp_path, capsys):
    from curvfast.cli import main

    out = tmp_path / "run"
    args = ["verifix", "--dataset", "digits", "--noise", "0.25", "--epochs", "2", "--verified-size", "50",
            "--selection", "random", "--alphas", "1e4,1e5", "--out", str(out), "--quiet"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    for key in ("accuracy_before", "accuracy_after", "alpha", "verified_size", "seconds"):
        assert key in res
    assert res["verified_size"] == 50 and 0 <= res["accuracy_after"] <= 1
    assert {"train", "selection", "verifix_spectra", "verifix_alpha_search", "total"} <= set(res["seconds"])
    assert abs(res["train_noise_rate"] - 0.25) < 0.03
    assert (out / "verified.npz").exists() and (out / "model.pt").exists()
    assert res["settings"]["alphas"] == [1e4, 1e5] and res["settings"]["seed"] == 0  # the resolved config
    assert main(["verifix", "--noise", "1.5", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "noise rate" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before anything ran


def test_several_seeds_write_one_folder_each_and_mean_std(tmp_path):
    from curvfast.pipelines.verifix import Config, run, summary

    config = Config(epochs=1, verified_size=20, selection="random", alphas=(1e4,), seeds=(0, 1), quiet=True)
    res = run(config, out=str(tmp_path))
    seeds = [json.loads((tmp_path / f"seed_{s}" / "results.json").read_text()) for s in (0, 1)]
    assert res == json.loads((tmp_path / "results.json").read_text()) and res["seeds"] == [0, 1]
    assert res["accuracy_after"] == pytest.approx(np.mean([r["accuracy_after"] for r in seeds]))
    assert res["accuracy_after_std"] == pytest.approx(np.std([r["accuracy_after"] for r in seeds], ddof=1))
    assert [r["settings"]["seed"] for r in seeds] == [0, 1] and (tmp_path / "seed_1" / "model.pt").exists()
    assert set(summary(res)) == {"accuracy_before", "accuracy_before_std", "accuracy_after", "accuracy_after_std",
                                 "alpha", "verified_size", "seconds"}


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "epochs must be >= 1"), ("max_rows", -1, "max_rows must be >= 0"), ("alphas", (0.5,), "alphas"),
    ("val_fraction", 1.0, "val_fraction"), ("seeds", (), "at least one seed"), ("verified_size", 0, "verified_size"),
])
def test_config_refuses_bad_settings_before_training(field, value, message):
    from curvfast.pipelines.verifix import Config, run

    with pytest.raises(ValueError, match=message):
        run(Config(**{field: value}))
