// Portable log, sin and cos that give bit-identical results on every IEEE-754 platform.
//
// They use only +, -, *, / and sqrt on doubles (correctly rounded on CPUs and GPUs alike),
// exact integer / bit manipulation, and a fixed evaluation order. Builds must disable
// floating-point contraction into FMA (g++ -ffp-contract=off, nvcc --fmad=false).
// curvfast/ops/reference.py repeats the same arithmetic in numpy, operation by operation.
#pragma once

#include <cstdint>
#include <cstring>

#include "macros.h"

namespace curvfast {

CURVFAST_HD uint64_t double_to_bits(double x) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
#endif
}

CURVFAST_HD double bits_to_double(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
#endif
}

/// Natural logarithm of a positive, normal, finite double x.
///
/// x = m * 2^e exactly (bit manipulation) with m in [sqrt(1/2), sqrt(2)); then
/// log m = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ... + s^25/25), s = (m - 1) / (m + 1),
/// |s| <= 0.1716 (truncation error < 1e-19), and log x = e ln2_hi + (log m + e ln2_lo)
/// with ln 2 split so that e * ln2_hi is exact.
CURVFAST_HD double portable_log(double x) {
  const uint64_t bits = double_to_bits(x);
  int64_t e = static_cast<int64_t>((bits >> 52) & 0x7FF) - 1023;
  double m = bits_to_double((bits & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);
  if (m > 0x1.6a09e667f3bcdp+0) {  // sqrt(2)
    m = m * 0.5;
    e = e + 1;
  }
  const double s = (m - 1.0) / (m + 1.0);
  const double s2 = s * s;
  double t = 0x1.47ae147ae147bp-5;  // 1/25
  t = t * s2 + 0x1.642c8590b2164p-5;  // 1/23
  t = t * s2 + 0x1.8618618618618p-5;  // 1/21
  t = t * s2 + 0x1.af286bca1af28p-5;  // 1/19
  t = t * s2 + 0x1.e1e1e1e1e1e1ep-5;  // 1/17
  t = t * s2 + 0x1.1111111111111p-4;  // 1/15
  t = t * s2 + 0x1.3b13b13b13b14p-4;  // 1/13
  t = t * s2 + 0x1.745d1745d1746p-4;  // 1/11
  t = t * s2 + 0x1.c71c71c71c71cp-4;  // 1/9
  t = t * s2 + 0x1.2492492492492p-3;  // 1/7
  t = t * s2 + 0x1.999999999999ap-3;  // 1/5
  t = t * s2 + 0x1.5555555555555p-2;  // 1/3
  t = t * s2;
  const double log_m = 2.0 * s + 2.0 * (s * t);
  const double ed = static_cast<double>(e);
  return ed * 0x1.62e42fee00000p-1 + (log_m + ed * 0x1.a39ef35793c76p-33);  // ln2 hi, lo
}

/// sin x and cos x by Taylor series for |x| <= pi/4 (terms up to x^21 / x^20; truncation
/// error < 1e-22).
CURVFAST_HD void portable_sincos_small(double x, double* sin_out, double* cos_out) {
  const double x2 = x * x;
  double s = -0x1.71b8ef6dcf572p-66;  // -1/21!
  s = s * x2 + 0x1.2f49b46814157p-57;  // 1/19!
  s = s * x2 - 0x1.952c77030ad4ap-49;  // 1/17!
  s = s * x2 + 0x1.ae7f3e733b81fp-41;  // 1/15!
  s = s * x2 - 0x1.6124613a86d09p-33;  // 1/13!
  s = s * x2 + 0x1.ae64567f544e4p-26;  // 1/11!
  s = s * x2 - 0x1.71de3a556c734p-19;  // 1/9!
  s = s * x2 + 0x1.a01a01a01a01ap-13;  // 1/7!
  s = s * x2 - 0x1.1111111111111p-7;   // 1/5!
  s = s * x2 + 0x1.5555555555555p-3;   // 1/3!
  *sin_out = x - x * (x2 * s);
  double c = 0x1.e542ba4020225p-62;    // 1/20!
  c = c * x2 - 0x1.6827863b97d97p-53;  // 1/18!
  c = c * x2 + 0x1.ae7f3e733b81fp-45;  // 1/16!
  c = c * x2 - 0x1.93974a8c07c9dp-37;  // 1/14!
  c = c * x2 + 0x1.1eed8eff8d898p-29;  // 1/12!
  c = c * x2 - 0x1.27e4fb7789f5cp-22;  // 1/10!
  c = c * x2 + 0x1.a01a01a01a01ap-16;  // 1/8!
  c = c * x2 - 0x1.6c16c16c16c17p-10;  // 1/6!
  c = c * x2 + 0x1.5555555555555p-5;   // 1/4!
  c = c * x2 - 0.5;                    // 1/2!
  *cos_out = 1.0 + x2 * c;
}

/// sin and cos of 2 pi u for the dyadic u = b * 2^-53, b in [0, 2^53).
///
/// Exact reduction in integers: 4u = q + r with q = round(4u) and r in [-1/2, 1/2], so
/// 2 pi u = q pi/2 + x with x = r pi/2 (|x| <= pi/4), then rotate by the quadrant q mod 4.
CURVFAST_HD void portable_sincos_2pi(uint64_t b, double* sin_out, double* cos_out) {
  const int64_t q = static_cast<int64_t>((b + (1ull << 50)) >> 51);
  const double r = static_cast<double>(static_cast<int64_t>(b) - (q << 51)) * 0x1p-51;
  const double x = r * 0x1.921fb54442d18p+0 + r * 0x1.1a62633145c07p-54;  // pi/2 hi, lo
  double s, c;
  portable_sincos_small(x, &s, &c);
  switch (q & 3) {
    case 0: *sin_out = s; *cos_out = c; break;
    case 1: *sin_out = c; *cos_out = -s; break;
    case 2: *sin_out = -s; *cos_out = -c; break;
    default: *sin_out = -c; *cos_out = s; break;
  }
}

}  // namespace curvfast
