"""Progress bars: mia's signals bar moves per model and batch; every bar is tqdm.auto (notebooks get widgets)."""
from __future__ import annotations

import re

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import REPO
from curvfast.pipelines.mia.signals import compute_signals


def test_signals_bar_counts_models_times_batches(capsys):
    """2 models x 3 batches: the bar reaches 6/6 (it sat at 0/1 while one batch ran through every shadow model)."""
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Flatten(), nn.Linear(4, 3)) for _ in range(2)]
    data = DataLoader(TensorDataset(torch.rand(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1])), batch_size=2)
    compute_signals(models, data, signals=("loss",), progress=True)
    assert "6/6" in capsys.readouterr().err


def test_every_progress_bar_is_tqdm_auto():
    plain = [str(p.relative_to(REPO)) for p in (REPO / "curvfast").rglob("*.py")
             if re.search(r"^\s*(from tqdm import|import tqdm\b)", p.read_text(), re.M)]
    assert plain == []
