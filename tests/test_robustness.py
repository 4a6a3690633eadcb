"""Hostile-user robustness: every bad input gets a clear error (never a silent wrong answer or
a hang), scoring is thread-safe and leaves the caller's model untouched, and run folders are
locked, self-repairing and confined.

Table-driven: each row is one reported case. Cases that used to hang run in a subprocess
with a timeout, so a regression fails instead of blocking the suite.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

import curvfast
from conftest import make_batch, make_model, reference_hessians
from curvfast import ops
from curvfast.cli import main
from curvfast.data import DigitsDataset
from curvfast.errors import NonFiniteError

native = pytest.mark.skipif(not ops.native_available(), reason="native extension not built")
C = torch.ops.curvfast if ops.native_available() else None
IDS = torch.arange(3)


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


# --------------------------------------------------------------------------------------------
# native ops called directly: every bad call raises RuntimeError naming the problem
# --------------------------------------------------------------------------------------------
NATIVE_CASES = {
    "probes offset+count overflows int64": (
        lambda: C.probes(IDS, 0, 2**63 - 1, 1, 4, "rademacher", torch.float32), "probe indices"),
    "probes offset beyond 2^32": (
        lambda: C.probes(IDS, 0, 2**33, 0, 4, "rademacher", torch.float32), "probe indices"),
    "logit_factor num_exact+num_tail overflows int64": (
        lambda: C.logit_factor(torch.randn(3, 5), torch.zeros(3, dtype=torch.long), IDS, 1, 2**63 - 1, 0),
        "num_exact \\+ num_tail"),
    "probe_moments count+P overflows int64": (
        lambda: C.probe_moments(torch.ones(1, 2, 3), torch.ones(1, 2, 3), torch.zeros(1, 2, dtype=torch.float64),
                                torch.zeros(1, 2, dtype=torch.float64), 2**63 - 1), "count"),
    "logit_factor labels on meta": (
        lambda: C.logit_factor(torch.randn(3, 5), torch.zeros(3, dtype=torch.long, device="meta"), IDS, 5, 0, 0),
        "labels is on meta"),
    "logit_factor logits on meta, rest on cpu": (
        lambda: C.logit_factor(_meta(3, 5), torch.zeros(3, dtype=torch.long), IDS, 5, 0, 0), "is on cpu"),
    "weighted_sq_norms weights on meta": (
        lambda: C.weighted_sq_norms(torch.randn(2, 3, 4), _meta(2, 3)), "weights is on meta"),
    "probe_moments mean on meta": (
        lambda: C.probe_moments(torch.ones(1, 2, 3), torch.ones(1, 2, 3), _meta(1, 2, dtype=torch.float64),
                                torch.zeros(1, 2, dtype=torch.float64), 0), "mean is on meta"),
    "meta logit_factor refuses num_tail=0 like the real kernel": (
        lambda: C.logit_factor(_meta(3, 10), torch.empty(3, dtype=torch.long, device="meta"),
                               torch.empty(3, dtype=torch.long, device="meta"), 3, 0, 0), "num_tail must be >= 1"),
    "meta probes refuses overflow like the real kernel": (
        lambda: C.probes(torch.empty(3, dtype=torch.long, device="meta"), 0, 2**62, 2**62, 0, "rademacher",
                         torch.float32), "probe indices"),
    "weighted_sq_norms input requiring grad": (
        lambda: C.weighted_sq_norms(torch.randn(2, 3, 4).requires_grad_(), torch.rand(2, 3)), "requires grad"),
    "probe_moments input requiring grad": (
        lambda: C.probe_moments(torch.ones(1, 2, 3), torch.ones(1, 2, 3).requires_grad_(),
                                torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), 0),
        "requires grad"),
    "patch_gram dilation overflowing int64": (
        lambda: C.patch_gram(torch.randn(1, 2, 5, 5), torch.ones(1, 3, 3), [3, 3], [1, 1], [2**62, 1], 1, None),
        "does not fit"),
    "patch_gram mask on meta": (
        lambda: C.patch_gram(torch.randn(1, 2, 5, 5), _meta(1, 3, 3), [3, 3], [1, 1], [1, 1], 1, None), "mask is on meta"),
    "patch_gram_add_ accumulator requiring grad": (
        lambda: C.patch_gram_add_(torch.zeros(1, 18, 18, dtype=torch.float64, requires_grad=True), torch.randn(1, 2, 5, 5),
                                  torch.ones(1, 3, 3), [3, 3], [1, 1], [1, 1], 1, None), "requires grad"),
    "logit_factor logits requiring grad": (
        lambda: C.logit_factor(torch.randn(3, 5).requires_grad_(), torch.zeros(3, dtype=torch.long), IDS, 5, 0, 0),
        "requires grad"),
}


@native
@pytest.mark.parametrize("case", list(NATIVE_CASES))
def test_native_op_refuses(case):
    call, match = NATIVE_CASES[case]
    with pytest.raises(RuntimeError, match=match):
        call()


@native
def test_meta_kernels_give_the_real_shapes():
    ids, y = torch.arange(3), torch.tensor([0, 4, 2])
    logits = torch.randn(3, 10)
    real = C.logit_factor(logits, y, ids, 3, 2, 0)
    fake = C.logit_factor(logits.to("meta"), y.to("meta"), ids.to("meta"), 3, 2, 0)
    assert [(t.shape, t.dtype) for t in real] == [(t.shape, t.dtype) for t in fake]
    assert all(t.is_meta for t in fake)
    assert C.probes(ids.to("meta"), 0, 1, 4, 5, "gaussian", torch.float64).shape == (3, 4, 5)
    gram = C.patch_gram(_meta(2, 6, 9, 11), _meta(2, 4, 7), [2, 3], [2, 1], [1, 2], 3, _meta(3, 12, 5))
    assert gram.shape == (3, 12, 5) and gram.dtype == torch.float64 and gram.is_meta


HANG_SCRIPTS = {  # each used to run forever
    "probes offset+count overflowing to a negative sum": """
        import torch, curvfast
        try:
            torch.ops.curvfast.probes(torch.arange(2), 0, 2**62, 2**62, 0, "rademacher", torch.float32)
        except RuntimeError as err:
            print("refused:", err)
    """,
    "file list naming a FIFO": """
        import os, sys, tempfile
        from curvfast.data.streaming import FileListDataset
        d = tempfile.mkdtemp()
        os.mkfifo(os.path.join(d, "pipe.jpg"))
        open(os.path.join(d, "list.txt"), "w").write("pipe.jpg 0\\n")
        try:
            FileListDataset(os.path.join(d, "list.txt"))[0]
        except OSError as err:
            print("refused:", err)
    """,
}


@pytest.mark.parametrize("case", list(HANG_SCRIPTS))
def test_former_hangs_end_with_an_error(case):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(HANG_SCRIPTS[case])], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused:"), proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# the Python API: no NaN / zero / wrong value without an error
# --------------------------------------------------------------------------------------------
def _nan_weight_model():
    model = make_model("gelu", 10)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    return model


def _curv(model_kind="pl_residual", **kw):
    model = kw.pop("model", None) or make_model(model_kind, 10)
    x, y = kw.pop("batch", None) or make_batch(3)
    return lambda: curvfast.input_curvature(model, x, y, **kw)


API_CASES = {
    "fd step 0": (_curv("gelu", method="fd", step=0.0), ValueError, "step must be a positive"),
    "zo step 0": (_curv("gelu", method="zo", step=0.0), ValueError, "step must be a positive"),
    "fd step nan": (_curv("gelu", method="fd", step=float("nan")), ValueError, "step must be a positive"),
    "zo step -1e-3": (_curv("gelu", method="zo", step=-1e-3), ValueError, "step must be a positive"),
    "NaN weight, hutchinson": (_curv(model=_nan_weight_model(), method="hutchinson", probes=2), ValueError,
                               "NaN or Inf in fc.weight"),
    "NaN weight, fd": (_curv(model=_nan_weight_model(), method="fd"), ValueError, "NaN or Inf in fc.weight"),
    "NaN weight, auto (not 'smooth pieces')": (_curv(model=_nan_weight_model()), ValueError, "NaN or Inf in fc.weight"),
    "float16 inputs and model": (_curv(model=make_model("pl_mlp", 10, dtype=torch.float16),
                                       batch=make_batch(3, dtype=torch.float16)), TypeError, "x is torch.float16"),
    "bfloat16 inputs and model": (_curv(model=make_model("pl_mlp", 10, dtype=torch.bfloat16),
                                        batch=make_batch(3, dtype=torch.bfloat16)), TypeError, "x is torch.bfloat16"),
    "uint64 sample_ids": (_curv(method="hutchinson", probes=2, sample_ids=torch.tensor([0, 1, 2], dtype=torch.uint64)), TypeError,
                          "sample_ids"),
    "input shape the model cannot take": (_curv(batch=(torch.randn(3, 3, 8, 8, dtype=torch.float64), torch.zeros(3, dtype=torch.long))),
                                          ValueError, r"cannot take x of shape \(3, 3, 8, 8\)"),
    "meta inputs": (_curv(batch=(torch.empty(3, 1, 8, 8, dtype=torch.float64, device="meta"), torch.zeros(3))),
                    ValueError, "meta"),
    "probes=True": (_curv("gelu", method="hutchinson", probes=True), ValueError, "probes must be a positive int"),
    "top_classes=-1": (_curv(method="sampled", top_classes=-1), ValueError, "top_classes must be an int"),
    "pass_size=0": (_curv(method="exact", pass_size=0), ValueError, "pass_size must be a positive int"),
    "seed=-1": (_curv("gelu", method="hutchinson", probes=2, seed=-1), ValueError, "seed must be >= 0"),
    "labels of another shape": (_curv(batch=(make_batch(3)[0], torch.zeros(2, dtype=torch.long))), ValueError,
                                r"y must have shape \(B,\)"),
    "op without a second derivative (hardsigmoid)": (
        _curv(model=nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.Hardsigmoid(), nn.Linear(8, 10)).double(),
              method="hutchinson", probes=2), ValueError, "second derivative"),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_api_refuses(case):
    call, kind, match = API_CASES[case]
    with pytest.raises(kind, match=match):
        call()


def test_inputs_requiring_grad_are_scored_as_detached():
    model = make_model("gelu", 10)
    x, y = make_batch(3)
    a = curvfast.input_curvature(model, x.clone().requires_grad_(), y, method="hutchinson", probes=3).value
    b = curvfast.input_curvature(model, x, y, method="hutchinson", probes=3).value
    assert torch.equal(a, b)


class Overflowing(nn.Module):
    """Finite weights, but logits overflow to inf for large inputs."""

    def forward(self, x):
        return torch.stack([x.flatten(1).sum(1) * 1e308, -x.flatten(1).sum(1)], dim=1)


@pytest.mark.parametrize("method", ["exact", "hutchinson", "fd", "zo"])
def test_non_finite_scores_are_an_error(method):
    x = torch.full((2, 1, 4, 4), 10.0, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match="finite"):
        curvfast.input_curvature(Overflowing(), x, torch.tensor([0, 1]), method=method, probes=2, accept_gauss_newton=True)


# --------------------------------------------------------------------------------------------
# the piecewise-linearity decision behind method="exact"
# --------------------------------------------------------------------------------------------
class GatedTanh(nn.Module):
    """Linear where every x <= .5, tanh-curved elsewhere: the smooth part is gated by the input."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 16), nn.Linear(16, 10)

    def forward(self, x):
        x = x.flatten(1)
        z = self.fc1(x)
        return self.fc2(torch.where(x > 0.5, 5 * torch.tanh(z), z))


def _gated_batch():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(6, 1, 4, 4, generator=gen, dtype=torch.float64) * 0.5
    x[2:] += 0.3  # the first two samples stay in the linear region
    return x, torch.randint(0, 10, (6,), generator=gen)


def _elu_net_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ELU(), nn.Linear(8, 10)).double()
    with torch.no_grad():
        model[1].weight.abs_()
        model[1].bias.zero_()
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    x[2:] *= -1  # the first two samples keep every ELU input positive (its linear region)
    return model, x, torch.arange(6) % 10


def _within_stderr(res, true) -> bool:
    """Within 5 standard errors; an estimate without one (deflated's exact mode: D HVPs) to 1e-9."""
    tol = 1e-9 * true.abs().max() if res.stderr is None else 5 * res.stderr + 1e-9
    return bool(torch.all((res.value - true).abs() <= tol))


@pytest.mark.parametrize("case", ["gated tanh", "elu net"])
def test_smooth_models_passing_a_two_sample_check_are_refused(case):
    if case == "gated tanh":
        torch.manual_seed(0)
        model, (x, y) = GatedTanh().double(), _gated_batch()
    else:
        model, x, y = _elu_net_and_batch()
    with pytest.raises(ValueError, match="smooth pieces"):
        curvfast.input_curvature(model, x, y, method="exact")
    res = curvfast.input_curvature(model, x, y, probes=2000)
    assert res.method == "deflated"  # auto's route for smooth models
    true = reference_hessians(model, x, y).diagonal(dim1=1, dim2=2).sum(1)
    assert _within_stderr(res, true)


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fc, self.fn = nn.Linear(64, 10), fn

    def forward(self, x):
        return self.fn(self, x.flatten(1))


GRAPH_CASES = {  # model -> what the autograd-graph walk decides (None: left to the numeric check)
    "pl_residual": (lambda: make_model("pl_residual"), True),
    "pl_mlp": (lambda: make_model("pl_mlp"), True),
    "x * x": (lambda: Lambda(lambda m, x: m.fc(x) * m.fc(x)).double(), False),
    "1 / x": (lambda: Lambda(lambda m, x: m.fc(x) / (1 + m.fc(x).abs())).double(), False),
    "x xᵀ x": (lambda: Lambda(lambda m, x: m.fc(x) @ m.fc(x).T @ m.fc(x)).double(), False),
    "batch-statistics BatchNorm": (
        lambda: Lambda(lambda m, x: nn.functional.batch_norm(m.fc(x), None, None, training=True)).double(), False),
    "x * mask and x / 2": (lambda: Lambda(lambda m, x: m.fc(x * (x > 0) / 2)).double(), True),
    "tanh": (lambda: make_model("tanh"), None),
}


@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_piecewise_linearity_from_the_autograd_graph(case):
    from curvfast.curvature.checks import _graph_answer
    from curvfast.curvature.model import LogitFn, scoring_model

    build, expected = GRAPH_CASES[case]
    x, y = make_batch(4)
    with scoring_model(build()) as model:
        assert _graph_answer(LogitFn(model), x) is expected
    if expected is False and "BatchNorm" not in case:  # (batch statistics need more than x[:1])
        with pytest.raises(ValueError, match="smooth pieces"):
            curvfast.input_curvature(build(), x, y, method="exact")


def test_changing_a_module_reruns_the_piecewise_linearity_check():
    model = make_model("pl_mlp", 10)
    x, y = make_batch(4)
    assert curvfast.input_curvature(model, x, y).method == "exact"
    model[2] = nn.GELU()
    with pytest.raises(ValueError, match="smooth pieces"):
        curvfast.input_curvature(model, x, y, method="exact")
    res = curvfast.input_curvature(model, x, y, probes=2000)
    true = reference_hessians(model, x, y).diagonal(dim1=1, dim2=2).sum(1)
    assert res.method == "deflated" and _within_stderr(res, true)  # auto's route for smooth models


# --------------------------------------------------------------------------------------------
# threads: bit-identical to sequential, the caller's model untouched
# --------------------------------------------------------------------------------------------
def _in_threads(fn, n):
    out, errors = [None] * n, []

    def work(i):
        try:
            out[i] = fn(i)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return out


def test_four_threads_on_four_models_equal_sequential():
    models = [make_model("gelu", 10, seed=s) for s in range(4)]
    x, y = make_batch(8)

    def run(i):
        return curvfast.input_curvature(models[i], x, y, probes=6, seed=i)

    sequential = [run(i) for i in range(4)]
    for _ in range(3):
        for seq, par in zip(sequential, _in_threads(run, 4)):
            assert torch.equal(seq.value, par.value) and torch.equal(seq.stderr, par.stderr)


@pytest.mark.parametrize("method", ["exact", "hutchinson"])
def test_four_threads_on_one_model_in_train_mode_leave_it_untouched(method):
    model = make_model("pl_residual" if method == "exact" else "gelu", 10).train()
    frozen = model.fc.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()]
    x, y = make_batch(8)

    def run(i):
        return curvfast.input_curvature(model, x, y, method=method, probes=4).value

    sequential = run(0)
    for values in [_in_threads(run, 4) for _ in range(3)]:
        assert all(torch.equal(v, sequential) for v in values)
    assert [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.modules()] == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert frozen is model.fc.weight


class Locked(nn.Module):
    """Holds an attribute deepcopy refuses: scored in place, one call at a time."""

    def __init__(self):
        super().__init__()
        self.fc, self.lock = nn.Linear(64, 10), threading.Lock()

    def forward(self, x):
        return self.fc(x.flatten(1))


UNUSUAL_MODELS = {
    "parametrizations (weight_norm, spectral_norm)": lambda: nn.Sequential(
        nn.Flatten(), nn.utils.parametrizations.weight_norm(nn.Linear(64, 16)), nn.ReLU(),
        nn.utils.parametrizations.spectral_norm(nn.Linear(16, 10))),
    "old-style weight_norm (non-leaf weight attribute)": lambda: nn.Sequential(
        nn.Flatten(), nn.utils.weight_norm(nn.Linear(64, 16)), nn.ReLU(), nn.Linear(16, 10)),
    "a module holding a lock": Locked,
}


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("case", list(UNUSUAL_MODELS))
def test_models_that_resist_copying_are_scored_untouched_and_without_deadlock(case):
    torch.manual_seed(0)
    model = UNUSUAL_MODELS[case]().double().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = make_batch(4)
    done = []
    worker = threading.Thread(target=lambda: done.append(curvfast.input_curvature(model, x, y)), daemon=True)
    worker.start()
    worker.join(120)
    assert done, "input_curvature did not return within 120 s (deadlock?)"
    true = reference_hessians(model.eval(), x, y).diagonal(dim1=1, dim2=2).sum(1)
    torch.testing.assert_close(done[0].value, true)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_forward_mode_fallback_only_for_missing_forward_derivatives():
    from curvfast.curvature.hutchinson import _forward_mode_unsupported

    assert _forward_mode_unsupported(NotImplementedError(
        "Trying to use forward AD with my_op that does not support it because it has not been implemented yet."))
    assert not _forward_mode_unsupported(RuntimeError(
        "Trying to access a forward AD level with an invalid index. This index was either not created or is already deleted."))
    assert not _forward_mode_unsupported(RuntimeError("mat1 and mat2 shapes cannot be multiplied (3x4 and 5x6)"))


# --------------------------------------------------------------------------------------------
# run folders
# --------------------------------------------------------------------------------------------
@pytest.fixture
def digits48():
    return Subset(DigitsDataset("train"), range(48))


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


def _write_images(folder, names):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(folder / name)


@pytest.mark.parametrize("entry", ["../outside.png", "/abs/outside.png", "sub/../../outside.png"])
def test_file_list_entries_outside_root_are_refused(tmp_path, entry):
    from curvfast.data.streaming import FileListDataset

    _write_images(tmp_path, ["outside.png"])
    listing = tmp_path / "root" / "list.txt"
    (listing.parent / "sub").mkdir(parents=True)
    listing.write_text(f"{entry.replace('/abs', str(tmp_path))} 0\n")
    with pytest.raises(ValueError, match="outside the root"):
        FileListDataset(str(listing))
    ds = FileListDataset(str(listing), allow_outside_root=True)
    assert ds[0][0].shape == (3, 4, 4)


def test_corrupt_image_error_names_the_file(tmp_path):
    from curvfast.data import get_dataset

    for cls in ("a", "b"):
        _write_images(tmp_path / cls, ["ok.png"])
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    ds, _ = get_dataset("imagefolder", root=str(tmp_path))
    broken = [i for i, (p, _) in enumerate(ds.samples) if p.endswith("broken.jpg")][0]
    with pytest.raises(OSError, match="broken.jpg"):
        ds[broken]


# --------------------------------------------------------------------------------------------
# the CLI: every expected failure is one `error:` line and exit code 2
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from curvfast.io import save_checkpoint
    from curvfast.models import build_model

    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    net = build_model("small_cnn", 10, 1)
    meta = {"model": "small_cnn", "num_classes": 10, "in_channels": 1}
    save_checkpoint(str(folder / "good model.pt"), net, **meta)
    save_checkpoint(str(folder / "ten.pt"), net, **{**meta, "num_classes": "ten"})
    save_checkpoint(str(folder / "no_channels.pt"), net, model="small_cnn", num_classes=10)
    with torch.no_grad():
        next(net.parameters())[0] = float("nan")
    save_checkpoint(str(folder / "nan.pt"), net, **meta)
    return folder


def _score_args(ckpt, out, *extra):
    return ["score", "--checkpoint", str(ckpt), "--split", "test", "--out", str(out), "--quiet", "--chunk-size", "0",
            *extra]


CLI_CASES = {
    "NaN checkpoint": (lambda c, t: _score_args(c / "nan.pt", t / "r"), "NaN"),
    "num_classes='ten' in the metadata": (lambda c, t: _score_args(c / "ten.pt", t / "r"), "num_classes"),
    "--device meta": (lambda c, t: _score_args(c / "good model.pt", t / "r", "--device", "meta"), "device"),
    "--device tpu7": (lambda c, t: _score_args(c / "good model.pt", t / "r", "--device", "tpu7"), "device"),
    "--out names a file": (lambda c, t: _score_args(c / "good model.pt", c / "ten.pt"), "not a folder"),
    "--out cannot be created": (lambda c, t: _score_args(c / "good model.pt", "/proc/curvfast-run"), "/proc/curvfast-run"),
    "--timeout nan": (lambda c, t: _score_args(c / "good model.pt", t / "r", "--timeout", "nan"), "timeout"),
    "train --lr nan": (lambda c, t: ["train", "--epochs", "1", "--lr", "nan", "--out", str(t / "m.pt"), "--quiet"], "lr"),
    "train --epochs 0": (lambda c, t: ["train", "--epochs", "0", "--out", str(t / "m.pt"), "--quiet"], "epochs"),
    "train --device tpu": (lambda c, t: ["train", "--device", "tpu", "--out", str(t / "m.pt"), "--quiet"], "device"),
    "train --out names a folder": (lambda c, t: ["train", "--epochs", "1", "--out", str(t), "--quiet"], "is a folder"),
    "--checkpoint names a folder": (lambda c, t: _score_args(c, t / "r"), "is a folder"),
    "--image-size on 8x8 digits": (lambda c, t: _score_args(c / "good model.pt", t / "r", "--image-size", "0"),
                                   "image_size"),
    "--split bogus": (lambda c, t: _score_args(c / "good model.pt", t / "r", "--split", "bogus"), "split"),
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_expected_failures_exit_2(case, checkpoints, tmp_path, capsys):
    argv, match = CLI_CASES[case]
    assert main(argv(checkpoints, tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and match in err, err


def test_cli_checkpoint_names_with_spaces_and_missing_in_channels(checkpoints, tmp_path, capsys):
    out = tmp_path / "run"
    argv = _score_args(checkpoints / "good model.pt", out)
    argv[argv.index("--checkpoint") + 1:argv.index("--checkpoint") + 2] = [str(checkpoints / "good model.pt"),
                                                                          str(checkpoints / "no_channels.pt")]
    assert main(argv) == 0, capsys.readouterr().err
    index = json.loads((out / "results.json").read_text())
    assert set(index["models"]) == {"good_model", "no_channels"}


def test_four_threads_scoring_datasets_equal_sequential(digits48):
    from curvfast.models import build_model

    def model(seed):
        torch.manual_seed(seed)
        return build_model("small_cnn", 10, 1).eval()

    models = [model(s) for s in range(4)]

    def run(i):
        return curvfast.score(models[i], digits48, method="hutchinson", probes=3, batch_size=16, seed=i).score

    sequential = [run(i) for i in range(4)]
    for seq, par in zip(sequential, _in_threads(run, 4)):
        np.testing.assert_array_equal(seq, par)


def test_a_closed_connection_is_not_reported_as_a_timeout():
    from curvfast.distributed import Context

    ctx = Context(rank=1, world_size=2, timeout=1800.0)
    closed = str(ctx._failed("gathering scores", RuntimeError("Connection closed by peer [127.0.0.1]:29500")))
    assert "closed the connection" in closed and "timed out" not in closed
    assert "timed out after 1800 s" in str(ctx._failed("gathering scores", RuntimeError("Socket Timeout")))


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
