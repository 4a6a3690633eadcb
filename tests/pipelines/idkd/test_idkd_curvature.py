"""idkd's input curvature of the public set and the curvature filter, against a float64 torch.func.hessian."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from curvfast.pipelines.idkd.detectors import node_scores, public_curvature
from curvfast.pipelines.idkd.report import curvature_stats, format_table


def _direct_traces(model, x):
    model = copy.deepcopy(model).double()
    out = []
    for xi in x.double():
        label = model(xi[None]).argmax(1)
        h = torch.func.hessian(lambda v: F.cross_entropy(model(v[None]), label))(xi)
        out.append(torch.diagonal(h).sum().detach())
    return torch.stack(out).float()


def test_public_curvature_and_the_curvature_filter_are_the_hessian_trace_at_the_predicted_class():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3)).eval()
    gen = torch.Generator().manual_seed(2)
    ref, calib, public = (torch.randn(n, 6, generator=gen) for n in (30, 4, 7))
    expected = _direct_traces(model, public)
    torch.testing.assert_close(public_curvature(model, public), expected, rtol=1e-4, atol=1e-6)
    _, calib_s, public_s = node_scores("curvature", model, ref, torch.arange(30) % 3, calib, public)
    torch.testing.assert_close(public_s, -expected, rtol=1e-4, atol=1e-6)  # in-distribution score: flat = ID
    torch.testing.assert_close(calib_s, -_direct_traces(model, calib), rtol=1e-4, atol=1e-6)


def test_curvature_stats_of_a_node():
    curvature = torch.tensor([0.1, 0.2, 5.0, 0.3, 4.0])
    is_digit = torch.tensor([True, True, False, False, True])
    accepted = torch.tensor([True, True, False, True, False])
    got = curvature_stats(curvature, is_digit, accepted)
    assert got["auroc_digits_vs_photos"] == pytest.approx(5 / 6)  # pairs (digit flatter than photo): 5 of 6
    assert got["mean_public_digits"] == pytest.approx(np.mean([0.1, 0.2, 4.0]))
    assert got["mean_accepted"] == pytest.approx(0.2) and got["mean_rejected"] == pytest.approx(4.5)
    assert curvature_stats(curvature, torch.ones(5, dtype=torch.bool), accepted)["mean_public_photos"] is None


def test_the_table_names_the_filter_and_reports_the_curvature():
    entry = {"mean": 0.5, "stderr": 0.25, "nodes": 2}
    summary = {"settings": {"methods": ["dsgd"]}, "seconds": 1.0, "initial": {"mean_accuracy": 0.5},
               "methods": {"dsgd": {"mean_accuracy": 0.6, "std_accuracy": 0.1, "comm_bytes": 10, "label_overhead": 0.0}},
               "detector": {"name": "curvature", "threshold": "calibrated", "mean_auroc_digits_vs_photos": 0.75},
               "curvature": {k: entry for k in ("auroc_digits_vs_photos", "mean_public_digits", "mean_public_photos",
                                                "mean_accepted", "mean_rejected")}}
    table = format_table(summary)
    assert "in-distribution filter: curvature, threshold calibrated (AUROC held-out digits vs photos 0.7500)" in table
    assert "digits 0.5000 ± 0.2500" in table
