"""VLMEvalKit and lmms-eval interoperability: their benchmark and prediction files.

Benchmark files (read by :func:`ftib.evals.loaders.load_items` when a ``.tsv`` is named
for a yes/no benchmark). VLMEvalKit keeps every image benchmark as one TSV with a header
row: ``index``, ``question``, ``answer``, ``category`` and the image as base64 in
``image`` (a short digit string there refers to the row of that ``index``, VLMEvalKit's
way of storing a repeated image once), optionally ``image_path``. The yes/no sets (MME,
POPE and the "Y/N" datasets, ``ImageYORNDataset`` in ``vlmeval/dataset/image_yorn.py``)
have ``answer`` = ``Yes``/``No``; MME's ``category`` is the subtask and questions are
paired by ``image_path`` (``MME_rating`` in ``vlmeval/dataset/utils/yorn.py``); POPE's
``category`` is the split, possibly several comma-separated (``POPE_rating`` explodes
it, so the question counts in each). BinaryVQA maps to this format as is; COREVQA maps
``Yes``/``No`` to ``true``/``false``. MMBench's TSV is already VLMEvalKit's and is read
by :func:`ftib.data.loaders.load_mmbench`.

Prediction files (``ftib eval --predictions FILE``, :func:`read_predictions`):

* VLMEvalKit: ``{model}_{dataset}.xlsx|tsv|csv`` -- the benchmark's columns without
  ``image``, plus ``prediction`` (``infer_data_job`` in ``vlmeval/inference.py``, the
  file name from ``get_pred_file_path``); keyed by ``index``.
* lmms-eval: ``--log_samples`` JSON lines (``<date>_samples_<task>.jsonl``, written by
  ``lmms_eval/loggers/evaluation_tracker.py``), one object per document with
  ``doc_id``, ``doc``, ``target``, ``resps``, ``filtered_resps`` (built in
  ``lmms_eval/evaluator.py``); the reply is ``filtered_resps[0]`` and the key is the
  document's ``index`` or ``question_id`` (else ``doc_id``).

ftib writes its own predictions in both forms (:func:`write_predictions`):
``<bench>.predictions.tsv`` has the columns VLMEvalKit's ``ImageYORNDataset.evaluate``
(``vlmeval/dataset/image_yorn.py``) and ``MME_rating`` / ``POPE_rating`` read --
``index``, ``question`` where known, ``answer`` (``Yes``/``No``, which VLMEvalKit
compares with its extracted answer verbatim; the letter for MMBench), ``category``
(MME subtask, POPE split), ``image_path``, the options for MMBench, ``prediction``;
``<bench>.samples.jsonl`` has lmms-eval's sample fields. Both score back through
``--predictions`` to the same metrics.

Sources read for these formats (facts only, no code taken): VLMEvalKit
``vlmeval/inference.py``, ``vlmeval/dataset/image_yorn.py``,
``vlmeval/dataset/utils/yorn.py``, ``vlmeval/dataset/utils/multiple_choice.py``;
lmms-eval ``lmms_eval/evaluator.py``, ``lmms_eval/loggers/evaluation_tracker.py``,
``lmms_eval/tasks/pope/utils.py``, ``lmms_eval/tasks/mme/utils.py``.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from ftib.data.loaders import DataError
from ftib.evals.loaders import Item

__all__ = ["BENCH_NAMES", "Predictions", "read_vlmeval_yorn", "read_predictions", "align_predictions", "write_predictions"]

log = logging.getLogger("ftib.evals")

#: Dataset names each ftib benchmark answers to in VLMEvalKit / lmms-eval file names.
BENCH_NAMES: dict[str, tuple[str, ...]] = {
    "mmbench": ("mmbench",),
    "mme": ("mme",),
    "pope": ("pope",),
    "binary_vqa": ("binaryvqa", "binary_vqa"),
    "corevqa": ("corevqa",),
}
_YORN = {"yes": "yes", "no": "no"}
#: Benchmarks whose ``.tsv`` files are VLMEvalKit yes/no TSVs.
YORN_BENCHES = ("mme", "pope", "binary_vqa", "corevqa")
_REQUIRED = {
    "mme": ("index", "question", "answer", "category", "image_path"),
    "pope": ("index", "question", "answer", "category", "image"),
    "binary_vqa": ("index", "question", "answer", "image"),
    "corevqa": ("index", "question", "answer", "image"),
}
#: Rows (lines) whose image cell is shorter than this are references to another row.
_REF_MAX = 64
#: A prediction file may miss at most this share of the benchmark's items.
MAX_MISSING = 0.1


def _read_tsv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if not header:
        raise DataError(f"{path}: empty file (no header row)")
    return header, rows


def read_vlmeval_yorn(bench: str, path: Path | str) -> list[Item]:
    """Items of a VLMEvalKit yes/no TSV (MME, POPE, BinaryVQA, COREVQA formats).

    Raises:
        DataError: a missing column (file and column), an empty cell in a required
            column or a bad answer (file, line, column), a duplicate ``index`` (file,
            both lines), an image reference to no row, an unknown MME subtask.
    """
    path = Path(path)
    header, rows = _read_tsv(path)
    need = _REQUIRED[bench]
    missing = [c for c in need if c not in header]
    if "image" not in header and "image_path" not in header:
        missing.append("image")
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (header: {', '.join(header)})")
    seen: dict[str, int] = {}
    for n, r in enumerate(rows):
        line = n + 2
        for c in need:
            if not (r.get(c) or "").strip():
                raise DataError(f"{path}:{line}: empty {c!r}")
        idx = r["index"].strip()
        if idx in seen:
            raise DataError(f"{path}:{line}: column 'index': duplicate index {idx!r} (first at line {seen[idx]})")
        seen[idx] = line
        if r["answer"].strip().lower() not in _YORN:
            raise DataError(f"{path}:{line}: column 'answer' is {r['answer']!r}, expected Yes or No")
    images = {r["index"].strip(): r.get("image") or "" for r in rows}
    if bench == "mme":
        from ftib.evals.metrics import check_mme_subtasks

        try:
            check_mme_subtasks([r["category"].strip() for r in rows], f"mme: {path}")
        except ValueError as exc:
            raise DataError(str(exc)) from None
    out: list[Item] = []
    for n, r in enumerate(rows):
        idx = r["index"].strip()
        image: Any = (r.get("image") or "").strip()
        if image and len(image) < _REF_MAX:
            if image not in images or len(images[image]) < _REF_MAX:
                raise DataError(f"{path}:{n + 2}: image refers to index {image!r}, which has no image")
            image = images[image].strip()
        if not image:
            image = Path(r["image_path"].strip())
            if not image.is_absolute():
                image = path.parent / image
        gold = r["answer"].strip().lower()
        if bench == "corevqa":
            gold = "true" if gold == "yes" else "false"
        image_id = (r.get("image_path") or "").strip() or f"row{idx}"
        meta: dict[str, Any] = {"index": idx, "image_id": image_id, "category": (r.get("category") or "").strip()}
        if bench == "mme":
            meta["subtask"] = meta["category"]
        if bench == "pope":
            for split in [s.strip() for s in meta["category"].split(",") if s.strip()]:
                out.append(Item(id=f"{split}/{idx}", question=r["question"], gold=gold, image=image,
                                meta={**meta, "split": split}))
            continue
        out.append(Item(id=idx, question=r["question"], gold=gold, image=image, meta=meta))
    return out


# --------------------------------------------------------------- prediction files
def _key(item: Item) -> str:
    """The key a prediction file uses for ``item``: its TSV ``index`` where it has one."""
    return str(item.meta.get("index", item.id))


class Predictions(NamedTuple):
    """A prediction file's replies and, where the file carries them, its gold answers
    (``answer`` column / ``doc.answer`` / ``target``), both keyed by index."""

    replies: dict[str, str]
    answers: dict[str, str]


def _norm_answer(a: Any) -> str:
    a = str(a).strip().lower()
    return {"true": "yes", "false": "no"}.get(a, a)


def read_predictions(path: Path | str, bench: str) -> Predictions:
    """Replies (and gold answers where present) of a VLMEvalKit or lmms-eval
    prediction file (see module doc).

    Raises:
        DataError: unknown format, a missing ``prediction`` / ``index`` column, a
            duplicate key (file and line), a file named for another benchmark.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--predictions: {path} does not exist")
    stem = path.stem.lower().replace("-", "_")
    others = [b for b, names in BENCH_NAMES.items() if b != bench
              and any(n in stem for n in names) and not any(m in stem for m in BENCH_NAMES[bench])]
    if others:
        raise DataError(f"{path}: the file name is that of a {others[0]} prediction file, "
                        f"not {bench} (VLMEvalKit names them <model>_<dataset>, lmms-eval samples_<task>)")
    out: dict[str, str] = {}
    where: dict[str, int] = {}

    answers: dict[str, str] = {}

    def put(key: Any, reply: Any, line: int, answer: Any = None) -> None:
        key = str(key).strip()
        if key.endswith(".0") and key[:-2].isdigit():  # pandas writes integer indices as floats
            key = key[:-2]
        if key in out:
            raise DataError(f"{path}:{line}: column 'index': duplicate index {key!r} (first at line {where[key]})")
        out[key], where[key] = "" if reply is None else str(reply), line
        if answer is not None and str(answer).strip():
            answers[key] = str(answer).strip()

    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        from ftib.core.rundir import iter_jsonl

        for line, obj in iter_jsonl(path):
            if not isinstance(obj, dict) or "doc_id" not in obj or "resps" not in obj:
                raise DataError(f"{path}:{line}: not an lmms-eval sample (needs doc_id, doc, resps)")
            doc = obj.get("doc") or {}
            key = doc.get("index", doc.get("question_id", obj["doc_id"]))
            reply = (obj.get("filtered_resps") or [None])[0]
            if reply is None:
                reply = (obj["resps"] or [[None]])[0]
                reply = reply[0] if isinstance(reply, list) else reply
            while isinstance(reply, list):
                reply = reply[0] if reply else ""
            put(key, reply, line, doc.get("answer", obj.get("target")))
        return Predictions(out, answers)
    if suffix in (".tsv", ".csv"):
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            header = list(reader.fieldnames or [])
            rows = list(reader)
    elif suffix == ".xlsx":
        try:
            import pandas as pd

            df = pd.read_excel(path)
        except ImportError as exc:
            raise DataError(f"{path}: reading .xlsx needs openpyxl ({exc}); or save it as .tsv") from None
        header = [str(c) for c in df.columns]
        rows = [{str(k): ("" if v != v else v) for k, v in rec.items()} for rec in df.to_dict("records")]
    else:
        raise DataError(f"{path}: unknown prediction format {suffix!r} (VLMEvalKit .xlsx/.tsv/.csv, "
                        "lmms-eval samples .jsonl)")
    for col in ("index", "prediction"):
        if col not in header:
            raise DataError(f"{path}: missing column {col!r} (header: {', '.join(header)})")
    if bench == "mmbench" and "A" in header and "B" not in header:
        raise DataError(f"{path}: column 'A' without 'B': not an MMBench prediction file")
    if bench != "mmbench" and {"A", "B"} <= set(header):
        raise DataError(f"{path}: option columns A, B: a multiple-choice prediction file, not {bench}")
    for n, r in enumerate(rows):
        put(r["index"], r["prediction"], n + 2, r.get("answer"))
    return Predictions(out, answers)


def align_predictions(items: Sequence[Item], predictions: Predictions, path: Path | str
                      ) -> tuple[list[str], dict[str, Any]]:
    """One reply per item, in item order, and what did not match.

    An item without a prediction gets the empty reply (unparsed, wrong) and is counted;
    more than :data:`MAX_MISSING` of the items missing, any prediction key that is no
    item of the benchmark, or a gold answer in the file that differs from the
    benchmark's is refused as a file for another benchmark or version.
    """
    preds = predictions.replies
    gold = {_key(it): it.gold for it in items}
    differ = [k for k, a in predictions.answers.items() if k in gold and _norm_answer(a) != _norm_answer(gold[k])]
    if differ:
        k = differ[0]
        raise DataError(f"{path}: {len(differ)} answers differ from the benchmark's (first: index {k}, file "
                        f"{predictions.answers[k]!r}, benchmark {gold[k]!r}): a prediction file for another "
                        "benchmark or version")
    keys = [_key(it) for it in items]
    known = set(keys)
    extra = [k for k in preds if k not in known]
    if extra:
        raise DataError(f"{path}: {len(extra)} predictions name no item of this benchmark "
                        f"(first: {', '.join(extra[:5])}): a prediction file for another benchmark or version")
    missing = [k for k in dict.fromkeys(keys) if k not in preds]
    if len(missing) > MAX_MISSING * len(set(keys)):
        raise DataError(f"{path}: no prediction for {len(missing)} of {len(set(keys))} items "
                        f"(first: {', '.join(missing[:5])}); at most {MAX_MISSING:.0%} may be missing")
    if missing:
        log.warning("%s: no prediction for %d items, scored as unparsed; first: %s",
                    path, len(missing), ", ".join(missing[:5]))
    return [preds.get(k, "") for k in keys], {"missing_predictions": len(missing), "missing_ids": missing[:10]}


_VLM_ANSWER = {"yes": "Yes", "no": "No", "true": "Yes", "false": "No"}


def write_predictions(out_dir: Path, bench: str, records: Sequence[Mapping[str, Any]],
                      questions: Mapping[str, str] | None = None) -> list[Path]:
    """Write ``<bench>.predictions.tsv`` (VLMEvalKit) and ``<bench>.samples.jsonl``
    (lmms-eval) from scored records; returns the paths."""
    from ftib.core.rundir import atomic_write_text

    questions = questions or {}
    # option columns only for multiple choice: a yes/no file with A, B is refused on read
    cols = ["index", "question", "answer", "category"] + (["A", "B", "C", "D", "l2-category"] if bench == "mmbench"
                                                           else []) + ["split", "image_path", "prediction"]
    lines = ["\t".join(cols)]
    samples = []
    for doc_id, r in enumerate(records):
        key = str(r.get("index", r["id"]))
        gold = r.get("gold")
        answer = _VLM_ANSWER.get(str(gold), gold) if bench != "mmbench" else gold
        opts = r.get("options") or {}
        row = {"index": key, "question": questions.get(str(r["id"]), ""), "answer": answer or "",
               "category": r.get("subtask") or r.get("split") or r.get("category") or "",
               **{k: opts.get(k, "") for k in "ABCD"}, "l2-category": r.get("l2-category", ""),
               "split": r.get("split", ""), "image_path": r.get("image_id", ""), "prediction": r["prediction"]}
        lines.append("\t".join(str(row.get(c, "")).replace("\t", " ").replace("\n", "\\n") for c in cols))
        samples.append(json.dumps({
            "doc_id": doc_id, "doc": {"index": key, "question_id": key, "question": row["question"],
                                      "answer": row["answer"], "category": row["category"]},
            "target": row["answer"], "resps": [[r["prediction"]]], "filtered_resps": [r["prediction"]],
        }, ensure_ascii=False))
    tsv, jl = out_dir / f"{bench}.predictions.tsv", out_dir / f"{bench}.samples.jsonl"
    atomic_write_text(tsv, "\n".join(lines) + "\n")
    atomic_write_text(jl, "\n".join(samples) + "\n")
    return [tsv, jl]
