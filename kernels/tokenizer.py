"""Fused native tokenizer: Tibetan normalisation -> split -> byte-level BPE -> ids, in C++.

:class:`FastTokenizer` encodes, id for id, what Hugging Face ``tokenizers`` gives for the
same ``tokenizer.json`` -- for the files this project writes (the extended Tibetan
tokenizer of :mod:`ftib.models.vocab`) and for byte-level BPEs with Qwen's split pattern
(Qwen's ``qwen.tiktoken`` converted by :func:`ftib.models.vocab.tiktoken_to_bpe`). One
pass per text in ``csrc/lib/tokenizer.cpp``: UTF-8 scan, the file's normaliser (and, on
request, ftib's full Tibetan normaliser), a hand-written scanner for the split pattern
over Unicode category tables (no regex engine), BPE by merge rank with a per-thread
chunk cache. Native calls release the GIL; batches run on a thread pool.

What is supported is checked when the file is loaded, and anything else raises
:class:`UnsupportedTokenizerError` naming the component -- never a silent approximation:

- model ``BPE`` with a byte-level vocabulary (every single byte has a token), no dropout,
  no byte fallback, no subword prefix/suffix; ``ignore_merges`` either way;
- pre-tokenizer ``Sequence[Split(QWEN_PATTERN), ByteLevel]`` or ftib's
  ``Sequence[Split(SYLLABLE), Split(SYLLABLE|QWEN_PATTERN), ByteLevel]`` (``Isolated``,
  not inverted; ByteLevel without prefix space and without its own regex);
- normalizer ``null``, or ``NFC`` (Qwen's) and/or ``Replace`` steps of single
  characters, optionally ending with ftib's zero-width ``Replace`` (``tibetan_normalizer()``);
- post-processor ``null``, ``ByteLevel`` or a single-sequence ``TemplateProcessing``;
- added tokens matched on raw text (``normalized: false``, no strip/single-word rules);
- decoder ``ByteLevel``; no truncation or padding stored in the file.

Special tokens follow the ``tokenizers`` defaults: an added token in the text is always
recognised and given its id; ``add_special_tokens=True`` applies the post-processor;
``decode`` skips special tokens by default.

Unicode tables: ``\\p{L}``, ``\\p{N}`` come from Python's ``unicodedata`` at generation
time (``csrc/tools/gen_unicode_tables.py``; version in :data:`UNICODE_VERSION`). Code
points assigned after that version are classified as unassigned, which may differ from a
``tokenizers`` build with newer tables; see ``docs/tokenizer.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftib.core.errors import FtibError
from ftib.kernels import native, tibetan

__all__ = [
    "QWEN_PATTERN",
    "UNICODE_VERSION",
    "FastTokenizer",
    "UnsupportedTokenizerError",
    "fast_tokenizer_for",
]

#: The split pattern the native scanner implements (Qwen2/Qwen3's, the default pattern of
#: ftib.models.vocab for a tiktoken base; a test checks the two are the same string).
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
#: Unicode version of the native category tables (see csrc/include/ftib/unicode_tables.h).
UNICODE_VERSION = "14.0.0"

_SPLIT_QWEN, _SPLIT_TIBETAN_QWEN = 0, 1
_ZERO_WIDTH_REGEX = (
    f"(?<=[{tibetan.LETTERS}{tibetan.MARKS}])[{tibetan.ZERO_WIDTH}]+"
    f"(?=[{tibetan.LETTERS}{tibetan.MARKS}])"
)


class UnsupportedTokenizerError(FtibError):
    """The tokenizer.json is valid but uses something the native encoder does not do."""


def _byte_decoder() -> dict[str, int]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {chr(b): b for b in keep}
    extra = 0
    for b in range(256):
        if b not in keep:
            table[chr(256 + extra)] = b
            extra += 1
    return table


_UNI_TO_BYTE = _byte_decoder()


def _steps(node: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    if node is None:
        return []
    if node.get("type") == "Sequence":
        out: list[dict[str, Any]] = []
        for child in node.get(key) or []:
            out += _steps(child, key)
        return out
    return [node]


def _normalizer(doc: dict[str, Any], where: str) -> tuple[list[tuple[int, list[int]]], bool, bool]:
    steps = _steps(doc.get("normalizer"), "normalizers")
    nfc = bool(steps) and steps[0].get("type") == "NFC"
    if nfc:
        steps = steps[1:]
    mapping: dict[str, str] = {}
    drop_zw = False
    for k, step in enumerate(steps):
        kind = step.get("type")
        if kind != "Replace":
            raise UnsupportedTokenizerError(
                f"{where}: normalizer {kind!r} is not supported by the native tokenizer "
                "(supported: none, NFC as the first step, single-character Replace steps, ftib's "
                "Tibetan normalizer)")
        pattern = step.get("pattern") or {}
        if "Regex" in pattern:
            if pattern["Regex"] != _ZERO_WIDTH_REGEX or step.get("content") != "" or k != len(steps) - 1:
                raise UnsupportedTokenizerError(
                    f"{where}: Replace(Regex {pattern['Regex']!r}) is not supported (only ftib's "
                    "zero-width rule, as the last step)")
            drop_zw = True
            continue
        src, dst = pattern.get("String"), step.get("content")
        if not isinstance(src, str) or len(src) != 1 or not isinstance(dst, str):
            raise UnsupportedTokenizerError(
                f"{where}: Replace of {src!r} is not supported (only single characters)")
        for key in mapping:  # later steps see the output of earlier ones
            mapping[key] = mapping[key].replace(src, dst)
        mapping.setdefault(src, dst)
    return [(ord(k), [ord(c) for c in v]) for k, v in mapping.items() if v != k], drop_zw, nfc


def _split_kind(doc: dict[str, Any], where: str) -> int:
    pre = doc.get("pre_tokenizer")
    steps = _steps(pre, "pretokenizers")
    if not steps or steps[-1].get("type") != "ByteLevel":
        raise UnsupportedTokenizerError(f"{where}: the pre-tokenizer must end with ByteLevel "
                                        f"(got {[s.get('type') for s in steps]})")
    bl = steps[-1]
    if bl.get("add_prefix_space") or bl.get("use_regex", True):
        raise UnsupportedTokenizerError(
            f"{where}: ByteLevel with add_prefix_space or use_regex is not supported "
            "(the split must come from a Split step)")
    patterns: list[str] = []
    for s in steps[:-1]:
        if s.get("type") != "Split":
            raise UnsupportedTokenizerError(f"{where}: pre-tokenizer {s.get('type')!r} is not supported")
        pat = s.get("pattern") or {}
        if "Regex" not in pat or s.get("behavior") != "Isolated" or s.get("invert"):
            raise UnsupportedTokenizerError(f"{where}: unsupported Split {json.dumps(s)[:200]}")
        patterns.append(pat["Regex"])
    if patterns == [QWEN_PATTERN]:
        return _SPLIT_QWEN
    if patterns == [tibetan.SYLLABLE_PATTERN, tibetan.split_pattern(QWEN_PATTERN)]:
        return _SPLIT_TIBETAN_QWEN
    raise UnsupportedTokenizerError(
        f"{where}: split pattern(s) {[p[:80] for p in patterns]} are not implemented by the native "
        "scanner (it implements Qwen's pattern and ftib's Tibetan-syllable extension of it)")


def _to_bytes(token: str, where: str) -> bytes:
    try:
        return bytes(_UNI_TO_BYTE[c] for c in token)
    except KeyError:
        raise UnsupportedTokenizerError(f"{where}: token {token!r} is not a byte-level token") from None


def _template(doc: dict[str, Any], specials: dict[str, int], where: str) -> tuple[list[int], list[int]]:
    post = doc.get("post_processor")
    if post is None or post.get("type") == "ByteLevel":
        return [], []
    if post.get("type") != "TemplateProcessing":
        raise UnsupportedTokenizerError(f"{where}: post-processor {post.get('type')!r} is not supported")
    prefix: list[int] = []
    suffix: list[int] = []
    seen_seq = False
    table = post.get("special_tokens") or {}
    for item in post.get("single") or []:
        if "Sequence" in item:
            seen_seq = True
        elif "SpecialToken" in item:
            name = item["SpecialToken"]["id"]
            ids = table.get(name, {}).get("ids")
            if ids is None:
                raise UnsupportedTokenizerError(f"{where}: template token {name!r} has no ids")
            (suffix if seen_seq else prefix).extend(int(i) for i in ids)
    return prefix, suffix


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class FastTokenizer:
    """Native encoder of a byte-level BPE ``tokenizer.json`` (same ids as ``tokenizers``).

    Build with :meth:`from_file` / :meth:`from_str`. With ``normalize_tibetan=True`` ftib's
    full Tibetan normaliser (:func:`ftib.kernels.tibetan.normalize`, rules 1-5) runs inside
    the same pass, so ``encode(text)`` equals ``tokenizers``' ids for ``normalize(text)``;
    with ``False`` (default) only the file's own normalizer runs, so it equals
    ``tokenizers``' ids for ``text``.
    """

    def __init__(self, doc: dict[str, Any], *, normalize_tibetan: bool = False, source: str = "<dict>") -> None:
        where = source
        if not isinstance(doc, dict):
            raise FtibError(f"{where}: a tokenizer.json document must be a JSON object")
        model = doc.get("model")
        if not isinstance(model, dict):
            raise FtibError(f"{where}: tokenizer.json has no 'model' object")
        if model.get("type") != "BPE":
            raise UnsupportedTokenizerError(
                f"{where}: model type {model.get('type')!r} is not supported (only byte-level BPE)")
        if model.get("dropout") or model.get("byte_fallback") or model.get("continuing_subword_prefix") \
                or model.get("end_of_word_suffix"):
            raise UnsupportedTokenizerError(
                f"{where}: BPE with dropout, byte_fallback or subword prefix/suffix is not supported")
        if doc.get("truncation") or doc.get("padding"):
            raise UnsupportedTokenizerError(f"{where}: truncation/padding stored in the file is not supported")
        dec = _steps(doc.get("decoder"), "decoders")
        if [d.get("type") for d in dec] != ["ByteLevel"]:
            raise UnsupportedTokenizerError(f"{where}: decoder must be ByteLevel, got {[d.get('type') for d in dec]}")
        split = _split_kind(doc, where)
        char_map, drop_zw, nfc = _normalizer(doc, where)
        vocab = model.get("vocab")
        merges = model.get("merges")
        if not isinstance(vocab, dict) or not isinstance(merges, list):
            raise FtibError(f"{where}: BPE model needs a 'vocab' object and a 'merges' list")
        added = doc.get("added_tokens") or []
        tokens: list[bytes] = []
        ids: list[int] = []
        for tok, idx in vocab.items():
            tokens.append(_to_bytes(tok, where))
            ids.append(int(idx))
        import numpy as np

        try:
            pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]
            flat = np.array([(vocab[a], vocab[b], vocab[a + b]) for a, b in pairs], dtype=np.uint32)
        except (KeyError, ValueError, TypeError) as exc:
            raise FtibError(f"{where}: a merge refers to a token missing from the vocabulary ({exc})") from exc
        self._specials: dict[str, int] = {}
        added_list: list[tuple[bytes, int, bool]] = []
        for a in added:
            if a.get("normalized", not a.get("special")) or a.get("lstrip") or a.get("rstrip") \
                    or a.get("single_word"):
                raise UnsupportedTokenizerError(
                    f"{where}: added token {a.get('content')!r} uses normalized/lstrip/rstrip/single_word")
            if a["content"] in vocab and int(vocab[a["content"]]) != int(a["id"]):
                raise UnsupportedTokenizerError(f"{where}: added token {a['content']!r} has two ids")
            added_list.append((a["content"].encode("utf-8"), int(a["id"]), bool(a.get("special"))))
            if a.get("special"):
                self._specials[a["content"]] = int(a["id"])
        self._prefix, self._suffix = _template(doc, self._specials, where)
        try:
            self._native = native.load().Tokenizer(
                split, bool(model.get("ignore_merges", False)), tokens, ids, flat.reshape(-1), added_list,
                char_map, drop_zw, nfc)
        except ValueError as exc:
            raise FtibError(f"{where}: {exc}") from exc
        self.normalize_tibetan = bool(normalize_tibetan)
        self.source = source
        self._vocab = {**{t: int(i) for t, i in vocab.items()}, **{a["content"]: int(a["id"]) for a in added}}
        self._id_to_token = {i: t for t, i in self._vocab.items()}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, normalize_tibetan: bool = False) -> FastTokenizer:
        """Load ``tokenizer.json`` (a file, or a directory holding one).

        Raises:
            FtibError: missing or malformed file.
            UnsupportedTokenizerError: a component the native encoder does not implement.
        """
        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise FtibError(f"tokenizer file {p} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise FtibError(f"cannot read tokenizer file {p}: {exc}") from exc
        return cls.from_str(text, normalize_tibetan=normalize_tibetan, source=str(p))

    @classmethod
    def from_str(cls, text: str, *, normalize_tibetan: bool = False, source: str = "<string>") -> FastTokenizer:
        """Build from the JSON text of a ``tokenizer.json`` (e.g. ``Tokenizer.to_str()``)."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FtibError(f"{source} is not valid JSON: {exc}") from exc
        return cls(doc, normalize_tibetan=normalize_tibetan, source=source)

    # ---------------------------------------------------------------------- encoding
    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Ids of ``text``. ValueError for a lone surrogate; TypeError for a non-str."""
        ids = self._native.encode(text, self.normalize_tibetan)
        if add_special_tokens and (self._prefix or self._suffix):
            ids = self._prefix + ids + self._suffix
        return ids

    def encode_batch(self, texts: Sequence[str], *, num_threads: int | None = None,
                     add_special_tokens: bool = True) -> list[list[int]]:
        """Ids of each text, encoded on ``num_threads`` threads (default: usable CPUs)."""
        out = self._native.encode_batch(texts, self.normalize_tibetan, num_threads or _default_threads())
        if add_special_tokens and (self._prefix or self._suffix):
            out = [self._prefix + ids + self._suffix for ids in out]
        return out

    def encode_batch_flat(self, texts: Sequence[str], *, num_threads: int | None = None) -> tuple[Any, Any]:
        """Ids of all texts in one buffer, without post-processing (no template tokens).

        Returns:
            ``(ids, offsets)``: ``ids`` (total,) int32 and ``offsets`` (len(texts) + 1,)
            int64 numpy arrays that own the native buffers (no copy); the ids of text i are
            ``ids[offsets[i]:offsets[i + 1]]``. ``torch.from_numpy`` shares them too.
        """
        return self._native.encode_batch_flat(texts, self.normalize_tibetan, num_threads or _default_threads())

    def decode(self, ids: Sequence[int] | Any, *, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (invalid UTF-8 becomes U+FFFD, as in ``tokenizers``).

        ValueError names an unknown id; TypeError a value that is not an integer (a
        float such as 1.7 is refused, not truncated).
        """
        import numpy as np

        arr = np.asarray(ids)
        if arr.size and (arr.dtype.kind not in "iu" or arr.dtype == np.bool_):
            bad = next((x for x in arr.reshape(-1).tolist() if isinstance(x, bool) or not isinstance(x, int)),
                       arr.reshape(-1)[0])
            raise TypeError(f"decode: token ids must be integers, got {arr.dtype} (e.g. {bad!r})")
        data = self._native.decode(arr.astype(np.int64).reshape(-1), skip_special_tokens)
        return data.decode("utf-8", errors="replace")

    def pretokenize(self, text: str) -> list[bytes]:
        """The pieces BPE sees (raw bytes), after added tokens, normalisation and split."""
        return self._native.pretokenize(text, self.normalize_tibetan)

    # --------------------------------------------------------------------- vocabulary
    @property
    def special_tokens(self) -> dict[str, int]:
        return dict(self._specials)

    def token_to_id(self, token: str) -> int | None:
        return self._vocab.get(token)

    def id_to_token(self, idx: int) -> str | None:
        return self._id_to_token.get(idx)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)


def fast_tokenizer_for(tokenizer: Any, *, normalize_tibetan: bool = False) -> FastTokenizer:
    """FastTokenizer for a ``transformers`` fast tokenizer (its backend's exact JSON).

    Raises:
        UnsupportedTokenizerError: the tokenizer is not one the native encoder implements.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        raise UnsupportedTokenizerError(
            f"{type(tokenizer).__name__} has no tokenizers backend (not a fast tokenizer)")
    # transformers may set truncation/padding on the backend; encode() here has neither.
    doc = json.loads(backend.to_str())
    doc["truncation"] = None
    doc["padding"] = None
    return FastTokenizer(doc, normalize_tibetan=normalize_tibetan,
                         source=getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
