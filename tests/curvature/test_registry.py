"""The estimator registry: adding an estimator is one registration, and every list of methods sees it."""
from __future__ import annotations

import pytest
import torch

import curvfast
from curvfast.cli import build_parser, main
from curvfast.curvature import (DEFAULT_PROBES, ESTIMATORS, METHODS, Estimate, EstimateCall, Estimator, register_estimator,
                                unregister_estimator)
from curvfast.errors import ConfigError, NotPiecewiseLinearError, UnknownNameError


def _gradient_norm(call: EstimateCall) -> Estimate:
    """A toy 'curvature': the squared input-gradient norm of each sample's loss, plus probes * 0."""
    x = call.x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = torch.nn.functional.cross_entropy(call.logit_fn(x), call.y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return Estimate(grad.flatten(1).pow(2).sum(1), None, loss.detach())


@pytest.fixture()
def toy():
    estimator = register_estimator(Estimator("toy_gradnorm", _gradient_norm, ("trace",), default_probes=3,
                                             summary="‖∇L‖²", exact_when="never (a toy)"))
    yield estimator
    unregister_estimator("toy_gradnorm")
    assert "toy_gradnorm" not in METHODS


def test_builtin_methods_come_from_the_registry():
    assert tuple(METHODS) == ("auto", *ESTIMATORS) == ("auto", "exact", "sampled", "hutchinson", "deflated", "fd", "zo")
    assert dict(DEFAULT_PROBES) == {"sampled": 10, "hutchinson": 100, "deflated": 30, "fd": 10, "zo": 10}


def test_a_registered_estimator_runs_and_appears_in_every_method_list(toy, capsys):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    res = curvfast.input_curvature(model, x, y, method="toy_gradnorm")
    assert res.method == "toy_gradnorm" and res.statistic == "trace" and res.value.shape == (5,)
    assert torch.allclose(res.value, _gradient_norm(EstimateCall(model, x, y, torch.arange(5), None, "trace", 3, 0, 3)).value)
    assert "toy_gradnorm" in METHODS and DEFAULT_PROBES["toy_gradnorm"] == 3
    choices = next(a for a in build_parser(["score"])._subparsers._group_actions[0].choices["score"]._actions
                   if a.dest == "method").choices
    assert "toy_gradnorm" in choices
    with pytest.raises(SystemExit):
        main(["memorization", "--help"])
    assert "toy_gradnorm" in capsys.readouterr().out


def test_a_toy_statistic_it_does_not_have_is_refused_naming_those_that_do(toy):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with pytest.raises(ConfigError, match="toy_gradnorm.*trace only.*exact"):
        curvfast.input_curvature(model, torch.randn(2, 1, 4, 4), torch.tensor([0, 1]), method="toy_gradnorm",
                                 statistic="frobenius")


def test_registration_is_checked():
    with pytest.raises(ConfigError, match="already registered"):
        register_estimator(Estimator("exact", _gradient_norm))
    with pytest.raises(ConfigError, match="identifier other than 'auto'"):
        Estimator("auto", _gradient_norm)
    with pytest.raises(ConfigError, match="default_probes"):
        Estimator("bad", _gradient_norm, default_probes=0)
    with pytest.raises(UnknownNameError, match="method must be one of"):
        unregister_estimator("never_registered")


def test_unknown_method_and_smooth_model_errors_are_typed():
    x, y = torch.randn(2, 4), torch.tensor([0, 1])
    with pytest.raises(UnknownNameError, match="method must be one of"):
        curvfast.input_curvature(torch.nn.Linear(4, 3), x, y, method="nope")
    smooth = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU(), torch.nn.Linear(4, 3))
    with pytest.raises(NotPiecewiseLinearError, match="piecewise-linear"):
        curvfast.input_curvature(smooth, x, y, method="exact")
