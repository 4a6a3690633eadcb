// The fused patch Gram / patch sketch shared by the CPU and CUDA kernels of curvfast::patch_gram
// and curvfast::patch_gram_add_ (host code; the device-specific part is the im2col of one tile).
//
// For the (padded) input x (B, C, H, W) of a convolution with kernel (kh, kw), stride, dilation
// and g groups, X_j is group j's patch matrix: one row per output position (b, oy, ox), the
// d = C/g · kh · kw entries x[b, j·C/g + c, oy·sh + a·dh, ox·sw + e·dw] in (c, a, e) order (the
// layout of W.reshape(C_out, -1)). With the weights m over the output positions,
//
//     acc_j += X_jᵀ diag(m) X_j          (omega undefined; the Gram matrix)
//     acc_j += X_jᵀ diag(m) (X_j Ω_j)    (omega (g, d, l); the range finder's sketch)
//
// without forming X: the positions with m != 0 are taken kTileRows at a time, one tile's rows are
// written into a (g, tile, d) buffer (rows padded) by `im2col` and multiplied by at::mm / at::bmm (BLAS on the
// CPU, cuBLAS on CUDA). Products run in x's dtype; a float32 tile's product (a sum over at most
// kTileRows32 positions) is added into the float64 accumulator, a float64 tile's is accumulated
// in place. The Gram matrix is symmetric: d is cut into nb column blocks and only the block rows
// from the diagonal rightwards are multiplied ((nb + 1) / (2 nb) of the products); the blocks below
// get the transpose of their mirror's gain once per call. Memory: the tile buffers (2 · g · tile · d)
// and one float32 product, never B · L · d.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#include "checks.h"

namespace curvfast {

/// Positions per float32 tile: each float32 product sums at most this many positions before it
/// is added in float64 (as the conv route's 256-position chunks).
constexpr int64_t kTileRows32 = 256;
/// Positions per float64 tile (accumulated in place: the size only trades memory for BLAS speed).
constexpr int64_t kTileRows64 = 512;
/// Target width of the Gram's column blocks.
constexpr int64_t kGramBlock = 384;
/// Padding of the tile buffer's rows (entries): a row stride that is a multiple of 4 KiB (d = 4608
/// in float64) would map the rows written together to one cache set.
constexpr int64_t kRowPad = 16;

/// Writes the patch rows of the flat output positions idx[0 .. t) (b · H_out · W_out + oy · W_out
/// + ox) into buf[:, 0 .. t, :] of the (g, tile, d) buffer `buf` (strides (g-stride, row stride, 1)).
using Im2colTile = void (*)(const at::Tensor& x, const at::Tensor& idx, const PatchGeometry& geo,
                            at::Tensor& buf);

/// acc += a @ b: in place for float64 factors, else through a product in their dtype.
inline void add_product(at::Tensor acc, const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == at::kDouble) {
    acc.addmm_(a, b);
  } else {
    acc.add_(at::mm(a, b));
  }
}

/// The Gram's column blocks: nb = ceil(d / kGramBlock) blocks of width ceil(d / nb).
inline int64_t gram_block_width(int64_t d) {
  const int64_t nb = (d + kGramBlock - 1) / kGramBlock;
  return (d + nb - 1) / nb;
}

/// f(upper block, lower block) of the square matrix m for every pair of blocks above / below the
/// diagonal (block (i, j), j > i, and its mirror (j, i)).
template <typename F>
void for_each_block_pair(const at::Tensor& m, F f) {
  const int64_t d = m.size(0), width = gram_block_width(d);
  for (int64_t i0 = 0; i0 < d; i0 += width)
    for (int64_t j0 = i0 + width; j0 < d; j0 += width) {
      const int64_t ni = std::min(width, d - i0), nj = std::min(width, d - j0);
      f(m.narrow(0, i0, ni).narrow(1, j0, nj), m.narrow(0, j0, nj).narrow(1, i0, ni));
    }
}

/// acc += weightedᵀ rows (both (t, d)) on the diagonal blocks and the blocks above them only.
inline void add_gram_upper(at::Tensor acc, const at::Tensor& rows, const at::Tensor& weighted) {
  const int64_t d = rows.size(1), width = gram_block_width(d);
  for (int64_t i0 = 0; i0 < d; i0 += width) {
    const int64_t ni = std::min(width, d - i0);
    const at::Tensor left = weighted.narrow(1, i0, ni).t();
    add_product(acc.narrow(0, i0, ni).narrow(1, i0, d - i0), left, rows.narrow(1, i0, d - i0));
  }
}

/// The shared driver: acc (g, d, d or l), float64, contiguous, checked by the caller.
inline void patch_gram_accumulate(at::Tensor& acc, const at::Tensor& x_in, const at::Tensor& mask,
                                  const c10::optional<at::Tensor>& omega, const PatchGeometry& geo,
                                  Im2colTile im2col) {
  const at::Tensor x = x_in.contiguous();
  const at::Tensor flat = mask.reshape({-1});
  const at::Tensor idx = flat.nonzero().squeeze(1);  // the positions that count
  const int64_t n = idx.size(0);
  if (n == 0 || geo.dim == 0) return;
  const at::Tensor weights = flat.index_select(0, idx);
  const int64_t tile =
      std::min(n, x.scalar_type() == at::kDouble ? kTileRows64 : kTileRows32);
  at::Tensor buf = at::empty({geo.groups, tile, geo.dim + kRowPad}, x.options()).narrow(2, 0, geo.dim);
  at::Tensor om;
  if (omega.has_value()) om = omega->to(x.scalar_type()).contiguous();
  // Gram: the tiles add into the blocks on and above the diagonal only; each block below holds
  // (below - aboveᵀ) meanwhile and gets the final aboveᵀ back at the end, so it gains the
  // transpose of what its mirror gained (acc need not be symmetric).
  const auto lower_minus_upper = [](const at::Tensor& up, at::Tensor low) { low.sub_(up.t()); };
  const auto lower_plus_upper = [](const at::Tensor& up, at::Tensor low) { low.add_(up.t()); };
  if (!om.defined())
    for (int64_t j = 0; j < geo.groups; ++j) for_each_block_pair(acc[j], lower_minus_upper);
  for (int64_t start = 0; start < n; start += tile) {
    const int64_t t = std::min(tile, n - start);
    im2col(x, idx.narrow(0, start, t), geo, buf);
    const at::Tensor rows = buf.narrow(1, 0, t);  // (g, t, d)
    const at::Tensor w = weights.narrow(0, start, t).view({1, t, 1});
    if (om.defined()) {
      const at::Tensor sketch = at::bmm(rows, om).mul_(w);  // diag(m) X Ω, (g, t, l)
      for (int64_t j = 0; j < geo.groups; ++j) add_product(acc[j], rows[j].t(), sketch[j]);
    } else {
      const at::Tensor weighted = rows * w;
      for (int64_t j = 0; j < geo.groups; ++j) add_gram_upper(acc[j], rows[j], weighted[j]);
    }
  }
  if (!om.defined())
    for (int64_t j = 0; j < geo.groups; ++j) for_each_block_pair(acc[j], lower_plus_upper);
}

/// curvfast::patch_gram with the device's im2col: the checks, then a new float64 accumulator
/// (g, d, d or l) filled by patch_gram_accumulate.
inline at::Tensor patch_gram_op(const at::Tensor& x, const at::Tensor& mask, at::IntArrayRef kernel,
                                at::IntArrayRef stride, at::IntArrayRef dilation, int64_t groups,
                                const c10::optional<at::Tensor>& omega, Im2colTile im2col) {
  const PatchGeometry geo = check_patch_gram(x, mask, kernel, stride, dilation, groups, omega);
  const int64_t cols = omega.has_value() ? omega->size(2) : geo.dim;
  at::Tensor acc = at::zeros({geo.groups, geo.dim, cols}, x.options().dtype(at::kDouble));
  patch_gram_accumulate(acc, x, mask, omega, geo, im2col);
  return acc;
}

/// curvfast::patch_gram_add_ with the device's im2col: the checks, then acc += the product.
inline void patch_gram_add_op(at::Tensor& acc, const at::Tensor& x, const at::Tensor& mask,
                              at::IntArrayRef kernel, at::IntArrayRef stride,
                              at::IntArrayRef dilation, int64_t groups,
                              const c10::optional<at::Tensor>& omega, Im2colTile im2col) {
  const PatchGeometry geo = check_patch_gram(x, mask, kernel, stride, dilation, groups, omega);
  check_patch_gram_acc(acc, geo, x, omega);
  patch_gram_accumulate(acc, x, mask, omega, geo, im2col);
}

}  // namespace curvfast
