"""Tests of curvfast.ops: native kernels against the references, the math, and bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import curvfast.ops as ops
from curvfast.errors import ConfigError, DataError, NonFiniteError
from curvfast.ops import reference as ref

native = pytest.mark.skipif(not ops.native_available(),
                            reason=f"native ops unavailable: {ops.load_error()}")
DTYPES = [torch.float32, torch.float64]
IDS = torch.tensor([0, 1, 5, 2**32 - 1, 2**32, 2**33 + 7, 123456789012, 2**62 + 3])


def _tol(dtype):
    return dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- Philox, math

PHILOX_KAT = [  # Random123 known-answer vectors: counter, key, output
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", PHILOX_KAT)
def test_reference_philox_known_answers(ctr, key, expected):
    assert tuple(int(x) for x in ref.philox4x32_10(*ctr, *key)) == expected


@native
def test_native_philox_known_answer():
    # Rademacher entries 0..127 of sample 0, probe 0, seed 0 are the bits of philox(0, 0).
    v = torch.ops.curvfast.probes(torch.tensor([0]), 0, 0, 1, 128, "rademacher", torch.float64)
    bits = (v[0, 0] > 0).to(torch.int64).reshape(4, 32)
    words = tuple(int((bits[i] << torch.arange(32)).sum()) for i in range(4))
    assert words == PHILOX_KAT[0][2]


def test_portable_math_accuracy():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**53, 20000, dtype=np.uint64)
    a[:3] = [0, 2**53 - 1, 2**52]
    u1 = (a + np.uint64(1)).astype(np.float64) * 2.0**-53
    np.testing.assert_allclose(ref.portable_log(u1), np.log(u1), rtol=1e-15, atol=0)
    b = np.concatenate([a, np.arange(0, 2**53, 2**48, dtype=np.uint64)])
    sin_v, cos_v = ref.portable_sincos_2pi(b)
    angle = 2 * np.pi * (b.astype(np.float64) * 2.0**-53)
    np.testing.assert_allclose(sin_v, np.sin(angle), rtol=0, atol=1e-15)
    np.testing.assert_allclose(cos_v, np.cos(angle), rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------- probes

@native
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [0, 1, 7, 128, 129, 301])
def test_probes_native_equals_reference(distribution, dtype, dim, device):
    """Bit-identical to the reference on every device (the README's promise)."""
    kw = dict(seed=2**40 + 3, probe_offset=2**32 - 4, distribution=distribution, dtype=dtype)
    native_out = ops.probes(IDS.to(device), 4, dim, **kw)
    assert native_out.shape == (len(IDS), 4, dim) and native_out.dtype == dtype
    assert native_out.device.type == device.type
    assert torch.equal(native_out.cpu(), ref.probes(IDS, 4, dim, **kw))


@native
def test_probes_empty_batch_and_zero_probes(device):
    assert ops.probes(torch.zeros(0, dtype=torch.int64, device=device), 3, 5, seed=0).shape == (0, 3, 5)
    assert ops.probes(IDS.to(device), 0, 5, seed=0).shape == (len(IDS), 0, 5)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_probes_independent_of_batch(distribution):
    ids = torch.tensor([9, 2**34 + 1, 4])
    kw = dict(seed=11, distribution=distribution)
    together = ops.probes(ids, 3, 33, **kw)
    for b in range(len(ids)):
        assert torch.equal(ops.probes(ids[b:b + 1], 3, 33, **kw)[0], together[b])
    # A later chunk of probes is the tail of one larger draw.
    assert torch.equal(ops.probes(ids, 2, 33, probe_offset=1, **kw), together[:, 1:])


def test_probes_statistics():
    ids = torch.arange(200)
    v = ops.probes(ids, 8, 257, seed=3, dtype=torch.float64)
    assert set(v.unique().tolist()) == {-1.0, 1.0}
    assert abs(v.mean().item()) < 0.01  # n = 411200 draws: std 0.0016
    g = ops.probes(ids, 8, 257, seed=3, distribution="gaussian", dtype=torch.float64)
    assert abs(g.mean().item()) < 0.01 and abs(g.var().item() - 1) < 0.01  # std 0.0016, 0.0022
    assert abs(((g > 0).double().mean() - 0.5).item()) < 0.01
    assert not torch.equal(ops.probes(ids, 8, 257, seed=4), v.float())


# ----------------------------------------------------------------------------- logit_factor

def _logits(B, C, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(B, C, generator=gen, dtype=torch.float64) * 3).to(dtype)
    if C > 3 and B > 0:
        z[0, 1] = z[0, 2] = z[0].max()  # a tie among the top classes
    y = torch.randint(0, C, (B,), generator=gen)
    return z, y, torch.arange(B) * 977 + 2**32


@native
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C,num_exact,num_tail", [
    (2, 2, 0), (2, 0, 1), (2, 1, 3), (10, 10, 0), (10, 20, 5), (10, 0, 4), (10, 3, 7),
    (100, 100, 0), (100, 5, 5), (100, 99, 1), (100, 0, 16)])
def test_logit_factor_native_equals_reference(dtype, C, num_exact, num_tail, device):
    z, y, ids = _logits(7, C, dtype)
    kw = dict(num_exact=num_exact, num_tail=num_tail, seed=2**35 + 1)
    got = tuple(t.cpu() for t in ops.logit_factor(z.to(device), y.to(device), ids.to(device), **kw))
    want = ref.logit_factor(z, y, ids, **kw)
    K = C if num_exact >= C else num_exact + num_tail
    assert got[0].shape == (7, K, C) and got[1].shape == (7, K) and got[3].shape == (7,)
    assert got[2].dtype == torch.int64 and torch.equal(got[2], want[2])
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w, **_tol(dtype))


@native
@pytest.mark.parametrize("num_exact,num_tail", [(10, 0), (2, 3)])
def test_logit_factor_empty_batch(num_exact, num_tail, device):
    z, y, ids = (t.to(device) for t in _logits(0, 10, torch.float32))
    cot, w, cls, loss = ops.logit_factor(z, y, ids, num_exact=num_exact, num_tail=num_tail)
    K = 10 if num_exact >= 10 else num_exact + num_tail
    assert cot.shape == (0, K, 10) and w.shape == cls.shape == (0, K) and loss.shape == (0,)


def test_logit_factor_exact_reproduces_softmax_hessian():
    z, y, ids = _logits(4, 10, torch.float64)
    cot, w, cls, loss = ops.logit_factor(z, y, ids, num_exact=10)
    p = torch.softmax(z, -1)
    A = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    torch.testing.assert_close(torch.einsum("bk,bki,bkj->bij", w, cot, cot), A,
                               rtol=1e-12, atol=1e-15)
    assert torch.equal(cls, torch.arange(10).expand(4, 10))
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(z, y, reduction="none"))


def test_logit_factor_sampled_is_unbiased():
    C, seeds = 100, 400
    z, y, ids = _logits(3, C, torch.float64, seed=5)
    p = torch.softmax(z, -1)
    f = torch.cos(torch.arange(C, dtype=torch.float64))  # a fixed function of the class
    estimates = []
    for seed in range(seeds):
        _, w, cls, _ = ops.logit_factor(z, y, ids, num_exact=5, num_tail=5, seed=seed)
        estimates.append((w * f[cls]).sum(1))
    estimates = torch.stack(estimates)
    stderr = estimates.std(0) / seeds**0.5
    exact = (p * f).sum(1)
    assert ((estimates.mean(0) - exact).abs() < 5 * stderr + 1e-12).all()
    # The top-5 classes are always taken exactly, with weights p_c.
    top = torch.sort(z, dim=1, descending=True, stable=True).indices[:, :5]
    assert torch.equal(cls[:, :5], top)


def test_logit_factor_stable_at_tiny_loss():
    z64 = torch.zeros(2, 10, dtype=torch.float64)
    z64[:, 3] = 30.0  # p_y = 1 - 9e-13 * ...
    y, ids = torch.tensor([3, 3]), torch.tensor([0, 1])
    cot64, _, _, loss64 = ops.logit_factor(z64, y, ids, num_exact=10)
    cot32, _, _, loss32 = ops.logit_factor(z64.float(), y, ids, num_exact=10)
    assert 1e-13 < loss64[0] < 1e-11
    torch.testing.assert_close(cot32[:, 3, 3].double(), cot64[:, 3, 3], rtol=1e-6, atol=0)
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- reductions

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 3, 5), (4, 1, 1), (3, 7, 33), (5, 10, 301)])
def test_weighted_sq_norms(dtype, shape, device):
    gen = torch.Generator().manual_seed(0)
    vjp = torch.randn(shape[0], shape[2], shape[1], generator=gen, dtype=dtype).transpose(1, 2)
    w = torch.rand(shape[1], shape[0], generator=gen, dtype=dtype).t()  # non-contiguous
    out = ops.weighted_sq_norms(vjp.to(device), w.to(device)).cpu()
    want = (w.double() * (vjp.double() ** 2).sum(-1)).to(dtype)
    assert out.dtype == dtype and out.shape == shape[:2]
    torch.testing.assert_close(out, want, **_tol(dtype))
    torch.testing.assert_close(out, ref.weighted_sq_norms(vjp, w), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 17])
def test_probe_moments_chunks_match_numpy(dtype, dim, device):
    gen = torch.Generator().manual_seed(1)
    B, P = 3, 12
    v = torch.randn(B, P, dim, generator=gen, dtype=dtype).to(device)
    hv = torch.randn(B, P, dim, generator=gen, dtype=dtype).to(device)
    mean, m2, count = (torch.zeros(B, 2, dtype=torch.float64, device=device),
                       torch.zeros(B, 2, dtype=torch.float64, device=device), 0)
    for p0 in range(0, P, 4):
        mean, m2 = ops.probe_moments(v[:, p0:p0 + 4], hv[:, p0:p0 + 4], mean, m2, count)
        count += 4
    v64, hv64 = v.double().cpu().numpy(), hv.double().cpu().numpy()
    q = np.stack([(v64 * hv64).sum(-1), (hv64**2).sum(-1)], -1)
    np.testing.assert_allclose(mean.cpu().numpy(), q.mean(1), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(m2.cpu().numpy() / (P - 1), q.var(1, ddof=1), rtol=1e-12, atol=1e-13)
    z = torch.zeros(B, 2, dtype=torch.float64, device=device)
    once = ops.probe_moments(v, hv, z, z, 0)
    torch.testing.assert_close(once, (mean, m2), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(once, ref.probe_moments(v, hv, z, z, 0), rtol=1e-12, atol=1e-13)


@native
def test_probe_moments_float32_state_and_empty_batch():
    v = torch.randn(2, 3, 4)
    mean = torch.ones(2, 2)
    got = ops.probe_moments(v, v, mean, mean, 5)
    assert got[0].dtype == got[1].dtype == torch.float32
    torch.testing.assert_close(got, ref.probe_moments(v, v, mean, mean, 5))
    e = torch.zeros(0, 3, 4)
    assert ops.probe_moments(e, e, torch.zeros(0, 2), torch.zeros(0, 2), 0)[0].shape == (0, 2)


# ----------------------------------------------------------------------------- patch_gram

# (C, H, W, kernel, stride, dilation, groups): every conv geometry the Verifix layers meet.
PATCH_GEOMETRIES = [
    (3, 8, 8, (3, 3), (1, 1), (1, 1), 1),
    (4, 9, 7, (3, 3), (2, 2), (1, 1), 1),
    (4, 10, 10, (3, 3), (1, 1), (2, 2), 2),
    (6, 9, 11, (2, 3), (2, 1), (1, 2), 3),
    (4, 6, 6, (1, 1), (1, 1), (1, 1), 1),
    (8, 7, 7, (1, 1), (2, 2), (1, 1), 4),
    (4, 6, 6, (3, 3), (1, 1), (1, 1), 4),  # depthwise
    (2, 5, 9, (5, 1), (1, 3), (1, 1), 1),
    (5, 40, 30, (3, 3), (1, 1), (1, 1), 1),  # 2128 positions: several row tiles
    (48, 6, 6, (3, 3), (1, 1), (1, 1), 1),  # d = 432: two column blocks of the Gram (mirrored)
]


def _patch_case(C, H, W, kernel, stride, dilation, groups, mask_kind, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, C, H, W, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    out = [(n - dl * (k - 1) - 1) // s + 1 for n, k, s, dl in zip((H, W), kernel, stride, dilation)]
    mask = {"ones": torch.ones(2, *out, dtype=torch.float64),
            "subset": (torch.rand(2, *out, generator=gen, dtype=torch.float64) < 0.4).double(),
            "weights": torch.rand(2, *out, generator=gen, dtype=torch.float64),
            "zero": torch.zeros(2, *out, dtype=torch.float64)}[mask_kind].to(dtype)
    dim = C // groups * kernel[0] * kernel[1]
    omega = torch.randn(groups, dim, 5, generator=gen, dtype=torch.float64)
    return x, mask, omega


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@native
@pytest.mark.parametrize("mask_kind", ["ones", "subset", "weights", "zero"])
@pytest.mark.parametrize("geometry", PATCH_GEOMETRIES, ids=str)
def test_patch_gram_equals_reference(geometry, mask_kind, device):
    """float64: Gram, sketch and the in-place accumulation equal the unfold reference to 1e-10."""
    C, H, W, kernel, stride, dilation, groups = geometry
    x, mask, omega = _patch_case(*geometry, mask_kind)
    geo = (kernel, stride, dilation, groups)
    for om in (None, omega):
        want = ref.patch_gram(x, mask, *geo, om)
        got = ops.patch_gram(x.to(device), mask.to(device), *geo, om if om is None else om.to(device))
        assert got.dtype == torch.float64 and got.shape == want.shape
        if mask_kind == "zero":
            assert torch.equal(got.cpu(), torch.zeros_like(want))
            continue
        assert _rel(got.cpu(), want) < 1e-10
        start = torch.randn(want.shape, dtype=torch.float64)  # not symmetric: the mirrored blocks must add, not copy
        acc = start.clone().to(device)
        ops.patch_gram_add_(acc, x.to(device), mask.to(device), *geo, om if om is None else om.to(device))
        assert _rel(acc.cpu() - start, want) < 1e-10
    gram = ops.patch_gram(x, mask, *geo)
    if mask_kind != "zero":
        torch.testing.assert_close(gram, gram.mT, rtol=1e-12, atol=1e-12)


@native
@pytest.mark.parametrize("geometry", PATCH_GEOMETRIES, ids=str)
def test_patch_gram_float32_input(geometry, device):
    """float32 input: tiles of <= 256 rows multiplied in float32 and added in float64, relative
    Frobenius error <= 1e-5 against the float64 reference of the same (rounded) input."""
    C, H, W, kernel, stride, dilation, groups = geometry
    x, mask, omega = _patch_case(*geometry, "subset", dtype=torch.float32)
    geo = (kernel, stride, dilation, groups)
    for om in (None, omega):
        got = ops.patch_gram(x.to(device), mask.to(device), *geo, om if om is None else om.to(device))
        assert got.dtype == torch.float64
        assert _rel(got.cpu(), ref.patch_gram(x, mask, *geo, om)) < 1e-5


def test_patch_gram_reference_is_the_patch_matrix_product():
    """The reference's rows are the layer's patches in W.reshape(C_out, -1) order: for each group j,
    Σ_i w_i G_j w_iᵀ (w_i the group's filters) is the squared norm of the group's conv output."""
    x, mask, _ = _patch_case(6, 9, 11, (2, 3), (2, 1), (1, 2), 3, "ones")
    conv = torch.nn.Conv2d(6, 9, (2, 3), stride=(2, 1), dilation=(1, 2), groups=3, bias=False).double()
    gram = ref.patch_gram(x, mask, (2, 3), (2, 1), (1, 2), 3)
    w = conv.weight.detach().reshape(3, 3, -1)
    y = conv(x).reshape(2, 3, 3, -1)
    torch.testing.assert_close(torch.einsum("gid,gde,gie->g", w, gram, w), y.square().sum((0, 2, 3)))


# ----------------------------------------------------------------------------- op registration

def _op_samples(device="cpu"):
    z, y, ids = (t.to(device) for t in _logits(3, 6, torch.float64))
    v = torch.randn(2, 3, 5, dtype=torch.float64, device=device)
    px, pm, pomega = (t.to(device) for t in _patch_case(6, 9, 11, (2, 3), (2, 1), (1, 2), 3, "subset"))
    return [
        ("probes", (ids, 5, 2, 3, 9, "rademacher", torch.float32)),
        ("probes", (ids, 5, 2, 3, 9, "gaussian", torch.float64)),
        ("logit_factor", (z, y, ids, 6, 0, 0)),
        ("logit_factor", (z.float(), y, ids, 2, 3, 1)),
        ("weighted_sq_norms", (v, torch.rand(2, 3, dtype=torch.float64, device=device))),
        ("probe_moments", (v, v * 2, torch.zeros(2, 2, dtype=torch.float64, device=device),
                           torch.zeros(2, 2, dtype=torch.float64, device=device), 0)),
        ("patch_gram", (px, pm, [2, 3], [2, 1], [1, 2], 3, None)),
        ("patch_gram", (px.float(), pm.float(), [2, 3], [2, 1], [1, 2], 3, pomega)),
        ("patch_gram_add_", (torch.zeros(3, 12, 12, dtype=torch.float64, device=device), px, pm, [2, 3], [2, 1],
                             [1, 2], 3, None)),
        ("patch_gram_add_", (torch.zeros(3, 12, 5, dtype=torch.float64, device=device), px, pm, [2, 3], [2, 1],
                             [1, 2], 3, pomega)),
    ]


@native
@pytest.mark.parametrize("index", range(len(_op_samples())))
def test_opcheck(index, device):
    """Schema, fake (meta) kernel, dispatch and autograd registration on every device."""
    if device.type == "cuda" and not ops.cuda_compiled():
        pytest.skip("the extension was built without CUDA kernels")
    name, args = _op_samples(device)[index]
    torch.library.opcheck(getattr(torch.ops.curvfast, name).default, args)


@native
def test_cuda_compiled_matches_build():
    """cuda_compiled() is true exactly when the extension registered CUDA kernels."""
    has_cuda = [torch._C._dispatch_has_kernel_for_dispatch_key(f"curvfast::{name}", "CUDA")
                for name in ("probes", "logit_factor", "weighted_sq_norms", "probe_moments", "patch_gram",
                             "patch_gram_add_")]
    assert ops.cuda_compiled() == bool(torch.ops.curvfast.cuda_compiled())
    assert has_cuda == [ops.cuda_compiled()] * 6


def test_disable_native_env_var_falls_back():
    code = ("import curvfast.ops as o, torch; assert not o.native_available(); "
            "print(o.load_error()); print(o.probes(torch.tensor([1]), 1, 3, seed=0).tolist())")
    env = dict(os.environ, CURVFAST_DISABLE_NATIVE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert "CURVFAST_DISABLE_NATIVE" in out


# ----------------------------------------------------------------------------- bad input

def _bad_calls():
    z, y, ids = _logits(3, 5, torch.float32)
    v = torch.randn(3, 2, 4)
    w = torch.rand(3, 2)
    m = torch.zeros(3, 2, dtype=torch.float64)
    lf = dict(num_exact=5)
    px, pm, pomega = _patch_case(6, 9, 11, (2, 3), (2, 1), (1, 2), 3, "subset")
    pgeo = ([2, 3], [2, 1], [1, 2], 3)
    acc = torch.zeros(3, 12, 12, dtype=torch.float64)
    pg = torch.ops.curvfast.patch_gram
    return [
        # (wrapper call, raw op call)
        (lambda: ops.probes(ids[:, None], 2, 3, seed=0),
         lambda: torch.ops.curvfast.probes(ids[:, None], 0, 0, 2, 3, "rademacher", torch.float32)),
        (lambda: ops.probes(ids.int(), 2, 3, seed=0),
         lambda: torch.ops.curvfast.probes(ids.int(), 0, 0, 2, 3, "rademacher", torch.float32)),
        (lambda: ops.probes(-ids - 1, 2, 3, seed=0),
         lambda: torch.ops.curvfast.probes(-ids - 1, 0, 0, 2, 3, "rademacher", torch.float32)),
        (lambda: ops.probes(ids, -1, 3, seed=0),
         lambda: torch.ops.curvfast.probes(ids, 0, 0, -1, 3, "rademacher", torch.float32)),
        (lambda: ops.probes(ids, 2, -3, seed=0),
         lambda: torch.ops.curvfast.probes(ids, 0, 0, 2, -3, "rademacher", torch.float32)),
        (lambda: ops.probes(ids, 2, 3, seed=0, probe_offset=2**32 - 1),
         lambda: torch.ops.curvfast.probes(ids, 0, 2**32 - 1, 2, 3, "rademacher", torch.float32)),
        (lambda: ops.probes(ids, 2, 3, seed=0, distribution="uniform"),
         lambda: torch.ops.curvfast.probes(ids, 0, 0, 2, 3, "uniform", torch.float32)),
        (lambda: ops.probes(ids, 2, 3, seed=0, dtype=torch.int32),
         lambda: torch.ops.curvfast.probes(ids, 0, 0, 2, 3, "rademacher", torch.int32)),
        (lambda: ops.probes(ids, 2, 3, seed=-1),
         lambda: torch.ops.curvfast.probes(ids, -1, 0, 2, 3, "rademacher", torch.float32)),
        (lambda: ops.logit_factor(z[0], y, ids, **lf),
         lambda: torch.ops.curvfast.logit_factor(z[0], y, ids, 5, 0, 0)),
        (lambda: ops.logit_factor(z.half(), y, ids, **lf),
         lambda: torch.ops.curvfast.logit_factor(z.half(), y, ids, 5, 0, 0)),
        (lambda: ops.logit_factor(z[:, :1], y.clamp(max=0), ids, **lf),
         lambda: torch.ops.curvfast.logit_factor(z[:, :1], y.clamp(max=0), ids, 5, 0, 0)),
        (lambda: ops.logit_factor(z, y.int(), ids, **lf),
         lambda: torch.ops.curvfast.logit_factor(z, y.int(), ids, 5, 0, 0)),
        (lambda: ops.logit_factor(z, y[:2], ids, **lf),
         lambda: torch.ops.curvfast.logit_factor(z, y[:2], ids, 5, 0, 0)),
        (lambda: ops.logit_factor(z, y, ids[:2], **lf),
         lambda: torch.ops.curvfast.logit_factor(z, y, ids[:2], 5, 0, 0)),
        (lambda: ops.logit_factor(z, y + 5, ids, **lf),
         lambda: torch.ops.curvfast.logit_factor(z, y + 5, ids, 5, 0, 0)),
        (lambda: ops.logit_factor(z, y - 9, ids, **lf),
         lambda: torch.ops.curvfast.logit_factor(z, y - 9, ids, 5, 0, 0)),
        (lambda: ops.logit_factor(z, y, -ids, **lf),
         lambda: torch.ops.curvfast.logit_factor(z, y, -ids, 5, 0, 0)),
        (lambda: ops.logit_factor(z * float("nan"), y, ids, **lf),
         lambda: torch.ops.curvfast.logit_factor(z * float("nan"), y, ids, 5, 0, 0)),
        (lambda: ops.logit_factor(z, y, ids, num_exact=2),
         lambda: torch.ops.curvfast.logit_factor(z, y, ids, 2, 0, 0)),
        (lambda: ops.logit_factor(z, y, ids, num_exact=-1, num_tail=2),
         lambda: torch.ops.curvfast.logit_factor(z, y, ids, -1, 2, 0)),
        (lambda: ops.weighted_sq_norms(v[0], w),
         lambda: torch.ops.curvfast.weighted_sq_norms(v[0], w)),
        (lambda: ops.weighted_sq_norms(v.int(), w),
         lambda: torch.ops.curvfast.weighted_sq_norms(v.int(), w)),
        (lambda: ops.weighted_sq_norms(v, w[:2]),
         lambda: torch.ops.curvfast.weighted_sq_norms(v, w[:2])),
        (lambda: ops.weighted_sq_norms(v, w.double()),
         lambda: torch.ops.curvfast.weighted_sq_norms(v, w.double())),
        (lambda: ops.probe_moments(v[0], v[0], m, m, 0),
         lambda: torch.ops.curvfast.probe_moments(v[0], v[0], m, m, 0)),
        (lambda: ops.probe_moments(v, v[:, :1], m, m, 0),
         lambda: torch.ops.curvfast.probe_moments(v, v[:, :1], m, m, 0)),
        (lambda: ops.probe_moments(v, v.double(), m, m, 0),
         lambda: torch.ops.curvfast.probe_moments(v, v.double(), m, m, 0)),
        (lambda: ops.probe_moments(v[:, :0], v[:, :0], m, m, 0),
         lambda: torch.ops.curvfast.probe_moments(v[:, :0], v[:, :0], m, m, 0)),
        (lambda: ops.probe_moments(v, v, m[:2], m[:2], 0),
         lambda: torch.ops.curvfast.probe_moments(v, v, m[:2], m[:2], 0)),
        (lambda: ops.probe_moments(v, v, m, m.float(), 0),
         lambda: torch.ops.curvfast.probe_moments(v, v, m, m.float(), 0)),
        (lambda: ops.probe_moments(v, v, m.long(), m.long(), 0),
         lambda: torch.ops.curvfast.probe_moments(v, v, m.long(), m.long(), 0)),
        (lambda: ops.probe_moments(v, v, m, m, -1),
         lambda: torch.ops.curvfast.probe_moments(v, v, m, m, -1)),
        (lambda: ops.patch_gram(px[0], pm, *pgeo), lambda: pg(px[0], pm, *pgeo)),
        (lambda: ops.patch_gram(px.long(), pm, *pgeo), lambda: pg(px.long(), pm, *pgeo)),
        (lambda: ops.patch_gram(px, pm.float(), *pgeo), lambda: pg(px, pm.float(), *pgeo)),
        (lambda: ops.patch_gram(px, pm[:, 1:], *pgeo), lambda: pg(px, pm[:, 1:], *pgeo)),
        (lambda: ops.patch_gram(px, pm, [2, 3], [2, 1], [1, 2], 4), lambda: pg(px, pm, [2, 3], [2, 1], [1, 2], 4)),
        (lambda: ops.patch_gram(px, pm, [2, 3], [2, 1], [1, 2], 0), lambda: pg(px, pm, [2, 3], [2, 1], [1, 2], 0)),
        (lambda: ops.patch_gram(px, pm, [2, 0], [2, 1], [1, 2], 3), lambda: pg(px, pm, [2, 0], [2, 1], [1, 2], 3)),
        (lambda: ops.patch_gram(px, pm, [2, 3], [2, 1], [1, 9], 3), lambda: pg(px, pm, [2, 3], [2, 1], [1, 9], 3)),
        (lambda: ops.patch_gram(px, pm, *pgeo, pomega[:, 1:]), lambda: pg(px, pm, *pgeo, pomega[:, 1:])),
        (lambda: ops.patch_gram(px, pm, *pgeo, pomega.long()), lambda: pg(px, pm, *pgeo, pomega.long())),
        (lambda: ops.patch_gram(px.clone().requires_grad_(), pm, *pgeo),
         lambda: pg(px.clone().requires_grad_(), pm, *pgeo)),
        (lambda: ops.patch_gram_add_(acc.float(), px, pm, *pgeo),
         lambda: torch.ops.curvfast.patch_gram_add_(acc.float(), px, pm, *pgeo)),
        (lambda: ops.patch_gram_add_(acc[:, :5], px, pm, *pgeo),
         lambda: torch.ops.curvfast.patch_gram_add_(acc[:, :5], px, pm, *pgeo)),
        (lambda: ops.patch_gram_add_(acc.mT, px, pm, *pgeo, pomega),
         lambda: torch.ops.curvfast.patch_gram_add_(acc.mT, px, pm, *pgeo, pomega)),
    ]


BAD = _bad_calls()


@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_input_wrapper(index):
    """A wrong Python or tensor type is a TypeError; every other bad input one of curvfast's typed errors."""
    with pytest.raises((ConfigError, DataError, NonFiniteError, TypeError), match=r"\w"):
        BAD[index][0]()


@native
@pytest.mark.parametrize("index", range(len(BAD)))
def test_bad_input_raw_op(index):
    with pytest.raises(RuntimeError, match=r"\w"):
        BAD[index][1]()


def test_bad_input_messages_name_argument_and_fix():
    z, y, ids = _logits(3, 5, torch.float32)
    with pytest.raises(TypeError, match=r"labels must be int64 \(got torch.int32\); convert with labels.long\(\)"):
        ops.logit_factor(z, y.int(), ids, num_exact=5)
    with pytest.raises(ConfigError, match="must not require grad"):
        ops.weighted_sq_norms(torch.randn(2, 3, 4, requires_grad=True), torch.rand(2, 3))
    with pytest.raises(DataError, match=r"labels must lie in \[0, C=5\)"):
        ops.logit_factor(z, y + 5, ids, num_exact=5)
    with pytest.raises(NonFiniteError, match="logits must be finite"):
        ops.logit_factor(z * float("nan"), y, ids, num_exact=5)
