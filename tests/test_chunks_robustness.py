"""Run folders (curvfast.chunks): locked against a second run, self-repairing after a corrupt manifest or leftover
temporary files, and bit-identical after a SIGKILL at a chosen write and a resume."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import curvfast


# --------------------------------------------------------------------------------------------
# run folders
# --------------------------------------------------------------------------------------------
@pytest.fixture
def small_model():
    from curvfast.models import build_model

    torch.manual_seed(0)
    return build_model("small_cnn", 10, 1).eval()


def test_a_second_run_on_a_locked_folder_is_refused(digits48, small_model, tmp_path):
    from curvfast.chunks import RunFolder, RunFolderBusy

    first = RunFolder(str(tmp_path), {"x": 1}, 48, 16)
    first.open()
    try:
        with pytest.raises(RunFolderBusy, match="in use by another run"):
            curvfast.score(small_model, digits48, batch_size=16, chunk_size=16, out=str(tmp_path))
    finally:
        first.close()
    res = curvfast.score(small_model, digits48, batch_size=16, chunk_size=16, out=str(tmp_path), overwrite=True)
    assert res.run["chunks_computed"] == 3


def test_corrupt_manifest_is_rebuilt_keeping_good_chunks(digits48, small_model, tmp_path):
    first = curvfast.score(small_model, digits48, batch_size=16, chunk_size=16, out=str(tmp_path))
    (tmp_path / "manifest.json").write_text("{ not json")
    (tmp_path / ".tmp-abc123results.json").write_text("left by a kill")
    (tmp_path / "chunks" / ".tmp-xyz000001.npz").write_text("left by a kill")
    again = curvfast.score(small_model, digits48, batch_size=16, chunk_size=16, out=str(tmp_path))
    assert again.run["chunks_reused"] == 3 and again.run["chunks_computed"] == 0
    np.testing.assert_array_equal(first.score, again.score)
    leftovers = [p for p in tmp_path.rglob(".tmp-*")]
    assert not leftovers, leftovers
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "complete"


# --------------------------------------------------------------------------------------------
# fault injection: SIGKILL at chosen file operations, then resume: bit-identical results
# --------------------------------------------------------------------------------------------
KILL_SCRIPT = """
import os, signal, sys
import torch
from torch.utils.data import Subset
import curvfast
from curvfast.data import DigitsDataset
from curvfast.models import build_model

nth, moment, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
real_replace, calls = os.replace, [0]

def replace(src, dst):  # every atomic write ends in os.replace
    calls[0] += 1
    if calls[0] == nth and moment == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
    if calls[0] == nth and moment == "after":
        os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
torch.manual_seed(0)
model = build_model("small_cnn", 10, 1).eval()
curvfast.score(model, Subset(DigitsDataset("train"), range(48)), batch_size=16, chunk_size=16, out=out)
"""

# os.replace calls of a 3-chunk run: 1 manifest, 2/3 chunk 0 (.npz, record), 4/5 chunk 1, 6/7 chunk 2,
# 8 scores.npz, 9 results.json, 10 the completed manifest
KILL_POINTS = [(1, "before"), (2, "before"), (2, "after"), (5, "before"), (8, "after"), (9, "before"), (10, "before")]


@pytest.mark.parametrize("nth,moment", KILL_POINTS)
def test_sigkill_at_a_chosen_write_then_resume_is_bit_identical(nth, moment, digits48, small_model, tmp_path):
    reference = curvfast.score(small_model, digits48, batch_size=16, chunk_size=16, out=str(tmp_path / "ref"))
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(nth), moment, str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr
    resumed = curvfast.score(small_model, digits48, batch_size=16, chunk_size=16, out=str(out))
    np.testing.assert_array_equal(reference.score, resumed.score)
    np.testing.assert_array_equal(reference.loss, resumed.loss)
    assert not list(out.rglob(".tmp-*"))
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
