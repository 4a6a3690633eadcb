"""pkd's flatness measurement: the streams' loss-Hessian trace and top eigenvalue against torch.func.hessian on a
tiny StreamNet, the summary over seeds, and the teacher order derived from it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from curvfast.errors import UnknownNameError
from curvfast.pipelines.pkd import (PUBLISHED_HIERARCHY, PUBLISHED_ORDER, StreamNet, flatness_order, pkd_teacher,
                                    stream_flatness, summarise_flatness)


def _tiny_stream():
    torch.manual_seed(0)
    net = StreamNet(2, 3, widths=(2, 2, 2, 2), blocks=(1, 1, 1, 1)).double()
    with torch.no_grad():  # trained-looking BatchNorm statistics (eval mode uses them)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2.0)
    return net


def test_stream_flatness_matches_the_hessian_of_the_training_loss():
    net = _tiny_stream()
    g = torch.Generator().manual_seed(1)
    clips = torch.randn(6, 2, 2, 8, 8, generator=g, dtype=torch.float64)  # (B, segments, C, H, W)
    labels = torch.randint(0, 3, (6,), generator=g)
    batches = [(clips[:4], labels[:4]), (clips[4:], labels[4:])]
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss(flat):  # the stream's training loss: cross-entropy of the segment-averaged logits, over all 6 clips
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(flat, [s.numel() for s in shapes]), shapes)}
        return F.cross_entropy(torch.func.functional_call(net, params, (clips,)), labels)

    net.eval()
    H = torch.func.hessian(loss)(theta)
    eig = torch.linalg.eigvalsh(H)
    got = stream_flatness(net.train(), batches, probes=64, seed=0, steps=theta.numel())
    assert got["num_params"] == theta.numel() and got["num_samples"] == 6
    assert abs(got["trace"] - float(H.trace())) <= 4 * got["trace_stderr"]
    assert abs(got["top_eigenvalue"] - float(eig[-1])) <= got["top_eigenvalue_residual"] + 1e-9 * abs(float(eig[-1]))


def _record(trace, top):
    return {"trace": trace, "trace_stderr": 0.1, "top_eigenvalue": top}


def test_summary_over_seeds_and_the_derived_order():
    per_seed = [{"iframe": _record(1.0, 0.5), "residual": _record(2.0, 0.7), "mv": _record(3.0, 0.6)},
                {"iframe": _record(3.0, 0.5), "residual": _record(4.0, 0.9), "mv": _record(5.0, 0.8)}]
    s = summarise_flatness(per_seed, [0, 1])
    assert s["streams"]["iframe"]["trace_mean"] == 2.0 and s["streams"]["iframe"]["trace_se"] == pytest.approx(1.0)
    assert s["flattest_first"]["trace"] == list(PUBLISHED_HIERARCHY) and s["hierarchy_holds"]["trace"]
    assert s["flattest_first"]["top_eigenvalue"] == ["iframe", "mv", "residual"]
    assert not s["hierarchy_holds"]["top_eigenvalue"]
    assert s["order"] == list(PUBLISHED_ORDER)  # the published hierarchy gives the published teacher order
    swapped = {n: {"trace_mean": t} for n, t in (("iframe", 9.0), ("residual", 1.0), ("mv", 4.0))}
    assert flatness_order(swapped) == ("iframe", "mv")


def test_pkd_teacher_follows_a_given_order():
    got = [pkd_teacher(e, 6, "residual", order=("iframe", "mv")) for e in range(6)]
    assert got == ["iframe", "mv"] + ["residual"] * 4
    with pytest.raises(UnknownNameError, match="order"):
        pkd_teacher(0, 6, "mv", order=("flow", "mv"))
