"""zo's float32 rounding floor ulp(max(|L|, 1))/(4h): the per-sample flag and the float64_losses option."""
import copy

import pytest
import torch
from torch import nn

from curvfast import input_curvature
from curvfast.errors import ConfigError


def _flat_relu_net(scale: float = 1e-3) -> nn.Module:
    """A random ReLU net whose logits barely depend on x (last layer x scale) at a loss of about 1.6."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                        nn.Linear(64, 10))
    with torch.no_grad():
        net[-1].weight.mul_(scale)
        net[-1].bias.zero_()
        net[-1].bias[0] = 0.85
    return net


def _batch(n: int = 32):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.zeros(n, dtype=torch.long)


def _linear(scale: float) -> nn.Module:
    torch.manual_seed(1)
    net = nn.Linear(16, 4)
    with torch.no_grad():
        net.weight.mul_(scale)
    return net


def test_float32_zo_on_a_random_relu_net_is_rounding_and_float64_losses_is_the_float64_model():
    net, (x, y) = _flat_relu_net(), _batch()
    reference = input_curvature(copy.deepcopy(net).double(), x.double(), y, method="zo", probes=1)
    fp32 = input_curvature(net, x, y, method="zo", probes=1)
    fp64 = input_curvature(net, x, y, method="zo", probes=1, float64_losses=True)
    assert 1.55 < float(fp32.loss.mean()) < 1.6
    ratio = float(fp32.value.double().mean() / reference.value.mean())
    assert ratio > 5, ratio  # the float32 values are the losses' rounding, many times the float64 value
    assert float((fp32.value == 0).double().mean()) > 0.1  # a single probe's four losses often round alike
    assert not bool((reference.value == 0).any()) and not bool((fp64.value == 0).any())
    torch.testing.assert_close(fp64.value.double(), reference.value, rtol=1e-6, atol=0)
    assert fp64.value.dtype == torch.float32 and fp64.loss.dtype == torch.float32
    assert float(fp32.below_rounding_floor.double().mean()) > 0.8
    torch.testing.assert_close(fp32.rounding_floor, torch.full((32,), 2.0 ** -23 / 4e-3))  # ulp(1.6)/(4h)


def test_the_flag_fires_on_a_flat_model_and_not_on_a_curved_one():
    x = torch.rand(32, 16, generator=torch.Generator().manual_seed(2))
    y = torch.arange(32) % 4
    flat = input_curvature(_linear(1e-4), x, y, method="zo")
    curved = input_curvature(_linear(10.0), x, y, method="zo")
    assert bool(flat.below_rounding_floor.all())
    assert not bool(curved.below_rounding_floor.any())
    # float64 losses move the floor to ulp_64(L)/(4h): the flat model's curvature is resolved and not flagged
    flat64 = input_curvature(_linear(1e-4), x, y, method="zo", float64_losses=True)
    assert not bool(flat64.below_rounding_floor.any())
    assert float(flat64.rounding_floor.max()) < 1e-12


def test_the_floor_follows_the_loss_size_and_other_methods_have_none():
    x = torch.rand(8, 16, generator=torch.Generator().manual_seed(3))
    y = torch.zeros(8, dtype=torch.long)
    net = _linear(1e-4)
    with torch.no_grad():
        net.bias.copy_(torch.tensor([0.0, 6.0, 6.0, 6.0]))  # loss ≈ 7.1: ulp(L) = 4 ulp(1)
    res = input_curvature(net, x, y, method="zo")
    torch.testing.assert_close(res.rounding_floor, torch.full((8,), 4 * 2.0 ** -23 / 4e-3))
    assert input_curvature(net, x, y, method="exact").below_rounding_floor is None


def test_float64_losses_is_refused_where_it_does_nothing():
    x, y = torch.rand(4, 16), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ConfigError, match="float64_losses is an option of method='zo'"):
        input_curvature(_linear(1.0), x, y, method="exact", float64_losses=True)
    with pytest.raises(ConfigError, match="loss oracle"):
        input_curvature(lambda a, b: a.sum(1), x, y, method="zo", float64_losses=True)
    with pytest.raises(ConfigError, match="True or False"):
        input_curvature(_linear(1.0), x, y, method="zo", float64_losses="yes")
