// CPU kernel of curvfast::probes (math in csrc/common/sampling.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "../common/checks.h"
#include "../common/sampling.h"

namespace curvfast {
namespace {

at::Tensor probes_cpu(const at::Tensor& sample_ids, int64_t seed, int64_t probe_offset,
                      int64_t num_probes, int64_t dim, c10::string_view distribution,
                      at::ScalarType dtype) {
  const Distribution dist = check_probes(sample_ids, seed, probe_offset, num_probes, dim,
                                         std::string(distribution), dtype);
  const at::Tensor ids = sample_ids.contiguous();
  const int64_t B = ids.size(0);
  at::Tensor out = at::empty({B, num_probes, dim}, ids.options().dtype(dtype));
  if (out.numel() == 0) return out;
  const Key key = key_from_seed(seed);
  const int64_t* id_ptr = ids.data_ptr<int64_t>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(dim, 1));
  AT_DISPATCH_FLOATING_TYPES(dtype, "curvfast_probes_cpu", [&] {
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * num_probes, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const uint64_t s = static_cast<uint64_t>(id_ptr[row / num_probes]);
        const uint32_t j = static_cast<uint32_t>(probe_offset + row % num_probes);
        scalar_t* row_ptr = out_ptr + row * dim;
        if (dist == Distribution::Rademacher) {
          for (int64_t d = 0; d < dim; d += 128) rademacher_block(row_ptr + d, d, dim, j, s, key);
        } else {
          for (int64_t d = 0; d < dim; d += 2) gaussian_pair(row_ptr + d, d, dim, j, s, key);
        }
      }
    });
  });
  return out;
}

}  // namespace
}  // namespace curvfast

TORCH_LIBRARY_IMPL(curvfast, CPU, m) { m.impl("probes", &curvfast::probes_cpu); }
