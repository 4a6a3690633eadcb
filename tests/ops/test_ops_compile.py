"""The native ops under ``torch.compile(fullgraph=True)``: each curvfast.ops entry point traces without a graph break
(the ops' Meta kernels in csrc/curvfast.cpp give FakeTensor their shapes), and the compiled call returns what the
uncompiled call and the pure-torch reference (curvfast.ops.reference) return.

Backends "eager" (Dynamo's trace, run as is) and "aot_eager" (plus AOTAutograd's functionalization, which
rewrites patch_gram_add_'s in-place write); inductor is left out: it needs a C++ build that takes minutes here.
"""
from __future__ import annotations

import pytest
import torch

from curvfast import ops
from curvfast.ops import reference as ref
from curvfast.errors import CurvfastError

pytestmark = pytest.mark.skipif(
    not ops.native_available(),
    reason=f"native extension not loaded ({ops.load_error()}): compiling the pure-torch fallback tests nothing; "
           "build it with `pip install --no-build-isolation -e .` or copy curvfast/_C*.so into the tree")
BACKENDS = ["eager", "aot_eager"]
IDS = torch.tensor([3, 0, 7])


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # each case traces anew, not from another backend's cache
    yield
    torch._dynamo.reset()


def _inputs(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    probes = randn(3, 4, 6)
    return {"logits": randn(3, 10), "labels": torch.tensor([0, 4, 9]), "vjp": randn(3, 5, 6),
            "weights": randn(3, 5).abs(), "probes": probes, "hvp": randn(3, 4, 6),
            "mean": randn(3, 2), "m2": randn(3, 2).abs(), "x": randn(2, 4, 7, 6),
            "mask": (torch.rand(2, 5, 2, generator=gen) > 0.3).double(), "omega": randn(2, 12, 3)}


def _patch_gram_add(acc, x, mask, omega):
    return ops.patch_gram_add_(acc, x, mask, (2, 3), stride=(1, 2), dilation=(2, 1), groups=2, omega=omega)


# name -> (fn of the inputs, its pure-torch reference)
CASES = {
    "probes rademacher": (lambda i: ops.probes(IDS, 4, 9, seed=5, probe_offset=2),
                          lambda i: ref.probes(IDS, 4, 9, seed=5, probe_offset=2)),
    "probes gaussian float64": (
        lambda i: ops.probes(IDS, 3, 5, seed=1, distribution="gaussian", dtype=torch.float64),
        lambda i: ref.probes(IDS, 3, 5, seed=1, distribution="gaussian", dtype=torch.float64)),
    "logit_factor exact": (lambda i: ops.logit_factor(i["logits"], i["labels"], IDS, num_exact=10),
                           lambda i: ref.logit_factor(i["logits"], i["labels"], IDS, num_exact=10)),
    "logit_factor sampled tail": (
        lambda i: ops.logit_factor(i["logits"], i["labels"], IDS, num_exact=3, num_tail=2, seed=4),
        lambda i: ref.logit_factor(i["logits"], i["labels"], IDS, num_exact=3, num_tail=2, seed=4)),
    "weighted_sq_norms": (lambda i: ops.weighted_sq_norms(i["vjp"], i["weights"]),
                          lambda i: ref.weighted_sq_norms(i["vjp"], i["weights"])),
    "probe_moments": (lambda i: ops.probe_moments(i["probes"], i["hvp"], i["mean"], i["m2"], 6),
                      lambda i: ref.probe_moments(i["probes"], i["hvp"], i["mean"], i["m2"], 6)),
    "patch_gram": (lambda i: ops.patch_gram(i["x"], i["mask"], (2, 3), stride=(1, 2), dilation=(2, 1), groups=2),
                   lambda i: ref.patch_gram(i["x"], i["mask"], (2, 3), (1, 2), (2, 1), 2)),
    "patch_gram with omega": (
        lambda i: ops.patch_gram(i["x"], i["mask"], (2, 3), stride=(1, 2), dilation=(2, 1), groups=2,
                                 omega=i["omega"]),
        lambda i: ref.patch_gram(i["x"], i["mask"], (2, 3), (1, 2), (2, 1), 2, i["omega"])),
    "patch_gram_add_": (
        lambda i: _patch_gram_add(torch.ones(2, 12, 3, dtype=torch.float64), i["x"], i["mask"], i["omega"]),
        lambda i: 1 + ref.patch_gram(i["x"], i["mask"], (2, 3), (1, 2), (2, 1), 2, i["omega"])),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_op_equals_the_uncompiled_call_and_the_reference(case, backend):
    fn, reference = CASES[case]
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    got, eager = compiled(_inputs()), fn(_inputs())
    torch.testing.assert_close(got, eager, rtol=0, atol=0)  # the same kernel: bit-identical
    torch.testing.assert_close(got, reference(_inputs()))
    again = compiled(_inputs(seed=1))  # the graph is reused on new values of the same shapes
    torch.testing.assert_close(again, fn(_inputs(seed=1)), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_patch_gram_add_writes_into_the_callers_accumulator(backend):
    i = _inputs()
    acc = torch.zeros(2, 12, 3, dtype=torch.float64)
    out = torch.compile(_patch_gram_add, fullgraph=True, backend=backend)(acc, i["x"], i["mask"], i["omega"])
    torch.testing.assert_close(acc, ops.patch_gram(i["x"], i["mask"], (2, 3), stride=(1, 2), dilation=(2, 1),
                                                   groups=2, omega=i["omega"]), rtol=0, atol=0)
    assert out is acc or torch.equal(out, acc)


def _bad_labels(i):
    i["labels"][1] = 10
    return i


def _nan_logits(i):
    i["logits"][2, 3] = float("nan")
    return i


# Under compile the Python value checks of curvfast.ops are skipped (they would break the graph): the native
# kernels' run-time checks must still refuse (RuntimeError naming the problem), never return a wrong answer.
BAD_VALUES = {
    "negative sample_ids to probes": (lambda i: ops.probes(i["ids"], 2, 3, seed=0), lambda i: {**i, "ids": -IDS},
                                      "sample_ids"),
    "label out of range": (lambda i: ops.logit_factor(i["logits"], i["labels"], IDS, num_exact=10), _bad_labels,
                           "labels"),
    "NaN logits": (lambda i: ops.logit_factor(i["logits"], i["labels"], IDS, num_exact=10), _nan_logits, "finite"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_compiled_ops_still_refuse_bad_values(case, backend):
    fn, spoil, match = BAD_VALUES[case]
    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    compiled({**_inputs(), "ids": IDS})  # traced on good values
    with pytest.raises(RuntimeError, match=match):
        compiled(spoil({**_inputs(), "ids": IDS}))
    with pytest.raises(CurvfastError, match=match):  # uncompiled: the Python check's clearer typed error
        fn(spoil({**_inputs(), "ids": IDS}))
