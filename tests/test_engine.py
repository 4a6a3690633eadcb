"""Dataset scoring: batch-size and order invariance, aligned outputs, atomic run folders."""
import json
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import curvfast
from curvfast.models import SmallCNN


@pytest.fixture
def digits_model():
    torch.manual_seed(0)
    return SmallCNN(1, 10, width=8).eval()


@pytest.mark.parametrize("method", ["exact", "hutchinson", "fd"])
def test_scores_do_not_depend_on_batching_or_order(digits_model, digits_small, method):
    kw = {"method": method, "probes": 6 if method != "exact" else None, "seed": 11}
    ref = curvfast.score(digits_model, digits_small, batch_size=64, **kw)
    assert np.array_equal(ref.index, np.arange(len(digits_small)))
    for bs in (1, 7):
        other = curvfast.score(digits_model, digits_small, batch_size=bs, **kw)
        np.testing.assert_allclose(other.score, ref.score, rtol=2e-4, atol=1e-7)
    shuffled = DataLoader(digits_small, batch_size=7, shuffle=True, generator=torch.Generator().manual_seed(3))
    other = curvfast.score(digits_model, shuffled, **kw)
    np.testing.assert_array_equal(other.index, ref.index)
    np.testing.assert_allclose(other.score, ref.score, rtol=2e-4, atol=1e-7)
    if method != "exact":
        np.testing.assert_allclose(other.stderr, ref.stderr, rtol=2e-3, atol=1e-7)


def test_score_writes_run_folder_atomically(digits_model, digits_small, tmp_path):
    out = tmp_path / "run"
    res = curvfast.score(digits_model, digits_small, method="hutchinson", probes=4, batch_size=32, out=str(out))
    assert sorted(os.listdir(out)) == ["results.json", "samples.csv", "samples.parquet",
                                       "scores.npz"]  # no temp files left behind
    data = np.load(out / "scores.npz")
    assert set(data.files) == {"index", "score", "stderr", "loss", "label", "prediction"}
    np.testing.assert_array_equal(data["score"], res.score)
    meta = json.loads((out / "results.json").read_text())
    assert meta["settings"]["method"] == "hutchinson" and meta["summary"]["count"] == len(digits_small)
    labels = np.array([digits_small[i][1] for i in range(len(digits_small))])
    np.testing.assert_array_equal(data["label"], labels)


def test_score_restores_train_mode(digits_model, digits_small):
    digits_model.train()
    flags = [m.training for m in digits_model.modules()]
    req = [p.requires_grad for p in digits_model.parameters()]
    res_train = curvfast.score(digits_model, digits_small, method="exact", batch_size=48)
    assert [m.training for m in digits_model.modules()] == flags
    assert [p.requires_grad for p in digits_model.parameters()] == req
    digits_model.eval()
    res_eval = curvfast.score(digits_model, digits_small, method="exact", batch_size=48)
    np.testing.assert_allclose(res_train.score, res_eval.score, rtol=1e-6)  # scored in eval mode both times


def test_empty_dataset_is_refused(digits_model):
    from torch.utils.data import TensorDataset

    empty = TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        curvfast.score(digits_model, empty)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_device_without_gpu_is_a_clear_error(digits_model, digits_small):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        curvfast.score(digits_model, digits_small, device="cuda")


def _timings_that_change_their_mind(monkeypatch):
    """Fake pass timings: the first calibration finds width 1 fastest, every later one the widest."""
    from curvfast.curvature import _batching as batching

    calls = {"warmups": 0}
    real_width = batching.PassPlanner._width

    def width(self, *args, **kwargs):
        calls["warmups"] += 1
        return real_width(self, *args, **kwargs)

    monkeypatch.setattr(batching.PassPlanner, "_width", width)
    monkeypatch.setattr(batching, "_seconds", lambda trial, w, device: float(w) if calls["warmups"] <= 1 else 1.0)


def test_pass_width_is_measured_once_and_pinned_for_every_batch(digits_model, digits_small, monkeypatch, tmp_path):
    """A run measures the class-pass width on its first batch and uses it for every batch (the
    last, smaller batch has another shape, which the planner would otherwise time afresh), records
    it in the manifest, and a resumed run reuses the recorded width whatever its own timings say."""
    from curvfast import engine

    _timings_that_change_their_mind(monkeypatch)
    used = []
    real = engine.input_curvature

    def recording(*args, **kwargs):
        res = real(*args, **kwargs)
        used.append(res.pass_width)
        return res

    monkeypatch.setattr(engine, "input_curvature", recording)
    out = tmp_path / "run"
    res = curvfast.score(digits_model, digits_small, method="exact", batch_size=40, out=str(out), chunk_size=40)
    assert used == [1, 1, 1], "3 batches (40, 40, 16), each scored once, all with the measured width"
    assert res.settings["pass_widths"] == {"model": 1}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pass_widths"] == {"model": 1}

    for suffix in ("npz", "json"):  # lose the last chunk, then resume in a fresh planner state
        os.unlink(out / "chunks" / f"000002.{suffix}")
    monkeypatch.setattr(engine, "VJP_PLANNER", type(engine.VJP_PLANNER)())
    monkeypatch.setattr("curvfast.curvature._logit_space.VJP_PLANNER", engine.VJP_PLANNER)
    used.clear()
    again = curvfast.score(digits_model, digits_small, method="exact", batch_size=40, out=str(out), chunk_size=40)
    assert again.run["chunks_computed"] == 1 and used == [1]
    np.testing.assert_array_equal(again.score, res.score)
