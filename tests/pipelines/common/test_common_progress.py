"""Progress bars move within long steps: training a group of models moves the bar every step."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import curvfast.pipelines.common.multitrain as multitrain


def test_training_bar_moves_every_step_and_ends_on_whole_models(monkeypatch):
    seen = []
    real_init = multitrain._Ticking.__init__

    def init(self, batches, bar, models):
        real_init(self, batches, bar, models)
        if not hasattr(bar, "watched"):  # one bar for every group
            update, bar.watched = bar.update, True
            bar.update = lambda n=1: (update(n), seen.append(bar.n))

    monkeypatch.setattr(multitrain._Ticking, "__init__", init)
    x, y = torch.rand(12, 1, 2, 2), torch.arange(12) % 3
    keep = np.ones((3, 12), dtype=bool)
    multitrain.train_subset_models(lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), x, y, keep, epochs=2,
                                   batch_size=4, models_per_pass=2, stack=False, progress=True)
    # 2 groups (2 + 1 models) x 6 steps: the bar moves on every step, not once per group
    assert len(seen) == 12 and len(set(np.round(seen, 6))) == 12
    np.testing.assert_allclose([seen[5], seen[-1]], [2.0, 3.0])
