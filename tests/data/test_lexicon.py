"""Bilingual lexicons and dictionary-based code-switching (``ftib.data.lexicon``)."""

from __future__ import annotations

import pytest

from ftib.core import FtibError
from ftib.data.lexicon import code_switch, read_lexicon

PAIRS = [("ཉ", "鱼"), ("རི", "山"), ("པར", "图"), ("ཤིང་སྡོང", "树")]


def _chat(user, answer="是。", images=("a.png",)):
    return ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user}]},
             {"role": "assistant", "content": [{"type": "text", "text": answer}]}], list(images), "f.jsonl (id 1)")


def _user_text(record):
    return record[0][0]["content"][1]["text"]


def test_to_tibetan_switches_the_translation_words_of_user_turns_only():
    rec = _chat("这张图里有鱼和树吗？", answer="鱼")
    copies, origin, stats = code_switch([rec, _chat("hello")], PAIRS, share=1.0, seed=0)
    assert origin == [0] and stats == {"candidates": 1, "records": 1, "words": 3, "ambiguous": 0}
    assert _user_text(copies[0]) == "这张པར里有ཉ和ཤིང་སྡོང吗？"
    assert copies[0][0][1] == rec[0][1]  # the answer stays
    assert copies[0][1] == ["a.png"] and copies[0][2].endswith("(code-switched)")
    assert _user_text(rec) == "这张图里有鱼和树吗？"  # the original is not touched


def test_from_tibetan_matches_whole_syllables_only():
    """``ཉ`` (fish) is a syllable of its own, not the start of ``ཉིན`` or ``ཉི``."""
    rec = _chat("པར་འདིར་ཉ་ཡོད་དམ། ཉིན་མོ་ཉི་མ།", answer="ཡོད།")
    copies, _, stats = code_switch([rec], PAIRS, share=1.0, seed=0, direction="from_tibetan")
    assert _user_text(copies[0]) == "图་འདིར་鱼་ཡོད་དམ། ཉིན་མོ་ཉི་མ།"
    assert stats["words"] == 2


def test_both_directions_and_share_and_plain_string_content():
    zh = _chat("图里有山吗？")
    bo = ([{"role": "user", "content": "རི་ཡོད་དམ།"}, {"role": "assistant", "content": "ཡོད།"}], [], "b")
    copies, origin, stats = code_switch([zh, bo], PAIRS, share=1.0, seed=0, direction="both")
    assert sorted(origin) == [0, 1] and stats["candidates"] == 2
    assert {c[0][0]["content"] if isinstance(c[0][0]["content"], str) else _user_text(c) for c in copies} == \
        {"པར里有རི吗？", "山་ཡོད་དམ།"}
    many = [_chat(f"图里有山吗？{i}") for i in range(10)]
    half, origin, _ = code_switch(many, PAIRS, share=0.5, seed=1)
    again, origin2, _ = code_switch(many, PAIRS, share=0.5, seed=1)
    assert len(half) == 5 and origin == origin2 and origin == sorted(origin)


def test_ambiguous_entries_are_counted_and_the_first_used():
    copies, _, stats = code_switch([_chat("有山吗")], [("རི", "山"), ("རི་བོ", "山")], share=1.0, seed=0)
    assert stats["ambiguous"] == 1 and _user_text(copies[0]) == "有རི吗"


def test_nothing_to_switch_is_an_error_naming_the_direction():
    with pytest.raises(FtibError, match=r"code_switch \(to_tibetan\): no word of the lexicon's 4 pairs"):
        code_switch([_chat("Is there a fish?")], PAIRS, share=1.0, seed=0)
    with pytest.raises(ValueError, match="direction 'sideways'"):
        code_switch([_chat("有鱼")], PAIRS, share=1.0, seed=0, direction="sideways")


def test_the_worlds_lexicon_without_answer_words():
    full, words = read_lexicon("ftibworld"), read_lexicon("ftibworld", answers=False)
    assert set(words) < set(full)
    assert all(zh not in ("是", "不是", "对", "错") for _, zh in words)
