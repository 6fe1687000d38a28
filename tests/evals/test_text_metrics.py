"""Tibetan syllable tokenisation and the translation/headline metrics, including sanity
checks on real Tibetan-Chinese news text from ``../shared/data`` (skipped without it)."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from ftib.evals.headline import HeadlineEvaluator
from ftib.evals.metrics import rouge_l
from ftib.evals.text import metric_tokens, tokenize_for_metric
from ftib.evals.translation import bleu_chrf


def test_metric_tokens_split_tibetan_by_syllable():
    assert metric_tokens("བོད་ཡིག། 西藏 abc!") == ["བོད", "ཡིག", "西", "藏", "abc"]
    # the trailing tsheg before a shad and the shad itself are not part of the token
    assert metric_tokens("བཀྲ་ཤིས་།") == metric_tokens("བཀྲ་ཤིས།") == ["བཀྲ", "ཤིས"]
    # Tibetan digits are words; Latin glued to Tibetan (as in the NTREX text) is split off
    assert metric_tokens("ཁྱི་༣་ཡོད། AMsརང་") == ["ཁྱི", "༣", "ཡོད", "ams", "རང"]
    # two spellings of one syllable (vowel typed before the subjoined letter) are one token
    assert metric_tokens("\u0f66\u0f7c\u0fb1") == metric_tokens("\u0f66\u0fb1\u0f7c")


def test_bleu_chrf_identity_and_zero():
    refs = ["图里有两个绿色的三角形。", "那座黑色的山在中间。"]
    assert bleu_chrf(refs, refs, "zh")[0] == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0),
                                              "chrf++": pytest.approx(100.0)}
    zero = bleu_chrf(["abc", "xyz"], refs, "zh")[0]
    assert zero["bleu"] == 0.0 and zero["chrf"] == 0.0


def test_tibetan_bleu_counts_syllables_not_clauses():
    ref = "རི་ནག་པོ་དེ་ནི་དཀྱིལ་ན་ཡོད།"
    hyp = "རི་དཀར་པོ་དེ་ནི་དཀྱིལ་ན་ཡོད།"  # one syllable differs
    bo = bleu_chrf([hyp], [ref], "bo")[0]["bleu"]
    # whitespace tokenisation would see one token each and give 0
    import sacrebleu

    assert sacrebleu.corpus_bleu([hyp], [[ref]], tokenize="none").score == 0.0
    assert 30.0 < bo < 100.0


def test_headline_rouge_l_over_syllables():
    ev = HeadlineEvaluator(HeadlineEvaluator.Config(data=Path(".")))
    corpus, per = ev.surface(["ལྷ་མོས་མེ་ཏོག་ཉོས།"], ["ལྷ་མོས་མེ་ཏོག་སྨུག་པོ་གསུམ་ཉོས།"])
    # hyp 5 syllables, ref 8, LCS 5 -> P=1, R=5/8, F=2*(5/8)/(13/8)=10/13
    assert corpus["rouge_l"] == pytest.approx(10 / 13)
    assert per[0]["rouge_l_precision"] == 1.0


def _ntrex(shared_data, n=200):
    with open(shared_data / "ntrex128_bo_zh_en.tsv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return rows[:n]


def test_real_text_bleu_orders_systems(shared_data):
    rows = _ntrex(shared_data)
    refs = [r["zh"] for r in rows]
    rng = random.Random(0)
    shuffled = refs[:]
    rng.shuffle(shuffled)
    truncated = [r[: max(1, len(r) // 2)] for r in refs]
    perfect = bleu_chrf(refs, refs, "zh")[0]
    half = bleu_chrf(truncated, refs, "zh")[0]
    wrong = bleu_chrf(shuffled, refs, "zh")[0]
    assert perfect["bleu"] == pytest.approx(100.0)
    assert perfect["bleu"] > half["bleu"] > wrong["bleu"]
    assert perfect["chrf"] > half["chrf"] > wrong["chrf"]


def test_real_tibetan_tokenisation(shared_data):
    rows = _ntrex(shared_data, 100)
    for r in rows:
        toks = metric_tokens(r["bo"])
        assert toks, r["bo"]
        assert all("\u0f0b" not in t and "\u0f0d" not in t for t in toks)
    # a Tibetan reference against itself and against another sentence
    bo = [r["bo"] for r in rows]
    assert bleu_chrf(bo, bo, "bo")[0]["bleu"] == pytest.approx(100.0)
    assert bleu_chrf(bo[1:] + bo[:1], bo, "bo")[0]["bleu"] < 15.0
    assert len(tokenize_for_metric(bo[0]).split()) == len(metric_tokens(bo[0]))


def test_real_headlines_rouge(shared_data):
    docs = [json.loads(line) for line in open(shared_data / "ntrex128_headline_body.jsonl", encoding="utf-8")][:40]
    own = [rouge_l(metric_tokens(d["title_bo"]), metric_tokens(d["title_bo"]))["f"] for d in docs]
    # the body's first sentence is the headline in this data set: high recall of the title
    lead = [rouge_l(metric_tokens(d["body_bo"].split("\n")[0]), metric_tokens(d["title_bo"]))["recall"] for d in docs]
    other = [rouge_l(metric_tokens(docs[(i + 1) % len(docs)]["title_bo"]), metric_tokens(d["title_bo"]))["f"]
             for i, d in enumerate(docs)]
    assert all(x == 1.0 for x in own)
    assert sum(other) / len(other) < sum(lead) / len(lead)


def test_semantic_similarity_offline_encoder(encoder, shared_data):
    enc = encoder
    rows = _ntrex(shared_data, 20)
    en = [r["en"] for r in rows]
    same = enc.similarity(en, en)
    other = enc.similarity(en, en[1:] + en[:1])
    assert all(s == pytest.approx(1.0, abs=1e-4) for s in same)
    assert sum(other) / len(other) < 0.5


def test_tibetan_chrf_is_raw_text_beside_the_syllable_level_one():
    # FLORES-200 style chrF sees the raw text: tsheg and shad are characters. A
    # hypothesis that differs from the reference only in its final shad loses raw chrF
    # but keeps syllable chrF at 100 (the syllable tokens are the same).
    import sacrebleu

    ref, hyp = "བོད་ཡིག་ཡག་པོ་རེད།", "བོད་ཡིག་ཡག་པོ་རེད"
    m, per = bleu_chrf([hyp], [ref], "bo")
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf([hyp], [[ref]]).score) and m["chrf"] < 100.0
    assert m["chrf++"] == pytest.approx(sacrebleu.corpus_chrf([hyp], [[ref]], word_order=2).score)
    assert m["chrf_syllable"] == pytest.approx(100.0) and per[0]["chrf_syllable"] == pytest.approx(100.0)
