// Philox4x32-10 counter-based random number generator (Salmon, Moraes, Dror & Shaw,
// "Parallel Random Numbers: As Easy as 1, 2, 3", SC'11), header-only for host and device.
//
// One call maps a 128-bit counter (c0, c1, c2, c3) and a 64-bit key (k0, k1) to 128 random
// bits. A round is
//   (hi0, lo0) = 0xD2511F53 * c0,  (hi1, lo1) = 0xCD9E8D57 * c2   (32x32 -> 64-bit products)
//   c' = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
// and the key is bumped by the Weyl increments (0x9E3779B9, 0xBB67AE85) between rounds.
#pragma once

#include <cstdint>

#include "macros.h"

namespace curvfast {

struct Philox4 {
  uint32_t v[4];
};

/// Philox4x32 with 10 rounds applied to counter (c0, c1, c2, c3) under key (k0, k1).
CURVFAST_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                  uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
  }
  return Philox4{{c0, c1, c2, c3}};
}

/// 53 random bits from two 32-bit words: (hi << 21) ^ (lo >> 11), in [0, 2^53).
CURVFAST_HD uint64_t bits53(uint32_t hi, uint32_t lo) {
  return (static_cast<uint64_t>(hi) << 21) ^ static_cast<uint64_t>(lo >> 11);
}

}  // namespace curvfast
