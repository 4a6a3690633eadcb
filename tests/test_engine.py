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
    assert sorted(os.listdir(out)) == ["results.json", "scores.npz"]  # no temp files left behind
    data = np.load(out / "scores.npz")
    assert set(data.files) == {"index", "score", "stderr", "loss", "label"}
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
