// CUDA kernels of curvfast::weighted_sq_norms (one block per row) and
// curvfast::probe_moments (one block per sample); math in csrc/common/reductions.h.
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

static_assert(kLanes == kThreads, "one CUDA thread per reduction lane");

/// Sums the kLanes per-thread partials of a block in lane order (as the CPU does); thread 0
/// receives the sums. `shared` holds 2 * kLanes doubles.
__device__ void block_lane_sums(double a, double b, double* shared, double* out_a, double* out_b) {
  shared[threadIdx.x] = a;
  shared[kLanes + threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.x == 0) {
    double sa = 0.0, sb = 0.0;
    for (int l = 0; l < kLanes; ++l) {
      sa += shared[l];
      sb += shared[kLanes + l];
    }
    *out_a = sa;
    *out_b = sb;
  }
  __syncthreads();
}

/// One block per row r: thread l sums lane l of the row (coalesced loads).
template <typename scalar_t>
__global__ void weighted_sq_norms_kernel(const scalar_t* v, const scalar_t* w, int64_t rows,
                                         int64_t D, scalar_t* out) {
  __shared__ double shared[2 * kLanes];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const scalar_t* row = v + r * D;
    const double part = lane_partial(row, row, D, threadIdx.x, SqTerm{});
    double sum, unused;
    block_lane_sums(part, 0.0, shared, &sum, &unused);
    if (threadIdx.x == 0) out[r] = static_cast<scalar_t>(static_cast<double>(w[r]) * sum);
  }
}

/// One block per sample b: per probe, the block reduces (v.hv, |hv|^2); thread 0 runs Welford
/// over the probes and merges into the running moments.
template <typename scalar_t>
__global__ void probe_moments_kernel(const scalar_t* v, const scalar_t* hv, int64_t B,
                                     int64_t P, int64_t D, int64_t count, const double* mean,
                                     const double* m2, double* mean_out, double* m2_out) {
  __shared__ double shared[2 * kLanes];
  for (int64_t b = blockIdx.x; b < B; b += gridDim.x) {
    double mb[2] = {0.0, 0.0}, m2b[2] = {0.0, 0.0};
    for (int64_t p = 0; p < P; ++p) {
      const int64_t off = (b * P + p) * D;
      double dot, sq, q[2];
      lane_partials(v + off, hv + off, D, threadIdx.x, DotTerm{}, SqSecondTerm{}, &dot, &sq);
      block_lane_sums(dot, sq, shared, &q[0], &q[1]);
      if (threadIdx.x == 0)
        for (int i = 0; i < 2; ++i) welford_push(&mb[i], &m2b[i], q[i], p);
    }
    if (threadIdx.x == 0)
      for (int i = 0; i < 2; ++i)
        chan_merge(mean[2 * b + i], m2[2 * b + i], count, mb[i], m2b[i], P,
                   &mean_out[2 * b + i], &m2_out[2 * b + i]);
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
    weighted_sq_norms_kernel<scalar_t><<<grid_rows(rows), kThreads, 0,
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
      probe_moments_kernel<scalar_t><<<grid_rows(B), kThreads, 0,
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
