"""Loaders reject bad files with errors that name the file and the row."""

from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from ftib.data.loaders import (DataError, load_binaryvqa, load_captions, load_corevqa, load_cpt, load_mmbench,
                               load_mme, load_pope, load_sft, load_translation)


def png(path: Path, colour=(200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def test_good_captions_resolve_to_absolute_paths(tmp_path):
    png(tmp_path / "images" / "a.png")
    f = jsonl(tmp_path / "captions.jsonl", [{"id": "1", "image": "images/a.png", "caption": "ཉ་ཡོད།"}])
    ds = load_captions(f)
    assert ds[0]["image"] == str((tmp_path / "images" / "a.png").resolve())


def test_empty_file(tmp_path):
    f = tmp_path / "corpus.jsonl"
    f.write_text("\n\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl: file is empty"):
        load_cpt(f)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cpt(tmp_path / "nope.jsonl")


def test_missing_column_names_file_and_row(tmp_path):
    f = jsonl(tmp_path / "corpus.jsonl", [{"id": "a", "text": "ཉ།"}, {"id": "b"}, {"id": "c", "text": "རི།"}])
    with pytest.raises(DataError, match=r"corpus\.jsonl, row 2 \(line 2\): column 'text' is missing or null"):
        load_cpt(f)
    g = jsonl(tmp_path / "c2.jsonl", [{"id": "a", "body": "x"}])
    with pytest.raises(DataError, match=r"c2\.jsonl, row 1 \(line 1\): missing column 'text'"):
        load_cpt(g)


def test_invalid_json_line_is_named(tmp_path):
    f = jsonl(tmp_path / "tr.jsonl", [{"id": "a", "source": "ཉ།", "reference": "鱼。"}, "{not json"])
    with pytest.raises(DataError, match=r"tr\.jsonl, line 2: invalid JSON"):
        load_translation(f)


def test_empty_string_value(tmp_path):
    f = jsonl(tmp_path / "tr.jsonl", [{"id": "a", "source": "  ", "reference": "鱼。"}])
    with pytest.raises(DataError, match=r"row 1 \(line 1\): column 'source' must be a non-empty string"):
        load_translation(f)


def test_image_path_escaping_the_folder(tmp_path):
    png(tmp_path / "outside.png")
    f = jsonl(tmp_path / "ds" / "captions.jsonl",
              [{"id": "1", "image": "../outside.png", "caption": "ཉ།"}])
    with pytest.raises(DataError, match=r"captions\.jsonl, row 1 \(line 1\), column 'image': .*escapes the dataset"):
        load_captions(f)
    g = jsonl(tmp_path / "ds" / "abs.jsonl",
              [{"id": "1", "image": str(tmp_path / "outside.png"), "caption": "ཉ།"}])
    with pytest.raises(DataError, match="is absolute"):
        load_captions(g)


def test_symlink_escaping_the_folder(tmp_path):
    png(tmp_path / "outside.png")
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "images" / "link.png").symlink_to(tmp_path / "outside.png")
    f = jsonl(tmp_path / "ds" / "captions.jsonl", [{"id": "1", "image": "images/link.png", "caption": "ཉ།"}])
    with pytest.raises(DataError, match="escapes the dataset"):
        load_captions(f)


def test_unreadable_and_missing_image(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bad.png").write_bytes(b"this is not a png")
    png(tmp_path / "images" / "ok.png")
    f = jsonl(tmp_path / "captions.jsonl", [
        {"id": "1", "image": "images/ok.png", "caption": "ཉ།"},
        {"id": "2", "image": "images/bad.png", "caption": "ཉ།"},
    ])
    with pytest.raises(DataError, match=r"row 2 \(line 2\), column 'image': 'images/bad.png' is not a readable image"):
        load_captions(f)
    g = jsonl(tmp_path / "c2.jsonl", [{"id": "1", "image": "images/gone.png", "caption": "ཉ།"}])
    with pytest.raises(DataError, match="does not exist"):
        load_captions(g)


def test_sft_image_parts_must_match_paths(tmp_path):
    png(tmp_path / "images" / "a.png")
    msgs = [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "ཉ།"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ཡོད།"}]}]
    ok = jsonl(tmp_path / "ok.jsonl", [{"id": "1", "task": "t", "images": ["images/a.png"], "messages": msgs}])
    assert load_sft(ok)[0]["images"] == [str((tmp_path / "images" / "a.png").resolve())]
    bad = jsonl(tmp_path / "bad.jsonl", [{"id": "1", "task": "t", "images": [], "messages": msgs}])
    with pytest.raises(DataError, match=r"bad\.jsonl, row 1 \(line 1\): 1 image part\(s\) in messages but 0"):
        load_sft(bad)
    last_user = jsonl(tmp_path / "lu.jsonl", [{"id": "1", "task": "t", "images": ["images/a.png"],
                                                "messages": msgs[:1]}])
    with pytest.raises(DataError, match="last turn must be the assistant"):
        load_sft(last_user)


def _mmbench_tsv(path: Path, rows: list[list[str]]) -> Path:
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\tl2-category\tsplit\timage\n"
    path.write_text(header + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _b64png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 0, 255)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_mmbench_reference_images_and_errors(tmp_path):
    img = _b64png()
    ok = _mmbench_tsv(tmp_path / "ok.tsv", [
        ["0", "q", "", "a", "b", "c", "", "A", "cat", "l2", "dev", img],
        ["1000000", "q", "", "b", "c", "a", "", "C", "cat", "l2", "dev", "0"],
    ])
    ds = load_mmbench(ok)
    assert ds["group"] == [0, 0] and ds[1]["image"] == img and ds["index"] == [0, 1_000_000]
    bad_answer = _mmbench_tsv(tmp_path / "a.tsv", [["0", "q", "", "a", "b", "", "", "C", "c", "l", "dev", img]])
    with pytest.raises(DataError, match=r"a\.tsv, row 1 \(line 2\): answer 'C' is not one of the row's options A, B"):
        load_mmbench(bad_answer)
    bad_image = _mmbench_tsv(tmp_path / "i.tsv", [["0", "q", "", "a", "b", "", "", "A", "c", "l", "dev", "%%%"]])
    with pytest.raises(DataError, match=r"i\.tsv, row 1 \(line 2\), column 'image': .*not a base64"):
        load_mmbench(bad_image)
    (tmp_path / "m.tsv").write_text("index\tquestion\tA\tB\tanswer\n0\tq\ta\tb\tA\n")
    with pytest.raises(DataError, match=r"m\.tsv, row 1 \(line 2\): missing column 'image'"):
        load_mmbench(tmp_path / "m.tsv")


def test_mme_layouts_and_errors(tmp_path):
    root = tmp_path / "mme"
    png(root / "count" / "images" / "x.png")
    qa = root / "count" / "questions_answers_YN" / "x.txt"
    qa.parent.mkdir(parents=True)
    qa.write_text("ཉ་གཉིས་ཡོད་དམ།\tYes\nཉ་གསུམ་ཡོད་དམ།\tNo\n", encoding="utf-8")
    png(root / "color" / "y.png")  # side-by-side layout
    (root / "color" / "y.txt").write_text("ཉ་དམར་པོ་ཡིན་ནམ།\tNo\nཉ་སྔོན་པོ་ཡིན་ནམ།\tYes\n", encoding="utf-8")
    ds = load_mme(root)
    assert sorted(ds["subtask"]) == ["color", "color", "count", "count"]
    qa.write_text("ཉ་གཉིས་ཡོད་དམ།\tYes\nཉ་གསུམ་ཡོད་དམ།\tMaybe\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"x\.txt, row 2 \(line 2\): answer 'Maybe' must be Yes or No"):
        load_mme(root)
    qa.write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"x\.txt: file is empty"):
        load_mme(root)
    qa.write_text("ཉ་གཉིས་ཡོད་དམ།\tYes\n", encoding="utf-8")
    (root / "count" / "images" / "x.png").unlink()
    with pytest.raises(DataError, match=r"x\.txt: no image named x\.\*"):
        load_mme(root)


def test_pope_binaryvqa_corevqa_errors(tmp_path):
    png(tmp_path / "pope" / "images" / "a.png")
    f = jsonl(tmp_path / "pope" / "x_pope_random.json", [
        {"question_id": 1, "image": "a.png", "text": "ཉ་ཡོད་དམ།", "label": "yes"},
        {"question_id": 2, "image": "a.png", "text": "རི་ཡོད་དམ།", "label": "maybe"},
    ])
    with pytest.raises(DataError, match=r"x_pope_random\.json, row 2 \(line 2\): column 'label' is 'maybe'"):
        load_pope(f)
    png(tmp_path / "b" / "images" / "a.png")
    (tmp_path / "b" / "questions.csv").write_text("question_id,image,question,answer\n1,a.png,ཉ་ཡོད་དམ།,yes\n"
                                                  "2,../../x.png,ཉ་ཡོད་དམ།,no\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"questions\.csv, row 2 \(line 3\), column 'image': .*escapes"):
        load_binaryvqa(tmp_path / "b" / "questions.csv")
    shutil.copytree(tmp_path / "b" / "images", tmp_path / "c" / "images")
    (tmp_path / "c" / "COREVQA.csv").write_text("id,image,statement\n1,a.png,ཉ་ཡོད།\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"COREVQA\.csv, row 1 \(line 2\): missing column 'answer'"):
        load_corevqa(tmp_path / "c" / "COREVQA.csv")
    (tmp_path / "c" / "COREVQA.csv").write_text("id,image,statement,answer\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"COREVQA\.csv: has a header but no rows"):
        load_corevqa(tmp_path / "c" / "COREVQA.csv")


def test_parquet_records_load_and_validate(tmp_path):
    import datasets

    png(tmp_path / "images" / "a.png")
    datasets.Dataset.from_list([{"id": "1", "image": "images/a.png", "caption": "ཉ་ཡོད།"}]).to_parquet(
        str(tmp_path / "captions.parquet"))
    assert load_captions(tmp_path / "captions.parquet")[0]["caption"] == "ཉ་ཡོད།"
    datasets.Dataset.from_list([{"id": "1", "image": "images/a.png", "caption": "ཉ།"},
                                {"id": "2", "image": "images/b.png", "caption": "ཉ།"}]).to_parquet(
        str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError, match=r"bad\.parquet, row 2, column 'image': image 'images/b.png' does not exist"):
        load_captions(tmp_path / "bad.parquet")
