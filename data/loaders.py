"""Loaders for every stage's records and every benchmark, through ``datasets``.

Each loader reads local files (JSON lines, TSV/CSV, folders), validates them against
the schema documented in ``docs/data.md`` and returns a :class:`datasets.Dataset`.
Image references are resolved to absolute paths after checking that each one stays
inside the dataset folder, exists and decodes as an image. Every problem raises
:class:`DataError` naming the file and, where there is one, the row.

Rows are counted from 1 over the data records (the header line of a TSV/CSV is not a
row); ``line`` is the physical line in the file.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
from PIL import Image, UnidentifiedImageError

from ftib.core.errors import FtibError

# MMBench cells hold whole base64 images; lift the csv module's 128 KiB field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ROTATION_STRIDE = 1_000_000


class DataError(FtibError):
    """A data file is missing, empty, unreadable or violates its schema."""


@dataclass(frozen=True)
class Schema:
    """Columns a record file must have.

    Attributes:
        name: what the file holds (used in messages).
        text: columns that must be non-empty strings.
        optional_text: columns that must be strings when present (may be empty).
        images: columns holding an image path (str) or list of paths, relative to the
            dataset folder.
        choices: columns whose value must be one of the given strings.
        other: further required columns checked by ``check_row``.
    """

    name: str
    text: tuple[str, ...] = ()
    optional_text: tuple[str, ...] = ()
    images: tuple[str, ...] = ()
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    other: tuple[str, ...] = ()
    check_row: Callable[[dict[str, Any], str], None] | None = None

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.text + self.images + tuple(self.choices) + self.other))


def _where(path: Path, row: int | None = None, line: int | None = None) -> str:
    out = str(path)
    if row is not None:
        out += f", row {row}"
        if line is not None:
            out += f" (line {line})"
    return out


def _check_nonempty(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file does not exist")
    if not path.is_file():
        raise DataError(f"{path}: is not a file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
            while head and not head.strip():
                head = fh.read(1 << 16)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from exc
    if not head.strip():
        raise DataError(f"{path}: file is empty")


def resolve_image(root: Path, ref: Any, where: str, *, verify: bool = True) -> str:
    """Check an image reference relative to ``root`` and return its absolute path."""
    if not isinstance(ref, str) or not ref.strip():
        raise DataError(f"{where}: image path must be a non-empty string, got {ref!r}")
    rel = Path(ref)
    if rel.is_absolute():
        raise DataError(f"{where}: image path {ref!r} is absolute; it must be relative to {root}")
    base = root.resolve()
    full = (base / rel).resolve()
    if not full.is_relative_to(base):
        raise DataError(f"{where}: image path {ref!r} escapes the dataset folder {base}")
    if not full.is_file():
        raise DataError(f"{where}: image {ref!r} does not exist ({full})")
    if verify:
        try:
            with Image.open(full) as im:
                im.verify()
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{where}: {ref!r} is not a readable image ({exc})") from exc
    return str(full)


def decode_base64_image(data: str, where: str) -> Image.Image:
    """Decode an MMBench-style base64 image cell into an RGB PIL image."""
    try:
        raw = base64.b64decode(data, validate=True)
        img = Image.open(io.BytesIO(raw))
        img.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, Image.DecompressionBombError, OSError) as exc:
        raise DataError(f"{where}: the image cell is not a base64-encoded image ({exc})") from exc
    return img.convert("RGB")


def _first_bad_json_line(path: Path) -> tuple[int, str] | None:
    with open(path, encoding="utf-8", errors="strict") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                return n, f"invalid JSON ({exc.msg} at column {exc.colno})"
            if not isinstance(obj, dict):
                return n, f"expected a JSON object, got {type(obj).__name__}"
    return None


def _line_numbers(path: Path) -> list[int]:
    """Physical line number of each non-blank line (the JSON records)."""
    with open(path, encoding="utf-8") as fh:
        return [n for n, line in enumerate(fh, 1) if line.strip()]


def _load_json_lines(path: Path, cache_dir: str | None) -> datasets.Dataset:
    _check_nonempty(path)
    try:
        bad = _first_bad_json_line(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc
    if bad is not None:
        raise DataError(f"{path}, line {bad[0]}: {bad[1]}")
    try:
        return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache_dir)
    except Exception as exc:  # datasets wraps Arrow errors (mixed types across rows ...)
        raise DataError(f"{path}: cannot be loaded as JSON lines: {type(exc).__name__}: {exc}") from exc


def _load_delimited(path: Path, delimiter: str, cache_dir: str | None) -> datasets.Dataset:
    _check_nonempty(path)
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        header = next(reader)
        if next(reader, None) is None:
            raise DataError(f"{path}: has a header but no rows")
    if len(set(header)) != len(header):
        raise DataError(f"{path}: duplicate column names in the header {header}")
    features = datasets.Features({c: datasets.Value("string") for c in header})
    try:
        ds = datasets.load_dataset("csv", data_files=str(path), split="train", delimiter=delimiter,
                                   features=features, keep_default_na=False, cache_dir=cache_dir)
    except Exception as exc:
        raise DataError(f"{path}: cannot be parsed as {'TSV' if delimiter == chr(9) else 'CSV'}: "
                        f"{type(exc).__name__}: {exc}") from exc
    if len(ds) == 0:
        raise DataError(f"{path}: has a header but no rows")
    return ds


def validate(ds: datasets.Dataset, schema: Schema, path: Path, root: Path, *,
             lines: Sequence[int] | None = None, verify_images: bool = True) -> datasets.Dataset:
    """Check ``ds`` against ``schema``; return it with image columns made absolute."""
    if len(ds) == 0:
        raise DataError(f"{path}: file is empty (no records)")
    missing = [c for c in schema.required if c not in ds.column_names]
    if missing:
        line = lines[0] if lines else None
        raise DataError(f"{_where(path, 1, line)}: missing column {missing[0]!r} "
                        f"({schema.name} records need {', '.join(schema.required)}; found "
                        f"{', '.join(ds.column_names)})")
    resolved: dict[str, list[Any]] = {c: [] for c in schema.images}
    for i, row in enumerate(ds):
        where = _where(path, i + 1, lines[i] if lines else None)
        for c in schema.required:
            if row.get(c) is None:
                raise DataError(f"{where}: column {c!r} is missing or null")
        for c in schema.text:
            if not isinstance(row[c], str) or not row[c].strip():
                raise DataError(f"{where}: column {c!r} must be a non-empty string, got {row[c]!r}")
        for c in schema.optional_text:
            if c in row and row[c] is not None and not isinstance(row[c], str):
                raise DataError(f"{where}: column {c!r} must be a string, got {row[c]!r}")
        for c, allowed in schema.choices.items():
            if row[c] not in allowed:
                raise DataError(f"{where}: column {c!r} is {row[c]!r}; expected one of {', '.join(allowed)}")
        for c in schema.images:
            v = row[c]
            if isinstance(v, list):
                resolved[c].append([resolve_image(root, x, f"{where}, column {c!r}", verify=verify_images)
                                    for x in v])
            else:
                resolved[c].append(resolve_image(root, v, f"{where}, column {c!r}", verify=verify_images))
        if schema.check_row is not None:
            schema.check_row(row, where)
    for c, values in resolved.items():
        ds = ds.remove_columns(c).add_column(c, values)
    return ds


# ------------------------------------------------------------------------ stage records


def _check_messages(row: dict[str, Any], where: str) -> None:
    msgs = row["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise DataError(f"{where}: 'messages' must be a non-empty list of chat turns")
    n_image_parts = 0
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise DataError(f"{where}: messages[{j}] needs a role of system/user/assistant, got {m!r}")
        content = m.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list) or not content:
            raise DataError(f"{where}: messages[{j}].content must be a string or a list of parts")
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image":
                n_image_parts += 1
            elif kind == "text":
                if not isinstance(part.get("text"), str):
                    raise DataError(f"{where}: messages[{j}] has a text part without text")
            else:
                raise DataError(f"{where}: messages[{j}] has a part of unknown type {kind!r}")
    if msgs[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last turn must be the assistant's answer")
    images = row["images"]
    if not isinstance(images, list):
        raise DataError(f"{where}: 'images' must be a list of paths")
    if n_image_parts != len(images):
        raise DataError(f"{where}: {n_image_parts} image part(s) in messages but {len(images)} "
                        f"path(s) in 'images'")


def _check_cells(row: dict[str, Any], where: str) -> None:
    grid = row["grid"]
    if (not isinstance(grid, list) or len(grid) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in grid)):
        raise DataError(f"{where}: 'grid' must be [rows, cols], two positive integers, got {grid!r}")
    cells = row["cells"]
    if not isinstance(cells, list):
        raise DataError(f"{where}: 'cells' must be a list of {{row, col, words}} objects")
    seen = set()
    for j, cell in enumerate(cells):
        if not isinstance(cell, dict) or not {"row", "col", "words"} <= set(cell):
            raise DataError(f"{where}: cells[{j}] must be an object with row, col and words, got {cell!r}")
        r, c, words = cell["row"], cell["col"], cell["words"]
        if not (isinstance(r, int) and isinstance(c, int) and 0 <= r < grid[0] and 0 <= c < grid[1]):
            raise DataError(f"{where}: cells[{j}] at ({r!r}, {c!r}) is outside the {grid[0]}x{grid[1]} grid")
        if (r, c) in seen:
            raise DataError(f"{where}: cells[{j}]: cell ({r}, {c}) is listed twice")
        seen.add((r, c))
        if (not isinstance(words, dict) or not words
                or not all(isinstance(v, str) and v.strip() for v in words.values())):
            raise DataError(f"{where}: cells[{j}].words must map slot names to non-empty words, got {words!r}")


SCHEMAS: dict[str, Schema] = {
    "cpt": Schema("CPT corpus", text=("id", "text")),
    "captions": Schema("image-caption", text=("id", "caption"), images=("image",),
                       optional_text=("caption_zh", "caption_en")),
    "cells": Schema("image-cell words", text=("id",), images=("image",), other=("grid", "cells"),
                    check_row=_check_cells),
    "sft": Schema("SFT instruction", text=("id", "task"), images=("images",), other=("messages",),
                  check_row=_check_messages),
    "translation": Schema("translation pair", text=("id", "source", "reference"),
                          optional_text=("prompt", "reference_en")),
    "headlines": Schema("report-headline pair", text=("id", "report", "headline"),
                        optional_text=("prompt",)),
    "general": Schema("general text", text=("id", "lang", "text"), optional_text=("prompt", "answer")),
    "pope": Schema("POPE question", text=("text",), images=("image",), choices={"label": ("yes", "no")},
                   other=("question_id",)),
    "binaryvqa": Schema("BinaryVQA question", text=("question_id", "question"), images=("image",),
                        choices={"answer": ("yes", "no")}),
    "corevqa": Schema("COREVQA statement", text=("id", "statement"), images=("image",),
                      choices={"answer": ("True", "False")}),
}


def _load_parquet(path: Path, cache_dir: str | None) -> datasets.Dataset:
    _check_nonempty(path)
    try:
        return datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=cache_dir)
    except Exception as exc:
        raise DataError(f"{path}: cannot be loaded as Parquet: {type(exc).__name__}: {exc}") from exc


def _load_records(kind: str, path: Path | str, root: Path | str | None = None, *,
                  verify_images: bool = True, cache_dir: str | None = None) -> datasets.Dataset:
    """Stage records from JSON lines (``.jsonl``/``.json``) or Parquet (``.parquet``)."""
    path = Path(path)
    if path.suffix == ".parquet":
        ds, lines = _load_parquet(path, cache_dir), None
    else:
        ds = _load_json_lines(path, cache_dir)
        lines = _line_numbers(path)
    return validate(ds, SCHEMAS[kind], path, Path(root) if root else path.parent,
                    lines=lines, verify_images=verify_images)


def load_cpt(path: Path | str, **kw: Any) -> datasets.Dataset:
    """CPT corpus (JSON lines ``id, text[, kind]``)."""
    return _load_records("cpt", path, **kw)


def load_captions(path: Path | str, root: Path | str | None = None, **kw: Any) -> datasets.Dataset:
    """Image-caption pairs (``id, image, caption[, caption_zh, caption_en]``); ``image``
    relative to ``root`` (default: the file's folder), returned absolute."""
    return _load_records("captions", path, root, **kw)


def load_cells(path: Path | str, root: Path | str | None = None, **kw: Any) -> datasets.Dataset:
    """Images with words per grid cell (``id, image, grid, cells``: ``grid`` = ``[rows,
    cols]``, ``cells`` = ``[{row, col, words: {slot: word}}]``, unlisted cells empty),
    the data of the ``ground`` stage (``docs/data.md``)."""
    return _load_records("cells", path, root, **kw)


def load_sft(path: Path | str, root: Path | str | None = None, **kw: Any) -> datasets.Dataset:
    """Multimodal chat instructions (``id, task, images, messages``)."""
    return _load_records("sft", path, root, **kw)


def load_translation(path: Path | str, **kw: Any) -> datasets.Dataset:
    """Tibetan -> Chinese pairs (``id, source, reference[, prompt, reference_en]``)."""
    return _load_records("translation", path, **kw)


def load_headlines(path: Path | str, **kw: Any) -> datasets.Dataset:
    """Report -> headline pairs (``id, report, headline[, prompt]``)."""
    return _load_records("headlines", path, **kw)


def load_general(path: Path | str, **kw: Any) -> datasets.Dataset:
    """General Chinese/English text (``id, lang, text[, prompt, answer]``)."""
    return _load_records("general", path, **kw)


# -------------------------------------------------------------------------- benchmarks


MMBENCH_REQUIRED = ("index", "question", "A", "B", "answer", "image")
OPTION_LETTERS = ("A", "B", "C", "D")


def load_mmbench(path: Path | str, *, verify_images: bool = True, cache_dir: str | None = None
                 ) -> datasets.Dataset:
    """An MMBench TSV (``index, question, hint, A, B, C, D, answer, category,
    l2-category, split, image``) with base64 images.

    Returns the rows with ``index`` as int and a ``group`` column (``index % 1_000_000``)
    that ties each row to its circular rotations. An ``image`` cell holding only digits
    refers to the row with that index (VLMEvalKit's way of sharing one image among
    rotations); it is replaced by that row's base64 image.
    """
    path = Path(path)
    ds = _load_delimited(path, "\t", cache_dir)
    missing = [c for c in MMBENCH_REQUIRED if c not in ds.column_names]
    if missing:
        raise DataError(f"{_where(path, 1, 2)}: missing column {missing[0]!r} (MMBench TSV needs "
                        f"{', '.join(MMBENCH_REQUIRED)}; found {', '.join(ds.column_names)})")
    rows = ds.to_list()
    images_by_index: dict[int, str] = {}
    indices: list[int] = []
    for i, r in enumerate(rows):
        where = _where(path, i + 1, i + 2)
        try:
            idx = int(r["index"])
        except ValueError:
            raise DataError(f"{where}: 'index' must be an integer, got {r['index']!r}") from None
        indices.append(idx)
        if not r["image"].isdigit():
            images_by_index[idx] = r["image"]
    images: list[str] = []
    for i, r in enumerate(rows):
        where = _where(path, i + 1, i + 2)
        for c in ("question", "answer"):
            if not r[c].strip():
                raise DataError(f"{where}: column {c!r} is empty")
        options = [L for L in OPTION_LETTERS if L in r and r[L].strip()]
        if len(options) < 2:
            raise DataError(f"{where}: needs at least two non-empty options (A, B)")
        if r["answer"] not in options:
            raise DataError(f"{where}: answer {r['answer']!r} is not one of the row's options "
                            f"{', '.join(options)}")
        img = r["image"]
        if img.isdigit():
            if int(img) not in images_by_index:
                raise DataError(f"{where}: image refers to index {img} which has no image")
            img = images_by_index[int(img)]
        if not img.strip():
            raise DataError(f"{where}: column 'image' is empty")
        if verify_images:
            decode_base64_image(img, f"{where}, column 'image'")
        images.append(img)
    ds = ds.remove_columns(["index", "image"])
    ds = ds.add_column("index", indices).add_column("image", images)
    return ds.add_column("group", [i % ROTATION_STRIDE for i in indices])


def load_mme(root: Path | str, *, verify_images: bool = True) -> datasets.Dataset:
    """An MME release folder: one sub-folder per subtask, each with either
    ``images/`` + ``questions_answers_YN/`` or images and ``.txt`` files side by side;
    each ``.txt`` holds lines ``question<TAB>Yes|No``.

    Returns rows ``subtask, image (absolute path), question, answer, question_id``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: MME folder does not exist")
    rows: list[dict[str, Any]] = []
    subtasks = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subtasks:
        raise DataError(f"{root}: no subtask folders")
    for sub in subtasks:
        qa_dir = sub / "questions_answers_YN"
        img_dir = sub / "images"
        if not qa_dir.is_dir():
            qa_dir, img_dir = sub, sub
        txts = sorted(qa_dir.glob("*.txt"))
        if not txts:
            raise DataError(f"{sub}: no question files (*.txt)")
        for txt in txts:
            _check_nonempty(txt)
            image = None
            for suf in IMAGE_SUFFIXES:
                cand = img_dir / (txt.stem + suf)
                if cand.exists():
                    image = resolve_image(root, cand.relative_to(root).as_posix(), str(txt),
                                          verify=verify_images)
                    break
            if image is None:
                raise DataError(f"{txt}: no image named {txt.stem}.* in {img_dir}")
            lines = [ln for ln in txt.read_text(encoding="utf-8").splitlines()]
            n = 0
            for ln_no, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                parts = line.split("\t")
                if len(parts) != 2 or not parts[0].strip():
                    raise DataError(f"{_where(txt, n + 1, ln_no)}: expected 'question<TAB>answer'")
                answer = parts[1].strip()
                if answer not in ("Yes", "No"):
                    raise DataError(f"{_where(txt, n + 1, ln_no)}: answer {answer!r} must be Yes or No")
                rows.append({"subtask": sub.name, "image": image, "question": parts[0].strip(),
                             "answer": answer, "question_id": f"{sub.name}/{txt.stem}/{n}"})
                n += 1
    return datasets.Dataset.from_list(rows)


def load_pope(path: Path | str, images: Path | str | None = None, **kw: Any) -> datasets.Dataset:
    """A POPE split file (JSON lines ``question_id, image, text, label``); ``images``
    defaults to the ``images/`` folder next to the file."""
    path = Path(path)
    return _load_records("pope", path, Path(images) if images else path.parent / "images", **kw)


def _load_csv_records(kind: str, path: Path | str, images: Path | str | None, verify_images: bool,
                      cache_dir: str | None) -> datasets.Dataset:
    path = Path(path)
    ds = _load_delimited(path, ",", cache_dir)
    root = Path(images) if images else path.parent / "images"
    return validate(ds, SCHEMAS[kind], path, root, lines=list(range(2, len(ds) + 2)),
                    verify_images=verify_images)


def load_binaryvqa(path: Path | str, images: Path | str | None = None, *, verify_images: bool = True,
                   cache_dir: str | None = None) -> datasets.Dataset:
    """BinaryVQA ``questions.csv`` (``question_id, image, question, answer`` yes/no)."""
    return _load_csv_records("binaryvqa", path, images, verify_images, cache_dir)


def load_corevqa(path: Path | str, images: Path | str | None = None, *, verify_images: bool = True,
                 cache_dir: str | None = None) -> datasets.Dataset:
    """COREVQA CSV (``id, image, statement, answer`` True/False)."""
    return _load_csv_records("corevqa", path, images, verify_images, cache_dir)


# ------------------------------------------------------------------------------ world


WORLD_FILES: dict[str, tuple[Callable[..., datasets.Dataset], str]] = {
    "cpt": (load_cpt, "cpt/corpus.jsonl"),
    "captions": (load_captions, "align/captions.jsonl"),
    "sft": (load_sft, "sft/instructions.jsonl"),
    "sft_dialogues": (load_sft, "sft/dialogues.jsonl"),
    "translation": (load_translation, "grpo/translation.jsonl"),
    "headlines": (load_headlines, "grpo/headlines.jsonl"),
    "general_train": (load_general, "general/train.jsonl"),
    "general_heldout": (load_general, "general/heldout.jsonl"),
    "translation_test": (load_translation, "bench/translation/test.jsonl"),
    "headline_test": (load_headlines, "bench/headline/test.jsonl"),
    "mmbench": (load_mmbench, "bench/mmbench/FTibWorld_MMBench_DEV_BO.tsv"),
    "mme": (load_mme, "bench/mme"),
    "pope_random": (load_pope, "bench/pope/ftibworld_pope_random.json"),
    "pope_popular": (load_pope, "bench/pope/ftibworld_pope_popular.json"),
    "pope_adversarial": (load_pope, "bench/pope/ftibworld_pope_adversarial.json"),
    "binaryvqa": (load_binaryvqa, "bench/binaryvqa/questions.csv"),
    "corevqa": (load_corevqa, "bench/corevqa/COREVQA.csv"),
    # FTibBench-mini in Chinese: the same images and questions (ftib.data.world.build.ZH_ROOT)
    "mmbench_zh": (load_mmbench, "bench/zh/mmbench/FTibWorld_MMBench_DEV_ZH.tsv"),
    "mme_zh": (load_mme, "bench/zh/mme"),
    "pope_random_zh": (load_pope, "bench/zh/pope/ftibworld_pope_random.json"),
    "pope_popular_zh": (load_pope, "bench/zh/pope/ftibworld_pope_popular.json"),
    "pope_adversarial_zh": (load_pope, "bench/zh/pope/ftibworld_pope_adversarial.json"),
    "binaryvqa_zh": (load_binaryvqa, "bench/zh/binaryvqa/questions.csv"),
    "corevqa_zh": (load_corevqa, "bench/zh/corevqa/COREVQA.csv"),
}


def world_file(part: str) -> str:
    """The path of a FTibWorld part (a :data:`WORLD_FILES` name) inside a build."""
    if part not in WORLD_FILES:
        from ftib.core.errors import did_you_mean

        raise DataError(f"unknown FTibWorld part {part!r}; {did_you_mean(part, WORLD_FILES)}")
    return WORLD_FILES[part][1]


def load_world(root: Path | str, names: Iterable[str] | None = None, **kw: Any) -> dict[str, datasets.Dataset]:
    """Load (and validate) the parts of a FTibWorld build by name (default: all)."""
    root = Path(root)
    if not (root / "world.json").is_file():
        raise DataError(f"{root}: not a FTibWorld build (no world.json); run `ftib data build --out {root}`")
    out = {}
    for name in names or WORLD_FILES:
        rel = world_file(name)
        out[name] = WORLD_FILES[name][0](root / rel, **kw)
    return out


def check_pixel_range(min_pixels: int | None, max_pixels: int | None) -> None:
    """Config-time check of a pixel budget (``min_pixels``/``max_pixels``, Qwen's names):
    positive, min <= max. The check against the model's patch grid needs the model:
    :func:`ftib.models.pixels.with_pixel_budget`."""
    for key, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
        if value is not None and value < 1:
            raise ValueError(f"{key} must be >= 1 or null (the model processor's), got {value}")
    if min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) is above max_pixels ({max_pixels})")
