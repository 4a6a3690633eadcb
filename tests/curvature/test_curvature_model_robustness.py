"""Scoring a caller's model (curvfast.curvature._model): threads give results bit-identical to sequential calls, and
the model (train mode, frozen weights, parametrizations, attributes deepcopy refuses) is left untouched."""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import curvfast
from _robust_helpers import in_threads
from conftest import make_batch, make_model, reference_hessians


def test_four_threads_on_four_models_equal_sequential():
    models = [make_model("gelu", 10, seed=s) for s in range(4)]
    x, y = make_batch(8)

    def run(i):
        return curvfast.input_curvature(models[i], x, y, probes=6, seed=i)

    sequential = [run(i) for i in range(4)]
    for _ in range(3):
        for seq, par in zip(sequential, in_threads(run, 4)):
            assert torch.equal(seq.value, par.value) and torch.equal(seq.stderr, par.stderr)


@pytest.mark.parametrize("method", ["exact", "hutchinson"])
def test_four_threads_on_one_model_in_train_mode_leave_it_untouched(method):
    model = make_model("pl_residual" if method == "exact" else "gelu", 10).train()
    frozen = model.fc.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()]
    x, y = make_batch(8)

    def run(i):
        return curvfast.input_curvature(model, x, y, method=method, probes=4).value

    sequential = run(0)
    for values in [in_threads(run, 4) for _ in range(3)]:
        assert all(torch.equal(v, sequential) for v in values)
    assert [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()] == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert frozen is model.fc.weight


class Locked(nn.Module):
    """Holds an attribute deepcopy refuses: scored in place, one call at a time."""

    def __init__(self):
        super().__init__()
        self.fc, self.lock = nn.Linear(64, 10), threading.Lock()

    def forward(self, x):
        return self.fc(x.flatten(1))


UNUSUAL_MODELS = {
    "parametrizations (weight_norm, spectral_norm)": lambda: nn.Sequential(
        nn.Flatten(), nn.utils.parametrizations.weight_norm(nn.Linear(64, 16)), nn.ReLU(),
        nn.utils.parametrizations.spectral_norm(nn.Linear(16, 10))),
    "old-style weight_norm (non-leaf weight attribute)": lambda: nn.Sequential(
        nn.Flatten(), nn.utils.weight_norm(nn.Linear(64, 16)), nn.ReLU(), nn.Linear(16, 10)),
    "a module holding a lock": Locked,
}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("case", list(UNUSUAL_MODELS))
def test_models_that_resist_copying_are_scored_untouched_and_without_deadlock(case):
    torch.manual_seed(0)
    model = UNUSUAL_MODELS[case]().double().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = make_batch(4)
    done = []
    worker = threading.Thread(target=lambda: done.append(curvfast.input_curvature(model, x, y)), daemon=True)
    worker.start()
    worker.join(120)
    assert done, "input_curvature did not return within 120 s (deadlock?)"
    true = reference_hessians(model.eval(), x, y).diagonal(dim1=1, dim2=2).sum(1)
    torch.testing.assert_close(done[0].value, true)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
