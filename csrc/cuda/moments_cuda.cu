// CUDA kernels of curvfast::weighted_sq_norms (one thread per row) and
// curvfast::probe_moments (one thread per sample); math in csrc/common/reductions.h.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../common/checks.h"
#include "../common/reductions.h"
#include "launch.h"

namespace curvfast {
namespace {

template <typename scalar_t>
__global__ void weighted_sq_norms_kernel(const scalar_t* v, const scalar_t* w, int64_t rows,
                                         int64_t D, scalar_t* out) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < rows;
       r += int64_t(gridDim.x) * blockDim.x) {
    out[r] = static_cast<scalar_t>(weighted_sq_norm(v + r * D, D, w[r]));
  }
}

template <typename scalar_t>
__global__ void probe_moments_kernel(const scalar_t* v, const scalar_t* hv, int64_t B,
                                     int64_t P, int64_t D, int64_t count, const double* mean,
                                     const double* m2, double* mean_out, double* m2_out) {
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < B;
       b += int64_t(gridDim.x) * blockDim.x) {
    probe_moments_sample(v + b * P * D, hv + b * P * D, P, D, count, mean + 2 * b, m2 + 2 * b,
                         mean_out + 2 * b, m2_out + 2 * b);
  }
}

at::Tensor weighted_sq_norms_cuda(const at::Tensor& vjp, const at::Tensor& weights) {
  check_weighted_sq_norms(vjp, weights);
  const c10::cuda::CUDAGuard guard(vjp.device());
  const at::Tensor v = vjp.contiguous(), w = weights.contiguous();
  const int64_t rows = v.size(0) * v.size(1);
  at::Tensor out = at::empty({v.size(0), v.size(1)}, v.options());
  if (rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "curvfast_weighted_sq_norms_cuda", [&] {
    weighted_sq_norms_kernel<scalar_t><<<num_blocks(rows), kThreads, 0,
                                         c10::cuda::getCurrentCUDAStream()>>>(
        v.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), rows, v.size(2),
        out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> probe_moments_cuda(const at::Tensor& probes,
                                                      const at::Tensor& hvp,
                                                      const at::Tensor& mean,
                                                      const at::Tensor& m2, int64_t count) {
  check_probe_moments(probes, hvp, mean, m2, count);
  const c10::cuda::CUDAGuard guard(probes.device());
  const at::Tensor v = probes.contiguous(), hv = hvp.contiguous();
  const at::Tensor mean_in = mean.to(at::kDouble).contiguous();
  const at::Tensor m2_in = m2.to(at::kDouble).contiguous();
  const int64_t B = v.size(0);
  at::Tensor mean_out = at::empty({B, 2}, mean_in.options());
  at::Tensor m2_out = at::empty({B, 2}, mean_in.options());
  if (B > 0) {
    AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "curvfast_probe_moments_cuda", [&] {
      probe_moments_kernel<scalar_t><<<num_blocks(B), kThreads, 0,
                                       c10::cuda::getCurrentCUDAStream()>>>(
          v.data_ptr<scalar_t>(), hv.data_ptr<scalar_t>(), B, v.size(1), v.size(2), count,
          mean_in.data_ptr<double>(), m2_in.data_ptr<double>(), mean_out.data_ptr<double>(),
          m2_out.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return {mean_out.to(mean.scalar_type()), m2_out.to(mean.scalar_type())};
}

}  // namespace
}  // namespace curvfast

TORCH_LIBRARY_IMPL(curvfast, CUDA, m) {
  m.impl("weighted_sq_norms", &curvfast::weighted_sq_norms_cuda);
  m.impl("probe_moments", &curvfast::probe_moments_cuda);
}
