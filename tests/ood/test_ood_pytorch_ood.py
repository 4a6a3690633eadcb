"""curvfast's detectors as pytorch-ood detectors, evaluated in a plain pytorch-ood OODMetrics loop."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytorch_ood = pytest.importorskip("pytorch_ood")
from pytorch_ood.api import Detector, FeaturesDetector, LogitsDetector  # noqa: E402
from pytorch_ood.metrics import OODMetrics  # noqa: E402

from curvfast import ood  # noqa: E402
from curvfast.ood import VRM, NormScaling, NormScalingFeatures, RequiresFittingError  # noqa: E402


def blobs(n, classes, seed):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centers = 3 * torch.eye(classes, 8)
    return centers[y] + torch.randn(n, 8, generator=gen), y


def between_classes(n, classes, seed):
    """Points around the mean of the class centres, where no class is typical."""
    gen = torch.Generator().manual_seed(seed)
    return 3 * torch.eye(classes, 8).mean(0) + 0.5 * torch.randn(n, 8, generator=gen)


@pytest.fixture(scope="module")
def trained():
    """A 3-class MLP trained on Gaussian blobs; OoD = points between the classes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = blobs(300, 3, 0)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    train = DataLoader(TensorDataset(x, y), batch_size=64)
    x_id, y_id = blobs(120, 3, 1)
    x_ood = between_classes(120, 3, 2)
    test = DataLoader(TensorDataset(torch.cat([x_id, x_ood]), torch.cat([y_id, -torch.ones(120, dtype=torch.long)])),
                      batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(0))
    return model, train, test


def test_subclasses_of_pytorch_ood_api(trained):
    model = trained[0]
    assert isinstance(NormScaling(model), LogitsDetector)
    assert isinstance(VRM(model), LogitsDetector)
    assert isinstance(NormScalingFeatures(model), FeaturesDetector)
    assert isinstance(ood.Mahalanobis(model), FeaturesDetector) and isinstance(ood.MSP(model), Detector)
    assert all(issubclass(cls, Detector) for cls in ood.DETECTORS.values())
    with pytest.raises(RequiresFittingError):
        NormScaling(model).predict(torch.zeros(2, 8))


@pytest.mark.parametrize("make", [lambda m: NormScaling(m), lambda m: NormScaling(m, "rms", 2.0),
                                  lambda m: NormScalingFeatures(m)])
def test_oodmetrics_loop(trained, make):
    """The pytorch-ood evaluation loop, unchanged: fit(loader), metrics.update(detector(x), y)."""
    model, train, test = trained
    detector = make(model).fit(train)
    metrics = OODMetrics()
    scores, labels = [], []
    for x, y in test:
        s = detector(x)
        metrics.update(s, y)
        scores.append(s)
        labels.append(y)
    result = metrics.compute()
    s, y = torch.cat(scores).numpy(), torch.cat(labels).numpy()
    ours = ood.ood_metrics(s[y >= 0], s[y < 0])  # OoD positive, as OODMetrics
    assert result["AUROC"] == pytest.approx(ours["auroc"], abs=1e-6)
    assert result["AUROC"] > 0.8  # the detector separates the sets


def test_saved_logits_give_the_same_scores(trained):
    model, train, test = trained
    x = next(iter(test))[0]
    native = NormScaling(model).fit(train, device="cpu").predict(x)
    with torch.no_grad():
        logits = model(x)
        train_logits = model(train.dataset.tensors[0])
    refit = NormScaling(None).fit_logits(train_logits, train.dataset.tensors[1])
    torch.testing.assert_close(refit.predict_logits(logits), native)


def test_vrm_scores_aux_probability():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4)).eval()
    x = torch.randn(6, 8)
    with torch.no_grad():
        expected = torch.softmax(model(x).double(), 1)[:, -1].float()
    torch.testing.assert_close(VRM(model, num_classes=3)(x), expected)
    torch.testing.assert_close(VRM(None, num_classes=3).predict_logits(model(x).detach()), expected)


def test_knn_matches_pytorch_ood():
    """Why KNN is not wrapped again: the same distance as pytorch-ood's own (Mahalanobis: tests/ood/test_ood.py)."""
    from pytorch_ood.detector import KNN

    z_train, y_train = blobs(300, 3, 0)
    z, _ = blobs(40, 3, 1)
    theirs = KNN(None, k=5).fit_features(z_train, y_train).predict_features(z)
    ours = ood.KNN(None, 5).fit_features(z_train, y_train).predict_features(z)
    np.testing.assert_allclose(theirs.numpy(), ours.numpy(), rtol=1e-5)
