"""CPT throughput on the tiny Qwen3-VL preset and FTibWorld (pytest-benchmark).

* ``packing`` vs ``padding``: the same documents, one forward+backward pass over all of
  them, as packed 128-token blocks or as batches padded to their longest document.
  ``extra_info["real_tokens"]`` / mean time = real tokens/s; goal >= 1.5x from packing.
* ``extended`` vs ``base`` tokenizer: the same Tibetan documents tokenised by the base
  tokenizer and by its Tibetan extension, packed, one pass each on the same (resized)
  model. ``extra_info["syllables"]`` / mean time = Tibetan syllables/s; goal >= 4x.

Both cases of a pair run in the same session on the same model. Read the ratios with
``python -m ftib.bench.ratios`` or from the JSON's ``extra_info``.
"""

from __future__ import annotations

import os

import pytest
import torch

from ftib.bench._kernel_bench import extra_info, per_second

BLOCK = 128
BATCH = 8
N_DOCS = 96


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    os.environ.setdefault("FTIB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    from ftib.data.sources import resolve
    from ftib.kernels.tibetan import normalize, syllables
    from ftib.models.bundle import load_bundle
    from ftib.stages.cpt import read_documents

    torch.manual_seed(0)
    docs = [normalize(d) for d in read_documents((resolve("ftibworld:tiny", "cpt/corpus.jsonl"),), N_DOCS)]
    bundle = load_bundle("tiny-qwen3-vl")
    n_syll = sum(len(syllables(d)) for d in docs)
    return bundle, docs, n_syll


def _pass(model, batches):
    model.zero_grad(set_to_none=True)
    for b in batches:
        labels = b["labels"]
        out = model(**{k: v for k, v in b.items() if k != "labels"}, use_cache=False)
        loss = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(),
                                                 labels[:, 1:].flatten(), ignore_index=-100)
        loss.backward()


def _packed_batches(ids, eos):
    from ftib.data.packing import pack_documents

    packed, stats = pack_documents(ids, BLOCK, eos_id=eos, pad_id=eos)
    rows = packed["input_ids"].shape[0]
    return [{k: v[i : i + BATCH] for k, v in packed.items()} for i in range(0, rows, BATCH)], stats.tokens


def _padded_batches(ids, eos):
    from ftib.data.packing import pad_batch

    docs = [(d + [eos])[:BLOCK] for d in ids]
    batches = [pad_batch(docs[i : i + BATCH], pad_id=eos) for i in range(0, len(docs), BATCH)]
    return batches, sum(len(d) for d in docs)


@pytest.mark.parametrize("impl", ["padding", "packing"])
def test_cpt_packing(benchmark, setup, impl):
    bundle, docs, n_syll = setup
    tok = bundle.tokenizer
    ids = tok(docs, add_special_tokens=False)["input_ids"]
    make = _packed_batches if impl == "packing" else _padded_batches
    batches, real_tokens = make(ids, tok.eos_token_id)
    model = bundle.model.train()
    benchmark.pedantic(_pass, args=(model, batches), rounds=3, warmup_rounds=1)
    slots = sum(b["input_ids"].numel() for b in batches)
    extra_info(benchmark, impl=impl, mode="forward+backward", device=torch.device("cpu"), dtype=torch.float32,
               shapes={"documents": len(docs), "block": BLOCK, "batch": BATCH},
               real_tokens=real_tokens, token_slots=slots,
               real_tokens_per_s=per_second(real_tokens, benchmark))


@pytest.fixture(scope="module")
def extended(setup, tmp_path_factory):
    from transformers import PreTrainedTokenizerFast

    from ftib.models import extend_embeddings
    from ftib.models.bundle import load_bundle
    from ftib.models.vocab import extend, load_base, write_extended
    from ftib.stages.cpt import read_documents
    from ftib.data.sources import resolve

    bundle, docs, _ = setup
    base_dir = tmp_path_factory.mktemp("base_tok")
    bundle.tokenizer.save_pretrained(base_dir)
    corpus = read_documents((resolve("ftibworld:tiny", "cpt/corpus.jsonl"),))
    result = extend(load_base(base_dir), corpus, 1500)
    out = tmp_path_factory.mktemp("ext_tok")
    write_extended(result, out)
    ext_tok = PreTrainedTokenizerFast.from_pretrained(out)
    model = load_bundle("tiny-qwen3-vl").model
    extend_embeddings(model, bundle.tokenizer, ext_tok)
    return model, ext_tok


@pytest.mark.parametrize("impl", ["base", "extended"])
def test_cpt_syllables_per_second(benchmark, setup, extended, impl):
    bundle, docs, n_syll = setup
    model, ext_tok = extended
    tok = ext_tok if impl == "extended" else bundle.tokenizer
    ids = tok(docs, add_special_tokens=False)["input_ids"]
    batches, real_tokens = _packed_batches(ids, tok.eos_token_id)
    model.train()
    benchmark.pedantic(_pass, args=(model, batches), rounds=3, warmup_rounds=1)
    extra_info(benchmark, impl=impl, mode="forward+backward", device=torch.device("cpu"), dtype=torch.float32,
               shapes={"documents": len(docs), "block": BLOCK, "batch": BATCH},
               syllables=n_syll, real_tokens=real_tokens, tokens_per_syllable=real_tokens / n_syll,
               syllables_per_s=per_second(n_syll, benchmark))
