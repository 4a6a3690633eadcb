"""Resumable runs in one process: chunked = unchunked, corrupt chunks, refused restarts, shadow models.

kill -9 at random points (one process and torchrun) is in tests/test_distributed.py.
"""
import json
import os

import numpy as np
import pytest
import torch

import curvfast
from curvfast.distributed import _forwarded_error
from curvfast.engine import score_models
from curvfast.errors import CheckpointError, ConfigError, UnknownNameError
from curvfast.models import SmallCNN

KW = {"method": "zo", "probes": 2, "seed": 5, "batch_size": 16}  # random probes: checks index keying


def _model(seed=0):
    """A small, confident net (last layer x30) whose curvature is far above float32 rounding."""
    torch.manual_seed(seed)
    model = SmallCNN(1, 10, width=4).eval()
    with torch.no_grad():
        model.fc.weight.mul_(30.0)
    return model


def _same(a, b):
    for key in ("index", "label", "score", "stderr", "loss"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


@pytest.fixture(scope="module")
def reference():
    """The uninterrupted, unchunked run on the first 96 training digits."""
    from torch.utils.data import Subset

    from curvfast.data import DigitsDataset

    data = Subset(DigitsDataset("train"), range(96))
    return data, curvfast.score(_model(), data, **KW)


def test_chunked_run_equals_unchunked_and_second_call_reuses_everything(reference, tmp_path):
    data, ref = reference
    out = str(tmp_path / "run")
    first = curvfast.score(_model(), data, out=out, chunk_size=32, **KW)
    _same(first, ref)  # bit-identical: batches never straddle chunks, probes keyed by index
    assert first.run == {"world_size": 1, "chunks": 3, "chunks_reused": 0, "chunks_computed": 3, "chunks_corrupt": 0}
    manifest = json.loads(open(os.path.join(out, "manifest.json")).read())
    assert manifest["status"] == "complete" and sorted(manifest["chunks"]) == ["000000", "000001", "000002"]
    assert manifest["identity"]["settings"]["seed"] == 5 and manifest["identity"]["data"]["size"] == 96
    again = curvfast.score(_model(), data, out=out, chunk_size=32, **KW)
    assert again.run["chunks_reused"] == 3 and again.run["chunks_computed"] == 0
    _same(again, ref)
    assert sorted(os.listdir(os.path.join(out, "chunks"))) == [f"00000{k}.{e}" for k in range(3) for e in ("json", "npz")]


def test_truncated_altered_and_uncommitted_chunks_are_recomputed(reference, tmp_path):
    data, ref = reference
    out = tmp_path / "run"
    curvfast.score(_model(), data, out=str(out), chunk_size=16, **KW)  # 6 chunks
    chunks = out / "chunks"
    blob = (chunks / "000001.npz").read_bytes()
    (chunks / "000001.npz").write_bytes(blob[: len(blob) // 2])  # truncated
    blob = bytearray((chunks / "000003.npz").read_bytes())
    blob[-40] ^= 0x01  # one flipped bit
    (chunks / "000003.npz").write_bytes(bytes(blob))
    (chunks / "000004.json").unlink()  # killed between the .npz and its commit record
    (chunks / ".tmp-xyz000005.npz").write_bytes(b"half")  # killed inside an atomic write
    res = curvfast.score(_model(), data, out=str(out), chunk_size=16, **KW)
    assert res.run["chunks_corrupt"] == 2 and res.run["chunks_computed"] == 3 and res.run["chunks_reused"] == 3
    _same(res, ref)
    assert not any(p.name.startswith(".tmp-") for p in chunks.iterdir())


def test_restart_with_other_settings_or_model_is_refused_unless_overwrite(reference, tmp_path):
    data, ref = reference
    out = str(tmp_path / "run")
    curvfast.score(_model(), data, out=out, chunk_size=32, **KW)
    with pytest.raises(ConfigError, match=r"different settings.*seed: 5 -> 6.*overwrite"):
        curvfast.score(_model(), data, out=out, chunk_size=32, **{**KW, "seed": 6})
    with pytest.raises(ValueError, match=r"different settings.*models\.model\.sha256"):
        curvfast.score(_model(seed=1), data, out=out, chunk_size=32, **KW)
    with pytest.raises(ValueError, match=r"data\.(sha256|size)"):
        curvfast.score(_model(), torch.utils.data.Subset(data, range(64)), out=out, chunk_size=32, **KW)
    with pytest.raises(ValueError, match="chunk_size"):
        curvfast.score(_model(), data, out=out, chunk_size=48, **KW)
    other = curvfast.score(_model(seed=1), data, out=out, chunk_size=32, overwrite=True, **KW)
    assert other.run["chunks_computed"] == 3 and not np.array_equal(other.score, ref.score)
    _same(other, curvfast.score(_model(seed=1), data, **KW))


def test_unchunked_results_in_a_folder_are_not_silently_mixed(reference, tmp_path):
    data, _ = reference
    curvfast.score(_model(), data, out=str(tmp_path), **KW)
    with pytest.raises(ConfigError, match="without a manifest"):
        curvfast.score(_model(), data, out=str(tmp_path), chunk_size=32, **KW)


def test_shadow_models_in_one_pass_equal_separate_runs(reference, tmp_path):
    data, ref = reference
    models = {"target": _model(0), "shadow1": _model(1)}
    res = score_models(models, data, out=str(tmp_path), chunk_size=48, **KW)
    _same(res["target"], ref)
    _same(res["shadow1"], curvfast.score(_model(1), data, **KW))
    index = json.loads((tmp_path / "results.json").read_text())
    assert set(index["models"]) == {"target", "shadow1"}
    disk = np.load(tmp_path / "shadow1" / "scores.npz")
    np.testing.assert_array_equal(disk["score"], res["shadow1"].score)


@pytest.mark.parametrize("error", [ConfigError, UnknownNameError, CheckpointError, ValueError, FileNotFoundError])
def test_an_error_on_rank_0_is_raised_with_its_type_on_every_rank(error):
    """A multi-rank run re-raises rank 0's user-fixable error on the other ranks with the same class and message."""
    again = _forwarded_error(error.__name__, "checkpoint 'm.pt' does not name its model; pass --model")
    assert type(again) is error and str(again) == "checkpoint 'm.pt' does not name its model; pass --model"


def test_any_other_error_on_rank_0_is_a_runtime_error_naming_it():
    again = _forwarded_error("KeyError", "'x'")
    assert type(again) is RuntimeError and str(again) == "rank 0: KeyError: 'x'"
