"""TREND's published protocol (purdue-nrl/TREND), one option per point and ``--published`` for all: the attack
without a random start (``trans.py``), the metric's denominator over the source's own pool (``fit_calc_TM.py``)
and the quantiser after the normalisation (``trans.py`` / ``train.py``). Each is checked against a re-implementation
of the published rule written here."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from curvfast.attacks import attack
from curvfast.pipelines.transfer import (
    PUBLISHED, Config, build_member, denominator_counts, fit_saturating, pair_counts, parse_spec, protocol, run,
    transfer_matrix, transfer_metric,
)

pytest.importorskip("torchattacks", reason="transfer's attacks need torchattacks")

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # TREND's utils/load_dataset.py, CIFAR-10


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _published_counts(correct: np.ndarray, fooled: np.ndarray):
    """trans.py's test(): per source s, target t and radius e, ``num_trans_imgs`` (target clean right, target
    fooled, source fooled, source clean right); fit_calc_TM.py divides by the source's own entry (t = s)."""
    m, n_eps = correct.shape[0], fooled.shape[1]
    trans = np.zeros((m, m, n_eps), dtype=np.int64)
    for s in range(m):
        for e in range(n_eps):
            src_fooled = fooled[s, e, s]
            for t in range(m):
                trans[s, t, e] = np.sum(correct[t] & fooled[s, e, t] & src_fooled & correct[s])
    own = np.stack([trans[s, s] for s in range(m)])           # exp_coef[j, j]: the source's own count
    return trans, own


def test_the_published_denominator_is_the_source_own_count_over_the_images_it_gets_right():
    rng = np.random.default_rng(0)
    m, n, eps = 3, 60, np.array([0.0, 0.02, 0.04, 0.06, 0.08])
    correct = rng.random((m, n)) < 0.8                        # targets miss clean images the source gets right
    fooled = rng.random((m, len(eps), m, n)) < np.linspace(0, 0.9, len(eps))[None, :, None, None]
    n_st, n_ss, pool = pair_counts(correct, fooled)
    trans, own = _published_counts(correct, fooled)
    np.testing.assert_array_equal(n_st, trans)                # the numerator is the same count
    den, den_pool = denominator_counts(n_st, n_ss, pool, "source")
    for s in range(m):
        for t in range(m):
            np.testing.assert_array_equal(den[s, t], own[s])
            assert den_pool[s, t] == correct[s].sum()
    assert (den != n_ss).any()                                # curvfast's pair pool is another count
    metric = transfer_matrix(eps, n_st, n_ss, pool, 8 / 255, "source")[0]
    for s in range(m):
        for t in range(m):
            expected = transfer_metric(fit_saturating(eps, trans[s, t], int(pool[s, t])),
                                       fit_saturating(eps, own[s], int(correct[s].sum())), 8 / 255)
            assert metric[s, t] == pytest.approx(expected, rel=1e-9, nan_ok=True)
    assert not np.allclose(metric, transfer_matrix(eps, n_st, n_ss, pool, 8 / 255)[0], equal_nan=True)


def _published_quantise(data: torch.Tensor, n_bits: int) -> torch.Tensor:
    """utils/quantise.py Quantise2d.forward (normalised branch), statistics of the whole batch."""
    bin_width = (data.max() - data.min()) / 2 ** n_bits
    data = torch.where(data == data.max(), data - 0.5 * bin_width, data)
    return torch.floor((data - data.min()) / bin_width) * bin_width + (0.5 * bin_width + data.min())


def _published_halftone(x: torch.Tensor) -> torch.Tensor:
    """utils/halftone.py Halftone2d.forward: standardise by the image's mean and range, sharpen, sign."""
    x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / (x.amax(dim=(1, 2, 3), keepdim=True) - x.amin(dim=(1, 2, 3), keepdim=True))
    kernel = torch.tensor([[-1.0, -2.0, -1.0], [-2.0, 16.0, -2.0], [-1.0, -2.0, -1.0]]).repeat(x.shape[1], 1, 1, 1)
    return 0.5 * torch.sign(F.conv2d(x, kernel, padding=1, groups=x.shape[1]) + 1e-3) + 0.5


@pytest.mark.parametrize("spec, published_q", [("small_cnn+in2", lambda z: _published_quantise(z, 2)),
                                               ("small_cnn+halftone", _published_halftone)], ids=["in2", "halftone"])
def test_quantise_after_normalise_is_the_published_order(spec, published_q):
    shape, norm = (3, 12, 12), "/".join(",".join(map(str, v)) for v in (MEAN, STD))
    after = build_member(parse_spec(spec), 10, shape, normalize=norm, quantize_after_normalize=True).eval()
    before = build_member(parse_spec(spec), 10, shape, normalize=norm).eval()
    net = build_member(parse_spec("small_cnn"), 10, shape).eval()            # the same seed: the same weights
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # one image per batch, where the published batch statistics are the image's own
        expected = torch.cat([net(published_q((xi[None] - mean) / std)) for xi in x])
        torch.testing.assert_close(after(x), expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(before(x), expected, atol=1e-3)          # quantising the raw image differs
    plain = build_member(parse_spec("small_cnn+in2"), 10, shape, quantize_after_normalize=True)
    assert type(plain).__name__ == "InputQuantized"                          # without normalisation: one order


def test_published_turns_on_every_published_choice_and_explicit_options_win():
    assert protocol(Config()) == {"random_start": True, "self_count": "pair", "quantize_after_normalize": False}
    assert protocol(Config(published=True)) == PUBLISHED == {
        "random_start": False, "self_count": "source", "quantize_after_normalize": True}
    assert protocol(Config(published=True, random_start=True))["random_start"] is True
    assert protocol(Config(self_count="source"))["self_count"] == "source"
    with pytest.raises(ValueError, match="self_count"):
        Config(self_count="target").validate()


def _published_pgd(net, x_nat, y, eps, step, steps):
    """attack_framework/attacks.py LinfPGDAttack_with_normalization.perturb_bpda with random_start=False
    (trans.py's 'random': False): start at the clean image, summed cross-entropy, project, clip to [0, 1]."""
    x = x_nat.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(net(x), y, reduction="sum"), x)
        x = x.detach() + step * torch.sign(grad)
        x = torch.clamp(torch.max(torch.min(x, x_nat + eps), x_nat - eps), 0.0, 1.0)
    return x


def test_published_run_attacks_from_the_clean_image_and_records_the_protocol(monkeypatch, tmp_path):
    import curvfast.pipelines.transfer.pipeline as pipeline

    calls = []

    def recorded(net, x, y, **kwargs):
        out = attack(net, x, y, **kwargs)
        calls.append((net, x, y, kwargs, out))
        return out

    monkeypatch.setattr(pipeline, "attack", recorded)
    res = run(Config(models=("small_cnn", "small_cnn+in1"), published=True, eps=(0, 32 / 255), robust_eps=(16 / 255,),
                     steps=3, step=0.05, epochs=1, subset_size=6, ensemble_size=2, quiet=True), out=str(tmp_path))
    settings = res["settings"]
    assert (settings["published"], settings["random_start"], settings["self_count"]) == (True, False, "source")
    assert settings["quantize_after_normalize"] is True
    moved = 0
    for net, x, y, kwargs, out in calls:
        expected = _published_pgd(net, x, y, kwargs["eps"], kwargs["step"], kwargs["steps"])
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
        if kwargs["eps"] > 0:
            started = attack(net, x, y, **(kwargs | {"random_start": True}))
            moved += not torch.allclose(started, expected, atol=1e-3)  # a random start gives another attack
    assert len(calls) == 2 * 3 and moved == 4


def test_checkpoints_are_keyed_by_the_quantiser_order_only_where_it_changes_the_model(cifar_folder, tmp_path):
    from torch.utils.data import Subset

    from curvfast.data import get_dataset
    from curvfast.pipelines.common.data import DataOptions
    from curvfast.pipelines.transfer import load_or_train

    train, _ = get_dataset("imagefolder", "train", root=str(cifar_folder))
    train = Subset(train, range(0, 300, 10))
    kw = dict(epochs=1, dataset="imagefolder", folder=str(tmp_path), options=DataOptions(normalize="cifar10"))
    trained = {}
    for spec in ("small_cnn+in1", "small_cnn"):
        for after in (False, True):
            trained[spec, after] = load_or_train(parse_spec(spec), train, train, 10, quantize_after_normalize=after,
                                                 **kw)[1]["trained"]
    assert trained == {("small_cnn+in1", False): True, ("small_cnn+in1", True): True,
                       ("small_cnn", False): True, ("small_cnn", True): False}
