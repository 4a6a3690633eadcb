"""The library face curvfast.ood: the registry (a toy detector reaches `curvfast ood` and `curvfast idkd`),
the abstract API, and a core that imports neither the application layer nor pytorch-ood."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from curvfast import ood
from curvfast.errors import ConfigError, UnknownNameError


@pytest.fixture
def toy():
    """A registered toy detector (s = -z_0), removed again after the test."""

    @ood.register_detector("toy_first_logit")
    class Toy(ood.LogitsDetector):
        def predict_logits(self, logits):
            return -logits[:, 0].double()

    yield Toy
    del ood.DETECTORS["toy_first_logit"]


def test_registry_reaches_the_pipelines(toy, capsys):
    from curvfast.cli import main
    from curvfast.pipelines.ood.pipeline import Config as OODConfig, _posthoc_detectors

    assert ood.DETECTORS["toy_first_logit"] is toy and toy.name == "toy_first_logit"
    model = nn.Linear(3, 2)
    listed = _posthoc_detectors(OODConfig(), model)
    assert isinstance(listed["toy_first_logit"], toy) and "vrm" not in listed  # VRM scores its own network
    with pytest.raises(SystemExit):
        main(["idkd", "--help"])
    assert "toy_first_logit" in capsys.readouterr().out
    x = torch.randn(4, 3)
    torch.testing.assert_close(toy(model).predict(x), -model(x)[:, 0].double().detach())
    assert ood.detector_class("toy_first_logit") is toy


def test_registry_refuses_clashes_and_unknown_names(toy):
    with pytest.raises(ConfigError, match="taken"):
        ood.register_detector("toy_first_logit")(type("Other", (ood.MSP,), {}))
    with pytest.raises(ConfigError, match="Detector subclasses"):
        ood.register_detector("not_a_detector")(int)
    with pytest.raises(UnknownNameError, match="register others"):
        ood.detector_class("nope")


def test_detector_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        ood.Detector()
    with pytest.raises(TypeError, match="abstract"):
        type("NoScore", (ood.FeaturesDetector,), {})()


CODE = """
import sys
import curvfast.ood as ood
assert not [m for m in sys.modules if m.startswith("curvfast.pipelines")], "the core imported the application"
assert "pytorch_ood" not in sys.modules, "importing curvfast.ood imported pytorch-ood"
try:
    import pytorch_ood.api as api
except ImportError:
    print("ok")
    raise SystemExit
assert isinstance(ood.NormScaling(None), api.LogitsDetector) and isinstance(ood.KNN(None), api.FeaturesDetector)
assert not isinstance(ood.KNN(None), api.LogitsDetector)
print("ok")
"""


def test_core_imports_alone_and_registers_with_pytorch_ood_when_it_is_imported():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
