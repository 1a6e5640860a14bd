// Launch-size helpers shared by the CUDA kernels of the op folders.
#pragma once
#include <algorithm>
#include <cstdint>

namespace fastad {

// Blocks of `threads` threads covering `work` items with a grid-stride loop, at most `max_blocks`
// (the loop does the rest), at least 1.
inline unsigned blocks_for(int64_t work, int threads, int64_t max_blocks = 65535) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, max_blocks)));
}

}  // namespace fastad
