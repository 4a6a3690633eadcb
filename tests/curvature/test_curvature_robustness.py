"""input_curvature under hostile input: no NaN / zero / wrong value without an error."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import curvfast
from curvfast.errors import NonFiniteError
from conftest import make_batch, make_model


def _nan_weight_model():
    model = make_model("gelu", 10)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    return model


def _curv(model_kind="pl_residual", **kw):
    model = kw.pop("model", None) or make_model(model_kind, 10)
    x, y = kw.pop("batch", None) or make_batch(3)
    return lambda: curvfast.input_curvature(model, x, y, **kw)


class _FunctionalHardsigmoid(nn.Module):
    def forward(self, x):
        return nn.functional.hardsigmoid(x)


API_CASES = {
    "fd step 0": (_curv("gelu", method="fd", step=0.0), ValueError, "step must be a positive"),
    "zo step 0": (_curv("gelu", method="zo", step=0.0), ValueError, "step must be a positive"),
    "fd step nan": (_curv("gelu", method="fd", step=float("nan")), ValueError, "step must be a positive"),
    "zo step -1e-3": (_curv("gelu", method="zo", step=-1e-3), ValueError, "step must be a positive"),
    "NaN weight, hutchinson": (_curv(model=_nan_weight_model(), method="hutchinson", probes=2), NonFiniteError,
                               "NaN or Inf in fc.weight"),
    "NaN weight, fd": (_curv(model=_nan_weight_model(), method="fd"), NonFiniteError, "NaN or Inf in fc.weight"),
    "NaN weight, auto (not 'smooth pieces')": (_curv(model=_nan_weight_model()), NonFiniteError,
                                               "NaN or Inf in fc.weight"),
    "float16 inputs and model": (_curv(model=make_model("pl_mlp", 10, dtype=torch.float16),
                                       batch=make_batch(3, dtype=torch.float16)), TypeError, "x is torch.float16"),
    "bfloat16 inputs and model": (_curv(model=make_model("pl_mlp", 10, dtype=torch.bfloat16),
                                        batch=make_batch(3, dtype=torch.bfloat16)), TypeError, "x is torch.bfloat16"),
    "uint64 sample_ids": (_curv(method="hutchinson", probes=2, sample_ids=torch.tensor([0, 1, 2], dtype=torch.uint64)), TypeError,
                          "sample_ids"),
    "input shape the model cannot take": (_curv(batch=(torch.randn(3, 3, 8, 8, dtype=torch.float64), torch.zeros(3, dtype=torch.long))),
                                          ValueError, r"cannot take x of shape \(3, 3, 8, 8\)"),
    "meta inputs": (_curv(batch=(torch.empty(3, 1, 8, 8, dtype=torch.float64, device="meta"), torch.zeros(3))),
                    ValueError, "meta"),
    "probes=True": (_curv("gelu", method="hutchinson", probes=True), ValueError, "probes must be a positive int"),
    "top_classes=-1": (_curv(method="sampled", top_classes=-1), ValueError, "top_classes must be an int"),
    "pass_size=0": (_curv(method="exact", pass_size=0), ValueError, "pass_size must be a positive int"),
    "seed=-1": (_curv("gelu", method="hutchinson", probes=2, seed=-1), ValueError, "seed must be >= 0"),
    "labels of another shape": (_curv(batch=(make_batch(3)[0], torch.zeros(2, dtype=torch.long))), ValueError,
                                r"y must have shape \(B,\)"),
    "op without a second derivative (F.hardsigmoid called directly; nn.Hardsigmoid is run through clamp)": (
        _curv(model=nn.Sequential(nn.Flatten(), nn.Linear(64, 8), _FunctionalHardsigmoid(), nn.Linear(8, 10)).double(),
              method="hutchinson", probes=2), ValueError, "second derivative"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_refuses(case):
    call, kind, match = API_CASES[case]
    with pytest.raises(kind, match=match):
        call()


def test_inputs_requiring_grad_are_scored_as_detached():
    model = make_model("gelu", 10)
    x, y = make_batch(3)
    a = curvfast.input_curvature(model, x.clone().requires_grad_(), y, method="hutchinson", probes=3).value
    b = curvfast.input_curvature(model, x, y, method="hutchinson", probes=3).value
    assert torch.equal(a, b)


class Overflowing(nn.Module):
    """Finite weights, but logits overflow to inf for large inputs."""

    def forward(self, x):
        return torch.stack([x.flatten(1).sum(1) * 1e308, -x.flatten(1).sum(1)], dim=1)


@pytest.mark.parametrize("method", ["exact", "hutchinson", "fd", "zo"])
def test_non_finite_scores_are_an_error(method):
    x = torch.full((2, 1, 4, 4), 10.0, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match="finite"):
        curvfast.input_curvature(Overflowing(), x, torch.tensor([0, 1]), method=method, probes=2, accept_gauss_newton=True)


def test_forward_mode_fallback_only_for_missing_forward_derivatives():
    from curvfast.curvature._hutchinson import _forward_mode_unsupported

    assert _forward_mode_unsupported(NotImplementedError(
        "Trying to use forward AD with my_op that does not support it because it has not been implemented yet."))
    assert not _forward_mode_unsupported(RuntimeError(
        "Trying to access a forward AD level with an invalid index. This index was either not created or is already deleted."))
    assert not _forward_mode_unsupported(RuntimeError("mat1 and mat2 shapes cannot be multiplied (3x4 and 5x6)"))
