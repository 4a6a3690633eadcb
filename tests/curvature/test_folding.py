"""Folding eval BatchNorm into the layer feeding it (curvature/_folding.py): which pairs fold, that
the folded model is the same function, and that the estimators stay exact with it."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import curvfast
from conftest import reference_hessians
from curvfast.curvature._folding import FoldedNorm, fold_batchnorms, foldable_pairs
from curvfast.curvature._model import scoring_model
from curvfast.errors import BatchDependentModelError


class Mixed(nn.Module):
    """Pairs that fold (stem, block, linear head) next to ones that must not: a conv output also used
    by a skip, a conv called twice, a ReLU between conv and BatchNorm."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem, self.stem_bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.skip, self.skip_bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.shared, self.shared_bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.late, self.late_bn = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.fc, self.fc_bn = nn.Linear(4 * 4 * 4, 8), nn.BatchNorm1d(8)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        h = F.relu(self.stem_bn(self.stem(x)))
        h = F.relu(self.block(h) + h)
        u = self.skip(h)
        h = F.relu(self.skip_bn(u) + u)            # u also feeds the sum: must not fold
        h = self.shared_bn(self.shared(self.shared(h)))  # called twice: must not fold
        h = self.late_bn(F.relu(self.late(h)))      # a ReLU in between
        h = F.max_pool2d(h, 2)
        return self.head(F.relu(self.fc_bn(self.fc(h.flatten(1)))))


def _mixed(seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    model = Mixed().double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=torch.float64) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen, dtype=torch.float64) + 0.3)
    return model.eval()


def _x(batch: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _pairs(model, x):
    with scoring_model(model) as scored:
        return scored, foldable_pairs(scored, x)


def test_only_layers_feeding_nothing_but_their_batchnorm_fold():
    model = _mixed()
    _, pairs = _pairs(model, _x())
    assert pairs == (("stem", "stem_bn"), ("block.0", "block.1"), ("fc", "fc_bn"))


def test_a_batchnorm_on_batch_statistics_does_not_fold():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.Flatten()).double().eval()
    _, pairs = _pairs(model, _x())
    assert pairs == ()


@pytest.mark.parametrize("method", ["auto", "hutchinson", "fd"])
def test_a_model_normalising_with_batch_statistics_is_refused(method):
    # eval mode does not help: without running statistics BatchNorm always uses the batch's own
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.Flatten()).double().eval()
    with pytest.raises(BatchDependentModelError, match=r"1 \(BatchNorm2d\).*track_running_stats=True"):
        curvfast.input_curvature(model, _x(), torch.zeros(4, dtype=torch.long), method=method, probes=2)


class ReadsItsBatchNorm(nn.Module):
    """A forward that uses a BatchNorm's attribute besides calling it: folding would break it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2 * 36, 3)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).flatten(1)) * self.bn.weight.sum()


class UsesTheConvOutputDetached(nn.Module):
    """The conv output also enters the logits through ``.detach()``: invisible in the graph."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2 * 36, 3)

    def forward(self, x):
        u = self.conv(x)
        return self.fc((self.bn(u) + u.detach()).flatten(1))


@pytest.mark.parametrize("cls, folds", [(ReadsItsBatchNorm, True), (UsesTheConvOutputDetached, False)])
def test_a_fold_that_would_change_the_logits_is_refused(cls, folds):
    """A forward reading the BatchNorm's attributes folds (the stand-in exposes them); a hidden second use does not."""
    torch.manual_seed(0)
    model = cls().double().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.2, 2)
    scored, pairs = _pairs(model, _x())
    assert pairs == ((("conv", "bn"),) if folds else ())
    if folds:
        torch.testing.assert_close(fold_batchnorms(scored, pairs)(_x()), model(_x()), rtol=1e-12, atol=1e-12)


def test_half_precision_weights_do_not_fold():
    """Folding would round s ⊙ W once more, at 2⁻⁸ in bfloat16: such layers are scored as they are."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten()).eval()
    _, pairs = _pairs(model, _x().float())
    assert pairs == (("0", "1"),)
    _, pairs = _pairs(model.bfloat16(), _x().bfloat16())
    assert pairs == ()


def test_the_folded_copy_is_the_same_function_and_the_model_is_untouched():
    model, x = _mixed(), _x()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scored, pairs = _pairs(model, x)
    folded = fold_batchnorms(scored, pairs)
    assert isinstance(folded.stem_bn, FoldedNorm) and isinstance(folded.block[1], FoldedNorm)
    assert isinstance(folded.skip_bn, nn.BatchNorm2d) and folded.block[0].bias is not None
    torch.testing.assert_close(folded(x), model(x), rtol=1e-12, atol=1e-12)
    assert isinstance(model.stem_bn, nn.BatchNorm2d) and model.block[0].bias is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def _batch_norm_calls(monkeypatch) -> list:
    calls, real = [], F.batch_norm

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "batch_norm", counting)
    return calls


def test_exact_folds_and_stays_exact(monkeypatch):
    """exact on the folded copy equals the float64 torch.func Hessian trace of the unfolded model,
    and its forward runs only the BatchNorms that cannot fold (3 of 6 stock ones)."""
    model, x = _mixed(), _x()
    y = torch.tensor([0, 1, 2, 3])
    curvfast.input_curvature(model, x, y, method="exact")  # finds the plan
    calls = _batch_norm_calls(monkeypatch)
    trace = curvfast.input_curvature(model, x, y, method="exact").value
    assert len(calls) == 3  # skip_bn, shared_bn, late_bn
    hess = reference_hessians(model, x, y)
    torch.testing.assert_close(trace, hess.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-10, atol=0)


def test_folded_weights_follow_writes_that_keep_the_version(monkeypatch):
    """The fold is recomputed from the current weights on every call: a write through ``.data``
    (which keeps the parameter's version counter) changes the next result exactly as it should."""
    model, x = _mixed(), _x()
    y = torch.tensor([4, 3, 2, 1])
    curvfast.input_curvature(model, x, y, method="exact")
    with torch.no_grad():
        model.stem.weight.data.mul_(1.7)
        model.stem_bn.running_var.data.mul_(3.0)
        model.block[1].weight.data.add_(0.25)
        model.fc_bn.running_mean.data.sub_(0.5)
    trace = curvfast.input_curvature(model, x, y, method="exact").value
    hess = reference_hessians(model, x, y)
    torch.testing.assert_close(trace, hess.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-10, atol=0)


@pytest.mark.parametrize("method", ["hutchinson", "deflated"])
def test_probe_estimators_agree_with_and_without_folding(method):
    """Same probes, same Hessian: the folded and the unfolded model give the same estimate."""
    model, x = _mixed(), _x()
    y = torch.tensor([0, 1, 2, 3])
    folded = curvfast.input_curvature(model, x, y, method=method, probes=20).value
    model.register_forward_hook(lambda *args: None)  # a hooked model is never folded
    plain = curvfast.input_curvature(model, x, y, method=method, probes=20).value
    torch.testing.assert_close(folded, plain, rtol=1e-9, atol=1e-12)


def test_whether_to_fold_does_not_depend_on_the_batch(monkeypatch):
    """One sample or many: the same folded model (a batch-dependent choice would change a sample's
    rounding with the batch it is scored in; see test_distributed's bit-identical resumed runs)."""
    model, x = _mixed(), _x(6)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    full = curvfast.input_curvature(model, x, y, method="exact").value
    calls = _batch_norm_calls(monkeypatch)
    one = torch.cat([curvfast.input_curvature(model, x[i : i + 1], y[i : i + 1], method="exact").value for i in range(6)])
    assert len(calls) == 6 * 3  # the 3 BatchNorms that do not fold, once per call
    torch.testing.assert_close(one, full, rtol=1e-12, atol=0)


class ReadsItsBatchNormOnSomeInputs(nn.Module):
    """Reads a BatchNorm's weight only for batches of positive mean: the fold, decided on a sample of another batch,
    must still give the model's own numbers (it used to fail: 'Identity' object has no attribute 'weight')."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(2 * 36, 3)

    def forward(self, x):
        z = self.fc(self.bn(self.conv(x)).flatten(1))
        return z * self.bn.weight.sum() if bool(x.mean() > 0) else z


class NormalisesAnotherLayerOnSomeInputs(nn.Module):
    """Its BatchNorm follows ``conv`` for batches of negative mean, ``other`` otherwise."""

    def __init__(self):
        super().__init__()
        self.conv, self.other, self.bn = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)
        self.fc = nn.Linear(2 * 36, 3)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x) if bool(x.mean() < 0) else self.other(x)).flatten(1))


class SkipsItsBatchNormOnSomeInputs(NormalisesAnotherLayerOnSomeInputs):
    """Its BatchNorm follows ``conv`` for batches of negative mean; otherwise ``conv``'s output goes on unnormalised."""

    def forward(self, x):
        u = self.conv(x)
        return self.fc((self.bn(u) if bool(x.mean() < 0) else u).flatten(1))


@pytest.mark.parametrize("cls", [ReadsItsBatchNormOnSomeInputs, NormalisesAnotherLayerOnSomeInputs,
                                 SkipsItsBatchNormOnSomeInputs])
def test_a_fold_decided_on_one_batch_stays_right_on_batches_taking_another_branch(cls):
    torch.manual_seed(0)
    model = cls().double().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.2, 2)
        model.bn.weight.uniform_(0.5, 2)
    y = torch.tensor([0, 1, 2, 0])
    for x in (-_x().abs(), _x().abs(), -_x(seed=2).abs()):  # the fold is decided on the first, negative batch
        trace = curvfast.input_curvature(model, x, y, method="exact").value
        hess = reference_hessians(model, x, y)
        torch.testing.assert_close(trace, hess.diagonal(dim1=1, dim2=2).sum(-1), rtol=1e-10, atol=1e-14)
