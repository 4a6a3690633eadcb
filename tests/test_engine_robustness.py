"""curvfast.score (curvfast.engine) from several threads: bit-identical to sequential calls."""
from __future__ import annotations

import numpy as np
import torch

import curvfast
from _robust_helpers import in_threads


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
