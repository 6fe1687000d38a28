"""Alignment tax (NLL/KL of an adapted model against its base) with two tiny Qwen3
causal LMs built here from a tiny config."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from ftib.evals.alignment_tax import alignment_tax

TEXTS = [
    "Today, Pema saw two moons at the shop.",
    "What is 49 plus 8? 57",
    "今天早上拉姆在商店买了三朵紫色的花。",
    "The black mountain is in the centre of the picture.",
    "那座黑色的山在中间。",
]


@pytest.fixture(scope="module")
def tokenizer():
    from ftib.models.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(TEXTS * 20, vocab_size=320)


def tiny_lm(vocab: int, seed: int, **extra):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    conf = Qwen3Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                       max_position_embeddings=128, tie_word_embeddings=False, **extra)
    return Qwen3ForCausalLM(conf).eval()


def perturbed(model, seed: int, scale: float = 0.05):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return other


def test_identical_models_pay_no_tax(tokenizer):
    base = tiny_lm(len(tokenizer), 0, attention_dropout=0.5)  # random scores in train mode
    base.train()
    m, recs = alignment_tax(base, tokenizer, base, tokenizer, TEXTS)
    assert base.training  # handed back in the mode it came in
    assert m["nll_increase_mean"] == 0.0 and m["nll_increase_p90"] == 0.0
    assert m["kl_mean"] == pytest.approx(0.0, abs=1e-6)
    assert m["tokenization_mismatch"] == 0 and m["texts"] == len(TEXTS)
    assert len(recs) == len(TEXTS) and all(r["kl"] == pytest.approx(0.0, abs=1e-6) for r in recs)


def test_nll_and_kl_match_independent_computation(tokenizer):
    base = tiny_lm(len(tokenizer), 0)
    adapted = perturbed(base, 1)
    m, recs = alignment_tax(base, tokenizer, adapted, tokenizer, TEXTS)
    # NLL per token agrees with the models' own cross-entropy loss (token-weighted mean)
    tot_b = tot_a = n = 0.0
    kls, diffs = [], []
    for t in TEXTS:
        ids = torch.tensor([tokenizer(t, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            lb = base(input_ids=ids, labels=ids)
            la = adapted(input_ids=ids, labels=ids)
        k = ids.shape[1] - 1
        tot_b += lb.loss.item() * k
        tot_a += la.loss.item() * k
        n += k
        pb = torch.log_softmax(lb.logits[0, :-1], -1)
        pa = torch.log_softmax(la.logits[0, :-1], -1)
        kls += torch.nn.functional.kl_div(pa, pb, log_target=True, reduction="none").sum(-1).tolist()
        target = ids[0, 1:]
        diffs += (torch.nn.functional.cross_entropy(la.logits[0, :-1], target, reduction="none")
                  - torch.nn.functional.cross_entropy(lb.logits[0, :-1], target, reduction="none")).tolist()
    assert m["nll_base"] == pytest.approx(tot_b / n, rel=1e-5)
    assert m["nll_adapted"] == pytest.approx(tot_a / n, rel=1e-5)
    assert m["nll_increase_mean"] == pytest.approx(m["nll_adapted"] - m["nll_base"], abs=1e-5)
    assert m["kl_mean"] == pytest.approx(sum(kls) / len(kls), rel=1e-4)
    assert m["kl_mean"] > 0 and m["tokens"] == n
    assert m["nll_increase_p90"] == pytest.approx(float(np.percentile(diffs, 90)), abs=1e-5)


def test_extended_vocabulary_keeps_kl_finite(tokenizer):
    base = tiny_lm(len(tokenizer), 0)
    adapted = copy.deepcopy(base)
    adapted.resize_token_embeddings(len(tokenizer) + 7)
    m, _ = alignment_tax(base, tokenizer, adapted, tokenizer, TEXTS)
    assert math.isfinite(m["kl_mean"]) and m["kl_mean"] >= 0.0


def test_different_tokenisation_is_counted_not_compared(tokenizer):
    from ftib.models.tokenizer import train_bpe_tokenizer

    other_tok = train_bpe_tokenizer(TEXTS * 20, vocab_size=270)
    base = tiny_lm(len(tokenizer), 0)
    other = tiny_lm(len(other_tok), 3)
    m, recs = alignment_tax(base, tokenizer, other, other_tok, TEXTS)
    differs = sum(tokenizer(t, add_special_tokens=False)["input_ids"]
                  != other_tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS)
    assert differs > 0 and m["tokenization_mismatch"] == differs
    assert all(math.isfinite(r["nll_per_char_adapted"]) for r in recs)
    assert sum(r["kl"] is None for r in recs) == differs


def test_evaluator_loads_both_models(tokenizer, tmp_path, world, ctx_factory):
    from ftib.core import config as cfg
    from ftib.core.registry import EVALUATORS, Registry

    base = tiny_lm(len(tokenizer), 0)
    adapted = perturbed(base, 2)
    for name, model in (("base", base), ("adapted", adapted)):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    cls = Registry().load(EVALUATORS, "alignment_tax")
    ev = cls(cfg.build(cls.Config, {"data": str(world), "base_model": str(tmp_path / "base"), "limit": 6}))
    res = ev.evaluate(ctx_factory(model_source=str(tmp_path / "adapted")))
    assert res.metrics["texts"] == 6 and res.metrics["kl_mean"] > 0
    assert {"id", "prediction", "parsed", "gold", "correct"} <= set(res.records[0])


def test_evaluator_lang_keeps_only_that_languages_texts(tokenizer, tmp_path, world, ctx_factory):
    """``lang: zh``: the tax in the dominant language (the paper's Chinese text); a
    language the file lacks is an error naming the ones it has."""
    import json

    from ftib.core import ConfigError
    from ftib.core import config as cfg
    from ftib.core.registry import EVALUATORS, Registry

    base = tiny_lm(len(tokenizer), 0)
    for name, model in (("base", base), ("adapted", perturbed(base, 2))):
        model.save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    cls = Registry().load(EVALUATORS, "alignment_tax")
    ev = cls(cfg.build(cls.Config, {"data": str(world), "base_model": str(tmp_path / "base"), "lang": "zh"}))
    res = ev.evaluate(ctx_factory(model_source=str(tmp_path / "adapted")))
    rows = [json.loads(line) for line in (world / "general" / "heldout.jsonl").read_text().splitlines()]
    zh = [r["id"] for r in rows if r["lang"] == "zh"]
    assert 0 < len(zh) < len(rows) and res.metrics["texts"] == len(zh)
    assert sorted(r["id"] for r in res.records) == sorted(zh)
    only_zh = tmp_path / "zh.jsonl"
    only_zh.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r["lang"] == "zh"))
    ev = cls(cfg.build(cls.Config, {"data": str(only_zh), "base_model": str(tmp_path / "base"), "lang": "en"}))
    with pytest.raises(ConfigError, match="has no 'en' text; its languages: zh"):
        ev.evaluate(ctx_factory(model_source=str(tmp_path / "adapted")))
    with pytest.raises(ConfigError, match="lang must be zh, en or null, got .bo."):
        cfg.build(cls.Config, {"base_model": "x", "lang": "bo"})


def test_base_model_base_is_the_runs_own_starting_model(tmp_path):
    """``base_model: base`` names the recipe's model; with preset overrides the name alone
    is not that model, so it is an error; ``stage:<id>`` of a stage not in the run is one too."""
    import json

    from ftib.core import ConfigError
    from ftib.evals.alignment_tax import resolve_base_model

    model = {"name_or_path": "ftibworld-base", "revision": None, "preset_overrides": {}}
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"model": model}, "stages": {}}))
    assert resolve_base_model("base", tmp_path) == "ftibworld-base"
    assert resolve_base_model("/models/x", tmp_path) == "/models/x"
    with pytest.raises(ConfigError, match="stage 'sft' has no completed checkpoint"):
        resolve_base_model("stage:sft", tmp_path)
    model["preset_overrides"] = {"image_size": 48}
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"model": model}, "stages": {}}))
    with pytest.raises(ConfigError, match="preset_overrides or revision"):
        resolve_base_model("base", tmp_path)
