"""Verifix projectors: conv patches without unfold (every geometry) equal the unfold rows, streamed =
one-shot projectors, the projector from the Gram matrix by Cholesky = the eigendecomposition one,
the float64 policy of the conv products, and verifix() applying each layer's projector as it streams."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvfast import ops
from curvfast.errors import ConfigError, NonFiniteError, UnknownNameError, UnsupportedModelError
from curvfast.linalg import GramSpectrum, SpectrumResult, StreamingGram, StreamingRandomizedSVD
from curvfast.pipelines.verifix import (
    apply_projectors, layer_rows, layer_spectra, projectors_for, soft_projector, soft_scaling, target_layers, verifix,
)
from curvfast.pipelines.verifix.patches import ConvPatches, layer_operator
from curvfast.pipelines.verifix.spectra import RowSampler, _layer_groups, iter_layer_spectra

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


native = pytest.mark.skipif(not ops.native_available(), reason=f"native ops unavailable: {ops.load_error()}")
KERNEL_PARAMS = ["conv", pytest.param("native", marks=native)]


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
@pytest.mark.parametrize("subset", [False, True])
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=GEOMETRY_IDS)
def test_conv_patches_equal_unfold_rows(geometry, subset, kernel):
    """The no-unfold operator gives the unfold rows' XᵀX, Xᵀ(XQ), ‖X‖² and row count (float64, 1e-10
    relative), for every geometry, for a row subset (a mask on the output positions) and with the
    framework's convolutions or the fused native op computing the products."""
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 8, **geometry).double()
    x = torch.randn(3, 4, 11, 10, dtype=F64)
    rows, positions = layer_rows(conv, x)
    keep = torch.randperm(rows.shape[1], generator=torch.Generator().manual_seed(1))[: rows.shape[1] // 3].sort().values if subset else None
    ref = rows if keep is None else rows[:, keep]
    op, op_positions = layer_operator(conv, x, keep, kernel=kernel)
    assert isinstance(op, ConvPatches) and op_positions == positions and op.rows == ref.shape[1]
    assert op.native == (kernel == "native")
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


@native
@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
@pytest.mark.parametrize("geometry", CONV_GEOMETRIES, ids=GEOMETRY_IDS)
def test_native_kernel_equals_conv_kernel(geometry):
    """ConvPatches(kernel="native") = kernel="conv": float64 Gram and sketch to 1e-10 (relative to
    the largest entry); float32 input of a wide layer (float32 products, 256-position sums) to 1e-6."""
    torch.manual_seed(7)
    conv = nn.Conv2d(4, 8, **geometry).double()
    x = torch.randn(2, 4, 12, 11, dtype=F64)
    d, g = conv.weight[0].numel(), conv.groups
    q = torch.randn(g, d, 3, dtype=F64)
    out = {}
    for kernel in ("conv", "native"):
        op = layer_operator(conv, x, kernel=kernel)[0]
        gram, z = torch.zeros(g, d, d, dtype=F64), torch.zeros(g, d, 3, dtype=F64)
        op.add_gram_to(gram)
        op.add_gram_times_to(z, q)
        out[kernel] = gram, z
    for a, b in zip(out["native"], out["conv"]):
        assert (a - b).abs().max() <= 1e-10 * b.abs().max()
    wide = nn.Conv2d(32, 4, 3, padding=1)
    x32 = torch.rand(6, 32, 9, 9)
    assert _float32_gram_error(wide, x32, "native") <= 1e-6
    assert not ConvPatches(wide, x32, kernel="auto").native  # float32 products: the conv route
    assert ConvPatches(conv, x, kernel="auto").native  # d = 36 <= 256: float64 products, native
    with pytest.raises(UnknownNameError, match="kernel must be one of"):
        ConvPatches(conv, x, kernel="unfold")


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
@pytest.mark.parametrize("geometry", [CONV_GEOMETRIES[2], CONV_GEOMETRIES[-3]], ids=[GEOMETRY_IDS[2], GEOMETRY_IDS[-3]])
def test_randomized_sketch_by_convolutions_equals_unfold(geometry, kernel):
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
                sketch.update(layer_operator(conv, x, kernel=kernel)[0] if by_conv else layer_rows(conv, x)[0])
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
    with pytest.raises(UnknownNameError, match="not Conv2d/Linear"):
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


@native
def test_spectra_with_native_kernel_equal_conv_kernel():
    """iter_layer_spectra(kernel=...) reaches every conv layer's products: native = conv (float64)."""
    torch.manual_seed(3)
    model = Net().double().eval()
    x = torch.randn(9, 2, 16, 16, dtype=F64)
    got = {k: projectors_for(layer_spectra(model, x, route="gram", kernel=k, batch_size=4, progress=False), 1e4)
           for k in ("conv", "native")}
    for name in got["conv"]:
        assert torch.allclose(got["native"][name], got["conv"][name], atol=1e-10), name
    with pytest.raises(ValueError, match="kernel"):
        next(iter_layer_spectra(model, x, kernel="fused"))


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
    with pytest.raises(ConfigError, match="state_budget"):
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
    with pytest.raises(UnsupportedModelError, match="more than once"):
        layer_spectra(model, torch.randn(6, 4), progress=False)


@pytest.mark.parametrize("alpha", [1.0, 3.0, 1e4, 1e6])
def test_projector_from_the_gram_equals_the_eigendecomposition(alpha):
    """P = α/(α−1)(I − (I + (α−1)G/E)⁻¹) by one Cholesky equals U diag(λ(r)) Uᵀ from the SVD of the
    rows (float64, 1e-10 relative), for 2 groups, a rank-deficient group (rows < d), a spread
    spectrum; the Gram matrix itself is left unchanged; an all-zero group gives P = 0."""
    torch.manual_seed(7)
    rows = torch.randn(3, 30, 12, dtype=F64) * torch.logspace(0, -4, 12, dtype=F64)
    rows[1, 8:] = 0  # rank 8 < d = 12
    rows[2] = 0
    sketch = StreamingGram(12, groups=3)
    sketch.update(rows[:, :17])
    sketch.update(rows[:, 17:])
    sketch.end_pass()
    got = sketch.result()
    assert isinstance(got, GramSpectrum) and got.rows == 30
    gram = got.gram.clone()
    _, s, vh = torch.linalg.svd(rows, full_matrices=False)
    want = soft_projector(SpectrumResult(vh.mT, s, rows.square().sum((1, 2)), 30, "svd"), alpha)
    p = soft_projector(got, alpha)
    assert torch.equal(got.gram, gram)
    assert torch.linalg.matrix_norm(p[:2] - want[:2]).max() <= 1e-10 * torch.linalg.matrix_norm(want[:2]).max()
    assert torch.equal(p[2], torch.zeros(12, 12, dtype=F64))
    assert torch.allclose(got.s, s, rtol=0, atol=1e-10 * s.max())  # eigenvalues on demand
    u = got.u[:2, :, :8]  # eigenvectors on demand: the same subspaces as the SVD's
    assert torch.allclose(u @ u.mT, vh[:2, :8].mT @ vh[:2, :8], atol=1e-8)
    assert torch.equal(soft_projector(got, alpha, overwrite=True), p) and not torch.equal(got.gram, gram)  # in place


def test_projector_from_the_gram_refuses_non_finite_activations():
    gram = torch.full((1, 3, 3), float("nan"), dtype=F64)
    with pytest.raises(NonFiniteError, match="positive semi-definite"):
        soft_projector(GramSpectrum(gram, torch.ones(1, dtype=F64), 5), 1e4)
    with pytest.raises(ConfigError, match="alpha"):
        soft_projector(GramSpectrum(torch.eye(3, dtype=F64)[None], torch.ones(1, dtype=F64), 5), 0.5)


def _float32_gram_error(conv, x, kernel="auto"):
    """Relative max error of the no-unfold Gram from float32 inputs vs the float64 Gram of the same values."""
    rows = layer_rows(conv, x.double())[0]
    want = rows.mT @ rows
    gram = torch.zeros_like(want)
    layer_operator(conv, x, kernel=kernel)[0].add_gram_to(gram)
    return ((gram - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_float32_inputs_of_narrow_and_last_stage_layers_are_summed_in_float64(kernel):
    """A stem conv on raw pixels (large common mean, d = 27) and a layer with <= 64 output positions
    per sample compute in float64 (1e-13); a wide layer with many positions in float32 chunks of
    256 positions (1e-6). With float32 products everywhere the stem's error is 8e-8 here (6e-7 on a
    ResNet-18 stem's 50 photo crops, which put its 1000-image projector at α = 1e4 5e-5 off the exact one)."""
    torch.manual_seed(8)
    pixels = torch.rand(8, 3, 32, 32) * 0.2 + 0.6
    stem = nn.Conv2d(3, 4, 3, padding=1)
    assert _float32_gram_error(stem, pixels, kernel) <= 1e-13
    last = nn.Conv2d(32, 4, 3, padding=1)
    assert _float32_gram_error(last, torch.rand(6, 32, 8, 8), kernel) <= 1e-13
    wide = nn.Conv2d(32, 4, 3, padding=1)
    error = _float32_gram_error(wide, torch.rand(6, 32, 9, 9), kernel)
    assert 0 < error <= 1e-6  # float32 products: not exact, within the stated tolerance


def test_verifix_applies_each_layers_projector_as_it_streams():
    """verifix() consumes the spectra layer by layer; its corrected model equals applying every
    layer's projector (from the collected spectra) to a copy of the model (float64, 1e-12)."""
    torch.manual_seed(9)
    model = Net().double().eval()
    nn.init.zeros_(model.fc.bias)  # so that the correction changes some predictions (4 of 40)
    nn.init.normal_(model.fc.weight, std=0.1)
    verified, x_val = torch.randn(30, 2, 16, 16, dtype=F64), torch.randn(40, 2, 16, 16, dtype=F64)
    spectra = layer_spectra(model, verified, max_rows=None, batch_size=7, progress=False)
    want = apply_projectors(copy.deepcopy(model), projectors_for(spectra, 1e4))
    with torch.no_grad():
        labels = want(x_val).argmax(1)
        assert (model(x_val).argmax(1) != labels).any()  # the correction changes predictions: α = 1e4 wins
    validation = torch.utils.data.TensorDataset(x_val, labels)
    fixed, report = verifix(model, verified, validation, alphas=(1e4,), max_rows=None, batch_size=7, progress=False)
    assert report.alpha == 1e4 and [layer["name"] for layer in report.layers] == list(spectra)
    for name, p in fixed.state_dict().items():
        assert torch.allclose(p, want.state_dict()[name], rtol=0, atol=1e-12), name
