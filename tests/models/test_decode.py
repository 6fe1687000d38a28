"""ftib's decode step (models/decode.py) against transformers' decoder modules: the same
hidden states step for step (padding, rows leaving the batch, LoRA layers, bf16), the
same sampled tokens, and a clear refusal of what it does not cover."""

from __future__ import annotations

import pytest
import torch

from ftib.models.decode import FastDecoder, fast_decoder, rope_matrices
from ftib.stages.grpo import _cache_kw, _decoder, sample_completions


def _perturbed(name: str):
    from ftib.models.bundle import load_bundle

    bundle = load_bundle(name)
    # The presets' initial weights are near-degenerate; a seeded perturbation makes every
    # hidden state depend on the tokens and positions.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return bundle.model.eval()


@pytest.fixture(scope="module", params=["tiny-qwen3", "tiny-qwen3-vl"])
def model(request):
    return _perturbed(request.param)


def _prompts(n: int = 3, length: int = 9, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 1500, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, :1] = 0
    return ids, mask


def teacher_forced(model, ids, mask, tokens, *, fast: bool, drop_at: int | None = None):
    """Prefill ``ids``, then feed ``tokens`` (n, T) one per step; at step ``drop_at`` row 0
    leaves the batch. Returns the hidden states per step (each (rows, H))."""
    from transformers import DynamicCache

    decoder = _decoder(model)
    n, P = ids.shape
    T = tokens.shape[1]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    full = torch.cat([mask, torch.ones(n, T, dtype=mask.dtype)], 1)
    out = []
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        decoder(input_ids=ids, attention_mask=mask, position_ids=pos, **{_cache_kw(decoder): cache}, use_cache=True)
        step = None
        if fast:
            step, why = fast_decoder(decoder)
            assert step is not None, why
            step.start(cache, T, full)
        rows = torch.arange(n)
        next_pos = pos[:, -1:] + 1
        for t in range(T):
            if t == drop_at:
                keep = torch.arange(1, len(rows))
                rows, next_pos = rows[keep], next_pos[keep]
                if fast:
                    step.select(keep)
                else:
                    cache.batch_select_indices(keep)
            tok = tokens[rows, t]
            if fast:
                h = step.step(tok, next_pos)
            else:
                m = full[rows, : P + t + 1][:, None, None, :].bool()
                h = decoder(input_ids=tok[:, None], attention_mask=m, position_ids=next_pos,
                            **{_cache_kw(decoder): cache}, use_cache=True).last_hidden_state[:, -1]
            out.append(h.clone())
            next_pos = next_pos + 1
    return out


def _compare(model, atol=2e-5, rtol=1e-5, drop_at=3):
    ids, mask = _prompts()
    tokens = torch.randint(10, 1500, (3, 7), generator=torch.Generator().manual_seed(2))
    want = teacher_forced(model, ids, mask, tokens, fast=False, drop_at=drop_at)
    got = teacher_forced(model, ids, mask, tokens, fast=True, drop_at=drop_at)
    assert [g.shape for g in got] == [w.shape for w in want]
    for t, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, atol=atol, rtol=rtol, msg=lambda m: f"step {t}: {m}")


def test_fast_steps_give_the_modules_hidden_states(model):
    """Every step's final hidden state, with left padding and a row leaving mid-way."""
    _compare(model)


def test_rollout_tokens_are_the_modules_tokens(model):
    """The seeded rollout (temperature 0.8, top-p 0.9, G = 3, stop ids that end some rows
    early) samples the same tokens through either decode path."""
    ids, mask = _prompts()
    stop = {int(t) for t in range(10, 1500, 7)}  # ~1 token in 7: rows end at different steps
    runs = {}
    for decode in ("auto", "modules"):
        torch.manual_seed(0)
        runs[decode] = sample_completions(model, ids, mask, group_size=3, max_new_tokens=10, stop_ids=stop,
                                          pad_id=0, temperature=0.8, top_p=0.9, decode=decode)
    assert torch.equal(runs["auto"], runs["modules"])
    ended = (runs["auto"] == 0).any(1)
    assert ended.any() and not ended.all(), "the case must have rows that stop early and rows that do not"


def test_lora_layers_keep_their_own_forward():
    """Under peft LoRA (non-zero B, so the adapters change the output) the projections are
    called as modules: hidden states as the modules', with the adapter on and off."""
    from peft import LoraConfig, get_peft_model

    base = _perturbed("tiny-qwen3")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                 init_lora_weights=False))
    peft_model.eval()
    _compare(peft_model)
    with peft_model.disable_adapter():
        _compare(peft_model)


def test_bfloat16_steps_are_the_modules_bit_for_bit():
    model = _perturbed("tiny-qwen3").to(torch.bfloat16)
    _compare(model, atol=0.0, rtol=0.0)  # bf16: transformers' own operations, bit for bit


def test_autocast_steps_are_the_modules_bit_for_bit():
    """Float32 weights under bf16 autocast (how the GRPO stage rolls out on a GPU): the
    step takes transformers' own operations and SDPA, as under bf16 weights."""
    model = _perturbed("tiny-qwen3")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _compare(model, atol=0.0, rtol=0.0)


def test_rope_matrix_is_the_elementwise_rotation():
    g = torch.Generator().manual_seed(0)
    n, heads, d = 5, 3, 8
    x = torch.randn(n, heads, d, generator=g)
    ang = torch.rand(n, d // 2, generator=g) * 6
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)
    rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    want = x * cos[:, None] + rotated * sin[:, None]
    torch.testing.assert_close(torch.bmm(x, rope_matrices(cos, sin)), want, atol=1e-6, rtol=1e-6)


def test_unsupported_decoders_are_named_not_run():
    model = _perturbed("tiny-qwen3")
    decoder = _decoder(model)
    handle = decoder.layers[1].mlp.register_forward_hook(lambda *a: None)
    try:
        fast, why = fast_decoder(decoder)
        assert fast is None and "hook" in why and "Qwen3MLP" in why
    finally:
        handle.remove()
    fast, why = fast_decoder(torch.nn.Linear(2, 2))
    assert fast is None and "no decoder layers" in why
    with pytest.raises(ValueError, match="decode must be"):
        ids, mask = _prompts()
        sample_completions(model, ids, mask, group_size=1, max_new_tokens=2, stop_ids={1}, pad_id=0, decode="fast")


def test_fast_decoder_type():
    fast, why = fast_decoder(_decoder(_perturbed("tiny-qwen3")))
    assert isinstance(fast, FastDecoder) and why == "" and len(fast.layers) == 2
