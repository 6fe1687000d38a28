// Group-relative advantages (GRPO, Shao et al. 2024), computed as TRL's GRPOTrainer does.
// Statistics use float64 two-pass sums over the non-NaN rewards: reward vectors are small,
// exactness is cheap (a constant group gets advantages exactly 0).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>
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

  // TRL's statistics are nan-aware (a NaN reward is an unscorable completion): mean and
  // Bessel-corrected std over the non-NaN rewards, std NaN with fewer than two of them.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> mean64(static_cast<std::size_t>(groups));
  std::vector<double> std64(static_cast<std::size_t>(groups));
  parallel_for(groups, grain, threads, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t g = lo; g < hi; ++g) {
      const float *r = rewards + g * G;
      double sum = 0.0;
      std::int64_t count = 0;
      for (std::int64_t i = 0; i < G; ++i)
        if (!std::isnan(r[i])) sum += r[i], ++count;
      const double mean = count ? sum / static_cast<double>(count) : nan;
      double m2 = 0.0;
      for (std::int64_t i = 0; i < G; ++i)
        if (!std::isnan(r[i])) m2 += (r[i] - mean) * (r[i] - mean);
      // A group of one has no spread (TRL uses 0 there).
      const double s = G == 1 ? 0.0 : count > 1 ? std::sqrt(m2 / static_cast<double>(count - 1)) : nan;
      mean64[g] = mean;
      std64[g] = s;
      group_mean[g] = static_cast<float>(mean);
      group_std[g] = static_cast<float>(s);
    }
  });

  double batch_std = 0.0;
  if (scale == AdvantageScale::batch && n > 1) {
    double sum = 0.0;
    std::int64_t count = 0;
    for (std::int64_t i = 0; i < n; ++i)
      if (!std::isnan(rewards[i])) sum += rewards[i], ++count;
    const double mean = count ? sum / static_cast<double>(count) : nan;
    double m2 = 0.0;
    for (std::int64_t i = 0; i < n; ++i)
      if (!std::isnan(rewards[i])) m2 += (rewards[i] - mean) * (rewards[i] - mean);
    batch_std = count > 1 ? std::sqrt(m2 / static_cast<double>(count - 1)) : nan;
  }

  // torch.isclose(std, 0) with its default atol (false for NaN).
  auto is_zero = [](double s) { return std::fabs(s) <= 1e-8; };
  std::int64_t zero = 0;
  for (std::int64_t g = 0; g < groups; ++g) {
    const double s = scale == AdvantageScale::batch ? batch_std : std64[g];
    if (is_zero(s)) zero += G;
    const double mean = mean64[g];
    // float64 throughout: a constant group gets exactly 0. A NaN advantage (unscorable
    // reward, or a group without a defined std) becomes 0, as TRL's nan_to_num.
    for (std::int64_t i = g * G; i < (g + 1) * G; ++i) {
      const double centred = rewards[i] - mean;
      const double a = scale == AdvantageScale::none ? centred : centred / (s + eps);
      adv[i] = std::isnan(a) ? 0.f : static_cast<float>(a);
    }
  }
  return n > 0 ? static_cast<double>(zero) / static_cast<double>(n) : 0.0;
}

}  // namespace ftib
