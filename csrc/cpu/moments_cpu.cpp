// CPU kernels of curvfast::weighted_sq_norms and curvfast::probe_moments (math in
// csrc/common/reductions.h): rows in parallel, each row summed in kLanes double partials.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../common/checks.h"
#include "../common/reductions.h"

namespace curvfast {
namespace {

at::Tensor weighted_sq_norms_cpu(const at::Tensor& vjp, const at::Tensor& weights) {
  check_weighted_sq_norms(vjp, weights);
  const at::Tensor v = vjp.contiguous(), w = weights.contiguous();
  const int64_t rows = v.size(0) * v.size(1), D = v.size(2);
  at::Tensor out = at::empty({v.size(0), v.size(1)}, v.options());
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1));
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "curvfast_weighted_sq_norms_cpu", [&] {
    const scalar_t* v_ptr = v.data_ptr<scalar_t>();
    const scalar_t* w_ptr = w.data_ptr<scalar_t>();
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = v_ptr + r * D;
        out_ptr[r] = static_cast<scalar_t>(static_cast<double>(w_ptr[r]) * lane_sum(row, row, D, SqTerm{}));
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> probe_moments_cpu(const at::Tensor& probes,
                                                     const at::Tensor& hvp,
                                                     const at::Tensor& mean,
                                                     const at::Tensor& m2, int64_t count) {
  check_probe_moments(probes, hvp, mean, m2, count);
  const at::Tensor v = probes.contiguous(), hv = hvp.contiguous();
  const at::Tensor mean_in = mean.to(at::kDouble).contiguous();
  const at::Tensor m2_in = m2.to(at::kDouble).contiguous();
  const int64_t B = v.size(0), P = v.size(1), D = v.size(2);
  at::Tensor mean_out = at::empty({B, 2}, mean_in.options());
  at::Tensor m2_out = at::empty({B, 2}, mean_in.options());
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(P * D, 1));
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "curvfast_probe_moments_cpu", [&] {
    const scalar_t* v_ptr = v.data_ptr<scalar_t>();
    const scalar_t* hv_ptr = hv.data_ptr<scalar_t>();
    const double* mean_ptr = mean_in.data_ptr<double>();
    const double* m2_ptr = m2_in.data_ptr<double>();
    double* mean_out_ptr = mean_out.data_ptr<double>();
    double* m2_out_ptr = m2_out.data_ptr<double>();
    at::parallel_for(0, B, grain, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        double mb[2] = {0.0, 0.0}, m2b[2] = {0.0, 0.0};
        for (int64_t p = 0; p < P; ++p) {
          double q[2];
          const int64_t off = (b * P + p) * D;
          lane_sums(v_ptr + off, hv_ptr + off, D, DotTerm{}, SqSecondTerm{}, &q[0], &q[1]);
          for (int i = 0; i < 2; ++i) welford_push(&mb[i], &m2b[i], q[i], p);
        }
        for (int i = 0; i < 2; ++i)
          chan_merge(mean_ptr[2 * b + i], m2_ptr[2 * b + i], count, mb[i], m2b[i], P,
                     &mean_out_ptr[2 * b + i], &m2_out_ptr[2 * b + i]);
      }
    });
  });
  return {mean_out.to(mean.scalar_type()), m2_out.to(mean.scalar_type())};
}

}  // namespace
}  // namespace curvfast

TORCH_LIBRARY_IMPL(curvfast, CPU, m) {
  m.impl("weighted_sq_norms", &curvfast::weighted_sq_norms_cpu);
  m.impl("probe_moments", &curvfast::probe_moments_cpu);
}
