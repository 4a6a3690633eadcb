"""Run folders (curvfast.chunks): locked against a second run, self-repairing after a corrupt manifest or leftover
temporary files, and bit-identical after a SIGKILL at a chosen write and a resume."""
from __future__ import annotations

import json
import re
import os
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
# the user's files: curvfast deletes or overwrites only what it wrote and recognises as its own
# --------------------------------------------------------------------------------------------
def _tree(root):
    """Every path under ``root`` (symlinks not followed): file bytes, link targets, folders."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir",)
            else:
                with open(path, "rb") as f:
                    out[rel] = ("file", f.read())
    return out


def _user_files(tmp):
    user = tmp / "user"
    user.mkdir()
    (user / "notes.txt").write_bytes(b"my notes\n")
    (user / "000000.npz").write_bytes(b"not a chunk")
    return user


def _foreign_in_chunks(tmp, out):
    (out / "chunks").mkdir(parents=True)
    (out / "chunks" / "notes.txt").write_bytes(b"x\n")


def _foreign_folder_in_chunks(tmp, out):
    (out / "chunks" / "mine").mkdir(parents=True)
    (out / "chunks" / "mine" / "a.txt").write_bytes(b"a\n")


def _chunk_named_json_not_a_record(tmp, out):
    (out / "chunks").mkdir(parents=True)
    (out / "chunks" / "000000.json").write_text('{"my": "data"}')


def _chunk_named_npz_not_a_chunk(tmp, out):
    (out / "chunks").mkdir(parents=True)
    (out / "chunks" / "000001.npz").write_bytes(b"user bytes")


def _chunks_a_symlink(tmp, out):
    out.mkdir()
    os.symlink(_user_files(tmp), out / "chunks")


def _chunks_a_symlink_to_an_empty_folder(tmp, out):
    out.mkdir()
    (tmp / "empty").mkdir()
    os.symlink(tmp / "empty", out / "chunks")


def _chunks_a_file(tmp, out):
    out.mkdir()
    (out / "chunks").write_bytes(b"a file\n")


def _lock_a_symlink(tmp, out):
    out.mkdir()
    os.symlink(_user_files(tmp) / "notes.txt", out / ".lock")


def _lock_a_foreign_file(tmp, out):
    out.mkdir()
    (out / ".lock").write_bytes(b"my own lock file, not curvfast's\n")


def _foreign_in_chunks_of_an_earlier_run(tmp, out):  # settings differ and overwrite=True: still not the user's file
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": 1, "run": "another", "identity": {}}))
    _foreign_in_chunks(tmp, out)


def _symlinked_chunk_record(tmp, out):
    (out / "chunks").mkdir(parents=True)
    os.symlink(_user_files(tmp) / "notes.txt", out / "chunks" / "000000.json")


def _scores_of_the_user_without_a_manifest(tmp, out):
    out.mkdir()
    (out / "scores.npz").write_bytes(b"my own scores")


# (layout, what the error names, overwrite)
FOREIGN = [
    (_foreign_in_chunks, "notes.txt", False),
    (_foreign_folder_in_chunks, "mine", False),
    (_chunk_named_json_not_a_record, "000000.json", False),
    (_chunk_named_npz_not_a_chunk, "000001.npz", False),
    (_chunks_a_symlink, "symlink", False),
    (_chunks_a_symlink_to_an_empty_folder, "symlink", False),
    (_chunks_a_file, "not a folder", False),
    (_lock_a_symlink, "symlink", False),
    (_lock_a_foreign_file, "not curvfast's lock", False),
    (_foreign_in_chunks_of_an_earlier_run, "notes.txt", True),
    (_symlinked_chunk_record, "000000.json", False),
    (_scores_of_the_user_without_a_manifest, "scores.npz without a manifest", False),
]


@pytest.mark.parametrize("layout,names,overwrite", FOREIGN, ids=[f[0].__name__.strip("_") for f in FOREIGN])
def test_a_run_folder_holding_the_users_files_is_refused_and_left_byte_for_byte(layout, names, overwrite, digits48,
                                                                               small_model, tmp_path):
    from curvfast.errors import ConfigError

    out = tmp_path / "o"
    layout(tmp_path, out)
    before = _tree(tmp_path)
    with pytest.raises(ConfigError, match=names) as info:
        curvfast.score(small_model, digits48, batch_size=16, chunk_size=16, out=str(out), overwrite=overwrite)
    assert re.search(r"move (it|them) out|remove", str(info.value)), info.value  # the fix
    after = _tree(tmp_path)
    if (out / ".lock") not in [tmp_path / k for k in before]:
        after.pop(os.path.relpath(out / ".lock", tmp_path), None)  # the refused run's own lock file may stay
    assert after == before


def test_a_symlinked_model_folder_is_refused(digits48, small_model, tmp_path):
    from curvfast.errors import ConfigError

    out = tmp_path / "o"
    out.mkdir()
    os.symlink(_user_files(tmp_path), out / "a")
    before = _tree(tmp_path)
    with pytest.raises(ConfigError, match="symlink"):
        curvfast.score_models({"a": small_model, "b": small_model}, digits48, batch_size=16, chunk_size=16,
                              out=str(out))
    after = _tree(tmp_path)
    after.pop("o/.lock", None)
    assert after == before


def test_a_killed_runs_leftovers_are_still_recognised_and_resumed(digits48, small_model, tmp_path):
    first = curvfast.score(small_model, digits48, batch_size=16, chunk_size=16, out=str(tmp_path))
    (tmp_path / "chunks" / "000001.json").unlink()  # killed between the .npz and its record
    (tmp_path / "chunks" / ".tmp-k2j4h5g6000002.npz").write_bytes(b"half")
    again = curvfast.score(small_model, digits48, batch_size=16, chunk_size=16, out=str(tmp_path))
    assert again.run["chunks_computed"] == 1
    np.testing.assert_array_equal(first.score, again.score)


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


def test_overwrite_never_deletes_outside_the_run_folder_whatever_the_manifest_names(digits48, small_model, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "scores.npz").write_bytes(b"not curvfast's")
    out = tmp_path / "o"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": 1, "run": "other",
                                                   "identity": {"models": {"../victim": {}}}}))
    curvfast.score(small_model, digits48, batch_size=16, chunk_size=16, out=str(out), overwrite=True)
    assert (victim / "scores.npz").read_bytes() == b"not curvfast's"
