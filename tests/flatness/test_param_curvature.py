"""param_curvature against the float64 torch.func.hessian of the mean training loss on small nets."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import curvfast
from curvfast.errors import BatchDependentModelError, ConfigError, DataError, UnknownNameError, UnsupportedModelError
from curvfast.flatness import HVP_METHODS, LossHessian, param_curvature


def _mlp(act: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), act(), nn.Linear(5, 3)).double()


def _conv() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.BatchNorm2d(1), nn.GELU(), nn.Flatten(), nn.Linear(9, 3)).double()
    model[1].running_mean.fill_(0.1), model[1].running_var.fill_(2.0)  # eval BN: a fixed affine map, not identity
    return model


def _data(model: nn.Module, n: int = 12):
    g = torch.Generator().manual_seed(1)
    shape = (n, 1, 5, 5) if isinstance(model[0], nn.Conv2d) else (n, 4)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _hessian(model: nn.Module, x, y) -> torch.Tensor:
    """The reference: float64 torch.func.hessian of the mean cross-entropy w.r.t. the flattened weights."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(flat):
        pieces = torch.split(flat, [p.numel() for _, p in named])
        params = {n: t.view_as(p) for (n, p), t in zip(named, pieces)}
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    was = model.training
    model.eval()
    H = torch.func.hessian(loss)(theta)
    model.train(was)
    return H


MODELS = [pytest.param(lambda: _mlp(nn.ReLU), id="mlp-relu"), pytest.param(lambda: _mlp(nn.GELU), id="mlp-gelu"),
          pytest.param(_conv, id="conv-bn")]


@pytest.mark.parametrize("build", MODELS)
def test_lanczos_with_k_equal_d_recovers_the_spectrum(build):
    model = build()
    x, y = _data(model)
    eig = torch.linalg.eigvalsh(_hessian(model, x, y)).flip(0)
    D = eig.numel()
    res = param_curvature(model, (x, y), "top_eigenvalues", k=D, steps=D)
    assert res.num_params == D and res.num_samples == 12
    torch.testing.assert_close(torch.tensor(res.values, dtype=torch.float64), eig, atol=1e-10, rtol=0)
    assert res.value == pytest.approx(float(eig[0]), abs=1e-10)


@pytest.mark.parametrize("build", MODELS)
def test_top_eigenvalues_converge_before_d_steps(build):
    model = build()
    x, y = _data(model)
    eig = torch.linalg.eigvalsh(_hessian(model, x, y)).flip(0)
    res = param_curvature(model, (x, y), "top_eigenvalues", k=2, rtol=1e-6, steps=eig.numel())
    assert res.probes < eig.numel()
    for value, residual, exact in zip(res.values, res.residuals, eig[:2].tolist()):
        assert abs(value - exact) <= residual + 1e-12  # a Ritz value lies within its residual of an eigenvalue


@pytest.mark.parametrize("build", MODELS)
def test_hutchinson_within_its_stderr(build):
    """Fixed seed; the estimate lies within 4 stated standard errors of tr(H) (a 6e-5 two-sided chance per case)."""
    model = build()
    x, y = _data(model)
    trace = float(_hessian(model, x, y).trace())
    res = param_curvature(model, (x, y), "trace", probes=64, probe_batch=16, seed=3)
    assert res.probes == 64 and res.products == 64
    assert abs(res.value - trace) <= 4 * res.stderr


def test_hutchinson_stderr_matches_the_exact_variance():
    """The stderr estimates sqrt(2 (||H||_F^2 - sum_i H_ii^2) / P), the Rademacher estimator's exact spread."""
    model = _mlp(nn.GELU)
    x, y = _data(model)
    H = _hessian(model, x, y)
    exact = ((2 * (H.square().sum() - H.diagonal().square().sum())) / 256).sqrt().item()
    res = param_curvature(model, (x, y), "trace", probes=256, probe_batch=64, seed=5)
    assert res.stderr == pytest.approx(exact, rel=0.25)


def test_deflated_trace_is_exact_when_the_basis_spans_everything():
    model = _mlp(nn.ReLU)
    x, y = _data(model)
    H = _hessian(model, x, y)
    res = param_curvature(model, (x, y), "trace", probes=4, deflate=H.shape[0])
    assert res.value == pytest.approx(float(H.trace()), abs=1e-10)
    assert res.stderr == pytest.approx(0, abs=1e-10)


def test_deflation_lowers_the_stderr_and_stays_unbiased():
    model = _mlp(nn.GELU)
    x, y = _data(model)
    trace = float(_hessian(model, x, y).trace())
    plain = param_curvature(model, (x, y), "trace", probes=64, probe_batch=32)
    deflated = param_curvature(model, (x, y), "trace", probes=64, probe_batch=32, deflate=10)
    assert deflated.stderr < plain.stderr
    assert abs(deflated.value - trace) <= 4 * deflated.stderr


def test_rtol_stops_the_trace_early():
    model = _mlp(nn.GELU)
    x, y = _data(model)
    res = param_curvature(model, (x, y), "trace", probes=512, probe_batch=8, rtol=0.2)
    assert res.probes < 512 and res.stderr <= 0.2 * abs(res.value)


@pytest.mark.parametrize("build", MODELS)
def test_density_integrates_to_one_and_matches_the_spectrum_moments(build):
    """With m = D steps each probe's quadrature is exact for u^T H^p u; over probes the moments tr(H^p)/D
    are matched within 4 standard errors (p = 1, 2), and the smoothed density integrates to 1."""
    model = build()
    x, y = _data(model)
    H = _hessian(model, x, y)
    eig = torch.linalg.eigvalsh(H)
    D = eig.numel()
    res = param_curvature(model, (x, y), "density", probes=8, steps=D, probe_batch=8)
    torch.testing.assert_close(res.weights.sum(1), torch.ones(8, dtype=torch.float64))
    for p in (1, 2):
        per_probe = (res.weights * res.nodes ** p).sum(1)
        exact = float((eig ** p).mean())
        assert abs(float(per_probe.mean()) - exact) <= 4 * float(per_probe.std()) / 8 ** 0.5 + 1e-12
    lo, hi = float(eig[0]) - 1, float(eig[-1]) + 1
    grid = torch.linspace(lo, hi, 4001, dtype=torch.float64)
    dens = res.density(grid, sigma=0.02)
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=1e-6)
    mean = float(torch.trapezoid(dens * grid, grid))
    assert mean == pytest.approx(float((res.weights * res.nodes).sum(1).mean()), abs=1e-6)
    assert res.value == pytest.approx(D * float((res.weights * res.nodes).sum(1).mean()))


def test_density_nodes_are_the_eigenvalues_with_full_steps():
    """Every node of an m = D run is an eigenvalue of H (its weight is that eigenvector's share of the probe)."""
    model = _mlp(nn.GELU)
    x, y = _data(model)
    eig = torch.linalg.eigvalsh(_hessian(model, x, y))
    res = param_curvature(model, (x, y), "density", probes=2, steps=eig.numel())
    heavy = res.nodes[res.weights > 1e-8]
    assert (heavy[:, None] - eig[None]).abs().min(1).values.max() < 1e-9


@pytest.mark.parametrize("hvp", HVP_METHODS)
def test_streaming_over_a_dataloader_equals_the_full_batch(hvp):
    """The HVP over the dataset is the sample-weighted sum of per-batch HVPs: uneven batches (5, 5, 2) give the
    full-batch products, so every statistic is the same."""
    model = _conv()
    x, y = _data(model)
    V = torch.randn(3, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    full = LossHessian(model, (x, y), batch_size=12, hvp=hvp).matmat(V)
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    torch.testing.assert_close(LossHessian(model, loader, hvp=hvp).matmat(V), full, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(full, V @ _hessian(model, x, y), atol=1e-12, rtol=1e-10)
    a = param_curvature(model, loader, "trace", probes=8, hvp=hvp)
    b = param_curvature(model, (x, y), "trace", probes=8, batch_size=12)
    assert a.value == pytest.approx(b.value, rel=1e-10) and a.num_samples == 12


def test_the_model_is_scored_in_eval_mode_and_its_mode_restored():
    model = _conv().train()
    x, y = _data(model)
    before = model[1].running_mean.clone()
    res = param_curvature(model, (x, y), "trace", probes=4)
    assert model.training and torch.equal(model[1].running_mean, before)
    assert res.value == pytest.approx(param_curvature(model.eval(), (x, y), "trace", probes=4).value)


def test_frozen_parameters_are_left_out():
    model = _mlp(nn.GELU)
    x, y = _data(model)
    model[0].requires_grad_(False)
    H = _hessian(model, x, y)
    res = param_curvature(model, (x, y), "top_eigenvalues", k=H.shape[0], steps=H.shape[0])
    assert res.num_params == 5 * 3 + 3
    torch.testing.assert_close(torch.tensor(res.values, dtype=torch.float64), torch.linalg.eigvalsh(H).flip(0))


def test_float32_model_and_custom_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    x, t = torch.randn(16, 3), torch.randn(16, 1)
    H = _hessian_mse(copy.deepcopy(model).double(), x.double(), t.double())
    res = param_curvature(model, (x, t), "top_eigenvalues", k=1, loss_fn=F.mse_loss, rtol=1e-4)
    assert res.value == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-3)


def _hessian_mse(model, x, t):
    named = list(model.named_parameters())
    theta = torch.cat([p.detach().reshape(-1) for _, p in named])

    def loss(flat):
        pieces = torch.split(flat, [p.numel() for _, p in named])
        return F.mse_loss(torch.func.functional_call(model, {n: v.view_as(p) for (n, p), v in zip(named, pieces)}, (x,)), t)

    return torch.func.hessian(loss)(theta)


def test_probes_depend_on_the_seed_only():
    model = _mlp(nn.ReLU)
    x, y = _data(model)
    a = param_curvature(model, (x, y), "trace", probes=12, probe_batch=5, seed=7)
    b = param_curvature(model, (x, y), "trace", probes=12, probe_batch=12, seed=7, hvp="loop")
    c = param_curvature(model, (x, y), "trace", probes=12, seed=8)
    assert a.value == pytest.approx(b.value, rel=1e-12) and a.value != c.value


def test_top_level_export():
    assert curvfast.param_curvature is param_curvature and "param_curvature" in curvfast.__all__


def test_bad_input_is_named():
    model = _mlp(nn.ReLU)
    x, y = _data(model)
    with pytest.raises(UnknownNameError, match="statistic"):
        param_curvature(model, (x, y), "frobenius")
    with pytest.raises(UnknownNameError, match="hvp"):
        param_curvature(model, (x, y), hvp="fast")
    with pytest.raises(ConfigError, match="probes"):
        param_curvature(model, (x, y), probes=0)
    with pytest.raises(ConfigError, match="k=99"):
        param_curvature(model, (x, y), "top_eigenvalues", k=99)
    with pytest.raises(ConfigError, match="device"):
        param_curvature(model, (x, y), device="meta")
    with pytest.raises(DataError, match="same number"):
        param_curvature(model, (x, y[:3]))
    with pytest.raises(TypeError, match="data must be"):
        param_curvature(model, x)
    with pytest.raises(DataError, match="no samples"):
        param_curvature(model, [])
    with pytest.raises(UnsupportedModelError, match="no trainable"):
        param_curvature(model.requires_grad_(False), (x, y))
    with pytest.raises(ConfigError, match="density"):
        param_curvature(_mlp(nn.ReLU), (x, y), probes=2).density(torch.zeros(3), 0.1)


def test_batch_dependent_model_is_refused():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False)).double()
    x, y = _data(_mlp(nn.ReLU))
    with pytest.raises(BatchDependentModelError, match="running statistics"):
        param_curvature(model, (x, y))
