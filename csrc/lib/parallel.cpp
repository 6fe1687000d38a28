#include "ftib/parallel.h"

#include <algorithm>
#include <exception>
#include <mutex>
#include <system_error>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace ftib {

void parallel_for(std::int64_t n, std::int64_t grain, int threads,
                  const std::function<void(std::int64_t, std::int64_t)> &fn) {
  if (n <= 0) return;
  grain = std::max<std::int64_t>(grain, 1);
  std::int64_t parts = std::min<std::int64_t>(std::max(threads, 1), (n + grain - 1) / grain);
  if (parts <= 1) {
    fn(0, n);
    return;
  }
  const std::int64_t step = (n + parts - 1) / parts;
  std::exception_ptr error;
  std::mutex error_mutex;
  auto run = [&](std::int64_t lo, std::int64_t hi) {
    try {
      fn(lo, hi);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
  std::vector<std::thread> workers;
  workers.reserve(static_cast<std::size_t>(parts - 1));
  for (std::int64_t p = 1; p < parts; ++p) {
    const std::int64_t lo = p * step, hi = std::min(n, lo + step);
    if (lo >= hi) continue;
    try {
      workers.emplace_back(run, lo, hi);
    } catch (const std::system_error &e) {
      // Join the started workers (their parts finish) instead of std::terminate.
      for (auto &w : workers) w.join();
      throw std::runtime_error("could not start worker thread " + std::to_string(p) + " of " +
                               std::to_string(parts) + " (" + e.what() + "); use fewer threads");
    }
  }
  run(0, std::min(n, step));
  for (auto &w : workers) w.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace ftib
