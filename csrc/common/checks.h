// Argument checks shared by the CPU, CUDA and Meta kernels (host code). Every op validates its
// inputs with TORCH_CHECK so that a bad call raises a RuntimeError instead of crashing or
// returning garbage. The Meta kernels (csrc/curvfast.cpp) run the very same functions: only
// the checks that read tensor values (ranges, finiteness) are skipped for meta tensors, which
// hold none. Integer arguments are compared without sums that could overflow int64.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <initializer_list>
#include <string>

namespace curvfast {

enum class Distribution { Rademacher, Gaussian };

/// Probe indices are 32-bit Philox counter words: probe_offset + num_probes <= 2^32.
constexpr int64_t kProbeIndexLimit = int64_t(1) << 32;
/// Upper bound on K = num_exact + num_tail entries per sample of the logit factor.
constexpr int64_t kFactorLimit = int64_t(1) << 31;

struct NamedTensor {
  const char* name;
  const at::Tensor& tensor;
};

/// True when the checks may read t's values (a meta tensor has shape but no data).
inline bool has_data(const at::Tensor& t) { return !t.is_meta(); }

/// Every tensor argument of `op` lies on the first one's device (a mix of devices would read
/// memory the kernel cannot address, or none at all for meta tensors), and none requires grad:
/// the ops have no derivative, so a gradient through them would silently be missing.
inline void check_inputs(const char* op, std::initializer_list<NamedTensor> args) {
  const NamedTensor& first = *args.begin();
  for (const NamedTensor& a : args) {
    TORCH_CHECK(a.tensor.device() == first.tensor.device(), op, ": ", a.name, " is on ",
                a.tensor.device(), " but ", first.name, " is on ", first.tensor.device(),
                "; move every tensor argument to one device");
    TORCH_CHECK(!a.tensor.requires_grad(), op, ": ", a.name,
                " requires grad, but curvfast ops are not differentiable; pass ", a.name,
                ".detach()");
  }
}

inline bool is_float_or_double(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble;
}

inline void check_sample_ids(const at::Tensor& sample_ids, int64_t batch, const char* op) {
  TORCH_CHECK(sample_ids.dim() == 1, op, ": sample_ids must be 1-D, got ", sample_ids.dim(),
              "-D");
  TORCH_CHECK(sample_ids.scalar_type() == at::kLong, op, ": sample_ids must be int64, got ",
              sample_ids.scalar_type());
  TORCH_CHECK(batch < 0 || sample_ids.size(0) == batch, op, ": sample_ids has length ",
              sample_ids.size(0), " but the batch size is ", batch);
  TORCH_CHECK(!has_data(sample_ids) || sample_ids.numel() == 0 ||
                  sample_ids.min().item<int64_t>() >= 0,
              op, ": sample_ids must be non-negative");
}

/// Checks probes' arguments; returns the distribution.
inline Distribution check_probes(const at::Tensor& sample_ids, int64_t seed,
                                 int64_t probe_offset, int64_t num_probes, int64_t dim,
                                 const std::string& distribution, at::ScalarType dtype) {
  check_inputs("probes", {{"sample_ids", sample_ids}});
  check_sample_ids(sample_ids, -1, "probes");
  TORCH_CHECK(seed >= 0, "probes: seed must be >= 0, got ", seed);
  TORCH_CHECK(num_probes >= 0, "probes: num_probes must be >= 0, got ", num_probes);
  TORCH_CHECK(dim >= 0, "probes: dim must be >= 0, got ", dim);
  TORCH_CHECK(probe_offset >= 0 && probe_offset <= kProbeIndexLimit &&
                  num_probes <= kProbeIndexLimit - probe_offset,
              "probes: probe indices probe_offset .. probe_offset + num_probes - 1 must lie "
              "in [0, 2^32), got probe_offset=", probe_offset, ", num_probes=", num_probes);
  TORCH_CHECK(dim <= kProbeIndexLimit, "probes: dim must be <= 2^32, got ", dim);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "probes: dtype must be float32 or float64, got ", dtype);
  if (distribution == "rademacher") return Distribution::Rademacher;
  TORCH_CHECK(distribution == "gaussian",
              "probes: distribution must be 'rademacher' or 'gaussian', got '", distribution,
              "'");
  return Distribution::Gaussian;
}

/// Checks logit_factor's arguments; returns K, the number of factor entries per sample.
inline int64_t check_logit_factor(const at::Tensor& logits, const at::Tensor& labels,
                                  const at::Tensor& sample_ids, int64_t num_exact,
                                  int64_t num_tail, int64_t seed) {
  TORCH_CHECK(logits.dim() == 2, "logit_factor: logits must be 2-D (B, C), got ",
              logits.dim(), "-D");
  TORCH_CHECK(is_float_or_double(logits), "logit_factor: logits must be float32 or float64, got ",
              logits.scalar_type());
  const int64_t B = logits.size(0), C = logits.size(1);
  TORCH_CHECK(C >= 2, "logit_factor: logits need at least 2 classes, got ", C);
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == B,
              "logit_factor: labels must be 1-D of length B=", B, ", got shape ", labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong, "logit_factor: labels must be int64, got ",
              labels.scalar_type());
  check_inputs("logit_factor",
               {{"logits", logits}, {"labels", labels}, {"sample_ids", sample_ids}});
  check_sample_ids(sample_ids, B, "logit_factor");
  TORCH_CHECK(num_exact >= 0, "logit_factor: num_exact must be >= 0, got ", num_exact);
  TORCH_CHECK(num_tail >= 0, "logit_factor: num_tail must be >= 0, got ", num_tail);
  TORCH_CHECK(seed >= 0, "logit_factor: seed must be >= 0, got ", seed);
  if (B > 0 && has_data(logits)) {
    TORCH_CHECK(labels.min().item<int64_t>() >= 0 && labels.max().item<int64_t>() < C,
                "logit_factor: labels must lie in [0, C=", C, ")");
    TORCH_CHECK(logits.isfinite().all().item<bool>(), "logit_factor: logits must be finite");
  }
  if (num_exact >= C) return C;
  TORCH_CHECK(num_tail >= 1, "logit_factor: num_exact=", num_exact, " < C=", C,
              " samples the remaining classes, so num_tail must be >= 1");
  TORCH_CHECK(num_tail <= kFactorLimit - num_exact,
              "logit_factor: num_exact + num_tail must be <= 2^31, got num_exact=", num_exact,
              ", num_tail=", num_tail);
  return num_exact + num_tail;
}

inline void check_weighted_sq_norms(const at::Tensor& vjp, const at::Tensor& weights) {
  check_inputs("weighted_sq_norms", {{"vjp", vjp}, {"weights", weights}});
  TORCH_CHECK(vjp.dim() == 3, "weighted_sq_norms: vjp must be 3-D (B, K, D), got ", vjp.dim(),
              "-D");
  TORCH_CHECK(is_float_or_double(vjp), "weighted_sq_norms: vjp must be float32 or float64, got ",
              vjp.scalar_type());
  TORCH_CHECK(weights.dim() == 2 && weights.size(0) == vjp.size(0) &&
                  weights.size(1) == vjp.size(1),
              "weighted_sq_norms: weights must have shape (B, K) = (", vjp.size(0), ", ",
              vjp.size(1), "), got ", weights.sizes());
  TORCH_CHECK(weights.scalar_type() == vjp.scalar_type(),
              "weighted_sq_norms: weights must have vjp's dtype ", vjp.scalar_type(), ", got ",
              weights.scalar_type());
}

inline void check_probe_moments(const at::Tensor& probes, const at::Tensor& hvp,
                                const at::Tensor& mean, const at::Tensor& m2, int64_t count) {
  check_inputs("probe_moments", {{"probes", probes}, {"hvp", hvp}, {"mean", mean}, {"m2", m2}});
  TORCH_CHECK(probes.dim() == 3, "probe_moments: probes must be 3-D (B, P, D), got ",
              probes.dim(), "-D");
  TORCH_CHECK(is_float_or_double(probes),
              "probe_moments: probes must be float32 or float64, got ", probes.scalar_type());
  TORCH_CHECK(hvp.sizes() == probes.sizes(), "probe_moments: hvp must have probes' shape ",
              probes.sizes(), ", got ", hvp.sizes());
  TORCH_CHECK(hvp.scalar_type() == probes.scalar_type(),
              "probe_moments: hvp must have probes' dtype ", probes.scalar_type(), ", got ",
              hvp.scalar_type());
  TORCH_CHECK(probes.size(1) >= 1, "probe_moments: need at least one probe (P >= 1)");
  const int64_t B = probes.size(0);
  TORCH_CHECK(mean.dim() == 2 && mean.size(0) == B && mean.size(1) == 2,
              "probe_moments: mean must have shape (B, 2) = (", B, ", 2), got ", mean.sizes());
  TORCH_CHECK(m2.sizes() == mean.sizes(), "probe_moments: m2 must have mean's shape ",
              mean.sizes(), ", got ", m2.sizes());
  TORCH_CHECK(is_float_or_double(mean) && m2.scalar_type() == mean.scalar_type(),
              "probe_moments: mean and m2 must share a float32 or float64 dtype, got ",
              mean.scalar_type(), " and ", m2.scalar_type());
  TORCH_CHECK(count >= 0 && count <= INT64_MAX - probes.size(1),
              "probe_moments: count must lie in [0, 2^63 - 1 - P], got ", count);
}

/// Geometry of a patch-matrix op: the (already padded) input's channels, the kernel window, the
/// output grid and d, one group's patch length (C/groups · kh · kw).
struct PatchGeometry {
  int64_t batch, channels, groups, dim;
  int64_t kh, kw, sh, sw, dh, dw, height, width, out_h, out_w;
};

inline int64_t pair_entry(at::IntArrayRef v, const char* name, int64_t i) {
  TORCH_CHECK(v.size() == 2, "patch_gram: ", name, " must have 2 entries (rows, columns), got ",
              v.size());
  TORCH_CHECK(v[i] >= 1, "patch_gram: ", name, " entries must be >= 1, got ", v);
  return v[i];
}

/// Checks patch_gram's arguments (x (B, C, H, W) already padded, mask (B, H_out, W_out) in x's
/// dtype, omega (groups, d, l) or undefined); returns the geometry.
inline PatchGeometry check_patch_gram(const at::Tensor& x, const at::Tensor& mask,
                                      at::IntArrayRef kernel, at::IntArrayRef stride,
                                      at::IntArrayRef dilation, int64_t groups,
                                      const c10::optional<at::Tensor>& omega) {
  TORCH_CHECK(x.dim() == 4, "patch_gram: x must be 4-D (B, C, H, W), got ", x.dim(), "-D");
  TORCH_CHECK(is_float_or_double(x), "patch_gram: x must be float32 or float64, got ",
              x.scalar_type());
  PatchGeometry g{};
  g.kh = pair_entry(kernel, "kernel", 0);
  g.kw = pair_entry(kernel, "kernel", 1);
  g.sh = pair_entry(stride, "stride", 0);
  g.sw = pair_entry(stride, "stride", 1);
  g.dh = pair_entry(dilation, "dilation", 0);
  g.dw = pair_entry(dilation, "dilation", 1);
  g.batch = x.size(0);
  g.channels = x.size(1);
  g.height = x.size(2);
  g.width = x.size(3);
  TORCH_CHECK(groups >= 1 && g.channels % groups == 0, "patch_gram: groups must be >= 1 and divide ",
              "x's ", g.channels, " channels, got groups=", groups);
  g.groups = groups;
  // kernel extents: (k - 1) * dilation + 1 <= size, compared without overflow
  TORCH_CHECK((g.kh - 1) <= (g.height - 1) / g.dh && (g.kw - 1) <= (g.width - 1) / g.dw &&
                  g.height >= 1 && g.width >= 1,
              "patch_gram: the dilated kernel (", kernel, " with dilation ", dilation,
              ") does not fit in x's ", g.height, "x", g.width, " (padded) image");
  g.out_h = (g.height - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.out_w = (g.width - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  g.dim = g.channels / groups * g.kh * g.kw;
  TORCH_CHECK(mask.dim() == 3 && mask.size(0) == g.batch && mask.size(1) == g.out_h &&
                  mask.size(2) == g.out_w,
              "patch_gram: mask must have shape (B, H_out, W_out) = (", g.batch, ", ", g.out_h, ", ",
              g.out_w, "), got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == x.scalar_type(), "patch_gram: mask must have x's dtype ",
              x.scalar_type(), ", got ", mask.scalar_type());
  if (omega.has_value()) {
    const at::Tensor& o = *omega;
    check_inputs("patch_gram", {{"x", x}, {"mask", mask}, {"omega", o}});
    TORCH_CHECK(o.dim() == 3 && o.size(0) == groups && o.size(1) == g.dim,
                "patch_gram: omega must have shape (groups, d, l) = (", groups, ", ", g.dim,
                ", l), got ", o.sizes());
    TORCH_CHECK(is_float_or_double(o), "patch_gram: omega must be float32 or float64, got ",
                o.scalar_type());
  } else {
    check_inputs("patch_gram", {{"x", x}, {"mask", mask}});
  }
  return g;
}

/// Checks patch_gram_add_'s accumulator: float64, contiguous, (groups, d, d) or (groups, d, l).
inline void check_patch_gram_acc(const at::Tensor& acc, const PatchGeometry& g,
                                 const at::Tensor& x, const c10::optional<at::Tensor>& omega) {
  check_inputs("patch_gram_add_", {{"x", x}, {"acc", acc}});
  const int64_t cols = omega.has_value() ? omega->size(2) : g.dim;
  TORCH_CHECK(acc.dim() == 3 && acc.size(0) == g.groups && acc.size(1) == g.dim &&
                  acc.size(2) == cols,
              "patch_gram_add_: acc must have shape (groups, d, ", omega.has_value() ? "l" : "d",
              ") = (", g.groups, ", ", g.dim, ", ", cols, "), got ", acc.sizes());
  TORCH_CHECK(acc.scalar_type() == at::kDouble, "patch_gram_add_: acc must be float64, got ",
              acc.scalar_type());
  TORCH_CHECK(acc.is_contiguous(), "patch_gram_add_: acc must be contiguous; pass acc.contiguous()");
}

}  // namespace curvfast
