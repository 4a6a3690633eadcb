"""Real-photo patches: shape, range, reproducibility, real content, a pinned photo list."""
import sys

import pytest
import torch

from curvfast.data._photos import PHOTOS, photo_manifest, photo_patches
from curvfast.errors import MissingDependencyError


def test_patches_are_reproducible_real_images():
    a = photo_patches(40, size=8, seed=3)
    assert a.shape == (40, 1, 8, 8) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    torch.testing.assert_close(a, photo_patches(40, size=8, seed=3))
    assert not torch.equal(a, photo_patches(40, size=8, seed=4))
    # natural images: neighbouring pixels correlate far more than in noise
    flat = a[:, 0]
    horiz = torch.corrcoef(torch.stack([flat[:, :, :-1].reshape(-1), flat[:, :, 1:].reshape(-1)]))[0, 1]
    assert horiz > 0.5
    assert photo_patches(2, size=16).shape == (2, 1, 16, 16)


def test_photo_list_is_pinned_and_never_shrinks_silently(monkeypatch):
    """Without scikit-image the patches would change: refuse, naming the fix, instead of dropping photos."""
    manifest = photo_manifest()
    assert len(manifest) == len(PHOTOS) == 10 and manifest == photo_manifest()
    assert manifest[0]["shape"] == [427, 640, 3]
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(MissingDependencyError, match="pip install scikit-image"):
        photo_patches(4, seed=0)
