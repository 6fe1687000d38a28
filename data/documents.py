"""Plain-text documents for language-model training: reading CPT's file formats and
tokenising them (shared by the ``cpt`` stage and the chat stages' text replay,
``sft.replay``).

Formats: UTF-8 ``.txt`` (one document per non-empty line), ``.jsonl`` with a ``text``
field, ``.parquet`` with a ``text`` column, or a folder of such files (what
``ftib data clean --out DIR`` writes).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from ftib.core.errors import FtibError
from ftib.core.rundir import iter_jsonl

__all__ = ["read_documents", "tokenize_documents"]


def _expand(paths: tuple[Path, ...]) -> list[Path]:
    """A folder stands for its ``*.jsonl``, ``*.parquet`` and ``*.txt`` files (not
    recursive), e.g. the output of ``ftib data clean``."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".jsonl", ".parquet", ".txt"))
            if not files:
                raise FtibError(f"{path}: a CPT data folder needs .jsonl, .parquet or .txt files")
            out.extend(files)
        else:
            out.append(path)
    return out


def read_documents(paths: tuple[Path, ...], limit: int | None = None) -> list[str]:
    """Documents from ``.txt`` (one per non-empty line), ``.jsonl`` and ``.parquet``
    (``text``) files, and folders of them."""
    docs: list[str] = []
    for path in _expand(paths):
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if "text" not in table.column_names:
                raise FtibError(f"{path}: a Parquet file needs a 'text' column (has {table.column_names})")
            docs.extend(t for t in table.column("text").to_pylist() if isinstance(t, str) and t)
            if limit is not None and len(docs) >= limit:
                return docs[:limit]
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise FtibError(f"{path}: not UTF-8 text ({exc})") from exc
        if path.suffix == ".jsonl":
            for i, rec in iter_jsonl(path, text):
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    raise FtibError(f"{path}:{i}: a record needs a string 'text' field")
                docs.append(rec["text"])
        else:
            docs.extend(line for line in text.splitlines() if line.strip())
        if limit is not None and len(docs) >= limit:
            return docs[:limit]
    if not docs:
        raise FtibError(f"the CPT data {', '.join(map(str, paths))} holds no documents")
    return docs


def tokenize_documents(tokenizer: Any, docs: list[str], *, native: bool | None = None) -> list[list[int]]:
    """Normalise and tokenise through ``datasets.map(batched=True)``.

    By default (``native=None``) the fused C++ tokenizer (:mod:`ftib.kernels.tokenizer`:
    Tibetan normalisation, split and BPE in one pass, same ids as ``tokenizers`` on the
    normalised text) is used when it implements the tokenizer's ``tokenizer.json``;
    otherwise the ``tokenizers`` backend is. The choice is logged. ``native=True``
    raises when the native path cannot serve the tokenizer; ``native=False`` never uses it.
    """
    import logging

    import datasets

    from ftib.kernels.tibetan import normalize

    log = logging.getLogger(__name__)
    fast = None
    if native is not False:
        from ftib.kernels.tokenizer import UnsupportedTokenizerError, fast_tokenizer_for

        try:
            fast = fast_tokenizer_for(tokenizer, normalize_tibetan=True)
        except (UnsupportedTokenizerError, ImportError) as exc:
            if native:
                raise
            log.info("tokenisation: Hugging Face tokenizers (native tokenizer unavailable: %s)", exc)
        else:
            log.info("tokenisation: native fused tokenizer (ftib.kernels.tokenizer)")
    else:
        log.info("tokenisation: Hugging Face tokenizers (native=False)")

    ds = datasets.Dataset.from_dict({"text": docs})

    def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        if fast is not None:
            return {"ids": fast.encode_batch(batch["text"], add_special_tokens=False)}
        texts = [normalize(t) for t in batch["text"]]
        return {"ids": tokenizer(texts, add_special_tokens=False)["input_ids"]}

    # in memory, never cached: a fresh fingerprint (the closure over the tokenizer cannot be
    # hashed, and datasets warns when it falls back to a random one)
    ds = ds.map(encode, batched=True, batch_size=256, remove_columns=["text"],
                desc="tokenising", keep_in_memory=True, new_fingerprint=uuid.uuid4().hex)
    return ds["ids"]
