"""curvfast.metrics against sklearn, with ties and an explicit positive class."""
import numpy as np
import pytest
from sklearn import metrics as skm

from curvfast import metrics
from curvfast.errors import ConfigError, DataError, NonFiniteError


@pytest.fixture(params=[0, 1, 2])
def case(request):
    rng = np.random.default_rng(request.param)
    n = 400
    labels = rng.choice(["in", "out"], size=n, p=[0.3, 0.7])
    scores = rng.normal(size=n) + (labels == "in") * 0.8
    if request.param == 2:  # heavy ties
        scores = np.round(scores)
    return scores, labels


def test_roc_auroc_aupr_match_sklearn(case):
    scores, labels = case
    y = labels == "in"
    fpr, tpr, _ = metrics.roc_curve(scores, labels, positive="in")
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert metrics.auroc(scores, labels, positive="in") == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)
    assert metrics.aupr(scores, labels, positive="in") == pytest.approx(skm.average_precision_score(y, scores), abs=1e-12)
    # The other class as positive with negated scores is the same ROC area.
    assert metrics.auroc(-scores, labels, positive="out") == pytest.approx(skm.roc_auc_score(y, scores), abs=1e-12)


def test_threshold_metrics_by_brute_force(case):
    scores, labels = case
    pos = labels == "in"
    thresholds = np.r_[np.inf, np.unique(scores)]
    tpr = np.array([(scores[pos] >= t).mean() for t in thresholds])
    fpr = np.array([(scores[~pos] >= t).mean() for t in thresholds])
    assert metrics.balanced_accuracy(scores, labels, "in") == pytest.approx(np.max((tpr + 1 - fpr) / 2))
    for f in (0.0, 0.01, 0.1, 0.5):
        assert metrics.tpr_at_fpr(scores, labels, f, "in") == pytest.approx(tpr[fpr <= f].max())
    assert metrics.fpr_at_tpr(scores, labels, 0.95, "in") == pytest.approx(fpr[tpr >= 0.95].min())


def test_perfect_and_inverted_detectors():
    labels = np.r_[np.ones(50), np.zeros(50)]
    scores = np.r_[np.ones(50) + 1, np.zeros(50)]
    report = metrics.detection_report(scores, labels)
    assert report["auroc"] == 1.0 and report["balanced_accuracy"] == 1.0 and report["tpr_at_fpr"]["0.0001"] == 1.0
    assert metrics.fpr_at_tpr(scores, labels) == 0.0
    assert metrics.auroc(-scores, labels) == 0.0


def test_bad_input_is_named():
    with pytest.raises(DataError, match="both classes"):
        metrics.auroc([1.0, 2.0], [1, 1])
    with pytest.raises(DataError, match="same length"):
        metrics.auroc([1.0, 2.0], [1, 0, 1])
    with pytest.raises(NonFiniteError, match="NaN"):
        metrics.auroc([np.nan, 2.0], [1, 0])
    with pytest.raises(ConfigError, match="fpr"):
        metrics.tpr_at_fpr([1.0, 2.0], [1, 0], 2.0)
