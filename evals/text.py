"""Tokenisation of hypotheses and references for the text metrics.

BLEU, chrF and ROUGE-L need words. Tibetan has no spaces between words; its unit is the
syllable, delimited by the tsheg (``་``) and closed by the shad (``།``). Splitting on
whitespace would make a whole clause one "word", and a Chinese segmenter (jieba) knows
nothing of Tibetan, so Tibetan runs are split into syllables here (with
:func:`ftib.kernels.tibetan.syllables`, after :func:`ftib.kernels.tibetan.normalize`, so
that two spellings of one syllable compare equal) and the tsheg is dropped from each
syllable (``བོད་`` and ``བོད`` before a shad are the same syllable). Shad and other
Tibetan punctuation are not tokens. Outside Tibetan: every CJK ideograph is its own
token (as sacrebleu's ``zh`` tokenizer does) and other text is split into runs of letters
or digits (lower-cased); punctuation is dropped.
"""

from __future__ import annotations

import re
import unicodedata

from ftib.kernels.tibetan import TSHEG, normalize, syllables

__all__ = ["metric_tokens", "tokenize_for_metric"]

_TIBETAN_RUN = re.compile("[\u0f00-\u0fff]+")
# Tibetan digits (and half-digits) are words too: "༣" is the number three.
_TIBETAN_DIGITS = re.compile("[\u0f20-\u0f33]+")
_CJK = (
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002ebef"
    "\u3040-\u30ff\uac00-\ud7af"
)
_OTHER = re.compile(f"[{_CJK}]|[^\\W_]+", re.UNICODE)
_CJK_CHAR = re.compile(f"[{_CJK}]")


def _other_tokens(text: str) -> list[str]:
    out = []
    # Full-width Latin and digits (common in Chinese text) become their ASCII forms.
    for tok in _OTHER.findall(unicodedata.normalize("NFKC", text)):
        out.append(tok if _CJK_CHAR.fullmatch(tok) else tok.lower())
    return out


def metric_tokens(text: str) -> list[str]:
    """Tokens of ``text`` for BLEU/chrF/ROUGE-L.

    Example: ``metric_tokens("བོད་ཡིག། 西藏 abc!")`` -> ``["བོད", "ཡིག", "西", "藏", "abc"]``.
    """
    text = normalize(text)
    out: list[str] = []
    pos = 0
    for m in _TIBETAN_RUN.finditer(text):
        out += _other_tokens(text[pos : m.start()])
        run, start = m.group(0), 0
        for d in _TIBETAN_DIGITS.finditer(run):
            out += [s.rstrip(TSHEG) for s in syllables(run[start : d.start()])]
            out.append(d.group(0))
            start = d.end()
        out += [s.rstrip(TSHEG) for s in syllables(run[start:])]
        pos = m.end()
    out += _other_tokens(text[pos:])
    return out


def tokenize_for_metric(text: str) -> str:
    """``metric_tokens`` joined by single spaces (input for sacrebleu's ``none`` tokenizer)."""
    return " ".join(metric_tokens(text))
