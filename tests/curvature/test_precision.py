"""Precision policies of input_curvature (curvfast.curvature._precision): fp32, tf32, bf16 (mixed)."""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import curvfast
from curvfast.errors import ConfigError, UnknownNameError


def _cnn(scale: float = 1.0, classes: int = 10) -> nn.Module:
    """A small ReLU CNN on 1x8x8 inputs; ``scale`` multiplies its logits (a peaked, confident model)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, classes)).eval()
    with torch.no_grad():
        model[-1].weight.mul_(scale)
        model[-1].bias.mul_(scale)
    return model


def _batch(n: int = 16, classes: int = 10):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, classes, (n,), generator=gen)


def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.double() - b.double()) / b.double()).abs()


def _gauss_newton_trace(model: nn.Module, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """tr(Jᵀ(diag p − ppᵀ)J) per sample in float64, for given softmax probabilities ``probs`` (B, C)."""
    m64 = _copy64(model)
    out = []
    for xb, p in zip(x.double(), probs.double()):
        jac = torch.func.jacrev(lambda v: m64(v.unsqueeze(0))[0])(xb).reshape(p.numel(), -1)  # (C, D)
        a = torch.diag(p) - torch.outer(p, p)
        out.append(torch.trace(jac.T @ a @ jac))
    return torch.stack(out)


def _copy64(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double()


def test_fp32_is_the_default_and_tf32_equals_it_on_a_cpu():
    model, (x, y) = _cnn(), _batch()
    default = curvfast.input_curvature(model, x, y, method="exact").value
    assert torch.equal(curvfast.input_curvature(model, x, y, method="exact", precision="fp32").value, default)
    assert torch.equal(curvfast.input_curvature(model, x, y, method="exact", precision="tf32").value, default)


@pytest.mark.parametrize("method", ["exact", "sampled"])
def test_bf16_is_within_its_stated_error_and_keeps_the_fp32_loss(method):
    """bf16 VJPs: median relative error under 2% (measured ~0.5% here); the loss comes from the fp32 forward."""
    model, (x, y) = _cnn(scale=3.0, classes=20), _batch(classes=20)
    kw = dict(method=method, top_classes=5, probes=5, sample_ids=torch.arange(len(x)))
    full = curvfast.input_curvature(model, x, y, **kw)
    mixed = curvfast.input_curvature(model, x, y, precision="bf16", **kw)
    err = _rel(mixed.value, full.value)
    assert mixed.value.dtype == torch.float32
    assert err.median() < 0.02 and err.max() < 0.1, err
    assert torch.equal(mixed.loss, full.loss)
    assert err.max() > 0  # the VJPs did run in bf16


def test_bf16_logits_are_what_broke_large_logit_models():
    """The cause of the 500% seen on an H100: softmax weights from bf16-rounded logits.

    The softmax is shift-invariant, bf16 rounding is not: it moves a logit by up to |z|·2⁻⁹, so logits of
    magnitude ~1000 (the scaled-head ResNet-50 of gpu-check had such) are off by units and every p_c by
    factors of e. A faithful re-computation of that old path (p from bf16 logits, exact Jacobians) is far off
    at a logit offset of 1000 that leaves the fp32 trace unchanged; the bf16 policy, which forms p from an
    fp32 forward, is not.
    """
    model, (x, y) = _cnn(scale=50.0), _batch()
    with torch.no_grad():
        small = model(x)
        model[-1].bias.add_(1000.0)
        logits = model(x)
    reference = _gauss_newton_trace(model, x, torch.softmax(logits.double(), 1))
    assert torch.allclose(reference, _gauss_newton_trace(model, x, torch.softmax(small.double(), 1)), rtol=1e-3)
    old = _gauss_newton_trace(model, x, torch.softmax(logits.bfloat16().double(), 1))
    mixed = curvfast.input_curvature(model, x, y, method="exact", precision="bf16").value
    assert _rel(old, reference).median() > 0.3
    assert _rel(mixed, reference).median() < 0.02


@pytest.mark.parametrize("method", ["hutchinson", "deflated", "fd", "zo"])
def test_bf16_is_refused_where_it_cannot_resolve_the_method(method):
    model, (x, y) = _cnn(), _batch(4)
    with pytest.raises(ConfigError, match="precision='bf16'"):
        curvfast.input_curvature(model, x, y, method=method, precision="bf16")


@pytest.mark.parametrize("method", ["fd", "zo"])
def test_tf32_is_refused_for_finite_differences(method):
    model, (x, y) = _cnn(), _batch(4)
    with pytest.raises(ConfigError, match="fp32 only"):
        curvfast.input_curvature(model, x, y, method=method, precision="tf32")


def test_an_unknown_policy_names_the_choices():
    model, (x, y) = _cnn(), _batch(4)
    with pytest.raises(UnknownNameError, match="fp32"):
        curvfast.input_curvature(model, x, y, precision="fp16")


def test_tf32_flags_are_restored_and_conflicting_policies_refused():
    from curvfast.curvature._precision import tf32_mode

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    model, (x, y) = _cnn(), _batch(4)
    curvfast.input_curvature(model, x, y, method="exact", precision="tf32")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    entered, release = threading.Event(), threading.Event()

    def hold():
        with tf32_mode(True):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        entered.wait(10)
        with pytest.raises(ConfigError, match="process-wide"):
            curvfast.input_curvature(model, x, y, method="exact", precision="fp32")
    finally:
        release.set()
        thread.join()
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
