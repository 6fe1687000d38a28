"""The GRPO stage's own rollout sampler and shared-prompt forward against transformers."""

import pytest
import torch

from ftib.stages.grpo import (completion_hidden, completion_mask, read_prompts, sample_completions, sample_next_token,
                              token_logps)


def _warped(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> torch.Tensor:
    """transformers' own temperature -> top-k -> top-p warpers: the target distribution."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    z = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        z = TopKLogitsWarper(top_k)(None, z)
    if top_p < 1.0:
        z = TopPLogitsWarper(top_p)(None, z)
    return torch.softmax(z, -1)


@pytest.mark.parametrize("temperature, top_p, top_k, max_rounds", [
    (0.8, 0.9, 0, 8), (1.0, 0.5, 0, 8), (1.3, 0.95, 5, 8), (0.7, 1.0, 3, 8),
    (0.8, 0.9, 0, 0),  # every row through the sorting fallback
])
def test_sample_next_token_follows_the_warped_distribution(temperature, top_p, top_k, max_rounds):
    """Empirical frequencies of 40k seeded draws lie within 5 binomial standard deviations
    of transformers' warped distribution, and tokens outside the nucleus never appear."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 12, generator=g) * 2
    want = _warped(logits, temperature, top_p, top_k)[0]
    n = 40_000
    torch.manual_seed(0)
    draws = sample_next_token(logits.expand(n, -1).contiguous(), temperature, top_p, top_k, max_rounds=max_rounds)
    got = torch.bincount(draws, minlength=12).double() / n
    assert (got[want == 0] == 0).all(), (got, want)
    sd = (want * (1 - want) / n).sqrt().double()
    z = ((got - want.double()).abs() / sd.clamp(min=1e-12))[want > 0]
    assert z.max() < 5, (got, want)


@pytest.fixture(scope="module", params=["tiny-qwen3", "tiny-qwen3-vl"])
def prompt_batch(request):
    from ftib.models.bundle import load_bundle

    bundle = load_bundle(request.param)
    # The presets' initial weights decode greedily to one repeated token; a seeded
    # perturbation makes every output token depend on the prompt and the positions.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in bundle.model.parameters():
            if p.ndim == 2:
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    items = read_prompts("ftibworld:tiny", ("translation", "headline"))
    encs = [bundle.chat.encode([{"role": "user", "content": p["prompt"]}], add_generation_prompt=True)
            for p in (items[0], items[1], items[-1])]  # different lengths: left padding
    for e in encs:
        e.pop("labels")
    batch = bundle.chat.collate(encs, padding_side="left")
    return bundle, {k: batch[k] for k in ("input_ids", "attention_mask")}


def test_sample_completions_matches_generate_greedily(prompt_batch):
    """At a vanishing temperature sampling is argmax: the KV-cache loop (shared prefill,
    finished rows leaving the batch) gives transformers' greedy ``generate`` token for
    token, with rows that stop early (a stop id taken from the greedy output)."""
    bundle, batch = prompt_batch
    model, tok = bundle.model.eval(), bundle.tokenizer
    P = batch["input_ids"].shape[1]
    with torch.no_grad():
        free = model.generate(**batch, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)[:, P:]
    # Row 0 stops at the first token that did not occur before it (from the third on); the
    # other rows stop wherever they emit it, or run to the end.
    j = next(j for j in range(2, free.shape[1]) if int(free[0, j]) not in free[0, :j].tolist())
    stop = {int(free[0, j]), tok.eos_token_id}
    with torch.no_grad():
        want = model.generate(**batch, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id,
                              eos_token_id=sorted(stop))[:, P:]
    got = sample_completions(model, batch["input_ids"], batch["attention_mask"], group_size=2, max_new_tokens=12,
                             stop_ids=stop, pad_id=tok.pad_token_id, temperature=1e-6, top_p=0.9)
    want = want.repeat_interleave(2, 0)
    assert got.shape == want.shape
    mask = completion_mask(want, stop, tok.pad_token_id)
    assert mask[0].sum() == j + 1 and mask.sum() < mask.numel()  # some rows did stop early
    assert torch.equal(got, want.masked_fill(mask == 0, tok.pad_token_id))


def test_shared_prompt_forward_is_the_plain_forward(prompt_batch):
    """``completion_hidden`` with the prompt run once per group: the same hidden states
    and the same gradients as the plain forward over every row."""
    bundle, batch = prompt_batch
    model, tok = bundle.model, bundle.tokenizer
    G, C = 3, 7
    stop = {tok.eos_token_id}
    torch.manual_seed(0)
    model.eval()
    comp = sample_completions(model, batch["input_ids"], batch["attention_mask"], group_size=G, max_new_tokens=C,
                              stop_ids=stop, pad_id=tok.pad_token_id)
    cmask = completion_mask(comp, stop, tok.pad_token_id)
    cmask[1, 3:] = 0  # a ragged row
    model.train()
    results = []
    for share in (False, True):
        model.zero_grad(set_to_none=True)
        h = completion_hidden(model, batch["input_ids"], batch["attention_mask"], comp, cmask, G, share_prompt=share)
        # A fixed linear read-out (a squared norm would be almost scale-invariant after the
        # final RMSNorm: its layer gradients cancel to rounding noise).
        (h[cmask.bool()] @ torch.linspace(-1, 1, h.shape[-1])).sum().backward()
        results.append((h.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (h1, g1), (hg, gg) = results
    keep = cmask.bool()
    torch.testing.assert_close(hg[keep], h1[keep], rtol=1e-5, atol=1e-5)
    assert g1.keys() == gg.keys() and len(g1) > 10
    for name in g1:
        # Summation order differs (the G rows' prompt gradients add up inside the graph).
        scale = float(g1[name].abs().max())
        torch.testing.assert_close(gg[name], g1[name], rtol=1e-4, atol=1e-5 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")
    model.zero_grad(set_to_none=True)


def test_loss_logps_are_the_old_logps(prompt_batch):
    """With num_iterations > 1 the stage keeps the log-probs its first loss pass computes
    as the old log-probs instead of running a separate no-grad forward at rollout time:
    they are the same numbers (at the sampling temperature)."""
    from ftib.kernels.grpo_loss import fused_linear_grpo_loss

    bundle, batch = prompt_batch
    model, tok = bundle.model, bundle.tokenizer
    G, T = 2, 0.8
    stop = {tok.eos_token_id}
    model.eval()
    comp = sample_completions(model, batch["input_ids"], batch["attention_mask"], group_size=G, max_new_tokens=6,
                              stop_ids=stop, pad_id=tok.pad_token_id, temperature=T)
    cmask = completion_mask(comp, stop, tok.pad_token_id)
    want = token_logps(model, batch["input_ids"], batch["attention_mask"], comp, cmask, temperature=T, group_size=G)
    model.train()
    hidden = completion_hidden(model, batch["input_ids"], batch["attention_mask"], comp, cmask, G)
    out = fused_linear_grpo_loss(hidden, model.get_output_embeddings().weight, comp, cmask,
                                 torch.randn(comp.shape[0]), loss_type="grpo", temperature=T)
    keep = cmask.bool()
    torch.testing.assert_close(out.logps[keep], want[keep], rtol=1e-5, atol=1e-5)


def test_read_prompts_skip_leaves_out_the_first_records_a_cold_start_trained_on():
    from ftib.core.errors import FtibError

    every = read_prompts("ftibworld:tiny", ("translation",))
    rest = read_prompts("ftibworld:tiny", ("translation",), skip=20)
    assert [p["id"] for p in rest] == [p["id"] for p in every[20:]]
    assert [p["id"] for p in read_prompts("ftibworld:tiny", ("translation",), 5, skip=20)] == \
        [p["id"] for p in every[20:25]]
    with pytest.raises(FtibError, match=f"skipping the first {len(every)} records leaves none of its {len(every)}"):
        read_prompts("ftibworld:tiny", ("translation",), skip=len(every))


def test_grpo_skip_prompts_must_not_be_negative():
    from ftib.stages.grpo import GRPOConfig

    with pytest.raises(ValueError, match="skip_prompts must be >= 0"):
        GRPOConfig(skip_prompts=-1)
