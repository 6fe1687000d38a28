// Embedding-reward similarity on the CPU: masked mean pooling -> L2 normalisation ->
// cosine with the completion's reference -> optional threshold rescale, one pass over the
// hidden states, threaded over completions. Padding tokens (mask == 0) are skipped, not
// multiplied by zero, so the cost follows the real completion lengths.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "ftib/grpo_kernels.h"
#include "ftib/parallel.h"

// Runtime dispatch (not build-time hardware sniffing): the hot loops are compiled twice,
// for AVX2 and for the baseline ISA, and the loader picks one on the running CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(FTIB_SANITIZE)
#define FTIB_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FTIB_CLONES
#endif
#if defined(__GNUC__)
#define FTIB_INLINE inline __attribute__((always_inline))
#else
#define FTIB_INLINE inline
#endif

namespace ftib {
namespace {

FTIB_INLINE float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

FTIB_INLINE float bf16_to_float(std::uint16_t b) { return bits_to_float(std::uint32_t(b) << 16); }

// IEEE binary16 -> binary32, exact for normals, subnormals, infinities and NaN.
FTIB_INLINE float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  std::uint32_t exp = (h >> 10) & 0x1Fu;
  std::uint32_t mant = h & 0x3FFu;
  if (exp == 0x1F) return bits_to_float(sign | 0x7F800000u | (mant << 13));
  if (exp == 0) {
    if (mant == 0) return bits_to_float(sign);
    // Subnormal: value = mant * 2^-24.
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exp + 112u) << 23) | (mant << 13));
}

template <ScalarKind K>
FTIB_INLINE float load_elem(const void *base, std::int64_t i) {
  if constexpr (K == ScalarKind::f32) {
    return static_cast<const float *>(base)[i];
  } else if constexpr (K == ScalarKind::bf16) {
    return bf16_to_float(static_cast<const std::uint16_t *>(base)[i]);
  } else {
    return f16_to_float(static_cast<const std::uint16_t *>(base)[i]);
  }
}

// acc[0:H] = sum_t mask[t] * x[t, 0:H]; returns sum_t mask[t].
template <ScalarKind K>
FTIB_INLINE float pool_one(const void *x, const float *mask, std::int64_t T, std::int64_t H,
                           float *__restrict acc) {
  for (std::int64_t h = 0; h < H; ++h) acc[h] = 0.f;
  float msum = 0.f;
  for (std::int64_t t = 0; t < T; ++t) {
    const float m = mask[t];
    if (m == 0.f) continue;
    msum += m;
    const std::int64_t off = t * H;
    for (std::int64_t h = 0; h < H; ++h) acc[h] += m * load_elem<K>(x, off + h);
  }
  return msum;
}

FTIB_CLONES float pool_f32(const void *x, const float *mask, std::int64_t T, std::int64_t H,
                           float *acc) {
  return pool_one<ScalarKind::f32>(x, mask, T, H, acc);
}
FTIB_CLONES float pool_bf16(const void *x, const float *mask, std::int64_t T, std::int64_t H,
                            float *acc) {
  return pool_one<ScalarKind::bf16>(x, mask, T, H, acc);
}
FTIB_CLONES float pool_f16(const void *x, const float *mask, std::int64_t T, std::int64_t H,
                           float *acc) {
  return pool_one<ScalarKind::f16>(x, mask, T, H, acc);
}

float pool(ScalarKind kind, const void *x, const float *mask, std::int64_t T, std::int64_t H,
           float *acc) {
  switch (kind) {
    case ScalarKind::f32: return pool_f32(x, mask, T, H, acc);
    case ScalarKind::bf16: return pool_bf16(x, mask, T, H, acc);
    case ScalarKind::f16: return pool_f16(x, mask, T, H, acc);
  }
  throw std::invalid_argument("unknown scalar kind");
}

std::size_t elem_size(ScalarKind kind) { return kind == ScalarKind::f32 ? 4 : 2; }

// Sixteen independent partial sums let the compiler vectorise without -ffast-math.
struct DotNorms {
  float dot, aa, bb;
};
FTIB_CLONES DotNorms dot_norms(const float *__restrict a, const float *__restrict b,
                               std::int64_t H) {
  constexpr int L = 16;
  float d[L] = {}, sa[L] = {}, sb[L] = {};
  std::int64_t h = 0;
  for (; h + L <= H; h += L) {
    for (int j = 0; j < L; ++j) {
      d[j] += a[h + j] * b[h + j];
      sa[j] += a[h + j] * a[h + j];
      sb[j] += b[h + j] * b[h + j];
    }
  }
  DotNorms r{0.f, 0.f, 0.f};
  for (int j = 0; j < L; ++j) {
    r.dot += d[j];
    r.aa += sa[j];
    r.bb += sb[j];
  }
  for (; h < H; ++h) {
    r.dot += a[h] * b[h];
    r.aa += a[h] * a[h];
    r.bb += b[h] * b[h];
  }
  return r;
}

constexpr float kNormEps = 1e-12f;  // torch.nn.functional.normalize's default eps

// Rows of hidden are large; one row per task is enough to amortise a thread.
std::int64_t grain_for(std::int64_t T, std::int64_t H) {
  const std::int64_t per_row = std::max<std::int64_t>(T * H, 1);
  return std::max<std::int64_t>(1, (1 << 15) / per_row);
}

}  // namespace

void masked_mean_pool(const void *hidden, ScalarKind kind, const float *mask, std::int64_t N,
                      std::int64_t T, std::int64_t H, float *out, int threads) {
  if (N < 0 || T < 0 || H < 0) throw std::invalid_argument("masked_mean_pool: negative shape");
  const std::size_t es = elem_size(kind);
  parallel_for(N, grain_for(T, H), threads, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t n = lo; n < hi; ++n) {
      const char *x = static_cast<const char *>(hidden) + static_cast<std::size_t>(n * T * H) * es;
      float *acc = out + n * H;
      const float msum = pool(kind, x, mask + n * T, T, H, acc);
      const float inv = msum != 0.f ? 1.f / msum : 0.f;
      for (std::int64_t h = 0; h < H; ++h) acc[h] *= inv;
    }
  });
}

void embedding_similarity(const void *hidden, ScalarKind kind, const float *mask, std::int64_t N,
                          std::int64_t T, std::int64_t H, const float *ref, std::int64_t M,
                          const std::int64_t *index, bool has_threshold, double threshold,
                          float *out, int threads) {
  if (N < 0 || T < 0 || H < 0 || M < 0)
    throw std::invalid_argument("embedding_similarity: negative shape");
  if (has_threshold && !(threshold < 1.0))
    throw std::invalid_argument("embedding_similarity: threshold must be < 1, got " +
                                std::to_string(threshold));
  for (std::int64_t n = 0; n < N; ++n) {
    const std::int64_t r = index ? index[n] : n;
    if (r < 0 || r >= M)
      throw std::invalid_argument("embedding_similarity: index[" + std::to_string(n) + "] = " +
                                  std::to_string(r) + " is outside [0, " + std::to_string(M) +
                                  ")");
  }
  const std::size_t es = elem_size(kind);
  parallel_for(N, grain_for(T, H), threads, [&](std::int64_t lo, std::int64_t hi) {
    std::vector<float> acc(static_cast<std::size_t>(H));
    for (std::int64_t n = lo; n < hi; ++n) {
      const char *x = static_cast<const char *>(hidden) + static_cast<std::size_t>(n * T * H) * es;
      const float msum = pool(kind, x, mask + n * T, T, H, acc.data());
      const float inv = msum != 0.f ? 1.f / msum : 0.f;
      const std::int64_t r = index ? index[n] : n;
      DotNorms dn = dot_norms(acc.data(), ref + r * H, H);
      // The mean is sum * inv; scale the dot and the squared norm instead of the vector.
      const float a_norm = std::fmax(std::sqrt(dn.aa) * inv, kNormEps);
      const float b_norm = std::fmax(std::sqrt(dn.bb), kNormEps);
      float s = (dn.dot * inv) / (a_norm * b_norm);
      if (has_threshold) {
        s = static_cast<float>((static_cast<double>(s) - threshold) / (1.0 - threshold));
        s = s > 0.f ? s : 0.f;
      }
      out[n] = s;
    }
  });
}

}  // namespace ftib
