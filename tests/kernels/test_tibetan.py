"""Tibetan normaliser and syllabifier: rules, Botok's test vectors, properties, parity
of the fast module with the readable reference."""

from __future__ import annotations

import csv
import unicodedata
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from ftib.kernels import tibetan
from ftib.kernels.reference import tibetan as ref

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
VECTORS = SHARED / "normalizer_test_vectors.tsv"


def cps(s: str) -> str:
    return " ".join(f"U+{ord(c):04X}" for c in s)


def from_cps(field: str) -> str:
    return "".join(chr(int(x[2:], 16)) for x in field.split())


# --------------------------------------------------------------------------- rules

RULE_EXAMPLES = [
    # (rule, input, expected) -- the examples of kernels/reference/tibetan.py
    ("deprecated U+0F77", "\u0f40\u0f77", "\u0f40\u0fb2\u0f71\u0f80"),
    ("deprecated U+0F79", "\u0f79", "\u0fb3\u0f71\u0f80"),
    ("tsheg variant", "\u0f40\u0f0c\u0f41", "\u0f40\u0f0b\u0f41"),
    ("zero width inside", "\u0f56\u0f7c\u200b\u0f51", "\u0f56\u0f7c\u0f51"),
    ("zero width inside stack", "\u0f40\u200d\u0f72", "\u0f40\u0f72"),
    ("zero width run inside", "\u0f56\u200b\ufeff\u2060\u0f51", "\u0f56\u0f51"),
    ("zero width after tsheg kept", "\u0f40\u0f0b\u200b\u0f41", "\u0f40\u0f0b\u200b\u0f41"),
    ("NFC U+0F73", "\u0f40\u0f73", "\u0f40\u0f71\u0f72"),
    ("NFC U+0F75", "\u0f40\u0f75", "\u0f40\u0f71\u0f74"),
    ("NFC U+0F81", "\u0f40\u0f81", "\u0f40\u0f71\u0f80"),
    ("NFC U+0F43", "\u0f43", "\u0f42\u0fb7"),
    ("canonical order of vowels", "\u0f40\u0f74\u0f71", "\u0f40\u0f71\u0f74"),
    ("vowel before subjoined", "\u0f66\u0f7c\u0fb1", "\u0f66\u0fb1\u0f7c"),
    ("two subjoined after vowel", "\u0f66\u0f74\u0f90\u0fb2", "\u0f66\u0f90\u0fb2\u0f74"),
    ("anusvara before vowels", "\u0f40\u0f7e\u0f7c\u0f74\u0f71", "\u0f40\u0f71\u0f7c\u0f74\u0f7e"),
    ("om kept", "\u0f00", "\u0f00"),
]


@pytest.mark.parametrize("impl", [tibetan.normalize, ref.normalize], ids=["fast", "reference"])
@pytest.mark.parametrize("rule,text,expected", RULE_EXAMPLES, ids=[r[0] for r in RULE_EXAMPLES])
def test_rule_examples(impl, rule, text, expected):
    got = impl(text)
    assert got == expected, f"{rule}: {cps(text)} -> {cps(got)}, expected {cps(expected)}"


def test_non_tibetan_examples_untouched():
    for text in ["e\u0301 (not NFC)", "a\u200bb", "👩\u200d💻", "中文\ufeff", "ﬁ Å"]:
        assert tibetan.normalize(text) is text
        assert ref.normalize(text) == text


def test_non_tibetan_next_to_tibetan_untouched():
    # NFC is applied to Tibetan runs only: the decomposed é keeps its two code points.
    text = "cafe\u0301 \u0f40\u0f73 e\u0301"
    assert tibetan.normalize(text) == "cafe\u0301 \u0f40\u0f71\u0f72 e\u0301"


def test_type_error():
    with pytest.raises(TypeError, match="expects str"):
        tibetan.normalize(b"\xe0\xbd\x80")


# ------------------------------------------------------------------- Botok vectors

# Botok rules this normaliser deliberately does not follow (see kernels/reference/tibetan.py).
NOT_FOLLOWED = {
    "U+0F00": "U+0F00 has no Unicode decomposition; kept as one character",
    "U+0F65 U+0F99 U+0F7A U+0F7A": "ssa before a subjoined letter is valid Sanskrit; not rewritten",
}


def _vectors():
    if not VECTORS.is_file():
        return []
    with VECTORS.open(encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.mark.skipif(not VECTORS.is_file(), reason="../shared/data is absent")
@pytest.mark.parametrize("row", _vectors(), ids=lambda r: f"{r['kind']}:{r['input_codepoints']}")
def test_botok_vectors(row):
    """Botok orders marks graphically (bottom vowel before top vowel), which is not NFC;
    its expectation is compared in NFC + stack order, the one canonical form here."""
    text = from_cps(row["input_codepoints"])
    if row["input_codepoints"] in NOT_FOLLOWED:
        pytest.skip(NOT_FOLLOWED[row["input_codepoints"]])
    expected = ref.order_stacks(unicodedata.normalize("NFC", from_cps(row["expected_codepoints"])))
    got = tibetan.normalize(text)
    assert got == expected, f"{cps(text)} -> {cps(got)}, expected {cps(expected)}"
    assert ref.normalize(text) == got


@pytest.mark.skipif(not VECTORS.is_file(), reason="../shared/data is absent")
def test_not_followed_rows_still_exist():
    """The exceptions above name rows that are in the file (a stale list would hide nothing)."""
    present = {r["input_codepoints"] for r in _vectors()}
    assert set(NOT_FOLLOWED) <= present


# ------------------------------------------------------------------- properties

TIB_CHARS = [chr(c) for c in range(0x0F00, 0x1000) if unicodedata.category(chr(c)) != "Cn"]
NOISE = list("  \n\u200b\u200c\u200d\u2060\ufeff") + list("aé中e\u0301") + ["\u0f0c", "\u0f73", "\u0f77"]
tibetan_heavy = st.text(alphabet=st.sampled_from(TIB_CHARS + NOISE), max_size=60)
no_tibetan = st.text(
    alphabet=st.characters(codec="utf-8").filter(lambda c: not "\u0f00" <= c <= "\u0fff"), max_size=80
)


@settings(max_examples=400, deadline=None)
@given(tibetan_heavy)
def test_idempotent_and_matches_reference(text):
    once = tibetan.normalize(text)
    assert tibetan.normalize(once) == once
    assert ref.normalize(text) == once


@settings(max_examples=300, deadline=None)
@given(tibetan_heavy)
def test_output_is_nfc_on_tibetan_runs(text):
    out = tibetan.normalize(text)
    for run in regex.findall(r"[\u0f00-\u0fff]+", out):
        assert unicodedata.normalize("NFC", run) == run
    assert "\u0f0c" not in out and "\u0f77" not in out and "\u0f73" not in out


@settings(max_examples=300, deadline=None)
@given(no_tibetan)
def test_text_without_tibetan_is_untouched(text):
    assert tibetan.normalize(text) == text
    assert ref.normalize(text) == text


@settings(max_examples=300, deadline=None)
@given(tibetan_heavy)
def test_syllables_match_reference(text):
    assert tibetan.syllables(text) == ref.syllables(text)


# ------------------------------------------------------------------- syllables


def test_syllables_example():
    assert tibetan.syllables("བོད་ཡིག། abc ི ཀྲུང་གོ") == ["བོད་", "ཡིག", "ཀྲུང་", "གོ"]


def test_split_pattern_keeps_syllables_whole():
    pattern = regex.compile(tibetan.split_pattern(r"\p{L}+|\s+|[^\s\p{L}]+"))
    assert pattern.findall("བཀྲ་ཤིས་ བདེ་ལེགས།") == ["བཀྲ་", "ཤིས་", " བདེ་", "ལེགས", "།"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")
@pytest.mark.parametrize("name", ["derge_kangyur_vol033_astasahasrika.txt", "ntrex128_news_bo.txt"])
def test_real_text(name):
    text = (SHARED / name).read_text(encoding="utf-8")[:200_000]
    out = tibetan.normalize(text)
    assert ref.normalize(text) == out
    assert tibetan.normalize(out) == out
    sylls = tibetan.syllables(out)
    assert sylls == ref.syllables(out)
    # Real text is mostly syllables: nearly every Tibetan letter is in one.
    letters = len(regex.findall(f"[{tibetan.LETTERS}]", out))
    assert sum(len(regex.findall(f"[{tibetan.LETTERS}]", s)) for s in sylls) == letters
