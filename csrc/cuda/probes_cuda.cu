// CUDA kernel of curvfast::probes (math in csrc/common/sampling.h); one thread per block of
// 128 Rademacher entries or per pair of Gaussian entries.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>

#include "../common/checks.h"
#include "../common/sampling.h"
#include "launch.h"

namespace curvfast {
namespace {

template <typename scalar_t>
__global__ void probes_kernel(const int64_t* ids, int64_t rows, int64_t num_probes,
                              int64_t probe_offset, int64_t dim, int64_t chunk, bool gaussian,
                              Key key, scalar_t* out) {
  const int64_t chunks = (dim + chunk - 1) / chunk;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows * chunks;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / chunks, d = (i % chunks) * chunk;
    const uint64_t s = static_cast<uint64_t>(ids[row / num_probes]);
    const uint32_t j = static_cast<uint32_t>(probe_offset + row % num_probes);
    if (gaussian) {
      gaussian_pair(out + row * dim + d, d, dim, j, s, key);
    } else {
      rademacher_block(out + row * dim + d, d, dim, j, s, key);
    }
  }
}

at::Tensor probes_cuda(const at::Tensor& sample_ids, int64_t seed, int64_t probe_offset,
                       int64_t num_probes, int64_t dim, c10::string_view distribution,
                       at::ScalarType dtype) {
  const Distribution dist = check_probes(sample_ids, seed, probe_offset, num_probes, dim,
                                         std::string(distribution), dtype);
  const c10::cuda::CUDAGuard guard(sample_ids.device());
  const at::Tensor ids = sample_ids.contiguous();
  const int64_t rows = ids.size(0) * num_probes;
  at::Tensor out = at::empty({ids.size(0), num_probes, dim}, ids.options().dtype(dtype));
  if (rows == 0 || dim == 0) return out;
  const bool gaussian = dist == Distribution::Gaussian;
  const int64_t chunk = gaussian ? 2 : 128;
  const int64_t items = rows * ((dim + chunk - 1) / chunk);
  AT_DISPATCH_FLOATING_TYPES(dtype, "curvfast_probes_cuda", [&] {
    probes_kernel<scalar_t><<<num_blocks(items), kThreads, 0,
                              c10::cuda::getCurrentCUDAStream()>>>(
        ids.data_ptr<int64_t>(), rows, num_probes, probe_offset, dim, chunk, gaussian,
        key_from_seed(seed), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace curvfast

TORCH_LIBRARY_IMPL(curvfast, CUDA, m) { m.impl("probes", &curvfast::probes_cuda); }
