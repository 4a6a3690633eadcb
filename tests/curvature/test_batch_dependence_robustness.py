"""Models whose output for a sample depends on its batch-mates (batch-statistics normalisation in eval) are refused
by every method with BatchDependentModelError, whether the normalisation is a module or a functional call, at any
batch size; the probe behind the check runs once per model, not per batch."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import curvfast
from curvfast.curvature import METHODS
from curvfast.errors import BatchDependentModelError


CALLS: list[int] = []  # batch sizes of every forward (scoring copies share no list attribute with the model)


class _Net(nn.Module):
    """Linear -> (a normalisation) -> ReLU -> Linear, float64."""

    def __init__(self, norm):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.norm = nn.Linear(12, 6), nn.Linear(6, 4), norm

    def forward(self, x):
        CALLS.append(x.shape[0])
        return self.fc2(F.relu(self.norm(self.fc1(x.flatten(1)))))


def _functional_batch_norm(h):  # F.batch_norm with training=True: the batch's own mean and variance
    return F.batch_norm(h, None, None, training=True)


def _batch_standardised(h):  # hand-written batch statistics
    return (h - h.mean(0, keepdim=True)) / (h.std(0, keepdim=True, unbiased=False) + 1e-5)


class _BatchNormForcedToTrain(nn.Module):
    """A BatchNorm with running statistics that the forward always runs in training mode."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(6)

    def forward(self, h):
        return F.batch_norm(h, None, None, self.bn.weight, self.bn.bias, training=True)


BATCH_DEPENDENT = {
    "BatchNorm1d without running stats": lambda: nn.BatchNorm1d(6, track_running_stats=False),
    "F.batch_norm(training=True)": lambda: _functional_batch_norm,
    "hand-written batch standardisation": lambda: _batch_standardised,
    "a BatchNorm's weights, batch statistics": _BatchNormForcedToTrain,
}


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, h):
        return self.fn(h)


def _model(case):
    norm = BATCH_DEPENDENT[case]()
    return _Net(norm if isinstance(norm, nn.Module) else _Fn(norm)).double().eval()


def _batch(b):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(b, 12, generator=gen, dtype=torch.float64), torch.arange(b) % 4


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", list(BATCH_DEPENDENT))
def test_every_method_refuses_a_batch_dependent_model(case, method, batch):
    x, y = _batch(batch)
    with pytest.raises(BatchDependentModelError, match="depends? on the rest of its batch"):
        curvfast.input_curvature(_model(case), x, y, method=method, probes=2, accept_gauss_newton=True)


def test_a_per_sample_normalisation_passes_and_the_probe_runs_once_per_model():
    model = _Net(nn.LayerNorm(6)).double().eval()
    x, y = _batch(5)
    CALLS.clear()
    first = curvfast.input_curvature(model, x, y, method="hutchinson", probes=2)
    probed = CALLS.count(2)  # the probe's batches: a sample beside two other batch-mates
    assert probed >= 2
    CALLS.clear()
    again = curvfast.input_curvature(model, x, y, method="hutchinson", probes=2)
    assert CALLS and CALLS.count(2) == 0  # remembered: nothing per batch
    torch.testing.assert_close(first.value, again.value, rtol=0, atol=0)


def test_changing_a_module_probes_again():
    model = _Net(nn.LayerNorm(6)).double().eval()
    x, y = _batch(5)
    curvfast.input_curvature(model, x, y, method="fd")
    model.norm = _Fn(_batch_standardised)
    with pytest.raises(BatchDependentModelError):
        curvfast.input_curvature(model, x, y, method="fd")
