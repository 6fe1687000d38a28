"""Tibetan blocks for datatrove pipelines (readers, normaliser, repairs, filters).

Each class is a datatrove ``PipelineStep`` (datatrove's own base classes:
``BaseDiskReader``, ``JsonlReader``, ``BaseFilter``, ``WordTokenizer``), so they mix
with datatrove's writers, dedup stages and executors. Counts go through datatrove's
``stat_update`` (merged into each stage's ``stats.json``); before/after examples and
per-line read problems are written as JSON Lines side files, one per task, so that the
report can show them without a second pass over the corpus.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import DataFolderLike, get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.readers.jsonl import JsonlReader
from datatrove.utils.word_tokenizers import WordTokenizer

from ftib.core.errors import FtibError
from ftib.data.clean import rules
from ftib.data.clean.config import QualityConfig, ScriptConfig

#: Characters of context kept either side of a change in an example.
EXAMPLE_CONTEXT = 30


class _SideFile:
    """Per-task JSON Lines side output (``{folder}/{rank:05d}_{name}.jsonl``)."""

    def __init__(self, folder: DataFolderLike | None, name: str) -> None:
        self.folder = get_datafolder(folder) if folder is not None else None
        self.name = name
        self.records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def flush(self, rank: int) -> None:
        if self.folder is None:
            return
        with self.folder.open(f"{rank:05d}_{self.name}.jsonl", "w") as f:
            for r in self.records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        self.records = []


# --- readers -------------------------------------------------------------------------

class _CheckedLines:
    """Shared by the readers: decode a file line by line, counting what fails.

    A line that is not UTF-8 is counted (``bad_utf8_lines``) and listed with its file
    and line number; a file that cannot be opened is counted (``unreadable_files``) and
    listed; a file whose bad-line share exceeds ``max_bad_line_share`` stops the run
    with an error naming it (a wrong encoding, not a few corrupt lines).
    """

    max_bad_line_share: float
    problems: _SideFile

    def _problem(self, path: str, line: int | None, kind: str, detail: str) -> None:
        self.stat_update(kind)  # type: ignore[attr-defined]
        self.problems.add({"file": path, "line": line, "kind": kind, "detail": detail[:200]})

    def _lines(self, filepath: str, compression: str | None = None) -> Iterator[tuple[int, str]]:
        """(1-based line number, text without the newline) of every decodable line."""
        try:
            f = self.data_folder.open(filepath, "rb", compression=compression)  # type: ignore[attr-defined]
        except OSError as exc:
            self._problem(filepath, None, "unreadable_files", str(exc))
            return
        bad = total = 0
        try:
            with f:
                for i, raw in enumerate(f, start=1):
                    total += 1
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        bad += 1
                        self._problem(filepath, i, "bad_utf8_lines", str(exc))
                        continue
                    yield i, line.rstrip("\r\n")
        except OSError as exc:  # e.g. a truncated gzip stream
            self._problem(filepath, None, "unreadable_files", f"after line {total}: {exc}")
        if total and bad / total > self.max_bad_line_share:
            raise FtibError(f"{filepath}: {bad} of {total} lines are not UTF-8 (more than "
                            f"read.max_bad_line_share={self.max_bad_line_share}); is it another encoding?")


class TibetanTextReader(_CheckedLines, BaseDiskReader):
    """Plain-text reader: one document per blank-line-separated block (``mode="block"``)
    or per non-empty line (``mode="line"``, as the CPT stage reads ``.txt``).

    Document ids are ``{file}:{first line}``; a leading BOM is removed by the
    ``zero_width`` repair, not here, so that it is counted.
    """

    name = "📜 Tibetan text"

    def __init__(self, data_folder: DataFolderLike, *, mode: str = "block", glob_pattern: str | None = None,
                 recursive: bool = True, max_bad_line_share: float = 0.1,
                 problems_folder: DataFolderLike | None = None, doc_progress: bool = False) -> None:
        super().__init__(data_folder, glob_pattern=glob_pattern, recursive=recursive, doc_progress=doc_progress)
        if mode not in ("block", "line"):
            raise ValueError(f"txt mode must be 'block' or 'line', got {mode!r}")
        self.mode = mode
        self.max_bad_line_share = max_bad_line_share
        self.problems = _SideFile(problems_folder, "read_txt")

    def read_file(self, filepath: str) -> DocumentsPipeline:
        block: list[str] = []
        start = 0
        for i, line in self._lines(filepath):
            if self.mode == "line":
                if line.strip():
                    doc = self.get_document_from_dict({"text": line, "id": f"{filepath}:{i}"}, filepath, i)
                    if doc:
                        yield doc
                continue
            if line.strip():
                if not block:
                    start = i
                block.append(line)
            elif block:
                yield from self._block(block, filepath, start)
                block = []
        if block:
            yield from self._block(block, filepath, start)

    def _block(self, block: list[str], filepath: str, start: int) -> DocumentsPipeline:
        doc = self.get_document_from_dict({"text": "\n".join(block), "id": f"{filepath}:{start}"}, filepath, start)
        if doc:
            yield doc

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        yield from super().run(data, rank, world_size)
        self.problems.flush(rank)


class TibetanJsonlReader(_CheckedLines, JsonlReader):
    """datatrove's ``JsonlReader`` with per-line accounting: where datatrove logs and
    skips an undecodable file or line, this counts each bad line (non-UTF-8, not JSON,
    not an object, no string ``text_key``) and lists it with file and line number."""

    name = "🐿 Tibetan jsonl"

    def __init__(self, data_folder: DataFolderLike, *, text_key: str = "text", glob_pattern: str | None = None,
                 recursive: bool = True, max_bad_line_share: float = 0.1,
                 problems_folder: DataFolderLike | None = None, doc_progress: bool = False) -> None:
        super().__init__(data_folder, compression="infer", text_key=text_key, glob_pattern=glob_pattern,
                         recursive=recursive, doc_progress=doc_progress)
        self.max_bad_line_share = max_bad_line_share
        self.problems = _SideFile(problems_folder, "read_jsonl")

    def read_file(self, filepath: str) -> DocumentsPipeline:
        import orjson

        for i, line in self._lines(filepath, compression=self.compression):
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                self._problem(filepath, i, "bad_json_lines", str(exc))
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get(self.text_key), str):
                self._problem(filepath, i, "records_without_text", f"no string {self.text_key!r} field")
                continue
            rec.setdefault(self.id_key, f"{filepath}:{i}")
            doc = self.get_document_from_dict(rec, filepath, i)
            if doc:
                yield doc

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        yield from super().run(data, rank, world_size)
        self.problems.flush(rank)


def counting_adapter(reader: Any, data: dict, path: str, id_in_file: int | str) -> dict:
    """Adapter for datatrove's Parquet and ``datasets`` readers: datatrove's default
    adapter, plus a ``records_without_text`` count of the records it would skip with a
    single warning (no string, or an empty one, under ``text_key``)."""
    text = data.get(reader.text_key)
    if not isinstance(text, str) or not text:
        reader.stat_update("records_without_text")
    return reader._default_adapter(data, path, id_in_file)


class IntermediateReader(JsonlReader):
    """datatrove's ``JsonlReader`` for the pipeline's own intermediate folder, which is
    empty (not an error) when the filters dropped every document."""

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        if self.data_folder.list_files(recursive=self.recursive, glob_pattern=self.glob_pattern):
            yield from super().run(None, rank, world_size)


# --- normaliser and repairs ----------------------------------------------------------

def _window(before: str, after: str) -> tuple[str, str]:
    """The region around the first difference of two texts, for an example."""
    i = 0
    n = min(len(before), len(after))
    while i < n and before[i] == after[i]:
        i += 1
    lo = max(0, i - EXAMPLE_CONTEXT)
    return (rules.describe(before[lo:i + EXAMPLE_CONTEXT], 2 * EXAMPLE_CONTEXT),
            rules.describe(after[lo:i + EXAMPLE_CONTEXT], 2 * EXAMPLE_CONTEXT))


class _ExampleStep(PipelineStep):
    """A step that rewrites text and keeps a few before/after examples per rule."""

    def __init__(self, examples: int, examples_folder: DataFolderLike | None, side_name: str) -> None:
        super().__init__()
        self.max_examples = examples
        self.examples = _SideFile(examples_folder, side_name)
        self._seen: dict[str, int] = {}

    def _example(self, rule: str, doc: Document, before: str, after: str) -> None:
        if self._seen.get(rule, 0) >= self.max_examples:
            return
        self._seen[rule] = self._seen.get(rule, 0) + 1
        b, a = _window(before, after)
        self.examples.add({"rule": rule, "id": doc.id, "before": b, "after": a})

    def transform(self, doc: Document) -> None:
        raise NotImplementedError

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            with self.track_time():
                self.transform(doc)
            yield doc
        self.examples.flush(rank)


class TibetanNormalizer(_ExampleStep):
    """:func:`ftib.kernels.tibetan.normalize` as a step (the tokenizer's normaliser, so
    that cleaned text is already in the form the CPT stage would produce)."""

    type = "✂️ - FORMAT"
    name = "🕉 Tibetan normaliser"

    def __init__(self, *, examples: int = 3, examples_folder: DataFolderLike | None = None) -> None:
        super().__init__(examples, examples_folder, "normalize")

    def transform(self, doc: Document) -> None:
        from ftib.kernels.tibetan import normalize

        out = normalize(doc.text)
        if out != doc.text:
            self.stat_update("normalize_docs")
            self._example("normalize", doc, doc.text, out)
            doc.text = out


class TibetanRepairs(_ExampleStep):
    """Apply the named repair rules of :mod:`ftib.data.clean.rules` in order.

    Stats per rule: ``{rule}_docs`` (documents changed) and ``{rule}_fixes`` (places).
    """

    type = "✂️ - FORMAT"
    name = "🩹 Tibetan repairs"

    def __init__(self, rule_names: tuple[str, ...], *, examples: int = 3,
                 examples_folder: DataFolderLike | None = None, side_name: str = "repairs") -> None:
        super().__init__(examples, examples_folder, side_name)
        table = {**rules.PRE_RULES, **rules.POST_RULES}
        unknown = [r for r in rule_names if r not in table]
        if unknown:
            raise ValueError(f"unknown repair rules {unknown}; known: {sorted(table)}")
        self.rule_names = tuple(rule_names)
        self._fns = [table[r] for r in self.rule_names]

    def transform(self, doc: Document) -> None:
        text = doc.text
        for name, fn in zip(self.rule_names, self._fns):
            out, n = fn(text)
            if n:
                self.stat_update(f"{name}_docs")
                self.stat_update(f"{name}_fixes", value=n)
                self._example(name, doc, text, out)
                text = out
        doc.text = text


# --- filters ---------------------------------------------------------------------------

class _LineFilter(BaseFilter):
    """A filter that may also remove lines; dropped documents keep their reason."""

    def __init__(self, exclusion_writer=None, *, examples: int = 3,
                 examples_folder: DataFolderLike | None = None, side_name: str = "filter") -> None:
        super().__init__(exclusion_writer)
        self.max_examples = examples
        self.examples = _SideFile(examples_folder, side_name)
        self._seen: dict[str, int] = {}

    def _example(self, what: str, doc_id: str, text: str) -> None:
        if self._seen.get(what, 0) < self.max_examples:
            self._seen[what] = self._seen.get(what, 0) + 1
            self.examples.add({"rule": what, "id": doc_id, "before": rules.describe(text, 120), "after": ""})

    def _drop(self, reason: str, doc: Document) -> tuple[bool, str]:
        self._example(f"dropped_{reason}", doc.id, doc.text)
        return False, reason

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        yield from super().run(data, rank, world_size)
        self.examples.flush(rank)


class TibetanScriptFilter(_LineFilter):
    """Script identification by the share of Tibetan letters (see :class:`ScriptConfig`).

    Stats: ``lines_foreign`` / ``lines_mixed`` removed, ``lines_mixed_kept``; dropped
    documents under ``dropped_low_tibetan_share``, ``dropped_no_letters`` (only digits
    and punctuation) and ``dropped_empty``.
    """

    name = "🏔 Tibetan script share"

    def __init__(self, config: ScriptConfig = ScriptConfig(), exclusion_writer=None, *, examples: int = 3,
                 examples_folder: DataFolderLike | None = None) -> None:
        super().__init__(exclusion_writer, examples=examples, examples_folder=examples_folder, side_name="script")
        self.config = config

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        cfg = self.config
        kept: list[str] = []
        changed = False
        for line in doc.text.split("\n"):
            share = rules.script_counts(line).share
            if share is not None and share < cfg.line_min_share:
                self.stat_update("lines_foreign")
                self._example("line_foreign", doc.id, line)
                changed = True
                continue
            if share is not None and share < 1.0:
                if cfg.mixed_lines == "drop":
                    self.stat_update("lines_mixed")
                    self._example("line_mixed", doc.id, line)
                    changed = True
                    continue
                self.stat_update("lines_mixed_kept")
            kept.append(line)
        if changed:
            doc.text = "\n".join(kept)
        if not doc.text.strip():
            return self._drop("empty", doc)
        share = rules.script_counts(doc.text).share
        if share is None:
            return self._drop("no_letters", doc)
        if share < cfg.doc_min_share:
            return self._drop("low_tibetan_share", doc)
        return True


class SyllableQualityFilter(_LineFilter):
    """Quality in syllables (see :class:`QualityConfig`): punctuation-only lines are
    removed (``lines_punctuation``); documents are dropped as ``too_short``,
    ``repetition`` or ``non_tibetan``."""

    name = "🧮 syllable quality"

    def __init__(self, config: QualityConfig = QualityConfig(), exclusion_writer=None, *, examples: int = 3,
                 examples_folder: DataFolderLike | None = None) -> None:
        super().__init__(exclusion_writer, examples=examples, examples_folder=examples_folder, side_name="quality")
        self.config = config

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        cfg = self.config
        if cfg.drop_punctuation_lines:
            lines = doc.text.split("\n")
            kept = [ln for ln in lines if not rules.is_punctuation_only(ln)]
            if len(kept) != len(lines):
                self.stat_update("lines_punctuation", value=len(lines) - len(kept))
                self._example("line_punctuation", doc.id, next(ln for ln in lines if rules.is_punctuation_only(ln)))
                doc.text = "\n".join(kept)
        if not doc.text.strip():
            return self._drop("empty", doc)
        tokens = rules.syllable_tokens(doc.text)
        if sum(1 for t in tokens if "\u0f00" <= t[0] <= "\u0fff") < cfg.min_syllables:
            return self._drop("too_short", doc)
        if rules.duplicate_ngram_fraction(tokens, cfg.repeat_ngram) > cfg.max_repeat_fraction:
            return self._drop("repetition", doc)
        if rules.non_tibetan_share(doc.text) > cfg.max_non_tibetan_share:
            return self._drop("non_tibetan", doc)
        return True


# --- dedup helpers ---------------------------------------------------------------------

class SyllableWordTokenizer(WordTokenizer):
    """Tokens for datatrove's MinHash shingles: Tibetan syllables (tsheg removed) and
    words of other scripts (:func:`ftib.data.clean.rules.syllable_tokens`), instead of
    datatrove's Botok-based Tibetan tokenizer (a dictionary segmenter, not installed
    here, and a dedup that depends on its dictionary version)."""

    def __init__(self) -> None:
        super().__init__("bo")

    def word_tokenize(self, text: str) -> list[str]:
        return rules.syllable_tokens(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in text.replace("\u0f0e", "\u0f0d").split("\u0f0d") if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for s in self.sent_tokenize(text):
            i = text.index(s, start)
            spans.append((i, i + len(s)))
            start = i + len(s)
        return spans


def exact_key(doc: Document) -> str:
    """What exact dedup compares: the text with whitespace runs collapsed."""
    return " ".join(doc.text.split())


class KeptDocStats(PipelineStep):
    """Records each kept document's syllable count and dedup cluster size (datatrove's
    ``minhash_cluster_size`` / exact ``duplicate_count`` metadata) for the report."""

    type = "📊 - STATS"
    name = "📏 kept-document stats"

    def __init__(self, folder: DataFolderLike) -> None:
        super().__init__()
        self.folder = get_datafolder(folder)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        # Streamed (one line per kept document), not held: a corpus may be large.
        with self.folder.open(f"{rank:05d}_kept.jsonl", "w") as f:
            for doc in data:
                meta = doc.metadata
                rec = {"syllables": rules.tibetan_syllable_count(doc.text),
                       "near_cluster": int(meta.get("minhash_cluster_size", 1)),
                       # datatrove's duplicate_count is the number of removed copies.
                       "exact_cluster": int(meta.get("duplicate_count", 0)) + 1}
                if rec["near_cluster"] > 1:
                    rec["cluster_id"] = int(meta.get("minhash_cluster_id", -1))
                    rec["id"] = doc.id
                    rec["text"] = rules.describe(doc.text, 120)
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                yield doc
