"""Tibetan vocabulary extension of a byte-level BPE tokenizer.

What it does, top to bottom:

1. **Load the base** (:func:`load_base`): a ``tokenizer.json``, a model directory holding
   one, or a tiktoken ranks file (``qwen.tiktoken``). A tiktoken file is converted to an
   equivalent Hugging Face byte-level BPE: every token keeps its rank as its id; the merge
   list holds, for every token, each split into two tokens of lower rank, ordered by the
   rank of the token they make; ``ignore_merges`` is on, because tiktoken returns a piece
   that is itself a token without running merges. Tests prove the result gives the same
   ids as ``tiktoken`` with the same ranks and pattern.
2. **Collect chunks**: the corpus is normalised (:func:`ftib.kernels.tibetan.normalize`)
   and cut into Tibetan syllable chunks with
   :data:`ftib.kernels.tibetan.SYLLABLE_PATTERN`, counted in a word-frequency table.
3. **Base tokenization of each chunk**: the base BPE (its merges, nothing else) applied
   to the whole chunk -- exactly what the extended tokenizer does before it reaches the
   new merges, because all base merges rank before all new ones.
4. **Continued BPE** (:func:`learn_merges`): the most frequent adjacent pair is merged,
   repeatedly, with incremental pair counts (a pair -> words index and a lazy max-heap;
   only words holding the merged pair are revisited). New merges rank after the base's.
   A merge whose bytes already form a token reuses that id; every other merge adds one
   token, with ids after every existing id, special tokens included.
5. **Write** (:func:`write_extended`): a standard ``tokenizer.json`` (BPE model, the base
   merges then the new ones; pre-tokenizer: isolate Tibetan syllables, then the base
   pattern with a Tibetan-syllable alternative in front, then ByteLevel), a
   ``tokenizer_config.json`` naming ``PreTrainedTokenizerFast`` so that ``transformers``
   loads the file as written, and ``ftib_vocab.json`` (what was done, with which inputs).

The normaliser rules that ``tokenizers`` can express (rules 1-3 and the decompositions of
rule 4) are written into the file as ``Replace`` normalizers restricted to Tibetan code
points; the reordering rules (canonical order of marks, rule 5) cannot be expressed and are
applied by ftib's data pipeline, which calls :func:`ftib.kernels.tibetan.normalize`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import json
import logging
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regex

from ftib.core.errors import ConfigError, FtibError
from ftib.kernels import tibetan

log = logging.getLogger(__name__)

__all__ = [
    "QWEN_PATTERN",
    "QWEN_SPECIAL_TOKENS",
    "GPT2_PATTERN",
    "BaseBPE",
    "BPEEncoder",
    "ExtensionResult",
    "bytes_to_unicode",
    "load_base",
    "tiktoken_to_bpe",
    "read_corpus_lines",
    "count_chunks",
    "learn_merges",
    "extend",
    "write_extended",
    "tibetan_normalizer",
    "load_tokenizer",
]

#: Qwen's split pattern (the one in Qwen2/Qwen3 ``tokenizer.json`` and in Qwen's tiktoken
#: tokenizer); the default pattern for a tiktoken base.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
#: Special tokens of Qwen's tiktoken tokenizer, in id order after the last rank: the
#: default specials of a tiktoken base (``--special-tokens`` replaces them).
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>") + tuple(
    f"<|extra_{i}|>" for i in range(205)
)
#: The pattern ``ByteLevel(use_regex=True)`` applies (GPT-2's).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

_BYTE_LEVEL_DECODER = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
_BYTE_LEVEL_POST = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map, in byte order, to
    U+0100 upwards (so the space byte 0x20 becomes ``Ġ``).
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    out: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + extra)
            extra += 1
    return out


BYTE_TO_UNI = bytes_to_unicode()
UNI_TO_BYTE = {c: b for b, c in BYTE_TO_UNI.items()}


def to_unicode(data: bytes) -> str:
    """Raw bytes -> byte-level token string."""
    return "".join(BYTE_TO_UNI[b] for b in data)


def to_bytes(token: str) -> bytes:
    """Byte-level token string -> raw bytes (KeyError for a non-byte-level string)."""
    return bytes(UNI_TO_BYTE[c] for c in token)


@dataclass
class BaseBPE:
    """A byte-level BPE in Hugging Face terms, whatever file it came from.

    Attributes:
        vocab: byte-level token string -> id (the BPE model's vocabulary).
        merges: merge pairs in rank order.
        pattern: the split regex applied before BPE.
        added_tokens: ``tokenizer.json`` ``added_tokens`` entries (special tokens), ids kept.
        ignore_merges: a piece that is itself a token is taken whole (tiktoken's rule).
        normalizer: the base's ``tokenizer.json`` normalizer (None for tiktoken).
        post_processor: the base's post-processor.
        source: where it was loaded from.
        tokenizer_config: the base's ``tokenizer_config.json`` (model directories only).
        extra_files: other tokenizer files of a model directory to copy next to the result.
    """

    vocab: dict[str, int]
    merges: list[tuple[str, str]]
    pattern: str
    added_tokens: list[dict[str, Any]]
    ignore_merges: bool
    normalizer: dict[str, Any] | None = None
    post_processor: dict[str, Any] | None = None
    source: str = ""
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    extra_files: list[Path] = field(default_factory=list)

    @property
    def max_id(self) -> int:
        ids = list(self.vocab.values()) + [int(t["id"]) for t in self.added_tokens]
        return max(ids)

    def to_tokenizer_json(self) -> dict[str, Any]:
        """This BPE as a ``tokenizer.json`` document with the base pattern only."""
        return _tokenizer_json(
            self.vocab, self.merges, self.added_tokens, self.normalizer,
            _pre_tokenizer([self.pattern]), self.post_processor, self.ignore_merges,
        )


def _special(content: str, idx: int) -> dict[str, Any]:
    return {"id": idx, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True}


def _pre_tokenizer(patterns: list[str]) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [
        {"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": False}
        for p in patterns
    ]
    steps.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False})
    return {"type": "Sequence", "pretokenizers": steps}


def _tokenizer_json(vocab, merges, added_tokens, normalizer, pre_tokenizer, post_processor,
                    ignore_merges) -> dict[str, Any]:
    # ``tokenizers`` gives an added token that is not in the model vocabulary the id
    # len(vocab) + its index, ignoring the id written in the file; with new tokens after
    # the specials that would shift them. Listing each special in the vocabulary under its
    # own id keeps every id where the file says (they stay unreachable by merges).
    vocab = dict(vocab)
    for tok in added_tokens:
        have = vocab.setdefault(tok["content"], int(tok["id"]))
        if have != int(tok["id"]):
            raise FtibError(f"special token {tok['content']!r} has id {tok['id']} in added_tokens "
                            f"but {have} in the vocabulary")
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": dict(_BYTE_LEVEL_DECODER),
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None,
            "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": False, "byte_fallback": False, "ignore_merges": ignore_merges,
            "vocab": vocab, "merges": [list(m) for m in merges],
        },
    }


# ----------------------------------------------------------------------------- loading


def _read_tiktoken(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise FtibError(f"cannot read base {path} as a tiktoken ranks file: {exc}") from exc
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected '<base64 token> <rank>'")
            ranks[base64.b64decode(parts[0], validate=True)] = int(parts[1])
        except (ValueError, binascii.Error) as exc:
            raise FtibError(
                f"base {path} is neither a tokenizer.json nor a tiktoken ranks file "
                f"(line {lineno}: {exc})"
            ) from exc
    if not ranks:
        raise FtibError(f"base {path} is empty")
    return ranks


def tiktoken_to_bpe(ranks: dict[bytes, int], pattern: str = QWEN_PATTERN,
                    special_tokens: Iterable[str] = QWEN_SPECIAL_TOKENS,
                    source: str = "") -> BaseBPE:
    """Convert tiktoken mergeable ranks to an equivalent Hugging Face byte-level BPE.

    tiktoken merges, inside a piece, the adjacent pair whose concatenation has the lowest
    rank (leftmost on ties). The equivalent merge list therefore holds, for each token of
    rank r, every split into two tokens of rank < r (a token can only be built from parts
    that exist before it), ordered by r; ``ignore_merges`` reproduces tiktoken's whole-piece
    lookup. Special tokens follow the last rank, in the order given.

    Raises:
        FtibError: the ranks are not a byte-level vocabulary (a single byte is missing, or
            the ranks are not 0..n-1).
    """
    n = len(ranks)
    if sorted(ranks.values()) != list(range(n)):
        raise FtibError(f"tiktoken ranks of {source or 'base'} are not 0..{n - 1}; not a BPE ranks file")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise FtibError(
            f"{source or 'base'} is not a byte-level BPE: {len(missing)} single bytes have no "
            f"token (first: 0x{missing[0]:02x})"
        )
    vocab = {to_unicode(tok): rank for tok, rank in ranks.items()}
    keyed: list[tuple[int, int, int, bytes, bytes]] = []
    for tok, rank in ranks.items():
        for i in range(1, len(tok)):
            a, b = tok[:i], tok[i:]
            ra, rb = ranks.get(a), ranks.get(b)
            if ra is not None and rb is not None and ra < rank and rb < rank:
                keyed.append((rank, ra, rb, a, b))
    keyed.sort()
    merges = [(to_unicode(a), to_unicode(b)) for _, _, _, a, b in keyed]
    added = [_special(s, n + i) for i, s in enumerate(special_tokens)]
    return BaseBPE(vocab=vocab, merges=merges, pattern=pattern, added_tokens=added,
                   ignore_merges=True, normalizer=None, post_processor=dict(_BYTE_LEVEL_POST),
                   source=source)


def _find(node: Any, kind: str) -> list[dict[str, Any]]:
    """All components of type ``kind`` in a (possibly nested Sequence) component."""
    if not isinstance(node, dict):
        return []
    if node.get("type") == kind:
        return [node]
    out: list[dict[str, Any]] = []
    for key in ("pretokenizers", "normalizers", "decoders", "processors"):
        for child in node.get(key) or []:
            out += _find(child, kind)
    return out


def _from_tokenizer_json(doc: dict[str, Any], source: str) -> BaseBPE:
    model = doc.get("model") or {}
    if model.get("type") != "BPE":
        raise FtibError(f"base {source} is a {model.get('type')!r} model, not a byte-level BPE")
    pre = doc.get("pre_tokenizer")
    byte_levels = _find(pre, "ByteLevel")
    if not byte_levels or not _find(doc.get("decoder"), "ByteLevel") or model.get("byte_fallback"):
        raise FtibError(
            f"base {source} is a BPE but not a byte-level one (it needs a ByteLevel "
            "pre-tokenizer and decoder, and no byte_fallback); only byte-level BPE can be extended"
        )
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise FtibError(f"base {source} uses subword prefixes/suffixes; not a plain byte-level BPE")
    splits = _find(pre, "Split")
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    unsupported = [s.get("type") for s in steps if s.get("type") not in ("Split", "ByteLevel")]
    if unsupported:
        raise FtibError(f"base {source}: pre-tokenizer steps {unsupported} are not supported "
                        "(expected Split(regex) + ByteLevel, or ByteLevel alone)")
    if len(splits) == 1 and not byte_levels[0].get("use_regex", True):
        split = splits[0]
        if "Regex" not in split["pattern"] or split.get("behavior") != "Isolated" or split.get("invert"):
            raise FtibError(f"base {source}: unsupported Split pre-tokenizer {split}")
        pattern = split["pattern"]["Regex"]
    elif not splits and byte_levels[0].get("use_regex", True):
        pattern = GPT2_PATTERN
    else:
        raise FtibError(f"base {source}: unsupported pre-tokenizer layout {json.dumps(pre)[:200]}")
    if byte_levels[0].get("add_prefix_space"):
        raise FtibError(f"base {source}: ByteLevel add_prefix_space=true is not supported")
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return BaseBPE(
        vocab=dict(model["vocab"]), merges=[(a, b) for a, b in merges], pattern=pattern,
        added_tokens=list(doc.get("added_tokens") or []),
        ignore_merges=bool(model.get("ignore_merges", False)),
        normalizer=doc.get("normalizer"), post_processor=doc.get("post_processor"), source=source,
    )


def load_base(path: str | Path, *, pattern: str | None = None,
              special_tokens: Iterable[str] | None = None) -> BaseBPE:
    """Load a base tokenizer: ``tokenizer.json``, a model directory, or tiktoken ranks.

    Args:
        path: the file or directory.
        pattern: split regex of a tiktoken base (default :data:`QWEN_PATTERN`); must be
            None for a ``tokenizer.json`` base, whose own pattern is used.
        special_tokens: special tokens of a tiktoken base, in id order after the last rank
            (default :data:`QWEN_SPECIAL_TOKENS`).

    Raises:
        FtibError: missing/unreadable file, or not a byte-level BPE.
    """
    p = Path(path)
    if not p.exists():
        raise FtibError(f"base tokenizer {p} does not exist")
    config: dict[str, Any] = {}
    extra: list[Path] = []
    if p.is_dir():
        tj = p / "tokenizer.json"
        if not tj.is_file():
            raise FtibError(f"model directory {p} has no tokenizer.json (a byte-level BPE "
                            "tokenizer.json, or pass a tiktoken ranks file)")
        cfg = p / "tokenizer_config.json"
        if cfg.is_file():
            config = json.loads(cfg.read_text(encoding="utf-8"))
        extra = [f for f in (p / "special_tokens_map.json", p / "chat_template.jinja",
                             p / "chat_template.json") if f.is_file()]
        p = tj
    try:
        head = p.read_bytes()[:1].strip()
    except OSError as exc:
        raise FtibError(f"cannot read base tokenizer {p}: {exc}") from exc
    if head == b"{" or p.suffix == ".json":
        if pattern is not None or special_tokens is not None:
            raise ConfigError("--pattern/--special-tokens apply to a tiktoken base only; "
                              f"{p} carries its own")
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FtibError(f"cannot read {p} as tokenizer.json: {exc}") from exc
        base = _from_tokenizer_json(doc, str(p))
        base.tokenizer_config, base.extra_files = config, extra
        return base
    ranks = _read_tiktoken(p)
    return tiktoken_to_bpe(ranks, pattern or QWEN_PATTERN,
                           QWEN_SPECIAL_TOKENS if special_tokens is None else tuple(special_tokens),
                           source=str(p))


def load_tokenizer(path: str | Path):
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json``, a directory or tiktoken ranks."""
    from tokenizers import Tokenizer

    p = Path(path)
    if p.is_dir() and (p / "tokenizer.json").is_file():
        p = p / "tokenizer.json"
    if p.is_file() and p.suffix == ".json":
        try:
            return Tokenizer.from_file(str(p))
        except Exception as exc:  # tokenizers raises a bare Exception on bad files
            raise FtibError(f"cannot load tokenizer {p}: {exc}") from exc
    base = load_base(p)
    return Tokenizer.from_str(json.dumps(base.to_tokenizer_json()))


# ------------------------------------------------------------------------------ BPE


class BPEEncoder:
    """Pure-Python byte-level BPE with Hugging Face semantics (the reference for tests and
    the base tokenization of training chunks).

    Merges apply lowest rank first, leftmost on ties; with ``ignore_merges`` a piece that
    is itself a token is returned whole.
    """

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], ignore_merges: bool) -> None:
        self.vocab = vocab
        self.ignore_merges = ignore_merges
        self.pair_rank: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(merges):
            try:
                key = (vocab[a], vocab[b])
                new = vocab[a + b]
            except KeyError as exc:
                raise FtibError(f"merge {a!r} {b!r} refers to a token missing from the vocabulary") from exc
            self.pair_rank.setdefault(key, (rank, new))
        self.byte_ids = []
        for b in range(256):
            tok = BYTE_TO_UNI[b]
            if tok not in vocab:
                raise FtibError(f"not a byte-level BPE: byte 0x{b:02x} ({tok!r}) has no token")
            self.byte_ids.append(vocab[tok])

    def encode_bytes(self, data: bytes) -> list[int]:
        if self.ignore_merges:
            whole = self.vocab.get(to_unicode(data))
            if whole is not None:
                return [whole]
        ids = [self.byte_ids[b] for b in data]
        pair_rank = self.pair_rank
        while len(ids) > 1:
            best = None
            for i in range(len(ids) - 1):
                r = pair_rank.get((ids[i], ids[i + 1]))
                if r is not None and (best is None or r[0] < best[0]):
                    best = (r[0], i, r[1])
            if best is None:
                break
            _, i, new = best
            ids[i:i + 2] = [new]
        return ids


# --------------------------------------------------------------------------- corpus


def read_corpus_lines(paths: Iterable[str | Path], *, part: str = "all",
                      heldout: float = 0.0) -> Iterator[str]:
    """Lines of the corpus files; with ``heldout`` > 0, ``part="train"`` yields the first
    ``1 - heldout`` of each file's lines and ``part="heldout"`` the rest.

    A ``.jsonl`` file contributes the ``text`` field of each record instead of its lines
    (FTibWorld's ``cpt/corpus.jsonl`` and other ftib JSONL corpora).

    Raises:
        FtibError: a file is missing, unreadable or not UTF-8; a JSONL record is not an
            object with a string ``text``.
    """
    if part not in ("all", "train", "heldout"):
        raise ConfigError(f"part must be all, train or heldout, not {part!r}")
    if not 0.0 <= heldout < 1.0:
        raise ConfigError(f"heldout fraction must be in [0, 1), got {heldout}")
    for path in paths:
        p = Path(path)
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError as exc:
            raise FtibError(f"corpus file {p} does not exist") from exc
        except UnicodeDecodeError as exc:
            raise FtibError(f"corpus file {p} is not UTF-8 text ({exc})") from exc
        except OSError as exc:
            raise FtibError(f"cannot read corpus file {p}: {exc}") from exc
        if p.suffix == ".jsonl":
            lines = [_jsonl_text(p, i, line) for i, line in enumerate(lines, 1) if line.strip()]
        cut = len(lines) - int(round(len(lines) * heldout))
        if part == "train":
            lines = lines[:cut]
        elif part == "heldout":
            lines = lines[cut:]
        yield from lines


def _jsonl_text(path: Path, lineno: int, line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise FtibError(f"{path}:{lineno}: not a JSON record ({exc})") from exc
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise FtibError(f"{path}:{lineno}: a JSONL corpus record needs a string field 'text'")
    return text


_CHUNK = regex.compile(tibetan.SYLLABLE_PATTERN)


def count_chunks(lines: Iterable[str]) -> Counter[str]:
    """Word-frequency table of normalised Tibetan syllable chunks."""
    counts: Counter[str] = Counter()
    for line in lines:
        if tibetan.contains_tibetan(line):
            counts.update(_CHUNK.findall(tibetan.normalize(line)))
    return counts


def learn_merges(words: list[list[int]], freqs: list[int], token_bytes: dict[int, bytes],
                 bytes_to_id: dict[bytes, int], next_id: int, max_new_tokens: int,
                 min_frequency: int = 2) -> tuple[list[tuple[int, int, int]], int]:
    """Continued BPE over a word-frequency table, with incremental pair counts.

    Args:
        words: each distinct chunk as its base token ids (modified in place).
        freqs: how often each chunk occurs.
        token_bytes: id -> bytes for every id in ``words`` (new tokens are added to it).
        bytes_to_id: bytes -> id of every existing token (new tokens are added to it).
        next_id: the id of the first new token.
        max_new_tokens: stop after adding this many tokens.
        min_frequency: stop when the best pair occurs fewer times than this.

    Returns:
        ``(merges, added)``: merges as ``(left id, right id, result id)`` in rank order,
        and how many of them made a new token (the others rebuilt an existing one).
    """
    counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, w in enumerate(words):
        f = freqs[wi]
        for pair in zip(w, w[1:]):
            counts[pair] += f
            where[pair].add(wi)
    heap = [(-c, pair) for pair, c in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int, int]] = []
    added = 0
    while added < max_new_tokens and heap:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg:
            continue  # stale entry; the current count has its own entry
        if -neg < min_frequency:
            break
        a, b = pair
        data = token_bytes[a] + token_bytes[b]
        new = bytes_to_id.get(data)
        if new is None:
            new = next_id + added
            added += 1
            bytes_to_id[data] = new
            token_bytes[new] = data
        merges.append((a, b, new))
        changed: set[tuple[int, int]] = set()
        for wi in where.pop(pair):
            w = words[wi]
            f = freqs[wi]
            for p in zip(w, w[1:]):
                counts[p] -= f
                changed.add(p)
            out: list[int] = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                counts[p] += f
                where[p].add(wi)
                changed.add(p)
        counts.pop(pair, None)
        changed.discard(pair)
        for p in changed:
            c = counts.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                counts.pop(p, None)
    return merges, added


# ------------------------------------------------------------------------ extension


def _canonical_decompositions() -> dict[str, str]:
    """Every Tibetan character NFC decomposes (all are composition exclusions)."""
    out: dict[str, str] = {}
    for cp in range(0x0F00, 0x1000):
        ch = chr(cp)
        nfc = unicodedata.normalize("NFC", ch)
        if nfc != ch:
            out[ch] = nfc
    return out


def tibetan_normalizer() -> dict[str, Any]:
    """The part of the Tibetan normaliser that ``tokenizers`` can express, as JSON.

    ``Replace`` steps, each touching Tibetan code points only: the deprecated vowels
    (rule 1), the non-breaking tsheg (rule 2), zero-width characters between syllable
    characters (rule 3) and the canonical decompositions that NFC performs (rule 4). The
    canonical ordering of marks (rules 4 and 5) needs reordering, which no ``tokenizers``
    normalizer can express: ftib's data pipeline applies
    :func:`ftib.kernels.tibetan.normalize` before encoding.
    """
    steps: list[dict[str, Any]] = []
    for src, dst in (("\u0f77", "\u0fb2\u0f71\u0f80"), ("\u0f79", "\u0fb3\u0f71\u0f80"),
                     ("\u0f0c", tibetan.TSHEG)):
        steps.append({"type": "Replace", "pattern": {"String": src}, "content": dst})
    for src, dst in sorted(_canonical_decompositions().items()):
        steps.append({"type": "Replace", "pattern": {"String": src}, "content": dst})
    body = f"[{tibetan.LETTERS}{tibetan.MARKS}]"
    steps.append({"type": "Replace",
                  "pattern": {"Regex": f"(?<={body})[{tibetan.ZERO_WIDTH}]+(?={body})"},
                  "content": ""})
    return {"type": "Sequence", "normalizers": steps}


@dataclass
class ExtensionResult:
    """What :func:`extend` produced."""

    tokenizer_json: dict[str, Any]
    added_tokens: int
    merges: int
    distinct_chunks: int
    chunk_occurrences: int
    seconds: dict[str, float]
    first_new_id: int
    base: BaseBPE


def extend(base: BaseBPE, lines: Iterable[str], add: int, *, min_frequency: int = 2) -> ExtensionResult:
    """Learn up to ``add`` Tibetan tokens on ``lines`` by continued BPE on ``base``.

    Raises:
        ConfigError: ``add`` < 1.
        FtibError: the corpus holds no Tibetan.
    """
    if not isinstance(add, int) or add < 1:
        raise ConfigError(f"the number of tokens to add must be a positive integer, got {add!r}")
    t0 = time.perf_counter()
    chunks = count_chunks(lines)
    if not chunks:
        raise FtibError("the corpus holds no Tibetan text (no Tibetan syllable was found); "
                        "nothing to learn")
    t1 = time.perf_counter()
    enc = BPEEncoder(base.vocab, base.merges, base.ignore_merges)
    id_to_tok = {i: t for t, i in base.vocab.items()}
    items = sorted(chunks.items(), key=lambda kv: (-kv[1], kv[0]))
    words = [enc.encode_bytes(c.encode("utf-8")) for c, _ in items]
    freqs = [f for _, f in items]
    token_bytes: dict[int, bytes] = {}
    for w in words:
        for i in w:
            if i not in token_bytes:
                token_bytes[i] = to_bytes(id_to_tok[i])
    bytes_to_id = {to_bytes(t): i for t, i in base.vocab.items()}
    t2 = time.perf_counter()
    first_new = base.max_id + 1
    merges, added = learn_merges(words, freqs, token_bytes, bytes_to_id, first_new, add, min_frequency)
    t3 = time.perf_counter()
    if added < add:
        log.warning("the corpus supports only %d new tokens at min_frequency=%d (%d requested)",
                    added, min_frequency, add)
    vocab = dict(base.vocab)
    for tok_id in range(first_new, first_new + added):
        vocab[to_unicode(token_bytes[tok_id])] = tok_id
    new_merges = [(to_unicode(token_bytes[a]), to_unicode(token_bytes[b])) for a, b, _ in merges]
    normalizer = tibetan_normalizer()
    if base.normalizer is not None:
        normalizer = {"type": "Sequence", "normalizers": [base.normalizer, normalizer]}
    pre = _pre_tokenizer([tibetan.SYLLABLE_PATTERN, tibetan.split_pattern(base.pattern)])
    doc = _tokenizer_json(vocab, base.merges + new_merges, base.added_tokens, normalizer, pre,
                          base.post_processor, base.ignore_merges)
    return ExtensionResult(
        tokenizer_json=doc, added_tokens=added, merges=len(merges), distinct_chunks=len(chunks),
        chunk_occurrences=sum(freqs), first_new_id=first_new, base=base,
        seconds={"count_chunks": t1 - t0, "base_tokenize": t2 - t1, "learn_merges": t3 - t2},
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_extended(result: ExtensionResult, out: str | Path, *, corpus: Iterable[str | Path] = (),
                   extra_meta: dict[str, Any] | None = None) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``ftib_vocab.json`` to ``out``.

    The file is loaded back with ``tokenizers`` before anything is written, so a document
    the library rejects never reaches disk.
    """
    from tokenizers import Tokenizer

    text = json.dumps(result.tokenizer_json, ensure_ascii=False)
    try:
        Tokenizer.from_str(text)
    except Exception as exc:  # pragma: no cover - would be a bug in this module
        raise RuntimeError(f"the extended tokenizer.json does not load: {exc}") from exc
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.json").write_text(text, encoding="utf-8")
    config = dict(result.base.tokenizer_config)
    # PreTrainedTokenizerFast loads tokenizer.json as written; model-specific classes may
    # rebuild the pre-tokenizer from their own defaults and lose the Tibetan split.
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["clean_up_tokenization_spaces"] = False
    config.pop("auto_map", None)
    specials = {t["content"] for t in result.base.added_tokens}
    if "eos_token" not in config and "<|endoftext|>" in specials:
        config["eos_token"] = "<|endoftext|>"
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2),
                                               encoding="utf-8")
    for f in result.base.extra_files:
        (out / f.name).write_bytes(f.read_bytes())
    meta = {
        "base": result.base.source,
        "base_pattern": result.base.pattern,
        "tibetan_syllable_pattern": tibetan.SYLLABLE_PATTERN,
        "added_tokens": result.added_tokens,
        "new_merges": result.merges,
        "first_new_id": result.first_new_id,
        "vocab_size": result.first_new_id + result.added_tokens,
        "distinct_chunks": result.distinct_chunks,
        "chunk_occurrences": result.chunk_occurrences,
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "corpus": [{"path": str(p), "sha256": _sha256(Path(p))} for p in corpus],
        "normalizer_outside_tokenizer_json": "canonical order of Tibetan marks "
        "(ftib.kernels.tibetan.normalize rules 4-5); apply it before encoding",
    }
    meta.update(extra_meta or {})
    (out / "ftib_vocab.json").write_text(json.dumps(meta, ensure_ascii=False, indent=2), encoding="utf-8")
    return out
