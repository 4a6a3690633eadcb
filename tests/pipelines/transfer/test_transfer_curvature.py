"""transfer's member curvature against a float64 torch.func.hessian, and its correlation with transferability."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr

from curvfast.pipelines.transfer import build_member, parse_spec
from curvfast.pipelines.transfer.curvature import curvature_vs_transfer, member_curvature, source_transferability


def _direct_traces(model, x, y):
    model = copy.deepcopy(model).double().eval()
    out = []
    for xi, yi in zip(x.double(), y):
        h = torch.func.hessian(lambda v: F.cross_entropy(model(v[None]), yi[None]))(xi)
        out.append(float(torch.diagonal(h.reshape(xi.numel(), -1)).sum().detach()))
    return np.array(out)


@pytest.mark.parametrize("spec", ["small_cnn", "small_cnn+in2"])
def test_member_curvature_is_the_hessian_trace_at_the_true_label(spec):
    torch.manual_seed(0)
    net = build_member(parse_spec(spec), 4, (1, 6, 6)).eval()
    x = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 0])
    got = member_curvature(net, x, y, batch=2)  # batches of 2: keyed by image, so batching does not matter
    # in2: the quantiser passes the gradient straight through, so tr H is the network's at the quantised input
    inner = net.model if spec.endswith("in2") else net
    xq = net.quantizer(x) if spec.endswith("in2") else x
    expected = _direct_traces(inner, xq, y)
    assert got["method"] == "exact"
    np.testing.assert_allclose(got["values"], expected, rtol=1e-4, atol=1e-8)
    assert got["mean"] == pytest.approx(expected.mean(), rel=1e-4)
    assert got["stderr"] == pytest.approx(expected.std(ddof=1) / np.sqrt(5), rel=1e-3)


def test_correlation_of_source_curvature_and_transferability():
    metric = np.array([[1.0, 0.2, 0.4, np.nan], [0.5, 1.0, 0.7, 0.6], [0.1, 0.1, 1.0, 0.1], [0.9, 0.8, 0.7, 1.0]])
    transfer = source_transferability(metric)
    np.testing.assert_allclose(transfer, [0.3, 0.6, 0.1, 0.8])  # off-diagonal, finite targets only
    curvature = [{"mean": m, "stderr": 0.0, "method": "exact"} for m in (2.0, 3.0, 1.0, 5.0)]
    got = curvature_vs_transfer(["a", "b", "c", "d"], curvature, metric)
    means = [2.0, 3.0, 1.0, 5.0]
    assert got["correlation"]["spearman"] == pytest.approx(spearmanr(means, transfer)[0])
    assert got["correlation"]["pearson"] == pytest.approx(pearsonr(means, transfer)[0])
    assert got["members"]["a"]["transferability"] == pytest.approx(0.3) and got["correlation"]["sources"] == 4
    two = curvature_vs_transfer(["a", "b"], curvature[:2], metric[:2, :2])
    assert two["correlation"]["spearman"] is None  # fewer than three sources: undefined
