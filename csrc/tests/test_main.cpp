// Minimal self-contained C++ test runner (no third-party framework needed): each CHECK
// failure prints its location; the exit code is the number of failures.
#include <cstdio>
#include <stdexcept>
#include <string>

#include "ftib/build_info.h"
#include "ftib/utf8.h"

// Defined in test_grpo_kernels.cpp; returns its number of failed checks.
int run_grpo_kernel_tests();
// Defined in test_tokenizer.cpp (issue 5); returns its number of failed checks.
int run_tokenizer_tests();

static int g_failures = 0;
#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                        \
    }                                                                      \
  } while (0)

static void test_utf8_roundtrip() {
  // ASCII, Tibetan (3 bytes: KA + vowel sign I + tsheg), Han, an emoji (4 bytes).
  const std::string text = "a\xE0\xBD\x80\xE0\xBD\xB2\xE0\xBC\x8B\xE4\xB8\xAD\xF0\x9F\x98\x80";
  const auto cps = ftib::utf8_decode(text);
  CHECK(cps.size() == 6);
  CHECK(cps[0] == U'a');
  CHECK(cps[1] == 0x0F40);
  CHECK(cps[2] == 0x0F72);
  CHECK(cps[3] == 0x0F0B);
  CHECK(cps[4] == 0x4E2D);
  CHECK(cps[5] == 0x1F600);
  CHECK(ftib::utf8_encode(cps) == text);
}

static bool rejects(const std::string &bytes, const std::string &offset) {
  try {
    ftib::utf8_decode(bytes);
  } catch (const std::invalid_argument &e) {
    return std::string(e.what()).find("offset " + offset) != std::string::npos;
  }
  return false;
}

static void test_utf8_rejects_invalid() {
  CHECK(rejects("ab\xC0\xAF", "2"));          // overlong '/'
  CHECK(rejects("\xED\xA0\x80", "0"));        // surrogate U+D800
  CHECK(rejects("x\xF4\x90\x80\x80", "1"));   // above U+10FFFF
  CHECK(rejects("\xE0\xBD", "0"));            // truncated
  CHECK(rejects("\x80", "0"));                // lone continuation byte
}

static void test_build_info() {
  const auto info = ftib::build_info();
  CHECK(!info.compiler.empty());
  CHECK(info.cplusplus >= 201703L);
}

int main() {
  test_utf8_roundtrip();
  test_utf8_rejects_invalid();
  test_build_info();
  g_failures += run_grpo_kernel_tests();
  g_failures += run_tokenizer_tests();
  if (g_failures == 0) std::printf("all C++ tests passed\n");
  return g_failures;
}
