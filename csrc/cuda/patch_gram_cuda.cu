// CUDA kernels of curvfast::patch_gram and curvfast::patch_gram_add_ (the tiled driver and its
// math in csrc/common/patch_gram.h, GEMMs by cuBLAS through ATen): the im2col of one tile, one
// thread per buffer entry (grid-stride).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/core/DeviceGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "../common/patch_gram.h"
#include "launch.h"

namespace curvfast {
namespace {

/// buf[j, r, k] for k = (c, a, e): x[b, j·cg + c, oy·sh + a·dh, ox·sw + e·dw] with (b, oy, ox)
/// the flat position pos[r]; entries r < t of each group (group stride gs, row stride ld).
template <typename scalar_t>
__global__ void im2col_tile_kernel(const scalar_t* __restrict__ x, const int64_t* __restrict__ pos,
                                   int64_t t, int64_t gs, int64_t ld, PatchGeometry geo,
                                   scalar_t* __restrict__ buf) {
  const int64_t khw = geo.kh * geo.kw, cg = geo.channels / geo.groups;
  const int64_t per_sample = geo.out_h * geo.out_w, total = geo.groups * t * geo.dim;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = i % geo.dim, r = (i / geo.dim) % t, j = i / (geo.dim * t);
    const int64_t c = k / khw, a = (k % khw) / geo.kw, e = k % geo.kw;
    const int64_t p = pos[r], b = p / per_sample, oy = (p % per_sample) / geo.out_w,
                  ox = p % geo.out_w;
    const int64_t y = oy * geo.sh + a * geo.dh, xx = ox * geo.sw + e * geo.dw;
    buf[j * gs + r * ld + k] =
        x[((b * geo.channels + j * cg + c) * geo.height + y) * geo.width + xx];
  }
}

void im2col_tile_cuda(const at::Tensor& x, const at::Tensor& idx, const PatchGeometry& geo,
                      at::Tensor& buf) {
  const at::Tensor positions = idx.contiguous();
  const int64_t t = positions.size(0);
  const int64_t total = geo.groups * t * geo.dim;
  if (total == 0) return;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "curvfast_patch_gram_im2col_cuda", [&] {
    im2col_tile_kernel<scalar_t><<<num_blocks(total), kThreads, 0,
                                   c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), positions.data_ptr<int64_t>(), t, buf.stride(0), buf.stride(1), geo,
        buf.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor patch_gram_cuda(const at::Tensor& x, const at::Tensor& mask, at::IntArrayRef kernel,
                           at::IntArrayRef stride, at::IntArrayRef dilation, int64_t groups,
                           const c10::optional<at::Tensor>& omega) {
  const c10::OptionalDeviceGuard guard(x.device());  // no-op for a CPU x: the checks then refuse the mix
  return patch_gram_op(x, mask, kernel, stride, dilation, groups, omega, &im2col_tile_cuda);
}

void patch_gram_add_cuda(at::Tensor& acc, const at::Tensor& x, const at::Tensor& mask,
                         at::IntArrayRef kernel, at::IntArrayRef stride, at::IntArrayRef dilation,
                         int64_t groups, const c10::optional<at::Tensor>& omega) {
  const c10::OptionalDeviceGuard guard(x.device());  // no-op for a CPU x: the checks then refuse the mix
  patch_gram_add_op(acc, x, mask, kernel, stride, dilation, groups, omega, &im2col_tile_cuda);
}

}  // namespace
}  // namespace curvfast

TORCH_LIBRARY_IMPL(curvfast, CUDA, m) {
  m.impl("patch_gram", &curvfast::patch_gram_cuda);
  m.impl("patch_gram_add_", &curvfast::patch_gram_add_cuda);
}
