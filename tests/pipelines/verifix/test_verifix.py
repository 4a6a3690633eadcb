"""Verifix: label noise, verified-set selection, and an end-to-end correction that improves a small
noisy run (the projectors and conv patches: test_verifix_projector.py)."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset, TensorDataset

from curvfast.errors import ConfigError, DataError, UnknownNameError
from curvfast.pipelines.verifix import add_label_noise, select_verified, verifix
from curvfast.pipelines.verifix.selection import _balanced_quota

def test_symmetric_and_asymmetric_noise():
    y = torch.arange(10).repeat(100)
    noisy, flipped = add_label_noise(y, 0.25, 10, seed=0)
    assert flipped.sum() == 250 and torch.all(noisy[flipped] != y[flipped]) and torch.equal(noisy[~flipped], y[~flipped])
    assert torch.equal(noisy, add_label_noise(y, 0.25, 10, seed=0)[0])
    counts = torch.bincount((noisy[flipped] - y[flipped]) % 10, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 10  # uniform over the 9 other classes
    pair, flipped = add_label_noise(y, 0.4, 10, kind="asymmetric", seed=1)
    assert flipped.sum() == 400 and torch.all(pair[flipped] == (y[flipped] + 1) % 10)
    only, flipped = add_label_noise(y, 0.5, 10, kind="asymmetric", mapping={2: 7, 3: 8}, seed=1)
    assert flipped.sum() == 100 and set(only[flipped].tolist()) == {7, 8}
    with pytest.raises(ConfigError, match="rate"):
        add_label_noise(y, 1.0, 10)
    with pytest.raises(DataError, match="class ids in"):
        add_label_noise(y, 0.1, 5)  # labels up to 9 for 5 classes
    with pytest.raises(UnknownNameError, match="noise kind"):
        add_label_noise(y, 0.1, 10, kind="pairwise")


def test_balanced_quota():
    assert _balanced_quota(np.array([50, 50, 50]), 30).tolist() == [10, 10, 10]
    assert _balanced_quota(np.array([3, 50, 50]), 30).tolist() == [3, 14, 13]
    assert _balanced_quota(np.array([5, 5]), 10).tolist() == [5, 5]


def test_selection_takes_lowest_curvature_per_class(digits_small):
    from curvfast.engine import score

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    sel = select_verified(model, digits_small, 20, method="exact", progress=False)
    curv = score(model, digits_small, method="exact", progress=False).score
    labels = np.array([digits_small[i][1] for i in range(len(digits_small))])
    assert len(sel.indices) == 20 and sel.method == "exact"
    for c in np.unique(labels[sel.indices]):
        members = np.flatnonzero(labels == c)
        chosen = np.intersect1d(sel.indices, members)
        rest = np.setdiff1d(members, chosen)
        assert len(rest) == 0 or curv[chosen].max() <= curv[rest].min()
    assert np.bincount(labels[sel.indices], minlength=10).max() <= 2 + 1
    rand = select_verified(model, digits_small, 20, method="random", seed=1, progress=False)
    assert rand.scores is None and len(rand.indices) == 20


@pytest.fixture(scope="module")
def noisy_mlp():
    """A ReLU MLP that memorised 40% symmetric noise on 1000 training digits (full-batch Adam, seed 0)."""
    from curvfast.data import DigitsDataset

    train = DigitsDataset("train")
    noisy, _ = add_label_noise(train.targets, 0.4, 10, seed=0)
    x = train.images
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(400):
        opt.zero_grad()
        F.cross_entropy(net(x[:1000]), noisy[:1000]).backward()
        opt.step()
    return net.eval(), TensorDataset(x[:1000], noisy[:1000]), TensorDataset(x[1000:], noisy[1000:])


def test_verifix_improves_a_noisy_model(noisy_mlp):
    """Measured (seeds 0-3): clean test accuracy 0.59-0.65 before, 0.78-0.81 after. Asserted: +5 points."""
    from curvfast.data import DigitsDataset
    from curvfast.training import evaluate

    net, train, val = noisy_mlp
    test = DigitsDataset("test")
    assert evaluate(net, train) == 1.0  # the noise is memorised
    original = {k: v.clone() for k, v in net.state_dict().items()}
    sel = select_verified(net, train, 100, progress=False)
    fixed, report = verifix(net, Subset(train, sel.indices.tolist()), val, progress=False)
    before, after = evaluate(net, test), evaluate(fixed, test)
    assert report.alpha is not None and report.validation_after > report.validation_before
    assert after >= before + 0.05, (before, after)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in original.items())  # the input model is untouched
    # 100 verified rows: the 64-dim input takes the Gram route; the 256-dim hidden layer has fewer
    # rows than dimensions, where the randomized route at rank = rows is exact and cheaper
    assert [layer["route"] for layer in report.layers] == ["gram", "randomized"]
    assert report.layers[1]["dim"] == 256 and report.layers[0]["rows_used"] == 100


def test_verifix_keeps_the_original_when_nothing_helps(noisy_mlp):
    net, train, _ = noisy_mlp
    x = train.tensors[0][:200]
    perfect = TensorDataset(x, net(x).argmax(1))  # the model is already 100% right here: no α can beat it
    fixed, report = verifix(net, Subset(train, range(50)), perfect, alphas=(1e4, 1e6), progress=False)
    assert report.alpha is None and report.kept_original and report.validation_before == 1.0
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in fixed.state_dict().items())


def test_cli_writes_results(tmp_path, capsys):
    from curvfast.cli import main

    out = tmp_path / "run"
    args = ["verifix", "--dataset", "digits", "--noise", "0.25", "--epochs", "2", "--verified-size", "50",
            "--method", "random", "--alphas", "1e4,1e5", "--out", str(out), "--quiet"]
    assert main(args) == 0
    res = json.loads((out / "results.json").read_text())
    for key in ("accuracy_before", "accuracy_after", "alpha", "verified_size", "seconds"):
        assert key in res
    assert res["verified_size"] == 50 and 0 <= res["accuracy_after"] <= 1
    assert {"train", "selection", "verifix_spectra", "verifix_alpha_search", "total"} <= set(res["seconds"])
    assert abs(res["train_noise_rate"] - 0.25) < 0.03
    assert (out / "verified.npz").exists() and (out / "model.pt").exists()
    assert res["settings"]["alphas"] == [1e4, 1e5] and res["settings"]["seed"] == 0  # the resolved config
    assert main(["verifix", "--noise", "1.5", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "noise rate" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before anything ran


def test_several_seeds_write_one_folder_each_and_mean_std(tmp_path):
    from curvfast.pipelines.verifix import Config, run, summary

    config = Config(epochs=1, verified_size=20, method="random", alphas=(1e4,), seeds=(0, 1), quiet=True)
    res = run(config, out=str(tmp_path))
    seeds = [json.loads((tmp_path / f"seed_{s}" / "results.json").read_text()) for s in (0, 1)]
    assert res == json.loads((tmp_path / "results.json").read_text()) and res["seeds"] == [0, 1]
    assert res["accuracy_after"] == pytest.approx(np.mean([r["accuracy_after"] for r in seeds]))
    assert res["accuracy_after_std"] == pytest.approx(np.std([r["accuracy_after"] for r in seeds], ddof=1))
    assert [r["settings"]["seed"] for r in seeds] == [0, 1] and (tmp_path / "seed_1" / "model.pt").exists()
    assert set(summary(res)) == {"accuracy_before", "accuracy_before_std", "accuracy_after", "accuracy_after_std",
                                 "alpha", "verified_size", "seconds"}


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "epochs must be >= 1"), ("max_rows", -1, "max_rows must be >= 0"), ("alphas", (0.5,), "alphas"),
    ("val_fraction", 1.0, "val_fraction"), ("seeds", (), "at least one seed"), ("verified_size", 0, "verified_size"),
    ("method", "curviness", "--method must be one of auto, exact"),
])
def test_config_refuses_bad_settings_before_training(field, value, message):
    from curvfast.pipelines.verifix import Config, run

    with pytest.raises(ConfigError, match=message):
        run(Config(**{field: value}))


def test_every_registered_estimator_can_rank_the_verified_set_and_selection_is_refused():
    """--method reads curvfast.curvature.METHODS (deflated included), and the old --selection is gone."""
    from curvfast.cli import main
    from curvfast.curvature import METHODS
    from curvfast.pipelines.common.contract import field_choices
    from curvfast.pipelines.verifix import Config

    assert field_choices(Config, "method") == (*METHODS, "random") and "deflated" in METHODS
    Config(method="deflated").validate()
    with pytest.raises(SystemExit):
        main(["verifix", "--selection", "random", "--out", "unused"])


class _OnesInWorkers(torch.utils.data.Dataset):
    """Inputs of ones when read in a DataLoader worker process, zeros in the main process."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        value = float(torch.utils.data.get_worker_info() is not None)
        return torch.full((4,), value), 0


def test_spectra_and_accuracies_read_through_the_workers_they_are_given():
    from curvfast.pipelines.verifix import layer_spectra

    net = nn.Sequential(nn.Linear(4, 2))  # class 0 on ones, class 1 on zeros
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0] * 4, [0.0] * 4]))
        net[0].bias.copy_(torch.tensor([0.0, 0.5]))
    energy = {w: float(layer_spectra(net, _OnesInWorkers(), workers=w)["0"].spectrum.energy.sum()) for w in (0, 2)}
    assert energy == {0: 0.0, 2: 24.0}  # six rows of four ones
    with pytest.raises(ConfigError, match="workers"):
        layer_spectra(net, _OnesInWorkers(), workers=-1)
    for workers, accuracy in ((0, 0.0), (2, 1.0)):
        _, report = verifix(net, _OnesInWorkers(), _OnesInWorkers(), alphas=(10.0,), workers=workers)
        assert report.validation_before == accuracy
