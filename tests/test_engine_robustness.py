"""curvfast.score (curvfast.engine) from several threads: bit-identical to sequential calls."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import curvfast
from _robust_helpers import in_threads
from curvfast.errors import ConfigError


def test_four_threads_scoring_datasets_equal_sequential(digits48):
    from curvfast.models import build_model

    def model(seed):
        torch.manual_seed(seed)
        return build_model("small_cnn", 10, 1).eval()

    models = [model(s) for s in range(4)]

    def run(i):
        return curvfast.score(models[i], digits48, method="hutchinson", probes=3, batch_size=16, seed=i).score

    sequential = [run(i) for i in range(4)]
    for seq, par in zip(sequential, in_threads(run, 4)):
        np.testing.assert_array_equal(seq, par)


class _BatchStandardised(torch.nn.Module):
    """A digits classifier whose hidden layer is standardised with the batch's own statistics (in eval too)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(64, 8), torch.nn.Linear(8, 10)

    def forward(self, x):
        h = self.fc1(x.flatten(1))
        return self.fc2(torch.nn.functional.batch_norm(h, None, None, training=True).relu())


def test_score_refuses_a_model_whose_scores_would_depend_on_the_batch_size(digits48):
    from curvfast.errors import BatchDependentModelError

    for batch_size in (16, 1):
        with pytest.raises(BatchDependentModelError, match="depends on the rest of its batch"):
            curvfast.score(_BatchStandardised().eval(), digits48, method="hutchinson", probes=2, batch_size=batch_size)


@pytest.mark.parametrize("name", ["scores.npz", "results.json", "samples.csv"])
def test_an_unchunked_run_never_overwrites_files_it_did_not_write(tmp_path, name):
    """score(out=..., chunk_size=None) over a folder holding the user's own output-named file: refused, file intact."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    data = torch.utils.data.TensorDataset(torch.rand(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2]))
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_bytes(b"the user's own file")
    with pytest.raises(ConfigError, match="not written by curvfast"):
        curvfast.score(model, data, method="exact", out=str(out))
    assert (out / name).read_bytes() == b"the user's own file"
    curvfast.score(model, data, method="exact", out=str(out), overwrite=True)
    again = curvfast.score(model, data, method="exact", out=str(out))  # curvfast's own files: replaced freely
    assert (out / "scores.npz").exists() and again.score.shape == (6,)
