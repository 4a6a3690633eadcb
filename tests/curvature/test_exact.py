"""Exact logit-space curvature against float64 torch.func Hessians (README: "Why it is fast and exact")."""
import pytest
import torch
from torch import nn

import curvfast
from conftest import make_batch, make_model, reference_hessians
from curvfast.curvature._checks import require_piecewise_linear
from curvfast.errors import NonFiniteError, NotPiecewiseLinearError


@pytest.mark.parametrize("kind", ["pl_residual", "pl_mlp"])
@pytest.mark.parametrize("num_classes", [2, 10, 100])
def test_exact_matches_hessian_float64(kind, num_classes):
    model = make_model(kind, num_classes)
    x, y = make_batch(4, num_classes)
    hess = reference_hessians(model, x, y)
    eig = torch.linalg.eigvalsh(hess)

    trace = curvfast.input_curvature(model, x, y, method="exact").value
    torch.testing.assert_close(trace, hess.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-10, atol=0)

    frob = curvfast.input_curvature(model, x, y, method="exact", statistic="frobenius").value
    torch.testing.assert_close(frob, torch.linalg.matrix_norm(hess), rtol=1e-10, atol=0)

    top = curvfast.input_curvature(model, x, y, method="exact", statistic="top_eigenvalue").value
    torch.testing.assert_close(top, eig[:, -1], rtol=1e-10, atol=0)

    spec = curvfast.input_curvature(model, x, y, method="exact", statistic="spectrum").value
    k = min(num_classes, x[0].numel())
    torch.testing.assert_close(spec[:, :k], eig.flip(-1)[:, :k], rtol=1e-8, atol=1e-12 * eig.abs().max().item())


def test_exact_is_label_independent_and_reports_loss():
    model = make_model("pl_residual", 10)
    x, y = make_batch(6, 10)
    a = curvfast.input_curvature(model, x, y, method="exact")
    b = curvfast.input_curvature(model, x, (y + 3) % 10, method="exact")
    torch.testing.assert_close(a.value, b.value, rtol=1e-12, atol=0)  # H = JᵀAJ does not involve y
    torch.testing.assert_close(a.loss, nn.functional.cross_entropy(model(x), y, reduction="none"))
    assert a.stderr is None and a.method == "exact" and a.statistic == "trace"


def _confident_model(dtype):
    """A ReLU MLP whose last layer is scaled so that the loss of its own predictions is ~1e-12."""
    model = make_model("pl_mlp", 10, dtype=dtype)
    with torch.no_grad():
        model[-1].weight.mul_(300.0)
    return model


def test_exact_float32_accurate_at_tiny_loss():
    x, _ = make_batch(64, 10, dtype=torch.float64, seed=3)
    m64 = _confident_model(torch.float64)
    y = m64(x).argmax(1)
    ref = curvfast.input_curvature(m64, x, y, method="exact")
    keep = (ref.loss < 1e-9) & (ref.loss > 1e-14)  # samples with tiny loss, but not underflowed to 0
    assert keep.sum() >= 5, "the constructed model should give several samples with loss in (1e-14, 1e-9)"
    m32 = _confident_model(torch.float32)
    m32.load_state_dict(m64.state_dict())
    got = curvfast.input_curvature(m32, x.float(), y, method="exact").value.double()
    rel = ((got - ref.value).abs() / ref.value)[keep]
    assert rel.max() < 1e-3, f"fp32 exact drifts from fp64 at tiny loss: max rel err {rel.max():.2e}"
    assert ref.loss[keep].min() < 1e-11


def test_fp32_double_backward_is_the_inaccurate_baseline():
    """Sanity of the premise: naive fp32 double backward loses the tiny-loss Hessian that exact keeps."""
    x, _ = make_batch(64, 10, dtype=torch.float64, seed=3)
    m64 = _confident_model(torch.float64)
    y = m64(x).argmax(1)
    ref = curvfast.input_curvature(m64, x, y, method="exact")
    keep = (ref.loss < 1e-9) & (ref.loss > 1e-14)
    m32 = _confident_model(torch.float32)
    m32.load_state_dict(m64.state_dict())
    hess = reference_hessians(m32, x.float(), y)
    naive = hess.diagonal(dim1=1, dim2=2).sum(-1).double()
    rel = ((naive - ref.value).abs() / ref.value)[keep]
    assert rel.max() > 1e-2


@pytest.mark.parametrize("kind", ["gelu", "tanh"])
def test_exact_refuses_smooth_models_unless_gauss_newton_accepted(kind):
    model = make_model(kind, 10)
    x, y = make_batch(3, 10)
    with pytest.raises(NotPiecewiseLinearError, match="accept_gauss_newton"):
        curvfast.input_curvature(model, x, y, method="exact")
    with pytest.raises(NotPiecewiseLinearError, match="accept_gauss_newton=True"):
        require_piecewise_linear("exact", piecewise_linear=False)
    require_piecewise_linear("exact", piecewise_linear=False, accept_gauss_newton=True)
    require_piecewise_linear("exact", piecewise_linear=True)
    gn = curvfast.input_curvature(model, x, y, method="exact", accept_gauss_newton=True).value
    # Gauss-Newton reference: tr(Jᵀ A J) from the full Jacobian.
    jac = torch.func.vmap(torch.func.jacrev(lambda xb: model(xb.unsqueeze(0))[0]))(x).reshape(3, 10, -1)
    p = model(x).softmax(-1)
    a = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
    expected = torch.einsum("bcd,bce,bed->b", jac, a, jac)
    torch.testing.assert_close(gn, expected, rtol=1e-10, atol=0)
    true_trace = reference_hessians(model, x, y).diagonal(dim1=1, dim2=2).sum(-1)
    assert not torch.allclose(gn, true_trace, rtol=1e-6)


def test_auto_picks_exact_sampled_deflated_hutchinson():
    x, y = make_batch(2, 10)
    assert curvfast.input_curvature(make_model("pl_residual", 10), x, y).method == "exact"
    assert curvfast.input_curvature(make_model("gelu", 10), x, y, probes=4).method == "deflated"
    assert curvfast.input_curvature(make_model("gelu", 10), x, y, probes=4, statistic="frobenius").method == "hutchinson"
    m = make_model("pl_mlp", 200)
    y200 = torch.tensor([5, 150])
    assert curvfast.input_curvature(m, x, y200).method == "sampled"


def test_sampled_is_unbiased_for_large_c():
    """Mean over 300 seeds of the sampled trace equals the exact trace within 4 standard errors."""
    model = make_model("pl_mlp", 100)
    x, y = make_batch(3, 100)
    with torch.no_grad():
        model[-1].weight.mul_(3.0)  # a peaked softmax, as trained models have
    exact = curvfast.input_curvature(model, x, y, method="exact").value
    runs = torch.stack([
        curvfast.input_curvature(model, x, y, method="sampled", top_classes=3, probes=4, seed=s).value for s in range(300)
    ])
    mean, se = runs.mean(0), runs.std(0) / 300**0.5
    assert (runs.std(0) > 0).all(), "the tail must actually be sampled"
    assert ((mean - exact).abs() <= 4 * se).all(), f"bias: {(mean - exact) / se} standard errors"
    # with the whole tail budget the estimate is exact whatever the seed
    full = curvfast.input_curvature(model, x, y, method="sampled", top_classes=99, probes=1, seed=7).value
    torch.testing.assert_close(full, exact, rtol=1e-10, atol=0)


def test_sampled_reports_a_stderr_that_covers_the_error():
    model = make_model("pl_mlp", 100)
    x, y = make_batch(8, 100)
    exact = curvfast.input_curvature(model, x, y, method="exact").value
    res = curvfast.input_curvature(model, x, y, method="sampled", top_classes=5, probes=20, seed=1)
    assert res.stderr is not None and (res.stderr > 0).all()
    assert ((res.value - exact).abs() <= 5 * res.stderr).all()


class _Scaled(nn.Module):
    """A ReLU MLP whose logits are multiplied by a plain float attribute."""

    def __init__(self):
        super().__init__()
        self.net, self.scale = make_model("pl_mlp", 10), 1.0

    def forward(self, x):
        return self.net(x) * self.scale


def _fresh(model, x, y):
    """The exact trace from a deep copy: a new model object, so no per-model cache applies."""
    import copy

    return curvfast.input_curvature(copy.deepcopy(model), x, y, method="exact").value


def test_reused_scoring_copy_follows_every_change_to_the_model():
    """The scoring copy is reused across calls (it aliases the weights); every kind of change to
    the caller's model must still show in the next result, exactly as with a fresh model."""
    from curvfast.curvature._model import _cached_copy

    model = _Scaled()
    x, y = make_batch(4, 10)
    first = curvfast.input_curvature(model, x, y, method="exact").value
    assert _cached_copy(model) is _cached_copy(model), "the copy of an unchanged model is reused"

    def changed(step):
        before = curvfast.input_curvature(model, x, y, method="exact").value
        step()
        after = curvfast.input_curvature(model, x, y, method="exact").value
        assert not torch.equal(before, after), "the change must show"
        assert torch.equal(after, _fresh(model, x, y))

    changed(lambda: setattr(model, "scale", 2.0))  # a plain attribute
    with torch.no_grad():
        changed(lambda: model.net[1].weight.mul_(1.5))  # in place (an optimizer step)
    changed(lambda: setattr(model.net[1], "weight", nn.Parameter(model.net[1].weight.detach() * 0.5)))  # a new parameter
    changed(lambda: model.load_state_dict({k: v * 1.1 for k, v in model.state_dict().items()}))
    changed(lambda: setattr(model.net[1].weight, "data", model.net[1].weight.detach() * 2))  # through .data
    changed(lambda: model.net.__setitem__(3, nn.Linear(32, 32).double()))  # a new submodule
    changed(lambda: model.net[2].register_forward_hook(lambda m, i, out: out * 3))  # a hook
    model.train()
    assert torch.equal(curvfast.input_curvature(model, x, y, method="exact").value, _fresh(model.eval(), x, y))
    assert not torch.equal(first, _fresh(model, x, y))


def test_finite_weights_check_reruns_after_an_in_place_change():
    model = make_model("pl_mlp", 10)
    x, y = make_batch(4, 10)
    curvfast.input_curvature(model, x, y, method="exact")  # passes, and is remembered
    with torch.no_grad():
        model[1].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"NaN or Inf in 1\.weight"):
        curvfast.input_curvature(model, x, y, method="exact")
