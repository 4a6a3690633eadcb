"""Shared fixtures: a catalogue of small models and the float64 torch.func reference."""
from __future__ import annotations

import pathlib

import pytest
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = pathlib.Path(__file__).resolve().parent.parent  # the checkout: tests/ mirrors curvfast/ below it
NO_GPU = "no CUDA GPU: torch.cuda.is_available() is False (run `make gpu-check` on a GPU machine)"
# The device matrix: every test that takes the ``device`` fixture runs on the CPU and, where a GPU
# is present, on CUDA. The CUDA half carries the ``cuda`` marker, so `pytest -m cuda` runs it alone.
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda,
                                                  pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)])]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """``cpu``, then ``cuda`` (skipped with the reason shown when no GPU is present)."""
    return torch.device(request.param)


class ResidualPL(nn.Module):
    """conv -> eval BN -> ReLU -> max-pool -> residual conv block -> avg-pool -> linear (piecewise linear)."""

    def __init__(self, num_classes: int, act: type[nn.Module] = nn.ReLU, pool: type[nn.Module] = nn.MaxPool2d, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.act = act()
        self.pool = pool(2)
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), act(),
                                   nn.Conv2d(width, width, 3, padding=1))
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(width * 2 * 2, num_classes)

    def forward(self, x):
        h = self.pool(self.act(self.bn(self.conv(x))))
        h = self.act(h + self.block(h))
        return self.fc(self.avg(h).flatten(1))


def _randomize_bn(model: nn.Module, gen: torch.Generator) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=m.running_mean.dtype) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen, dtype=m.running_var.dtype) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen, dtype=m.weight.dtype) + 0.5)
    return model


def make_model(kind: str, num_classes: int = 10, dtype=torch.float64, seed: int = 0) -> nn.Module:
    """Models on 1x8x8 inputs. ``pl_*`` are piecewise linear, ``gelu``/``tanh`` are smooth."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if kind == "pl_residual":
        model = ResidualPL(num_classes)
    elif kind == "pl_mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.LeakyReLU(0.1), nn.Linear(32, num_classes))
    elif kind == "gelu":
        model = ResidualPL(num_classes, act=nn.GELU, pool=nn.AvgPool2d)  # smooth everywhere
    elif kind == "tanh":
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, num_classes))
    else:
        raise KeyError(kind)
    model = _randomize_bn(model.to(dtype), gen)
    return model.eval()


def make_batch(batch: int = 5, num_classes: int = 10, dtype=torch.float64, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, 8, 8, generator=gen, dtype=dtype)
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    return x, y


def reference_hessians(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample input Hessians (B, D, D) of the cross-entropy, with torch.func.hessian."""
    model = model.eval()

    def loss(xb, yb):
        return F.cross_entropy(model(xb.unsqueeze(0)), yb.unsqueeze(0))

    hs = [torch.func.hessian(loss)(x[b], y[b]) for b in range(x.shape[0])]
    d = x[0].numel()
    return torch.stack([h.reshape(d, d) for h in hs])


@pytest.fixture
def digits_small():
    """The first 96 training digits as a dataset."""
    from torch.utils.data import Subset

    from curvfast.data import DigitsDataset

    return Subset(DigitsDataset("train"), range(96))


@pytest.fixture
def digits48():
    """The first 48 training digits as a dataset (three 16-sample chunks)."""
    from torch.utils.data import Subset

    from curvfast.data import DigitsDataset

    return Subset(DigitsDataset("train"), range(48))


def write_image_folder(root, classes: int = 10, per_class: int = 30, test_per_class: int = 10, size: int = 32, seed: int = 0):
    """A CIFAR-shaped image folder: ``root/{train,test}/<class>/<i>.jpg``, RGB ``size`` x ``size`` JPEGs.

    Class c's images are a noisy colour gradient whose hue and orientation depend on c, so a small
    CNN learns them in a few epochs (the pipelines' end-to-end tests need a signal, not CIFAR)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size)
    for split, count in (("train", per_class), ("test", test_per_class)):
        for c in range(classes):
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            angle = np.pi * c / classes
            field = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
            colour = np.array([np.cos(2 * np.pi * c / classes), np.sin(2 * np.pi * c / classes), 0.5]) * 0.4 + 0.5
            for i in range(count):
                img = field[..., None] * colour + 0.15 * rng.standard_normal((size, size, 3))
                Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory):
    """A generated CIFAR-shaped image folder (10 classes, 30 train + 10 test 32x32 JPEGs each)."""
    return write_image_folder(tmp_path_factory.mktemp("cifar_like"))


def read_results(out) -> dict:
    """``out/results.json``, which must be strict JSON: NaN and Infinity are not JSON (jq and JavaScript reject
    them); a run writes null for an undefined value."""
    import json

    def not_json(constant):
        raise AssertionError(f"{out}/results.json holds {constant}, which is not JSON (write null for an undefined value)")

    with open(f"{out}/results.json") as f:
        return json.loads(f.read(), parse_constant=not_json)


def run_smoke_on_folder(command: str, root, out, *extra: str) -> dict:
    """``curvfast <command> --preset smoke`` on an image folder with CIFAR normalisation and crop-flip on the
    CPU (issue 18's done-when command); checks the exit status and the recorded data options, returns results.json,
    read by :func:`read_results`."""
    from curvfast.cli import main

    assert main([command, "--preset", "smoke", "--dataset", "imagefolder", "--root", str(root), "--normalize", "cifar10",
                 "--augment", "crop-flip", "--device", "cpu", "--out", str(out), "--quiet", *extra]) == 0
    results = read_results(out)
    settings = results["settings"]
    assert (settings["dataset"], settings["normalize"], settings["augment"]) == ("imagefolder", "cifar10", "crop-flip")
    assert settings.get("device", "cpu") == "cpu"
    return results


@pytest.fixture
def one_thread():
    """One torch thread for the test, the caller's setting restored: tiny models gain nothing from more, and on a
    loaded machine their OpenMP threads wait on each other. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
