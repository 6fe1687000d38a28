// Unit tests of the fused tokenizer on a hand-made byte-level vocabulary. Parity with
// Hugging Face tokenizers on real vocabularies is tested from Python
// (tests/kernels/test_fast_tokenizer.py); these cover the engine's parts and run under
// ASan/UBSan in the slow job.
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "ftib/tokenizer.h"
#include "ftib/utf8.h"

namespace {

int g_fail = 0;
#define TCHECK(cond)                                                                \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_fail;                                                                     \
    }                                                                               \
  } while (0)

using Ids = std::vector<std::uint32_t>;

ftib::tok::Config tiny_config(ftib::tok::SplitKind split) {
  ftib::tok::Config c;
  c.split = split;
  c.ignore_merges = true;
  for (int b = 0; b < 256; ++b) c.vocab.emplace_back(std::string(1, static_cast<char>(b)), b);
  c.vocab.emplace_back("ab", 256);
  c.vocab.emplace_back("abc", 257);
  c.vocab.emplace_back("abab", 258);
  c.vocab.emplace_back(" a", 259);
  // Ranks: ab < abab < abc < " a".
  c.merges = {'a', 'b', 256, 256, 256, 258, 256, 'c', 257, ' ', 'a', 259};
  c.added.push_back({"<|a|>", 300, true});
  c.added.push_back({"<|a|>x", 301, false});
  return c;
}

Ids enc(const ftib::tok::Tokenizer &t, const std::string &s, bool norm = false) {
  Ids out;
  t.encode(s, norm, out);
  return out;
}

std::vector<std::string> pieces(const ftib::tok::Tokenizer &t, const std::string &s) {
  return t.pretokenize(s, false);
}

std::string u8(std::initializer_list<char32_t> cps) {
  std::string out;
  for (char32_t c : cps) ftib::utf8_append(out, c);
  return out;
}

void test_bpe() {
  const ftib::tok::Tokenizer t(tiny_config(ftib::tok::SplitKind::kQwen));
  TCHECK(enc(t, "abc") == (Ids{257}));                // whole-piece lookup (ignore_merges)
  TCHECK(enc(t, "abcab abd") == (Ids{257, 256, ' ', 256, 'd'}));  // ab before " a"
  // Short pieces use the rescan loop, long ones the heap; both merge lowest rank, leftmost.
  std::string s200, s600;
  for (int i = 0; i < 100; ++i) s200 += "ab";
  for (int i = 0; i < 300; ++i) s600 += "ab";
  TCHECK(enc(t, s200) == Ids(50, 258));
  TCHECK(enc(t, s600) == Ids(150, 258));
  TCHECK(enc(t, s600 + "a") == [] {
    Ids v(150, 258);
    v.push_back('a');
    return v;
  }());
  TCHECK(t.decode(enc(t, "abcab abd").data(), 5, true) == "abcab abd");
  bool threw = false;
  try {
    const std::uint32_t bad = 999;
    t.decode(&bad, 1, true);
  } catch (const std::invalid_argument &) {
    threw = true;
  }
  TCHECK(threw);
}

void test_added_tokens() {
  const ftib::tok::Tokenizer t(tiny_config(ftib::tok::SplitKind::kQwen));
  TCHECK(enc(t, "<|a|>") == (Ids{300}));
  TCHECK(enc(t, "<|a|>xy") == (Ids{301, 'y'}));  // leftmost-longest
  TCHECK(enc(t, "ab<|a|><|a") == (Ids{256, 300, '<', '|', 'a'}));
  const std::uint32_t both[] = {300, 256};
  TCHECK(t.decode(both, 2, true) == "ab");
  TCHECK(t.decode(both, 2, false) == "<|a|>ab");
}

void test_qwen_split() {
  const ftib::tok::Tokenizer t(tiny_config(ftib::tok::SplitKind::kQwen));
  using V = std::vector<std::string>;
  TCHECK(pieces(t, "it's  x") == (V{"it", "'s", " ", " x"}));
  TCHECK(pieces(t, "a \n\n b") == (V{"a", " \n\n", " b"}));
  TCHECK(pieces(t, "12ab!! \r\n") == (V{"1", "2", "ab", "!!", " \r\n"}));
  TCHECK(pieces(t, " ?!x  ") == (V{" ?!", "x", "  "}));
  TCHECK(pieces(t, "\xC3\xA9t\xC3\xA9 \xE4\xB8\xAD") == (V{"\xC3\xA9t\xC3\xA9", " \xE4\xB8\xAD"}));
  bool threw = false;
  try {
    enc(t, "ok\xC0\xAF");
  } catch (const std::invalid_argument &) {
    threw = true;
  }
  TCHECK(threw);
}

void test_tibetan_split_and_normaliser() {
  const ftib::tok::Tokenizer t(tiny_config(ftib::tok::SplitKind::kTibetanQwen));
  using V = std::vector<std::string>;
  const std::string bod = u8({0x0F56, 0x0F7C, 0x0F51, 0x0F0B});  // bod + tsheg
  // Latin glued to Tibetan: the syllable is isolated first, so "x" does not run into it.
  TCHECK(pieces(t, "x" + bod + " " + bod + "|") == (V{"x", bod, " " + bod, "|"}));
  // Rule 5: a vowel typed before a subjoined letter moves after it.
  TCHECK(ftib::tok::normalize_tibetan(U"\u0F66\u0F7C\u0FB1") == U"\u0F66\u0FB1\u0F7C");
  TCHECK(ftib::tok::normalize_tibetan(U"\u0F40\u0F7E\u0F7C\u0F74\u0F71") == U"\u0F40\u0F71\u0F7C\u0F74\u0F7E");
  // Rules 1-4.
  TCHECK(ftib::tok::normalize_tibetan(U"\u0F77") == U"\u0FB2\u0F71\u0F80");
  TCHECK(ftib::tok::normalize_tibetan(U"\u0F40\u0F0C\u0F41") == U"\u0F40\u0F0B\u0F41");
  TCHECK(ftib::tok::normalize_tibetan(U"\u0F56\u0F7C\u200B\u0F51") == U"\u0F56\u0F7C\u0F51");
  TCHECK(ftib::tok::normalize_tibetan(U"\u0F40\u0F0B\u200B\u0F41") == U"\u0F40\u0F0B\u200B\u0F41");
  TCHECK(ftib::tok::normalize_tibetan(U"\u0F73") == U"\u0F71\u0F72");
  TCHECK(ftib::tok::normalize_tibetan(U"abc") == U"abc");
  // normalize=true runs the normaliser inside encode.
  const std::string typed = u8({0x0F66, 0x0F7C, 0x0FB1});
  const std::string canon = u8({0x0F66, 0x0FB1, 0x0F7C});
  TCHECK(enc(t, typed, true) == enc(t, canon, false));
  TCHECK(enc(t, typed, false) != enc(t, canon, false));
}

void test_batch_threads() {
  const ftib::tok::Tokenizer t(tiny_config(ftib::tok::SplitKind::kTibetanQwen));
  std::vector<std::string> store;
  for (int i = 0; i < 500; ++i) store.push_back("abc ab" + std::to_string(i) + u8({0x0F40, 0x0F72, 0x0F0B}) + "<|a|>");
  std::vector<std::string_view> views(store.begin(), store.end());
  std::vector<std::uint32_t> ids;
  std::vector<std::int64_t> offsets;
  t.encode_batch(views, false, 4, ids, offsets);
  TCHECK(offsets.size() == store.size() + 1);
  bool same = true;
  for (std::size_t i = 0; i < store.size(); ++i) {
    const Ids one = enc(t, store[i]);
    same = same && Ids(ids.begin() + offsets[i], ids.begin() + offsets[i + 1]) == one;
  }
  TCHECK(same);
  views.push_back("bad\xFF");
  bool threw = false;
  try {
    t.encode_batch(views, false, 3, ids, offsets);
  } catch (const std::invalid_argument &) {
    threw = true;
  }
  TCHECK(threw);
}

}  // namespace

int run_tokenizer_tests() {
  test_bpe();
  test_added_tokens();
  test_qwen_split();
  test_tibetan_split_and_normaliser();
  test_batch_threads();
  return g_fail;
}
