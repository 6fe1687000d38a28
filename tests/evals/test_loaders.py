"""FTibBench-mini loads through the evaluators' loaders; malformed rows are reported
with their file and row."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from ftib.evals.loaders import DataError, find_files, load_items


@pytest.mark.parametrize("bench", ["mmbench", "mme", "pope", "binary_vqa", "corevqa", "translation",
                                   "headline", "alignment_tax"])
def test_ftibbench_mini_loads(world, bench):
    items = load_items(bench, world)
    assert items
    assert len({it.id for it in items}) == len(items)
    if bench in ("mmbench", "mme", "pope", "binary_vqa", "corevqa"):
        img = items[0].load_image()
        assert img.mode == "RGB" and img.size[0] > 0
    if bench == "mmbench":
        # every question has its rotations, grouped by index % 1_000_000
        groups = {}
        for it in items:
            groups.setdefault(it.meta["index"] % 1_000_000, []).append(it)
        assert all(len(g) == 4 for g in groups.values())
        assert all(it.gold in it.options for it in items)
    if bench == "mme":
        by_image = {}
        for it in items:
            by_image.setdefault((it.meta["subtask"], it.meta["image_id"]), []).append(it.gold)
        assert all(sorted(v) == ["no", "yes"] for v in by_image.values())
    if bench == "pope":
        assert {it.meta["split"] for it in items} == {"random", "popular", "adversarial"}
    if bench == "corevqa":
        assert {it.gold for it in items} == {"true", "false"}


def test_limit_keeps_whole_groups(world):
    mmb = load_items("mmbench", world, limit=2)
    assert len(mmb) == 8 and len({it.meta["index"] % 1_000_000 for it in mmb}) == 2
    mme = load_items("mme", world, limit=1)
    subtasks = {it.meta["subtask"] for it in mme}
    assert len(mme) == 2 * len(subtasks)


def test_a_benchmark_file_or_folder_works_as_data(world):
    tsv = find_files("mmbench", world)[0]
    assert len(load_items("mmbench", tsv)) == len(load_items("mmbench", tsv.parent))
    pope_dir = find_files("pope", world)[0].parent
    assert len(find_files("pope", pope_dir)) == 3


def _copy_bench(world: Path, tmp_path: Path, rel: str) -> Path:
    dst = tmp_path / rel
    shutil.copytree(world / rel, dst)
    return dst


def _rewrite_tsv(path: Path, edit) -> None:
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8")), delimiter="\t"))
    rows = edit(rows)
    buf = io.StringIO()
    csv.writer(buf, delimiter="\t", lineterminator="\n").writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def test_mmbench_missing_option_column(world, tmp_path):
    d = _copy_bench(world, tmp_path, "bench/mmbench")
    tsv = next(d.glob("*.tsv"))

    def drop_b(rows):
        col = rows[0].index("B")
        return [r[:col] + r[col + 1 :] for r in rows]

    _rewrite_tsv(tsv, drop_b)
    with pytest.raises(DataError, match=r"row 1.*missing column 'B'") as err:
        load_items("mmbench", d)
    assert str(tsv) in str(err.value)


def test_mmbench_bad_base64_image(world, tmp_path):
    d = _copy_bench(world, tmp_path, "bench/mmbench")
    tsv = next(d.glob("*.tsv"))

    def corrupt(rows):
        col = rows[0].index("image")
        rows[3][col] = "this is not base64!!"
        return rows

    _rewrite_tsv(tsv, corrupt)
    with pytest.raises(DataError, match=r"row 3 \(line 4\).*image") as err:
        load_items("mmbench", d)
    assert str(tsv) in str(err.value)


def test_pope_label_not_yes_no(world, tmp_path):
    d = _copy_bench(world, tmp_path, "bench/pope")
    f = d / "ftibworld_pope_popular.json"
    lines = f.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[4])
    rec["label"] = "maybe"
    lines[4] = json.dumps(rec, ensure_ascii=False)
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 5.*'label'.*'maybe'") as err:
        load_items("pope", d)
    assert str(f) in str(err.value)


def test_mme_answer_not_yes_no(world, tmp_path):
    d = _copy_bench(world, tmp_path, "bench/mme")
    txt = sorted((d / "count" / "questions_answers_YN").glob("*.txt"))[1]
    q, _ = txt.read_text(encoding="utf-8").splitlines()[1].split("\t")
    first = txt.read_text(encoding="utf-8").splitlines()[0]
    txt.write_text(f"{first}\n{q}\tPerhaps\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 2.*'Perhaps'") as err:
        load_items("mme", d)
    assert str(txt) in str(err.value)


def test_corevqa_label_must_be_true_false(world, tmp_path):
    d = _copy_bench(world, tmp_path, "bench/corevqa")
    f = d / "COREVQA.csv"
    text = f.read_text(encoding="utf-8").splitlines()
    parts = text[2].rsplit(",", 1)
    text[2] = parts[0] + ",yes"
    f.write_text("\n".join(text) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 2.*'answer'") as err:
        load_items("corevqa", d)
    assert str(f) in str(err.value)


def test_missing_data_is_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_items("pope", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .*random"):
        load_items("pope", tmp_path / "empty")


def test_world_spec_names_the_cached_build(world):
    # "ftibworld:tiny" (seed 0) is built into $FTIB_CACHE_DIR on first use and is the same
    # deterministic world as an explicit build with the same size and seed
    from_spec = load_items("pope", "ftibworld:tiny")
    explicit = load_items("pope", world)
    assert [(i.id, i.question, i.gold) for i in from_spec] == [(i.id, i.question, i.gold) for i in explicit]


def test_check_data_before_work(tmp_path):
    from ftib.evals.loaders import check_data

    check_data("ftibworld")  # parses only; nothing is built at config time
    with pytest.raises(ValueError, match="unknown FTibWorld size 'huge'"):
        check_data("ftibworld:huge")
    with pytest.raises(ValueError, match="does not exist"):
        check_data(str(tmp_path / "missing"))
