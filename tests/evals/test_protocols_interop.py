"""Published protocols (MMBench CircularEval groups, MME subtask names, POPE parsing) and
VLMEvalKit / lmms-eval interoperability (benchmark TSVs, prediction files), on
hand-worked cases."""

from __future__ import annotations

import argparse
import base64
import importlib.util
import io
import json
from pathlib import Path

import pytest

from ftib.data.loaders import DataError
from ftib.evals import interop
from ftib.evals import metrics as m


# ------------------------------------------------------------------ MMBench
def test_group_without_original_is_skipped_and_counted():
    # question 1: original + 3 copies, all right; question 2: only rotated copies (its
    # original row is missing), all right -> skipped, not counted as right.
    idx = [1, 1_000_001, 2_000_001, 3_000_001, 1_000_002, 2_000_002]
    r = m.circular_eval(idx, [True] * 6, n_options=[4] * 6)
    assert (r["circular"], r["groups"], r["skipped_groups"], r["skipped_rows"]) == (1.0, 1, 1, 2)
    assert r["skipped_ids"] == [2]


def test_missing_rotation_counts_wrong():
    # 4 options, 3 of 4 rotations present and right: the question is wrong, and reported.
    idx = [1, 1_000_001, 2_000_001]
    r = m.circular_eval(idx, [True] * 3, n_options=[4] * 3)
    assert r["circular"] == 0.0 and r["missing_rotation"] == 1 and r["missing_ids"] == [1]
    assert r["vanilla"] == 1.0
    # a 3-option question has 3 rotations: complete
    r3 = m.circular_eval(idx, [True] * 3, n_options=[3] * 3)
    assert r3["circular"] == 1.0 and r3["missing_rotation"] == 0


def test_chance_per_option_count():
    # one 2-option question (2 rotations) and one 4-option question (4 rotations):
    # vanilla chance (1/2 + 1/4)/2 = 0.375; circular ((1/2)^2 + (1/4)^4)/2 = 0.126953125
    idx = [1, 1_000_001, 2, 1_000_002, 2_000_002, 3_000_002]
    r = m.circular_eval(idx, [False] * 6, n_options=[2, 2, 4, 4, 4, 4])
    assert r["chance_vanilla"] == pytest.approx(0.375)
    assert r["chance_circular"] == pytest.approx(0.126953125)


# ------------------------------------------------------------------ MME
def test_mme_unknown_or_misspelt_subtask_is_an_error():
    with pytest.raises(ValueError, match=r"'colour' \(did you mean 'color'\?\)"):
        m.mme_scores(["colour", "colour"], ["a", "a"], [True, True])
    with pytest.raises(ValueError, match="ocr"):
        m.mme_scores(["ocr"], ["a"], [True])
    assert m.mme_scores(["OCR", "OCR"], ["a", "a"], [True, True])["perception"] == 200.0
    assert len(m.MME_SUBTASKS) == 14 and len(set(m.MME_SUBTASKS)) == 14


def test_mme_config_rejects_unknown_cognition_subtask():
    from ftib.evals.mme import MMEEvaluator

    with pytest.raises(ValueError, match="cognition_subtasks"):
        MMEEvaluator.Config(cognition_subtasks=("code_reasonin",))


# ------------------------------------------------------------------ VLMEvalKit TSVs
def _png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n", encoding="utf-8")
    return path


def test_vlmeval_pope_tsv_explodes_splits_and_resolves_image_refs(tmp_path):
    img = _png()
    f = _tsv(tmp_path / "POPE.tsv", ["index", "question", "answer", "category", "image"], [
        ["0", "Is there a dog?", "Yes", "random,popular", img],
        ["1", "Is there a cat?", "No", "adversarial", "0"],  # image given by reference to row 0
    ])
    from ftib.evals.loaders import load_items

    items = load_items("pope", f)
    assert [(it.id, it.gold, it.meta["split"]) for it in items] == [
        ("random/0", "yes", "random"), ("popular/0", "yes", "popular"), ("adversarial/1", "no", "adversarial")]
    assert items[2].image == img and items[2].load_image().size == (4, 4)


@pytest.mark.parametrize("rows,match", [
    ([["0", "q", "Yes", "existence"]], r"missing column 'image_path'"),
])
def test_vlmeval_tsv_missing_column_names_file_and_column(tmp_path, rows, match):
    f = _tsv(tmp_path / "MME.tsv", ["index", "question", "answer", "category"], rows)
    with pytest.raises(DataError, match=match) as e:
        interop.read_vlmeval_yorn("mme", f)
    assert str(f) in str(e.value)


def test_vlmeval_tsv_duplicate_index_bad_answer_unknown_subtask(tmp_path):
    h = ["index", "question", "answer", "category", "image_path"]
    dup = _tsv(tmp_path / "a.tsv", h, [["0", "q", "Yes", "color", "x.jpg"], ["0", "q", "No", "color", "x.jpg"]])
    with pytest.raises(DataError, match=r"a.tsv:3: column 'index': duplicate index '0' \(first at line 2\)"):
        interop.read_vlmeval_yorn("mme", dup)
    bad = _tsv(tmp_path / "b.tsv", h, [["0", "q", "Maybe", "color", "x.jpg"]])
    with pytest.raises(DataError, match=r"b.tsv:2: column 'answer' is 'Maybe'"):
        interop.read_vlmeval_yorn("mme", bad)
    sub = _tsv(tmp_path / "c.tsv", h, [["0", "q", "Yes", "posterz", "x.jpg"]])
    with pytest.raises(DataError, match=r"c.tsv.*'posterz' \(did you mean 'posters'\?\)"):
        interop.read_vlmeval_yorn("mme", sub)
    empty = _tsv(tmp_path / "d.tsv", h, [["0", "", "Yes", "color", "x.jpg"]])
    with pytest.raises(DataError, match=r"d.tsv:2: empty 'question'"):
        interop.read_vlmeval_yorn("mme", empty)


# ------------------------------------------------------------------ prediction files
def _pope_items(tmp_path):
    img = _png()
    rows = [[str(i), f"Is there a thing {i}?", "Yes" if i % 2 else "No", "random", img] for i in range(10)]
    f = _tsv(tmp_path / "POPE.tsv", ["index", "question", "answer", "category", "image"], rows)
    return f


def _args(**kw):
    base = dict(bench="pope", data=None, out=None, limit=None, batch_size=None, max_new_tokens=None,
                encoder=None, base_model=None, judge_model=None, set=None, predictions=None, report=None,
                model=None, device="cpu", dtype="auto", seed=0)
    base.update(kw)
    return argparse.Namespace(**base)


def test_score_vlmeval_and_lmms_prediction_files_without_a_model(tmp_path):
    from ftib.evals.cli import score_predictions

    data = _pope_items(tmp_path)
    # VLMEvalKit: benchmark columns + prediction; replies right on 8 of 10 (rows 0, 1 wrong)
    preds = [[str(i), ("No" if i % 2 else "Yes") if i < 2 else ("Yes" if i % 2 else "No")] for i in range(10)]
    vf = _tsv(tmp_path / "Model_POPE.tsv", ["index", "prediction"], preds)
    out = score_predictions(_args(data=str(data), predictions=str(vf), out=str(tmp_path / "o1")))
    res = json.loads((out / "eval" / "pope.json").read_text())
    assert res["metrics"]["accuracy"] == pytest.approx(0.8)
    # ftib's own prediction files round-trip: the lmms-eval samples it wrote score the same
    samples = out / "eval" / "pope.samples.jsonl"
    tsv = out / "eval" / "pope.predictions.tsv"
    assert samples.is_file() and tsv.is_file()
    out2 = score_predictions(_args(data=str(data), predictions=str(samples), out=str(tmp_path / "o2")))
    assert json.loads((out2 / "eval" / "pope.json").read_text())["metrics"] == res["metrics"]
    out3 = score_predictions(_args(data=str(data), predictions=str(tsv), out=str(tmp_path / "o3")))
    assert json.loads((out3 / "eval" / "pope.json").read_text())["metrics"] == res["metrics"]


def test_prediction_file_for_another_benchmark_is_refused(tmp_path):
    from ftib.evals.cli import score_predictions

    data = _pope_items(tmp_path)
    named = _tsv(tmp_path / "Model_MMBench_DEV_EN.tsv", ["index", "prediction"], [["0", "A"]])
    with pytest.raises(DataError, match="mmbench prediction file, not pope"):
        score_predictions(_args(data=str(data), predictions=str(named)))
    mcq = _tsv(tmp_path / "preds.tsv", ["index", "A", "B", "prediction"], [["0", "x", "y", "A"]])
    with pytest.raises(DataError, match="multiple-choice prediction file"):
        score_predictions(_args(data=str(data), predictions=str(mcq)))
    other = _tsv(tmp_path / "p2.tsv", ["index", "prediction"], [[str(i), "Yes"] for i in range(100, 110)])
    with pytest.raises(DataError, match="name no item of this benchmark"):
        score_predictions(_args(data=str(data), predictions=str(other)))
    few = _tsv(tmp_path / "p3.tsv", ["index", "prediction"], [["0", "Yes"]])
    with pytest.raises(DataError, match="no prediction for 9 of 10 items"):
        score_predictions(_args(data=str(data), predictions=str(few)))
    wrong_gold = _tsv(tmp_path / "p5.tsv", ["index", "answer", "prediction"],
                      [[str(i), "No" if i % 2 else "Yes", "Yes"] for i in range(10)])  # golds flipped
    with pytest.raises(DataError, match=r"10 answers differ from the benchmark's \(first: index 0, file 'Yes'"):
        score_predictions(_args(data=str(data), predictions=str(wrong_gold)))
    dup = _tsv(tmp_path / "p4.tsv", ["index", "prediction"], [["0", "Yes"], ["0", "No"]])
    with pytest.raises(DataError, match=r"p4.tsv:3: column 'index': duplicate index '0'"):
        score_predictions(_args(data=str(data), predictions=str(dup)))


# ------------------------------------------------------------------ lmms-eval cross-check
def _lmms_module(rel: str):
    """Load one lmms-eval task file by path (lmms_eval/__init__ pulls in the whole
    harness); skip when lmms-eval or the file's own imports are unavailable offline."""
    spec = importlib.util.find_spec("lmms_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lmms-eval is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        pytest.skip(f"lmms-eval has no {rel}")
    mod_spec = importlib.util.spec_from_file_location(f"_lmms_{path.parent.name}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(mod)
    except ImportError as exc:
        pytest.skip(f"lmms-eval {rel} cannot import offline: {exc}")
    return mod


# Predictions as lmms-eval expects them (single words), gold, and the POPE split: 12 rows.
_POPE_CASES = [("yes", "yes"), ("yes", "yes"), ("yes", "no"), ("no", "no"), ("no", "yes"), ("no", "no"),
               ("yes", "yes"), ("no", "no"), ("yes", "no"), ("no", "yes"), ("yes", "yes"), ("no", "no")]


def test_pope_matches_lmms_eval_scoring():
    u = _lmms_module("tasks/pope/utils.py")
    res = [u.pope_process_results({"answer": g, "question_id": i}, [p]) for i, (p, g) in enumerate(_POPE_CASES)]
    theirs = {
        "accuracy": u.pope_aggregate_accuracy([r["pope_accuracy"] for r in res]),
        "precision": u.pope_aggregate_precision([r["pope_precision"] for r in res]),
        "recall": u.pope_aggregate_recall([r["pope_recall"] for r in res]),
        "f1": u.pope_aggregate_f1_score([r["pope_f1_score"] for r in res]),
    }
    from ftib.evals.extract import extract_yes_no

    ours = m.binary_metrics([extract_yes_no(p).value for p, _ in _POPE_CASES], [g for _, g in _POPE_CASES])
    for k, v in theirs.items():
        assert ours[k] == pytest.approx(v), k
    # lmms-eval's yes_ratio is the share of *gold* yes; ftib's is of predictions (the
    # POPE paper's): equal here only because both have 6 yes out of 12.
    assert u.pope_aggregate_yes_ratio([r["pope_yes_ratio"] for r in res]) == pytest.approx(0.5)


def test_mme_matches_lmms_eval_scoring():
    u = _lmms_module("tasks/mme/utils.py")
    # two subtasks, three images each (two questions per image), predictions as words
    rows = [("color", "a", "Yes", "yes"), ("color", "a", "No", "no"), ("color", "b", "Yes", "no"),
            ("color", "b", "No", "no"), ("color", "c", "Yes", "yes"), ("color", "c", "No", "yes"),
            ("code_reasoning", "d", "Yes", "yes"), ("code_reasoning", "d", "No", "no"),
            ("code_reasoning", "e", "Yes", "yes"), ("code_reasoning", "e", "No", "no"),
            ("code_reasoning", "f", "Yes", "no"), ("code_reasoning", "f", "No", "yes")]
    out = [u.mme_process_results({"answer": g, "category": s, "question_id": img}, [p]) for s, img, g, p in rows]
    perc = u.mme_aggregate_results([v for o in out for k, v in o.items() if k == "mme_perception_score"])
    cog = u.mme_aggregate_results([v for o in out for k, v in o.items() if k == "mme_cognition_score"])
    from ftib.evals.extract import extract_yes_no

    ours = m.mme_scores([s for s, *_ in rows], [img for _, img, *_ in rows],
                        [extract_yes_no(p).value == g.lower() for s, img, g, p in rows])
    assert ours["perception"] == pytest.approx(perc) and ours["cognition"] == pytest.approx(cog)


# ------------------------------------------------------------------ on FTibBench-mini files
def test_mmbench_duplicate_index_names_file_line_and_column(world, tmp_path):
    import csv
    import shutil

    from ftib.evals.loaders import load_items

    d = tmp_path / "mmbench"
    shutil.copytree(world / "bench" / "mmbench", d)
    tsv = next(d.glob("*.tsv"))
    rows = list(csv.reader(io.StringIO(tsv.read_text(encoding="utf-8")), delimiter="\t"))
    col = rows[0].index("index")
    rows[3][col] = rows[1][col]
    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", lineterminator="\n").writerows(rows)
    tsv.write_text(buf.getvalue(), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{tsv.name}:4: column 'index': duplicate index \d+ \(first at line 2\)"):
        load_items("mmbench", d)


def test_mme_misspelt_subtask_folder_is_an_error_naming_the_file(world, tmp_path):
    import shutil

    from ftib.evals.loaders import load_items

    d = tmp_path / "mme"
    shutil.copytree(world / "bench" / "mme", d)
    (d / "count").rename(d / "counting")
    with pytest.raises(DataError, match=r"'counting' \(did you mean 'count'\?\)") as e:
        load_items("mme", d)
    assert str(d) in str(e.value)


def test_mmbench_evaluator_reports_skipped_rows_missing_rotations_and_chance(world):
    from ftib.evals.mmbench import MMBenchEvaluator

    ev = MMBenchEvaluator(MMBenchEvaluator.Config(data=str(world)))
    items = ev.load()
    groups = sorted({it.meta["group"] for it in items})
    g_orig, g_rot = groups[0], groups[1]
    # drop the original row of one question and one rotated copy of another
    drop = {next(it.id for it in items if it.meta["group"] == g_orig and it.meta["index"] < 1_000_000),
            next(it.id for it in items if it.meta["group"] == g_rot and it.meta["index"] >= 1_000_000)}
    kept = [it for it in items if it.id not in drop]
    res = ev.score(kept, [it.gold for it in kept])  # every reply right
    n_rot = sum(1 for it in kept if it.meta["group"] == g_orig)
    assert res.metrics["skipped_rows"] == n_rot and res.metrics["missing_rotation"] == 1
    assert res.metrics["questions"] == len(groups) - 1
    assert res.metrics["circular"] == pytest.approx((len(groups) - 2) / (len(groups) - 1))
    n = [len(it.options) for it in kept if it.meta["index"] < 1_000_000]
    assert res.metrics["chance/vanilla"] == pytest.approx(sum(1 / k for k in n) / len(n))
    assert res.metrics["chance/circular"] == pytest.approx(sum((1 / k) ** k for k in n) / len(n))
    from ftib.evals.report import _chance

    assert _chance("mmbench", "circular", res.metrics) == res.metrics["chance/circular"]


def test_pope_official_parse_through_the_evaluator(tmp_path):
    from ftib.evals.loaders import load_items
    from ftib.evals.pope import PopeEvaluator

    items = load_items("pope", _pope_items(tmp_path))  # golds: odd index yes, even no
    replies = ["མེད།" if i % 2 == 0 else "ཡོད།" for i in range(10)]  # Tibetan, all right
    strict = PopeEvaluator(PopeEvaluator.Config(data=str(tmp_path))).score(items, replies)
    official = PopeEvaluator(PopeEvaluator.Config(data=str(tmp_path), parse="official")).score(items, replies)
    assert strict.metrics["accuracy"] == 1.0
    # the POPE script reads no Tibetan: everything is "yes", accuracy = share of gold yes
    assert official.metrics["accuracy"] == 0.5 and official.metrics["yes_ratio"] == 1.0
    assert {r["rule"] for r in official.records} == {"pope_official"}
    with pytest.raises(Exception, match="parse"):
        from ftib.core import config as cfg

        cfg.build(PopeEvaluator.Config, {"parse": "loose"}, where="eval.pope")


def test_vlmeval_binary_and_corevqa_tsvs(tmp_path):
    img = _png()
    h = ["index", "question", "answer", "category", "image"]
    f = _tsv(tmp_path / "COREVQA.tsv", h, [["7", "The dog is black.", "Yes", "", img],
                                            ["8", "The dog is white.", "No", "", "7"]])
    items = interop.read_vlmeval_yorn("corevqa", f)
    assert [(it.id, it.gold) for it in items] == [("7", "true"), ("8", "false")]
    b = interop.read_vlmeval_yorn("binary_vqa", _tsv(tmp_path / "BinaryVQA.tsv", h, [["1", "q", "No", "", img]]))
    assert b[0].gold == "no"


def test_mmbench_vlmevalkit_prediction_file_through_the_cli(world, tmp_path, capsys):
    # The `ftib eval --predictions` command line on an MMBench prediction file in
    # VLMEvalKit's shape (benchmark columns + prediction, pandas-style float indices).
    from ftib.evals.cli import register
    from ftib.evals.loaders import load_items

    items = load_items("mmbench", world)
    rows = [[f"{it.meta['index']}.0", it.options.get("A", ""), it.options.get("B", ""), it.gold,
             f"The answer is {it.gold}."] for it in items]
    f = _tsv(tmp_path / "MyModel_MMBench_DEV_BO.tsv", ["index", "A", "B", "answer", "prediction"], rows)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["eval", "--bench", "mmbench", "--data", str(world), "--predictions", str(f),
                              "--out", str(tmp_path / "out")])
    assert args.func(args) == 0
    res = json.loads((tmp_path / "out" / "eval" / "mmbench.json").read_text())
    assert res["metrics"]["circular"] == 1.0 and res["metrics"]["rule/letter"] == 1.0
    assert res["details"]["missing_predictions"] == 0
    # one question's original row wrong: that question fails under CircularEval
    rows[0][-1] = "The answer is " + next(k for k in "ABCD" if k in items[0].options and k != items[0].gold)
    f2 = _tsv(tmp_path / "MyModel_MMBench_DEV_BO2.tsv", ["index", "A", "B", "answer", "prediction"], rows)
    args = parser.parse_args(["eval", "--bench", "mmbench", "--data", str(world), "--predictions", str(f2),
                              "--out", str(tmp_path / "out2")])
    args.func(args)
    m2 = json.loads((tmp_path / "out2" / "eval" / "mmbench.json").read_text())["metrics"]
    assert m2["circular"] == pytest.approx(1 - 1 / m2["questions"])
