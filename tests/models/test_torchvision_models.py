"""Torchvision models out of the box (random weights): ResNet, ViT (attention on the math SDPA backend), MobileNetV3
(hardsigmoid / hardswish through clamp), and the one-line errors and warnings around them."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

import curvfast
from curvfast.curvature._model import HARD_AS_CLAMP, SDPA_MATH, second_order_ops
from curvfast.errors import DataError, UnsupportedModelError
from curvfast.models import normalized
from tests.conftest import reference_hessians


class _ClampHardsigmoid(nn.Module):
    """hardsigmoid written out (PyTorch docs: 0 below -3, 1 above 3, x/6 + 1/2 between)."""

    def forward(self, x):
        return torch.where(x <= -3, torch.zeros_like(x), torch.where(x >= 3, torch.ones_like(x), x / 6 + 0.5))


class _ClampHardswish(nn.Module):
    def forward(self, x):
        return x * _ClampHardsigmoid()(x)


def _hard_net(sigmoid: type[nn.Module], swish: type[nn.Module]) -> nn.Module:
    """A tiny MobileNetV3-style net on 1x3x3 inputs: conv, hardswish, a hardsigmoid gate, linear."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.gate = nn.Conv2d(1, 4, 2), swish(), sigmoid()
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            h = self.act(self.conv(x) * 3)
            return self.fc(torch.flatten(h * self.gate(h.mean((2, 3), keepdim=True)), 1))

    torch.manual_seed(0)
    return Net().double()


def test_hard_activations_give_the_true_hessian_trace():
    """deflated (exact at D=9 <= top_classes + probes) on nn.Hardswish / nn.Hardsigmoid equals the float64
    Hessian trace of the same net written with the piecewise formulas."""
    model = _hard_net(nn.Hardsigmoid, nn.Hardswish)
    written = _hard_net(_ClampHardsigmoid, _ClampHardswish)
    written.load_state_dict(model.state_dict())
    x = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    res = curvfast.input_curvature(model, x, y, method="deflated", probes=16)
    ref = torch.diagonal(reference_hessians(written, x, y), dim1=1, dim2=2).sum(1)
    assert res.method == "deflated" and HARD_AS_CLAMP in res.adaptations
    assert ref.abs().max() > 1e-3  # hardswish's curvature is really there
    torch.testing.assert_close(res.value, ref, rtol=1e-8, atol=1e-10)


def test_functional_op_without_second_derivative_names_the_cli_option():
    """An op outside the handled modules (F.hardsigmoid called directly) is refused with the options that work."""
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(F.hardsigmoid(x.flatten(1) * 3))

    with pytest.raises(UnsupportedModelError, match="--method fd"):
        curvfast.input_curvature(Functional(), torch.randn(2, 1, 2, 2), torch.tensor([0, 1]), method="hutchinson",
                                 probes=2)


def test_mobilenet_v3_small_scores():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=2)
    x, y = torch.rand(1, 3, 16, 16), torch.tensor([1])
    res = curvfast.input_curvature(model, x, y, method="hutchinson", probes=1)
    assert HARD_AS_CLAMP in res.adaptations and torch.isfinite(res.value).all() and res.value.ne(0).all()


def test_resnet18_scores_exactly():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2)
    res = curvfast.input_curvature(model, torch.rand(1, 3, 16, 16), torch.tensor([1]))
    assert res.method == "exact" and res.adaptations == () and res.value.item() > 0


def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16,
                             num_classes=3)


def test_tiny_vit_scores_on_the_math_attention_backend():
    """auto (deflated) and hutchinson need double backward through attention: run on the math backend, said so."""
    model = _tiny_vit()
    nn.init.normal_(model.heads.head.weight)  # torchvision zero-initialises the head
    x, y = torch.rand(2, 3, 16, 16), torch.tensor([0, 2])
    for method in ("auto", "hutchinson"):
        res = curvfast.input_curvature(model, x, y, method=method, probes=2)
        assert SDPA_MATH in res.adaptations and torch.isfinite(res.value).all() and res.value.ne(0).all()


def test_untrained_vit_scores_zero_and_warns():
    """Random torchvision ViT: zero head, constant logits, every score exactly 0 -> a warning saying why."""
    with pytest.warns(RuntimeWarning, match="exactly 0.*zero-initialised head"):
        res = curvfast.input_curvature(_tiny_vit(), torch.rand(2, 3, 16, 16), torch.tensor([0, 1]), method="fd",
                                       probes=1)
    assert res.value.eq(0).all()


def test_nonzero_scores_do_not_warn():
    model = _tiny_vit()
    nn.init.normal_(model.heads.head.weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        curvfast.input_curvature(model, torch.rand(1, 3, 16, 16), torch.tensor([0]), method="fd", probes=1)


@pytest.fixture(scope="module")
def vit_b_16() -> nn.Module:
    """torchvision's vit_b_16 with random weights and a random (not zero) head, so that its scores are not 0."""
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(num_classes=2)
    nn.init.normal_(model.heads.head.weight)
    return model


def test_vit_b_16_scores_at_224_on_the_math_attention_backend(vit_b_16):
    """vit_b_16 itself at its native 224 px: Hutchinson with one probe, one image (the cheapest second-order score:
    one Hessian-vector product, double backward through attention on the math SDPA backend)."""
    res = curvfast.input_curvature(vit_b_16, torch.rand(1, 3, 224, 224), torch.tensor([1]), method="hutchinson",
                                   probes=1)
    assert res.method == "hutchinson" and SDPA_MATH in res.adaptations
    assert torch.isfinite(res.value).all() and res.value.ne(0).all()


def test_vit_b_16_at_the_wrong_size_is_a_one_line_error_naming_its_size(vit_b_16):
    model = vit_b_16
    with second_order_ops(model) as adaptations:
        assert adaptations == (SDPA_MATH,)
    for scored in (model, normalized(model, "imagenet")):  # as `curvfast score` loads a checkpoint
        with pytest.raises(DataError, match=r"takes 224x224 images \(pass --image-size 224\)") as info:
            curvfast.input_curvature(scored, torch.rand(1, 3, 32, 32), torch.tensor([0]), method="fd", probes=1)
        assert "\n" not in str(info.value)


def test_cli_score_passes_accept_gauss_newton(tmp_path, monkeypatch):
    """`curvfast score --accept-gauss-newton` reaches input_curvature (the option the refusal names)."""
    import curvfast.checkpoints
    import curvfast.engine
    from curvfast.cli import main

    seen = {}

    def fake_score(model, dataset, **options):
        seen.update(options)
        raise DataError("stop here")

    monkeypatch.setattr(curvfast.checkpoints, "load_model_with_record", lambda *args: (nn.Linear(64, 10), {}))
    monkeypatch.setattr(curvfast.engine, "score", fake_score)
    argv = ["score", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(tmp_path / "r"), "--method", "exact"]
    assert main(argv) == 2 and "accept_gauss_newton" not in seen
    assert main([*argv, "--accept-gauss-newton"]) == 2 and seen["accept_gauss_newton"] is True


def test_engine_records_the_adaptations_in_its_settings():
    from torch.utils.data import TensorDataset

    from curvfast.engine import score

    data = TensorDataset(torch.randn(3, 1, 3, 3, dtype=torch.float64), torch.tensor([0, 1, 2]))
    res = score(_hard_net(nn.Hardsigmoid, nn.Hardswish), data, method="hutchinson", probes=2, progress=False)
    assert res.settings["adaptations"] == [HARD_AS_CLAMP]
