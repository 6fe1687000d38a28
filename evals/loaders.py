"""Benchmark items for the evaluators, read through :mod:`ftib.data.loaders`.

The file formats and their validation (a malformed row is a
:class:`ftib.data.loaders.DataError` naming the file and the row) belong to
``ftib.data``; this module only turns the validated rows into :class:`Item` objects the
evaluators share, and finds a benchmark's files from what a config names:

* ``ftibworld[:SIZE[:SEED]]``: the cached FTibWorld build of that size and seed
  (:func:`ftib.data.sources.world_root`, built on first use);
* a file (one MMBench TSV, one POPE split, one CSV ...; a ``.tsv`` for MME, POPE,
  BinaryVQA or COREVQA is read as VLMEvalKit's yes/no format, :mod:`ftib.evals.interop`);
* a folder holding the benchmark's files (``*.tsv`` for MMBench; ``*random*``,
  ``*popular*``, ``*adversarial*`` for POPE; the MME release folder itself);
* a FTibWorld build (a folder with ``world.json``): the benchmark's standard place in
  it (:data:`ftib.data.loaders.WORLD_FILES`).

``lang`` picks the language of a FTibWorld build's copy of a benchmark: ``bo``
(Tibetan, ``bench/``) or ``zh`` (Chinese, ``bench/zh/``: the same images and questions).
A file or folder given directly is read as it is, whatever ``lang`` says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftib.core.errors import ConfigError

from ftib.data import loaders as dl
from ftib.data import sources
from ftib.data.loaders import DataError

__all__ = ["DataError", "Item", "WORLD_PARTS", "check_data", "find_files", "load_items"]

#: Benchmark name -> the FTibWorld parts that hold it.
WORLD_PARTS: dict[str, tuple[str, ...]] = {
    "mmbench": ("mmbench",),
    "mme": ("mme",),
    "pope": ("pope_random", "pope_popular", "pope_adversarial"),
    "binary_vqa": ("binaryvqa",),
    "corevqa": ("corevqa",),
    "translation": ("translation_test",),
    "headline": ("headline_test",),
    "alignment_tax": ("general_heldout",),
}
_GLOBS: dict[str, tuple[str, ...]] = {
    "mmbench": ("*.tsv",),
    "pope": ("*random*.json*", "*popular*.json*", "*adversarial*.json*"),
    "binary_vqa": ("*.csv",),
    "corevqa": ("*.csv",),
    "translation": ("*.jsonl",),
    "headline": ("*.jsonl",),
    "alignment_tax": ("*.jsonl",),
}
POPE_SPLITS = ("random", "popular", "adversarial")
#: Languages of FTibBench-mini; the Chinese copy's parts carry a ``_zh`` suffix.
LANGS = ("bo", "zh")
#: Benchmarks that have a Chinese copy in a FTibWorld build.
TRANSLATED = ("mmbench", "mme", "pope", "binary_vqa", "corevqa")


def world_parts(bench: str, lang: str = "bo") -> tuple[str, ...]:
    """The FTibWorld parts of ``bench`` in ``lang``."""
    if lang not in LANGS:
        from ftib.core.errors import did_you_mean

        raise DataError(f"{bench}: unknown benchmark language {lang!r}; {did_you_mean(lang, LANGS)}")
    if lang == "bo":
        return WORLD_PARTS[bench]
    if bench not in TRANSLATED:
        raise DataError(f"{bench}: FTibWorld has no {lang} copy (only {', '.join(TRANSLATED)})")
    return tuple(f"{part}_{lang}" for part in WORLD_PARTS[bench])


@dataclass
class Item:
    """One benchmark question (or one text-task input).

    Attributes:
        id: unique within the benchmark (``"17"``, ``"random/3"``, ``"count/count_0000/1"``).
        question: the question, statement or source text, as in the file.
        gold: the gold answer: an option letter, ``"yes"``/``"no"``, ``"true"``/
            ``"false"``, or a reference text.
        options: letter -> text for multiple choice (empty otherwise).
        hint: MMBench's hint.
        image: a base64 string (MMBench), a path, or ``None`` for text-only items.
        prompt: a ready prompt stored with the item (text tasks), else ``""``.
        meta: benchmark-specific fields (``index``, ``category``, ``split``,
            ``subtask``, ``image_id`` ...).
    """

    id: str
    question: str
    gold: str | None
    options: dict[str, str] = field(default_factory=dict)
    hint: str = ""
    image: str | Path | None = None
    prompt: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def load_image(self):
        """The image as an RGB ``PIL.Image`` (``None`` for text-only items)."""
        if self.image is None:
            return None
        from PIL import Image

        if isinstance(self.image, str):  # base64 (paths are always Path objects)
            return dl.decode_base64_image(self.image, f"item {self.id}")
        try:
            with Image.open(self.image) as img:
                return img.convert("RGB")
        except (Image.DecompressionBombError, OSError, ValueError) as exc:
            raise dl.DataError(f"item {self.id}: {self.image}: not a usable image ({exc})") from exc


def check_data(spec: str | Path) -> None:
    """Config-time check of a ``data`` value: a world spec parses, a path exists.

    Raises ValueError (the config builder adds the key's name)."""
    try:
        sources.check_spec(str(spec), "data")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def find_files(bench: str, data: str | Path, lang: str = "bo") -> list[Path]:
    """The files (or, for MME, the folder) of ``bench`` given a config's ``data``."""
    if sources.is_world_spec(str(data)):
        data = sources.world_root(str(data))
    data = Path(data).expanduser()
    if not data.exists():
        raise DataError(f"{bench}: {data} does not exist")
    if (data / "world.json").is_file():
        return [data / dl.WORLD_FILES[part][1] for part in world_parts(bench, lang)]
    if bench == "mme" or data.is_file():
        return [data]
    found: list[Path] = []
    for pattern in _GLOBS[bench]:
        found += sorted(p for p in data.glob(pattern) if p.is_file() and p not in found)
    if not found:
        raise DataError(f"{bench}: no {' or '.join(_GLOBS[bench])} file in {data}")
    return found


def _mmbench(path: Path, images: Path | None) -> list[Item]:
    ds = dl.load_mmbench(path)
    out = []
    seen: dict[int, int] = {}
    for row, r in enumerate(ds):
        # line = row + 2 (header on line 1); a duplicate index would merge two questions'
        # CircularEval groups.
        if int(r["index"]) in seen:
            raise DataError(f"{path}:{row + 2}: column 'index': duplicate index {r['index']} "
                            f"(first at line {seen[int(r['index'])]})")
        seen[int(r["index"])] = row + 2
        options = {k: r[k].strip() for k in dl.OPTION_LETTERS if k in r and r[k] and r[k].strip()}
        out.append(Item(
            id=str(r["index"]), question=r["question"], gold=r["answer"], options=options,
            hint=r.get("hint") or "", image=r["image"],
            meta={"index": int(r["index"]), "group": int(r["group"]),
                  "category": r.get("category") or "", "l2-category": r.get("l2-category") or "",
                  "split": r.get("split") or ""},
        ))
    return out


def _mme(path: Path, images: Path | None) -> list[Item]:
    from ftib.evals.metrics import check_mme_subtasks

    rows = dl.load_mme(path)
    try:
        check_mme_subtasks(rows["subtask"], f"mme: {path}")
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return [
        Item(id=r["question_id"], question=r["question"], gold=r["answer"].lower(),
             image=Path(r["image"]), meta={"subtask": r["subtask"], "image_id": r["image"]})
        for r in rows
    ]


def _pope(path: Path, images: Path | None) -> list[Item]:
    split = next((s for s in POPE_SPLITS if s in path.name.lower()), path.stem)
    return [
        Item(id=f"{split}/{r['question_id']}", question=r["text"], gold=r["label"],
             image=Path(r["image"]), meta={"split": split, "image_id": r["image"]})
        for r in dl.load_pope(path, images)
    ]


def _binary_vqa(path: Path, images: Path | None) -> list[Item]:
    return [
        Item(id=str(r["question_id"]), question=r["question"], gold=r["answer"],
             image=Path(r["image"]), meta={"image_id": r["image"]})
        for r in dl.load_binaryvqa(path, images)
    ]


def _corevqa(path: Path, images: Path | None) -> list[Item]:
    return [
        Item(id=str(r["id"]), question=r["statement"], gold=r["answer"].lower(),
             image=Path(r["image"]), meta={"image_id": r["image"]})
        for r in dl.load_corevqa(path, images)
    ]


def _translation(path: Path, images: Path | None) -> list[Item]:
    return [Item(id=r["id"], question=r["source"], gold=r["reference"], prompt=r.get("prompt") or "",
                 meta={"kind": r.get("kind") or ""})
            for r in dl.load_translation(path)]


def _headline(path: Path, images: Path | None) -> list[Item]:
    return [Item(id=r["id"], question=r["report"], gold=r["headline"], prompt=r.get("prompt") or "")
            for r in dl.load_headlines(path)]


def _general(path: Path, images: Path | None) -> list[Item]:
    return [Item(id=r["id"], question=r["text"], gold=None, meta={"lang": r["lang"]})
            for r in dl.load_general(path)]


_READERS: dict[str, Callable[[Path, Path | None], list[Item]]] = {
    "mmbench": _mmbench,
    "mme": _mme,
    "pope": _pope,
    "binary_vqa": _binary_vqa,
    "corevqa": _corevqa,
    "translation": _translation,
    "headline": _headline,
    "alignment_tax": _general,
}


def load_items(bench: str, data: str | Path, images: Path | None = None, limit: int | None = None,
               lang: str = "bo") -> list[Item]:
    """Read and validate ``bench`` from ``data`` (see the module docstring).

    Args:
        bench: one of :data:`WORLD_PARTS`.
        data: ``ftibworld[:SIZE[:SEED]]``, a FTibWorld build, a folder of the
            benchmark's files, or a file.
        images: image folder for the JSON/CSV formats (default: ``images/`` beside the file).
        limit: keep the first ``limit`` items of each file (MMBench: the first ``limit``
            questions with all their rotations; MME: the first ``limit`` images of each
            subtask with both their questions).
        lang: ``bo`` or ``zh``: which language's copy of a FTibWorld build to read.
    """
    from ftib.evals import interop

    items: list[Item] = []
    for f in find_files(bench, data, lang):
        if f.is_file() and f.suffix.lower() == ".tsv" and bench in interop.YORN_BENCHES:
            got = interop.read_vlmeval_yorn(bench, f)  # VLMEvalKit's yes/no TSV
        else:
            got = _READERS[bench](f, images)
        if limit is not None:
            if bench == "mmbench":
                keep = set(sorted({it.meta["group"] for it in got})[:limit])
                got = [it for it in got if it.meta["group"] in keep]
            elif bench == "mme":
                per: dict[str, list[str]] = {}
                for it in got:
                    imgs = per.setdefault(it.meta["subtask"], [])
                    if it.meta["image_id"] not in imgs:
                        imgs.append(it.meta["image_id"])
                got = [it for it in got if it.meta["image_id"] in per[it.meta["subtask"]][:limit]]
            else:
                got = got[:limit]
        items += got
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{bench}: item id {dup!r} occurs twice in {data}")
    return items

