"""batch_size='auto': the memory-fitted batch (curvature._batching.largest_batch) on a simulated device, and the
engine's use of it (found once, recorded, reused on resume, scores unchanged)."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch.utils.data import TensorDataset

import curvfast
from curvfast.curvature._batching import largest_batch
from curvfast.errors import ConfigError

GIB = 2**30


class SimulatedDevice:
    """Peak memory ``base + per_sample * B (+ curve * B²)``; out of memory above ``total``; counts trials."""

    def __init__(self, base, per_sample, total, curve=0.0):
        self.base, self.per_sample, self.total, self.curve, self.trials = base, per_sample, total, curve, []

    def __call__(self, batch: int) -> int:
        self.trials.append(batch)
        peak = self.base + self.per_sample * batch + self.curve * batch**2
        if peak > self.total:
            raise torch.OutOfMemoryError(f"simulated: {peak} > {self.total}")
        return int(peak)


@pytest.mark.parametrize("base, per_sample, limit", [
    (2 * GIB, 50 * 2**20, 10**6),     # ResNet-50-like: ~50 MiB a sample
    (0.5 * GIB, 3 * 2**20, 10**6),     # small model: the 4096 cap
    (2 * GIB, 50 * 2**20, 100),        # the dataset is smaller than what fits
])
def test_the_batch_fills_the_budget_and_never_exceeds_it(base, per_sample, limit):
    device = SimulatedDevice(base, per_sample, total=80 * GIB)
    batch = largest_batch(device, 80 * GIB, limit=limit, margin=0.2)
    budget = 0.8 * 80 * GIB
    assert base + per_sample * batch <= budget
    best = min(limit, 4096, int((budget - base) // per_sample))
    assert batch >= min(best - 8, best * 0.99) and batch <= best  # a multiple of 8 below the best (or the limit)
    assert len(device.trials) <= 4


def test_a_wrong_linear_guess_is_halved_until_it_fits():
    """Memory that grows faster than linearly: the extrapolated batch runs out of memory and is halved."""
    device = SimulatedDevice(GIB, 10 * 2**20, total=40 * GIB, curve=2**17)
    batch = largest_batch(device, 40 * GIB, limit=10**6, margin=0.2)
    assert device(batch) <= 0.8 * 40 * GIB
    assert batch >= 8 and len(device.trials) > 3


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(ConfigError, match="even a batch of 1"):
        largest_batch(SimulatedDevice(10 * GIB, GIB, total=8 * GIB), 8 * GIB, limit=100)
    assert largest_batch(SimulatedDevice(GIB, 3 * GIB, total=8 * GIB), 8 * GIB, limit=100) == 1


def _data(n=40):
    gen = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen))


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))


def test_auto_batch_on_a_cpu_is_recorded_and_changes_no_score(tmp_path):
    data, model = _data(), _model()
    fixed = curvfast.score(model, data, method="sampled", top_classes=3, probes=3, batch_size=7)
    auto = curvfast.score(model, data, method="sampled", top_classes=3, probes=3, batch_size="auto")
    assert auto.settings["batch_size"] == 40 and auto.settings["batch_size_auto"] is True  # min(n, 64)
    assert fixed.settings["batch_size_auto"] is False
    torch.testing.assert_close(torch.as_tensor(auto.score), torch.as_tensor(fixed.score), rtol=1e-5, atol=0)


def test_a_resumed_auto_run_reuses_the_recorded_batch(tmp_path):
    out = str(tmp_path / "run")
    data, model = _data(), _model()
    first = curvfast.score(model, data, method="exact", batch_size="auto", chunk_size=16, out=out)
    manifest = os.path.join(out, "manifest.json")
    with open(manifest) as f:
        recorded = json.load(f)
    assert recorded["batch_size"] == 40 and recorded["identity"]["settings"]["batch_size"] == "auto"
    recorded["batch_size"] = 5  # as if another device had found 5: a resumed run keeps it
    with open(manifest, "w") as f:
        json.dump(recorded, f)
    os.unlink(os.path.join(out, "chunks", "000001.npz"))
    again = curvfast.score(model, data, method="exact", batch_size="auto", chunk_size=16, out=out)
    assert again.settings["batch_size"] == 5 and again.run["chunks_reused"] == 2
    torch.testing.assert_close(torch.as_tensor(again.score), torch.as_tensor(first.score), rtol=1e-5, atol=0)


@pytest.mark.parametrize("bad", [0, -3, "big", 2.5, True])
def test_a_bad_batch_size_names_auto(bad):
    with pytest.raises(ConfigError, match="'auto'"):
        curvfast.score(_model(), _data(8), batch_size=bad)
