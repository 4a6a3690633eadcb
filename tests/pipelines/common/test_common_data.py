"""The pipelines' common data options: augmentation, loaders, normalised networks, the generated image folder."""
from __future__ import annotations

import pytest
import torch

from curvfast.errors import ConfigError, UnknownNameError
from curvfast.models import Normalized
from curvfast.pipelines.common.augment import batch_transform, crop_flip, image_augmentation
from curvfast.pipelines.common.data import DataOptions, build_network, load_split, loader


def test_crop_flip_translates_and_mirrors_each_image():
    x = torch.arange(2 * 3 * 1 * 16 * 16, dtype=torch.float32).reshape(2, 3, 1, 16, 16)  # (M, B, C, H, W)
    out = crop_flip(x, torch.Generator().manual_seed(0))
    again = crop_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(out, again)
    padded = torch.nn.functional.pad(x.reshape(6, 1, 16, 16), (2, 2, 2, 2), mode="reflect")
    flips = 0
    for img, src in zip(out.reshape(6, 1, 16, 16), padded):
        windows = [(r, c, f) for r in range(5) for c in range(5) for f in (False, True)
                   if torch.equal(img, src[:, r:r + 16, c:c + 16].flip(-1) if f else src[:, r:r + 16, c:c + 16])]
        assert len(windows) == 1  # each output is one 16x16 window of the reflect-padded image, maybe mirrored
        flips += windows[0][2]
    assert 0 < flips < 6
    big = crop_flip(torch.rand(400, 1, 8, 8), torch.Generator().manual_seed(1), flip=False)
    assert not torch.equal(big, crop_flip(torch.rand(400, 1, 8, 8), torch.Generator().manual_seed(1), flip=False))


def test_flip_mirrors_about_half_the_images_and_draws_repeat():
    x = torch.rand(400, 1, 4, 4)
    a = crop_flip(x, torch.Generator().manual_seed(1), pad=0)
    b = crop_flip(x, torch.Generator().manual_seed(1), pad=0)
    assert torch.equal(a, b)
    mirrored = sum(torch.equal(a[i], x[i].flip(-1)) for i in range(400))
    assert 160 <= mirrored <= 240  # Binomial(400, 1/2): mean 200, sd 10; a 4-sd band


def test_batch_transform_keeps_labels_and_none_is_none():
    assert image_augmentation("none") is None and batch_transform("none") is None
    fn = batch_transform("crop-flip", seed=3)
    x, y = torch.rand(5, 3, 8, 8), torch.arange(5)
    xa, ya = fn(x, y, None)
    assert xa.shape == x.shape and torch.equal(ya, y) and not torch.equal(xa, x)
    with pytest.raises(UnknownNameError, match="augment must be one of none, crop, crop-flip"):
        image_augmentation("flip")


@pytest.mark.parametrize("field, value, message", [
    ("normalize", "cifar", "normalize must be"), ("augment", "flip", "augment must be"), ("workers", -1, "workers must be"),
])
def test_bad_data_options_are_named(field, value, message):
    with pytest.raises(ConfigError, match=message):
        DataOptions(**{field: value}).check_data_options()


def test_generated_cifar_folder_feeds_a_normalised_network(cifar_folder):
    options = DataOptions(dataset="imagefolder", root=str(cifar_folder), normalize="cifar10", augment="crop-flip")
    options.check_data_options()
    train, info = load_split(options, "train")
    test, _ = load_split(options, "test")
    assert (len(train), len(test), info.num_classes, info.in_channels) == (300, 100, 10, 3)
    x, y = next(iter(loader(train, options, batch_size=16, shuffle=True)))
    assert x.shape == (16, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    net = build_network(options, "small_cnn", info, tuple(x.shape[1:]), width=8)
    assert isinstance(net, Normalized) and net(x).shape == (16, 10)
    assert build_network(DataOptions(), "mlp", info, (3, 32, 32), width=8)(x).shape == (16, 10)


def test_materialise_packs_8_bit_images_as_uint8_and_restores_them_bit_for_bit(cifar_folder):
    from curvfast.data import DigitsDataset
    from curvfast.pipelines.common.data import as_float, materialise

    options = DataOptions(dataset="imagefolder", root=str(cifar_folder))
    train, _ = load_split(options, "train")
    floats = torch.cat([x for x, _ in loader(train, options, batch_size=64)])
    packed = materialise(train, options, batch_size=64)
    assert packed.dtype == torch.uint8 and packed.shape == floats.shape
    assert torch.equal(as_float(packed), floats)
    digits = DigitsDataset("train")  # values k/16: not 8-bit, kept in float32
    kept = materialise(digits, DataOptions(dataset="digits"), batch_size=500)
    assert kept.dtype == torch.float32 and torch.equal(kept, digits.images)
