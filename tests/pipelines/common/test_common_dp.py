"""DP-SGD training shared by the mia and memorization pipelines (curvfast.pipelines.common.dp): BatchNorm
replacement, the budget, reproducibility, the plain network handed back, and the same steps as a
hand-written Opacus loop."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from curvfast.curvature import input_curvature, is_piecewise_linear
from curvfast.curvature._model import LogitFn
from curvfast.data import DigitsDataset
from curvfast.errors import ConfigError, UnknownNameError
from curvfast.models import build_model
from curvfast.pipelines.common.dp import dp_compatible, train_dp_model


@pytest.fixture(scope="module")
def digits():
    ds = DigitsDataset("train")
    return ds.images[:128], ds.targets[:128]


def _mlp():
    return build_model("mlp", 10, 1, width=32, in_features=64)


def _cnn():
    return build_model("small_cnn", 10, 1, width=8)


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_groupnorm_replaces_batchnorm_and_makes_the_network_smooth():
    fixed = dp_compatible(_cnn(), "groupnorm")
    kinds = {type(m).__name__ for m in fixed.modules()}
    assert "GroupNorm" in kinds and not any("BatchNorm" in k for k in kinds)
    x, y = torch.rand(4, 1, 8, 8), torch.arange(4)
    assert input_curvature(fixed, x, y, method="auto", probes=4).method == "deflated"  # GroupNorm is smooth


def test_identity_replacement_keeps_the_network_piecewise_linear():
    fixed = dp_compatible(_cnn(), "identity")
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fixed.modules())
    assert is_piecewise_linear(LogitFn(fixed, None), torch.rand(4, 1, 8, 8))


def test_bad_settings_name_the_argument(digits):
    x, y = digits
    with pytest.raises(UnknownNameError, match="batchnorm must be one of groupnorm, identity"):
        dp_compatible(_cnn(), "layernorm")
    with pytest.raises(ConfigError, match="epsilon must be > 0"):
        train_dp_model(_mlp, x, y, epsilon=0.0)
    with pytest.raises(ValueError, match="max_grad_norm must be > 0"):
        train_dp_model(_mlp, x, y, epsilon=1.0, max_grad_norm=0.0)


@pytest.fixture(scope="module")
def private(digits):
    x, y = digits
    return train_dp_model(_mlp, x, y, epsilon=4.0, epochs=1, batch_size=32, lr=1e-2, seed=0)


def test_training_meets_its_budget_and_hands_back_the_plain_network(private):
    model, spent = private
    assert 3.0 < spent <= 4.0 + 1e-6
    assert not hasattr(model, "_module") and not model.training
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


def test_seeded_noise_is_reproducible_and_changes_the_result(digits, private):
    x, y = digits
    again, _ = train_dp_model(_mlp, x, y, epsilon=4.0, epochs=1, batch_size=32, lr=1e-2, seed=0)
    plain, spent = train_dp_model(_mlp, x, y, epsilon=math.inf, epochs=1, batch_size=32, lr=1e-2, seed=0)
    assert torch.isfinite(_params(private[0])).all() and torch.equal(_params(private[0]), _params(again))
    assert spent is None and not torch.allclose(_params(private[0]), _params(plain))


def _reference(make_model, x, y, *, epsilon, epochs, batch_size, lr, seed, batchnorm):
    """The recipe as a plain loop (what the pipelines ran before they shared ``fit``)."""
    torch.manual_seed(seed)
    model = dp_compatible(make_model(), batchnorm).train()
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    net = model
    if math.isfinite(epsilon):
        from opacus import PrivacyEngine

        net, opt, loader = PrivacyEngine(accountant="rdp").make_private_with_epsilon(
            module=model, optimizer=opt, data_loader=loader, target_epsilon=epsilon, target_delta=1e-5, epochs=epochs,
            max_grad_norm=1.0)
    for _ in range(epochs):
        for xb, yb in loader:
            if len(yb) == 0:
                continue
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
    return model


@pytest.mark.parametrize("epsilon, make, batchnorm", [(2.0, _cnn, "identity"), (2.0, _cnn, "groupnorm"), (math.inf, _mlp, "groupnorm")])
def test_fit_takes_the_same_steps_as_a_plain_opacus_loop(digits, epsilon, make, batchnorm):
    x, y = digits
    kw = {"epsilon": epsilon, "epochs": 2, "batch_size": 32, "lr": 1e-2, "seed": 3, "batchnorm": batchnorm}
    model, _ = train_dp_model(make, x, y, **kw)
    torch.testing.assert_close(_params(model), _params(_reference(make, x, y, **kw)), rtol=0, atol=0)


def test_empty_poisson_batches_are_skipped(digits):
    """4 samples at rate 1/4: a quarter of the steps draw no sample; none may reach the loss (NaN)."""
    x, y = digits
    model, spent = train_dp_model(_mlp, x[:4], y[:4], epsilon=50.0, epochs=8, batch_size=1, seed=0)
    assert torch.isfinite(_params(model)).all() and spent <= 50.0 + 1e-6


@pytest.mark.parametrize("hooks", ["enabled", "disabled"])
def test_opacus_grad_sample_module_scores_like_inner(private, digits, hooks):
    """Curvature of a live GradSampleModule equals its inner network's, hooks enabled or disabled."""
    from opacus import GradSampleModule

    inner, _ = private
    x, y = digits
    wrapped = GradSampleModule(inner)
    if hooks == "disabled":
        wrapped.disable_hooks()
    try:
        a = input_curvature(wrapped, x[:32], y[:32], method="exact")
        assert wrapped.hooks_enabled == (hooks == "enabled")  # put back as they were
        assert hasattr(wrapped, "autograd_grad_sample_hooks")
        if hooks == "enabled":  # the restored hooks still give per-sample gradients
            wrapped.train()
            F.cross_entropy(wrapped(x[:4]), y[:4]).backward()
            assert all(p.grad_sample.shape[0] == 4 for p in wrapped.parameters() if p.requires_grad)
    finally:
        wrapped.remove_hooks()
    torch.testing.assert_close(a.value, input_curvature(inner, x[:32], y[:32], method="exact").value, rtol=0, atol=0)


def test_returned_model_scores_like_a_fresh_copy(private, digits):
    model, _ = private
    x, y = digits
    fresh = _mlp()
    fresh.load_state_dict(model.state_dict())
    a = input_curvature(model, x[:32], y[:32], method="exact")
    torch.testing.assert_close(a.value, input_curvature(fresh, x[:32], y[:32], method="exact").value, rtol=0, atol=0)
