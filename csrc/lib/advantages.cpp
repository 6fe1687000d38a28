// Group-relative advantages (GRPO, Shao et al. 2024), computed as TRL's GRPOTrainer does.
// Statistics use float64 two-pass sums: reward vectors are small, exactness is cheap.
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "ftib/grpo_kernels.h"
#include "ftib/parallel.h"

namespace ftib {

double group_advantages(const float *rewards, std::int64_t n, std::int64_t group_size,
                        AdvantageScale scale, double eps, float *adv, float *group_mean,
                        float *group_std, int threads) {
  if (group_size <= 0)
    throw std::invalid_argument("group_advantages: group_size must be >= 1, got " +
                                std::to_string(group_size));
  if (n < 0 || n % group_size != 0)
    throw std::invalid_argument("group_advantages: rewards length " + std::to_string(n) +
                                " is not a multiple of group_size " + std::to_string(group_size));
  const std::int64_t groups = n / group_size;
  const std::int64_t G = group_size;
  const std::int64_t grain = std::max<std::int64_t>(1, (1 << 16) / G);

  parallel_for(groups, grain, threads, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t g = lo; g < hi; ++g) {
      const float *r = rewards + g * G;
      double sum = 0.0;
      for (std::int64_t i = 0; i < G; ++i) sum += r[i];
      const double mean = sum / static_cast<double>(G);
      double m2 = 0.0;
      for (std::int64_t i = 0; i < G; ++i) m2 += (r[i] - mean) * (r[i] - mean);
      // Unbiased std; a group of one has no spread (TRL uses 0 there too).
      group_mean[g] = static_cast<float>(mean);
      group_std[g] = G > 1 ? static_cast<float>(std::sqrt(m2 / static_cast<double>(G - 1))) : 0.f;
    }
  });

  float batch_std = 0.f;
  if (scale == AdvantageScale::batch && n > 1) {
    double sum = 0.0;
    for (std::int64_t i = 0; i < n; ++i) sum += rewards[i];
    const double mean = sum / static_cast<double>(n);
    double m2 = 0.0;
    for (std::int64_t i = 0; i < n; ++i) m2 += (rewards[i] - mean) * (rewards[i] - mean);
    batch_std = static_cast<float>(std::sqrt(m2 / static_cast<double>(n - 1)));
  }

  // torch.isclose(std, 0) with its default atol.
  auto is_zero = [](float s) { return std::fabs(s) <= 1e-8f; };
  std::int64_t zero = 0;
  for (std::int64_t g = 0; g < groups; ++g) {
    const float s = scale == AdvantageScale::batch ? batch_std : group_std[g];
    if (is_zero(s)) zero += G;
    const float mean = group_mean[g];
    // Same float32 arithmetic as the eager reference: (r - mean) / (std + eps).
    const float denom = s + static_cast<float>(eps);
    for (std::int64_t i = g * G; i < (g + 1) * G; ++i) {
      const float centred = rewards[i] - mean;
      adv[i] = scale == AdvantageScale::none ? centred : centred / denom;
    }
  }
  return n > 0 ? static_cast<double>(zero) / static_cast<double>(n) : 0.0;
}

}  // namespace ftib
