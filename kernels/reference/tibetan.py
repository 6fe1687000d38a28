"""Readable reference of the Tibetan normaliser and syllabifier.

One function per rule, applied in the order of :data:`RULES`. :mod:`ftib.kernels.tibetan`
is the fast version; tests check the two agree on every input. Each rule only touches
Tibetan code points (U+0F00..U+0FFF) and the zero-width characters between them, so any
text without Tibetan comes back unchanged (not even NFC is applied to it).

Rules, each with an example (code points in brackets):

1. ``deprecated_vowels`` -- U+0F77 and U+0F79, deprecated by Unicode, become the
   sequences they stand for: ``ཷ`` [0F77] -> ``ྲཱྀ`` [0FB2 0F71 0F80], ``ཹ`` [0F79] ->
   ``ླཱྀ`` [0FB3 0F71 0F80] (their compatibility decomposition, in canonical form).
2. ``unify_tsheg`` -- the non-breaking tsheg U+0F0C becomes the ordinary tsheg U+0F0B:
   ``ཀ༌ཁ`` [0F40 0F0C 0F41] -> ``ཀ་ཁ`` [0F40 0F0B 0F41].
3. ``drop_zero_width`` -- zero-width characters (ZWSP U+200B, ZWNJ U+200C, ZWJ U+200D,
   word joiner U+2060, ZWNBSP/BOM U+FEFF) between two letters or marks of one syllable
   are removed: ``བོ<ZWSP>ད`` -> ``བོད``. A zero-width space after a tsheg or shad (a
   legitimate line-break hint) is kept.
4. ``nfc`` -- Unicode NFC on the Tibetan runs. Every Tibetan precomposed character is a
   composition exclusion, so NFC *decomposes* them and this is the one canonical form:
   ``ཱི`` [0F73] -> [0F71 0F72], ``ཱུ`` [0F75] -> [0F71 0F74], ``ཱྀ`` [0F81] ->
   [0F71 0F80], ``གྷ`` [0F43] -> [0F42 0FB7]; and vowel signs with a non-zero combining
   class are put in canonical order: [0F40 0F74 0F71] -> [0F40 0F71 0F74].
5. ``order_stacks`` -- in a stack (a letter and the signs that follow it), subjoined
   letters come first, then the vowel signs and other marks of non-zero combining class
   (in canonical order), then the remaining marks of combining class 0 (anusvara U+0F7E,
   visarga U+0F7F, U+0F3E/U+0F3F). A vowel typed before a subjoined letter is therefore
   moved after it: ``སོྱ`` [0F66 0F7C 0FB1] -> ``སྱོ`` [0F66 0FB1 0F7C], and an
   anusvara typed before the vowels moves after them: [0F40 0F7E 0F7C 0F74 0F71] ->
   [0F40 0F71 0F7C 0F74 0F7E]. This order is NFC-stable, so the rules are idempotent.

Deliberately *not* done (and why): ``ༀ`` U+0F00 stays one character (it has no Unicode
decomposition and is a distinct symbol); doubled vowel signs are kept (they are errors
of the source, but deleting one would hide that); Botok's heuristic that rewrites ``ཥ``
before a subjoined letter as ``ར`` is not applied (``ཥྚ``, ``ཥྞ`` are valid Sanskrit).
"""

from __future__ import annotations

import unicodedata

#: Zero-width characters removed inside a syllable.
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")

TSHEG = "\u0f0b"


def is_tibetan(ch: str) -> bool:
    """Any code point of the Tibetan block."""
    return "\u0f00" <= ch <= "\u0fff"


def is_letter(ch: str) -> bool:
    """Base letters that start a stack: U+0F40..U+0F6C, U+0F88..U+0F8C and ``ༀ`` U+0F00."""
    return ch == "\u0f00" or "\u0f40" <= ch <= "\u0f6c" or "\u0f88" <= ch <= "\u0f8c"


def is_subjoined(ch: str) -> bool:
    """Subjoined letters and subjoined signs U+0F8D..U+0FBC."""
    return "\u0f8d" <= ch <= "\u0fbc"


def is_mark(ch: str) -> bool:
    """Signs that belong to the stack before them: vowel signs, anusvara, visarga,
    candrabindu, halanta, subjoined letters, tsa-phru, ngas-bzung, yar/mar tshes, padma
    gdan. (U+0F85 paluta is punctuation; U+0F18/U+0F19 attach to digits.)"""
    return (
        "\u0f71" <= ch <= "\u0f84"
        or ch in "\u0f86\u0f87\u0f35\u0f37\u0f39\u0f3e\u0f3f\u0fc6"
        or is_subjoined(ch)
    )


def is_syllable_char(ch: str) -> bool:
    """A letter or mark: what a syllable is made of (besides its trailing tsheg)."""
    return is_letter(ch) or is_mark(ch)


def deprecated_vowels(text: str) -> str:
    """Rule 1: U+0F77 -> U+0FB2 U+0F71 U+0F80, U+0F79 -> U+0FB3 U+0F71 U+0F80."""
    return text.replace("\u0f77", "\u0fb2\u0f71\u0f80").replace("\u0f79", "\u0fb3\u0f71\u0f80")


def unify_tsheg(text: str) -> str:
    """Rule 2: the non-breaking tsheg U+0F0C becomes U+0F0B."""
    return text.replace("\u0f0c", TSHEG)


def drop_zero_width(text: str) -> str:
    """Rule 3: remove runs of zero-width characters with a syllable character on both sides."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in ZERO_WIDTH:
            j = i
            while j < n and text[j] in ZERO_WIDTH:
                j += 1
            inside = i > 0 and j < n and is_syllable_char(text[i - 1]) and is_syllable_char(text[j])
            if not inside:
                out.append(text[i:j])
            i = j
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _tibetan_runs(text: str) -> list[tuple[bool, str]]:
    """Split into maximal runs of Tibetan / non-Tibetan code points."""
    runs: list[tuple[bool, str]] = []
    for ch in text:
        tib = is_tibetan(ch)
        if runs and runs[-1][0] == tib:
            runs[-1] = (tib, runs[-1][1] + ch)
        else:
            runs.append((tib, ch))
    return runs


def nfc(text: str) -> str:
    """Rule 4: NFC applied to the Tibetan runs only (other text is left as it is)."""
    return "".join(unicodedata.normalize("NFC", s) if tib else s for tib, s in _tibetan_runs(text))


def _stack_key(ch: str) -> tuple[int, int]:
    if is_subjoined(ch):
        return (0, 0)
    ccc = unicodedata.combining(ch)
    if ccc:
        return (1, ccc)
    return (2, 0)


def order_stacks(text: str) -> str:
    """Rule 5: stable-sort the marks after each letter by (subjoined, ccc>0 by ccc, rest)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        out.append(ch)
        i += 1
        if not is_letter(ch):
            continue
        j = i
        while j < n and is_mark(text[j]):
            j += 1
        out.extend(sorted(text[i:j], key=_stack_key))  # sorted() is stable
        i = j
    return "".join(out)


RULES = (deprecated_vowels, unify_tsheg, drop_zero_width, nfc, order_stacks)


def normalize(text: str) -> str:
    """Apply :data:`RULES` in order. Idempotent; text without Tibetan is returned as is."""
    for rule in RULES:
        text = rule(text)
    return text


def syllables(text: str) -> list[str]:
    """Tibetan syllables of ``text``: a maximal run of letters and marks that contains at
    least one letter, with its trailing tsheg when there is one. Orphan marks (a vowel
    sign with no letter before it) are not syllables."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if not is_syllable_char(text[i]):
            i += 1
            continue
        j = i
        while j < n and is_syllable_char(text[j]):
            j += 1
        if j < n and text[j] == TSHEG:
            j += 1
        if any(is_letter(c) for c in text[i:j]):
            out.append(text[i:j])
        i = j
    return out
