// Operator schemas of the curvfast library (kernels live in cpu/ and cuda/), and the module
// init that lets `import curvfast._C` load this shared library from Python.
#include <torch/library.h>

#ifndef CURVFAST_NO_PYTHON
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
#endif

namespace {

bool cuda_compiled() {
#ifdef CURVFAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

TORCH_LIBRARY(curvfast, m) {
  m.def(
      "probes(Tensor sample_ids, int seed, int probe_offset, int num_probes, int dim, "
      "str distribution, ScalarType dtype) -> Tensor");
  m.def(
      "logit_factor(Tensor logits, Tensor labels, Tensor sample_ids, int num_exact, "
      "int num_tail, int seed) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("weighted_sq_norms(Tensor vjp, Tensor weights) -> Tensor");
  m.def(
      "probe_moments(Tensor probes, Tensor hvp, Tensor mean, Tensor m2, int count) "
      "-> (Tensor, Tensor)");
  m.def("cuda_compiled() -> bool", &cuda_compiled);
}
