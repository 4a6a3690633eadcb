// CUDA kernel of curvfast::logit_factor (math in csrc/common/sampling.h); one thread per
// sample.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../common/checks.h"
#include "../common/sampling.h"
#include "launch.h"

namespace curvfast {
namespace {

template <typename scalar_t>
__global__ void logit_factor_kernel(const scalar_t* z, const int64_t* y, const int64_t* ids,
                                    int64_t B, int64_t C, int64_t K, int64_t num_exact,
                                    int64_t num_tail, int64_t seed, scalar_t* cot, scalar_t* w,
                                    int64_t* cls, scalar_t* loss) {
  for (int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; b < B;
       b += int64_t(gridDim.x) * blockDim.x) {
    logit_factor_sample(z + b * C, C, y[b], static_cast<uint64_t>(ids[b]), num_exact, num_tail,
                        seed, cot + b * K * C, w + b * K, cls + b * K, loss + b);
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
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "curvfast_logit_factor_cuda", [&] {
    logit_factor_kernel<scalar_t><<<num_blocks(B), kThreads, 0,
                                    c10::cuda::getCurrentCUDAStream()>>>(
        z.data_ptr<scalar_t>(), y.data_ptr<int64_t>(), ids.data_ptr<int64_t>(), B, C, K,
        num_exact, num_tail, seed, cot.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
        cls.data_ptr<int64_t>(), loss.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {cot, w, cls, loss};
}

}  // namespace
}  // namespace curvfast

TORCH_LIBRARY_IMPL(curvfast, CUDA, m) { m.impl("logit_factor", &curvfast::logit_factor_cuda); }
