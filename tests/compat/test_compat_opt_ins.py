"""curvfast's keyword opt-ins on the drop-ins: ``seed=`` (Philox probes keyed by sample id), ``per_sample=True``,
``exact=True``. Each changes the numbers on purpose; these tests pin down how."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import _published_scorers as published
from curvfast.compat import CurveScore
from curvfast.compat.curvature_clues.precompute_scores.precompute_cifar10_scores import get_curvature_for_batch_zo_v2
from curvfast.compat.privacy_memorization_curvature.calc_curv_fz_models import get_regularized_curvature_for_batch


def smooth_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(18, 16), nn.Tanh(), nn.Linear(16, 4)).double().eval()


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1])


def _data(x, y, batch_size):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)
    return SimpleNamespace(num_classes=4, train_loader=loader, test_loader=loader, train_length=len(x))


def test_seed_gives_batch_independent_scores_and_leaves_the_generator_alone(batch):
    net, (x, y) = smooth_net(), batch
    torch.manual_seed(0)
    list(_data(x, y, 2).train_loader), list(_data(x, y, 5).train_loader)  # a DataLoader draws its base seed
    state = torch.get_rng_state()
    torch.manual_seed(0)
    s2, l2 = CurveScore(_data(x, y, 2), net, "cpu", 1, seed=4, per_sample=True).score_true_labels_with_comparison()
    s5, l5 = CurveScore(_data(x, y, 5), net, "cpu", 1, seed=4, per_sample=True).score_true_labels_with_comparison()
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(s2, s5, rtol=1e-6, atol=0)
    assert torch.equal(l2, y.float()) and torch.equal(l5, l2)
    first = get_curvature_for_batch_zo_v2(net, x, y, seed=9, sample_ids=torch.arange(10, 15))[0]
    alone = get_curvature_for_batch_zo_v2(net, x[2:3], y[2:3], seed=9, sample_ids=torch.tensor([12]))[0]
    torch.testing.assert_close(alone, first[2:3], rtol=1e-6, atol=0)
    assert torch.equal(torch.get_rng_state(), state)


def test_per_sample_is_the_published_value_times_the_batch_size(batch):
    net, (x, y) = smooth_net(), batch
    torch.manual_seed(2)
    ref = get_regularized_curvature_for_batch(net, x, y, niter=3)
    torch.manual_seed(2)
    ours = get_regularized_curvature_for_batch(net, x, y, niter=3, per_sample=True)  # the same published draws
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, 5 * b, rtol=1e-5, atol=0)
    data = _data(x, y, 5)
    z, norm = CurveScore(data, net, "cpu", 1).find_z(net, x, y, 1e-3)
    z_ps, norm_ps = CurveScore(data, net, "cpu", 1, per_sample=True).find_z(net, x, y, 1e-3)
    assert torch.equal(z, z_ps) and norm_ps == pytest.approx(5 * norm, rel=1e-12)


def _hessians(net, x, y, temp=1.0):
    def loss(xi, yi):
        return F.cross_entropy(net(xi.unsqueeze(0)) / temp, yi.unsqueeze(0))

    dim = x[0].numel()
    return torch.stack([torch.func.hessian(loss)(xi, yi).reshape(dim, dim) for xi, yi in zip(x, y)])


def test_exact_matches_the_float64_hessian(batch):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(18, 12), nn.ReLU(), nn.Linear(12, 4)).double().eval()
    x, y = batch
    h = 1e-3
    frob = _hessians(net, x, y).flatten(1).norm(dim=1)
    h2 = _hessians(net, x, y, temp=2.0)
    state = torch.get_rng_state()
    torch.testing.assert_close(get_curvature_for_batch_zo_v2(net, x, y, h, exact=True)[0], (h * frob).float())
    curv, eig = get_regularized_curvature_for_batch(net, x, y, h, temp=2.0, exact=True, per_sample=True)
    torch.testing.assert_close(curv, (h * h2.flatten(1).norm(dim=1)).float())
    torch.testing.assert_close(eig, (h * h * torch.diagonal(h2, dim1=1, dim2=2).sum(1)).float())
    curv_mean, _ = get_regularized_curvature_for_batch(net, x, y, h, temp=2.0, exact=True)
    torch.testing.assert_close(curv_mean, curv / 5)  # the published batch mean unless per_sample
    assert torch.equal(torch.get_rng_state(), state)


def _mean_and_se(runs):
    stacked = torch.stack(runs)
    return stacked.mean(0), stacked.std(0) / len(runs) ** 0.5


@pytest.mark.parametrize("scorer", ["zo", "fd"])
def test_philox_probes_agree_with_the_published_ones_in_distribution(batch, scorer):
    """The published draws against curvfast's Philox probes over 30 seeds: the same per-sample mean within 4
    combined standard errors (and the test can see a 40% difference)."""
    net, (x, y) = smooth_net(), batch
    theirs, ours = [], []
    for s in range(30):
        torch.manual_seed(10_000 + s)
        if scorer == "zo":
            theirs.append(published.zo_v2(net, x, y, niter=10)[0])
            ours.append(get_curvature_for_batch_zo_v2(net, x, y, niter=10, seed=s)[0])
        else:
            theirs.append(published.fd_loop(net, x.clone(), y, niter=10)[0])
            ours.append(get_regularized_curvature_for_batch(net, x, y, niter=10, seed=s)[0])
    (m1, se1), (m2, se2) = _mean_and_se(theirs), _mean_and_se(ours)
    z = (m1 - m2).abs() / (se1**2 + se2**2).sqrt()
    assert (z < 4).all(), f"z-scores {z.tolist()}"
    assert (se1 < 0.1 * m1).all()
