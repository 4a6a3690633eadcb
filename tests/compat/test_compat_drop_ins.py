"""Every drop-in against a faithful re-implementation of its published variant (tests/compat/_published_scorers.py).

Same ``torch.manual_seed`` before both calls: the drop-in returns the published numbers (float64 nets: to
float64 rounding, the accumulators being float32 as published; float32 nets: to the rounding noise of the
stencil) and leaves torch's global generator in the same state (``torch.get_rng_state()``).
"""
from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import _published_scorers as published
from curvfast.compat.curvature_clues.precompute_scores import (precompute_cifar10_mentr_scores,
                                                               precompute_cifar10_scores, precompute_imagenet_scores)
from curvfast.compat.memorization_curvature import score_imagenet_checkpoint
from curvfast.compat.privacy_memorization_curvature import (calc_curv_fz_imagenet_models, calc_curv_fz_models,
                                                            private_model_curve_scorer)
from curvfast.compat.privacy_memorization_curvature.utils.loss_curve_score import CurveScore

F64 = dict(rtol=2e-6, atol=1e-9)


def tiny_cnn(dtype=torch.float64, act=nn.Tanh, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), act(), nn.Flatten(), nn.Linear(48, 5)).to(dtype).eval()


def batch(size=5, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(size, 2, 4, 4, generator=gen, dtype=dtype), torch.arange(size) % 5


def same_seed(theirs, ours, seed=7):
    """Run both under the same seed; assert the generator ends in the same state; return both results."""
    torch.manual_seed(seed)
    ref = theirs()
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    got = ours()
    assert torch.equal(torch.get_rng_state(), state), "the drop-in left torch's generator elsewhere"
    return ref, got


def assert_all_close(got, ref, **tol):
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and a.device == b.device
            torch.testing.assert_close(a, b, **tol)
        else:
            assert type(a) is type(b) and a == b


@pytest.mark.parametrize("temp", [1, 2.5])
def test_zo_v2_three_values(temp):
    net, (x, y) = tiny_cnn(), batch()
    ref, got = same_seed(lambda: published.zo_v2(net, x, y, 1e-3, 4, temp),
                         lambda: precompute_cifar10_scores.get_curvature_for_batch_zo_v2(net, x, y, 1e-3, 4, temp))
    assert len(got) == 3
    assert_all_close(got, ref, **F64)


def test_zo_v2_mentr_four_values_draws_nothing():
    net, (x, y) = tiny_cnn(), batch()
    ref, got = same_seed(lambda: published.zo_v2_mentr(net, x, y, h=1e-3, niter=10, temp=2),
                         lambda: precompute_cifar10_mentr_scores.get_curvature_for_batch_zo_v2(net, x, y, 1e-3, 10, 2))
    assert len(got) == 4 and not got[0].any()
    assert_all_close(got, ref, rtol=0, atol=0)
    torch.manual_seed(7)
    precompute_cifar10_mentr_scores.get_curvature_for_batch_zo_v2(net, x, y)
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(7).get_state())


@pytest.mark.parametrize("compute_curvature", [True, False])
def test_zo_imagenet(compute_curvature):
    net, (x, y) = tiny_cnn(), batch()
    fn = precompute_imagenet_scores.get_curvature_for_batch_zo
    ref, got = same_seed(lambda: published.zo_imagenet(net, x, y, 1e-4, 3, 1, "cpu", compute_curvature),
                         lambda: fn(net, x, y, 1e-4, 3, 1, "cpu", compute_curvature))
    assert len(got) == 4 and bool(got[0].any()) == compute_curvature
    assert_all_close(got, ref, **F64)


def test_zo_float32_within_the_stencil_rounding():
    """float32 ReLU net: the batched passes round differently, so the stencil differs by its own rounding
    noise, about eps32·|L|/h per probe; nothing larger."""
    net, (x, y) = tiny_cnn(torch.float32, nn.ReLU), batch(dtype=torch.float32)
    ref, got = same_seed(lambda: published.zo_v2(net, x, y, 1e-3, 10),
                         lambda: precompute_cifar10_scores.get_curvature_for_batch_zo_v2(net, x, y, 1e-3, 10))
    noise = 8 * torch.finfo(torch.float32).eps * float(ref[1].abs().max()) / 1e-3
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=noise)
    torch.testing.assert_close(got[1:], ref[1:])


@pytest.mark.parametrize("niter", [1, 4])
def test_fd_curvature_then_eig(niter):
    net, (x, y) = tiny_cnn(), batch()
    ref, got = same_seed(lambda: published.fd_loop(net, x.clone(), y, 1e-3, niter, 1.5)[:2],
                         lambda: calc_curv_fz_models.get_regularized_curvature_for_batch(net, x, y, 1e-3, niter, 1.5))
    assert_all_close(got, ref, **F64)


def test_fd_imagenet_three_values():
    net, (x, y) = tiny_cnn(), batch()
    fn = calc_curv_fz_imagenet_models.get_regularized_curvature_for_batch
    ref, got = same_seed(lambda: published.fd_loop(net, x.clone(), y, 1e-3, 3, 1), lambda: fn(net, x, y, 1e-3, 3, 1))
    assert isinstance(got[2], int)
    assert_all_close(got, ref, **F64)


@pytest.mark.parametrize("module, order", [(private_model_curve_scorer, (0, 1)), (score_imagenet_checkpoint, (1, 0))])
def test_fd_nested_variants_bound_with_partial(module, order):
    """The nested published functions read ``net`` from main(): bound with partial(..., net=net), the
    published call runs unchanged; Memorization-Curvature returns (eig, curvature), the others (curvature, eig)."""
    net, (x, y) = tiny_cnn(), batch()
    get_regularized_curvature_for_batch = functools.partial(module.get_regularized_curvature_for_batch, net=net)
    ref, got = same_seed(lambda: published.fd_loop(net, x.clone(), y, h=1e-4, niter=2)[:2],
                         lambda: get_regularized_curvature_for_batch(x, y, h=1e-4, niter=2))
    assert_all_close(got, tuple(ref[i] for i in order), **F64)


def test_fd_sets_eval_as_published():
    net, (x, y) = tiny_cnn(), batch()
    net.train()
    calc_curv_fz_models.get_regularized_curvature_for_batch(net, x, y, niter=1)
    assert not any(m.training for m in net.modules())


def _data(x, y, batch_size):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)
    return SimpleNamespace(num_classes=5, train_loader=loader, test_loader=loader, train_length=len(x))


@pytest.mark.parametrize("pred_labels", [False, True])
def test_curvescore_regularizer(pred_labels):
    net, (x, y) = tiny_cnn(), batch()
    scorer = CurveScore(_data(x, y, 5), net, "cpu", 2.0)
    ref, got = same_seed(lambda: published.fd_loop(net, x.clone(), y, 1e-3, 3, 2.0, pred_labels)[:2],
                         lambda: scorer.regularizer(net, x, y, pred_labels, niter=3))
    assert_all_close(got, ref, **F64)


def test_curvescore_whole_set_last_batch_scaled_by_its_own_size():
    """4 samples in batches of 3: the last sample's score carries 1/1, the others 1/3, as published."""
    net, (x, y) = tiny_cnn(), batch(4)
    data = _data(x, y, 3)
    ref, got = same_seed(lambda: published.rank_samples(net, data.train_loader, 4, 1.0),
                         lambda: CurveScore(data, net, "cpu", 1.0).score_true_labels_with_comparison())
    assert_all_close(got, ref, **F64)
    alone = published.fd_loop(net, x[3:].clone(), y[3:], niter=10)[0]
    assert got[0][3] / alone > 0.5  # a batch of one: no 1/B shrinking


def test_find_z_batch_mean_gradient_norm():
    net, (x, y) = tiny_cnn(), batch()
    scorer = CurveScore(_data(x, y, 5), net, "cpu", 1.0)
    ref, got = same_seed(lambda: published.find_z(net, x.clone(), y, 1e-2), lambda: scorer.find_z(net, x, y, 1e-2))
    torch.testing.assert_close(got[0], ref[0], **F64)
    assert got[1] == pytest.approx(ref[1], rel=1e-12)
    assert not x.requires_grad  # the caller's tensor is left alone


def test_plain_callable_net():
    net, (x, y) = tiny_cnn(), batch()

    def logits(z):
        return net(z)

    ref, got = same_seed(lambda: published.zo_v2(net, x, y, niter=2),
                         lambda: precompute_cifar10_scores.get_curvature_for_batch_zo_v2(logits, x, y, niter=2))
    assert_all_close(got, ref, **F64)
    ref, got = same_seed(lambda: published.fd_loop(net, x.clone(), y, niter=2)[:2],
                         lambda: calc_curv_fz_models.get_regularized_curvature_for_batch(logits, x, y, niter=2))
    assert_all_close(got, ref, **F64)


class TupleNet(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x), x.flatten(1)


def test_output_transform_for_a_net_returning_a_tuple():
    inner, (x, y) = tiny_cnn(), batch()
    net, first = TupleNet(inner).eval(), (lambda out: out[0])
    ref, got = same_seed(lambda: published.zo_imagenet(inner, x, y, niter=2),
                         lambda: precompute_imagenet_scores.get_curvature_for_batch_zo(net, x, y, niter=2,
                                                                                      output_transform=first))
    assert_all_close(got, ref, **F64)
    scorer = CurveScore(_data(x, y, 5), net, "cpu", 1.0, output_transform=first)
    ref, got = same_seed(lambda: published.fd_loop(inner, x.clone(), y, niter=2)[:2],
                         lambda: scorer.regularizer(net, x, y, False, niter=2))
    assert_all_close(got, ref, **F64)


def test_script_call_sites_run_unchanged():
    """As the scripts call them: inputs with requires_grad set, the net wrapped in DataParallel, keywords."""
    inner, (x, y) = tiny_cnn(), batch()
    net = nn.DataParallel(inner)
    inputs = x.clone().requires_grad_(True)
    ref, got = same_seed(lambda: published.zo_v2(inner, x, y, h=1e-3, niter=10),
                         lambda: precompute_cifar10_scores.get_curvature_for_batch_zo_v2(net, inputs, y, h=1e-3,
                                                                                        niter=10))
    assert_all_close(got, ref, **F64)
    ref, got = same_seed(lambda: published.fd_loop(inner, x.clone(), y, h=1e-3, niter=10, temp=1.0)[:2],
                         lambda: calc_curv_fz_models.get_regularized_curvature_for_batch(net, inputs, y, h=1e-3,
                                                                                         niter=10, temp=1.0))
    assert_all_close(got, ref, **F64)
    assert inputs.grad is None
