// Launch geometry for the simple grid-stride CUDA kernels of curvfast.
#pragma once

#include <algorithm>
#include <cstdint>

namespace curvfast {

constexpr int kThreads = 256;

/// Blocks for n work items with kThreads threads each (kernels loop grid-stride).
inline unsigned int num_blocks(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
}

/// Blocks for kernels that give each of n rows a whole block (grid-stride over rows).
inline unsigned int grid_rows(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>(std::max<int64_t>(n, 1), 65535));
}

}  // namespace curvfast
