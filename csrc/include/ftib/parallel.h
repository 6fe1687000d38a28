// A small fork-join parallel loop for the CPU kernels. _C does not link libtorch, so it
// cannot use at::parallel_for; the caller passes the thread count (Python passes
// torch.get_num_threads()) so native kernels follow the same setting as torch.
#pragma once

#include <cstdint>
#include <functional>

namespace ftib {

// Runs fn(lo, hi) over [0, n) split into at most `threads` contiguous ranges of at least
// `grain` items; the calling thread runs the first range. An exception thrown by any
// range is rethrown in the caller after all ranges finish.
void parallel_for(std::int64_t n, std::int64_t grain, int threads,
                  const std::function<void(std::int64_t, std::int64_t)> &fn);

}  // namespace ftib
