// CPU kernels of curvfast::patch_gram and curvfast::patch_gram_add_ (the tiled driver and its
// math in csrc/common/patch_gram.h): the im2col of one tile, rows in parallel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/patch_gram.h"

namespace curvfast {
namespace {

void im2col_tile_cpu(const at::Tensor& x, const at::Tensor& idx, const PatchGeometry& geo,
                     at::Tensor& buf) {
  const at::Tensor positions = idx.contiguous();
  const int64_t t = positions.size(0), tile = buf.size(1);
  const int64_t cg = geo.channels / geo.groups, per_sample = geo.out_h * geo.out_w;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "curvfast_patch_gram_im2col_cpu", [&] {
    const scalar_t* x_ptr = x.data_ptr<scalar_t>();
    const int64_t* pos = positions.data_ptr<int64_t>();
    scalar_t* out = buf.data_ptr<scalar_t>();
    at::parallel_for(0, t, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t p = pos[r], b = p / per_sample, oy = (p % per_sample) / geo.out_w,
                      ox = p % geo.out_w;
        for (int64_t j = 0; j < geo.groups; ++j) {
          scalar_t* row = out + (j * tile + r) * geo.dim;
          for (int64_t c = 0; c < cg; ++c) {
            const scalar_t* plane =
                x_ptr + ((b * geo.channels + j * cg + c) * geo.height + oy * geo.sh) * geo.width +
                ox * geo.sw;
            for (int64_t a = 0; a < geo.kh; ++a)
              for (int64_t e = 0; e < geo.kw; ++e)
                *row++ = plane[a * geo.dh * geo.width + e * geo.dw];
          }
        }
      }
    });
  });
}

at::Tensor patch_gram_cpu(const at::Tensor& x, const at::Tensor& mask, at::IntArrayRef kernel,
                          at::IntArrayRef stride, at::IntArrayRef dilation, int64_t groups,
                          const c10::optional<at::Tensor>& omega) {
  const PatchGeometry geo = check_patch_gram(x, mask, kernel, stride, dilation, groups, omega);
  return patch_gram_new(x, mask, omega, geo, &im2col_tile_cpu);
}

void patch_gram_add_cpu(at::Tensor& acc, const at::Tensor& x, const at::Tensor& mask,
                        at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef dilation,
                        int64_t groups, const c10::optional<at::Tensor>& omega) {
  const PatchGeometry geo = check_patch_gram(x, mask, kernel, stride, dilation, groups, omega);
  check_patch_gram_acc(acc, geo, x, omega);
  patch_gram_accumulate(acc, x, mask, omega, geo, &im2col_tile_cpu);
}

}  // namespace
}  // namespace curvfast

TORCH_LIBRARY_IMPL(curvfast, CPU, m) {
  m.impl("patch_gram", &curvfast::patch_gram_cpu);
  m.impl("patch_gram_add_", &curvfast::patch_gram_add_cpu);
}
