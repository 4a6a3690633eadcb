// Per-element probe generators and the per-sample logit-space factor, shared verbatim by the
// CPU and CUDA kernels.
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"
#include "philox.h"
#include "portable_math.h"

namespace curvfast {

/// Philox key (k0, k1) = (low, high) 32 bits of a non-negative int64 seed.
struct Key {
  uint32_t k0, k1;
};

CURVFAST_HD Key key_from_seed(int64_t seed) {
  const uint64_t s = static_cast<uint64_t>(seed);
  return Key{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32)};
}

/// Rademacher probe entries d0 .. d0+127 (d0 a multiple of 128) of global probe j of sample
/// s: bit (d % 32) of word (d % 128) / 32 of philox((d / 128, j, s_lo, s_hi), key) gives +1
/// (bit set) or -1. Writes min(128, dim - d0) values.
template <typename scalar_t>
CURVFAST_HD void rademacher_block(scalar_t* out, int64_t d0, int64_t dim, uint32_t j,
                                  uint64_t s, Key key) {
  const Philox4 r = philox4x32_10(static_cast<uint32_t>(d0 / 128), j, static_cast<uint32_t>(s),
                                  static_cast<uint32_t>(s >> 32), key.k0, key.k1);
  const int64_t n = dim - d0 < 128 ? dim - d0 : 128;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bit = (r.v[i / 32] >> (i % 32)) & 1u;
    out[i] = bit ? scalar_t(1) : scalar_t(-1);
  }
}

/// Gaussian probe entries d0, d0+1 (d0 even) by Box-Muller from
/// r = philox((d0 / 2, j, s_lo, s_hi), key): u1 = (a + 1) 2^-53 in (0, 1], u2 = b 2^-53 in
/// [0, 1) with a, b the 53-bit draws from (r0, r1) and (r2, r3); rho = sqrt(-2 log u1);
/// entry d0 = rho cos(2 pi u2), entry d0+1 = rho sin(2 pi u2). Writes min(2, dim - d0) values.
template <typename scalar_t>
CURVFAST_HD void gaussian_pair(scalar_t* out, int64_t d0, int64_t dim, uint32_t j, uint64_t s,
                               Key key) {
  const Philox4 r = philox4x32_10(static_cast<uint32_t>(d0 / 2), j, static_cast<uint32_t>(s),
                                  static_cast<uint32_t>(s >> 32), key.k0, key.k1);
  const uint64_t a = bits53(r.v[0], r.v[1]);
  const uint64_t b = bits53(r.v[2], r.v[3]);
  const double u1 = static_cast<double>(a + 1) * 0x1p-53;
  const double rho = sqrt(-2.0 * portable_log(u1));
  double sn, cs;
  portable_sincos_2pi(b, &sn, &cs);
  out[0] = static_cast<scalar_t>(rho * cs);
  if (d0 + 1 < dim) out[1] = static_cast<scalar_t>(rho * sn);
}

/// Strict total order used to pick the top classes: higher logit first, ties by lower index.
template <typename scalar_t>
CURVFAST_HD bool ranks_before(const scalar_t* z, int64_t a, int64_t b) {
  return z[a] > z[b] || (z[a] == z[b] && a < b);
}

/// The log-softmax shift of one sample, in double: ls_c = (z_c - zmax) - log_sum with
/// zmax = max_j z_j and log_sum = log(sum_j exp(z_j - zmax)).
struct LogSoftmax {
  double zmax, log_sum;
  template <typename scalar_t>
  CURVFAST_HD double operator()(const scalar_t* z, int64_t c) const {
    return (static_cast<double>(z[c]) - zmax) - log_sum;
  }
};

/// Cotangent entry (k, c) of u_k = e_{cls_k} - p: -p_c off the diagonal, 1 - p_c = -expm1(ls_c)
/// on it (accurate when p_c is close to 1).
template <typename scalar_t>
CURVFAST_HD scalar_t cotangent_entry(double log_p, bool diagonal) {
  return static_cast<scalar_t>(diagonal ? -expm1(log_p) : -exp(log_p));
}

/// Logit-space factor of one sample without its cotangents (see curvfast.ops.logit_factor for
/// the math): weights, classes and loss. Returns the log-softmax that the cotangents use.
///
/// z: C finite logits; y: label; s: sample id; num_exact < C selects stratified sampling
/// with num_tail strata (K = num_exact + num_tail), otherwise K = C with every class.
/// Outputs: w (K), cls (K), loss (1).
template <typename scalar_t>
CURVFAST_HD LogSoftmax logit_factor_weights(const scalar_t* z, int64_t C, int64_t y, uint64_t s,
                                            int64_t num_exact, int64_t num_tail, int64_t seed,
                                            scalar_t* w, int64_t* cls, scalar_t* loss) {
  double zmax = static_cast<double>(z[0]);
  for (int64_t c = 1; c < C; ++c) zmax = fmax(zmax, static_cast<double>(z[c]));
  double sum = 0.0;
  for (int64_t c = 0; c < C; ++c) sum += exp(static_cast<double>(z[c]) - zmax);
  const LogSoftmax ls{zmax, log(sum)};
  auto log_p = [&](int64_t c) { return ls(z, c); };
  *loss = static_cast<scalar_t>(-log_p(y));

  if (num_exact >= C) {
    for (int64_t c = 0; c < C; ++c) {
      cls[c] = c;
      w[c] = static_cast<scalar_t>(exp(log_p(c)));
    }
  } else {
    // Top num_exact classes by insertion into cls[0 .. num_exact), best first.
    int64_t n = 0;
    for (int64_t c = 0; c < C; ++c) {
      int64_t pos;
      if (n < num_exact) {
        pos = n++;
      } else if (num_exact > 0 && ranks_before(z, c, cls[num_exact - 1])) {
        pos = num_exact - 1;
      } else {
        continue;
      }
      while (pos > 0 && ranks_before(z, c, cls[pos - 1])) {
        cls[pos] = cls[pos - 1];
        --pos;
      }
      cls[pos] = c;
    }
    for (int64_t k = 0; k < num_exact; ++k) w[k] = static_cast<scalar_t>(exp(log_p(cls[k])));
    // The tail T is every class ranked after the last exact one, in ascending index order.
    const int64_t last_top = num_exact > 0 ? cls[num_exact - 1] : -1;
    auto in_tail = [&](int64_t c) { return last_top < 0 || ranks_before(z, last_top, c); };
    double p_tail = 0.0;
    for (int64_t c = 0; c < C; ++c)
      if (in_tail(c)) p_tail += exp(log_p(c));
    // Stratum j takes the first tail class whose cumulative mass exceeds
    // ((j + u_j) / num_tail) * P_T; the points increase with j, so one merge pass suffices.
    const Key key = key_from_seed(seed);
    const uint32_t s_lo = static_cast<uint32_t>(s), s_hi = static_cast<uint32_t>(s >> 32);
    auto target = [&](int64_t j) {
      const Philox4 r = philox4x32_10(static_cast<uint32_t>(j), 0x7A11u, s_lo, s_hi,
                                      key.k0 ^ 0xA511E9B3u, key.k1);
      const double u = static_cast<double>(bits53(r.v[0], r.v[1])) * 0x1p-53;
      return ((static_cast<double>(j) + u) / static_cast<double>(num_tail)) * p_tail;
    };
    const scalar_t w_tail = static_cast<scalar_t>(p_tail / static_cast<double>(num_tail));
    int64_t j = 0, last_positive = -1, last = -1;
    double cum = 0.0, next = target(0);
    for (int64_t c = 0; c < C && j < num_tail; ++c) {
      if (!in_tail(c)) continue;
      const double p = exp(log_p(c));
      cum += p;
      last = c;
      if (p > 0.0) last_positive = c;
      while (j < num_tail && cum > next) {
        cls[num_exact + j] = c;
        w[num_exact + j] = w_tail;
        if (++j < num_tail) next = target(j);
      }
    }
    // Points not reached by the cumulative sum (rounding, or P_T = 0): the last tail class
    // with p > 0, else the last tail class (the loop visited every tail class in this case).
    for (; j < num_tail; ++j) {
      cls[num_exact + j] = last_positive >= 0 ? last_positive : last;
      w[num_exact + j] = w_tail;
    }
  }
  return ls;
}

/// Logit-space factor of one sample: logit_factor_weights, then the K x C cotangents.
template <typename scalar_t>
CURVFAST_HD void logit_factor_sample(const scalar_t* z, int64_t C, int64_t y, uint64_t s,
                                     int64_t num_exact, int64_t num_tail, int64_t seed,
                                     scalar_t* cot, scalar_t* w, int64_t* cls, scalar_t* loss) {
  const LogSoftmax ls = logit_factor_weights(z, C, y, s, num_exact, num_tail, seed, w, cls, loss);
  const int64_t K = num_exact >= C ? C : num_exact + num_tail;
  for (int64_t c = 0; c < C; ++c) cot[c] = cotangent_entry<scalar_t>(ls(z, c), false);
  for (int64_t k = K - 1; k >= 0; --k) {
    scalar_t* row = cot + k * C;
    if (k > 0)
      for (int64_t c = 0; c < C; ++c) row[c] = cot[c];
    row[cls[k]] = cotangent_entry<scalar_t>(ls(z, cls[k]), true);
  }
}

}  // namespace curvfast
