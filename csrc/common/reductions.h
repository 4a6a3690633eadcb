// Per-row reductions shared by the CPU and CUDA kernels; all accumulate in double.
#pragma once

#include <cstdint>

#include "macros.h"

namespace curvfast {

/// w * sum_d v[d]^2 over one row of length D.
template <typename scalar_t>
CURVFAST_HD double weighted_sq_norm(const scalar_t* v, int64_t D, scalar_t w) {
  double acc = 0.0;
  for (int64_t d = 0; d < D; ++d) {
    const double x = static_cast<double>(v[d]);
    acc += x * x;
  }
  return static_cast<double>(w) * acc;
}

/// Merges the P probe statistics of one sample into its running (mean, m2, count) state.
///
/// For probe p: q0 = sum_d v[p,d] hv[p,d] (v^T H v) and q1 = sum_d hv[p,d]^2 (|Hv|^2). The
/// batch mean mb and sum of squared deviations M2b of each statistic come from Welford's
/// online update; they merge into the state by Chan et al.'s parallel update with
/// n = count + P, delta = mb - mean: mean' = mean + delta P / n and
/// m2' = m2 + M2b + delta^2 count P / n. mean/m2 hold the two statistics (q0, q1).
template <typename scalar_t>
CURVFAST_HD void probe_moments_sample(const scalar_t* v, const scalar_t* hv, int64_t P,
                                      int64_t D, int64_t count, const double* mean,
                                      const double* m2, double* mean_out, double* m2_out) {
  double mb[2] = {0.0, 0.0}, m2b[2] = {0.0, 0.0};
  for (int64_t p = 0; p < P; ++p) {
    double q[2] = {0.0, 0.0};
    for (int64_t d = 0; d < D; ++d) {
      const double x = static_cast<double>(v[p * D + d]);
      const double h = static_cast<double>(hv[p * D + d]);
      q[0] += x * h;
      q[1] += h * h;
    }
    for (int i = 0; i < 2; ++i) {
      const double delta = q[i] - mb[i];
      mb[i] += delta / static_cast<double>(p + 1);
      m2b[i] += delta * (q[i] - mb[i]);
    }
  }
  const double n = static_cast<double>(count + P);
  for (int i = 0; i < 2; ++i) {
    const double delta = mb[i] - mean[i];
    mean_out[i] = mean[i] + delta * static_cast<double>(P) / n;
    m2_out[i] = m2[i] + m2b[i] +
                delta * delta * static_cast<double>(count) * static_cast<double>(P) / n;
  }
}

}  // namespace curvfast
