// UTF-8 decoding shared by the native text kernels (normaliser, splitter, BPE encoder).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ftib {

// Result of decoding one code point: the value and how many bytes it used.
struct Utf8Step {
  char32_t cp;
  std::size_t len;  // 0 means the bytes at this position are not valid UTF-8
};

// Decodes the code point starting at s[pos]. Rejects overlong forms, surrogates and
// values above U+10FFFF (len == 0), so callers can report the byte offset of bad input.
Utf8Step utf8_step(std::string_view s, std::size_t pos) noexcept;

// Decodes all of s; throws std::invalid_argument naming the byte offset of the first
// invalid sequence.
std::vector<char32_t> utf8_decode(std::string_view s);

// Appends the UTF-8 encoding of cp (which must be a Unicode scalar value) to out.
void utf8_append(std::string &out, char32_t cp);

std::string utf8_encode(const std::vector<char32_t> &cps);

}  // namespace ftib
