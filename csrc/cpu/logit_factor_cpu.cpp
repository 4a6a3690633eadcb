// CPU kernel of curvfast::logit_factor (math in csrc/common/sampling.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <tuple>

#include "../common/checks.h"
#include "../common/sampling.h"

namespace curvfast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> logit_factor_cpu(
    const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& sample_ids,
    int64_t num_exact, int64_t num_tail, int64_t seed) {
  const int64_t K = check_logit_factor(logits, labels, sample_ids, num_exact, num_tail, seed);
  const at::Tensor z = logits.contiguous(), y = labels.contiguous(), ids = sample_ids.contiguous();
  const int64_t B = z.size(0), C = z.size(1);
  at::Tensor cot = at::empty({B, K, C}, z.options());
  at::Tensor w = at::empty({B, K}, z.options());
  at::Tensor cls = at::empty({B, K}, y.options());
  at::Tensor loss = at::empty({B}, z.options());
  const int64_t* y_ptr = y.data_ptr<int64_t>();
  const int64_t* id_ptr = ids.data_ptr<int64_t>();
  int64_t* cls_ptr = cls.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "curvfast_logit_factor_cpu", [&] {
    const scalar_t* z_ptr = z.data_ptr<scalar_t>();
    scalar_t* cot_ptr = cot.data_ptr<scalar_t>();
    scalar_t* w_ptr = w.data_ptr<scalar_t>();
    scalar_t* loss_ptr = loss.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        logit_factor_sample(z_ptr + b * C, C, y_ptr[b], static_cast<uint64_t>(id_ptr[b]),
                            num_exact, num_tail, seed, cot_ptr + b * K * C, w_ptr + b * K,
                            cls_ptr + b * K, loss_ptr + b);
      }
    });
  });
  return {cot, w, cls, loss};
}

}  // namespace
}  // namespace curvfast

TORCH_LIBRARY_IMPL(curvfast, CPU, m) { m.impl("logit_factor", &curvfast::logit_factor_cpu); }
