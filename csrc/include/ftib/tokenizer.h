// Fused byte-level BPE tokenizer: UTF-8 scan -> Tibetan normalisation -> split -> BPE
// with a per-thread chunk cache -> ids, in one pass per text. Reproduces, id for id, what
// Hugging Face `tokenizers` does with the tokenizer.json files ftib writes
// (models/vocab.py) and with Qwen's plain split pattern; kernels/tokenizer.py checks that
// a file is one of those before building a Tokenizer and is the only caller.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ftib::tok {

// The split patterns the hand-written scanner implements (see tokenizer.cpp for the
// exact regular expressions and how each alternative is reproduced).
enum class SplitKind : int {
  kQwen = 0,         // Split(QWEN_PATTERN, Isolated)
  kTibetanQwen = 1,  // Split(SYLLABLE, Isolated) then Split(SYLLABLE|QWEN_PATTERN, Isolated)
};

struct Config {
  SplitKind split = SplitKind::kQwen;
  bool ignore_merges = false;
  // BPE model vocabulary: raw token bytes and id (ids need not be dense).
  std::vector<std::pair<std::string, std::uint32_t>> vocab;
  // Merges in rank order: (left id, right id, merged id).
  std::vector<std::uint32_t> merges;  // 3 per merge
  // Added tokens matched on the raw text (content bytes, id, special?).
  struct Added {
    std::string content;
    std::uint32_t id;
    bool special;
  };
  std::vector<Added> added;
  // The file's normalizer: Unicode NFC (Qwen's normalizer), then a per-character replacement (composed Replace steps) ...
  std::vector<std::pair<char32_t, std::u32string>> char_map;
  // ... followed by the removal of zero-width characters between Tibetan syllable
  // characters (ftib's Replace(Regex) step).
  bool drop_zero_width = false;
  bool nfc = false;  // applied first
};

// Full ftib Tibetan normaliser (rules 1-5 of kernels/reference/tibetan.py) on code points.
std::u32string normalize_tibetan(std::u32string_view text);

class Tokenizer {
 public:
  explicit Tokenizer(const Config &config);
  ~Tokenizer();
  Tokenizer(const Tokenizer &) = delete;
  Tokenizer &operator=(const Tokenizer &) = delete;

  // Appends the ids of `text` (valid UTF-8, else std::invalid_argument) to `out`. With
  // `normalize`, the full Tibetan normaliser runs before the file's own normalizer.
  void encode(std::string_view text, bool normalize, std::vector<std::uint32_t> &out) const;

  // Encodes texts on `threads` threads; ids of text i are ids[offsets[i]:offsets[i+1]].
  void encode_batch(const std::vector<std::string_view> &texts, bool normalize, int threads,
                    std::vector<std::uint32_t> &ids, std::vector<std::int64_t> &offsets) const;
  // Same, one vector per text.
  void encode_batch(const std::vector<std::string_view> &texts, bool normalize, int threads,
                    std::vector<std::vector<std::uint32_t>> &out) const;

  // The pieces BPE sees (after added-token extraction, normalisation and splitting), as
  // UTF-8 strings; for tests and debugging.
  std::vector<std::string> pretokenize(std::string_view text, bool normalize) const;

  // Token bytes concatenated; std::invalid_argument names an unknown id.
  std::string decode(const std::uint32_t *ids, std::size_t n, bool skip_special) const;

  std::size_t vocab_size() const { return id_bytes_.size(); }

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
  std::vector<std::string> id_bytes_;
  std::vector<std::uint8_t> id_kind_;  // 0 unknown, 1 model token, 2 added, 3 added special
};

}  // namespace ftib::tok
