// Unit tests of the GRPO CPU kernels (similarity, advantages, parallel_for); called from
// main() in test_main.cpp. Expected values are derived by hand in the comments.
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <vector>

#include "ftib/grpo_kernels.h"
#include "ftib/parallel.h"

namespace {
int failures = 0;
#define GK_CHECK(cond)                                                               \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                                    \
    }                                                                                \
  } while (0)
bool near(double a, double b, double tol = 1e-5) { return std::fabs(a - b) <= tol; }

void test_parallel_for_covers_range_once() {
  for (int threads : {1, 2, 7}) {
    std::vector<std::atomic<int>> hits(1000);
    ftib::parallel_for(1000, 10, threads, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) hits[i]++;
    });
    bool ok = true;
    for (auto &h : hits) ok = ok && h.load() == 1;
    GK_CHECK(ok);
  }
  bool thrown = false;
  try {
    ftib::parallel_for(100, 1, 4, [](std::int64_t lo, std::int64_t) {
      if (lo > 0) throw std::runtime_error("boom");
    });
  } catch (const std::runtime_error &) {
    thrown = true;
  }
  GK_CHECK(thrown);
}

void test_similarity_by_hand() {
  // Two completions, T = 3, H = 2. Row 0 pools tokens 0 and 2: mean((1,0),(1,2)) = (1,1),
  // cosine with ref (1,1) is 1. Row 1 pools only token 1 = (0,3), cosine with (1,0) is 0.
  const std::vector<float> hidden = {1, 0, 5, 5, 1, 2, /* row 1 */ 9, 9, 0, 3, 9, 9};
  const std::vector<float> mask = {1, 0, 1, 0, 1, 0};
  const std::vector<float> ref = {1, 1, 1, 0};
  std::vector<float> out(2);
  ftib::embedding_similarity(hidden.data(), ftib::ScalarKind::f32, mask.data(), 2, 3, 2,
                             ref.data(), 2, nullptr, false, 0.0, out.data(), 2);
  GK_CHECK(near(out[0], 1.0));
  GK_CHECK(near(out[1], 0.0));
  // index swaps the references: row 0 vs (1,0) -> 1/sqrt(2); row 1 vs (1,1) -> 1/sqrt(2).
  const std::vector<std::int64_t> index = {1, 0};
  ftib::embedding_similarity(hidden.data(), ftib::ScalarKind::f32, mask.data(), 2, 3, 2,
                             ref.data(), 2, index.data(), false, 0.0, out.data(), 1);
  GK_CHECK(near(out[0], 1.0 / std::sqrt(2.0)));
  GK_CHECK(near(out[1], 1.0 / std::sqrt(2.0)));
  // Threshold 0.5: (0.7071 - 0.5) / 0.5 = 0.4142; and a score below tau clamps to 0.
  ftib::embedding_similarity(hidden.data(), ftib::ScalarKind::f32, mask.data(), 2, 3, 2,
                             ref.data(), 2, index.data(), true, 0.5, out.data(), 1);
  GK_CHECK(near(out[0], 2.0 / std::sqrt(2.0) - 1.0));
  ftib::embedding_similarity(hidden.data(), ftib::ScalarKind::f32, mask.data(), 2, 3, 2,
                             ref.data(), 2, nullptr, true, 0.5, out.data(), 1);
  GK_CHECK(near(out[1], 0.0));
  // An all-masked row pools to zeros and scores 0 (no NaN).
  const std::vector<float> no_mask(6, 0.f);
  ftib::embedding_similarity(hidden.data(), ftib::ScalarKind::f32, no_mask.data(), 2, 3, 2,
                             ref.data(), 2, nullptr, false, 0.0, out.data(), 1);
  GK_CHECK(out[0] == 0.f && out[1] == 0.f);
  // Out-of-range index is an error, not a read past the buffer.
  const std::vector<std::int64_t> bad = {0, 2};
  bool thrown = false;
  try {
    ftib::embedding_similarity(hidden.data(), ftib::ScalarKind::f32, mask.data(), 2, 3, 2,
                               ref.data(), 2, bad.data(), false, 0.0, out.data(), 1);
  } catch (const std::invalid_argument &) {
    thrown = true;
  }
  GK_CHECK(thrown);
}

void test_pool_half_types() {
  // bf16 0x3F80 = 1.0, 0x4000 = 2.0; f16 0x3C00 = 1.0, 0x4000 = 2.0, 0x0001 = 2^-24.
  const std::vector<std::uint16_t> bf = {0x3F80, 0x4000, 0x4000, 0x4000};
  const std::vector<std::uint16_t> hf = {0x3C00, 0x4000, 0x4000, 0x0001};
  const std::vector<float> mask = {1, 1};
  std::vector<float> out(2);
  ftib::masked_mean_pool(bf.data(), ftib::ScalarKind::bf16, mask.data(), 1, 2, 2, out.data(), 1);
  GK_CHECK(near(out[0], 1.5) && near(out[1], 2.0));
  ftib::masked_mean_pool(hf.data(), ftib::ScalarKind::f16, mask.data(), 1, 2, 2, out.data(), 1);
  GK_CHECK(near(out[0], 1.5) && near(out[1], 1.0));
  // Only token 1: (2, 2^-24), the subnormal survives the widening exactly.
  const std::vector<float> second = {0, 1};
  ftib::masked_mean_pool(hf.data(), ftib::ScalarKind::f16, second.data(), 1, 2, 2, out.data(), 1);
  GK_CHECK(out[0] == 2.f && out[1] == static_cast<float>(std::ldexp(1.0, -24)));
}

void test_advantages_by_hand() {
  // Groups {1,2,3} and {5,5,5}: means 2 and 5, unbiased stds 1 and 0.
  const std::vector<float> r = {1, 2, 3, 5, 5, 5};
  std::vector<float> adv(6), mean(2), std_(2);
  double zero = ftib::group_advantages(r.data(), 6, 3, ftib::AdvantageScale::group, 1e-4,
                                       adv.data(), mean.data(), std_.data(), 2);
  GK_CHECK(near(mean[0], 2) && near(mean[1], 5) && near(std_[0], 1) && std_[1] == 0.f);
  GK_CHECK(near(adv[0], -1 / 1.0001) && near(adv[2], 1 / 1.0001) && adv[4] == 0.f);
  GK_CHECK(near(zero, 0.5));
  ftib::group_advantages(r.data(), 6, 3, ftib::AdvantageScale::none, 1e-4, adv.data(),
                         mean.data(), std_.data(), 1);
  GK_CHECK(near(adv[0], -1) && near(adv[2], 1));
  // Batch std of {1,2,3,5,5,5}: mean 3.5, squared deviations sum 15.5, /5 -> sqrt(3.1).
  zero = ftib::group_advantages(r.data(), 6, 3, ftib::AdvantageScale::batch, 1e-4, adv.data(),
                                mean.data(), std_.data(), 1);
  GK_CHECK(near(adv[0], -1 / (std::sqrt(3.1) + 1e-4)));
  GK_CHECK(zero == 0.0);
  // A group of one: std 0, advantage 0, every group counts as zero-std (6 groups, so
  // the per-group outputs need 6 slots).
  std::vector<float> mean6(6), std6(6);
  zero = ftib::group_advantages(r.data(), 6, 1, ftib::AdvantageScale::group, 1e-4, adv.data(),
                                mean6.data(), std6.data(), 1);
  GK_CHECK(zero == 1.0 && adv[3] == 0.f && std6[0] == 0.f && std6[5] == 0.f);
  bool thrown = false;
  try {
    ftib::group_advantages(r.data(), 6, 4, ftib::AdvantageScale::group, 1e-4, adv.data(),
                           mean.data(), std_.data(), 1);
  } catch (const std::invalid_argument &) {
    thrown = true;
  }
  GK_CHECK(thrown);
}

void test_advantages_nan_and_constant_groups() {
  // {0.7, 0.7, 0.7}: exactly mean 0.7, std 0, advantages 0 (float32 sums are inexact).
  // {1, NaN, 3}: nan-aware mean 2, std sqrt(2); the NaN reward's advantage is 0.
  // {NaN, 4, NaN}: one reward, std NaN (not zero-std), every advantage 0.
  const float nan = std::nanf("");
  const std::vector<float> r = {0.7f, 0.7f, 0.7f, 1, nan, 3, nan, 4, nan};
  std::vector<float> adv(9), mean(3), std_(3);
  double zero = ftib::group_advantages(r.data(), 9, 3, ftib::AdvantageScale::group, 1e-4,
                                       adv.data(), mean.data(), std_.data(), 2);
  GK_CHECK(mean[0] == 0.7f && std_[0] == 0.f && adv[0] == 0.f && adv[1] == 0.f && adv[2] == 0.f);
  GK_CHECK(near(mean[1], 2) && near(std_[1], std::sqrt(2.0)) && adv[4] == 0.f);
  GK_CHECK(near(adv[3], -1 / (std::sqrt(2.0) + 1e-4)) && near(adv[5], 1 / (std::sqrt(2.0) + 1e-4)));
  GK_CHECK(mean[2] == 4.f && std::isnan(std_[2]) && adv[6] == 0.f && adv[7] == 0.f && adv[8] == 0.f);
  GK_CHECK(near(zero, 1.0 / 3.0));
}
}  // namespace

int run_grpo_kernel_tests() {
  test_parallel_for_covers_range_once();
  test_similarity_by_hand();
  test_pool_half_types();
  test_advantages_by_hand();
  test_advantages_nan_and_constant_groups();
  return failures;
}
