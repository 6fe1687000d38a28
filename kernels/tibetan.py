"""Tibetan text: normaliser, syllabifier and the syllable-aware split pattern.

The rules, with an example each, are documented in :mod:`ftib.kernels.reference.tibetan`
(the readable reference this module must agree with). This module is the fast Python
path: regular expressions and ``str.translate`` over Tibetan runs only, so text without
Tibetan is returned unchanged without being copied character by character. The fused C++
tokenizer (normalise -> split -> BPE) is a later step; its parity target is this module.

Split pattern: :data:`SYLLABLE_PATTERN` matches one Tibetan syllable -- letters and marks
with a trailing tsheg, and an optional leading space -- and :func:`split_pattern` puts it
in front of a base tokenizer's own pattern, so that every other script is split exactly as
the base tokenizer splits it.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = [
    "LETTERS",
    "MARKS",
    "SYLLABLE_PATTERN",
    "ZERO_WIDTH",
    "TSHEG",
    "contains_tibetan",
    "normalize",
    "syllables",
    "split_pattern",
]

TSHEG = "\u0f0b"
#: Letters that start a stack (character-class body, usable in Python ``re``/``regex``,
#: Oniguruma and fancy-regex alike).
LETTERS = "\u0f00\u0f40-\u0f6c\u0f88-\u0f8c"
#: Signs that belong to the stack before them (vowels, anusvara, visarga, subjoined ...).
MARKS = "\u0f71-\u0f84\u0f86\u0f87\u0f35\u0f37\u0f39\u0f3e\u0f3f\u0fc6\u0f8d-\u0fbc"
SUBJOINED = "\u0f8d-\u0fbc"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff"

#: One Tibetan syllable as the tokenizer sees it: optional leading space, letters and
#: marks, optional trailing tsheg.
SYLLABLE_PATTERN = f" ?[{LETTERS}{MARKS}]+{TSHEG}?"

_RUN = re.compile(f"[\u0f00-\u0fff]+(?:[{ZERO_WIDTH}]+[\u0f00-\u0fff]+)*")
_TRANSLATE = str.maketrans({
    "\u0f77": "\u0fb2\u0f71\u0f80",
    "\u0f79": "\u0fb3\u0f71\u0f80",
    "\u0f0c": TSHEG,
})
_ZW_INSIDE = re.compile(
    f"(?<=[{LETTERS}{MARKS}])[{ZERO_WIDTH}]+(?=[{LETTERS}{MARKS}])"
)
# A letter followed by at least two marks: the only place where rule 5 can reorder.
_STACK = re.compile(f"[{LETTERS}]([{MARKS}]{{2,}})")
_SYLLABLE = re.compile(f"[{LETTERS}{MARKS}]+{TSHEG}?")
_HAS_LETTER = re.compile(f"[{LETTERS}]")
_ANY_TIBETAN = re.compile("[\u0f00-\u0fff]")


@lru_cache(maxsize=None)
def _mark_key(ch: str) -> tuple[int, int]:
    if "\u0f8d" <= ch <= "\u0fbc":
        return (0, 0)
    ccc = unicodedata.combining(ch)
    return (1, ccc) if ccc else (2, 0)


@lru_cache(maxsize=65536)
def _order_tail(tail: str) -> str:
    return "".join(sorted(tail, key=_mark_key))


def _order_stack(m: re.Match[str]) -> str:
    s = m.group(0)
    return s[0] + _order_tail(m.group(1))


def _normalize_run(m: re.Match[str]) -> str:
    s = m.group(0).translate(_TRANSLATE)
    s = _ZW_INSIDE.sub("", s)
    s = unicodedata.normalize("NFC", s)
    return _STACK.sub(_order_stack, s)


def contains_tibetan(text: str) -> bool:
    """True when ``text`` holds at least one code point of the Tibetan block."""
    return _ANY_TIBETAN.search(text) is not None


def normalize(text: str) -> str:
    """Normalise Tibetan in ``text`` (rules in :mod:`ftib.kernels.reference.tibetan`).

    Idempotent; text without Tibetan comes back unchanged (the same object).
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize expects str, got {type(text).__name__}")
    if _ANY_TIBETAN.search(text) is None:
        return text
    return _RUN.sub(_normalize_run, text)


def syllables(text: str) -> list[str]:
    """Tibetan syllables of ``text``, each with its trailing tsheg when it has one.

    A syllable is a maximal run of letters and marks containing at least one letter;
    orphan marks are not counted. Example: ``syllables("བོད་ཡིག། abc")`` ->
    ``["བོད་", "ཡིག"]``.
    """
    return [s for s in _SYLLABLE.findall(text) if _HAS_LETTER.search(s)]


def split_pattern(base_pattern: str) -> str:
    """The extended tokenizer's split pattern: a Tibetan syllable, else the base pattern.

    On text without Tibetan the first alternative never matches, so the result splits it
    exactly as ``base_pattern`` does. (The tokenizer first isolates Tibetan syllables with
    :data:`SYLLABLE_PATTERN` alone, so that base alternatives such as ``\\p{L}+`` never run
    into Tibetan from a neighbouring Latin word; see ``docs/tokenizer.md``.)
    """
    return f"{SYLLABLE_PATTERN}|{base_pattern}"
