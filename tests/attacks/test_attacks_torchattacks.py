"""The ensemble attacks as torchattacks attacks, run in plain torchattacks loops."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torchattacks = pytest.importorskip("torchattacks")
from curvfast.attacks import EnsemblePGD, MajorityVote, ensemble_pgd  # noqa: E402
from curvfast.errors import ConfigError, UnknownNameError  # noqa: E402

MEAN, STD = [0.4], [0.25]


pytestmark = pytest.mark.usefixtures("one_thread")


def net(seed, normalized=False, batchnorm=False):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)]
    if batchnorm:
        layers[1:1] = [nn.BatchNorm2d(4)]
        layers.insert(-1, nn.Dropout(0.3))
    model = nn.Sequential(*layers)
    if normalized:  # the member expects (x - mean) / std, as torchvision-style models do
        return model
    return model.eval()


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 8, 8, generator=gen)
    return x, torch.arange(24) % 5


@pytest.mark.parametrize("rule", ["sum", "vote", "agree"])
def test_one_member_is_torchattacks_pgd(data, rule):
    x, y = data
    model = net(0)
    torch.manual_seed(7)
    theirs = torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=5)(x, y)
    torch.manual_seed(7)
    ours = EnsemblePGD([model], eps=0.1, alpha=0.02, steps=5, rule=rule)(x, y)
    assert torch.equal(ours, theirs)


def test_same_iteration_as_ensemble_pgd(data):
    x, y = data
    members = [net(0), net(1), net(2)]
    torch.manual_seed(3)
    ours = EnsemblePGD(members, eps=0.1, alpha=0.02, steps=4, rule="vote")(x, y)
    assert torch.equal(ours, ensemble_pgd(members, x, y, rule="vote", eps=0.1, step=0.02, steps=4, seed=3))


def test_normalization_and_targeted_modes_as_torchattacks(data):
    x, y = data
    model = net(0, normalized=True).eval()
    norm_x = (x - MEAN[0]) / STD[0]
    attacks = []
    for atk in (torchattacks.PGD(model, eps=0.1, alpha=0.02, steps=5), EnsemblePGD([model], eps=0.1, alpha=0.02, steps=5)):
        atk.set_normalization_used(MEAN, STD)
        atk.set_mode_targeted_by_label(quiet=True)
        torch.manual_seed(1)
        attacks.append(atk(norm_x, (y + 1) % 5))
    assert torch.equal(attacks[0], attacks[1])
    raw = attacks[1] * STD[0] + MEAN[0]  # back in image space: within eps of x and in [0, 1]
    assert (raw - x).abs().max() <= 0.1 + 1e-6 and raw.min() >= -1e-6 and raw.max() <= 1 + 1e-6


def test_model_training_mode_is_handled_like_torchattacks(data):
    x, y = data
    members = [net(0, batchnorm=True), net(1, batchnorm=True)]
    for m in members:
        m.train()
    atk = EnsemblePGD(members, eps=0.1, alpha=0.02, steps=3)
    torch.manual_seed(0)
    default = atk(x, y)  # eval during the attack: deterministic, and the train mode comes back
    assert all(m.training for m in members)
    for m in members:
        m.eval()
    torch.manual_seed(0)
    assert torch.equal(atk(x, y), default)
    assert not any(m.training for m in members)
    atk.set_model_training_mode(model_training=True, dropout_training=True)
    torch.manual_seed(0)
    assert not torch.equal(atk(x, y), default)  # dropout active while attacking


def test_plain_torchattacks_loop_fools_the_ensemble(data):
    """The usual evaluation loop: for x, y in loader: adv = atk(x, y); robust accuracy of the vote."""
    x, _ = data
    members = [net(s) for s in range(3)]
    ensemble = MajorityVote(members).eval()
    with torch.no_grad():
        y = ensemble(x).argmax(1)  # clean accuracy 100% by construction
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    robust = {}
    for rule in ("sum", "vote", "agree"):
        atk = EnsemblePGD(members, eps=0.2, alpha=0.05, steps=10, rule=rule)
        correct = 0
        for xb, yb in loader:
            adv = atk(xb, yb)
            assert (adv - xb).abs().max() <= 0.2 + 1e-6
            with torch.no_grad():
                correct += int((ensemble(adv).argmax(1) == yb).sum())
        robust[rule] = correct / len(y)
    assert robust["sum"] < 0.5 and robust["vote"] < 0.5, robust
    assert robust["agree"] < 1.0, robust  # steps only where all members agree: the weakest rule


def test_bad_arguments():
    with pytest.raises(UnknownNameError, match="rule"):
        EnsemblePGD([net(0)], rule="mean")
    with pytest.raises(ConfigError, match="step must be > 0"):
        EnsemblePGD([net(0)], alpha=0)


def test_save_writes_the_adversarial_set(data, tmp_path):
    x, y = data
    atk = EnsemblePGD([net(0), net(1)], eps=0.1, alpha=0.02, steps=2)
    atk.save(DataLoader(TensorDataset(x, y), batch_size=8), save_path=str(tmp_path / "adv.pt"), verbose=False)
    saved = torch.load(tmp_path / "adv.pt", weights_only=True)
    assert saved["adv_inputs"].shape == x.shape and torch.equal(saved["labels"], y)
    assert (saved["adv_inputs"] - x).abs().max() <= 0.1 + 1e-6


def test_the_library_face_imports_torchattacks_only_for_EnsemblePGD():
    """``curvfast.attacks`` is core: importing it needs neither torchattacks nor the application layer."""
    import subprocess
    import sys

    code = ("import sys, curvfast.attacks as a; assert 'torchattacks' not in sys.modules; "
            "assert not any(m.startswith('curvfast.pipelines') for m in sys.modules), 'core imports pipelines'; "
            "a.EnsemblePGD; assert 'torchattacks' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
