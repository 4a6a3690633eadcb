"""The deflated estimator (auto for smooth models) against float64 torch.func Hessians."""
import math

import pytest
import torch
from torch import nn

import curvfast
from conftest import make_batch, make_model, reference_hessians
from curvfast.curvature._batching import PassPlanner


class TinyAttention(nn.Module):
    """The 8 rows of an 8x8 image as tokens: embed, LayerNorm, softmax attention, GELU MLP, mean pool."""

    def __init__(self, num_classes: int, dim: int = 12):
        super().__init__()
        self.embed, self.norm = nn.Linear(8, dim), nn.LayerNorm(dim)
        self.qkv, self.mlp = nn.Linear(dim, 3 * dim), nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        h = self.embed(x.flatten(1).reshape(x.shape[0], 8, 8))
        q, k, v = self.qkv(self.norm(h)).chunk(3, dim=-1)
        h = h + (q @ k.transpose(1, 2) / math.sqrt(h.shape[-1])).softmax(-1) @ v
        return self.head((h + self.mlp(h)).mean(1))


def smooth_model(kind: str, num_classes: int = 10, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    if kind == "layernorm":
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.LayerNorm(32), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, num_classes))
    elif kind == "attention":
        model = TinyAttention(num_classes)
    else:
        return make_model(kind, num_classes, dtype=dtype)
    return model.to(dtype).eval()


def true_trace(model, x, y):
    return reference_hessians(model, x, y).diagonal(dim1=1, dim2=2).sum(-1)


SMOOTH = ["gelu", "tanh", "layernorm", "attention"]


@pytest.mark.parametrize("kind", SMOOTH)
def test_deflated_is_exact_when_the_input_is_small(kind):
    """D = 64 ≤ rank + probes: Q = I, D HVPs, the exact trace and no standard error."""
    model = smooth_model(kind)
    x, y = make_batch(4, 10)
    res = curvfast.input_curvature(model, x, y, method="deflated", probes=64)
    assert res.method == "deflated" and res.stderr is None
    torch.testing.assert_close(res.value, true_trace(model, x, y), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", SMOOTH)
def test_deflated_trace_within_reported_stderr(kind):
    """9 Gauss-Newton directions + 30 residual probes (D = 64): within 4 standard errors for each of 6 samples."""
    model = smooth_model(kind)
    x, y = make_batch(6, 10)
    res = curvfast.input_curvature(model, x, y, method="deflated", probes=30, seed=3)
    assert (res.stderr > 0).all()
    z = (res.value - true_trace(model, x, y)) / res.stderr
    assert z.abs().max() < 4.0, f"errors in standard errors: {z}"


def test_deflated_is_unbiased_over_seeds():
    """Mean over 40 seeds (4 deflated directions, 8 probes) within 4 standard errors of the truth."""
    model = smooth_model("attention")
    x, y = make_batch(3, 10)
    truth = true_trace(model, x, y)
    runs = torch.stack([curvfast.input_curvature(model, x, y, method="deflated", probes=8, top_classes=4, seed=s).value
                        for s in range(40)])
    se = runs.std(0) / math.sqrt(40)
    assert ((runs.mean(0) - truth).abs() < 4 * se).all(), (runs.mean(0), truth, se)


@pytest.mark.parametrize("kind", ["pl_residual", "pl_mlp"])
def test_deflated_equals_exact_on_piecewise_linear_models(kind):
    """R = 0 exactly for ReLU / max-pool / eval-BN nets: the result is the exact trace, zero spread."""
    model = make_model(kind, 10)
    x, y = make_batch(5, 10)
    exact = curvfast.input_curvature(model, x, y, method="exact").value
    res = curvfast.input_curvature(model, x, y, method="deflated", probes=10, seed=1)
    torch.testing.assert_close(res.value, exact, rtol=1e-12, atol=0)
    assert (res.stderr == 0).all()


def test_deflated_large_c_uses_sampled_gauss_newton_and_stays_unbiased():
    """C = 200 > 100: Gauss-Newton head of 10 classes + sampled tail; its stderr is part of the total."""
    model = smooth_model("tanh", 200)
    x, y = make_batch(4, 200)
    res = curvfast.input_curvature(model, x, y, method="deflated", probes=20, seed=2)
    z = (res.value - true_trace(model, x, y)) / res.stderr
    assert z.abs().max() < 4.0, z


def test_deflated_does_not_depend_on_batching():
    model = smooth_model("gelu")
    x, y = make_batch(6, 10)
    ids = torch.arange(10, 16)
    whole = curvfast.input_curvature(model, x, y, method="deflated", probes=10, sample_ids=ids, seed=4)
    half = curvfast.input_curvature(model, x[3:], y[3:], method="deflated", probes=10, sample_ids=ids[3:], seed=4)
    torch.testing.assert_close(half.value, whole.value[3:], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(half.stderr, whole.stderr[3:], rtol=1e-8, atol=1e-14)


def _confident_tanh(dtype):
    model = make_model("tanh", 10, dtype=dtype)
    with torch.no_grad():
        model[-1].weight.mul_(60.0)
    return model


def test_deflated_float32_accurate_at_tiny_loss():
    """fp32 at loss 1e-12..1e-7: deflated (log-softmax Gauss-Newton + R from a stable ∂L/∂z) stays
    within 1e-3 of float64, where fp32 HVPs of the loss itself (Hutchinson) lose the value."""
    x, _ = make_batch(32, 10, seed=3)
    m64 = _confident_tanh(torch.float64)
    y = m64(x).argmax(1)
    ref = curvfast.input_curvature(m64, x, y, method="deflated", probes=64)
    keep = (ref.loss < 1e-7) & (ref.loss > 1e-12)
    assert keep.sum() >= 4, ref.loss
    m32 = _confident_tanh(torch.float32)
    m32.load_state_dict(m64.state_dict())
    got = curvfast.input_curvature(m32, x.float(), y, method="deflated", probes=64).value.double()
    rel = ((got - ref.value).abs() / ref.value.abs())[keep]
    assert rel.max() < 1e-3, rel
    hut = curvfast.input_curvature(m32, x.float(), y, method="hutchinson", probes=64, pass_size=64).value.double()
    assert (((hut - ref.value).abs() / ref.value.abs())[keep] > 0.1).any()


def test_deflated_refuses_other_statistics():
    model = smooth_model("gelu")
    x, y = make_batch(2, 10)
    with pytest.raises(ValueError, match="trace only"):
        curvfast.input_curvature(model, x, y, method="deflated", statistic="frobenius")


def test_pass_planner_measures_once_then_keeps_the_fastest_width():
    """Widths 1, 4, 9 for 9 items; a fake pass costs 4 ms + 1 ms per item, so width 9 is fastest per item."""
    import time

    planner, owner, key, tried = PassPlanner(), nn.Linear(1, 1), ("k",), []

    def trial(width):
        tried.append(width)
        time.sleep(0.004 + 0.001 * width)

    assert planner.choice(owner, key) is None
    assert planner.width(owner, key, 9, 16, trial, torch.device("cpu")) == 9
    assert tried == [1, 1, 1, 4, 4, 9, 9]
    assert planner.width(owner, key, 9, 16, trial, torch.device("cpu")) == 9 and len(tried) == 7  # cached


def test_exact_gives_the_same_bits_on_every_call():
    """The pass width is settled by the first call, so repeated calls agree exactly."""
    model = make_model("pl_residual", 10)
    x, y = make_batch(4, 10)
    runs = [curvfast.input_curvature(model, x, y, method="exact").value for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_exact_pass_width_does_not_change_the_value():
    model = make_model("pl_residual", 10)
    x, y = make_batch(4, 10)
    one = curvfast.input_curvature(model, x, y, method="exact", pass_size=1).value
    three = curvfast.input_curvature(model, x, y, method="exact", pass_size=3).value
    torch.testing.assert_close(one, three, rtol=1e-12, atol=0)
