"""FTibWorld: determinism, format invariants of the benchmarks, Tibetan text hygiene."""

from __future__ import annotations

import collections
import json
import unicodedata

import pytest
from PIL import Image

from ftib.core.errors import FtibError
from ftib.core.rundir import sha256_path
from ftib.data import prompts
from ftib.data.loaders import load_world
from ftib.data.world import build_world
from ftib.data.world import grammar as g
from ftib.data.world import lexicon as lx
from ftib.data.world.build import MME_SUBTASKS, POPE_SPLITS, ROTATION_STRIDE, SIZES, text_corpus
from ftib.data.world.scene import category_statistics

TIBETAN = (0x0F00, 0x0FFF)


def assert_tibetan(text: str, where: str, *, allow_newline: bool = False) -> None:
    assert text, f"{where}: empty"
    assert unicodedata.normalize("NFC", text) == text, f"{where}: not NFC: {text!r}"
    for ch in text:
        ok = TIBETAN[0] <= ord(ch) <= TIBETAN[1] or ch == " " or (allow_newline and ch == "\n")
        assert ok, f"{where}: character {ch!r} (U+{ord(ch):04X}) outside the Tibetan block in {text!r}"


def test_same_seed_same_bytes_other_seed_differs(tiny_world, tmp_path):
    root, manifest = tiny_world
    again = build_world(tmp_path / "again", size="tiny", seed=0)
    assert again["files"] == manifest["files"]
    assert again["dirs"] == manifest["dirs"]
    assert sha256_path(tmp_path / "again") == sha256_path(root)
    other = build_world(tmp_path / "other", size="tiny", seed=1)
    changed = [k for k in manifest["files"] if other["files"][k]["sha256"] != manifest["files"][k]["sha256"]]
    assert len(changed) == len(manifest["files"]), f"files unchanged by a new seed: " \
        f"{sorted(set(manifest['files']) - set(changed))}"


def test_manifest_and_card_match_the_files(tiny_world):
    root, manifest = tiny_world
    assert json.loads((root / "world.json").read_text()) == manifest
    card = (root / "DATASET_CARD.md").read_text(encoding="utf-8")
    for rel, info in manifest["files"].items():
        assert sha256_path(root / rel) == info["sha256"], rel
        assert f"`{rel}` | {info['rows']} | `{info['sha256']}`" in card
    for rel, info in manifest["dirs"].items():
        assert sha256_path(root / rel) == info["sha256"], rel
    assert f"seed: {manifest['seed']}" in card


def test_every_file_loads_with_the_counts_of_the_manifest(tiny_world):
    root, manifest = tiny_world
    parts = load_world(root)
    files = {
        "cpt": "cpt/corpus.jsonl", "captions": "align/captions.jsonl", "sft": "sft/instructions.jsonl",
        "sft_dialogues": "sft/dialogues.jsonl", "translation": "grpo/translation.jsonl", "headlines": "grpo/headlines.jsonl",
        "general_train": "general/train.jsonl", "general_heldout": "general/heldout.jsonl",
        "translation_test": "bench/translation/test.jsonl", "headline_test": "bench/headline/test.jsonl",
        "mmbench": "bench/mmbench/FTibWorld_MMBench_DEV_BO.tsv",
        "binaryvqa": "bench/binaryvqa/questions.csv", "corevqa": "bench/corevqa/COREVQA.csv",
        **{f"pope_{s}": f"bench/pope/ftibworld_pope_{s}.json" for s in POPE_SPLITS},
    }
    for name, rel in files.items():
        assert len(parts[name]) == manifest["files"][rel]["rows"], name
    sz = SIZES["tiny"]
    assert len(parts["mme"]) == 2 * sz.mme_images * len(MME_SUBTASKS)
    assert len(parts["mmbench"]) == 4 * sz.mmbench
    assert len(parts["cpt"]) == sz.cpt_docs and len(parts["sft"]) == sz.sft
    with Image.open(parts["captions"][0]["image"]) as im:
        assert im.size == (manifest["image_size"], manifest["image_size"]) and im.mode == "RGB"


def test_sft_dialogues_are_tibetan_chats_about_the_sft_pictures(tiny_world):
    """Eight distinct Tibetan questions of one type per chat, about a picture of
    ``sft/instructions.jsonl`` (no new images, so none can be a benchmark's)."""
    from ftib.data.loaders import load_sft
    from ftib.data.world.build import DIALOGUE_TASKS

    root, manifest = tiny_world
    rows = load_sft(root / "sft/dialogues.jsonl")
    pictures = {im for r in load_sft(root / "sft/instructions.jsonl") for im in r["images"]}
    assert {r["task"] for r in rows} == set(DIALOGUE_TASKS) and {r["lang"] for r in rows} == {"bo"}
    assert {im for r in rows for im in r["images"]} <= pictures
    assert len(rows) > 6 * len(pictures)
    turns = SIZES["tiny"].pretrain_dialogue_turns
    answers = collections.Counter()
    for r in rows:
        users = [m for m in r["messages"] if m["role"] == "user"]
        assert 1 <= len(users) <= turns and len(r["messages"]) == 2 * len(users)
        assert [p["type"] for p in users[0]["content"]] == ["image", "text"]
        questions = [u["content"][-1]["text"] for u in users]
        assert len(set(questions)) == len(questions)
        for i, q in enumerate(questions):
            # statements and options on their own lines, options lettered A-D
            q = "\n".join(ln[3:] if ln[:3] in ("A. ", "B. ", "C. ", "D. ") else ln for ln in q.splitlines())
            assert_tibetan(q, f"{r['id']} question {i}", allow_newline=True)
        for m in r["messages"][1::2]:
            if r["task"] != "multiple_choice":
                assert_tibetan(m["content"][0]["text"], r["id"])
            if r["task"] in ("existence", "pope"):
                answers[m["content"][0]["text"]] += 1
    # the yes/no questions are answered both ways, in Tibetan
    assert len(answers) == 2 and min(answers.values()) > 0.3 * sum(answers.values()), answers


def test_mme_two_answers_per_image_one_yes_one_no(tiny_world):
    root, _ = tiny_world
    mme = load_world(root, ["mme"])["mme"]
    per_image = collections.defaultdict(list)
    for r in mme:
        per_image[r["image"]].append(r["answer"])
    assert {r["subtask"] for r in mme} == set(MME_SUBTASKS)
    for image, answers in per_image.items():
        assert sorted(answers) == ["No", "Yes"], image


def test_pope_balanced_and_negatives_follow_their_split(tiny_world):
    root, _ = tiny_world
    parts = load_world(root, [f"pope_{s}" for s in POPE_SPLITS])
    freq, co = category_statistics()
    by_bo = {o.bo: o.key for o in lx.OBJECTS}

    def asked(text: str) -> str:
        hits = [key for bo, key in by_bo.items() if f"{bo}{lx.TSHEG}{g.question(lx.YES_EXIST)}" in text]
        assert len(hits) == 1, text
        return hits[0]

    negatives = {}
    for split in POPE_SPLITS:
        ds = parts[f"pope_{split}"]
        labels = collections.Counter(ds["label"])
        assert labels["yes"] == labels["no"] > 0, (split, labels)
        for image in set(ds["image"]):
            rows = [r for r in ds if r["image"] == image]
            yes = collections.Counter(r["label"] for r in rows)
            assert yes["yes"] == yes["no"], (split, image)
        negatives[split] = [(r["image"], asked(r["text"])) for r in ds if r["label"] == "no"]
        present = collections.defaultdict(set)
        for r in ds:
            if r["label"] == "yes":
                present[r["image"]].add(asked(r["text"]))
        for image, cat in negatives[split]:
            assert cat not in present[image]
    # "popular" negatives are on average more frequent categories than "random" ones.
    mean = lambda xs: sum(freq[c] for _, c in xs) / len(xs)  # noqa: E731
    assert mean(negatives["popular"]) > mean(negatives["random"])


def test_mmbench_rotations_share_group_and_gold_moves_with_options(tiny_world):
    root, _ = tiny_world
    mm = load_world(root, ["mmbench"])["mmbench"]
    groups = collections.defaultdict(list)
    for r in mm:
        groups[r["group"]].append(r)
    assert len(groups) == SIZES["tiny"].mmbench
    for gid, rows in groups.items():
        rows.sort(key=lambda r: r["index"])
        assert [r["index"] for r in rows] == [gid + k * ROTATION_STRIDE for k in range(4)]
        base = [rows[0][L] for L in "ABCD"]
        gold_text = rows[0][rows[0]["answer"]]
        assert len({r["answer"] for r in rows}) == 4, f"group {gid}: the gold letter does not move"
        for k, r in enumerate(rows):
            assert [r[L] for L in "ABCD"] == base[k:] + base[:k]
            assert r[r["answer"]] == gold_text
            assert r["question"] == rows[0]["question"] and r["image"] == rows[0]["image"]
            assert r["split"] == "dev" and r["category"] and r["l2-category"]


def test_corevqa_balanced_binaryvqa_unbalanced(tiny_world):
    root, _ = tiny_world
    parts = load_world(root, ["corevqa", "binaryvqa"])
    core = collections.Counter(parts["corevqa"]["answer"])
    assert core["True"] == core["False"]
    binary = collections.Counter(parts["binaryvqa"]["answer"])
    assert binary["yes"] != binary["no"] and set(binary) == {"yes", "no"}


def test_tibetan_text_is_nfc_and_tibetan_only(tiny_world):
    root, _ = tiny_world
    parts = load_world(root, verify_images=False)
    for r in parts["cpt"]:
        assert_tibetan(r["text"], r["id"])
    for r in parts["captions"]:
        assert_tibetan(r["caption"], r["id"])
    for name in ("translation", "translation_test"):
        for r in parts[name]:
            assert_tibetan(r["source"], r["id"])
            assert unicodedata.normalize("NFC", r["reference"]) == r["reference"]
            assert_tibetan(r["prompt"], r["id"], allow_newline=True)
    for name in ("headlines", "headline_test"):
        for r in parts[name]:
            assert_tibetan(r["report"], r["id"])
            assert_tibetan(r["headline"], r["id"])
    for r in parts["sft"]:
        for m in r["messages"]:
            for part in m["content"]:
                if part["type"] != "text":
                    continue
                text = part["text"]
                if r["task"] == "multiple_choice":
                    if m["role"] == "assistant":
                        assert text in prompts.OPTION_LETTERS
                        continue
                    lines = text.split("\n")
                    assert [ln[:3] for ln in lines[1:5]] == ["A. ", "B. ", "C. ", "D. "], text
                    text = "\n".join([lines[0]] + [ln[3:] for ln in lines[1:5]] + lines[5:])
                if r["task"] == "translate" and m["role"] == "assistant":
                    assert unicodedata.normalize("NFC", text) == text
                    continue
                assert_tibetan(text, r["id"], allow_newline=True)
    for split in POPE_SPLITS:
        for r in parts[f"pope_{split}"]:
            assert_tibetan(r["text"], f"pope {r['question_id']}")
    for r in parts["mme"]:
        assert_tibetan(r["question"], r["question_id"])
    for r in parts["corevqa"]:
        assert_tibetan(r["statement"], r["id"])
    for r in parts["binaryvqa"]:
        assert_tibetan(r["question"], r["question_id"])
    for r in parts["mmbench"]:
        for c in ("question", "hint", "A", "B", "C", "D"):
            if r[c]:
                assert_tibetan(r[c], f"mmbench {r['index']} {c}")


def test_lexicon_and_text_corpus_are_clean():
    for w in lx.BY_KEY.values():
        assert_tibetan(w.bo, w.key)
    for const in (lx.ANSWER_SHORT, lx.ANSWER_LETTER, lx.DESCRIBE, lx.TRUE_OR_FALSE, lx.TRANSLATE_TO_ZH,
                  lx.WRITE_HEADLINE, *lx.YES_FORMS, *lx.NO_FORMS):
        assert_tibetan(const, const)
    corpus = text_corpus(0, 20)
    assert corpus == text_corpus(0, 20)
    assert corpus != text_corpus(1, 20)


@pytest.mark.parametrize("word, gen, erg, ladon, q", [
    ("བཀྲ་ཤིས", "བཀྲ་ཤིས་ཀྱི", "བཀྲ་ཤིས་ཀྱིས", "བཀྲ་ཤིས་སུ", "བཀྲ་ཤིས་སམ"),
    ("སྒྲོལ་མ", "སྒྲོལ་མའི", "སྒྲོལ་མས", "སྒྲོལ་མར", "སྒྲོལ་མའམ"),
    ("ཚོང་ཁང", "ཚོང་ཁང་གི", "ཚོང་ཁང་གིས", "ཚོང་ཁང་དུ", "ཚོང་ཁང་ངམ"),
    ("མེ་ཏོག", "མེ་ཏོག་གི", "མེ་ཏོག་གིས", "མེ་ཏོག་ཏུ", "མེ་ཏོག་གམ"),
    ("ཡིན", "ཡིན་གྱི", "ཡིན་གྱིས", "ཡིན་དུ", "ཡིན་ནམ"),
    ("ཡོད", "ཡོད་ཀྱི", "ཡོད་ཀྱིས", "ཡོད་དུ", "ཡོད་དམ"),
    ("ཆུ་འགྲམ", "ཆུ་འགྲམ་གྱི", "ཆུ་འགྲམ་གྱིས", "ཆུ་འགྲམ་དུ", "ཆུ་འགྲམ་མམ"),
    ("པདྨ", "པདྨའི", "པདྨས", "པདྨར", "པདྨའམ"),
])
def test_case_particles_agree_with_the_final_letter(word, gen, erg, ladon, q):
    assert (g.genitive(word), g.ergative(word), g.ladon(word), g.question(word)) == (gen, erg, ladon, q)


def test_shad_rules_and_aligned_translations():
    assert g.end("ཚོང་ཁང") == "ཚོང་ཁང་།"  # tsheg kept before shad after ང
    assert g.end("ལྷག") == "ལྷག"  # no shad after ག
    assert g.end("ཡོད") == "ཡོད།"
    s = g.exists(g.NP(lx.BY_KEY["fish"], lx.BY_KEY["red"], count=3))
    assert s.bo == "པར་འདིའི་ནང་ན་ཉ་དམར་པོ་གསུམ་ཡོད།"
    assert s.zh == "图里有三条红色的鱼。" and s.en == "There are three red fish in the picture."


def test_build_refuses_foreign_directory_and_bad_arguments(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FtibError, match="refusing to replace"):
        build_world(tmp_path, size="tiny")
    assert (tmp_path / "keep.txt").read_text() == "mine"
    with pytest.raises(FtibError, match="did you mean 'tiny'"):
        build_world(tmp_path / "x", size="tinyy")
    with pytest.raises(FtibError, match="image_size"):
        build_world(tmp_path / "x", size="tiny", image_size=8)


def test_cli_build_and_check(tmp_path, capsys):
    from ftib.core.cli import main

    out = tmp_path / "w"
    assert main(["data", "build", "--out", str(out), "--size", "tiny", "--seed", "3"]) == 0
    assert "DATASET_CARD.md" in capsys.readouterr().out
    assert json.loads((out / "world.json").read_text())["seed"] == 3
    assert main(["data", "check", str(out)]) == 0
    assert "mmbench" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path)]) == 2
    assert "not a FTibWorld build" in capsys.readouterr().err


def test_ensure_world_reuses_a_matching_build_and_rebuilds_otherwise(tiny_world, tmp_path):
    from ftib.data.world import ensure_world

    root, manifest = tiny_world
    before = (root / "world.json").stat().st_mtime_ns
    assert ensure_world(root, size="tiny", seed=0) == manifest
    assert (root / "world.json").stat().st_mtime_ns == before
    out = tmp_path / "w"
    first = ensure_world(out, size="tiny", seed=0)
    assert first["files"] == manifest["files"]
    assert ensure_world(out, size="tiny", seed=2)["seed"] == 2
