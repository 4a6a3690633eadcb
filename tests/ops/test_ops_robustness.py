"""Native ops called directly (torch.ops.curvfast): every bad call raises RuntimeError naming the problem, the
meta kernels agree with the real ones, and a call that used to hang ends with an error."""
from __future__ import annotations

import pytest
import torch

from _robust_helpers import assert_script_refuses
from curvfast import ops

native = pytest.mark.skipif(not ops.native_available(), reason="native extension not built")
C = torch.ops.curvfast if ops.native_available() else None
IDS = torch.arange(3)


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


NATIVE_CASES = {
    "probes offset+count overflows int64": (
        lambda: C.probes(IDS, 0, 2**63 - 1, 1, 4, "rademacher", torch.float32), "probe indices"),
    "probes offset beyond 2^32": (
        lambda: C.probes(IDS, 0, 2**33, 0, 4, "rademacher", torch.float32), "probe indices"),
    "logit_factor num_exact+num_tail overflows int64": (
        lambda: C.logit_factor(torch.randn(3, 5), torch.zeros(3, dtype=torch.long), IDS, 1, 2**63 - 1, 0),
        "num_exact \\+ num_tail"),
    "probe_moments count+P overflows int64": (
        lambda: C.probe_moments(torch.ones(1, 2, 3), torch.ones(1, 2, 3), torch.zeros(1, 2, dtype=torch.float64),
                                torch.zeros(1, 2, dtype=torch.float64), 2**63 - 1), "count"),
    "logit_factor labels on meta": (
        lambda: C.logit_factor(torch.randn(3, 5), torch.zeros(3, dtype=torch.long, device="meta"), IDS, 5, 0, 0),
        "labels is on meta"),
    "logit_factor logits on meta, rest on cpu": (
        lambda: C.logit_factor(_meta(3, 5), torch.zeros(3, dtype=torch.long), IDS, 5, 0, 0), "is on cpu"),
    "weighted_sq_norms weights on meta": (
        lambda: C.weighted_sq_norms(torch.randn(2, 3, 4), _meta(2, 3)), "weights is on meta"),
    "probe_moments mean on meta": (
        lambda: C.probe_moments(torch.ones(1, 2, 3), torch.ones(1, 2, 3), _meta(1, 2, dtype=torch.float64),
                                torch.zeros(1, 2, dtype=torch.float64), 0), "mean is on meta"),
    "meta logit_factor refuses num_tail=0 like the real kernel": (
        lambda: C.logit_factor(_meta(3, 10), torch.empty(3, dtype=torch.long, device="meta"),
                               torch.empty(3, dtype=torch.long, device="meta"), 3, 0, 0), "num_tail must be >= 1"),
    "meta probes refuses overflow like the real kernel": (
        lambda: C.probes(torch.empty(3, dtype=torch.long, device="meta"), 0, 2**62, 2**62, 0, "rademacher",
                         torch.float32), "probe indices"),
    "weighted_sq_norms input requiring grad": (
        lambda: C.weighted_sq_norms(torch.randn(2, 3, 4).requires_grad_(), torch.rand(2, 3)), "requires grad"),
    "probe_moments input requiring grad": (
        lambda: C.probe_moments(torch.ones(1, 2, 3), torch.ones(1, 2, 3).requires_grad_(),
                                torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), 0),
        "requires grad"),
    "patch_gram dilation overflowing int64": (
        lambda: C.patch_gram(torch.randn(1, 2, 5, 5), torch.ones(1, 3, 3), [3, 3], [1, 1], [2**62, 1], 1, None),
        "does not fit"),
    "patch_gram mask on meta": (
        lambda: C.patch_gram(torch.randn(1, 2, 5, 5), _meta(1, 3, 3), [3, 3], [1, 1], [1, 1], 1, None), "mask is on meta"),
    "patch_gram_add_ accumulator requiring grad": (
        lambda: C.patch_gram_add_(torch.zeros(1, 18, 18, dtype=torch.float64, requires_grad=True), torch.randn(1, 2, 5, 5),
                                  torch.ones(1, 3, 3), [3, 3], [1, 1], [1, 1], 1, None), "requires grad"),
    "logit_factor logits requiring grad": (
        lambda: C.logit_factor(torch.randn(3, 5).requires_grad_(), torch.zeros(3, dtype=torch.long), IDS, 5, 0, 0),
        "requires grad"),
}


@native
@pytest.mark.parametrize("case", list(NATIVE_CASES))
def test_native_op_refuses(case):
    call, match = NATIVE_CASES[case]
    with pytest.raises(RuntimeError, match=match):
        call()


@native
def test_meta_kernels_give_the_real_shapes():
    ids, y = torch.arange(3), torch.tensor([0, 4, 2])
    logits = torch.randn(3, 10)
    real = C.logit_factor(logits, y, ids, 3, 2, 0)
    fake = C.logit_factor(logits.to("meta"), y.to("meta"), ids.to("meta"), 3, 2, 0)
    assert [(t.shape, t.dtype) for t in real] == [(t.shape, t.dtype) for t in fake]
    assert all(t.is_meta for t in fake)
    assert C.probes(ids.to("meta"), 0, 1, 4, 5, "gaussian", torch.float64).shape == (3, 4, 5)
    gram = C.patch_gram(_meta(2, 6, 9, 11), _meta(2, 4, 7), [2, 3], [2, 1], [1, 2], 3, _meta(3, 12, 5))
    assert gram.shape == (3, 12, 5) and gram.dtype == torch.float64 and gram.is_meta


HANG_SCRIPTS = {  # each used to run forever
    "probes offset+count overflowing to a negative sum": """
        import torch, curvfast
        try:
            torch.ops.curvfast.probes(torch.arange(2), 0, 2**62, 2**62, 0, "rademacher", torch.float32)
        except RuntimeError as err:
            print("refused:", err)
    """,
}


@pytest.mark.parametrize("case", list(HANG_SCRIPTS))
def test_former_hangs_end_with_an_error(case):
    assert_script_refuses(HANG_SCRIPTS[case])


def _with(t, value, at=(0, 0, 1)):
    t = t.clone()
    t[at] = value
    return t


_X, _MASK, _OMEGA = torch.randn(1, 2, 5, 5), torch.ones(1, 3, 3), torch.randn(1, 18, 4)
NON_FINITE_PATCH_GRAM = {  # (x, mask, omega, the argument the error names)
    "NaN in x": (_with(_X, float("nan"), (0, 0, 1, 1)), _MASK, None, "x"),
    "Inf in x": (_with(_X, float("inf"), (0, 1, 4, 4)), _MASK, None, "x"),
    "NaN in mask": (_X, _with(_MASK, float("nan")), None, "mask"),
    "-Inf in mask": (_X, _with(_MASK, float("-inf")), None, "mask"),
    "NaN in omega": (_X, _MASK, _with(_OMEGA, float("nan")), "omega"),
}


@pytest.mark.parametrize("add", [False, True], ids=["patch_gram", "patch_gram_add_"])
@pytest.mark.parametrize("case", list(NON_FINITE_PATCH_GRAM))
def test_patch_gram_refuses_non_finite_inputs_like_logit_factor(case, add):
    from curvfast.errors import NonFiniteError

    x, mask, omega, name = NON_FINITE_PATCH_GRAM[case]
    cols = 18 if omega is None else omega.shape[2]
    acc = torch.zeros(1, 18, cols, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match=f"^{name} must be finite"):
        if add:
            ops.patch_gram_add_(acc, x, mask, 3, omega=omega)
        else:
            ops.patch_gram(x, mask, 3, omega=omega)
    assert not acc.any()  # nothing was added
