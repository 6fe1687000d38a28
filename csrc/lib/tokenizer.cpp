// Fused byte-level BPE tokenizer (see ftib/tokenizer.h).
//
// What each stage reproduces, exactly:
//  * added tokens: Hugging Face's AddedVocabulary for tokens with normalized=false -- the
//    leftmost occurrence in the raw text wins, the longest one at that position;
//  * normaliser: the file's Replace steps (composed into one per-character map) and the
//    removal of zero-width characters between Tibetan syllable characters, optionally
//    preceded by ftib's full Tibetan normaliser (kernels/reference/tibetan.py);
//  * split: Qwen's pattern
//      (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*
//      |\s*[\r\n]+|\s+(?!\S)|\s+
//    as a leftmost-first regex engine runs it (each alternative's backtracking is
//    resolved by hand in match_qwen), optionally after isolating Tibetan syllables
//    " ?[LETTERS MARKS]+\u0F0B?" (ftib's extended tokenizer.json);
//  * BPE: lowest merge rank first, leftmost on ties; with ignore_merges a piece that is
//    itself a token is taken whole.
#include "ftib/tokenizer.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <exception>
#include <queue>
#include <stdexcept>
#include <system_error>
#include <thread>

#include "ftib/unicode_tables.h"
#include "ftib/utf8.h"

namespace ftib::tok {
namespace {

// ------------------------------------------------------------------ character classes

enum : std::uint16_t {
  kL = 1, kN = 2, kWS = 4, kSyl = 8, kTibLetter = 16, kSubjoined = 32, kMark = 64,
  kNfcMaybe = 128,  // NFC may change text holding it: decomposable, ccc > 0 or composes as second
  kSecond = 256,    // second character of some primary composite
  kTibDecomp = 512, // Tibetan character with a canonical decomposition
};

template <std::size_t N>
bool in_ranges(const unicode::CpRange (&rs)[N], char32_t cp) {
  std::size_t lo = 0, hi = N;
  while (lo < hi) {
    const std::size_t mid = (lo + hi) / 2;
    if (rs[mid].hi < cp) lo = mid + 1;
    else hi = mid;
  }
  return lo < N && rs[lo].lo <= cp && cp <= rs[lo].hi;
}

bool tib_letter(char32_t c) { return c == 0x0F00 || (c >= 0x0F40 && c <= 0x0F6C) || (c >= 0x0F88 && c <= 0x0F8C); }
bool tib_subjoined(char32_t c) { return c >= 0x0F8D && c <= 0x0FBC; }
bool tib_mark(char32_t c) {
  return (c >= 0x0F71 && c <= 0x0F84) || c == 0x0F86 || c == 0x0F87 || c == 0x0F35 || c == 0x0F37 ||
         c == 0x0F39 || c == 0x0F3E || c == 0x0F3F || c == 0x0FC6 || tib_subjoined(c);
}

// ---------------------------------------------------------------------- NFC tables

int ccc_lookup(char32_t c) {
  std::size_t lo = 0, hi = std::size(unicode::kCcc);
  while (lo < hi) {
    const std::size_t mid = (lo + hi) / 2;
    if (unicode::kCcc[mid].hi < c) lo = mid + 1;
    else hi = mid;
  }
  return (lo < std::size(unicode::kCcc) && unicode::kCcc[lo].lo <= c) ? unicode::kCcc[lo].ccc : 0;
}

const unicode::DecompIndex *decomp_lookup(char32_t c) {
  const auto *b = std::begin(unicode::kDecompIndex), *e = std::end(unicode::kDecompIndex);
  const auto *it = std::lower_bound(b, e, c, [](const unicode::DecompIndex &d, char32_t x) { return d.cp < x; });
  return (it != e && it->cp == c) ? it : nullptr;
}

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

struct ClassTable {
  std::array<std::uint16_t, 0x10000> bmp{};
  std::array<std::uint8_t, 0x10000> ccc{};
  std::vector<char32_t> seconds_astral;  // kSecond outside the BMP (none in Unicode 14)
  ClassTable() {
    std::array<bool, 0x10000> second{};
    for (const auto &k : unicode::kCompose) {
      if (k.second < 0x10000) second[k.second] = true;
      else seconds_astral.push_back(k.second);
    }
    for (char32_t c = kVBase; c < kVBase + kVCount; ++c) second[c] = true;
    for (char32_t c = kTBase + 1; c < kTBase + kTCount; ++c) second[c] = true;
    for (const auto &r : unicode::kCcc)
      for (char32_t c = r.lo; c <= r.hi && c < 0x10000; ++c) ccc[c] = r.ccc;
    for (char32_t c = 0; c < 0x10000; ++c) {
      std::uint16_t f = 0;
      // NFC quick check: characters that are not NFC_QC=Yes are decomposable or can
      // compose as a second; marks out of canonical order are caught by the caller.
      if (second[c]) f |= kSecond | kNfcMaybe;
      if (c >= 0xC0 && decomp_lookup(c)) f |= kNfcMaybe;
      if (in_ranges(unicode::kLetter, c)) f |= kL;
      if (in_ranges(unicode::kNumber, c)) f |= kN;
      if (in_ranges(unicode::kWhiteSpace, c)) f |= kWS;
      if (tib_letter(c)) f |= kTibLetter | kSyl;
      if (tib_mark(c)) f |= kMark | kSyl;
      if (tib_subjoined(c)) f |= kSubjoined;
      bmp[c] = f;
    }
    for (const auto &d : unicode::kTibetanDecompositions) bmp[d.cp] |= kTibDecomp;
  }
};

const ClassTable &classes() {
  static const ClassTable table;
  return table;
}

inline std::uint16_t cls(char32_t c) {
  if (c < 0x10000) return classes().bmp[c];
  std::uint16_t f = 0;
  if (decomp_lookup(c)) f |= kNfcMaybe;
  for (char32_t x : classes().seconds_astral)
    if (x == c) f |= kNfcMaybe | kSecond;
  if (in_ranges(unicode::kLetter, c)) f |= kL;
  if (in_ranges(unicode::kNumber, c)) f |= kN;
  return f;
}

inline int ccc_any(char32_t c) { return c < 0x10000 ? classes().ccc[c] : ccc_lookup(c); }

bool compose_pair(char32_t a, char32_t b, char32_t &out) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    out = kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
    return true;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount) {
    out = a + (b - kTBase);
    return true;
  }
  const auto *beg = std::begin(unicode::kCompose), *end = std::end(unicode::kCompose);
  const auto *it = std::lower_bound(beg, end, std::make_pair(a, b), [](const unicode::Composition &k, const std::pair<char32_t, char32_t> &x) {
    return k.first != x.first ? k.first < x.first : k.second < x.second;
  });
  if (it != end && it->first == a && it->second == b) {
    out = it->composite;
    return true;
  }
  return false;
}

// Unicode NFC of s (decompose, canonical order, compose), using tmp as scratch.
void nfc(std::u32string &s, std::u32string &tmp) {
  tmp.clear();
  for (char32_t c : s) {
    if (!(cls(c) & kNfcMaybe) && !(c >= kSBase && c < kSBase + kSCount)) {
      tmp.push_back(c);
    } else if (c >= kSBase && c < kSBase + kSCount) {
      const char32_t si = c - kSBase;
      tmp.push_back(kLBase + si / kNCount);
      tmp.push_back(kVBase + (si % kNCount) / kTCount);
      if (si % kTCount) tmp.push_back(kTBase + si % kTCount);
    } else if (const auto *d = decomp_lookup(c)) {
      tmp.append(unicode::kDecompData + d->off, d->len);
    } else {
      tmp.push_back(c);
    }
  }
  for (std::size_t i = 0; i < tmp.size();) {
    if (ccc_any(tmp[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < tmp.size() && ccc_any(tmp[j]) != 0) ++j;
    if (j - i > 1)
      std::stable_sort(tmp.begin() + i, tmp.begin() + j, [](char32_t x, char32_t y) { return ccc_any(x) < ccc_any(y); });
    i = j;
  }
  s.clear();
  if (tmp.empty()) return;
  std::size_t starter = 0;
  bool have_starter = ccc_any(tmp[0]) == 0;
  int last = have_starter ? 0 : 256;
  s.push_back(tmp[0]);
  for (std::size_t i = 1; i < tmp.size(); ++i) {
    const char32_t c = tmp[i];
    const int cc = ccc_any(c);
    char32_t comp;
    if (have_starter && (last < cc || last == 0) && (cls(c) & kSecond) && compose_pair(s[starter], c, comp)) {
      s[starter] = comp;
      continue;
    }
    if (cc == 0) {
      starter = s.size();
      have_starter = true;
    }
    last = cc;
    s.push_back(c);
  }
}

inline bool is_zw(char32_t c) { return c == 0x200B || c == 0x200C || c == 0x200D || c == 0x2060 || c == 0xFEFF; }
inline bool is_tib(char32_t c) { return c >= 0x0F00 && c <= 0x0FFF; }
inline bool is_syl(char32_t c) { return is_tib(c) && (cls(c) & kSyl); }
constexpr char32_t kTsheg = 0x0F0B;

// ---------------------------------------------------------------------- normaliser

void drop_zero_width(const std::u32string &in, std::u32string &out) {
  out.clear();
  const std::size_t n = in.size();
  for (std::size_t i = 0; i < n;) {
    if (!is_zw(in[i])) {
      out.push_back(in[i++]);
      continue;
    }
    std::size_t j = i;
    while (j < n && is_zw(in[j])) ++j;
    const bool inside = i > 0 && j < n && is_syl(in[i - 1]) && is_syl(in[j]);
    if (!inside) out.append(in, i, j - i);
    i = j;
  }
}

const unicode::TibetanDecomposition *find_decomposition(char32_t c) {
  for (const auto &d : unicode::kTibetanDecompositions)
    if (d.cp == c) return &d;
  return nullptr;
}

inline int ccc(char32_t c) { return is_tib(c) ? unicode::kTibetanCcc[c - 0x0F00] : -1; }

inline int stack_key(char32_t c) {  // rule 5: subjoined, then ccc > 0 by ccc, then the rest
  if (tib_subjoined(c)) return 0;
  const int k = unicode::kTibetanCcc[c - 0x0F00];
  return k ? k : 1000;
}

// True when normalize_tibetan would return text unchanged (each of its steps is the
// identity): the common case of already normalised text skips the rewrite.
bool tibetan_is_normal(std::u32string_view a) {
  int last_ccc = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const char32_t c = a[i];
    if (c == 0x0F77 || c == 0x0F79 || c == 0x0F0C || is_zw(c)) return false;
    const int k = ccc(c);
    if (k > 0 && k < last_ccc) return false;
    last_ccc = k > 0 ? k : 0;
    if (!is_tib(c)) continue;
    if (cls(c) & kTibDecomp) return false;
    if (tib_letter(c)) {
      int last_key = -1;
      for (std::size_t j = i + 1; j < a.size() && is_tib(a[j]) && tib_mark(a[j]); ++j) {
        const int key = stack_key(a[j]);
        if (key < last_key) return false;
        last_key = key;
      }
    }
  }
  return true;
}

}  // namespace

std::u32string normalize_tibetan(std::u32string_view text) {
  std::u32string a, b;
  a.reserve(text.size() + 8);
  // Rules 1 and 2.
  for (char32_t c : text) {
    if (c == 0x0F77) a.append({0x0FB2, 0x0F71, 0x0F80});
    else if (c == 0x0F79) a.append({0x0FB3, 0x0F71, 0x0F80});
    else if (c == 0x0F0C) a.push_back(kTsheg);
    else a.push_back(c);
  }
  // Rule 3.
  drop_zero_width(a, b);
  // Rule 4: NFC of Tibetan runs. No Tibetan character is a primary composite (checked by
  // gen_unicode_tables.py), so NFC there is full decomposition then canonical ordering.
  a.clear();
  for (char32_t c : b) {
    const auto *d = is_tib(c) ? find_decomposition(c) : nullptr;
    if (d) a.append(d->to, d->len);
    else a.push_back(c);
  }
  for (std::size_t i = 0; i < a.size();) {
    if (ccc(a[i]) <= 0) {
      ++i;
      continue;
    }
    std::size_t j = i;
    while (j < a.size() && ccc(a[j]) > 0) ++j;
    std::stable_sort(a.begin() + i, a.begin() + j, [](char32_t x, char32_t y) { return ccc(x) < ccc(y); });
    i = j;
  }
  // Rule 5.
  for (std::size_t i = 0; i < a.size();) {
    const char32_t c = a[i++];
    if (!(is_tib(c) && tib_letter(c))) continue;
    std::size_t j = i;
    while (j < a.size() && is_tib(a[j]) && tib_mark(a[j])) ++j;
    if (j - i > 1)
      std::stable_sort(a.begin() + i, a.begin() + j,
                       [](char32_t x, char32_t y) { return stack_key(x) < stack_key(y); });
    i = j;
  }
  return a;
}

namespace {

// ------------------------------------------------------------------------ hashing

inline std::uint64_t mix64(std::uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

inline std::uint64_t hash_bytes(const char *p, std::size_t n) {
  std::uint64_t h = 0x9E3779B97F4A7C15ULL ^ (n * 0x2545F4914F6CDD1DULL);
  while (n >= 8) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ mix64(v)) * 0x9E3779B97F4A7C15ULL;
    p += 8;
    n -= 8;
  }
  if (n) {
    std::uint64_t v = 0;
    std::memcpy(&v, p, n);
    h = (h ^ mix64(v ^ (n << 56))) * 0x9E3779B97F4A7C15ULL;
  }
  return mix64(h);
}

// Open-addressing map from byte strings to two 32-bit values, keys kept in one arena.
class BytesMap {
 public:
  struct Entry {
    std::uint64_t hash;
    std::uint32_t off, len;
    std::uint32_t a, b;
  };

  explicit BytesMap(std::size_t expected = 1024) { rehash(expected * 2); }

  const Entry *find(const char *p, std::size_t n, std::uint64_t h) const {
    for (std::size_t s = h & mask_;; s = (s + 1) & mask_) {
      const std::uint32_t e = slots_[s];
      if (!e) return nullptr;
      const Entry &en = entries_[e - 1];
      if (en.hash == h && en.len == n && std::memcmp(arena_.data() + en.off, p, n) == 0) return &en;
    }
  }

  // Inserts (a key already present keeps its values; returns false then).
  bool insert(const char *p, std::size_t n, std::uint64_t h, std::uint32_t a, std::uint32_t b) {
    if (find(p, n, h)) return false;
    if ((entries_.size() + 1) * 2 > slots_.size()) rehash(slots_.size() * 2);
    entries_.push_back({h, static_cast<std::uint32_t>(arena_.size()), static_cast<std::uint32_t>(n), a, b});
    arena_.append(p, n);
    place(static_cast<std::uint32_t>(entries_.size()));
    return true;
  }

  std::size_t size() const { return entries_.size(); }
  std::size_t arena_bytes() const { return arena_.size(); }

  void clear() {
    entries_.clear();
    arena_.clear();
    std::fill(slots_.begin(), slots_.end(), 0u);
  }

 private:
  void place(std::uint32_t idx) {
    std::size_t s = entries_[idx - 1].hash & mask_;
    while (slots_[s]) s = (s + 1) & mask_;
    slots_[s] = idx;
  }
  void rehash(std::size_t want) {
    std::size_t cap = 16;
    while (cap < want) cap <<= 1;
    slots_.assign(cap, 0u);
    mask_ = cap - 1;
    for (std::uint32_t i = 1; i <= entries_.size(); ++i) place(i);
  }

  std::vector<std::uint32_t> slots_;  // entry index + 1; 0 = empty
  std::vector<Entry> entries_;
  std::string arena_;
  std::size_t mask_ = 0;
};

// Open-addressing map (left id, right id) -> (merge rank, merged id).
class PairMap {
 public:
  void build(const std::vector<std::uint32_t> &merges) {
    const std::size_t n = merges.size() / 3;
    std::size_t cap = 16;
    while (cap < n * 2 + 2) cap <<= 1;
    slots_.assign(cap, Slot{kEmpty, 0, 0});
    mask_ = cap - 1;
    for (std::size_t r = 0; r < n; ++r) {
      const std::uint64_t key = (std::uint64_t(merges[3 * r]) << 32) | merges[3 * r + 1];
      std::size_t s = mix64(key) & mask_;
      while (slots_[s].key != kEmpty && slots_[s].key != key) s = (s + 1) & mask_;
      if (slots_[s].key == key) continue;  // a repeated pair keeps its first (lowest) rank
      slots_[s] = Slot{key, static_cast<std::uint32_t>(r), merges[3 * r + 2]};
    }
  }
  // Returns false when the pair has no merge.
  inline bool find(std::uint32_t a, std::uint32_t b, std::uint32_t &rank, std::uint32_t &id) const {
    const std::uint64_t key = (std::uint64_t(a) << 32) | b;
    for (std::size_t s = mix64(key) & mask_;; s = (s + 1) & mask_) {
      const Slot &sl = slots_[s];
      if (sl.key == key) {
        rank = sl.rank;
        id = sl.id;
        return true;
      }
      if (sl.key == kEmpty) return false;
    }
  }

 private:
  static constexpr std::uint64_t kEmpty = ~0ULL;
  struct Slot {
    std::uint64_t key;
    std::uint32_t rank, id;
  };
  std::vector<Slot> slots_;
  std::size_t mask_ = 0;
};

constexpr std::uint32_t kNoRank = 0xFFFFFFFFu;

// Everything one worker thread touches while encoding: scratch buffers and its cache.
struct Worker {
  std::u32string cps, tmp, tmp2;
  std::vector<std::uint32_t> off;  // byte offset of each code point (+ end)
  std::string nbytes;
  std::vector<std::uint32_t> sym, rank;
  BytesMap cache{4096};
  std::vector<std::uint32_t> cache_ids;
};

constexpr std::size_t kCacheEntries = 1 << 18;

}  // namespace

struct Tokenizer::Impl {
  SplitKind split;
  bool ignore_merges;
  BytesMap vocab{1024};
  PairMap pairs;
  std::array<std::uint32_t, 256> byte_id{};
  std::vector<Config::Added> added;  // longest first
  std::array<bool, 256> added_first{};
  std::vector<std::pair<char32_t, std::u32string>> char_map;  // sorted by code point
  char32_t map_lo = 1, map_hi = 0;
  std::vector<bool> map_keys = std::vector<bool>(0x10000, false);  // BMP keys of char_map
  bool drop_zw;
  bool nfc;

  std::mutex pool_mu;
  mutable std::vector<std::unique_ptr<Worker>> pool;

  std::unique_ptr<Worker> acquire() {
    std::lock_guard<std::mutex> lock(pool_mu);
    if (pool.empty()) return std::make_unique<Worker>();
    auto w = std::move(pool.back());
    pool.pop_back();
    return w;
  }
  void release(std::unique_ptr<Worker> w) {
    std::lock_guard<std::mutex> lock(pool_mu);
    pool.push_back(std::move(w));
  }

  // ------------------------------------------------------------------ BPE
  void bpe(const char *p, std::size_t n, Worker &w, std::vector<std::uint32_t> &out) const {
    auto &sym = w.sym;
    sym.resize(n);
    for (std::size_t i = 0; i < n; ++i) sym[i] = byte_id[static_cast<std::uint8_t>(p[i])];
    if (n <= 256) {
      // Rescan: rank[i] is the merge rank of (sym[i], sym[i+1]).
      auto &rank = w.rank;
      rank.resize(n);
      std::uint32_t m = static_cast<std::uint32_t>(n);
      std::uint32_t newid[257];
      for (std::uint32_t i = 0; i + 1 < m; ++i)
        if (!pairs.find(sym[i], sym[i + 1], rank[i], newid[i])) rank[i] = kNoRank;
      while (m > 1) {
        std::uint32_t best = kNoRank, at = 0;
        for (std::uint32_t i = 0; i + 1 < m; ++i)
          if (rank[i] < best) best = rank[i], at = i;
        if (best == kNoRank) break;
        sym[at] = newid[at];
        std::memmove(&sym[at + 1], &sym[at + 2], (m - at - 2) * sizeof(std::uint32_t));
        if (at + 2 < m) {
          std::memmove(&rank[at + 1], &rank[at + 2], (m - at - 2) * sizeof(std::uint32_t));
          std::memmove(&newid[at + 1], &newid[at + 2], (m - at - 2) * sizeof(std::uint32_t));
        }
        --m;
        if (at + 1 < m) {
          if (!pairs.find(sym[at], sym[at + 1], rank[at], newid[at])) rank[at] = kNoRank;
        } else {
          rank[at] = kNoRank;
        }
        if (at > 0 && !pairs.find(sym[at - 1], sym[at], rank[at - 1], newid[at - 1])) rank[at - 1] = kNoRank;
      }
      out.insert(out.end(), sym.begin(), sym.begin() + m);
      return;
    }
    // Long pieces: linked list of symbols and a heap of candidate merges by (rank, pos).
    std::vector<std::int32_t> prev(n), next(n);
    for (std::size_t i = 0; i < n; ++i) {
      prev[i] = static_cast<std::int32_t>(i) - 1;
      next[i] = i + 1 < n ? static_cast<std::int32_t>(i + 1) : -1;
    }
    struct Cand {
      std::uint32_t rank, pos, left, right, id;
      bool operator>(const Cand &o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
    auto push = [&](std::int32_t i) {
      if (i < 0 || next[i] < 0) return;
      std::uint32_t r, id;
      if (pairs.find(sym[i], sym[next[i]], r, id))
        heap.push(Cand{r, static_cast<std::uint32_t>(i), sym[i], sym[next[i]], id});
    };
    for (std::size_t i = 0; i + 1 < n; ++i) push(static_cast<std::int32_t>(i));
    constexpr std::uint32_t kDead = 0xFFFFFFFFu;
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      const std::int32_t i = static_cast<std::int32_t>(c.pos);
      if (sym[i] != c.left || next[i] < 0 || sym[next[i]] != c.right) continue;  // stale
      const std::int32_t j = next[i];
      sym[i] = c.id;
      sym[j] = kDead;
      next[i] = next[j];
      if (next[j] >= 0) prev[next[j]] = i;
      push(prev[i]);
      push(i);
    }
    for (std::int32_t i = 0; i >= 0; i = next[i]) out.push_back(sym[i]);
  }

  void encode_piece(const char *p, std::size_t n, Worker &w, std::vector<std::uint32_t> &out) const {
    const std::uint64_t h = hash_bytes(p, n);
    if (const auto *e = w.cache.find(p, n, h)) {
      out.insert(out.end(), w.cache_ids.begin() + e->a, w.cache_ids.begin() + e->a + e->b);
      return;
    }
    const std::size_t before = out.size();
    const BytesMap::Entry *whole = ignore_merges ? vocab.find(p, n, h) : nullptr;
    if (whole) out.push_back(whole->a);
    else bpe(p, n, w, out);
    if (w.cache.size() >= kCacheEntries || w.cache_ids.size() >= 16 * kCacheEntries) {
      w.cache.clear();
      w.cache_ids.clear();
    }
    const std::size_t cnt = out.size() - before;
    w.cache.insert(p, n, h, static_cast<std::uint32_t>(w.cache_ids.size()), static_cast<std::uint32_t>(cnt));
    w.cache_ids.insert(w.cache_ids.end(), out.begin() + before, out.end());
  }

  // ----------------------------------------------------------------- split
  // End of the match of Qwen's pattern at c[i] in a piece that ends at e.
  static std::size_t match_qwen(const char32_t *c, std::size_t i, std::size_t e) {
    const char32_t c0 = c[i];
    // (?i:'s|'t|'re|'ve|'m|'ll|'d); U+017F LONG S case-folds to 's'.
    if (c0 == '\'' && i + 1 < e) {
      auto low = [](char32_t x) -> char32_t { return (x >= 'A' && x <= 'Z') ? x + 32 : (x == 0x017F ? 's' : x); };
      const char32_t a = low(c[i + 1]);
      if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
      if (i + 2 < e) {
        const char32_t b = low(c[i + 2]);
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
      }
    }
    const auto f0 = cls(c0);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    std::size_t j = i;
    if (f0 & kL) j = i + 1;
    else if (c0 != '\r' && c0 != '\n' && !(f0 & kN) && i + 1 < e && (cls(c[i + 1]) & kL)) j = i + 2;
    if (j > i) {
      while (j < e && (cls(c[j]) & kL)) ++j;
      return j;
    }
    // \p{N}
    if (f0 & kN) return i + 1;
    // " ?[^\s\p{L}\p{N}]+[\r\n]*"
    auto other = [](char32_t x) { return (cls(x) & (kL | kN | kWS)) == 0; };
    std::size_t k = i;
    if (c0 == ' ' && i + 1 < e && other(c[i + 1])) k = i + 1;
    if (other(c[k])) {
      j = k + 1;
      while (j < e && other(c[j])) ++j;
      while (j < e && (c[j] == '\r' || c[j] == '\n')) ++j;
      return j;
    }
    // c0 is white space: \s*[\r\n]+ | \s+(?!\S) | \s+
    j = i;
    while (j < e && (cls(c[j]) & kWS)) ++j;
    for (std::size_t m = j; m > i; --m)
      if (c[m - 1] == '\r' || c[m - 1] == '\n') return m;
    if (j == e) return j;
    if (j - 1 > i) return j - 1;
    return j;
  }

  template <class Emit>
  static void split_qwen(const char32_t *c, std::size_t s, std::size_t e, Emit &&emit) {
    while (s < e) {
      const std::size_t j = match_qwen(c, s, e);
      emit(s, j);
      s = j;
    }
  }

  template <class Emit>
  void split_all(const char32_t *c, std::size_t n, Emit &&emit) const {
    if (split == SplitKind::kQwen) {
      split_qwen(c, 0, n, emit);
      return;
    }
    std::size_t gap = 0;
    for (std::size_t i = 0; i < n;) {
      if (!is_syl(c[i])) {
        ++i;
        continue;
      }
      const std::size_t start = (i > gap && c[i - 1] == ' ') ? i - 1 : i;
      std::size_t j = i;
      while (j < n && is_syl(c[j])) ++j;
      if (j < n && c[j] == kTsheg) ++j;
      split_qwen(c, gap, start, emit);
      emit(start, j);
      gap = i = j;
    }
    split_qwen(c, gap, n, emit);
  }

  // -------------------------------------------------------------- one segment
  // Decodes, normalises and splits text without added tokens; calls piece(bytes, len).
  template <class Piece>
  void pieces(const char *p, std::size_t n, bool normalize, Worker &w, Piece &&piece) const {
    auto &cps = w.cps;
    auto &off = w.off;
    cps.clear();
    off.clear();
    bool tib = false, zw = false, mapped = false, nfc_maybe = false;
    int last_ccc = 0;
    const std::string_view sv(p, n);
    for (std::size_t pos = 0; pos < n;) {
      char32_t c;
      std::size_t len;
      const unsigned char b0 = static_cast<unsigned char>(p[pos]);
      if (b0 < 0x80) {
        c = b0;
        len = 1;
        last_ccc = 0;
      } else {
        const Utf8Step st = utf8_step(sv, pos);
        if (st.len == 0)
          throw std::invalid_argument("text is not valid UTF-8 (byte offset " + std::to_string(pos) + ")");
        c = st.cp;
        len = st.len;
        tib |= is_tib(c);
        zw |= is_zw(c);
        mapped |= c < map_keys.size() ? map_keys[c] : (c >= map_lo && c <= map_hi);
        nfc_maybe |= (cls(c) & kNfcMaybe) != 0;
        const int cc = ccc_any(c);
        nfc_maybe |= (cc != 0 && cc < last_ccc);
        last_ccc = cc;
      }
      cps.push_back(c);
      off.push_back(static_cast<std::uint32_t>(pos));
      pos += len;
    }
    mapped |= (map_lo <= 0x7F && !char_map.empty());
    const bool need_tib = normalize && tib && !tibetan_is_normal(cps);
    const bool change = need_tib || mapped || (drop_zw && zw) ||
                        (nfc && nfc_maybe);
    const char *bytes = p;
    if (change) {
      if (need_tib) {
        w.tmp = normalize_tibetan(cps);
        cps.swap(w.tmp);
      }
      if (nfc) ftib::tok::nfc(cps, w.tmp);
      if (!char_map.empty()) {
        w.tmp.clear();
        for (char32_t c : cps) {
          if (c >= map_lo && c <= map_hi) {
            auto it = std::lower_bound(char_map.begin(), char_map.end(), c,
                                       [](const auto &kv, char32_t x) { return kv.first < x; });
            if (it != char_map.end() && it->first == c) {
              w.tmp += it->second;
              continue;
            }
          }
          w.tmp.push_back(c);
        }
        cps.swap(w.tmp);
      }
      if (drop_zw) {
        drop_zero_width(cps, w.tmp);
        cps.swap(w.tmp);
      }
      w.nbytes.clear();
      off.clear();
      for (char32_t c : cps) {
        off.push_back(static_cast<std::uint32_t>(w.nbytes.size()));
        utf8_append(w.nbytes, c);
      }
      off.push_back(static_cast<std::uint32_t>(w.nbytes.size()));
      bytes = w.nbytes.data();
    } else {
      off.push_back(static_cast<std::uint32_t>(n));
    }
    const std::uint32_t *o = off.data();
    split_all(cps.data(), cps.size(), [&](std::size_t a, std::size_t b) { piece(bytes + o[a], o[b] - o[a]); });
  }

  // Splits text on added tokens; calls seg(p, n) for text between them, tok(id) for them.
  template <class Seg, class Tok>
  void added_split(const char *p, std::size_t n, Seg &&seg, Tok &&tok) const {
    std::size_t start = 0;
    if (!added.empty()) {
      for (std::size_t i = 0; i < n; ++i) {
        if (!added_first[static_cast<unsigned char>(p[i])]) continue;
        for (const auto &a : added) {  // longest first: leftmost-longest
          if (a.content.size() <= n - i && std::memcmp(p + i, a.content.data(), a.content.size()) == 0) {
            if (i > start) seg(p + start, i - start);
            tok(a.id);
            i += a.content.size();
            start = i;
            --i;
            break;
          }
        }
      }
    }
    if (n > start) seg(p + start, n - start);
  }

  void encode(std::string_view text, bool normalize, Worker &w, std::vector<std::uint32_t> &out) const {
    added_split(
        text.data(), text.size(),
        [&](const char *p, std::size_t n) {
          pieces(p, n, normalize, w, [&](const char *q, std::size_t m) { encode_piece(q, m, w, out); });
        },
        [&](std::uint32_t id) { out.push_back(id); });
  }
};

Tokenizer::Tokenizer(const Config &config) : impl_(std::make_unique<Impl>()) {
  Impl &im = *impl_;
  im.split = config.split;
  im.ignore_merges = config.ignore_merges;
  im.drop_zw = config.drop_zero_width;
  im.nfc = config.nfc;
  im.vocab = BytesMap(config.vocab.size() + 16);
  std::uint32_t max_id = 0;
  for (const auto &[bytes, id] : config.vocab) max_id = std::max(max_id, id);
  for (const auto &a : config.added) max_id = std::max(max_id, a.id);
  if (max_id >= 0x7FFFFFFFu) throw std::invalid_argument("token id out of range");
  id_bytes_.assign(std::size_t(max_id) + 1, std::string());
  id_kind_.assign(std::size_t(max_id) + 1, 0);
  for (const auto &[bytes, id] : config.vocab) {
    if (bytes.empty()) throw std::invalid_argument("the vocabulary holds an empty token (id " + std::to_string(id) + ")");
    if (!im.vocab.insert(bytes.data(), bytes.size(), hash_bytes(bytes.data(), bytes.size()), id, 0))
      throw std::invalid_argument("two vocabulary entries have the same bytes (id " + std::to_string(id) + ")");
    id_bytes_[id] = bytes;
    id_kind_[id] = 1;
  }
  for (int b = 0; b < 256; ++b) {
    const char ch = static_cast<char>(b);
    const auto *e = im.vocab.find(&ch, 1, hash_bytes(&ch, 1));
    if (!e) throw std::invalid_argument("not a byte-level BPE: byte 0x" + std::to_string(b) + " has no token");
    im.byte_id[b] = e->a;
  }
  if (config.merges.size() % 3) throw std::invalid_argument("merges must hold 3 ids per merge");
  for (std::size_t r = 0; r < config.merges.size(); r += 3) {
    for (int k = 0; k < 3; ++k)
      if (config.merges[r + k] > max_id || !id_kind_[config.merges[r + k]])
        throw std::invalid_argument("merge " + std::to_string(r / 3) + " refers to an unknown id");
    if (id_bytes_[config.merges[r]] + id_bytes_[config.merges[r + 1]] != id_bytes_[config.merges[r + 2]])
      throw std::invalid_argument("merge " + std::to_string(r / 3) + " does not concatenate its parts");
  }
  im.pairs.build(config.merges);
  im.added = config.added;
  std::stable_sort(im.added.begin(), im.added.end(),
                   [](const Config::Added &x, const Config::Added &y) { return x.content.size() > y.content.size(); });
  for (const auto &a : im.added) {
    if (a.content.empty()) throw std::invalid_argument("an added token is empty");
    im.added_first[static_cast<unsigned char>(a.content[0])] = true;
    id_bytes_[a.id] = a.content;
    id_kind_[a.id] = a.special ? 3 : 2;
  }
  im.char_map = config.char_map;
  std::sort(im.char_map.begin(), im.char_map.end(), [](const auto &x, const auto &y) { return x.first < y.first; });
  if (!im.char_map.empty()) {
    im.map_lo = im.char_map.front().first;
    im.map_hi = im.char_map.back().first;
    for (const auto &kv : im.char_map)
      if (kv.first < 0x10000) im.map_keys[kv.first] = true;
  }
}

Tokenizer::~Tokenizer() = default;

void Tokenizer::encode(std::string_view text, bool normalize, std::vector<std::uint32_t> &out) const {
  auto w = impl_->acquire();
  try {
    impl_->encode(text, normalize, *w, out);
  } catch (...) {
    impl_->release(std::move(w));
    throw;
  }
  impl_->release(std::move(w));
}

namespace {
template <class Fn>
void run_parallel(std::size_t n, int threads, Fn &&fn) {
  const std::size_t t = std::max<std::size_t>(1, std::min<std::size_t>(threads < 1 ? 1 : threads, n));
  std::atomic<std::size_t> next{0};
  std::exception_ptr error;
  std::mutex err_mu;
  auto body = [&] {
    try {
      fn(next);
    } catch (...) {
      std::lock_guard<std::mutex> lock(err_mu);
      if (!error) error = std::current_exception();
      next.store(n);
    }
  };
  std::vector<std::thread> pool;
  for (std::size_t k = 1; k < t; ++k) {
    try {
      pool.emplace_back(body);
    } catch (const std::system_error &e) {
      // A thread that cannot start must not reach std::terminate (joinable threads
      // destroyed during unwinding): stop the started ones, then report it.
      next.store(n);
      for (auto &th : pool) th.join();
      throw std::runtime_error("encode_batch: could not start worker thread " + std::to_string(k) + " of " +
                               std::to_string(t) + " (" + e.what() + "); use fewer num_threads");
    }
  }
  body();
  for (auto &th : pool) th.join();
  if (error) std::rethrow_exception(error);
}
}  // namespace

void Tokenizer::encode_batch(const std::vector<std::string_view> &texts, bool normalize, int threads,
                             std::vector<std::vector<std::uint32_t>> &out) const {
  out.assign(texts.size(), {});
  const std::size_t n = texts.size();
  run_parallel(n, threads, [&](std::atomic<std::size_t> &next) {
    auto w = impl_->acquire();
    struct Back {
      Impl &im;
      std::unique_ptr<Worker> &w;
      ~Back() { im.release(std::move(w)); }
    } back{*impl_, w};
    for (;;) {
      const std::size_t i = next.fetch_add(1);
      if (i >= n) break;
      impl_->encode(texts[i], normalize, *w, out[i]);
    }
  });
}

void Tokenizer::encode_batch(const std::vector<std::string_view> &texts, bool normalize, int threads,
                             std::vector<std::uint32_t> &ids, std::vector<std::int64_t> &offsets) const {
  std::vector<std::vector<std::uint32_t>> per;
  encode_batch(texts, normalize, threads, per);
  offsets.assign(texts.size() + 1, 0);
  for (std::size_t i = 0; i < per.size(); ++i) offsets[i + 1] = offsets[i] + static_cast<std::int64_t>(per[i].size());
  ids.resize(static_cast<std::size_t>(offsets.back()));
  for (std::size_t i = 0; i < per.size(); ++i)
    if (!per[i].empty()) std::memcpy(ids.data() + offsets[i], per[i].data(), per[i].size() * sizeof(std::uint32_t));
}

std::vector<std::string> Tokenizer::pretokenize(std::string_view text, bool normalize) const {
  std::vector<std::string> out;
  auto w = impl_->acquire();
  impl_->added_split(
      text.data(), text.size(),
      [&](const char *p, std::size_t n) {
        impl_->pieces(p, n, normalize, *w, [&](const char *q, std::size_t m) { out.emplace_back(q, m); });
      },
      [&](std::uint32_t id) { out.push_back(id_bytes_[id]); });
  impl_->release(std::move(w));
  return out;
}

std::string Tokenizer::decode(const std::uint32_t *ids, std::size_t n, bool skip_special) const {
  std::string out;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t id = ids[i];
    if (id >= id_kind_.size() || id_kind_[id] == 0)
      throw std::invalid_argument("unknown token id " + std::to_string(id) + " at position " + std::to_string(i));
    if (skip_special && id_kind_[id] == 3) continue;
    out += id_bytes_[id];
  }
  return out;
}

}  // namespace ftib::tok
