"""Hutchinson, fd and zo: statistical checks with fixed seeds against float64 references."""
import pytest
import torch
import torch.nn.functional as F

import curvfast
from conftest import make_batch, make_model, reference_hessians
from curvfast.errors import ConfigError, UnsupportedModelError


@pytest.mark.parametrize("kind", ["gelu", "tanh"])
@pytest.mark.parametrize("hvp", ["double_backward", "forward_over_reverse"])
def test_hutchinson_trace_within_reported_stderr(kind, hvp):
    model = make_model(kind, 10)
    x, y = make_batch(6, 10)
    trace = reference_hessians(model, x, y).diagonal(dim1=1, dim2=2).sum(-1)
    res = curvfast.input_curvature(model, x, y, method="hutchinson", probes=200, seed=3, hvp=hvp)
    assert res.method == "hutchinson"
    z = (res.value - trace) / res.stderr
    assert z.abs().max() < 4.0, f"errors in standard errors: {z}"
    assert (res.stderr > 0).all()


def test_hutchinson_frobenius_and_gaussian_probes():
    model = make_model("tanh", 10)
    x, y = make_batch(6, 10)
    frob = torch.linalg.matrix_norm(reference_hessians(model, x, y))
    res = curvfast.input_curvature(model, x, y, method="hutchinson", statistic="frobenius", probes=300, seed=5, distribution="gaussian")
    z = (res.value - frob) / res.stderr
    assert z.abs().max() < 4.0, z


def test_hutchinson_hvp_modes_agree_exactly_per_probe():
    model = make_model("gelu", 10)
    x, y = make_batch(3, 10)
    a = curvfast.input_curvature(model, x, y, method="hutchinson", probes=8, seed=1, hvp="double_backward")
    b = curvfast.input_curvature(model, x, y, method="hutchinson", probes=8, seed=1, hvp="forward_over_reverse")
    torch.testing.assert_close(a.value, b.value, rtol=1e-9, atol=1e-12)


def test_hutchinson_chunking_does_not_change_the_estimate():
    model = make_model("gelu", 10)
    x, y = make_batch(3, 10)
    a = curvfast.input_curvature(model, x, y, method="hutchinson", probes=12, seed=2, pass_size=12)
    b = curvfast.input_curvature(model, x, y, method="hutchinson", probes=12, seed=2, pass_size=5)
    torch.testing.assert_close(a.value, b.value, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(a.stderr, b.stderr, rtol=1e-8, atol=1e-14)


def _probes(ids, n, dim, seed, dtype=torch.float64):
    return curvfast.ops.probes(ids, n, dim, seed=seed, distribution="rademacher", dtype=dtype)


def test_fd_matches_its_definition_and_h_times_hessian_probe_norm():
    """fd = mean_k ‖∇L(x+h r_k) − ∇L(x)‖; for a smooth net in float64 that is h·mean_k‖H r_k‖ + O(h²)."""
    model = make_model("gelu", 10)
    x, y = make_batch(4, 10)
    res = curvfast.input_curvature(model, x, y, method="fd", seed=4)
    assert res.method == "fd" and res.statistic == "fd"
    r = _probes(torch.arange(4), 10, 64, seed=4)
    hess = reference_hessians(model, x, y)
    expected = 1e-3 * torch.einsum("bde,bke->bkd", hess, r).norm(dim=2).mean(1)
    torch.testing.assert_close(res.value, expected, rtol=2e-3, atol=0)


def test_zo_matches_h_times_bilinear_form_and_loss_oracle():
    model = make_model("tanh", 10)
    x, y = make_batch(4, 10)
    res = curvfast.input_curvature(model, x, y, method="zo", seed=6)
    r = _probes(torch.arange(4), 20, 64, seed=6)
    v, u = r[:, 0::2], r[:, 1::2]
    hess = reference_hessians(model, x, y)
    expected = 1e-3 * torch.einsum("bkd,bde,bke->bk", v, hess, u).abs().mean(1)
    torch.testing.assert_close(res.value, expected, rtol=1e-3, atol=1e-12)

    def oracle(xb, yb):  # a black box: loss values only
        with torch.no_grad():
            return F.cross_entropy(model(xb), yb, reduction="none")

    black = curvfast.input_curvature(oracle, x, y, method="zo", seed=6)
    torch.testing.assert_close(black.value, res.value, rtol=1e-12, atol=0)


def test_fd_and_zo_refuse_to_call_themselves_the_trace():
    model = make_model("gelu", 10)
    x, y = make_batch(2, 10)
    with pytest.raises(ValueError, match="not 'trace'"):
        curvfast.input_curvature(model, x, y, method="fd", statistic="trace")


@pytest.mark.parametrize("method", ["fd", "zo"])
def test_out_of_range_step_and_pass_size_are_config_errors(method):
    model = make_model("gelu", 10)
    x, y = make_batch(2, 10)
    with pytest.raises(ConfigError, match="step must be a positive finite number"):
        curvfast.input_curvature(model, x, y, method=method, step=0.0)
    with pytest.raises(ConfigError, match="pass_size must be a positive int"):
        curvfast.input_curvature(model, x, y, method=method, pass_size=0)


def test_a_loss_oracle_with_the_wrong_shape_is_an_unsupported_model():
    x, y = make_batch(2, 10)
    with pytest.raises(UnsupportedModelError, match=r"per-sample losses of shape \(B,\)"):
        curvfast.input_curvature(lambda xb, yb: xb.sum(), x, y, method="zo")


def test_fd_crosses_relu_kinks():
    """On a ReLU net fd/h is far from the autograd ‖H r‖ (README: "Why it is fast and exact"): documented, measured."""
    model = make_model("pl_residual", 10)
    x, y = make_batch(8, 10)
    exact = curvfast.input_curvature(model, x, y, method="exact", statistic="frobenius").value
    fd = curvfast.input_curvature(model, x, y, method="fd").value / 1e-3
    assert ((fd / exact).log10().abs() > 0.3).any()


class _TanhNoFunctorch(torch.autograd.Function):
    """A custom op without setup_context: torch.func transforms (jvp) refuse it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.tanh()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - x.tanh() ** 2)


def test_hvp_auto_falls_back_to_double_backward():
    lin = torch.nn.Linear(64, 10).double()
    model = torch.nn.Sequential(torch.nn.Flatten(), lin)
    model.forward = lambda x: lin(_TanhNoFunctorch.apply(x.flatten(1)))
    x, y = make_batch(3, 10)
    with pytest.raises(RuntimeError, match="setup_context"):
        curvfast.input_curvature(model, x, y, method="hutchinson", probes=4, hvp="forward_over_reverse")
    auto = curvfast.input_curvature(model, x, y, method="hutchinson", probes=4, seed=2)
    ref = curvfast.input_curvature(model, x, y, method="hutchinson", probes=4, seed=2, hvp="double_backward")
    torch.testing.assert_close(auto.value, ref.value)


def test_forward_over_reverse_prints_no_warning_from_torch_internals():
    """Reported: `curvfast score --method hutchinson` printed torch's FutureWarning "`torch.jit.script` is deprecated"
    (torch.func.jvp imports a module that calls it on first use). In a fresh process with warnings as errors, the
    first forward-over-reverse estimate runs."""
    import subprocess
    import sys

    code = ("import torch, curvfast\n"
            "model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 3)).double()\n"
            "x, y = torch.randn(2, 4, dtype=torch.float64), torch.tensor([0, 2])\n"
            "print(curvfast.input_curvature(model, x, y, method='hutchinson', probes=4, hvp='forward_over_reverse').value)\n")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
