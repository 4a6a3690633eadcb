// Operator schemas of the curvfast library (kernels live in cpu/ and cuda/), their Meta
// kernels (shapes only, for meta tensors, FakeTensor and torch.compile), and the module init
// that lets `import curvfast._C` load this shared library from Python.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "common/checks.h"

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

// Meta kernels: the real kernels' argument checks (common/checks.h), then empty outputs of
// the real kernels' shapes and dtypes.

at::Tensor probes_meta(const at::Tensor& sample_ids, int64_t seed, int64_t probe_offset,
                       int64_t num_probes, int64_t dim, c10::string_view distribution,
                       at::ScalarType dtype) {
  curvfast::check_probes(sample_ids, seed, probe_offset, num_probes, dim,
                         std::string(distribution), dtype);
  return at::empty({sample_ids.size(0), num_probes, dim}, sample_ids.options().dtype(dtype));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> logit_factor_meta(
    const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& sample_ids,
    int64_t num_exact, int64_t num_tail, int64_t seed) {
  const int64_t K =
      curvfast::check_logit_factor(logits, labels, sample_ids, num_exact, num_tail, seed);
  const int64_t B = logits.size(0), C = logits.size(1);
  return {at::empty({B, K, C}, logits.options()), at::empty({B, K}, logits.options()),
          at::empty({B, K}, labels.options()), at::empty({B}, logits.options())};
}

at::Tensor weighted_sq_norms_meta(const at::Tensor& vjp, const at::Tensor& weights) {
  curvfast::check_weighted_sq_norms(vjp, weights);
  return at::empty({vjp.size(0), vjp.size(1)}, vjp.options());
}

std::tuple<at::Tensor, at::Tensor> probe_moments_meta(const at::Tensor& probes,
                                                      const at::Tensor& hvp,
                                                      const at::Tensor& mean,
                                                      const at::Tensor& m2, int64_t count) {
  curvfast::check_probe_moments(probes, hvp, mean, m2, count);
  return {at::empty({probes.size(0), 2}, mean.options()),
          at::empty({probes.size(0), 2}, mean.options())};
}

at::Tensor patch_gram_meta(const at::Tensor& x, const at::Tensor& mask, at::IntArrayRef kernel,
                           at::IntArrayRef stride, at::IntArrayRef dilation, int64_t groups,
                           const c10::optional<at::Tensor>& omega) {
  const curvfast::PatchGeometry geo =
      curvfast::check_patch_gram(x, mask, kernel, stride, dilation, groups, omega);
  const int64_t cols = omega.has_value() ? omega->size(2) : geo.dim;
  return at::empty({geo.groups, geo.dim, cols}, x.options().dtype(at::kDouble));
}

void patch_gram_add_meta(at::Tensor& acc, const at::Tensor& x, const at::Tensor& mask,
                         at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef dilation,
                         int64_t groups, const c10::optional<at::Tensor>& omega) {
  const curvfast::PatchGeometry geo =
      curvfast::check_patch_gram(x, mask, kernel, stride, dilation, groups, omega);
  curvfast::check_patch_gram_acc(acc, geo, x, omega);
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
  m.def(
      "patch_gram(Tensor x, Tensor mask, int[2] kernel, int[2] stride, int[2] dilation, "
      "int groups, Tensor? omega=None) -> Tensor");
  m.def(
      "patch_gram_add_(Tensor(a!) acc, Tensor x, Tensor mask, int[2] kernel, int[2] stride, "
      "int[2] dilation, int groups, Tensor? omega=None) -> ()");
  m.def("cuda_compiled() -> bool", &cuda_compiled);
}

TORCH_LIBRARY_IMPL(curvfast, Meta, m) {
  m.impl("probes", &probes_meta);
  m.impl("logit_factor", &logit_factor_meta);
  m.impl("weighted_sq_norms", &weighted_sq_norms_meta);
  m.impl("probe_moments", &probe_moments_meta);
  m.impl("patch_gram", &patch_gram_meta);
  m.impl("patch_gram_add_", &patch_gram_add_meta);
}
