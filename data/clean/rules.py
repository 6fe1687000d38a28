"""Repair rules, script shares and syllable quality measures for ``ftib data clean``.

Pure functions over ``str`` (no datatrove import), so the rules are testable alone and
the datatrove blocks in :mod:`ftib.data.clean.blocks` stay thin.

Repairs are what :func:`ftib.kernels.tibetan.normalize` deliberately leaves alone
(see :mod:`ftib.kernels.reference.tibetan`, "Deliberately not done"): they change or
delete characters that are errors of the source, so they belong in corpus cleaning,
where each one is counted and can be turned off, and not in the tokenizer's
normaliser, which must never hide what the source said. Each rule returns the repaired
text and the number of places it changed.

Order (:data:`PRE_RULES` run before the normaliser, :data:`POST_RULES` after it):

* before: ``zero_width``, ``nbsp``, ``replacement_char``, ``private_use`` -- encoding
  noise; removing it first lets the normaliser see whole stacks;
* after: ``doubled_vowel``, ``orphan_mark``, ``space_before_tsheg``, ``repeated_tsheg``,
  ``latin_glue`` -- spelling and spacing, which need the normaliser's canonical mark order
  (a doubled vowel is only adjacent once the marks of a stack are sorted).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from ftib.kernels.tibetan import LETTERS, MARKS, TSHEG

# --- repairs -----------------------------------------------------------------------

#: Zero-width characters removed everywhere: ZWSP, word joiner, BOM/ZWNBSP. ZWNJ/ZWJ
#: carry meaning in other scripts (Persian, Indic), so they are only removed next to
#: Tibetan (the normaliser already drops them *inside* a syllable).
_ZW_ALWAYS = re.compile("[\u200b\u2060\ufeff]+")
_ZW_NEAR_TIBETAN = re.compile("(?<=[\u0f00-\u0fff])[\u200c\u200d]+|[\u200c\u200d]+(?=[\u0f00-\u0fff])")
#: No-break spaces (NBSP, narrow NBSP, figure space) -> an ordinary space.
_NBSP = re.compile("[\u00a0\u202f\u2007]")
_FFFD = re.compile("\ufffd+")
#: The BMP private-use area: legacy Tibetan fonts (Sambhota, TCRC, Bod-Yig) put
#: precomposed stacks there. Their mapping differs per font, so the only safe repair
#: without knowing the font is deletion (counted, so a source full of them shows up).
_PUA = re.compile("[\ue000-\uf8ff]+")
#: Vowel signs of one stack (after the normaliser's sort, a duplicate is adjacent).
_VOWELS = "\u0f71-\u0f7d\u0f80"
_DOUBLED_VOWEL = re.compile(f"([{_VOWELS}])\\1+")
#: A mark with no letter or mark before it: at the start, or after anything else.
_ORPHAN = re.compile(f"(?<![{LETTERS}{MARKS}])[{MARKS}]+")
_SPACE_BEFORE_TSHEG = re.compile(f"[ \t]+(?={TSHEG})")
_REPEATED_TSHEG = re.compile(f"{TSHEG}{{2,}}")
#: Latin letters glued to a Tibetan letter, mark or tsheg (either side).
_LATIN_GLUE = re.compile(f"(?<=[{LETTERS}{MARKS}{TSHEG}])(?=[A-Za-z])|(?<=[A-Za-z])(?=[{LETTERS}{MARKS}])")


def _sub(pattern: re.Pattern[str], repl: str | Callable[[re.Match[str]], str], text: str) -> tuple[str, int]:
    return pattern.subn(repl, text)


def zero_width(text: str) -> tuple[str, int]:
    """Remove ZWSP/WJ/BOM everywhere and ZWNJ/ZWJ next to Tibetan: ``"\\ufeffབོད"`` -> ``"བོད"``."""
    text, a = _sub(_ZW_ALWAYS, "", text)
    text, b = _sub(_ZW_NEAR_TIBETAN, "", text)
    return text, a + b


def nbsp(text: str) -> tuple[str, int]:
    """No-break spaces become spaces: ``"བོད\\u00a0ཡིག"`` -> ``"བོད ཡིག"``."""
    return _sub(_NBSP, " ", text)


def replacement_char(text: str) -> tuple[str, int]:
    """Delete U+FFFD (a decoder already lost the character): ``"བོ\\ufffdད"`` -> ``"བོད"``."""
    return _sub(_FFFD, "", text)


def private_use(text: str) -> tuple[str, int]:
    """Delete private-use characters (legacy-font Tibetan): ``"བོད\\uf100"`` -> ``"བོད"``."""
    return _sub(_PUA, "", text)


def doubled_vowel(text: str) -> tuple[str, int]:
    """One vowel sign typed twice keeps one: ``"གིིས"`` -> ``"གིས"`` (NTREX line 179)."""
    return _sub(_DOUBLED_VOWEL, r"\1", text)


def orphan_mark(text: str) -> tuple[str, int]:
    """Delete marks with no letter to sit on: ``"བོད་ིཡིག"`` -> ``"བོད་ཡིག"``."""
    return _sub(_ORPHAN, "", text)


def space_before_tsheg(text: str) -> tuple[str, int]:
    """``"བོད ་ཡིག"`` -> ``"བོད་ཡིག"``."""
    return _sub(_SPACE_BEFORE_TSHEG, "", text)


def repeated_tsheg(text: str) -> tuple[str, int]:
    """``"ཐོག་་རུས"`` -> ``"ཐོག་རུས"`` (NTREX)."""
    return _sub(_REPEATED_TSHEG, TSHEG, text)


def latin_glue(text: str) -> tuple[str, int]:
    """A space between Latin and Tibetan: ``"Welsh AMsརང་"`` -> ``"Welsh AMs རང་"`` (NTREX)."""
    return _sub(_LATIN_GLUE, " ", text)


RepairFn = Callable[[str], tuple[str, int]]

#: Rules run before the normaliser, in order.
PRE_RULES: dict[str, RepairFn] = {
    "zero_width": zero_width,
    "nbsp": nbsp,
    "replacement_char": replacement_char,
    "private_use": private_use,
}
#: Rules run after the normaliser, in order.
POST_RULES: dict[str, RepairFn] = {
    "doubled_vowel": doubled_vowel,
    "orphan_mark": orphan_mark,
    "space_before_tsheg": space_before_tsheg,
    "repeated_tsheg": repeated_tsheg,
    "latin_glue": latin_glue,
}
ALL_RULES: tuple[str, ...] = (*PRE_RULES, *POST_RULES)


# --- script shares -----------------------------------------------------------------

_TIB_LETTER = re.compile("[\u0f00\u0f40-\u0f6c\u0f88-\u0f8c\u0f90-\u0fbc]")
# Word characters that are neither digits, underscore nor Tibetan: letters of other
# scripts (``\w`` is ``str.isalnum`` plus ``_``; a regex scan is ~10x a Python loop).
_OTHER_LETTER = re.compile("[^\\W\\d_\u0f00-\u0fff]")


class ScriptCounts(NamedTuple):
    """Letters of a text: Tibetan (base and subjoined) and of any other script."""

    tibetan: int
    other: int

    @property
    def share(self) -> float | None:
        """Tibetan letters / all letters; ``None`` for a text without letters."""
        total = self.tibetan + self.other
        return self.tibetan / total if total else None


def script_counts(text: str) -> ScriptCounts:
    """Count letters: a Tibetan letter is a base or subjoined consonant (vowel signs are
    marks, not letters); another letter is any ``str.isalpha`` character outside the
    Tibetan block (digits and punctuation count for neither)."""
    tib = len(_TIB_LETTER.findall(text))
    other = len(_OTHER_LETTER.findall(text))
    return ScriptCounts(tib, other)


_ANY_LETTER = re.compile("[^\\W\\d_]|[\u0f90-\u0fbc]")


def has_letters(line: str) -> bool:
    """True when ``line`` holds a letter of any script (Tibetan vowel signs alone are not)."""
    return _ANY_LETTER.search(line) is not None


# --- syllables -----------------------------------------------------------------------

_SYLLABLE_OR_WORD = re.compile(f"[{LETTERS}{MARKS}]+|[^\\W\u0f00-\u0fff]+")
_HAS_TIB_LETTER = re.compile(f"[{LETTERS}]")


def syllable_tokens(text: str) -> list[str]:
    """Tibetan syllables without their tsheg, and the words of other scripts, in order:
    ``"བོད་ཡིག། abc 12"`` -> ``["བོད", "ཡིག", "abc", "12"]``. Used for quality measures
    and MinHash shingles (syllables are Tibetan's unit; words do not exist in the
    script, and a word segmenter such as Botok would make dedup depend on a dictionary)."""
    return [t for t in _SYLLABLE_OR_WORD.findall(text)
            if not ("\u0f00" <= t[0] <= "\u0fff") or _HAS_TIB_LETTER.search(t)]


def tibetan_syllable_count(text: str) -> int:
    """Number of Tibetan syllables in ``text`` (syllables with at least one letter)."""
    return sum(1 for t in syllable_tokens(text) if "\u0f00" <= t[0] <= "\u0fff")


def duplicate_ngram_fraction(tokens: list[str], n: int) -> float:
    """Share of tokens covered by n-grams that occur more than once.

    Gopher's repetition measure ("fraction of characters in duplicate n-grams", Rae et
    al. 2021, "Scaling Language Models", appendix A, table A1), counted in syllables
    rather than characters because a Tibetan syllable's length in characters varies
    with its stack, not its content. 0.0 for fewer than ``n`` tokens.
    """
    if len(tokens) < n:
        return 0.0
    grams = list(zip(*(tokens[i:] for i in range(n))))
    counts = Counter(grams)
    covered = bytearray(len(tokens))
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i:i + n] = b"\x01" * n
    return sum(covered) / len(tokens)


def non_tibetan_share(text: str) -> float:
    """Share of non-space characters outside the Tibetan block (digits, Latin, CJK,
    symbols); 0.0 for an empty text."""
    non_space = len(text) - len(_SPACE.findall(text))
    if not non_space:
        return 0.0
    return len(_NON_TIBETAN.findall(text)) / non_space


_SPACE = re.compile(r"\s")
_NON_TIBETAN = re.compile("[^\\s\u0f00-\u0fff]")


def is_punctuation_only(line: str) -> bool:
    """A non-blank line without a letter of any script: ``"།། ༄༅ ***"``, ``"12.3"``."""
    return bool(line.strip()) and not has_letters(line)


def describe(text: str, limit: int = 80) -> str:
    """Show a snippet with invisible characters named (``<U+00A0>``) for reports."""
    out = []
    for ch in text[:limit]:
        cat = unicodedata.category(ch)
        if cat in ("Cf", "Co", "Zs") and ch != " " or ch == "\ufffd":
            out.append(f"<U+{ord(ch):04X}>")
        else:
            out.append(ch)
    return "".join(out) + ("..." if len(text) > limit else "")
