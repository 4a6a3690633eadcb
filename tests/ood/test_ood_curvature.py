"""The input-curvature detector against a float64 ``torch.func.hessian`` of the loss at the predicted class."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvfast.errors import ConfigError
from curvfast.ood import DETECTORS, InputCurvature, ModelNotSetError, ood_metrics


def hessian_traces(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """tr d²/dx² CE(f(x), argmax f(x)) per sample, by torch.func.hessian in float64."""
    out = []
    for xi in x:
        label = model(xi[None]).argmax(1)
        h = torch.func.hessian(lambda v: F.cross_entropy(model(v[None]), label))(xi)
        out.append(torch.diagonal(h.reshape(xi.numel(), xi.numel())).sum().detach())
    return torch.stack(out)


def _net(smooth: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh() if smooth else nn.ReLU(), nn.Linear(6, 3)).double().eval()


@pytest.mark.parametrize("smooth", [False, True], ids=["piecewise_linear_exact", "smooth_auto"])
def test_scores_are_the_hessian_trace_at_the_predicted_class(smooth):
    model = _net(smooth)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    det = InputCurvature(model)
    # smooth: auto = deflated, exact here since D = 4 <= the deflated Gauss-Newton directions + probes
    torch.testing.assert_close(det.predict(x), hessian_traces(model, x), rtol=1e-8, atol=1e-10)
    assert det(x).dtype == torch.float64 and det.fit(None) is det  # nothing to fit
    torch.testing.assert_close(InputCurvature(model, batch_size=2).predict(x), det.predict(x))  # chunked alike


def test_registered_needs_the_model_and_the_inputs():
    assert DETECTORS["curvature"] is InputCurvature and not InputCurvature.requires_fit
    with pytest.raises(ModelNotSetError, match="needs the model"):
        InputCurvature(None).predict(torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="batch_size"):
        InputCurvature(None, batch_size=0)


def test_inputs_near_the_decision_boundary_score_higher():
    """The sign convention: a confidently classified input is flatter than one between two classes."""
    model = nn.Sequential(nn.Linear(2, 2, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
    confident, boundary = torch.tensor([[5.0, -5.0]], dtype=torch.float64), torch.tensor([[0.1, 0.0]], dtype=torch.float64)
    det = InputCurvature(model)
    assert ood_metrics(det.predict(confident), det.predict(boundary))["auroc"] == 1.0


def test_it_is_a_pytorch_ood_detector():
    api = pytest.importorskip("pytorch_ood.api")
    assert isinstance(InputCurvature(_net(False)), api.Detector)
