// Per-row reductions shared by the CPU and CUDA kernels; all accumulate in double.
//
// A row is summed in kLanes interleaved partial sums: element d goes to partial d % kLanes,
// and the partials are added in lane order at the end. On the CPU this breaks the serial
// dependency chain of one accumulator (the compiler vectorises the lanes); on CUDA a block
// of kLanes threads computes the same partials, one per thread, so both backends add the same
// numbers in the same order.
#pragma once

#include <cstdint>

#include "macros.h"

namespace curvfast {

constexpr int kLanes = 256;

/// Partial sum of lane `lane`: sum over d = lane, lane + kLanes, ... of a(v[d], h[d]).
template <typename scalar_t, typename Term>
CURVFAST_HD double lane_partial(const scalar_t* v, const scalar_t* h, int64_t D, int lane,
                                Term term) {
  double acc = 0.0;
  for (int64_t d = lane; d < D; d += kLanes)
    acc += term(static_cast<double>(v[d]), static_cast<double>(h[d]));
  return acc;
}

/// Partial sums of lane `lane` for two statistics in one pass over memory.
template <typename scalar_t, typename TermA, typename TermB>
CURVFAST_HD void lane_partials(const scalar_t* v, const scalar_t* h, int64_t D, int lane,
                               TermA a, TermB b, double* pa, double* pb) {
  double sa = 0.0, sb = 0.0;
  for (int64_t d = lane; d < D; d += kLanes) {
    const double x = static_cast<double>(v[d]), y = static_cast<double>(h[d]);
    sa += a(x, y);
    sb += b(x, y);
  }
  *pa = sa;
  *pb = sb;
}

/// Host version, one statistic: all lanes, added in lane order.
template <typename scalar_t, typename Term>
inline double lane_sum(const scalar_t* v, const scalar_t* h, int64_t D, Term a) {
  double pa[kLanes] = {0.0};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes)
    for (int l = 0; l < kLanes; ++l)  // independent lanes: vectorised by the compiler
      pa[l] += a(static_cast<double>(v[d + l]), static_cast<double>(h[d + l]));
  for (int l = 0; d + l < D; ++l)
    pa[l] += a(static_cast<double>(v[d + l]), static_cast<double>(h[d + l]));
  double sa = 0.0;
  for (int l = 0; l < kLanes; ++l) sa += pa[l];
  return sa;
}

/// Host version, two statistics in one pass over memory: (sum a, sum b).
template <typename scalar_t, typename TermA, typename TermB>
inline void lane_sums(const scalar_t* v, const scalar_t* h, int64_t D, TermA a, TermB b,
                      double* out_a, double* out_b) {
  double pa[kLanes] = {0.0}, pb[kLanes] = {0.0};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    for (int l = 0; l < kLanes; ++l) {  // independent lanes: vectorised by the compiler
      const double x = static_cast<double>(v[d + l]), y = static_cast<double>(h[d + l]);
      pa[l] += a(x, y);
      pb[l] += b(x, y);
    }
  }
  for (int l = 0; d + l < D; ++l) {
    const double x = static_cast<double>(v[d + l]), y = static_cast<double>(h[d + l]);
    pa[l] += a(x, y);
    pb[l] += b(x, y);
  }
  double sa = 0.0, sb = 0.0;
  for (int l = 0; l < kLanes; ++l) {
    sa += pa[l];
    sb += pb[l];
  }
  *out_a = sa;
  *out_b = sb;
}

struct SqTerm {  // x^2 (second argument ignored)
  CURVFAST_HD double operator()(double x, double) const { return x * x; }
};
struct DotTerm {  // x * y
  CURVFAST_HD double operator()(double x, double y) const { return x * y; }
};
struct SqSecondTerm {  // y^2
  CURVFAST_HD double operator()(double, double y) const { return y * y; }
};

/// Welford's update of a batch (mean mb, squared deviations m2b) with the p-th value q (0-based).
CURVFAST_HD void welford_push(double* mb, double* m2b, double q, int64_t p) {
  const double delta = q - *mb;
  *mb += delta / static_cast<double>(p + 1);
  *m2b += delta * (q - *mb);
}

/// Chan et al.'s merge of a batch of P values (mb, m2b) into running (mean, m2, count):
/// n = count + P, delta = mb - mean, mean' = mean + delta P / n,
/// m2' = m2 + m2b + delta^2 count P / n.
CURVFAST_HD void chan_merge(double mean, double m2, int64_t count, double mb, double m2b,
                            int64_t P, double* mean_out, double* m2_out) {
  const double n = static_cast<double>(count + P);
  const double delta = mb - mean;
  *mean_out = mean + delta * static_cast<double>(P) / n;
  *m2_out = m2 + m2b + delta * delta * static_cast<double>(count) * static_cast<double>(P) / n;
}

}  // namespace curvfast
