"""The model zoo's MLPs and normalisation inside the model."""
from __future__ import annotations

import pytest
import torch

import curvfast
from curvfast.curvature._checks import is_piecewise_linear
from curvfast.curvature._model import LogitFn
from curvfast.errors import ConfigError, DataError, UnknownNameError
from curvfast.models import MLP, Normalized, build_model, normalized, parse_normalization
from tests.conftest import make_batch, make_model, reference_hessians


@pytest.mark.parametrize("kind", ["pl_residual", "gelu"])
def test_curvature_through_normalisation_matches_float64_hessian(kind):
    """H_x = S⁻¹ H_z S⁻¹: the exact (PL) and deflated-exact (smooth, small D) traces of the wrapped model
    equal torch.func's float64 Hessian of the whole function of the [0, 1] input."""
    net = make_model(kind)
    model = normalized(net, "0.3/0.2").double()
    x, y = make_batch()
    x = x.sigmoid()  # images in [0, 1]
    ref = torch.diagonal(reference_hessians(model, x, y), dim1=1, dim2=2).sum(1)
    res = curvfast.input_curvature(model, x, y, method="exact" if kind == "pl_residual" else "deflated", probes=64)
    torch.testing.assert_close(res.value, ref, rtol=1e-9, atol=1e-12)
    m, s = model.mean.item(), model.std.item()  # 0.3 and 0.2 as stored (float32 buffers)
    direct = torch.diagonal(reference_hessians(net, (x - m) / s, y), dim1=1, dim2=2).sum(1) / s**2
    torch.testing.assert_close(ref, direct, rtol=1e-9, atol=1e-12)


def test_normalised_relu_net_is_still_piecewise_linear():
    model = normalized(make_model("pl_residual"), "0.5/0.25").double()
    x, _ = make_batch()
    assert is_piecewise_linear(LogitFn(model), x)


def test_named_and_explicit_normalisations():
    assert parse_normalization("none") is None and parse_normalization(None) is None
    mean, std = parse_normalization("cifar10")
    assert len(mean) == len(std) == 3
    assert parse_normalization("0.5,0.4,0.3/0.2,0.2,0.1") == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.1))
    wrapped = normalized(build_model("small_cnn", 10, 3, width=4), "imagenet")
    assert isinstance(wrapped, Normalized) and {"mean", "std"} <= set(wrapped.state_dict())
    assert wrapped(torch.rand(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("spec, error, message", [
    ("cifar", UnknownNameError, "normalize must be none, cifar10, imagenet or MEAN/STD"),
    ("0.5,0.5/0.2", ConfigError, "as many finite means as stds"),
    ("0.5/0", ConfigError, "every std > 0"),
    ("0.5/x", ConfigError, "MEAN/STD"),
])
def test_bad_normalisations_are_named(spec, error, message):
    with pytest.raises(error, match=message):
        parse_normalization(spec)


def test_channel_mismatch_is_a_clear_error():
    with pytest.raises(DataError, match="one mean and std per input channel"):
        normalized(build_model("small_cnn", 10, 1, width=4), "cifar10")(torch.rand(2, 1, 8, 8))


def test_zoo_mlps():
    one, two = build_model("mlp", 10, 1, in_features=64), build_model("mlp2", 10, 1, in_features=64, width=16)
    assert isinstance(one, MLP) and sum(isinstance(m, torch.nn.Linear) for m in one.modules()) == 2
    assert sum(isinstance(m, torch.nn.Linear) for m in two.modules()) == 3 and two.net[1].out_features == 16
    with pytest.raises(ConfigError, match="in_features"):
        build_model("mlp", 10, 1)
    with pytest.raises(UnknownNameError, match="unknown model 'mlp3'; choose one of"):
        build_model("mlp3", 10, 1)
