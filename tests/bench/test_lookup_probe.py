"""The lookup probe (bench/lookup_probe.py, issue 17): its questions are true to the
scene, and both settings run end to end on the shipped presets."""

import random

import pytest
from ftib.bench.lookup_probe import (
    NO,
    YES,
    existence_questions,
    image_probe,
    text_probe,
)
from ftib.data.world import lexicon as lx
from ftib.data.world import scene as S


def test_existence_questions_are_true_to_the_scene() -> None:
    rng = random.Random(0)
    answers = []
    for _ in range(300):
        s = S.sample_scene(rng, 1, 6, 3)
        for q, a in existence_questions(s, rng, 4):
            named = [o.key for o in lx.OBJECTS if f"有{lx.BY_KEY[o.key].zh}吗" in q]
            assert len(named) == 1, q
            assert a == (YES if named[0] in s.categories() else NO), (q, a, s.categories())
            answers.append(a)
    assert 0.4 < answers.count(YES) / len(answers) < 0.6


@pytest.mark.parametrize("tokenizer", ["han", "bytes"])
def test_text_probe_runs(tokenizer: str) -> None:
    curve = text_probe(k=2, steps=2, every=1, tokenizer=tokenizer, layers=1, width=32,
                       held_out=4, tokenizer_scenes=50)
    assert [p.step for p in curve] == [0, 1, 2]
    assert all(0.0 <= p.accuracy <= 1.0 for p in curve)


def test_image_probe_runs_with_word_alignment() -> None:
    aligned, curve = image_probe("ftibworld-base-init", k=2, steps=1, align_steps=1, freeze_vision=True,
                                 held_out=4, batch_size=2)
    assert set(aligned) == {"category", "colour", "empty"}
    assert [p.step for p in curve] == [0, 1]
