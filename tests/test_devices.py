"""The device matrix beyond single ops: CUDA against the CPU kernels and the float64 CPU oracle,
dataset scores across devices, TF32 handling, and pipelines run end to end on the device.

Every test takes the ``device`` fixture (conftest.py): ``cpu`` always, ``cuda`` where a GPU is
present (skipped with the reason otherwise). Tests that compare a GPU with the CPU need a second
device to compare against, so they run on CUDA only.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import curvfast
import curvfast.ops as ops
from conftest import make_batch, make_model, reference_hessians

needs_cuda_kernels = pytest.mark.skipif(not (ops.native_available() and ops.cuda_compiled()),
                                        reason="the extension was built without CUDA kernels")


def _cuda_only(device):
    if device.type != "cuda":
        pytest.skip("compares a GPU with the CPU: runs on cuda only")


# ----------------------------------------------------------------------------- native ops across devices

@needs_cuda_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 1, 1), (4, 7, 255), (5, 10, 3073)])
def test_reductions_bit_identical_to_cpu_kernels(device, dtype, shape):
    """weighted_sq_norms and probe_moments add the same numbers in the same order on both backends."""
    _cuda_only(device)
    gen = torch.Generator().manual_seed(7)
    v = torch.randn(*shape, generator=gen, dtype=dtype)
    hv = torch.randn(*shape, generator=gen, dtype=dtype)
    w = torch.rand(shape[0], shape[1], generator=gen, dtype=dtype)
    assert torch.equal(ops.weighted_sq_norms(v.to(device), w.to(device)).cpu(), ops.weighted_sq_norms(v, w))
    mean = torch.randn(shape[0], 2, generator=gen, dtype=torch.float64)
    m2 = torch.rand(shape[0], 2, generator=gen, dtype=torch.float64)
    cpu = ops.probe_moments(v, hv, mean, m2, 3)
    gpu = ops.probe_moments(v.to(device), hv.to(device), mean.to(device), m2.to(device), 3)
    for a, b in zip(gpu, cpu):
        assert torch.equal(a.cpu(), b)


@needs_cuda_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("C,num_exact,num_tail", [(10, 10, 0), (100, 5, 5), (1000, 10, 10)])
def test_logit_factor_cuda_matches_cpu_kernel(device, dtype, C, num_exact, num_tail):
    """Same classes; values within a few ulps (CUDA's exp/log differ from libm in the last bit)."""
    _cuda_only(device)
    gen = torch.Generator().manual_seed(C)
    z = (torch.randn(64, C, generator=gen, dtype=torch.float64) * 4).to(dtype)
    y = torch.randint(0, C, (64,), generator=gen)
    ids = torch.arange(64) * 131 + 2**33
    kw = dict(num_exact=num_exact, num_tail=num_tail, seed=17)
    cpu = ops.logit_factor(z, y, ids, **kw)
    gpu = [t.cpu() for t in ops.logit_factor(z.to(device), y.to(device), ids.to(device), **kw)]
    assert torch.equal(gpu[2], cpu[2])
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-15)
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a, b, **tol)


# ----------------------------------------------------------------------------- estimators against the oracle

@pytest.mark.parametrize("kind", ["pl_residual", "pl_mlp"])
def test_exact_and_sampled_on_device_match_float64_oracle(device, kind):
    model = make_model(kind, 10)
    x, y = make_batch(4, 10)
    trace = reference_hessians(model, x, y).diagonal(dim1=1, dim2=2).sum(-1)
    model, xd, yd = model.to(device), x.to(device), y.to(device)
    exact = curvfast.input_curvature(model, xd, yd, method="exact")
    assert exact.value.device.type == device.type
    torch.testing.assert_close(exact.value.cpu(), trace, rtol=1e-10, atol=0)
    # All classes kept exactly: sampled is exact. With a tail: unbiased, and the same draw as the CPU.
    full = curvfast.input_curvature(model, xd, yd, method="sampled", top_classes=10, probes=1)
    torch.testing.assert_close(full.value.cpu(), trace, rtol=1e-10, atol=0)
    tail = curvfast.input_curvature(model, xd, yd, method="sampled", top_classes=3, probes=4, seed=5)
    tail_cpu = curvfast.input_curvature(model.cpu(), x, y, method="sampled", top_classes=3, probes=4, seed=5)
    torch.testing.assert_close(tail.value.cpu(), tail_cpu.value, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("hvp", ["double_backward", "forward_over_reverse"])
def test_hutchinson_on_device_within_stderr_of_oracle_and_equal_to_cpu(device, hvp):
    model = make_model("gelu", 10)
    x, y = make_batch(6, 10)
    trace = reference_hessians(model, x, y).diagonal(dim1=1, dim2=2).sum(-1)
    kw = dict(method="hutchinson", probes=200, seed=3, hvp=hvp)
    cpu = curvfast.input_curvature(model, x, y, **kw)
    res = curvfast.input_curvature(model.to(device), x.to(device), y.to(device), **kw)
    z = (res.value.cpu() - trace) / res.stderr.cpu()
    assert z.abs().max() < 4.0, f"errors in standard errors: {z}"
    # The same probes on every device (Philox keyed by sample id): the same estimate in float64.
    torch.testing.assert_close(res.value.cpu(), cpu.value, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- TF32

@pytest.mark.parametrize("method", ["fd", "zo"])
def test_fd_and_zo_force_tf32_off_and_restore_the_users_setting(device, method):
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = make_model("pl_mlp", 10, dtype=torch.float32)

        def forward(self, x):
            if x.shape[0] > 1:  # not the one-sample forward that only reads the number of classes
                seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
            return self.net(x)

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        x, y = make_batch(3, 10, dtype=torch.float32)
        curvfast.input_curvature(Recorder().to(device), x.to(device), y.to(device), method=method, probes=2)
        assert seen and all(s == (False, False) for s in seen), seen
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_fd_works_after_the_user_mixed_old_and_new_tf32_apis(device):
    """After ``set_float32_matmul_precision`` then the legacy ``allow_tf32`` flag, torch's generic
    getter raises; fd must neither call it nor change the user's flags (run in a subprocess: the
    mixed state is process-wide)."""
    import subprocess
    import sys

    code = (
        "import torch, curvfast\n"
        "torch.set_float32_matmul_precision('high')\n"
        "torch.backends.cuda.matmul.allow_tf32 = False\n"
        f"m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).to('{device}')\n"
        f"x, y = torch.rand(2, 1, 2, 2, device='{device}'), torch.tensor([0, 2], device='{device}')\n"
        "v = curvfast.input_curvature(m, x, y, method='fd', probes=2).value\n"
        "assert torch.isfinite(v).all()\n"
        "assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is True\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("method", ["exact", "sampled", "hutchinson"])
def test_autocast_is_turned_off_for_curvature(device, method):
    """bf16 autocast around the call gives the full-precision result (bf16 curvature was 150-500% off)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(256, 10)).to(device).eval()
    if method == "hutchinson":
        model[1] = torch.nn.Tanh()
    x, y = make_batch(3, 10, dtype=torch.float32)
    x, y = x.to(device), y.to(device)
    kw = dict(method=method, probes=4, top_classes=3)
    full = curvfast.input_curvature(model, x, y, **kw).value
    with torch.autocast(device.type, dtype=torch.bfloat16):
        auto = curvfast.input_curvature(model, x, y, **kw).value
    assert auto.dtype == torch.float32 and torch.equal(auto, full)


# ----------------------------------------------------------------------------- dataset scoring

@pytest.mark.parametrize("method", ["exact", "sampled", "hutchinson"])
def test_score_on_cuda_equals_cpu_for_same_seeds_and_ids(device, digits_small, method):
    _cuda_only(device)
    from curvfast.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(1, 10, width=8).eval()
    kw = dict(method=method, seed=11, batch_size=32)
    if method != "exact":
        kw["probes"] = 6
    if method == "sampled":
        kw["top_classes"] = 3
    cpu = curvfast.score(model, digits_small, device="cpu", **kw)
    gpu = curvfast.score(model, digits_small, device=str(device), **kw)
    np.testing.assert_array_equal(gpu.index, cpu.index)
    np.testing.assert_allclose(gpu.score, cpu.score, rtol=1e-4, atol=1e-6)  # float32 model: rounding only


# ----------------------------------------------------------------------------- pipelines on the device

def _main(argv):
    from curvfast.cli import main

    return main(argv)


def test_score_cli_on_device(device, tmp_path):
    ckpt = tmp_path / "m.pt"
    assert _main(["train", "--epochs", "1", "--out", str(ckpt), "--quiet"]) == 0
    out = tmp_path / "run"
    assert _main(["score", "--checkpoint", str(ckpt), "--split", "test", "--device", str(device),
                  "--out", str(out), "--quiet"]) == 0
    scores = np.load(out / "scores.npz")
    assert len(scores["score"]) == 450 and np.isfinite(scores["score"]).all() and (scores["score"] > 0).all()


def test_ood_pipeline_on_device(device, tmp_path):
    out = tmp_path / "ood"
    assert _main(["ood", "--out", str(out), "--id-classes", "0,1,2", "--seeds", "0", "--epochs", "3",
                  "--device", str(device), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert 0.0 <= res["detectors"]["msp"]["per_set"]["uniform_noise"]["auroc"] <= 1.0


def test_verifix_pipeline_on_device(device, tmp_path):
    out = tmp_path / "vf"
    assert _main(["verifix", "--dataset", "digits", "--noise", "0.25", "--epochs", "1", "--verified-size", "50",
                  "--method", "auto", "--alphas", "1e4", "--normalize", "0.5/0.25", "--augment", "crop-flip",
                  "--device", str(device), "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert 0.0 <= res["accuracy_after"] <= 1.0 and res["verified_size"] == 50


def test_transfer_pipeline_on_device(device, tmp_path):
    pytest.importorskip("torchattacks", reason="transfer's attacks need torchattacks")
    out = tmp_path / "tr"
    assert _main(["transfer", "--dataset", "digits", "--out", str(out), "--models", "small_cnn,mlp2",
                  "--eps", "0,16/255,48/255", "--robust-eps", "32/255", "--steps", "2", "--step", "0.05", "--epochs", "1",
                  "--subset-size", "16", "--ensemble-size", "2", "--accuracy-margin", "1", "--normalize", "0.5/0.25",
                  "--augment", "crop-flip", "--device", str(device), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert np.array(res["transfer_matrix"], dtype=float).shape == (2, 2)


def test_idkd_pipeline_on_device(device, tmp_path):
    pytest.importorskip("networkx", reason="idkd's topologies need networkx")
    out = tmp_path / "idkd"
    assert _main(["idkd", "--out", str(out), "--epochs", "1", "--finetune-epochs", "1", "--width", "8",
                  "--batch-size", "16", "--public-photos", "50", "--timeout", "60", "--nodes", "2",
                  "--topology", "ring", "--device", device.type, "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert {"dsgd", "vanilla_kd", "idkd"} <= set(res["methods"])


def test_mia_pipeline_on_device(device, tmp_path):
    """`curvfast mia --device`: subset training from the packed population, signals (curvature included) and attacks."""
    out = tmp_path / "mia"
    assert _main(["mia", "--preset", "smoke", "--device", str(device), "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["device"] == str(device)
    assert all(0.0 <= a["auroc"] <= 1.0 for a in res["attacks"].values()) and "curv_zo_lr" in res["attacks"]


def test_memorization_pipeline_on_device(device, tmp_path):
    """`curvfast memorization --dp --device`: stacked subset training, curvature trajectories and DP-SGD (Opacus) on the device."""
    out = tmp_path / "mem"
    assert _main(["memorization", "--preset", "smoke", "--dp", "--device", str(device), "--out", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["device"] == str(device) and res["memorization"]["estimable"] > 0
    assert all(np.isfinite(row["mean_curvature"]) and 0.0 <= row["accuracy"] <= 1.0 for row in res["dp"])


def test_pkd_pipeline_on_device(device, tmp_path, monkeypatch):
    """`curvfast pkd --device`: streams, ICs, logits and MACs on the device; a cache prepared once serves both runs."""
    pytest.importorskip("av")
    monkeypatch.setenv("CURVFAST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "pkd"
    assert _main(["pkd", "--preset", "smoke", "--out", str(out), "--device", str(device), "--workers", "1", "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["settings"]["device"] == str(device) and len(res["ic_accuracy"]["pkd"]) == 12

def test_gpu_check_refuses_at_once_without_a_gpu(tmp_path):
    """`make gpu-check` on a machine without a (visible) GPU stops with the reason, building nothing."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "no CUDA GPU is visible" in out.stderr and "run it on a machine with a GPU" in out.stderr
    assert "building" not in out.stdout + out.stderr


def test_crop_flip_on_device_draws_what_the_cpu_draws(device):
    """The augmentation's draws come from a CPU generator and move to the batch: the same crops and flips on every device."""
    from curvfast.pipelines.common.augment import crop_flip

    x = torch.rand(6, 2, 3, 16, 16)
    on_cpu = crop_flip(x, torch.Generator().manual_seed(5))
    on_device = crop_flip(x.to(device), torch.Generator().manual_seed(5))
    assert on_device.device.type == device.type and torch.equal(on_device.cpu(), on_cpu)


# ----------------------------------------------------------------------------- batch auto and precision policies

def test_auto_batch_on_cuda_fits_and_changes_no_score(device, digits_small):
    """batch_size='auto' measures real peaks on the GPU; the scores equal those of a fixed batch."""
    _cuda_only(device)
    from curvfast.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(10).to(device).eval()
    data = torch.utils.data.Subset(digits_small, range(64))
    fixed = curvfast.score(model, data, method="sampled", top_classes=3, probes=3, batch_size=8, device=device)
    auto = curvfast.score(model, data, method="sampled", top_classes=3, probes=3, batch_size="auto", device=device)
    assert auto.settings["batch_size_auto"] and 8 <= auto.settings["batch_size"] <= 64
    assert auto.run["peak_memory_bytes"] > 0 and 0 < auto.run["device_busy_s"] <= auto.run["scoring_s"] * 1.05
    torch.testing.assert_close(torch.as_tensor(auto.score), torch.as_tensor(fixed.score), rtol=1e-5, atol=0)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_precision_policies_on_the_device(device, precision):
    """tf32 and bf16 within a few percent of fp32; the TF32 flags come back as they were."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(512, 10)).to(device).eval()
    x, y = make_batch(16, 10, dtype=torch.float32)
    x, y = x.to(device), y.to(device)
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    full = curvfast.input_curvature(model, x, y, method="exact").value
    low = curvfast.input_curvature(model, x, y, method="exact", precision=precision).value
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
    rel = ((low - full) / full).abs()
    assert rel.median() < (0.02 if precision == "bf16" else 0.01), rel
