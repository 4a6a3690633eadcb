"""EnsemblePGD and ensemble_pgd under hostile input (issue 30): a typed error naming the problem, never an
adversarial outside the eps-ball, a NaN image or a raw traceback."""
import pytest
import torch
from torch import nn

torchattacks = pytest.importorskip("torchattacks")
from curvfast.attacks import EnsemblePGD, attack, ensemble_pgd  # noqa: E402
from curvfast.errors import DataError, NonFiniteError  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()


MEMBERS = [_net(0), _net(1)]
X = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0])


def _with(**changes):
    x, y = changes.get("x", X), changes.get("y", Y)
    return x, y


def _nan_image():
    x = X.clone()
    x[2, 0, 1, 1] = float("nan")
    return x


BAD_INPUTS = {
    "uint8 images": (dict(x=(X * 255).to(torch.uint8)), TypeError, r"floating-point.*x.float\(\) / 255"),
    "float64 images, float32 members": (dict(x=X.double()), TypeError, "images are torch.float64 but member 0"),
    "images above 1": (dict(x=X * 4), DataError, r"in \[0, 1\]"),
    "images below 0": (dict(x=X - 0.5), DataError, r"in \[0, 1\]"),
    "a NaN pixel": (dict(x=_nan_image()), NonFiniteError, r"NaN or Inf in sample\(s\) \[2\]"),
    "float labels": (dict(y=Y.float()), TypeError, "integer class labels"),
    "labels of another length": (dict(y=Y[:3]), DataError, r"shape \(B,\) = \(4,\)"),
    "label -1": (dict(y=torch.tensor([0, -1, 2, 0])), DataError, r"labels must lie in \[0, 3\)"),
    "label >= C": (dict(y=torch.tensor([0, 1, 3, 0])), DataError, r"labels must lie in \[0, 3\)"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("api", ["EnsemblePGD", "ensemble_pgd", "attack"])
def test_attacks_refuse(case, api):
    changes, kind, match = BAD_INPUTS[case]
    x, y = _with(**changes)
    call = {"EnsemblePGD": lambda: EnsemblePGD(MEMBERS, eps=0.1, alpha=0.02, steps=2)(x, y),
            "ensemble_pgd": lambda: ensemble_pgd(MEMBERS, x, y, eps=0.1, step=0.02, steps=2),
            "attack": lambda: attack(MEMBERS[0], x, y, eps=0.1, step=0.02, steps=2)}[api]
    if api == "attack":
        match = match.replace("member 0", "the model")
    with pytest.raises(kind, match=match):
        call()


def test_adversarials_stay_in_the_eps_ball_with_normalisation():
    """With set_normalization_used the caller passes normalised images; inverted, they must lie in [0, 1]."""
    mean, std = [0.5], [2.0]
    atk = EnsemblePGD(MEMBERS, eps=8 / 255, alpha=2 / 255, steps=3)
    atk.set_normalization_used(mean, std)
    norm = (X - 0.5) / 2.0
    adv = atk(norm, Y) * 2.0 + 0.5
    assert (adv - X).abs().max() <= 8 / 255 + 1e-6
    with pytest.raises(DataError, match="set_normalization_used"):
        atk(X, Y)  # raw images given to a normalising attack: (x * std + mean) leaves [0, 1]


def test_missing_labels_are_refused():
    with pytest.raises(DataError, match="needs labels"):
        EnsemblePGD(MEMBERS, eps=0.1, alpha=0.02, steps=1)(X)
