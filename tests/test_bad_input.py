"""Every kind of bad input gets a clear Python error naming the problem and the fix."""
import pytest
import torch
from torch import nn

import curvfast
from conftest import make_batch, make_model
from curvfast.curvature._model import unwrap_model
from curvfast.errors import CheckpointError, NonFiniteError, UnsupportedModelError


@pytest.fixture
def model():
    return make_model("pl_residual", 10)


def test_wrong_shapes(model):
    x, y = make_batch(3)
    with pytest.raises(ValueError, match=r"y must have shape \(B,\)"):
        curvfast.input_curvature(model, x, y[:2])
    with pytest.raises(ValueError, match="batched"):
        curvfast.input_curvature(model, x[0, 0, 0], y)


def test_nan_and_inf_inputs(model):
    x, y = make_batch(3)
    x[1, 0, 2, 2] = float("nan")
    x[2, 0, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"NaN or Inf in sample\(s\) \[1, 2\]"):
        curvfast.input_curvature(model, x, y)


def test_labels_out_of_range(model):
    x, _ = make_batch(3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        curvfast.input_curvature(model, x, torch.tensor([0, 10, 3]))
    with pytest.raises(TypeError, match="integer class labels"):
        curvfast.input_curvature(model, x, torch.tensor([0.0, 1.0, 2.0]))


def test_integer_inputs(model):
    with pytest.raises(TypeError, match="floating-point"):
        curvfast.input_curvature(model, torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]))


def test_dtype_mismatch(model):
    x, y = make_batch(2, dtype=torch.float32)
    with pytest.raises(TypeError, match="model's parameters are torch.float64"):
        curvfast.input_curvature(model, x, y)


class TupleOut(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x), {"aux": x.mean()}


def test_tuple_output_needs_output_transform(model):
    x, y = make_batch(2)
    with pytest.raises(UnsupportedModelError, match="output_transform"):
        curvfast.input_curvature(TupleOut(model), x, y)
    a = curvfast.input_curvature(TupleOut(model), x, y, output_transform=lambda out: out[0]).value
    torch.testing.assert_close(a, curvfast.input_curvature(model, x, y).value)


def test_unknown_method_statistic_and_probes(model):
    x, y = make_batch(2)
    with pytest.raises(ValueError, match="method must be one of"):
        curvfast.input_curvature(model, x, y, method="magic")
    with pytest.raises(ValueError, match="statistic must be one of"):
        curvfast.input_curvature(model, x, y, statistic="determinant")
    with pytest.raises(ValueError, match="probes must be a positive int"):
        curvfast.input_curvature(model, x, y, method="hutchinson", probes=0)


def test_wrappers_are_unwrapped(model):
    assert unwrap_model(nn.DataParallel(model)) is model
    assert unwrap_model(torch.compile(model)) is model
    x, y = make_batch(2)
    a = curvfast.input_curvature(torch.compile(nn.DataParallel(model)), x, y).value
    torch.testing.assert_close(a, curvfast.input_curvature(model, x, y).value)


def test_missing_and_corrupt_checkpoint(tmp_path):
    from curvfast.io import load_checkpoint

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(str(bad))


def test_ddp_wrapper_is_unwrapped(model, tmp_path):
    """A real DistributedDataParallel model (gloo, one process) scores like the bare model."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        assert unwrap_model(ddp) is model
        x, y = make_batch(2)
        torch.testing.assert_close(curvfast.input_curvature(ddp, x, y).value, curvfast.input_curvature(model, x, y).value)
    finally:
        dist.destroy_process_group()
