"""Repair rules, script shares, syllable measures and the clean config (no datatrove)."""

from __future__ import annotations

import pytest

from ftib.core.errors import ConfigError
from ftib.data.clean import rules
from ftib.data.clean.config import CleanConfig, MinhashConfig, load_clean_config

TSHEG = "\u0f0b"

# (rule, dirty input, expected output, expected number of fixes)
CASES = [
    ("zero_width", "\ufeffབོད་ཡིག", "བོད་ཡིག", 1),
    ("zero_width", "བོད་\u200bཡིག\u2060", "བོད་ཡིག", 2),
    ("zero_width", "بی\u200cنام", "بی\u200cنام", 0),  # ZWNJ in Persian is meaning, kept
    ("zero_width", "བོད\u200d་", "བོད་", 1),
    ("nbsp", "བོད\u00a0ཡིག\u202fabc\u2007x", "བོད ཡིག abc x", 3),
    ("replacement_char", "བོ\ufffd\ufffdད་", "བོད་", 1),
    ("private_use", "བོད\uf100\uf101་ཡིག\ue000", "བོད་ཡིག", 2),
    ("doubled_vowel", "གིིས་", "གིས་", 1),
    ("doubled_vowel", "བོོོད་ཀུུ", "བོད་ཀུ", 2),
    ("doubled_vowel", "གི་གི་", "གི་གི་", 0),  # the same vowel on two stacks is no error
    ("orphan_mark", "བོད་ིཡིག", "བོད་ཡིག", 1),
    ("orphan_mark", "ོབོད abc ུ", "བོད abc ", 2),
    ("orphan_mark", "སྐྱེས་", "སྐྱེས་", 0),  # subjoined letters and vowels on a stack stay
    ("space_before_tsheg", "བོད ་ཡིག  ་", "བོད་ཡིག་", 2),
    ("repeated_tsheg", "ཐོག་་རུས་་་མིང", "ཐོག་རུས་མིང", 2),
    ("latin_glue", "Welsh AMsརང་ཉིད", "Welsh AMs རང་ཉིད", 1),
    ("latin_glue", "ཞིག་Brexitཡིན", "ཞིག་ Brexit ཡིན", 2),
    ("latin_glue", "Trump ནི། 2017ལོར", "Trump ནི། 2017ལོར", 0),  # spaced Latin, digits untouched
]


@pytest.mark.parametrize("rule,dirty,clean,fixes", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_repair_rule(rule, dirty, clean, fixes):
    fn = {**rules.PRE_RULES, **rules.POST_RULES}[rule]
    out, n = fn(dirty)
    assert out == clean, f"{rule}: {rules.describe(dirty)!r} -> {rules.describe(out)!r}"
    assert n == fixes
    # A repair is idempotent: its output has nothing left to repair.
    assert fn(out) == (out, 0)


def test_rule_order_and_names():
    assert rules.ALL_RULES == ("zero_width", "nbsp", "replacement_char", "private_use", "doubled_vowel",
                               "orphan_mark", "space_before_tsheg", "repeated_tsheg", "latin_glue")
    assert CleanConfig().repairs.enabled() == rules.ALL_RULES
    assert "latin_glue" not in load_clean_config(None, {"repairs": {"latin_glue": False}}).repairs.enabled()


def test_doubled_vowel_needs_normalised_order():
    """A doubled vowel split by a subjoined letter is only adjacent after the normaliser
    sorts the stack, which is why the rule runs after it."""
    from ftib.kernels.tibetan import normalize

    dirty = "ས\u0f7c\u0fb1\u0f7c"  # o, subjoined ya, o
    assert rules.doubled_vowel(dirty)[1] == 0
    assert rules.doubled_vowel(normalize(dirty)) == ("ས\u0fb1\u0f7c", 1)


def test_script_counts_and_share():
    assert rules.script_counts("བོད་ཡིག").share == 1.0
    assert rules.script_counts("སྐྱེས").tibetan == 4  # base and two subjoined letters; vowel not a letter
    c = rules.script_counts("བོད abcd")
    assert (c.tibetan, c.other) == (2, 4)
    assert rules.script_counts("12 ། ...").share is None


def test_syllable_tokens_and_measures():
    assert rules.syllable_tokens("བོད་ཡིག། abc 12 ་ི") == ["བོད", "ཡིག", "abc", "12"]
    assert rules.tibetan_syllable_count("བོད་ཡིག། abc") == 2
    toks = "ཀ ཁ ག ཀ ཁ ག ང".split()
    assert rules.duplicate_ngram_fraction(toks, 3) == pytest.approx(6 / 7)
    assert rules.duplicate_ngram_fraction(toks, 4) == 0.0
    assert rules.duplicate_ngram_fraction(["ཀ"], 2) == 0.0
    assert rules.non_tibetan_share("བོད ab") == pytest.approx(2 / 5)
    assert rules.is_punctuation_only("།། ༄༅ ***") and rules.is_punctuation_only("12.3")
    assert not rules.is_punctuation_only("བོད།") and not rules.is_punctuation_only("  ")


def test_describe_names_invisible_characters():
    assert rules.describe("a\u00a0b\ufeff\ufffd") == "a<U+00A0>b<U+FEFF><U+FFFD>"


def test_minhash_rows_from_threshold():
    assert MinhashConfig().rows == 8  # datatrove's default 14 x 8
    m = MinhashConfig(bands=20, threshold=0.8)
    assert abs(m.effective_threshold - 0.8) < 0.02
    assert MinhashConfig(bands=20, threshold=0.5).rows < m.rows


def test_config_errors_name_the_key(tmp_path):
    p = tmp_path / "clean.yaml"
    p.write_text("script:\n  doc_min_shar: 0.5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"script\.doc_min_shar.*doc_min_share"):
        load_clean_config(p)
    p.write_text("quality: {min_syllables: many}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"quality\.min_syllables"):
        load_clean_config(p)
    p.write_text("script: {mixed_lines: maybe}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"mixed_lines"):
        load_clean_config(p)
    p.write_text("minhash: {threshold: 1.5}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"threshold"):
        load_clean_config(p)
    p.write_text("executor: {kind: ray, workers: 2}\nread: {txt_mode: line}\n", encoding="utf-8")
    cfg = load_clean_config(p, {"executor": {"workers": 3}})
    assert (cfg.executor.kind, cfg.executor.workers, cfg.read.txt_mode) == ("ray", 3, "line")
