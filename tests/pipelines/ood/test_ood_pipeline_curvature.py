"""``curvfast ood`` runs the curvature detector: its scores against a direct float64 Hessian trace."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import curvfast.pipelines.ood as ood
from curvfast.pipelines.common.contract import preset_config
from curvfast.pipelines.ood import pipeline


def _direct_traces(model, x):
    model = copy.deepcopy(model).double().eval()
    out = []
    for xi in x.double():
        label = model(xi[None]).argmax(1)
        h = torch.func.hessian(lambda v: F.cross_entropy(model(v[None]), label))(xi)
        out.append(float(torch.diagonal(h.reshape(xi.numel(), -1)).sum().detach()))
    return np.array(out)


def test_default_run_scores_curvature_at_the_predicted_class(tmp_path, monkeypatch):
    seen = {}
    train_pair, sets = pipeline._train_pair, pipeline.ood_sets

    def capture_train(*args, **kwargs):  # keep the K-class network the post-hoc detectors read
        pair = train_pair(*args, **kwargs)
        seen["model"] = pair[0]
        return pair

    def capture_sets(id_test, heldout, seed=0, folders=None):
        seen["id"] = id_test
        return sets(id_test, heldout, seed=seed, folders=folders)

    monkeypatch.setattr(pipeline, "_train_pair", capture_train)
    monkeypatch.setattr(pipeline, "ood_sets", capture_sets)
    config = preset_config(ood, "smoke", id_classes=(0, 1, 2), quiet=True)
    res = ood.run(config, out=str(tmp_path / "run"))
    scores = np.load(tmp_path / "run" / "scores.npz")["curvature/id"]
    assert "curvature" in res["detectors"] and res["overhead"]["detectors"]["curvature"]["inference_flops_per_sample"] is None
    np.testing.assert_allclose(scores[:4], _direct_traces(seen["model"], seen["id"][:4]), rtol=1e-4, atol=1e-7)
    summary = res["curvature"]
    assert summary["seeds"] == [0] and summary["mean_curvature"]["id"]["mean"] == pytest.approx(scores.mean())
    assert summary["mean_curvature"]["id"]["stderr"] is None  # one seed: no standard error
    assert summary["metrics"]["uniform_noise"]["auroc"]["mean"] == res["detectors"]["curvature"]["per_set"]["uniform_noise"]["auroc"]


def test_curvature_summary_standard_errors_over_seeds():
    means = [{"id": 1.0, "inverted": 3.0}, {"id": 2.0, "inverted": 5.0}, {"id": 4.0, "inverted": 4.0}]
    metrics = [{s: {"auroc": a, "fpr95": 1 - a} for s in ood.OOD_SETS} for a in (0.6, 0.7, 0.8)]
    got = pipeline._curvature_summary(means, metrics, (0, 1, 2))
    assert got["mean_curvature"]["id"]["mean"] == pytest.approx(7 / 3)
    assert got["mean_curvature"]["id"]["stderr"] == pytest.approx(np.std([1, 2, 4], ddof=1) / np.sqrt(3))
    assert got["metrics"]["shuffled"]["auroc"]["stderr"] == pytest.approx(0.1 / np.sqrt(3))
