// CPU kernels of the GRPO hot path: embedding-reward similarity and group-relative
// advantages. Inputs are raw contiguous buffers; shapes are checked by the caller
// (ftib.kernels) and again here where a bad value would read out of bounds.
#pragma once

#include <cstdint>

namespace ftib {

// Element type of a floating-point input buffer. Half types are read as raw uint16 bits
// and widened to float32; all accumulation is float32 (norms and dots) or float64
// (reward statistics).
enum class ScalarKind : int { f32 = 0, bf16 = 1, f16 = 2 };

// Masked mean pooling: out[n, :] = sum_t mask[n, t] * hidden[n, t, :] / sum_t mask[n, t],
// or zeros where the mask sums to 0. hidden (N, T, H) of `kind`, mask (N, T) float32,
// out (N, H) float32.
void masked_mean_pool(const void *hidden, ScalarKind kind, const float *mask, std::int64_t N,
                      std::int64_t T, std::int64_t H, float *out, int threads);

// Fused similarity reward: masked mean pooling of hidden (N, T, H), L2 normalisation
// (norm clamped to 1e-12, as torch.nn.functional.normalize), cosine with ref[index[n]]
// (ref (M, H) float32, index (N,) int64 or nullptr for index[n] = n), then, when
// has_threshold, the rescale max(0, (s - tau) / (1 - tau)). out (N,) float32.
// Throws std::invalid_argument for an index outside [0, M).
void embedding_similarity(const void *hidden, ScalarKind kind, const float *mask, std::int64_t N,
                          std::int64_t T, std::int64_t H, const float *ref, std::int64_t M,
                          const std::int64_t *index, bool has_threshold, double threshold,
                          float *out, int threads);

enum class AdvantageScale : int { group = 0, batch = 1, none = 2 };

// Group-relative advantages as TRL's GRPOTrainer computes them, in float64. rewards (n,)
// float32 with n = groups * group_size, NaN = unscorable; mean and std are per group over
// the non-NaN rewards (unbiased std, NaN with fewer than two, 0 for a group of one);
// adv = (r - group mean) / (s + eps) where s is the group std (`group`), the nan-aware
// std of the whole batch (`batch`, 0 if n == 1), or adv = r - group mean (`none`); a NaN
// advantage becomes 0. Returns the share of elements whose scaling std is 0
// (torch.isclose(s, 0): |s| <= 1e-8), i.e. the share of zero-std groups in `group`/`none`.
double group_advantages(const float *rewards, std::int64_t n, std::int64_t group_size,
                        AdvantageScale scale, double eps, float *adv, float *group_mean,
                        float *group_std, int threads);

}  // namespace ftib
