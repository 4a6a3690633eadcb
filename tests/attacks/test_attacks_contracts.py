"""torchattacks 3.5.1's contracts for an ``Attack``, checked of ``EnsemblePGD`` (our tests, their expectations).

What torchattacks' base class and wrappers rely on, written down here:

- ``save(loader, save_path)`` attacks every batch and leaves the model in the mode its owner set;
- ``get_logits(x)`` returns the model's logits (B, C): ``MultiAttack`` and ``save`` take their arg-max as the
  prediction, the targeted modes their width as the class count;
- ``MultiAttack([atk1, atk2, ...])`` takes attacks on one model and keeps, per image, the first adversarial that
  fools it;
- an attack is built on one model; an ensemble attack told "one model" must say so, not split it.
"""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torchattacks = pytest.importorskip("torchattacks")
from curvfast.attacks import EnsemblePGD, MajorityVote, majority_vote  # noqa: E402
from curvfast.errors import ConfigError  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def net(seed, batchnorm=True):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)]
    if batchnorm:
        layers.insert(1, nn.BatchNorm2d(4))
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(16, 1, 8, 8, generator=gen), torch.arange(16) % 5


def _modes(members):
    return [[m.training for m in member.modules()] for member in members]


def test_save_restores_every_members_mode(data, tmp_path):
    """save() must leave each member as its owner left it: a BatchNorm member in eval must stay in eval."""
    x, y = data
    members = [net(0), net(1), net(2)]
    members[0].eval()
    members[1].eval()
    members[2].train()
    members[2][1].eval()  # a mixed member: train, but its BatchNorm frozen
    before = _modes(members)
    stats = [m[1].running_mean.clone() for m in members]
    atk = EnsemblePGD(members, eps=0.1, alpha=0.02, steps=2)
    atk.save(DataLoader(TensorDataset(x, y), batch_size=8), save_path=str(tmp_path / "adv.pt"), verbose=True)
    assert _modes(members) == before
    for m, s in zip(members, stats):  # and no forward ran in train mode (BatchNorm statistics unchanged)
        torch.testing.assert_close(m[1].running_mean, s)
    saved = torch.load(tmp_path / "adv.pt", weights_only=True)
    assert (saved["adv_inputs"] - x).abs().max() <= 0.1 + 1e-6


def test_get_logits_returns_logits_whose_argmax_is_the_vote(data):
    x, _ = data
    members = [net(s).eval() for s in range(3)]
    atk = EnsemblePGD(members)
    z = atk.get_logits(x)
    with torch.no_grad():
        member_logits = [m(x) for m in members]
    assert z.shape == (16, 5)
    assert torch.equal(z.argmax(1), majority_vote(member_logits))
    # log-probabilities of the vote: p_c = (votes_c + mean_m softmax(z_m)_c / 2) / (M + 1/2), exp(z) = p
    votes = nn.functional.one_hot(torch.stack(member_logits).argmax(-1), 5).sum(0).float()
    soft = torch.stack([torch.softmax(t, 1) for t in member_logits]).mean(0)
    torch.testing.assert_close(z.exp(), (votes + soft / 2) / 3.5)


def test_targeted_modes_read_the_class_count(data):
    x, y = data
    atk = EnsemblePGD([net(0).eval(), net(1).eval()], eps=0.1, alpha=0.02, steps=2)
    atk.set_mode_targeted_least_likely(quiet=True)
    adv = atk(x, y)
    assert (adv - x).abs().max() <= 0.1 + 1e-6
    atk.set_mode_targeted_random(quiet=True)
    assert atk(x, y).shape == x.shape


def test_multiattack_mixes_ensemble_attacks_on_one_ensemble(data):
    x, _ = data
    members = [net(s).eval() for s in range(3)]
    ensemble = MajorityVote(members)
    with torch.no_grad():
        y = ensemble(x).argmax(1)
    weak = EnsemblePGD(members, eps=0.03, alpha=0.01, steps=1, rule="agree")
    strong = EnsemblePGD(members, eps=0.3, alpha=0.05, steps=10, rule="sum")
    fgsm = torchattacks.FGSM(weak.model, eps=0.03)  # a torchattacks attack on the same ensemble
    assert weak.model is strong.model  # one ensemble per list of members, as MultiAttack requires
    multi = torchattacks.MultiAttack([weak, fgsm, strong])
    torch.manual_seed(0)
    adv = multi(x, y)
    with torch.no_grad():
        fooled = ensemble(adv).argmax(1) != y
    assert (adv - x).abs().max() <= 0.3 + 1e-6
    assert fooled.float().mean() >= 0.5
    assert not any(any(m) for m in _modes(members))


def test_one_model_is_refused_not_split_into_layers():
    with pytest.raises(ConfigError, match=r"a list of models.*\[model\]"):
        EnsemblePGD(net(0))
    with pytest.raises(ConfigError, match="member 1 is a Tensor"):
        EnsemblePGD([net(0), torch.zeros(3)])
    EnsemblePGD(nn.ModuleList([net(0), net(1)]))  # a ModuleList is a list of members
