"""curvfast.linalg against torch.linalg.svd in float64: singular values and subspace angles on
well-conditioned, rank-deficient and ill-conditioned matrices; streaming = one-shot."""
import pytest
import torch

from curvfast.errors import ConfigError, DataError, UnknownNameError
from curvfast.linalg import StreamingGram, StreamingRandomizedSVD, choose_route, make_sketch, randomized_svd


def matrix_with_spectrum(s: torch.Tensor, m: int, n: int, seed: int = 0) -> torch.Tensor:
    """m x n float64 matrix with singular values ``s`` and random singular vectors."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(s), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(s), generator=gen, dtype=torch.float64))
    return (u * s) @ v.T


def sin_largest_angle(u: torch.Tensor, v: torch.Tensor) -> float:
    """sin of the largest principal angle between span(u) and span(v) (orthonormal columns, same count)."""
    return torch.linalg.matrix_norm(v - u @ (u.T @ v), ord=2).item()


def stream(sketch, x: torch.Tensor, batch: int):
    while not sketch.done:
        for part in x.split(batch):
            sketch.update(part)
        sketch.end_pass()
    return sketch.result()


SPECTRA = {
    "gap": torch.cat([torch.linspace(10, 5, 10), torch.full((30,), 1e-3)]).double(),
    "rank_deficient": torch.cat([torch.linspace(3, 1, 8), torch.zeros(32)]).double(),
    "ill_conditioned": torch.logspace(0, -12, 40).double(),
}


@pytest.mark.parametrize("kind", sorted(SPECTRA))
def test_randomized_svd_matches_torch(kind):
    s_true = SPECTRA[kind]
    a = matrix_with_spectrum(s_true, 120, 90)
    u_ref, s_ref, _ = torch.linalg.svd(a, full_matrices=False)
    k = 8 if kind == "rank_deficient" else 10
    u, s, vh = randomized_svd(a, k, oversample=10, power_iters=2, seed=3)
    assert u.shape == (120, k) and s.shape == (k,) and vh.shape == (k, 90)
    # singular values: relative to σ_1, float64 rounding (the gap / rank deficiency makes these exact)
    assert torch.allclose(s, s_ref[:k], atol=1e-10 * s_ref[0], rtol=0)
    assert torch.allclose(u.T @ u, torch.eye(k, dtype=torch.float64), atol=1e-12)
    if kind != "ill_conditioned":  # a clear gap after σ_k: the subspace is determined
        assert sin_largest_angle(u, u_ref[:, :k]) < 1e-8
        tail = s_ref[k] if k < len(s_ref) else 0.0  # Eckart-Young: the best rank-k error is σ_{k+1}
        assert abs(torch.linalg.matrix_norm(a - (u * s) @ vh, ord=2).item() - tail) < 1e-9 * s_ref[0]
    else:  # σ_{k+1}/σ_k = 0.49 per step: power iterations still give the top directions to ~ (σ_{l+1}/σ_k)^5
        assert sin_largest_angle(u[:, :5], u_ref[:, :5]) < 1e-6


def test_randomized_svd_power_iterations_help_on_slow_decay():
    s_true = 1.0 / torch.arange(1, 61, dtype=torch.float64)  # slow decay: plain sketching is poor
    a = matrix_with_spectrum(s_true, 200, 150, seed=1)
    err = [(randomized_svd(a, 10, oversample=5, power_iters=q, seed=0)[1] - s_true[:10]).abs().max().item() for q in (0, 3)]
    assert err[1] < 0.1 * err[0] and err[1] < 1e-3


@pytest.mark.parametrize("kind", sorted(SPECTRA))
def test_streaming_gram_equals_one_shot_svd(kind):
    x = matrix_with_spectrum(SPECTRA[kind], 500, 40, seed=2)  # rows arrive in batches
    _, s_ref, vh_ref = torch.linalg.svd(x, full_matrices=False)
    res = stream(StreamingGram(40), x, batch=37)
    assert res.rows == 500 and res.route == "gram"
    assert torch.allclose(res.energy, x.square().sum().reshape(1), rtol=1e-13)
    # eigenvalues of XᵀX: absolute accuracy ~ eps·σ_1², so compare σ² (not σ) relative to σ_1²
    assert torch.allclose(res.s[0].square(), s_ref.square(), atol=1e-12 * s_ref[0] ** 2, rtol=0)
    top = 8 if kind == "rank_deficient" else 10
    assert sin_largest_angle(res.u[0][:, :top], vh_ref[:top].T) < (1e-8 if kind != "ill_conditioned" else 1e-3)
    assert torch.isfinite(res.u).all() and (res.s >= 0).all()


def test_streaming_is_independent_of_batching():
    x = matrix_with_spectrum(torch.logspace(0, -3, 30).double(), 400, 30, seed=4)
    for make in (lambda: StreamingGram(30), lambda: StreamingRandomizedSVD(30, 12, power_iters=2, seed=5)):
        a, b = stream(make(), x, batch=400), stream(make(), x, batch=13)
        assert torch.allclose(a.s, b.s, rtol=1e-10)
        assert torch.allclose((a.u * a.s.unsqueeze(-2)) @ a.u.mT, (b.u * b.s.unsqueeze(-2)) @ b.u.mT, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(SPECTRA))
def test_streaming_randomized_matches_torch(kind):
    s_true = SPECTRA[kind]
    x = matrix_with_spectrum(s_true, 600, 40, seed=6)
    _, s_ref, vh_ref = torch.linalg.svd(x, full_matrices=False)
    k = 8 if kind == "rank_deficient" else 10
    res = stream(StreamingRandomizedSVD(40, k, oversample=8, power_iters=2, seed=7), x, batch=64)
    assert res.route == "randomized" and res.u.shape == (1, 40, k)
    assert torch.allclose(res.s[0], s_ref[:k], atol=1e-9 * s_ref[0], rtol=0)
    assert torch.allclose(res.energy, x.square().sum().reshape(1), rtol=1e-13)  # exact total even when truncated
    check = k if kind != "ill_conditioned" else 5
    assert sin_largest_angle(res.u[0][:, :check], vh_ref[:check].T) < 1e-6


def test_grouped_sketches_are_independent_problems():
    xs = [matrix_with_spectrum(torch.linspace(2, 1, 6).double(), 50, 6, seed=s) for s in (0, 1)]
    res = stream(StreamingGram(6, groups=2), torch.stack(xs), batch=20)
    for g, x in enumerate(xs):
        assert torch.allclose(res.s[g], torch.linalg.svdvals(x), rtol=1e-10)


def test_route_choice_by_size():
    assert choose_route(4608, 16_000, None) == "gram"  # exact spectrum requested
    assert choose_route(64, 50_000, 32) == "gram"  # small d: eigh is free
    assert choose_route(4608, 16_000, 256) == "randomized"  # large d, small rank: eigh (d³) dominates
    assert make_sketch(20, 100, rank=19).route == "gram"  # rank + oversample covers d
    assert make_sketch(20, 100, route="randomized", rank=5).route == "randomized"
    assert choose_route(4608, 640, None) == "randomized"  # fewer rows than d: rank(X) <= rows, still exact
    # 100 CIFAR images at a ResNet-18's last stage (16 rows each; benchmarks/verifix_routes.py, one thread):
    # d = 2304 measured gram 2.5 s vs randomized 5.8 s (the old GEMM-rate model picked randomized),
    # d = 4608 gram 17.6 s vs randomized 13.6 s (the d³ factorisations of the projectors dominate).
    assert choose_route(2304, 1600, None) == "gram"
    assert choose_route(4608, 1600, None) == "randomized"
    assert make_sketch(300, 40).rank == 40


def test_bad_input_is_refused_clearly():
    with pytest.raises(ConfigError, match="rank"):
        randomized_svd(torch.randn(5, 4, dtype=torch.float64), 6)
    with pytest.raises(TypeError, match="floating-point"):
        randomized_svd(torch.ones(4, 4, dtype=torch.int64), 2)
    sketch = StreamingGram(4)
    with pytest.raises(DataError, match="shape"):
        sketch.update(torch.randn(3, 5))
    with pytest.raises(RuntimeError, match="more pass"):
        sketch.result()
    with pytest.raises(DataError, match="empty"):
        sketch.end_pass()
    with pytest.raises(ConfigError, match="needs a target rank"):
        make_sketch(10, 10, route="randomized")
    with pytest.raises(UnknownNameError, match="route must be one of"):
        make_sketch(10, 10, route="nystrom")
