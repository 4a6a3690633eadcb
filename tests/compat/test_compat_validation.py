"""The drop-ins check their inputs as strictly as input_curvature: each bad input gets a typed error naming the
fix, and a refused call draws nothing from torch's generator."""
from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from curvfast.compat import DROP_INS, CurveScore
from curvfast.errors import (BatchDependentModelError, ConfigError, DataError, NonFiniteError,
                             UnsupportedModelError)


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 5)).eval()


def tiny_batch(size=4):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(size, 2, 4, 4, generator=gen), torch.arange(size) % 5


def _loader_data(x, y, train_length, batch_size=2):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)
    return SimpleNamespace(num_classes=5, train_loader=loader, test_loader=loader, train_length=train_length)


def call(drop_in, net, x, y, **kw):
    """The published call of a drop-in: a function, or CurveScore.regularizer."""
    if drop_in.name == "CurveScore":
        data = SimpleNamespace(num_classes=5, train_loader=None, test_loader=None, train_length=len(x))
        return CurveScore(data, net, "cpu", 1.0).regularizer(net, x, y, False, **kw)
    fn = functools.partial(drop_in.replacement, net=net) if drop_in.binds_net else functools.partial(
        drop_in.replacement, net)
    return fn(x, y, **kw)


def refused_without_draws(error, match, fn):
    torch.manual_seed(3)
    with pytest.raises(error, match=match):
        fn()
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(3).get_state()), "a refused call drew from torch's RNG"


IDS = [f"{d.repository.split('/')[1]}/{d.path}" for d in DROP_INS]


@pytest.mark.parametrize("drop_in", DROP_INS, ids=IDS)
def test_nan_weight_refused(drop_in):
    net, (x, y) = tiny_net(), tiny_batch()
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] = float("nan")
    refused_without_draws(NonFiniteError, "NaN or Inf in 0.weight", lambda: call(drop_in, net, x, y, niter=2))


@pytest.mark.parametrize("drop_in", DROP_INS, ids=IDS)
def test_nan_input_refused(drop_in):
    net, (x, y) = tiny_net(), tiny_batch()
    x[2, 0, 0, 0] = float("nan")
    refused_without_draws(NonFiniteError, r"sample\(s\) \[2\]", lambda: call(drop_in, net, x, y, niter=2))


@pytest.mark.parametrize("drop_in", DROP_INS, ids=IDS)
def test_step_below_the_inputs_resolution_refused(drop_in):
    net, (x, y) = tiny_net(), tiny_batch()
    refused_without_draws(ConfigError, "rounds the probes away", lambda: call(drop_in, net, x, y, h=1e-30, niter=2))
    refused_without_draws(ConfigError, "positive finite", lambda: call(drop_in, net, x, y, h=float("nan"), niter=2))
    call(drop_in, net, x, y, h=1e-4, niter=1)  # the published ImageNet step passes for float32 images


@pytest.mark.parametrize("drop_in", DROP_INS, ids=IDS)
@pytest.mark.parametrize("labels, error, match", [
    (torch.tensor([0, 1, 2, 7]), DataError, r"labels must lie in \[0, 5\)"),
    (torch.tensor([0, -1, 2, 3]), DataError, r"labels must lie in \[0, 5\)"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), TypeError, "integer class labels"),
    (torch.tensor([0, 1, 2]), DataError, r"shape \(B,\) = \(4,\)"),
])
def test_bad_labels_refused(drop_in, labels, error, match):
    net, (x, _) = tiny_net(), tiny_batch()
    refused_without_draws(error, match, lambda: call(drop_in, net, x, labels, niter=2))


class TupleNet(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :5], x


@pytest.mark.parametrize("drop_in", DROP_INS, ids=IDS)
def test_tuple_output_names_output_transform(drop_in):
    x, y = tiny_batch()
    refused_without_draws(UnsupportedModelError, "output_transform", lambda: call(drop_in, TupleNet(), x, y, niter=2))


@pytest.mark.parametrize("drop_in", DROP_INS, ids=IDS)
def test_bad_counts_and_temperature_refused(drop_in):
    net, (x, y) = tiny_net(), tiny_batch()
    refused_without_draws(ConfigError, "niter must be a positive int", lambda: call(drop_in, net, x, y, niter=0))
    if drop_in.name != "CurveScore":
        refused_without_draws(ConfigError, "temp must be", lambda: call(drop_in, net, x, y, niter=1, temp=0))


@pytest.mark.parametrize("drop_in", DROP_INS, ids=IDS)
def test_batch_statistics_refused(drop_in):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, track_running_stats=False), nn.Flatten(),
                        nn.Linear(12, 5)).eval()
    x, y = tiny_batch()
    refused_without_draws(BatchDependentModelError, "batch's own statistics", lambda: call(drop_in, net, x, y))


class BatchStandardised(nn.Module):
    """Standardises its features with the batch's own statistics in the forward (F.batch_norm, training=True)."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Sequential(nn.Flatten(), nn.Linear(32, 6)), nn.Linear(6, 5)

    def forward(self, x):
        return self.head(torch.nn.functional.batch_norm(self.body(x), None, None, training=True))


@pytest.mark.parametrize("drop_in", DROP_INS, ids=IDS)
def test_a_forward_using_batch_statistics_is_refused(drop_in):
    """The batch-mates probe of input_curvature guards the drop-ins too (issue 30: as strict as the core)."""
    torch.manual_seed(0)
    net, (x, y) = BatchStandardised().eval(), tiny_batch()
    refused_without_draws(BatchDependentModelError, "depends on the rest of its batch", lambda: call(drop_in, net, x, y))


@pytest.mark.parametrize("drop_in", [d for d in DROP_INS if d.name.startswith("get_curvature")],
                         ids=[i for i, d in zip(IDS, DROP_INS) if d.name.startswith("get_curvature")])
def test_zo_refuses_train_mode_batchnorm_and_dropout(drop_in):
    """The zero-order scorers run the net as given (the published scripts call net.eval() first)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(32, 8), nn.Dropout(0.5), nn.Linear(8, 5)).train()
    x, y = tiny_batch()
    refused_without_draws(UnsupportedModelError, r"training mode in 2 \(Dropout\).*net.eval\(\)",
                          lambda: call(drop_in, net, x, y, niter=1))


def test_plain_callable_nan_scores_refused():
    """A callable has no weights to check: a NaN it returns is refused in the scores."""
    x, y = tiny_batch()
    drop_in = next(d for d in DROP_INS if d.path.endswith("precompute_cifar10_scores.py"))
    with pytest.raises(NonFiniteError, match="not finite"):
        call(drop_in, lambda z: z.flatten(1)[:, :5] * float("nan"), x, y, niter=1)
    with pytest.raises(TypeError, match="net must be an nn.Module or a callable"):
        call(drop_in, "resnet18", x, y)


@pytest.mark.parametrize("train_length, match", [(5, "yielded 4 samples but train_length is 5"),
                                                 (3, "more than train_length = 3")])
def test_curvescore_refuses_a_loader_of_another_length(train_length, match):
    """The published class leaves samples the loader never yielded at score 0, label 0: refused here."""
    net, (x, y) = tiny_net(), tiny_batch(4)
    scorer = CurveScore(_loader_data(x, y, train_length), net, "cpu", 1.0)
    with pytest.raises(DataError, match=match):
        scorer.score_true_labels_with_comparison()


def test_sample_ids_without_a_seed_refused():
    net, (x, y) = tiny_net(), tiny_batch()
    drop_in = next(d for d in DROP_INS if d.path == "calc_curv_fz_models.py")
    refused_without_draws(ConfigError, "pass seed=<int>", lambda: call(drop_in, net, x, y, sample_ids=torch.arange(4)))
    refused_without_draws(ConfigError, "seed must be a non-negative int", lambda: call(drop_in, net, x, y, seed=-1))
