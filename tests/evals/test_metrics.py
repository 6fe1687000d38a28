"""Metric formulas on small cases computed by hand (the derivation is in each comment)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from ftib.evals import metrics as m


def test_binary_metrics_mixed():
    # gold  y y y n n n ; pred y n None y n n
    # TP=1 (row0) FP=1 (row3) ; gold yes=3 ; correct rows 0,4,5 -> 3/6
    # P=1/2 R=1/3 F1=2*(1/6)/(5/6)=0.4 ; yes_ratio=2/6 ; unparsed 1
    r = m.binary_metrics(["yes", "no", None, "yes", "no", "no"], ["yes", "yes", "yes", "no", "no", "no"])
    assert r["accuracy"] == pytest.approx(0.5)
    assert r["precision"] == pytest.approx(0.5)
    assert r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(0.4)
    assert r["yes_ratio"] == pytest.approx(1 / 3)
    assert r["unparsed"] == 1 and r["unparsed_ratio"] == pytest.approx(1 / 6)


def test_binary_metrics_all_yes():
    # balanced gold, every prediction yes: acc 1/2, P 1/2, R 1, F1 2/3, yes_ratio 1
    r = m.binary_metrics(["yes"] * 4, ["yes", "no", "yes", "no"])
    assert (r["accuracy"], r["precision"], r["recall"]) == (0.5, 0.5, 1.0)
    assert r["f1"] == pytest.approx(2 / 3)
    assert r["yes_ratio"] == 1.0


def test_binary_metrics_all_unparseable():
    # nothing parsed: all wrong, no positive predictions -> P, R, F1 are 0 (zero division -> 0)
    r = m.binary_metrics([None] * 4, ["yes", "no", "yes", "no"])
    assert r == {"accuracy": 0.0, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0,
                 "unparsed": 4.0, "unparsed_ratio": 1.0, "n": 4.0}


def test_yes_ratio_comes_from_predictions_not_labels():
    gold = ["yes"] * 9 + ["no"]  # 90% yes labels
    assert m.binary_metrics(["no"] * 10, gold)["yes_ratio"] == 0.0
    assert m.binary_metrics(["yes"] * 10, ["no"] * 10)["yes_ratio"] == 1.0


def test_binary_metrics_tie_precision_equals_recall():
    # 2 TP, 1 FP, 1 FN: P = R = 2/3, so F1 = 2/3 too
    r = m.binary_metrics(["yes", "yes", "yes", "no"], ["yes", "yes", "no", "yes"])
    assert r["precision"] == r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)


def test_binary_metrics_rejects_length_mismatch():
    with pytest.raises(ValueError):
        m.binary_metrics(["yes"], ["yes", "no"])


def test_circular_eval_groups_rotated_copies():
    # question 0: 4 rotations all right -> counts ; question 1: one rotation wrong -> not
    # question 2: only 2 rotations (two options), both right -> counts
    idx = [0, 1_000_000, 2_000_000, 3_000_000, 1, 1_000_001, 2_000_001, 3_000_001, 2, 1_000_002]
    ok = [True, True, True, True, True, True, False, True, True, True]
    cat = ["a", "a", "a", "a", "b", "b", "b", "b", "b", "b"]
    r = m.circular_eval(idx, ok, {"category": cat})
    assert r["groups"] == 3 and r["originals"] == 3
    assert r["circular"] == pytest.approx(2 / 3)
    assert r["vanilla"] == 1.0  # the three originals are all right
    assert r["per_category"]["circular"] == {"a": 1.0, "b": 0.5}
    assert r["per_category"]["vanilla"] == {"a": 1.0, "b": 1.0}


def test_circular_eval_order_does_not_matter():
    idx = [0, 1_000_000, 1, 1_000_001]
    ok = [True, False, True, True]
    perm = [3, 0, 2, 1]
    a = m.circular_eval(idx, ok)
    b = m.circular_eval([idx[i] for i in perm], [ok[i] for i in perm])
    assert a == b and a["circular"] == 0.5 and a["vanilla"] == 1.0


def test_circular_eval_position_bias_scores_zero():
    # A model that always answers "A": with the gold letter rotating through A-D every
    # question has exactly one rotation right -> circular 0, vanilla = share of gold A.
    golds = {0: "A", 1: "C"}
    idx, ok = [], []
    for q, g in golds.items():
        for k in range(4):
            idx.append(q + k * m.CIRCULAR_OFFSET)
            ok.append("ABCD"[("ABCD".index(g) - k) % 4] == "A")
    r = m.circular_eval(idx, ok)
    assert r["circular"] == 0.0 and r["vanilla"] == 0.5


def test_mme_acc_plus_groups_by_image():
    # existence: img1 both right, img2 one right -> acc 3/4=75, acc+ 1/2=50, score 125
    # numerical_calculation (cognition): img3 both wrong -> 0
    sub = ["existence"] * 4 + ["numerical_calculation"] * 2
    img = ["i1", "i1", "i2", "i2", "i3", "i3"]
    ok = [True, True, True, False, False, False]
    r = m.mme_scores(sub, img, ok)
    e = r["subtasks"]["existence"]
    assert (e["acc"], e["acc_plus"], e["score"]) == (75.0, 50.0, 125.0)
    assert r["perception"] == 125.0 and r["cognition"] == 0.0 and r["total"] == 125.0


def test_mme_same_image_name_in_two_subtasks_is_two_images():
    r = m.mme_scores(["count", "count", "color", "color"], ["x", "x", "x", "x"], [True, True, True, False])
    assert r["subtasks"]["count"]["acc_plus"] == 100.0 and r["subtasks"]["color"]["acc_plus"] == 0.0


def test_mme_all_yes_answers():
    # each image has one yes and one no question: answering yes to all -> acc 50, acc+ 0
    r = m.mme_scores(["count"] * 4, ["a", "a", "b", "b"], [True, False, True, False])
    assert r["subtasks"]["count"]["score"] == 50.0


def test_lcs_and_rouge_l():
    # hyp: a b c d, ref: a c e d -> LCS "a c d" = 3 ; P=3/4 R=3/4 F=3/4
    assert m.lcs_length("abcd", "aced") == 3
    r = m.rouge_l(list("abcd"), list("aced"))
    assert r["f"] == pytest.approx(0.75)
    # hyp shorter: a c vs a b c d e -> LCS 2, P=1, R=2/5, F=2*1*0.4/1.4
    r = m.rouge_l(list("ac"), list("abcde"))
    assert r["f"] == pytest.approx(0.8 / 1.4)
    assert m.rouge_l([], list("abc"))["f"] == 0.0


def test_lcs_matches_brute_force():
    rng = random.Random(0)
    for _ in range(50):
        a = [rng.choice("xyz") for _ in range(rng.randint(0, 7))]
        b = [rng.choice("xyz") for _ in range(rng.randint(0, 7))]
        best = 0
        for mask in range(1 << len(a)):
            sub = [a[i] for i in range(len(a)) if mask >> i & 1]
            it = iter(b)
            if all(c in it for c in sub):
                best = max(best, len(sub))
        assert m.lcs_length(a, b) == best


def test_percentile_matches_numpy():
    rng = random.Random(1)
    xs = [rng.gauss(0, 1) for _ in range(37)]
    for q in (0, 10, 50, 90, 100):
        assert m.percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert math.isnan(m.percentile([], 90))


def test_rule_shares():
    s = m.rule_shares(["letter", "letter", "none", "option_text"], ["letter", "option_text", "number", "none"])
    assert s == {"letter": 0.5, "option_text": 0.25, "number": 0.0, "none": 0.25}
