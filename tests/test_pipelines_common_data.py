"""The pipelines' common data options: augmentation, loaders, normalised networks, the generated image folder."""
from __future__ import annotations

import pytest
import torch

from curvfast.models import Normalized
from curvfast.pipelines.common.augment import batch_transform, crop_flip, image_augmentation
from curvfast.pipelines.common.data import DataOptions, build_network, load_split, loader


def test_crop_is_a_translation_within_the_reflected_border():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    out = crop_flip(x, gen, flip=False)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    for b in range(2):  # every output is one of the 9 windows of the padded image
        windows = [padded[b, :, r:r + 8, c:c + 8] for r in range(3) for c in range(3)]
        assert any(torch.equal(out[b], w) for w in windows)


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
    with pytest.raises(ValueError, match="augment must be one of none, crop, crop-flip"):
        image_augmentation("flip")


@pytest.mark.parametrize("field, value, message", [
    ("normalize", "cifar", "normalize must be"), ("augment", "flip", "augment must be"), ("workers", -1, "workers must be"),
])
def test_bad_data_options_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
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
