// CUDA kernels of curvfast::logit_factor (math in csrc/common/sampling.h): one thread per
// sample picks the classes and weights (a sequential scan over C), then one thread per entry
// writes the B x K x C cotangents, so the bulk of the output is written in parallel and
// coalesced.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../common/checks.h"
#include "../common/sampling.h"
#include "launch.h"

namespace curvfast {
namespace {

static_assert(sizeof(LogSoftmax) == 2 * sizeof(double), "LogSoftmax is stored as (B, 2) doubles");

// Threads per block of the per-sample kernel: small blocks spread a batch over many SMs.
constexpr int kSampleThreads = 32;

template <typename scalar_t>
__global__ void logit_weights_kernel(const scalar_t* z, const int64_t* y, const int64_t* ids,
                                     int64_t B, int64_t C, int64_t K, int64_t num_exact,
                                     int64_t num_tail, int64_t seed, scalar_t* w, int64_t* cls,
                                     scalar_t* loss, LogSoftmax* ls) {
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < B;
       b += int64_t(gridDim.x) * blockDim.x) {
    ls[b] = logit_factor_weights(z + b * C, C, y[b], static_cast<uint64_t>(ids[b]), num_exact,
                                 num_tail, seed, w + b * K, cls + b * K, loss + b);
  }
}

template <typename scalar_t>
__global__ void cotangents_kernel(const scalar_t* z, const int64_t* cls, const LogSoftmax* ls,
                                  int64_t B, int64_t C, int64_t K, scalar_t* cot) {
  const int64_t n = B * K * C;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i % C, bk = i / C, b = bk / K;
    cot[i] = cotangent_entry<scalar_t>(ls[b](z + b * C, c), cls[bk] == c);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> logit_factor_cuda(
    const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& sample_ids,
    int64_t num_exact, int64_t num_tail, int64_t seed) {
  const int64_t K = check_logit_factor(logits, labels, sample_ids, num_exact, num_tail, seed);
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor z = logits.contiguous(), y = labels.contiguous(), ids = sample_ids.contiguous();
  const int64_t B = z.size(0), C = z.size(1);
  at::Tensor cot = at::empty({B, K, C}, z.options());
  at::Tensor w = at::empty({B, K}, z.options());
  at::Tensor cls = at::empty({B, K}, y.options());
  at::Tensor loss = at::empty({B}, z.options());
  if (B == 0) return {cot, w, cls, loss};
  // Per-sample log-softmax shifts (zmax, log_sum) for the cotangent kernel.
  at::Tensor shifts = at::empty({B, 2}, z.options().dtype(at::kDouble));
  LogSoftmax* ls = reinterpret_cast<LogSoftmax*>(shifts.data_ptr<double>());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const unsigned int sample_blocks =
      static_cast<unsigned int>(std::min<int64_t>((B + kSampleThreads - 1) / kSampleThreads, 65535));
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "curvfast_logit_factor_cuda", [&] {
    logit_weights_kernel<scalar_t><<<sample_blocks, kSampleThreads, 0, stream>>>(
        z.data_ptr<scalar_t>(), y.data_ptr<int64_t>(), ids.data_ptr<int64_t>(), B, C, K,
        num_exact, num_tail, seed, w.data_ptr<scalar_t>(), cls.data_ptr<int64_t>(),
        loss.data_ptr<scalar_t>(), ls);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cotangents_kernel<scalar_t><<<num_blocks(B * K * C), kThreads, 0, stream>>>(
        z.data_ptr<scalar_t>(), cls.data_ptr<int64_t>(), ls, B, C, K, cot.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {cot, w, cls, loss};
}

}  // namespace
}  // namespace curvfast

TORCH_LIBRARY_IMPL(curvfast, CUDA, m) { m.impl("logit_factor", &curvfast::logit_factor_cuda); }
