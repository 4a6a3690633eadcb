"""The pipelines' one training loop: datasets or ready loaders, named or given optimizers, schedules, hooks."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from curvfast.errors import ConfigError, TrainingDivergedError, UnknownNameError
from curvfast.training import CURVFAST_TRAIN, TrainRecipe, evaluate, fit, train_model


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_a_dataset_and_its_loader_train_identically():
    """A map-style dataset is batched with a seeded shuffle; the same loader passed ready gives the same weights."""
    a, b = _net(), _net()
    fit(a, _data(), TrainRecipe(epochs=2, batch_size=16, seed=3))
    loader = DataLoader(_data(), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3))
    fit(b, loader, TrainRecipe(epochs=2, seed=3))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_hooks_see_every_epoch_and_the_mean_loss_falls():
    seen, losses = [], []
    fit(_net(), _data(), TrainRecipe(epochs=5, batch_size=16, optimizer="adam", lr=1e-2),
        on_epoch_start=seen.append, on_epoch_end=lambda e, loss: losses.append((e, loss)))
    assert seen == [0, 1, 2, 3, 4] and [e for e, _ in losses] == [1, 2, 3, 4, 5]
    assert losses[-1][1] < losses[0][1] and all(math.isfinite(v) for _, v in losses)


def test_a_given_optimizer_custom_loss_and_step_schedule():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    calls = []

    def loss_fn(model, x, y):
        calls.append(x.shape[0])
        return torch.nn.functional.cross_entropy(model(x), y)

    fit(net, _data(), TrainRecipe(epochs=2, batch_size=16, optimizer=opt, schedule="cosine-step"), loss_fn=loss_fn)
    assert calls == [16] * 8
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # annealed to 0 over the 8 steps


@pytest.mark.parametrize("kwargs, error, message", [
    ({"optimizer": "lbfgs"}, UnknownNameError, "optimizer must be one of"),
    ({"schedule": "step"}, UnknownNameError, "schedule must be one of"),
    ({"lr": float("nan")}, ConfigError, "lr must be a positive finite"),
    ({"batch_size": 0}, ConfigError, "batch_size >= 1"),
])
def test_bad_settings_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        TrainRecipe(epochs=1, **kwargs)


def test_divergence_is_reported():
    with pytest.raises(TrainingDivergedError, match="diverged"):
        fit(_net(), _data(), TrainRecipe(epochs=1), loss_fn=lambda m, x, y: m(x).sum() * float("inf"))


def test_the_recipe_decides_the_weights():
    """The same recipe gives bit-identical weights; another seed (data order) gives others."""
    recipe = TrainRecipe(epochs=2, batch_size=16, lr=0.02, weight_decay=1e-3, optimizer="adam", schedule="cosine-step",
                         seed=4)
    a, b = fit(_net(), _data(), recipe), fit(_net(), _data(), recipe)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = fit(_net(), _data(), dataclasses.replace(recipe, seed=5))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_train_model_uses_the_curvfast_train_recipe_by_default():
    assert CURVFAST_TRAIN == TrainRecipe(epochs=30, batch_size=64, lr=0.05, weight_decay=5e-4, optimizer="sgd",
                                         schedule="cosine", seed=0)
    net, info = train_model("small_cnn", "digits", dataclasses.replace(CURVFAST_TRAIN, epochs=1, seed=2), log=None)
    assert info["epochs"] == 1 and info["seed"] == 2 and 0 < info["test_accuracy"] <= 1


def test_a_recipe_is_checked_when_built_and_fit_takes_only_a_recipe():
    with pytest.raises(ConfigError, match="epochs >= 1"):
        TrainRecipe(epochs=0)
    with pytest.raises(UnknownNameError, match="optimizer must be one of"):
        TrainRecipe(epochs=1, optimizer="lbfgs")
    with pytest.raises(TypeError, match="recipe must be a TrainRecipe"):
        fit(_net(), _data(), {"epochs": 1})
    with pytest.raises(TypeError, match="unexpected keyword argument 'lr'"):
        fit(_net(), _data(), TrainRecipe(epochs=1), lr=0.1)


class _LabelIsWorker(torch.utils.data.Dataset):
    """Label 1 when read in a DataLoader worker process, 0 in the main process."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.zeros(2), int(torch.utils.data.get_worker_info() is not None)


def test_evaluate_reads_through_the_workers_it_is_given():
    always_one = torch.nn.Linear(2, 2)
    with torch.no_grad():
        always_one.weight.zero_()
        always_one.bias.copy_(torch.tensor([0.0, 1.0]))
    assert evaluate(always_one, _LabelIsWorker()) == 0.0
    assert evaluate(always_one, _LabelIsWorker(), workers=2) == 1.0
