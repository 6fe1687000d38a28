"""``ftib tokenizer extend`` and ``ftib tokenizer stats`` (entry point ``ftib.commands``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ftib.core.errors import FtibError

EXTEND_EPILOG = """\
examples:
  ftib tokenizer extend --base qwen.tiktoken --corpus bo.txt --add 16000 --out tok/
  ftib tokenizer extend --base /models/Qwen3-4B --corpus a.txt b.txt --add 8000 --out tok/

BASE is a tokenizer.json, a model directory holding one, or a tiktoken ranks file
(--pattern/--special-tokens-file set the split regex and specials of a tiktoken base;
defaults: Qwen's). The corpus is normalised and cut into Tibetan syllables; new merges
are learned on the base tokenization of those chunks and appended after the base's.
Fewer than --add tokens are added when the corpus has fewer pairs occurring at least
--min-frequency times; the command says so.
"""

STATS_EPILOG = """\
examples:
  ftib tokenizer stats --tokenizer qwen.tiktoken --tokenizer tok/ --corpus bo.txt
  ftib tokenizer stats --tokenizer tok/ --corpus a.txt --heldout 0.2 --json
"""

ROWS = [
    ("tokens_per_syllable", "tokens / syllable", "{:.3f}"),
    ("tibetan_tokens_per_syllable", "Tibetan tokens / syllable", "{:.3f}"),
    ("tokens_per_char", "tokens / char", "{:.3f}"),
    ("bytes_per_token", "bytes / token", "{:.2f}"),
    ("byte_fallback_share", "byte-fallback share", "{:.1%}"),
    ("syllables", "syllables", "{:,}"),
    ("tokens", "tokens", "{:,}"),
]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--add must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction, got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {value}")
    return value


def cmd_extend(args: argparse.Namespace) -> int:
    from ftib.models import vocab as V

    specials = None
    if args.special_tokens_file:
        try:
            specials = [s for s in Path(args.special_tokens_file).read_text(encoding="utf-8").splitlines() if s]
        except OSError as exc:
            raise FtibError(f"cannot read --special-tokens-file: {exc}") from exc
    t0 = time.perf_counter()
    base = V.load_base(args.base, pattern=args.pattern, special_tokens=specials)
    t1 = time.perf_counter()
    part = "train" if args.heldout else "all"
    result = V.extend(base, V.read_corpus_lines(args.corpus, part=part, heldout=args.heldout),
                      args.add, min_frequency=args.min_frequency)
    result.seconds = {"load_base": t1 - t0, **result.seconds}
    out = V.write_extended(result, args.out, corpus=args.corpus,
                           extra_meta={"heldout": args.heldout, "min_frequency": args.min_frequency,
                                       "requested": args.add})
    print(f"base: {base.source} ({base.max_id + 1:,} ids)")
    print(f"chunks: {result.distinct_chunks:,} distinct Tibetan syllable chunks, "
          f"{result.chunk_occurrences:,} occurrences")
    print(f"added {result.added_tokens:,} tokens (ids {result.first_new_id:,}.."
          f"{result.first_new_id + result.added_tokens - 1:,}) with {result.merges:,} merges")
    if result.added_tokens < args.add:
        hint = ("every chunk of the corpus is now one token" if args.min_frequency == 1
                else "a larger corpus or --min-frequency 1 adds more")
        print(f"note: {args.add:,} were requested; no pair left occurs >= {args.min_frequency} "
              f"times ({hint})")
    secs = ", ".join(f"{k} {v:.2f}s" for k, v in result.seconds.items())
    print(f"time: {secs}")
    print(f"wrote {out / 'tokenizer.json'}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from ftib.models.tokenizer_stats import tokenizer_stats
    from ftib.models.vocab import load_tokenizer, read_corpus_lines

    toks = [(t, load_tokenizer(t)) for t in args.tokenizer]
    part = "heldout" if args.heldout else "all"
    report: dict[str, dict[str, dict]] = {}
    for corpus in args.corpus:
        report[corpus] = {}
        for name, tok in toks:
            lines = read_corpus_lines([corpus], part=part, heldout=args.heldout)
            report[corpus][name] = tokenizer_stats(tok, lines, normalize=not args.raw)
        if not any(r["syllables"] for r in report[corpus].values()):
            raise FtibError(f"corpus {corpus} holds no Tibetan syllable; nothing to measure")
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0
    for corpus, per_tok in report.items():
        first = next(iter(per_tok.values()))
        what = f"last {args.heldout:.0%} of lines" if args.heldout else "all lines"
        print(f"{corpus} ({what}: {first['lines']:,} lines, {first['syllables']:,} syllables)")
        names = list(per_tok)
        width = max(len(label) for _, label, _ in ROWS) + 2
        cols = [max(12, len(Path(n).name) + 2) for n in names]
        print(" " * width + "".join(Path(n).name.rjust(c) for n, c in zip(names, cols)))
        for key, label, fmt in ROWS:
            cells = [("-" if per_tok[n][key] is None else fmt.format(per_tok[n][key])).rjust(c)
                     for n, c in zip(names, cols)]
            print(label.ljust(width) + "".join(cells))
        print()
    return 0


def register(subparsers) -> None:
    """Add ``ftib tokenizer {extend,stats}``."""
    p = subparsers.add_parser("tokenizer", help="extend a tokenizer with Tibetan tokens; measure fertility",
                              description="Tibetan vocabulary extension and tokenizer statistics.")
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    e = sub.add_parser("extend", help="learn Tibetan merges on top of a byte-level BPE",
                       description="Extend a byte-level BPE tokenizer with Tibetan tokens.",
                       epilog=EXTEND_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("--base", required=True, help="tokenizer.json, model directory or tiktoken ranks file")
    e.add_argument("--corpus", required=True, nargs="+", metavar="FILE", help="UTF-8 text files")
    e.add_argument("--add", required=True, type=_positive, metavar="N", help="tokens to add (at most)")
    e.add_argument("--out", required=True, metavar="DIR", help="output directory")
    e.add_argument("--min-frequency", type=_positive, default=2,
                   help="stop when the best pair occurs fewer times (default 2)")
    e.add_argument("--heldout", type=_fraction, default=0.0, metavar="F",
                   help="train on the first 1-F of each file's lines (measure the rest with stats --heldout F)")
    e.add_argument("--pattern", default=None, help="split regex of a tiktoken base (default: Qwen's)")
    e.add_argument("--special-tokens-file", default=None, metavar="FILE",
                   help="special tokens of a tiktoken base, one per line, in id order (default: Qwen's)")
    e.set_defaults(func=cmd_extend)

    s = sub.add_parser("stats", help="tokens per syllable and more, side by side",
                       description="Tokenizer efficiency on Tibetan text.",
                       epilog=STATS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--tokenizer", required=True, action="append", metavar="X",
                   help="tokenizer.json, directory or tiktoken file; repeat to compare")
    s.add_argument("--corpus", required=True, nargs="+", metavar="FILE")
    s.add_argument("--heldout", type=_fraction, default=0.0, metavar="F",
                   help="measure only the last F of each file's lines")
    s.add_argument("--raw", action="store_true", help="do not normalise the text first")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(func=cmd_stats)


__all__ = ["register", "cmd_extend", "cmd_stats"]
