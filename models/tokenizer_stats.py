"""Tokenizer efficiency on Tibetan text: the numbers behind ``ftib tokenizer stats``.

Per corpus and tokenizer:

- ``tokens_per_syllable`` (fertility): all tokens of the text / Tibetan syllables
  (:func:`ftib.kernels.tibetan.syllables`). Punctuation, digits and Latin count as tokens.
- ``tibetan_tokens_per_syllable``: only tokens that start inside a Tibetan syllable chunk
  (the syllable with its tsheg and leading space) / syllables.
- ``tokens_per_char``: tokens / characters; ``bytes_per_token``: UTF-8 bytes / tokens.
- ``byte_fallback_share``: share of tokens whose bytes are not a whole UTF-8 string on
  their own (a fragment of a character: what a byte-level BPE falls back to for text it
  has not learned).

Text is normalised with :func:`ftib.kernels.tibetan.normalize` first (what ftib's data
pipeline feeds a model) unless ``normalize=False``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import Any

import regex

from ftib.kernels import tibetan
from ftib.models.vocab import to_bytes

__all__ = ["fallback_ids", "tokenizer_stats"]

_CHUNK = regex.compile(tibetan.SYLLABLE_PATTERN)
_LETTER = regex.compile(f"[{tibetan.LETTERS}]")


def fallback_ids(tokenizer) -> set[int]:
    """Ids whose byte-level string is a fragment of a UTF-8 character sequence."""
    out: set[int] = set()
    for tok, idx in tokenizer.get_vocab(with_added_tokens=False).items():
        try:
            to_bytes(tok).decode("utf-8")
        except UnicodeDecodeError:
            out.add(idx)
        except KeyError:  # not a byte-level string (a special token): not a fallback
            pass
    return out


def tokenizer_stats(tokenizer, lines: Iterable[str], *, normalize: bool = True,
                    batch_size: int = 256) -> dict[str, Any]:
    """Fertility and related numbers of one ``tokenizers.Tokenizer`` on ``lines``."""
    fallback = fallback_ids(tokenizer)
    n_lines = n_chars = n_bytes = n_syll = n_tok = n_tib_tok = n_fb = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal n_tok, n_tib_tok, n_fb
        for text, enc in zip(batch, tokenizer.encode_batch(batch, add_special_tokens=False)):
            n_tok += len(enc.ids)
            n_fb += sum(1 for i in enc.ids if i in fallback)
            spans = [m.span() for m in _CHUNK.finditer(text) if _LETTER.search(m.group(0))]
            if not spans:
                continue
            starts = [s for s, _ in spans]
            for start, _ in enc.offsets:
                k = bisect.bisect_right(starts, start) - 1
                if k >= 0 and start < spans[k][1]:
                    n_tib_tok += 1
        batch.clear()

    for line in lines:
        text = tibetan.normalize(line) if normalize else line
        n_lines += 1
        n_chars += len(text)
        n_bytes += len(text.encode("utf-8"))
        n_syll += len(tibetan.syllables(text))
        batch.append(text)
        if len(batch) >= batch_size:
            flush()
    flush()

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {
        "lines": n_lines, "characters": n_chars, "bytes": n_bytes, "syllables": n_syll,
        "tokens": n_tok,
        "tokens_per_syllable": ratio(n_tok, n_syll),
        "tibetan_tokens_per_syllable": ratio(n_tib_tok, n_syll),
        "tokens_per_char": ratio(n_tok, n_chars),
        "bytes_per_token": ratio(n_bytes, n_tok),
        "byte_fallback_share": ratio(n_fb, n_tok),
    }
