"""curvfast.compat against faithful re-implementations of the published loops.

The ``published_*`` functions below re-write, in this test, the loops of the published scorers
(DeepakTatachar/Curvature-Clues ``precompute_scores/``, DeepakTatachar/Privacy-Memorization-Curvature
``utils/loss_curve_score.py``, purdue-nrl/Memorization-Curvature ``score_imagenet_checkpoint.py``)
step by step: global-RNG Rademacher probes h·(r + 1e-7), the batch-mean loss of the fd scorers, four
loss evaluations per zo probe pair. ``draw`` replaces ``torch.randint_like(data, high=2)`` so that a
test can hand both sides the same probes. Everything runs in float64, where the finite differences
are accurate to ~1e-10, so shared-probe results must agree to rtol 1e-6. ``benchmarks/compat.py``
times these same loops.
"""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from curvfast import ops
from curvfast.errors import ConfigError
from curvfast.compat import (
    CurveScore, get_curvature_for_batch_zo, get_curvature_for_batch_zo_v2, get_regularized_curvature_for_batch,
)


def torch_draw(data):
    return torch.randint_like(data, high=2)


def published_rademacher(data, h, draw):
    v = draw(data)
    for v_i in v:
        v_i[v_i == 0] = -1
    return h * (v + 1e-7)


def published_zo(net, batch_data, batch_labels, h=1e-3, niter=10, temp=1, draw=torch_draw):
    curv = torch.zeros(batch_data.shape[0], dtype=batch_data.dtype, device=batch_data.device)
    criterion = nn.CrossEntropyLoss(reduction="none")
    with torch.no_grad():
        logits = net(batch_data)
        loss_pos = criterion(logits / temp, batch_labels)
        max_prob = torch.softmax(logits, 1).max(1)[0]
        for _ in range(niter):
            v = published_rademacher(batch_data, h, draw)
            u = published_rademacher(batch_data, h, draw)
            t1 = criterion(net(batch_data + v + u), batch_labels)
            t2 = criterion(net(batch_data - v + u), batch_labels)
            t3 = criterion(net(batch_data + v - u), batch_labels)
            t4 = criterion(net(batch_data - v - u), batch_labels)
            curv += torch.abs((t1 - t2 - t3 + t4) / (4 * h))
    return curv / niter, loss_pos, max_prob


def published_regularizer(net, inputs, targets, pred_labels=False, h=1e-3, niter=10, temp=1, draw=torch_draw):
    """CurveScore.regularizer; get_regularized_curvature_for_batch is the same loop returning (eigs, regs)."""
    criterion = nn.CrossEntropyLoss()
    regs = torch.zeros(inputs.shape[0], dtype=inputs.dtype)
    eigs = torch.zeros(inputs.shape[0], dtype=inputs.dtype)
    inputs = inputs.clone()
    for _ in range(niter):
        v = published_rademacher(inputs, h, draw)
        inputs.requires_grad_()
        outputs_pos = net(inputs + v)
        outputs_orig = net(inputs)
        if pred_labels:
            targets = torch.argmax(outputs_orig, 1)
        loss_pos = criterion(outputs_pos / temp, targets)
        loss_orig = criterion(outputs_orig / temp, targets)
        grad_diff = torch.autograd.grad(loss_pos - loss_orig, inputs)[0]
        regs += grad_diff.reshape(grad_diff.size(0), -1).norm(dim=1).cpu().detach()
        eigs += torch.diag(v.reshape(inputs.shape[0], -1) @ grad_diff.reshape(inputs.shape[0], -1).T).cpu().detach()
    return regs / niter, eigs / niter


def shared_draw(ids, count, dim, seed):
    """A ``draw`` that hands out curvfast's probes 0, 1, 2, ... (as 0/1 entries, like randint_like)."""
    probes = ops.probes(ids, count, dim, seed=seed, dtype=torch.float64)
    calls = iter(range(count))

    def draw(data):
        return ((probes[:, next(calls)] + 1) / 2).reshape(data.shape)

    return draw


def smooth_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(18, 16), nn.Tanh(), nn.Linear(16, 4)).double().eval()


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 1])


def test_zo_identical_to_published_loop_with_shared_probes(batch):
    net, (x, y) = smooth_net(), batch
    ids, niter, seed = torch.arange(5), 6, 11
    ref = published_zo(net, x, y, h=1e-3, niter=niter, temp=2.0, draw=shared_draw(ids, 2 * niter, 18, seed))
    ours = get_curvature_for_batch_zo_v2(net, x, y, 1e-3, niter, 2.0, seed=seed, sample_ids=ids)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    four = get_curvature_for_batch_zo(net, x, y, 1e-3, niter, 2.0, seed=seed, sample_ids=ids)
    for a, b in zip(four[:3], ours):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    p = torch.softmax(net(x), 1).detach()
    p_y = p[torch.arange(5), y]
    wrong = p * (1 - F.one_hot(y, 4))
    mentr = -(1 - p_y) * torch.log(p_y) + (-wrong * torch.log(1 - wrong + 1e-9)).sum(1)
    torch.testing.assert_close(four[3], mentr)


@pytest.mark.parametrize("pred_labels", [False, True])
def test_fd_identical_to_published_loop_with_shared_probes(batch, pred_labels):
    net, (x, y) = smooth_net(), batch
    ids, niter, seed = torch.arange(5), 4, 3
    regs, eigs = published_regularizer(net, x, y, pred_labels, h=1e-3, niter=niter, temp=1.5, draw=shared_draw(ids, niter, 18, seed))
    data = SimpleNamespace(num_classes=4, train_loader=None, test_loader=None, train_length=5)
    scorer = CurveScore(data, net, "cpu", 1.5, seed=seed, batch_mean=True)
    curv, eig = scorer.regularizer(net, x, y, pred_labels, h=1e-3, niter=niter, sample_ids=ids)
    torch.testing.assert_close(curv, regs, rtol=1e-6, atol=0)
    torch.testing.assert_close(eig, eigs, rtol=1e-5, atol=0)
    # the default is per-sample: the published values times the batch size
    eig_ps, curv_ps = get_regularized_curvature_for_batch(net, x, y, 1e-3, niter, 1.5, seed=seed, sample_ids=ids)
    if not pred_labels:
        torch.testing.assert_close(curv_ps, 5 * regs, rtol=1e-6, atol=0)
        torch.testing.assert_close(eig_ps, 5 * eigs, rtol=1e-5, atol=0)


def _mean_and_se(runs):
    stacked = torch.stack(runs)
    return stacked.mean(0), stacked.std(0) / len(runs) ** 0.5


@pytest.mark.parametrize("scorer", ["zo", "fd"])
def test_statistically_equal_to_published_over_seeds(batch, scorer):
    """Published loops on torch's global RNG against curvfast's Philox probes: same per-sample mean
    within 4 combined standard errors over 150 seeds (each side independent)."""
    net, (x, y) = smooth_net(), batch
    theirs, ours = [], []
    for s in range(150):
        torch.manual_seed(10_000 + s)
        if scorer == "zo":
            theirs.append(published_zo(net, x, y, niter=5)[0])
            ours.append(get_curvature_for_batch_zo_v2(net, x, y, niter=5, seed=s)[0])
        else:
            theirs.append(published_regularizer(net, x, y, niter=5)[0] * x.shape[0])
            ours.append(get_regularized_curvature_for_batch(net, x, y, niter=5, seed=s)[1])
    (m1, se1), (m2, se2) = _mean_and_se(theirs), _mean_and_se(ours)
    z = (m1 - m2).abs() / (se1**2 + se2**2).sqrt()
    assert (z < 4).all(), f"z-scores {z.tolist()}"
    assert (se1 < 0.1 * m1).all()  # the test has the power to see a 40% difference


def test_seed_none_draws_from_torch_rng(batch):
    net, (x, y) = smooth_net(), batch
    torch.manual_seed(5)
    a = get_curvature_for_batch_zo_v2(net, x, y)[0]
    b = get_curvature_for_batch_zo_v2(net, x, y)[0]
    torch.manual_seed(5)
    c = get_curvature_for_batch_zo_v2(net, x, y)[0]
    assert not torch.equal(a, b) and torch.equal(a, c)


def _hessians(net, x, y, temp=1.0):
    def loss(xi, yi):
        return F.cross_entropy(net(xi.unsqueeze(0)) / temp, yi.unsqueeze(0))

    dim = x[0].numel()
    return torch.stack([torch.func.hessian(loss)(xi, yi).reshape(dim, dim) for xi, yi in zip(x, y)])


def test_exact_matches_float64_hessian(batch):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(18, 12), nn.ReLU(), nn.Linear(12, 4)).double().eval()
    x, y = batch
    h = 1e-3
    H1, H2 = _hessians(net, x, y), _hessians(net, x, y, temp=2.0)
    frob = lambda H: H.flatten(1).norm(dim=1)  # noqa: E731
    torch.testing.assert_close(get_curvature_for_batch_zo_v2(net, x, y, h, exact=True)[0], h * frob(H1))
    eig, curv = get_regularized_curvature_for_batch(net, x, y, h, temp=2.0, exact=True)
    torch.testing.assert_close(curv, h * frob(H2))
    torch.testing.assert_close(eig, h * h * torch.diagonal(H2, dim1=1, dim2=2).sum(1))


def test_fd_eig_estimates_h2_trace():
    """On softmax regression (no kinks) the published 'eig' term averages to h²·tr(H)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(18, 4)).double().eval()
    x, y = torch.randn(4, 18, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    exact, _ = get_regularized_curvature_for_batch(net, x, y, exact=True)
    runs = [get_regularized_curvature_for_batch(net, x, y, niter=20, seed=s)[0] for s in range(40)]
    mean, se = _mean_and_se(runs)
    assert ((mean - exact).abs() < 4 * se).all()
    assert (se < 0.1 * exact).all()


def test_curvescore_whole_dataset_independent_of_batch_size(batch):
    net, (x, y) = smooth_net(), batch

    def scores(batch_size):
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)
        data = SimpleNamespace(num_classes=4, train_loader=loader, test_loader=loader, train_length=5)
        return CurveScore(data, net, "cpu", 1, seed=4).score_true_labels_with_comparison()

    (s2, l2), (s5, l5) = scores(2), scores(5)
    torch.testing.assert_close(s2, s5, rtol=1e-9, atol=0)
    assert torch.equal(l2, y.double().float()) and torch.equal(l5, l2)


def test_find_z_matches_published(batch):
    net, (x, y) = smooth_net(), batch
    xg = x.clone().requires_grad_()
    F.cross_entropy(net(xg), y).backward()
    z = torch.sign(xg.grad)
    ref = 1e-3 * (z + 1e-7) / (z.reshape(5, -1).norm(dim=1)[:, None, None, None] + 1e-7)
    data = SimpleNamespace(num_classes=4, train_loader=None, test_loader=None, train_length=5)
    ours, norm = CurveScore(data, net, "cpu", 1, batch_mean=True).find_z(net, x, y, 1e-3)
    torch.testing.assert_close(ours, ref)
    assert norm == pytest.approx(xg.grad.norm().item())


def test_bad_arguments_are_named(batch):
    net, (x, y) = smooth_net(), batch
    with pytest.raises(ConfigError, match="h must be > 0"):
        get_curvature_for_batch_zo_v2(net, x, y, h=0)
    with pytest.raises(ValueError, match="niter"):
        get_regularized_curvature_for_batch(net, x, y, niter=0)
    with pytest.raises(ValueError, match="temp"):
        get_regularized_curvature_for_batch(net, x, y, temp=0)
    with pytest.raises(TypeError, match="net must be an nn.Module"):
        get_curvature_for_batch_zo(lambda t: t, x, y)
