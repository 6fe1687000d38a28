"""FTibBench-mini in Chinese beside Tibetan, and the base model's Chinese/English pretraining part."""

from __future__ import annotations

import dataclasses
import json

import pytest

from ftib.core.errors import ConfigError
from ftib.data import sources
from ftib.data.loaders import WORLD_FILES, load_world
from ftib.data.world import build_world
from ftib.data.world.build import SIZES, pretrain_text_corpus
from ftib.evals.loaders import load_items

TIBETAN = ("\u0f00", "\u0fff")
BENCHES = ("mmbench", "mme", "pope", "binary_vqa", "corevqa")


def has_tibetan(text: str) -> bool:
    return any(TIBETAN[0] <= ch <= TIBETAN[1] for ch in text)


def has_han(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


@pytest.mark.parametrize("bench", BENCHES)
def test_chinese_copy_has_the_same_images_gold_and_ids(tiny_world, bench):
    root, _ = tiny_world
    bo = load_items(bench, root, lang="bo")
    zh = load_items(bench, root, lang="zh")
    assert [it.id for it in bo] == [it.id for it in zh]
    assert [it.gold for it in bo] == [it.gold for it in zh]
    for a, b in zip(bo, zh):
        if isinstance(a.image, str):  # MMBench: base64 in the TSV
            assert a.image == b.image, a.id
        else:
            assert a.image != b.image and a.image.read_bytes() == b.image.read_bytes(), a.id
        assert has_tibetan(a.question) and not has_tibetan(b.question), (a.question, b.question)
        assert has_han(b.question), b.question
        assert sorted(a.options) == sorted(b.options)
        assert all(has_han(v) for v in b.options.values()), b.options


def test_chinese_prompts_carry_chinese_instructions(tiny_world):
    from ftib.evals.mmbench import MMBenchEvaluator
    from ftib.evals.pope import PopeEvaluator

    root, _ = tiny_world
    pope = PopeEvaluator(PopeEvaluator.Config(data=str(root), lang="zh"))
    item = pope.load()[0]
    assert pope.prompt(item).endswith("请简短回答。") and not has_tibetan(pope.prompt(item))
    mmb = MMBenchEvaluator(MMBenchEvaluator.Config(data=str(root), lang="zh"))
    assert mmb.prompt(mmb.load()[0]).endswith("请只回答选项的字母。")
    with pytest.raises(ValueError, match="lang must be one of bo, zh"):
        PopeEvaluator.Config(data=str(root), lang="fr")


def test_every_zh_part_loads(tiny_world):
    root, manifest = tiny_world
    names = [n for n in WORLD_FILES if n.endswith("_zh")]
    assert len(names) == 7
    parts = load_world(root, names)
    for name in names:
        rel = WORLD_FILES[name][1]
        if name != "mme_zh":
            assert manifest["files"][rel]["rows"] == len(parts[name]), name


def test_the_pretraining_part_is_chinese_english_and_disjoint_from_the_benchmarks(tmp_path):
    size = dataclasses.replace(SIZES["tiny"], pretrain_scenes=40, pretrain_text=30)
    SIZES["tiny-pretrain-test"] = size
    try:
        root = tmp_path / "w"
        manifest = build_world(root, size="tiny-pretrain-test", seed=0)
        plain = build_world(tmp_path / "plain", size="tiny", seed=0)
    finally:
        del SIZES["tiny-pretrain-test"]
    # the benchmarks are those of the world without the pretraining part, byte for byte
    for rel, info in plain["files"].items():
        assert manifest["files"][rel]["sha256"] == info["sha256"], rel
    rows = [json.loads(x) for x in (root / "pretrain/instructions.jsonl").read_text(encoding="utf-8").splitlines()]
    caps = (root / "pretrain/captions.jsonl").read_text(encoding="utf-8").splitlines()
    docs = (root / "pretrain/corpus.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(caps) == 80 and len(docs) == 30
    tasks = {r["task"] for r in rows}
    assert {"pope", "yes_no", "multiple_choice", "true_false", "count", "colour", "position", "describe",
            "general"} <= tasks, tasks
    assert {r["lang"] for r in rows} == {"zh", "en"}
    for line in (root / "pretrain/instructions.jsonl").read_text(encoding="utf-8").splitlines() + caps + docs:
        assert not has_tibetan(line), line
    # no pretraining image equals a benchmark image
    bench = {p.read_bytes() for p in (root / "bench").rglob("*.png")}
    assert not any(p.read_bytes() in bench for p in (root / "pretrain/images").glob("*.png"))
    _check_cells_and_dialogues(root, n_scenes=40, turns=size.pretrain_dialogue_turns)


def _check_cells_and_dialogues(root, *, n_scenes, turns):
    """``cells.jsonl`` names each scene's objects; the existence dialogues agree with it."""
    import re

    from ftib.data.loaders import load_cells, load_sft
    from ftib.data.world import lexicon as lx
    from ftib.data.world.build import DIALOGUE_TASKS

    cells = load_cells(root / "pretrain/cells.jsonl")
    assert len(cells) == n_scenes
    objects = {o.zh: o for o in lx.OBJECTS}
    colours = {c.zh for c in lx.COLOURS}
    present, grid = {}, {}
    for r in cells:
        grid[r["image"]] = r["grid"][0]
        assert r["grid"] in ([3, 3], [4, 4]) and r["cells"]
        assert all(c["words"]["object"] in objects and c["words"]["colour"] in colours for c in r["cells"])
        present[r["image"]] = {objects[c["words"]["object"]].key for c in r["cells"]}
    dialogues = load_sft(root / "pretrain/dialogues.jsonl")
    assert {r["task"] for r in dialogues} == set(DIALOGUE_TASKS)
    assert {r["lang"] for r in dialogues} == {"zh", "en"}
    checked = 0
    for r in dialogues:
        msgs = r["messages"]
        users = [m for m in msgs if m["role"] == "user"]
        assert 1 <= len(users) <= turns and len(msgs) == 2 * len(users)
        assert [p["type"] for p in users[0]["content"]] == ["image", "text"]
        assert all(p["type"] == "text" for u in users[1:] for p in u["content"])
        questions = [u["content"][-1]["text"] for u in users]
        assert len(set(questions)) == len(questions), questions
        assert not any(has_tibetan(q) for q in questions)
        if r["task"] == "existence":
            assert grid[r["images"][0]] == 3  # the curriculum's first step: plain scenes
        if r["task"] not in ("pope", "existence"):
            continue
        for q, a in zip(questions, [m["content"][0]["text"] for m in msgs[1::2]]):
            if r["lang"] == "zh":
                asked = [o.key for o in lx.OBJECTS if o.zh in q]
            else:
                asked = [o.key for o in lx.OBJECTS if re.search(rf"\b({o.en}|{o.en_plural})\b", q)]
            assert len(asked) == 1, q
            yes = a in ("是。", "Yes.")
            assert yes == (asked[0] in present[r["images"][0]]), (q, a, present[r["images"][0]])
            checked += 1
    assert checked > 2 * 40 * turns // 2


def test_tokenizer_corpus_has_no_tibetan():
    corpus = pretrain_text_corpus(0, 30)
    assert corpus and not any(has_tibetan(t) for t in corpus)
    assert any(has_han(t) for t in corpus) and any("picture" in t for t in corpus)


def test_world_spec_with_a_path_inside_the_build():
    assert sources.split_world_spec("ftibworld:base/pretrain/corpus.jsonl") == ("ftibworld:base",
                                                                                 "pretrain/corpus.jsonl")
    assert sources.parse_world_spec("ftibworld:tiny:3/pretrain/corpus.jsonl") == ("tiny", 3)
    assert sources.is_world_spec("ftibworld/pretrain/corpus.jsonl")
    with pytest.raises(ConfigError, match="inside the build"):
        sources.split_world_spec("ftibworld:tiny/../x")
