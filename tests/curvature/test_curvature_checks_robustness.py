"""The piecewise-linearity decision behind method="exact" (curvfast.curvature._checks): smooth models that pass a
two-sample check, the autograd-graph walk, and re-checking after a module changes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import curvfast
from conftest import make_batch, make_model, reference_hessians


class GatedTanh(nn.Module):
    """Linear where every x <= .5, tanh-curved elsewhere: the smooth part is gated by the input."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = x.flatten(1)
        z = self.fc1(x)
        return self.fc2(torch.where(x > 0.5, 5 * torch.tanh(z), z))


def _gated_batch():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(6, 1, 4, 4, generator=gen, dtype=torch.float64) * 0.5
    x[2:] += 0.3  # the first two samples stay in the linear region
    return x, torch.randint(0, 10, (6,), generator=gen)


def _elu_net_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ELU(), nn.Linear(8, 10)).double()
    with torch.no_grad():
        model[1].weight.abs_()
        model[1].bias.zero_()
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    x[2:] *= -1  # the first two samples keep every ELU input positive (its linear region)
    return model, x, torch.arange(6) % 10


def _within_stderr(res, true) -> bool:
    """Within 5 standard errors; an estimate without one (deflated's exact mode: D HVPs) to 1e-9."""
    tol = 1e-9 * true.abs().max() if res.stderr is None else 5 * res.stderr + 1e-9
    return bool(torch.all((res.value - true).abs() <= tol))


@pytest.mark.parametrize("case", ["gated tanh", "elu net"])
def test_smooth_models_passing_a_two_sample_check_are_refused(case):
    if case == "gated tanh":
        torch.manual_seed(0)
        model, (x, y) = GatedTanh().double(), _gated_batch()
    else:
        model, x, y = _elu_net_and_batch()
    with pytest.raises(ValueError, match="smooth pieces"):
        curvfast.input_curvature(model, x, y, method="exact")
    res = curvfast.input_curvature(model, x, y, probes=2000)
    assert res.method == "deflated"  # auto's route for smooth models
    true = reference_hessians(model, x, y).diagonal(dim1=1, dim2=2).sum(1)
    assert _within_stderr(res, true)


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fc, self.fn = nn.Linear(64, 10), fn

    def forward(self, x):
        return self.fn(self, x.flatten(1))


GRAPH_CASES = {  # model -> what the autograd-graph walk decides (None: left to the numeric check)
    "pl_residual": (lambda: make_model("pl_residual"), True),
    "pl_mlp": (lambda: make_model("pl_mlp"), True),
    "x * x": (lambda: Lambda(lambda m, x: m.fc(x) * m.fc(x)).double(), False),
    "1 / x": (lambda: Lambda(lambda m, x: m.fc(x) / (1 + m.fc(x).abs())).double(), False),
    "x xᵀ x": (lambda: Lambda(lambda m, x: m.fc(x) @ m.fc(x).T @ m.fc(x)).double(), False),
    "batch-statistics BatchNorm": (
        lambda: Lambda(lambda m, x: nn.functional.batch_norm(m.fc(x), None, None, training=True)).double(), False),
    "x * mask and x / 2": (lambda: Lambda(lambda m, x: m.fc(x * (x > 0) / 2)).double(), True),
    "tanh": (lambda: make_model("tanh"), None),
}


@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_piecewise_linearity_from_the_autograd_graph(case):
    from curvfast.curvature._checks import _graph_answer
    from curvfast.curvature._model import LogitFn, scoring_model

    build, expected = GRAPH_CASES[case]
    x, y = make_batch(4)
    with scoring_model(build()) as model:
        assert _graph_answer(LogitFn(model), x) is expected
    if expected is False:  # x xᵀ x and batch statistics mix the batch's samples: refused as batch-dependent first
        mixes = "BatchNorm" in case or "ᵀ" in case
        with pytest.raises(ValueError, match="depends on the rest of its batch" if mixes else "smooth pieces"):
            curvfast.input_curvature(build(), x, y, method="exact")


def test_changing_a_module_reruns_the_piecewise_linearity_check():
    model = make_model("pl_mlp", 10)
    x, y = make_batch(4)
    assert curvfast.input_curvature(model, x, y).method == "exact"
    model[2] = nn.GELU()
    with pytest.raises(ValueError, match="smooth pieces"):
        curvfast.input_curvature(model, x, y, method="exact")
    res = curvfast.input_curvature(model, x, y, probes=2000)
    true = reference_hessians(model, x, y).diagonal(dim1=1, dim2=2).sum(1)
    assert res.method == "deflated" and _within_stderr(res, true)  # auto's route for smooth models
