"""GRPO: teach a new language skill by optimising meaning, not surface form.

What it trains: the policy (full, or LoRA adapters — ``trainable``) on prompts of one or
more text tasks: Tibetan→Chinese translation (``translation``) and Tibetan report→headline
(``headline``); data from ``ftibworld[:SIZE[:SEED]]`` (``grpo/translation.jsonl``,
``grpo/headlines.jsonl``) or your own JSON Lines files with the same fields.

One optimiser step (``grad_accum`` micro-batches of ``prompts_per_step`` prompts):

1. *Rollout* — G completions per prompt (temperature, top-p, top-k, ``max_new_tokens``;
   stop on ``<|im_end|>``/EOS), in eval mode, without gradients. ``sampler: ftib``
   (default, :func:`sample_completions`) prefills each prompt once for its G completions,
   drops finished rows from the batch and samples the nucleus without sorting the
   vocabulary (:func:`sample_next_token`); ``sampler: transformers`` calls ``generate``.
   Same distribution either way.
2. *Rewards* — every configured reward plugin scores the completions against the
   references; the total is their weighted sum (the seed paper: semantic 1.5, language
   1.0). A reward returns NaN for a completion it cannot score; one that no reward can
   score is NaN, counted, logged (``reward_unscorable``) and warned about; an infinite
   reward is an error naming the reward.
3. *Advantages* — group-relative: ``(r - mean_g) / (std_g + 1e-4)`` with the unbiased
   std, nan-aware (a NaN reward gets advantage 0), as TRL computes it, with float64
   statistics (:func:`ftib.kernels.advantages.group_advantages`).
4. *Reference* — with ``beta > 0`` the per-token log-probs of the reference policy (the
   policy with its adapter disabled for LoRA, else a frozen copy made at the start);
   with ``beta == 0`` the reference is skipped entirely (no copy, no forward).
5. *Loss* — the clipped surrogate over the lm_head projection without materialising
   (tokens, V) logits (:func:`ftib.kernels.grpo_loss.fused_linear_grpo_loss`), with the
   configured TRL objective (``loss_type``, ``importance_sampling_level``, ``delta``,
   ``use_bias_correction_kl``). Normalisation happens once per loss type: the kernel
   normalises per micro-batch (and the loop averages micro-batches, TRL's division by
   ``gradient_accumulation_steps``), except for the token-sum types (dapo, cispo, vespo)
   whose sum the loop divides by the global completion-token count of the step (all
   micro-batches and ranks: TRL's ``num_items_in_batch``); see
   :meth:`_GRPOTask.loss_normaliser`. The forward runs each prompt once for its G
   completions (:func:`completion_hidden`), the reference's too.

``num_iterations`` k (TRL's, mu in DeepSeekMath's Algorithm 1): each rollout serves k
optimiser steps. The first step over it has the policy that sampled it, so the ratio is 1
with gradient 1 and the log-probs its loss computes are kept as the old log-probs
(equal to a separate no-grad forward at rollout time, which is therefore not run); the
next k-1 steps clip the ratio to them. With k = 1 no old log-probs exist at all. A
resumed run starts a new rollout cycle (the rollout buffer is not checkpointed).

Logged per step: reward mean/std overall and per reward (over the scored completions),
the share of unscorable completions (``reward_unscorable``, per reward
``reward/<name>_unscorable``), the share of zero-std groups, KL, the loss type's clip
fractions (or cispo's clip ratio / vespo's mean phi), completion length mean/max, the
share of completions in the target language, the monitors' values
(:mod:`ftib.stages.grpo_monitors`), and the time of generation, rewards, reference
log-probs and the loss forward (seconds summed over the step's micro-batches). The
rollout runs in the loop's ``collate``, under the training autocast; those three phases
are the task's ``collate_times``, so the loop's ``data_time_s`` is only drawing and
encoding prompts and ``step_time_s`` ≈ ``data_time_s`` + ``time/generation_s`` +
``time/reward_s`` + ``time/ref_logps_s`` + ``time/forward_s`` + ``time/backward_s`` +
``time/optimizer_s``.

With ``select`` set, the stage's output is not the last step's weights but the evaluated
checkpoint with the best held-out metric whose alignment tax (drift from the starting
weights on general text) is within ``select.max_tax`` (:mod:`ftib.stages.grpo_select`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ftib.core import FtibError, RewardContext, Stage, StageResult, build_config
from ftib.core.registry import REWARDS, Registry
from ftib.core.train import LossOutput, ParamGroup, TrainConfig, Trainer
from ftib.data.prompts import read_prompts
from ftib.stages.common import (TrainableConfig, check_drop_share, check_dropped, save_model_dir, select_trainable,
                                trainable_parameter_count, training_bundle)
from ftib.stages.grpo_monitors import (HeldOut, Monitors, MonitorsConfig, alarm_counts, end_at_last_good,
                                       greedy_similarity, split_heldout)
from ftib.stages.grpo_select import AdapterDisabled, Measure, SelectConfig, Selection, general_texts



@dataclass(frozen=True, kw_only=True)
class RewardSpec:
    """One reward term: a registered reward plugin, its weight and its config."""

    name: str
    weight: float = 1.0
    config: dict[str, Any] = field(default_factory=dict)


def _default_rewards() -> tuple[RewardSpec, ...]:
    return (RewardSpec(name="semantic", weight=1.5, config={"model": "ftibworld-encoder"}),
            RewardSpec(name="language", weight=1.0, config={"scripts": ["han"], "threshold": 0.5}))


@dataclass(frozen=True, kw_only=True)
class GRPOConfig:
    """Configuration of the ``grpo`` stage (see the module docstring).

    Attributes:
        data: ``ftibworld[:SIZE[:SEED]]`` or a folder holding the task files.
        tasks: which tasks' prompts to train on (mixed, in one pool).
        max_prompts: use at most this many prompts per task.
        skip_prompts: leave out the first this many prompts of each task's file: the
            records a cold-start SFT (``max_records``) trained on, so GRPO trains on the
            rest, as the semantic-GRPO paper's two-stage design.
        group_size: G, completions per prompt (>= 2).
        max_new_tokens, temperature, top_p, top_k: sampling (``top_k: 0`` = no top-k
            filter, as TRL; transformers' own default would otherwise apply top-k 50).
        sampler: how rollouts are sampled: ``ftib`` (:func:`sample_completions`: a KV-cache
            loop that prefills each prompt once for its G completions, drops finished
            rows and samples the nucleus without sorting the vocabulary) or
            ``transformers`` (``model.generate``). Both sample the same distribution.
        max_prompt_length: token limit of a prompt (its chat encoding with the
            generation prompt).
        overflow: what a longer prompt gets: ``error`` (stop, naming its file and id) or
            ``drop`` (counted in ``prompts_dropped``, warned with the first ids). There is
            no ``truncate``: cutting a prompt would cut the question (left-cutting, as
            older TRL did, also cuts the chat template's opening), and TRL 1.16's
            GRPOConfig has no ``max_prompt_length`` at all (deprecated in GRPOTrainer,
            huggingface/trl#4300, then removed; TRL's advice, e.g. DPOConfig's
            deprecation in #4969, is to filter overlong prompts out of the data):
            ``drop`` is that filter, counted.
        max_drop_share: more than this share of dropped prompts is an error naming them
            (default 1%, as the chat stages).
        enable_thinking: passed to the model's chat template for the prompts (``False``:
            Qwen3's empty think block closes the prompt, the model answers directly;
            ``None``: the template's default). Rewards always score the answer after
            any think block (:func:`ftib.models.chat.strip_thinking`).
        rewards: reward terms, summed with their weights.
        beta: KL coefficient (0 skips the reference model).
        num_iterations: optimiser steps per rollout (TRL's ``num_iterations``, mu in
            DeepSeekMath's Algorithm 1): each rollout batch is reused for this many steps,
            the clipped ratio against the log-probs of the policy that sampled it.
        epsilon_low, epsilon_high: clip range of the ratio (for ``cispo``, epsilon_high
            is the ratio cap itself, as TRL).
        loss_type: ``grpo | bnpo | dr_grpo | dapo | cispo | sapo | luspo | vespo``, each
            defined as TRL 1.16 defines it (:mod:`ftib.kernels.reference.grpo_loss`).
        importance_sampling_level: ``token`` or ``sequence`` (GSPO).
        delta: two-sided clip cap of the ratio (INTELLECT-2); None = off.
        use_bias_correction_kl: multiply the KL term by the ratio (TRL's default).
        sapo_temperature_pos, sapo_temperature_neg, vespo_k_pos, vespo_lambda_pos,
            vespo_k_neg, vespo_lambda_neg: SAPO's and VESPO's parameters (TRL's defaults).
        scale_rewards: advantage scaling ``group | batch | none``.
        kernel_impl: implementation of the advantage and loss kernels (``auto`` picks by
            device and logs it; ``reference`` runs the eager references).
        trainable: full or LoRA.
        monitors: thresholds and ``on_alarm`` of the reward-hacking and drift monitors
            (:mod:`ftib.stages.grpo_monitors`).
        select: checkpoint selection under an alignment-tax budget
            (:mod:`ftib.stages.grpo_select`): the output is the evaluated checkpoint with
            the best held-out metric whose tax is within ``max_tax``; ``None`` (default):
            off, the output is the last step's weights.
        train: the shared loop; ``batch_size`` is the number of prompts per micro-batch.
    """

    data: str = "ftibworld"
    tasks: tuple[Literal["translation", "headline"], ...] = ("translation",)
    max_prompts: int | None = None
    skip_prompts: int = 0
    group_size: int = 4
    max_new_tokens: int = 32
    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 0
    sampler: Literal["ftib", "transformers"] = "ftib"
    max_prompt_length: int = 256
    overflow: Literal["error", "drop"] = "drop"
    max_drop_share: float = 0.01
    enable_thinking: bool | None = False
    rewards: tuple[RewardSpec, ...] = field(default_factory=_default_rewards)
    beta: float = 0.0
    num_iterations: int = 1
    epsilon_low: float = 0.2
    epsilon_high: float | None = None
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    importance_sampling_level: Literal["token", "sequence"] = "token"
    delta: float | None = None
    use_bias_correction_kl: bool = True
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    scale_rewards: Literal["group", "batch", "none"] = "group"
    kernel_impl: Literal["auto", "reference"] = "auto"
    trainable: TrainableConfig = TrainableConfig(mode="full")
    monitors: MonitorsConfig = MonitorsConfig()
    select: SelectConfig | None = None
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, batch_size=4, max_grad_norm=1.0))

    def __post_init__(self) -> None:
        from ftib.data.sources import check_spec

        check_spec(self.data, "data")
        if self.skip_prompts < 0:
            raise ValueError(f"skip_prompts must be >= 0, got {self.skip_prompts}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_iterations < 1:
            raise ValueError(f"num_iterations must be >= 1 (optimiser steps per rollout), got {self.num_iterations}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (group-relative advantages need a group), got {self.group_size}")
        if not self.tasks:
            raise ValueError("tasks: name at least one of translation, headline")
        if not 0 < self.temperature or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("temperature must be > 0, top_p in (0, 1] and top_k >= 0")
        if not self.rewards:
            raise ValueError("rewards: configure at least one reward")
        check_drop_share(self.max_drop_share)
        from ftib.kernels.grpo_loss import check_objective

        # TRL's rejections (unknown loss type / level) and warnings (odd combinations).
        check_objective(self.loss_type, self.importance_sampling_level, delta=self.delta, where="grpo")
        if not (self.sapo_temperature_pos > 0 and self.sapo_temperature_neg > 0):
            raise ValueError("sapo_temperature_pos and sapo_temperature_neg must be > 0")
        reg = Registry()
        for i, spec in enumerate(self.rewards):
            cls = reg.load(REWARDS, spec.name)
            build_config(cls.Config, spec.config, where=f"rewards[{i}].config")
            if not math.isfinite(spec.weight):
                raise ValueError(f"rewards[{i}].weight must be finite")
        try:
            self.monitors.check_rewards([spec.name for spec in self.rewards])
        except ValueError as exc:
            raise ValueError(f"monitors.{exc}") from None
        if self.select is not None:
            try:
                self.select.check_rewards([spec.name for spec in self.rewards])
            except ValueError as exc:
                raise ValueError(f"select.{exc}") from None


@dataclass
class Rollout:
    """One micro-batch after sampling and scoring."""

    prompt_ids: torch.Tensor  # (B, P) left-padded, one row per prompt (N = B * G)
    prompt_mask: torch.Tensor  # (B, P)
    completion_ids: torch.Tensor  # (N, C)
    completion_mask: torch.Tensor  # (N, C)
    advantages: torch.Tensor  # (N,)
    ref_logps: torch.Tensor | None
    metrics: dict[str, float]
    # (N, C) float32 log-probs of the policy that sampled, filled by the first optimisation
    # pass over this rollout when num_iterations > 1 (None before it: ratio 1).
    old_logps: torch.Tensor | None = None

    def reused(self) -> Rollout:
        """This rollout for another optimisation pass: same tensors, its rollout-time
        costs not counted again."""
        metrics = {k: (0.0 if k in _ROLLOUT_TIMES else v) for k, v in self.metrics.items()}
        metrics["rollout_reused"] = 1.0
        return dataclasses.replace(self, metrics=metrics)


_ROLLOUT_TIMES = ("time/generation_s", "time/reward_s", "time/ref_logps_s")


class _Rewards:
    """The configured reward plugins, weighted."""

    def __init__(self, specs: tuple[RewardSpec, ...], device: str, seed: int, data: str = "ftibworld") -> None:
        reg = Registry()
        self.terms = []
        for i, spec in enumerate(specs):
            cls = reg.load(REWARDS, spec.name)
            reward = cls(build_config(cls.Config, dict(spec.config), where=f"rewards[{i}].config"))
            # Every reward takes what it needs from the run in bind (Reward's contract).
            reward.bind(RewardContext(device=device, data=str(data), seed=seed))
            self.terms.append((spec.name, spec.weight, reward))

    def __call__(self, prompts, completions, references, metadata
                 ) -> tuple[torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
        """Weighted sum of the rewards (N,) float32, their metrics and each term's own (N,)
        values (for the monitors). A reward may return
        NaN for a completion it cannot score; as in TRL 1.16 (grpo_trainer.py lines
        2755-2768) the sum skips NaN terms and a completion no reward could score is NaN
        (its advantage is then 0). +-inf is an error."""
        n = len(completions)
        total = torch.zeros(n, dtype=torch.float32)
        scored = torch.zeros(n, dtype=torch.bool)
        metrics: dict[str, float] = {}
        per_term: dict[str, torch.Tensor] = {}
        for name, weight, reward in self.terms:
            r = reward(prompts, completions, references, metadata).float().cpu()
            if r.shape != total.shape:
                raise FtibError(f"reward {name!r} returned shape {tuple(r.shape)}, expected ({n},)")
            if torch.isinf(r).any():
                bad = int(torch.isinf(r).sum())
                raise FtibError(f"reward {name!r} returned {bad} infinite value(s); fix the reward or its inputs "
                                "(NaN marks a completion it cannot score)")
            ok = ~torch.isnan(r)
            per_term[name] = r
            scored |= ok
            total += torch.where(ok, weight * r, 0.0)
            metrics[f"reward/{name}_mean"] = float(r[ok].mean()) if ok.any() else float("nan")
            metrics[f"reward/{name}_std"] = float(r[ok].std()) if int(ok.sum()) > 1 else 0.0
            metrics[f"reward/{name}_unscorable"] = float((~ok).float().mean())
        total[~scored] = float("nan")
        metrics["reward_unscorable"] = float((~scored).float().mean())
        return total, metrics, per_term


def completion_mask(ids: torch.Tensor, stop_ids: set[int], pad_id: int) -> torch.Tensor:
    """1 up to and including the first stop token of each row, 0 after it."""
    is_stop = torch.zeros_like(ids, dtype=torch.bool)
    for s in stop_ids:
        is_stop |= ids == s
    after = (torch.cumsum(is_stop.int(), dim=1) - is_stop.int()) > 0
    return (~after).long()


def token_logps(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                completion_ids: torch.Tensor, completion_mask: torch.Tensor, temperature: float = 1.0,
                group_size: int = 1, impl: str = "auto") -> torch.Tensor:
    """Per-token log-probs of ``completion_ids`` under ``model`` at ``temperature`` (no grad):
    (N, C) float32, 0 at padding. The numbers come from the GRPO loss kernel's no-grad
    path (:func:`ftib.kernels.grpo_loss.token_logps`), the one implementation of
    per-token log-probs on the GRPO path. The temperature is the sampling one, as in the
    loss, so that the KL term compares the policy and the reference on the same
    distribution (TRL too)."""
    from ftib.kernels.grpo_loss import token_logps as kernel_logps

    with torch.no_grad():
        hidden = completion_hidden(model, prompt_ids, prompt_mask, completion_ids, completion_mask, group_size)
        head = model.get_output_embeddings()
        return kernel_logps(hidden, head.weight, completion_ids, completion_mask, bias=getattr(head, "bias", None),
                            temperature=temperature, impl=impl)


def sample_next_token(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                      max_rounds: int = 8) -> torch.Tensor:
    """One token per row of ``logits`` (N, V), sampled from ``softmax(logits / temperature)``
    restricted to the ``top_k`` most likely tokens (0 = all) and then to the top-p nucleus:
    (N,) int64. Same distribution as transformers' temperature -> top-k -> top-p warpers.

    The nucleus is found without sorting the vocabulary (a (N, V) sort dominates sampling
    on the CPU): a token is in the nucleus iff the probability mass of the tokens strictly
    more likely than it is < ``top_p`` (the rule of transformers' ``TopPLogitsWarper``;
    the most likely token always qualifies). So draw from the full distribution by
    inverse CDF (one uniform per row) and accept the draw when it is in the nucleus:
    accepted draws follow the distribution restricted to the nucleus and renormalised,
    i.e. exactly top-p sampling; a row accepts with probability = the nucleus mass >=
    ``top_p``. Rows still rejected after ``max_rounds`` draws are sampled by sorting.
    """
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    cdf = probs.cumsum(-1)
    last = probs.shape[-1] - 1

    def draw(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        u = torch.rand(p.shape[0], 1, device=p.device) * c[:, -1:]
        return torch.searchsorted(c, u, right=True).clamp_(max=last)

    if top_p >= 1.0:
        return draw(probs, cdf).squeeze(1)

    def rejected(p: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        # The mass strictly above the drawn token's probability reaches top_p: outside.
        return torch.where(p > p.gather(1, idx), p, 0.0).sum(-1) >= top_p

    out = draw(probs, cdf).squeeze(1)  # round 1, every row: no gathers
    todo = rejected(probs, out[:, None]).nonzero().squeeze(1)
    for _ in range(max_rounds - 1):
        if todo.numel() == 0:
            return out
        p = probs[todo]
        idx = draw(p, cdf[todo])
        bad = rejected(p, idx)
        out[todo] = torch.where(bad, out[todo], idx[:, 0])
        todo = todo[bad]
    if todo.numel() == 0:
        return out
    sp, si = probs[todo].sort(-1, descending=True)
    sp = sp.masked_fill(sp.cumsum(-1) - sp >= top_p, 0.0)
    out[todo] = si.gather(1, torch.multinomial(sp, 1)).squeeze(1)
    return out


def sample_completions(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                       group_size: int, max_new_tokens: int, stop_ids: set[int], pad_id: int,
                       temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                       decode: str = "auto") -> torch.Tensor:
    """Sample ``group_size`` completions of every prompt with a KV cache: (B*G, C) int64,
    completions of prompt ``b`` in rows ``b*G .. b*G+G-1``, ``C <= max_new_tokens`` (the
    longest one), ``pad_id`` after a row's first stop token.

    ``input_ids``/``attention_mask``: (B, P), left-padded. Each prompt is prefilled once
    and its cache shared by its G completions (``transformers``' ``generate`` with
    ``num_return_sequences`` prefills every copy); a row that has emitted a stop token
    leaves the batch, so later steps run only the unfinished rows; only the last
    position's logits are projected. Positions are ``cumsum(attention_mask) - 1``, as in
    :func:`completion_hidden`, so the policy that samples and the one that is trained
    see the same inputs. Uses the global torch RNG (seeded by the pipeline, restored on
    resume).

    ``decode="auto"`` runs the decode steps of a Qwen3 / Qwen3-VL language model as
    straight tensor code over a preallocated key/value buffer
    (:class:`ftib.models.decode.FastDecoder`: transformers' operations in transformers'
    order, without its module calls, which are most of a small-batch decode step on the
    CPU); other decoders, and ``decode="modules"``, call the decoder per step (the
    stage logs which, and why, when it starts).
    """
    from transformers import DynamicCache

    from ftib.models.decode import fast_decoder

    decoder = _decoder(model)
    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    B, P = input_ids.shape
    G, N, device = group_size, input_ids.shape[0] * group_size, input_ids.device
    stop = torch.tensor(sorted(stop_ids), device=device)
    if decode not in ("auto", "modules"):
        raise ValueError(f"decode must be 'auto' or 'modules', not {decode!r}")
    fast = fast_decoder(decoder)[0] if decode == "auto" else None
    sdpa = getattr(model.config, "_attn_implementation", None) == "sdpa"
    # Allocated outside inference mode, so the completions stay ordinary tensors that
    # the training forward can embed (and save for backward).
    tokens = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device)
    # inference_mode, not no_grad: no version counters or view tracking on the cache and
    # activations (the rollout ran ~10 % faster on CPU, tiny-qwen3, G4 x 32 tokens).
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                      **{_cache_kw(decoder): cache}, use_cache=True)
        hidden = out.last_hidden_state[:, -1].repeat_interleave(G, 0)
        cache.batch_repeat_interleave(G)
        mask = torch.ones(N, P + max_new_tokens, dtype=attention_mask.dtype, device=device)
        mask[:, :P] = attention_mask.repeat_interleave(G, 0)
        if fast is not None:
            fast.start(cache, max_new_tokens, mask)
            del cache
        next_pos = pos[:, -1:].repeat_interleave(G, 0) + 1  # (rows, 1)
        rows = torch.arange(N, device=device)  # batch row -> output row
        width = 0
        for t in range(max_new_tokens):
            logits = torch.nn.functional.linear(hidden, weight, bias)
            tok = sample_next_token(logits, temperature, top_p, top_k)
            tokens[rows, t] = tok
            width = t + 1
            if t == max_new_tokens - 1:
                break
            done = torch.isin(tok, stop)
            if bool(done.any()):
                keep = (~done).nonzero().squeeze(1)
                if keep.numel() == 0:
                    break
                rows, tok, next_pos, mask = rows[keep], tok[keep], next_pos[keep], mask[keep]
                if fast is not None:
                    fast.select(keep)
                else:
                    cache.batch_select_indices(keep)
            if fast is not None:
                hidden = fast.step(tok, next_pos)
            else:
                step_mask = mask[:, : P + t + 1]
                if sdpa:  # one query row: the padding mask is the whole mask, no need to build it
                    step_mask = step_mask[:, None, None, :].bool()
                out = decoder(input_ids=tok[:, None], attention_mask=step_mask, position_ids=next_pos,
                              **{_cache_kw(decoder): cache}, use_cache=True)
                hidden = out.last_hidden_state[:, -1]
            next_pos = next_pos + 1
    return tokens[:, :width]


@functools.lru_cache(maxsize=None)
def _cache_kw_of(cls: Any) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def _cache_kw(decoder: torch.nn.Module) -> str:
    """The decoder's name for its cache argument: ``cache`` (transformers >= 5.2x, where
    ``past_key_values`` is deprecated, to go in 5.40) or ``past_key_values``."""
    cls: Any = type(decoder)
    return _cache_kw_of(cls)


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def _activation_checkpointing(model: torch.nn.Module) -> bool:
    flag = getattr(model, "is_activation_checkpointing", None)  # transformers >= 5.x
    if flag is None:
        flag = getattr(model, "is_gradient_checkpointing", False)
    return bool(flag)


def completion_hidden(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                      completion_ids: torch.Tensor, completion_mask: torch.Tensor, group_size: int = 1, *,
                      share_prompt: bool = True) -> torch.Tensor:
    """Last hidden states at the positions that predict each completion token: (N, C, H).

    ``prompt_ids``/``prompt_mask``: (B, P), left-padded, one row per prompt;
    ``completion_ids``/``completion_mask``: (N, C) with N = B * G, the completions of
    prompt b in rows ``b*G .. b*G+G-1`` (as a rollout's are). Each prompt then runs once
    and its keys/values serve its G completions — the same attention, positions and
    result as the plain forward over the N concatenated rows, with the prompt's share of
    the forward and backward divided by G (prompts are most of a GRPO batch's tokens).
    ``share_prompt=False`` (and gradient checkpointing, which needs the plain forward
    without a cache) runs that plain forward; only it expands the prompt tokens G times.
    With dropout the G rows share the prompt's dropout mask (Qwen3 uses none).
    """
    G = group_size
    B, P = prompt_ids.shape
    N, C = completion_ids.shape
    if N != B * G:
        raise ValueError(f"completion_hidden: {N} completions for {B} prompts x group_size {G}")
    decoder = _decoder(model)
    # Positions are cumsum(attention_mask) - 1 over prompt + completion, as in sampling.
    prompt_pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    comp_pos = (prompt_mask.sum(-1, keepdim=True).repeat_interleave(G, 0) + completion_mask.cumsum(-1) - 1).clamp(min=0)
    full_mask = torch.cat([prompt_mask.repeat_interleave(G, 0), completion_mask.to(prompt_mask.dtype)], dim=1)
    if not share_prompt or G == 1 or _activation_checkpointing(model):
        ids = torch.cat([prompt_ids.repeat_interleave(G, 0), completion_ids], dim=1)
        pos = torch.cat([prompt_pos.repeat_interleave(G, 0), comp_pos], dim=1)
        out = decoder(input_ids=ids, attention_mask=full_mask, position_ids=pos, use_cache=False)
        return out.last_hidden_state[:, P - 1 : P - 1 + C]
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    prompt = decoder(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_pos,
                     **{_cache_kw(decoder): cache}, use_cache=True)
    first = prompt.last_hidden_state[:, -1:].repeat_interleave(G, 0)  # predicts completion token 0
    if C == 1:
        return first
    cache.batch_repeat_interleave(G)
    rest = decoder(input_ids=completion_ids[:, : C - 1], attention_mask=full_mask[:, : P + C - 1],
                   position_ids=comp_pos[:, : C - 1], **{_cache_kw(decoder): cache}, use_cache=True)
    return torch.cat([first, rest.last_hidden_state], dim=1)


class _GRPOTask:
    """The loop's view of GRPO: a micro-batch is a list of prompts; ``collate`` rolls out."""

    # The loss runs the decoder and lm_head weight directly (not ``model(...)``), which
    # FSDP2's root hooks cannot see; distributed GRPO uses ddp (rollouts per rank).
    supports_fsdp2 = False
    # Phases timed inside collate (the rollout): reported apart from the loop's data time.
    collate_times = _ROLLOUT_TIMES

    def __init__(self, stage_cfg: GRPOConfig, model, groups: list[ParamGroup], chat, prompts, rewards: _Rewards,
                 ref_model, save, logger, monitors: Monitors, selection: Selection | None = None) -> None:
        self.monitors, self.selection = monitors, selection
        self.cfg, self.model, self._groups, self.chat = stage_cfg, model, groups, chat
        self.prompts, self.rewards, self.ref_model, self._save, self.log = prompts, rewards, ref_model, save, logger
        tok = chat.tokenizer
        # Every eos id of the generation config (Qwen3: <|im_end|> and <|endoftext|>).
        self.stop_ids = set(chat.stop_ids(model))
        self.pad_id = tok.pad_token_id
        # "reference": the eager references of both ops (advantages' is impl="torch").
        ref = stage_cfg.kernel_impl == "reference"
        self.adv_impl, self.loss_impl = ("torch", "reference") if ref else ("auto", "auto")
        c = stage_cfg
        self.objective = dict(
            beta=c.beta, epsilon_low=c.epsilon_low, epsilon_high=c.epsilon_high, loss_type=c.loss_type,
            importance_sampling_level=c.importance_sampling_level, delta=c.delta,
            use_bias_correction_kl=c.use_bias_correction_kl, sapo_temperature_pos=c.sapo_temperature_pos,
            sapo_temperature_neg=c.sapo_temperature_neg, vespo_k_pos=c.vespo_k_pos,
            vespo_lambda_pos=c.vespo_lambda_pos, vespo_k_neg=c.vespo_k_neg, vespo_lambda_neg=c.vespo_lambda_neg,
        )
        # num_iterations > 1: the rollout of each micro-batch slot, reused until its cycle ends.
        self._calls = 0
        self._buffer: dict[int, Rollout] = {}
        if c.sampler == "ftib":
            from ftib.models.decode import fast_decoder

            fast, why = fast_decoder(_decoder(model))
            if fast is not None:
                logger.info("rollout decode: ftib's fused step over %d %s layers (models/decode.py)",
                            len(fast.layers), type(fast.text.layers[0]).__name__)
            else:
                logger.info("rollout decode: transformers' modules per step (%s)", why)

    def param_groups(self):
        return self._groups

    def train_samples(self):
        return self.prompts

    # -- rollout -----------------------------------------------------------------------
    def collate(self, items: list[dict[str, Any]]) -> Rollout:
        """Roll out ``items``, or, inside a ``num_iterations`` cycle, return this micro-batch
        slot's rollout again (the loop still draws prompts every step; those drawn on the
        reuse steps are not rolled out, as in TRL a rollout batch stands for k steps)."""
        k = self.cfg.num_iterations
        step, slot = divmod(self._calls, self.cfg.train.grad_accum)
        self._calls += 1
        if k > 1 and step % k != 0 and slot in self._buffer:
            return self._buffer[slot].reused()
        # A resumed run starts a new cycle: the buffer is not part of step checkpoints.
        r = self._rollout(items)
        if k > 1:
            self._buffer[slot] = r
        return r

    def _sample(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B*G, C) completion ids of the left-padded prompt batch."""
        cfg = self.cfg
        if cfg.sampler == "ftib":
            return sample_completions(self.model, batch["input_ids"], batch["attention_mask"],
                                      group_size=cfg.group_size, max_new_tokens=cfg.max_new_tokens,
                                      stop_ids=self.stop_ids, pad_id=self.pad_id, temperature=cfg.temperature,
                                      top_p=cfg.top_p, top_k=cfg.top_k)
        with torch.no_grad():
            out = self.model.generate(**batch, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                                      top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
                                      num_return_sequences=cfg.group_size, eos_token_id=sorted(self.stop_ids),
                                      pad_token_id=self.pad_id)
        return out[:, batch["input_ids"].shape[1] :]

    def _rollout(self, items: list[dict[str, Any]]) -> Rollout:
        from ftib.kernels.advantages import group_advantages
        from ftib.data.scripts import script_share

        cfg, G = self.cfg, self.cfg.group_size
        device = next(self.model.parameters()).device
        t0 = time.perf_counter()
        encs = [self.chat.encode([{"role": "user", "content": it["prompt"]}], add_generation_prompt=True,
                                 enable_thinking=cfg.enable_thinking) for it in items]
        for it, e in zip(items, encs):
            if e["input_ids"].numel() > cfg.max_prompt_length:
                raise FtibError(f"prompt {it['id']} has {e['input_ids'].numel()} tokens, more than "
                                f"max_prompt_length={cfg.max_prompt_length}; raise it or shorten the data")
        for e in encs:
            e.pop("labels")
        batch = self.chat.collate(encs, padding_side="left")
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        was_training = self.model.training
        self.model.eval()
        try:
            comp = self._sample(batch)
        finally:
            self.model.train(was_training)
        t_gen = time.perf_counter() - t0
        if comp.shape[1] == 0:
            comp = torch.full((comp.shape[0], 1), self.pad_id, dtype=comp.dtype, device=comp.device)
        cmask = completion_mask(comp, self.stop_ids, self.pad_id)
        comp = comp.masked_fill(cmask == 0, self.pad_id)
        from ftib.models.chat import strip_thinking

        split = [strip_thinking(self.chat.decode(row[m.bool()])) for row, m in zip(comp, cmask)]
        texts = [answer for answer, _ in split]  # what the rewards score: the answer, no think block
        rep = [it for it in items for _ in range(G)]
        t1 = time.perf_counter()
        rewards, rmetrics, per_term = self.rewards([r["prompt"] for r in rep], texts, [r["reference"] for r in rep],
                                         [{"target_scripts": r["target_scripts"], "task": r["task"]} for r in rep])
        t_rew = time.perf_counter() - t1
        adv = group_advantages(rewards.to(device), G, scale=cfg.scale_rewards, impl=self.adv_impl)
        t2 = time.perf_counter()
        ref = None
        if cfg.beta != 0.0:
            ref = self._ref_logps(batch["input_ids"], batch["attention_mask"], comp, cmask)
        t_ref = time.perf_counter() - t2
        lengths = cmask.sum(1).float()
        shares = [script_share(t, r["target_scripts"]) for t, r in zip(texts, rep)]
        in_lang = [s >= 0.5 for s in shares]
        by_task = {}
        if len(cfg.tasks) > 1:
            for task in cfg.tasks:
                sel = [i for i, r in enumerate(rep) if r["task"] == task]
                if sel:
                    by_task[f"reward/task_{task}_mean"] = float(rewards[sel].nanmean())
        unscorable = torch.isnan(rewards)
        if bool(unscorable.any()):
            self.log.warning("%d of %d completions could not be scored by any reward (advantage 0); first prompt: %s",
                             int(unscorable.sum()), len(rep), rep[int(unscorable.nonzero()[0])]["id"])
        scored = rewards[~unscorable]
        metrics = {
            "reward_mean": float(scored.mean()) if scored.numel() else float("nan"),
            "reward_std": float(scored.std()) if scored.numel() > 1 else 0.0, **by_task,
            "zero_std_groups": float(adv.zero_std_fraction), **rmetrics,
            "completion_len_mean": float(lengths.mean()), "completion_len_max": float(lengths.max()),
            "target_language_share": sum(in_lang) / len(in_lang),
            "think_block_share": sum(rule != "none" for _, rule in split) / len(split),
            "time/generation_s": t_gen, "time/reward_s": t_rew, "time/ref_logps_s": t_ref,
            **self.monitors.rollout_metrics(per_term, shares),
        }
        return Rollout(batch["input_ids"], batch["attention_mask"], comp, cmask, adv.advantages, ref, metrics)

    def _ref_logps(self, prompt_ids, prompt_mask, comp, cmask) -> torch.Tensor:
        kw = dict(temperature=self.cfg.temperature, group_size=self.cfg.group_size, impl=self.loss_impl)
        if self.ref_model is not None:
            return token_logps(self.ref_model, prompt_ids, prompt_mask, comp, cmask, **kw)
        with self.model.disable_adapter():
            return token_logps(self.model, prompt_ids, prompt_mask, comp, cmask, **kw)

    # -- loss ----------------------------------------------------------------------------
    def loss_normaliser(self, r: Rollout) -> float:
        """The loop divides the summed micro-batch losses by the sum of these over the step
        (all micro-batches, all ranks): that division is the only normalisation applied
        outside the kernel. Token-sum loss types (dapo, cispo, vespo) count completion
        tokens, so the divisor is TRL's global ``num_items_in_batch``; the kernel sums.
        The others normalise inside the kernel per micro-batch, and count 1, so the loop
        averages the micro-batches as TRL divides by ``gradient_accumulation_steps``."""
        from ftib.kernels.grpo_loss import SUM_NORMALISED

        return float(r.completion_mask.sum()) if self.cfg.loss_type in SUM_NORMALISED else 1.0

    def compute_loss(self, r: Rollout) -> LossOutput:
        from ftib.kernels.grpo_loss import SUM_NORMALISED, fused_linear_grpo_loss

        cfg = self.cfg
        t0 = time.perf_counter()
        hidden = completion_hidden(self.model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                   cfg.group_size)
        head = self.model.get_output_embeddings()
        weight = head.weight
        # Under the loop's autocast the op casts hidden/weight to the autocast dtype itself
        # (its autocast rule), so the GEMMs run in bf16 against the float32 master weight.
        out = fused_linear_grpo_loss(
            hidden, weight, r.completion_ids, r.completion_mask, r.advantages, bias=getattr(head, "bias", None),
            old_logps=r.old_logps, ref_logps=r.ref_logps, **self.objective,
            # Token-sum types: the kernel sums, the loop divides by the global token count.
            num_items_in_batch=1.0 if cfg.loss_type in SUM_NORMALISED else None,
            max_completion_length=cfg.max_new_tokens if cfg.loss_type == "dr_grpo" else None,
            temperature=cfg.temperature, impl=self.loss_impl, compute_entropy=self.monitors.needs_entropy,
        )
        if cfg.num_iterations > 1 and r.old_logps is None:
            # First pass over this rollout: the policy has not moved since it sampled, so
            # these log-probs are the old ones (what a separate no-grad forward at rollout
            # time would give, without running it); the later passes take the ratio to them.
            r.old_logps = out.logps.detach()
        metrics = dict(r.metrics)
        metrics.update({k: float(v) for k, v in out.metrics.items()})
        metrics["time/loss_fwd_s"] = time.perf_counter() - t0
        # The loop divides by the sum of loss_normaliser over the step (see there).
        return LossOutput(loss=out.loss, tokens=int(r.completion_mask.sum()),
                          samples=r.completion_ids.shape[0], metrics=metrics)

    def after_step(self, step, metrics, history):
        """The loop's hook: the monitors' verdict on this step, then (unless a monitor
        stops the stage here: these weights were measured bad) the checkpoint selection's
        evaluation."""
        check = self.monitors.after_step(step, metrics, history)
        if self.selection is None or check.stop is not None:
            return check
        return dataclasses.replace(check, metrics={**check.metrics, **self.selection.after_step(step, history)})

    def save_model(self, out_dir: Path) -> None:
        self._save(out_dir)


def _heldout(cfg: GRPOConfig, model, chat, rewards: _Rewards, prompts: list[dict[str, Any]],
             reward_name: str) -> HeldOut | None:
    """A held-out evaluation (the monitors', the selection's): greedy completions scored
    by the reward term ``reward_name``."""
    if not prompts:
        return None
    reward = next(r for name, _, r in rewards.terms if name == reward_name)
    stop_ids, pad_id = sorted(set(chat.stop_ids(model))), chat.tokenizer.pad_token_id

    def score(items):
        return greedy_similarity(model, chat, reward, items, max_new_tokens=cfg.max_new_tokens, stop_ids=stop_ids,
                                 pad_id=pad_id, enable_thinking=cfg.enable_thinking)

    return HeldOut(prompts=prompts, score=score)


def _selection(cfg: GRPOConfig, sel: SelectConfig, model, ref_model, chat, rewards: _Rewards,
               prompts: list[dict[str, Any]], ctx) -> Selection:
    """The checkpoint selection: its held-out metric (greedy completions of ``prompts``
    scored by ``sel.reward``) and its alignment tax against the stage's starting weights
    (the LoRA base with the adapter disabled, the KL reference of a full stage with
    ``beta > 0``, else a frozen copy made here)."""
    from ftib.models.drift import alignment_tax

    held = _heldout(cfg, model, chat, rewards, prompts, sel.reward)
    assert held is not None
    if cfg.trainable.mode == "lora":
        reference: Any = AdapterDisabled(model)
    elif ref_model is not None:
        reference = ref_model
    else:
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    texts = general_texts(sel.tax_data, sel.tax_texts, ctx.logger)
    tok = chat.tokenizer

    def tax() -> dict[str, float]:
        return alignment_tax(reference, tok, model, tok, texts, max_length=sel.tax_max_length)[0]

    ctx.logger.info("checkpoint selection: %s on %d held-out prompts and %s <= %g on %d general texts, every %d "
                    "steps", sel.metric, len(prompts), sel.tax, sel.max_tax, len(texts), sel.every)
    return Selection(sel, measure=Measure(score=lambda: held.score(held.prompts), tax=tax),
                     max_steps=cfg.train.max_steps,
                     stop_patience=cfg.monitors.patience if cfg.monitors.on_alarm == "stop" else None,
                     work_dir=ctx.work_dir, is_main=ctx.dist.is_main, logger=ctx.logger)


def _context_length(model: torch.nn.Module) -> int | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if n else None


def _fitting_prompts(prompts: list[dict[str, Any]], chat, cfg: GRPOConfig, logger: Any
                     ) -> tuple[list[dict[str, Any]], list[str]]:
    """The prompts whose chat encoding has at most ``cfg.max_prompt_length`` tokens, and
    labels (file, id, length) of the others, under ``cfg.overflow``: ``error`` stops at
    the first longer prompt; ``drop`` warns about the dropped ones and stops past
    ``cfg.max_drop_share`` (:func:`~ftib.stages.common.check_dropped`, as the chat stages)."""
    keep, dropped = [], []
    limit = f"max_prompt_length={cfg.max_prompt_length}"
    for p in prompts:
        n = chat.encode([{"role": "user", "content": p["prompt"]}], add_generation_prompt=True,
                        enable_thinking=cfg.enable_thinking)["input_ids"].numel()
        if n <= cfg.max_prompt_length:
            keep.append(p)
            continue
        label = f"{p['source']} (id {p['id']}) ({n} tokens)"
        if cfg.overflow == "error":
            raise FtibError(f"{label} exceed {limit} (overflow: error; raise max_prompt_length, shorten the "
                            "prompt or set overflow: drop)")
        dropped.append(label)
    check_dropped(dropped, len(prompts), what="prompts", limit=limit, max_drop_share=cfg.max_drop_share,
                  logger=logger, hint="raise max_prompt_length or shorten the data")
    return keep, dropped


class GRPOStage(Stage):
    """Group-relative policy optimisation with semantic and language rewards."""

    Config = GRPOConfig

    def run(self, ctx):
        cfg: GRPOConfig = self.config
        bundle = training_bundle(ctx, cfg.trainable)
        context = _context_length(bundle.model)
        if context is not None and cfg.max_prompt_length + cfg.max_new_tokens > context:
            raise FtibError(f"max_prompt_length + max_new_tokens = {cfg.max_prompt_length} + {cfg.max_new_tokens} "
                            f"exceeds the model's context of {context} tokens (max_position_embeddings); "
                            "lower one of them")
        prompts, dropped = _fitting_prompts(read_prompts(cfg.data, cfg.tasks, cfg.max_prompts, cfg.skip_prompts),
                                            bundle.chat, cfg, ctx.logger)
        if not prompts:
            raise FtibError(f"every prompt has more than max_prompt_length={cfg.max_prompt_length} tokens; "
                            "raise it or shorten the data")
        n_total = len(dropped) + len(prompts)
        prompts, heldout = split_heldout(prompts, cfg.monitors.heldout_prompts)
        select_prompts: list[dict[str, Any]] = []
        if cfg.select is not None:
            if cfg.select.heldout_prompts >= len(prompts):
                raise FtibError(f"select.heldout_prompts={cfg.select.heldout_prompts} would hold out all "
                                f"{len(prompts)} prompts left for training; lower it")
            prompts, select_prompts = split_heldout(prompts, cfg.select.heldout_prompts)
        # GRPO prompts are text (read_prompts): a VLM's vision token rows stay fixed
        model, groups = select_trainable(bundle.model, cfg.trainable, text_only=True, logger=ctx.logger)
        ctx.logger.info("%d prompts (%s) to train on, %d held out for the monitors, %d for checkpoint "
                        "selection; trainable parameters: %d", len(prompts), ", ".join(cfg.tasks), len(heldout),
                        len(select_prompts), trainable_parameter_count(groups))
        ref_model = None
        if cfg.beta != 0.0 and cfg.trainable.mode != "lora":
            ref_model = copy.deepcopy(model).eval()
            for p in ref_model.parameters():
                p.requires_grad_(False)
        rewards = _Rewards(cfg.rewards, ctx.device, ctx.seed, cfg.data)

        def save(out_dir):
            save_model_dir(model, out_dir, processor=bundle.chat, save_adapter=cfg.trainable.lora.save_adapter)

        monitors = Monitors(cfg.monitors, beta=cfg.beta, reward_names=[s.name for s in cfg.rewards],
                            heldout=_heldout(cfg, model, bundle.chat, rewards, heldout,
                                             cfg.monitors.semantic_reward), logger=ctx.logger)
        selection = None
        if cfg.select is not None:
            selection = _selection(cfg, cfg.select, model, ref_model, bundle.chat, rewards, select_prompts, ctx)
        task = _GRPOTask(cfg, model, groups, bundle.chat, prompts, rewards, ref_model, save, ctx.logger, monitors,
                         selection)
        trainer = Trainer(task, cfg.train, ctx)
        # on_alarm: stop and the selection's fallback may have to end at the starting
        # weights (read before train() loads a resumed step: the stage's input model).
        start = trainer.trainable_state() if cfg.monitors.on_alarm == "stop" or selection is not None else None
        if selection is not None:
            selection.bind(state=trainer.trainable_state, steps_dir=trainer.steps_dir)
        with trainer.autocast():
            monitors.begin(resumed=ctx.resume_from is not None)
            if selection is not None:
                selection.begin(resumed=ctx.resume_from is not None)
        result = trainer.train()
        # Every step's metrics, restored from the step checkpoint on resume: the summary
        # does not depend on interruptions or on what else metrics.jsonl holds.
        mine = [r for r in result.history if "reward_mean" in r]
        metrics = dict(result.metrics)
        metrics["prompts_dropped"] = float(len(dropped))
        metrics["prompts_total"] = float(n_total)  # held-out prompts included
        metrics["prompts_heldout"] = float(len(heldout) + len(select_prompts))
        metrics.update(alarm_counts(result.history))
        chosen = None
        if selection is not None:
            assert start is not None
            sel_metrics, chosen = selection.finish(result.history, result.stopped, trainer.load_trainable, start)
            metrics.update(sel_metrics)
        if result.stopped is not None:
            metrics.update(end_at_last_good(trainer, result.stopped, cfg.monitors.patience, start, ctx.work_dir,
                                            ctx.logger, chosen=chosen))
        # First vs last 20% of the steps, overall and (several tasks) per task.
        for name, key in [("reward", "reward_mean")] + [(f"reward_{t}", f"reward/task_{t}_mean")
                                                        for t in cfg.tasks if len(cfg.tasks) > 1]:
            vals = [r[key] for r in mine if key in r]
            if vals:
                k = max(1, len(vals) // 5)
                metrics[f"{name}_first_20pct"] = sum(vals[:k]) / k
                metrics[f"{name}_last_20pct"] = sum(vals[-k:]) / k
        return StageResult(checkpoint=trainer.save_final(), metrics=metrics)
