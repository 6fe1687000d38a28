"""Which script a text is written in: the letter-share measure behind the language
reward, the GRPO language-drift monitor and text checks (a text utility, beside the
loaders that read the text)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Literal

# Unicode blocks per script (the letters and marks a script writes with).
SCRIPT_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "tibetan": ((0x0F00, 0x0FFF),),
    "han": (
        (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF),
        (0x2A700, 0x2EBEF), (0x30000, 0x3134F), (0x3005, 0x3007),
    ),
    "latin": (
        (0x0041, 0x005A), (0x0061, 0x007A), (0x00C0, 0x024F), (0x1E00, 0x1EFF),
        (0x2C60, 0x2C7F), (0xA720, 0xA7FF), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A),
    ),
}
Script = Literal["tibetan", "han", "latin"]


def script_of(ch: str) -> str | None:
    cp = ord(ch)
    for name, ranges in SCRIPT_RANGES.items():
        if any(lo <= cp <= hi for lo, hi in ranges):
            return name
    return None


def script_share(text: str, scripts: Sequence[str]) -> float:
    """Share of the letters of ``text`` written in ``scripts`` (0 when it has no letters).

    Combining marks outside every script block (U+0300–U+036F accents, ...) count with
    the letter they follow.
    """
    letters = hits = 0
    prev: str | None = None
    for ch in text:
        cat = unicodedata.category(ch)
        if cat[0] not in "LM":
            prev = None
            continue
        s = script_of(ch)
        if s is None and cat[0] == "M":
            s = prev
        letters += 1
        hits += s in scripts
        prev = s
    return hits / letters if letters else 0.0
