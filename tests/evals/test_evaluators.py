"""The FTibBench and text-task evaluators end to end on FTibBench-mini, with scripted
generators standing in for the model (an oracle, a biased model, a silent model)."""

from __future__ import annotations

import pytest

from ftib.core import config as cfg
from ftib.core.interfaces import EvalResult
from ftib.core.registry import EVALUATORS, Registry

YES_BO, NO_BO = "ཡོད།", "མེད།"
TRUE_BO, FALSE_BO = "བདེན་པ་རེད།", "རྫུན་པ་རེད།"


def build(name: str, **config):
    cls = Registry().load(EVALUATORS, name)
    return cls(cfg.build(cls.Config, config, where=name))


def key(text, image):
    return text, (image.tobytes() if image is not None else None)


def oracle(ev, items, answer):
    """A generator that replies ``answer(item)`` to each item's exact prompt and image."""
    table = {key(ev.prompt(it), it.load_image()): answer(it) for it in items}
    return lambda text, image: table[key(text, image)]


def check_records(result: EvalResult, n: int) -> None:
    assert len(result.records) == n
    for r in result.records:
        assert set(EvalResult.REQUIRED_RECORD_KEYS) <= set(r)
        assert "rule" in r


def test_mmbench_oracle_and_position_bias(world, scripted):
    ev = build("mmbench", data=str(world))
    items = ev.load()

    def answer(it):  # half by letter, half by the option's text, both in Tibetan
        return it.gold if it.meta["index"] % 2 else f"ལན་ནི་{it.options[it.gold]}་རེད།"

    gen = scripted(oracle(ev, items, answer))
    res = ev.run(gen, items=items)
    check_records(res, len(items))
    assert res.metrics["circular"] == 1.0 and res.metrics["vanilla"] == 1.0
    assert res.metrics["rule/letter"] + res.metrics["rule/option_text"] == pytest.approx(1.0)
    assert res.details["decoding"]["max_new_tokens"] == 8 and res.details["decoding"]["do_sample"] is False
    assert gen.calls[0][1].max_new_tokens == 8
    # the prompt shows the lettered options and the image
    text, image = gen.calls[0][0][0]
    assert "A. " in text and "D. " in text and image is not None

    always_a = ev.run(scripted(lambda t, i: "A"), items=items)
    originals = [it for it in items if it.meta["index"] < 1_000_000]
    assert always_a.metrics["circular"] == 0.0
    assert always_a.metrics["vanilla"] == pytest.approx(sum(it.gold == "A" for it in originals) / len(originals))
    cats = {it.meta["category"] for it in items}
    assert set(always_a.details["per_category"]["circular"]) == cats


def test_mme_scores(world, scripted):
    ev = build("mme", data=str(world))
    items = ev.load()
    subtasks = {it.meta["subtask"] for it in items}
    perfect = ev.run(scripted(oracle(ev, items, lambda it: YES_BO if it.gold == "yes" else NO_BO)), items=items)
    check_records(perfect, len(items))
    assert perfect.metrics["total"] == pytest.approx(200.0 * len(subtasks))
    assert perfect.metrics["cognition"] == pytest.approx(200.0)  # numerical_calculation
    # "yes" to everything: each image has one yes and one no -> acc 50, acc+ 0 per subtask
    yes = ev.run(scripted(lambda t, i: "Yes"), items=items)
    assert all(yes.metrics[f"{s}/acc"] == 50.0 and yes.metrics[f"{s}/acc_plus"] == 0.0 for s in subtasks)
    silent = ev.run(scripted(lambda t, i: ""), items=items)
    assert silent.metrics["total"] == 0.0 and silent.metrics["unparsed_ratio"] == 1.0
    assert silent.metrics["rule/none"] == 1.0


def test_pope_yes_ratio_and_unparsed(world, scripted):
    ev = build("pope", data=str(world))
    items = ev.load()
    yes = ev.run(scripted(lambda t, i: "是的，有。"), items=items)
    for split in ("random", "popular", "adversarial"):
        rows = [it for it in items if it.meta["split"] == split]
        share_yes = sum(it.gold == "yes" for it in rows) / len(rows)
        assert yes.metrics[f"{split}/yes_ratio"] == 1.0
        assert yes.metrics[f"{split}/accuracy"] == pytest.approx(share_yes)
        assert yes.metrics[f"{split}/recall"] == 1.0
    gen = scripted(oracle(ev, items, lambda it: YES_BO if it.gold == "yes" else NO_BO))
    perfect = ev.run(gen, items=items)
    assert perfect.metrics["f1"] == 1.0 and perfect.metrics["accuracy"] == 1.0
    # images are decoded and sent a few batches at a time; the replies stay in item order
    assert len(gen.calls) == -(-len(items) // (8 * 8)) > 1
    assert perfect.metrics["yes_ratio"] == pytest.approx(sum(it.gold == "yes" for it in items) / len(items))
    # every other reply unparseable: counted, reported, scored as wrong
    flip = {"n": 0}

    def half(t, i):
        flip["n"] += 1
        return "hmm" if flip["n"] % 2 else "ཡོད།"

    mixed = ev.run(scripted(half), items=items)
    assert mixed.metrics["unparsed"] == pytest.approx(len(items) / 2, abs=1)
    assert all(r["correct"] is False for r in mixed.records if r["parsed"] is None)


def test_binary_vqa_per_label(world, scripted):
    ev = build("binary_vqa", data=str(world))
    items = ev.load()
    res = ev.run(scripted(lambda t, i: "ཡིན།"), items=items)
    share_yes = sum(it.gold == "yes" for it in items) / len(items)
    assert share_yes != 0.5  # the benchmark is unbalanced
    assert res.metrics["accuracy"] == pytest.approx(share_yes)
    assert res.metrics["accuracy/yes"] == 1.0 and res.metrics["accuracy/no"] == 0.0
    assert res.metrics["balanced_accuracy"] == 0.5


def test_corevqa_true_false(world, scripted):
    ev = build("corevqa", data=str(world))
    items = ev.load()
    res = ev.run(scripted(oracle(ev, items, lambda it: TRUE_BO if it.gold == "true" else FALSE_BO)), items=items)
    assert res.metrics["accuracy"] == 1.0 and res.metrics["balanced_accuracy"] == 1.0
    assert {r["parsed"] for r in res.records} == {"true", "false"}


def test_judge_resolves_leftovers_and_is_logged(world, scripted):
    ev = build("pope", data=str(world), limit=4)
    items = ev.load()
    golds = {it.id: it.gold for it in items}
    asked = []

    def judge(question, reply, allowed):
        asked.append(reply)
        return "yes"

    res = ev.score(items, ["hmm"] * len(items), judge=judge)
    assert len(asked) == len(items)
    assert res.metrics["rule/judge"] == 1.0
    assert [r["parsed"] for r in res.records] == ["yes"] * len(items)
    assert [r["correct"] for r in res.records] == [golds[r["id"]] == "yes" for r in res.records]


def test_evaluate_through_the_plugin_contract(world, scripted, ctx_factory):
    # ctx.bundle may itself be a Generator: evaluate(ctx) then uses it as the model
    ev = build("corevqa", data=str(world), limit=5)
    res = ev.evaluate(ctx_factory(bundle=scripted(lambda t, i: "False")))
    assert isinstance(res, EvalResult) and res.metrics["rule/yes_no_en"] == 1.0


def test_translation_and_headline(world, scripted, encoder_path, encoder):
    ev = build("translation", data=str(world), encoder=str(encoder_path))
    assert ev.config.encoder == str(encoder_path)
    items = ev.load()
    refs = {ev.prompt(it): it.gold for it in items}
    echo = ev.run(scripted(lambda t, i: refs[t] + "\nextra line"), encoder=encoder, items=items)
    assert echo.metrics["bleu"] == pytest.approx(100.0) and echo.metrics["chrf"] == pytest.approx(100.0)
    assert echo.metrics["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert all(r["correct"] is None for r in echo.records)
    silent = ev.run(scripted(lambda t, i: ""), items=items)
    assert silent.metrics["bleu"] == 0.0 and silent.metrics["empty_ratio"] == 1.0
    assert "similarity" not in silent.metrics  # no encoder given to run()

    hl = build("headline", data=str(world))
    hitems = hl.load()
    heads = {hl.prompt(it): it.gold for it in hitems}
    res = hl.run(scripted(lambda t, i: heads[t]), items=hitems)
    assert res.metrics["rouge_l"] == 1.0
    # the prompt is the one stored with the item (Tibetan instruction + report)
    assert all(hl.prompt(it).endswith(it.question) for it in hitems)


def test_configs_fail_before_work(tmp_path):
    from ftib.core.errors import ConfigError

    with pytest.raises(ConfigError, match="data.*does not exist"):
        build("pope", data=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="limt.*did you mean 'limit'"):
        build("pope", data=str(tmp_path), limt=3)
    with pytest.raises(ConfigError, match="limit must be"):
        build("pope", data=str(tmp_path), limit=0)
    with pytest.raises(ConfigError, match="target_lang"):
        build("translation", data=str(tmp_path), target_lang="fr")


def test_records_are_json_serialisable(world, scripted):
    import json

    ev = build("mmbench", data=str(world), limit=2)
    items = ev.load()
    res = ev.run(scripted(lambda t, i: "B"), items=items)
    assert len(items) == 8  # 2 questions, each in its 4 circular rotations
    check_records(res, len(items))
    assert [r["id"] for r in res.records] == [it.id for it in items]
    for r, it in zip(res.records, items):
        # A JSON round trip gives back the same record: no tuples, sets, non-string
        # keys or other values json would change or refuse (records.jsonl is this).
        assert json.loads(json.dumps(r, ensure_ascii=False)) == r
        assert r["prediction"] == "B" and r["parsed"] == "B" and r["gold"] == it.gold
        assert r["correct"] is (it.gold == "B") and r["rule"] == "letter"
