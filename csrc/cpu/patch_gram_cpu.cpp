// CPU kernels of curvfast::patch_gram and curvfast::patch_gram_add_ (the tiled driver and its
// math in csrc/common/patch_gram.h): the im2col of one tile, blocks of rows in parallel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../common/checks.h"
#include "../common/patch_gram.h"

namespace curvfast {
namespace {

/// Rows in blocks of kRowBlock (in parallel): per block, each patch entry k = (c, a, e) is
/// gathered for all the block's rows in turn, so that the reads stay in one channel plane and the
/// writes in kRowBlock rows of the buffer.
constexpr int64_t kRowBlock = 16;

void im2col_tile_cpu(const at::Tensor& x, const at::Tensor& idx, const PatchGeometry& geo,
                     at::Tensor& buf) {
  const at::Tensor positions = idx.contiguous();
  const int64_t t = positions.size(0);
  const int64_t cg = geo.channels / geo.groups, per_sample = geo.out_h * geo.out_w;
  const int64_t plane = geo.height * geo.width, ld = buf.stride(1), group_stride = buf.stride(0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "curvfast_patch_gram_im2col_cpu", [&] {
    const scalar_t* x_ptr = x.data_ptr<scalar_t>();
    const int64_t* pos = positions.data_ptr<int64_t>();
    scalar_t* out = buf.data_ptr<scalar_t>();
    const int64_t blocks = (t + kRowBlock - 1) / kRowBlock;
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      int64_t base[kRowBlock];  // offset of each row's window corner in x
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t r0 = blk * kRowBlock, n = std::min(kRowBlock, t - r0);
        for (int64_t i = 0; i < n; ++i) {
          const int64_t p = pos[r0 + i], b = p / per_sample, oy = (p % per_sample) / geo.out_w,
                        ox = p % geo.out_w;
          base[i] = b * geo.channels * plane + oy * geo.sh * geo.width + ox * geo.sw;
        }
        for (int64_t j = 0; j < geo.groups; ++j) {
          scalar_t* rows = out + j * group_stride + r0 * ld;
          int64_t k = 0;
          for (int64_t c = 0; c < cg; ++c) {
            const scalar_t* channel = x_ptr + (j * cg + c) * plane;
            for (int64_t a = 0; a < geo.kh; ++a)
              for (int64_t e = 0; e < geo.kw; ++e, ++k) {
                const scalar_t* src = channel + a * geo.dh * geo.width + e * geo.dw;
                for (int64_t i = 0; i < n; ++i) rows[i * ld + k] = src[base[i]];
              }
          }
        }
      }
    });
  });
}

at::Tensor patch_gram_cpu(const at::Tensor& x, const at::Tensor& mask, at::IntArrayRef kernel,
                          at::IntArrayRef stride, at::IntArrayRef dilation, int64_t groups,
                          const c10::optional<at::Tensor>& omega) {
  return patch_gram_op(x, mask, kernel, stride, dilation, groups, omega, &im2col_tile_cpu);
}

void patch_gram_add_cpu(at::Tensor& acc, const at::Tensor& x, const at::Tensor& mask,
                        at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef dilation,
                        int64_t groups, const c10::optional<at::Tensor>& omega) {
  patch_gram_add_op(acc, x, mask, kernel, stride, dilation, groups, omega, &im2col_tile_cpu);
}

}  // namespace
}  // namespace curvfast

TORCH_LIBRARY_IMPL(curvfast, CPU, m) {
  m.impl("patch_gram", &curvfast::patch_gram_cpu);
  m.impl("patch_gram_add_", &curvfast::patch_gram_add_cpu);
}
