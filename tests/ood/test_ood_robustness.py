"""curvfast.ood's detectors under hostile input (issue 30): a typed error naming the problem, never a NaN score,
an all-zero score or a raw traceback."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from curvfast.errors import ConfigError, DataError, NonFiniteError, UnsupportedModelError
from curvfast.ood import KNN, MSP, ODIN, VRM, Energy, Mahalanobis, NormScaling, NormScalingFeatures, RequiresFittingError

NAN = float("nan")


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, classes)).eval()


def _loader(y, x=None):
    y = torch.as_tensor(y)
    x = torch.randn(len(y), 4, generator=torch.Generator().manual_seed(1)) if x is None else x
    return DataLoader(TensorDataset(x, y), batch_size=4)


def _nan_rows(n=6, rows=(2,)):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(2))
    x[list(rows), 1] = NAN
    return x


def _nan_model():
    model = _model()
    with torch.no_grad():
        model[2].weight[0, 0] = NAN
    return model


LABELS = torch.arange(12) % 3
CASES = {
    # settings
    "NormScaling temperature=nan": (lambda: NormScaling(None, temperature=NAN), NonFiniteError, "temperature must be finite"),
    "NormScalingFeatures temperature=nan": (lambda: NormScalingFeatures(None, temperature=NAN), NonFiniteError,
                                            "temperature must be finite"),
    "Energy temperature=nan": (lambda: Energy(None, temperature=NAN), NonFiniteError, "temperature must be finite"),
    "ODIN temperature=inf": (lambda: ODIN(None, temperature=float("inf")), NonFiniteError, "temperature must be finite"),
    "ODIN eps=nan": (lambda: ODIN(None, eps=NAN), NonFiniteError, "eps must be finite"),
    "VRM num_classes=0": (lambda: VRM(None, num_classes=0), ConfigError, "num_classes must be an int >= 2"),
    # VRM on a network without an auxiliary output
    "VRM fitted on a K-class model": (lambda: VRM(_model(3)).fit(_loader(LABELS)), UnsupportedModelError,
                                      "no auxiliary output"),
    "VRM num_classes=K on a K-class model": (lambda: VRM(_model(3), num_classes=3).predict(torch.randn(2, 4)),
                                             UnsupportedModelError, "K \\+ 1 = 4 outputs"),
    "VRM not told K": (lambda: VRM(_model(4)).predict(torch.randn(2, 4)), RequiresFittingError, "num_classes=K"),
    # labels
    "NormScaling label >= C": (lambda: NormScaling(_model(3)).fit(_loader(LABELS + 1)), DataError,
                               r"labels must lie in \[0, 3\)"),
    "Mahalanobis label >= C": (lambda: Mahalanobis(_model(3)).fit(_loader(LABELS + 1)), DataError,
                               r"labels must lie in \[0, 3\)"),
    "NormScaling.fit_logits label >= C": (lambda: NormScaling(None).fit_logits(torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])),
                                          DataError, r"labels must lie in \[0, 3\)"),
    "fractional labels": (lambda: Mahalanobis(_model()).fit(_loader(LABELS * 0.5)), DataError, "whole class indices"),
    "NaN label": (lambda: KNN(_model(), k=2).fit(_loader(torch.tensor([0.0, NAN, 1.0, 2.0]))), DataError,
                  "whole class indices"),
    "only OoD labels": (lambda: Mahalanobis(_model()).fit(_loader(-torch.ones(8))), DataError, "no in-distribution sample"),
    "labels of another length": (lambda: Mahalanobis(None).fit_features(torch.randn(6, 4), torch.zeros(5)), DataError,
                                 "5 labels for 6 samples"),
    # too little data
    "Mahalanobis with one sample per class": (lambda: Mahalanobis(_model()).fit(_loader(torch.arange(3))), DataError,
                                              "at least two samples of one class"),
    "NormScalingFeatures with one class": (lambda: NormScalingFeatures(_model()).fit(_loader(torch.zeros(6))), DataError,
                                           "at least two classes"),
    # non-finite inputs and outputs
    "NaN input to MSP.predict": (lambda: MSP(_model())(_nan_rows()), NonFiniteError, r"NaN or Inf in sample\(s\) \[2\]"),
    "NaN input to ODIN.predict": (lambda: ODIN(_model())(_nan_rows()), NonFiniteError, r"sample\(s\) \[2\]"),
    "NaN input to a fitted Mahalanobis": (lambda: Mahalanobis(_model()).fit(_loader(LABELS))(_nan_rows(rows=(0, 5))),
                                          NonFiniteError, r"sample\(s\) \[0, 5\]"),
    "NaN input in the fit data": (lambda: KNN(_model(), k=2).fit(_loader(LABELS, _nan_rows(12))), NonFiniteError,
                                  "NaN or Inf"),
    "NaN weights": (lambda: NormScaling(_nan_model()).fit(_loader(LABELS)), NonFiniteError, "logits hold NaN or Inf"),
    "NaN saved logits": (lambda: MSP(None).predict_logits(torch.tensor([[0.0, NAN]])), NonFiniteError,
                         "logits hold NaN or Inf"),
    "Inf saved features": (lambda: KNN(None, k=1).fit_features(torch.tensor([[0.0, float("inf")]])), NonFiniteError,
                           "features hold NaN or Inf"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_detectors_refuse(case):
    call, kind, match = CASES[case]
    with pytest.raises(kind, match=match):
        call()


def test_ood_labels_are_dropped_not_refused():
    """-1 (and any negative label) marks an OoD sample, as in pytorch-ood: dropped from the fit, not an error."""
    y = torch.cat([LABELS, torch.tensor([-1, -5])])
    for det in (NormScaling(_model(), "rms"), Mahalanobis(_model()), KNN(_model(), k=2), NormScalingFeatures(_model())):
        assert torch.isfinite(det.fit(_loader(y)).predict(torch.randn(3, 4))).all()
