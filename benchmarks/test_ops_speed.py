"""Op-level speed (pytest-benchmark): each native op against composed-torch code doing the same job.

Sizes are realistic ImageNet ones, B=256, C=1000, D=3·224·224 (K=2 pulled-back cotangents
and one probe per sample, so a tensor is 77M floats). Not part of ``make test``:

    pytest benchmarks/test_ops_speed.py --benchmark-json=out.json     (or python -m benchmarks)

Composed-torch counterparts:
- probes: a Python loop over samples, each with its own ``torch.Generator`` seeded from
  (seed, sample id) -- the plain-torch way to get batch-invariant keyed probes.
- logit_factor: log-softmax, top-k, and ``torch.multinomial`` for the tail (not stratified).
- weighted_sq_norms / probe_moments: the same reductions as torch expressions, in float64 (the
  native ops' accumulation precision) and in float32.
"""
import os

import pytest
import torch

from curvfast import ops

DEVICE = torch.device(os.environ.get("CURVFAST_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
B, C, D, K = 256, 1000, 3 * 224 * 224, 2


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _run(benchmark, fn):
    def call():
        out = fn()
        _sync()
        return out

    benchmark.pedantic(call, rounds=5, warmup_rounds=1)


@pytest.fixture(scope="module")
def ids():
    return torch.arange(B, device=DEVICE)


def _keyed_loop(ids):
    out = torch.empty(B, 1, D, device=DEVICE)
    gen = torch.Generator(device=DEVICE)
    for b, i in enumerate(ids.tolist()):
        gen.manual_seed((7 << 40) ^ i)
        out[b, 0] = torch.randint(0, 2, (D,), generator=gen, device=DEVICE).float() * 2 - 1
    return out


@pytest.mark.parametrize("impl", ["native", "torch_keyed_loop"])
def test_probes(benchmark, ids, impl):
    benchmark.group = "probes"
    if impl == "native":
        _run(benchmark, lambda: ops.probes(ids, 1, D, seed=7))
    else:
        _run(benchmark, lambda: _keyed_loop(ids))


@pytest.fixture(scope="module")
def logits():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(B, C, generator=g) * 6).to(DEVICE), torch.randint(0, C, (B,), generator=g).to(DEVICE)


def _torch_logit_factor(z, y, num_exact=10, num_tail=10):
    ls = torch.log_softmax(z.double(), 1)
    p = ls.exp()
    loss = -ls.gather(1, y[:, None])[:, 0]
    top = z.topk(num_exact, 1).indices
    rest = p.scatter(1, top, 0.0)
    tail = torch.multinomial(rest, num_tail, replacement=True)
    classes = torch.cat([top, tail], 1)
    weights = torch.cat([p.gather(1, top), rest.sum(1, keepdim=True).expand(-1, num_tail) / num_tail], 1)
    cot = (-p)[:, None, :].expand(B, classes.shape[1], C).clone()
    cot.scatter_(2, classes[:, :, None], -torch.expm1(ls.gather(1, classes))[:, :, None])
    return cot.float(), weights.float(), classes, loss.float()


@pytest.mark.parametrize("impl", ["native", "torch"])
def test_logit_factor(benchmark, logits, ids, impl):
    benchmark.group = "logit_factor"
    z, y = logits
    if impl == "native":
        _run(benchmark, lambda: ops.logit_factor(z, y, ids, num_exact=10, num_tail=10))
    else:
        _run(benchmark, lambda: _torch_logit_factor(z, y))


@pytest.fixture(scope="module")
def big():
    g = torch.Generator().manual_seed(1)
    vjp = torch.randn(B, K, D, generator=g).to(DEVICE)
    return vjp, torch.rand(B, K, generator=g).to(DEVICE)


@pytest.mark.parametrize("impl", ["native", "torch_float64", "torch_float32"])
def test_weighted_sq_norms(benchmark, big, impl):
    benchmark.group = "weighted_sq_norms"
    vjp, w = big
    fns = {
        "native": lambda: ops.weighted_sq_norms(vjp, w),
        "torch_float64": lambda: w.double() * vjp.double().square().sum(-1),
        "torch_float32": lambda: w * torch.linalg.vector_norm(vjp, dim=-1).square(),
    }
    _run(benchmark, fns[impl])


def _torch_moments(v, hv, mean, m2, count, dtype):
    q = torch.stack([(v.to(dtype) * hv.to(dtype)).sum(-1), hv.to(dtype).square().sum(-1)], -1)
    P = q.shape[1]
    mb = q.mean(1)
    n = count + P
    delta = mb - mean
    return mean + delta * P / n, m2 + (q - mb[:, None]).square().sum(1) + delta.square() * count * P / n


@pytest.mark.parametrize("impl", ["native", "torch_float64", "torch_float32"])
def test_probe_moments(benchmark, big, impl):
    benchmark.group = "probe_moments"
    vjp, _ = big
    v, hv = vjp[:, :1], vjp[:, 1:]
    mean = torch.zeros(B, 2, dtype=torch.float64, device=DEVICE)
    m2 = torch.zeros_like(mean)
    fns = {
        "native": lambda: ops.probe_moments(v, hv, mean, m2, 3),
        "torch_float64": lambda: _torch_moments(v, hv, mean, m2, 3, torch.float64),
        "torch_float32": lambda: _torch_moments(v, hv, mean.float(), m2.float(), 3, torch.float32),
    }
    _run(benchmark, fns[impl])
