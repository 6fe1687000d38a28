"""GRPO: teach a new language skill by optimising meaning, not surface form.

What it trains: the policy (full, or LoRA adapters — ``trainable``) on prompts of one or
more text tasks: Tibetan→Chinese translation (``translation``) and Tibetan report→headline
(``headline``); data from ``ftibworld[:SIZE[:SEED]]`` (``grpo/translation.jsonl``,
``grpo/headlines.jsonl``) or your own JSON Lines files with the same fields.

One optimiser step (``grad_accum`` micro-batches of ``prompts_per_step`` prompts):

1. *Rollout* — ``generate`` samples G completions per prompt (temperature, top-p,
   ``max_new_tokens``; stop on ``<|im_end|>``/EOS), in eval mode, without gradients.
2. *Rewards* — every configured reward plugin scores the completions against the
   references; the total is their weighted sum (the seed paper: semantic 1.5, language
   1.0). A non-finite reward is an error naming the reward.
3. *Advantages* — group-relative: ``(r - mean_g) / (std_g + 1e-4)`` with the unbiased
   std, as TRL computes it (:func:`ftib.kernels.advantages.group_advantages`).
4. *Reference* — with ``beta > 0`` the per-token log-probs of the reference policy (the
   policy with its adapter disabled for LoRA, else a frozen copy made at the start);
   with ``beta == 0`` the reference is skipped entirely.
5. *Loss* — the clipped surrogate over the lm_head projection without materialising
   (tokens, V) logits (:func:`ftib.kernels.grpo_loss.fused_linear_grpo_loss`), with the
   configured ``loss_type`` normalisation. Across micro-batches the loop combines the
   losses weighted by each one's own normaliser, so accumulation over prompt batches is
   exact for every loss type.

The old-policy log-probs are not needed: one optimiser step per rollout
(``num_iterations = 1``), so the importance ratio is 1 with gradient 1.

Logged per step: reward mean/std overall and per reward, the share of zero-std groups,
KL, clip fractions, completion length mean/max, the share of completions in the target
language, and the time of generation, rewards, reference log-probs and loss+backward
(the optimiser step is the remainder of ``step_time_s``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ftib.core import FtibError, Stage, StageResult, build_config
from ftib.core.registry import REWARDS, Registry
from ftib.core.train import LossOutput, ParamGroup, TrainConfig, Trainer
from ftib.stages.common import TrainableConfig, save_model_dir, select_trainable, trainable_parameter_count, training_bundle

TASK_FILES = {"translation": "grpo/translation.jsonl", "headline": "grpo/headlines.jsonl"}
# (prompt builder field, reference field, target script of the answer)
TASK_FIELDS = {"translation": ("source", "reference", "han"), "headline": ("report", "headline", "tibetan")}


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
        group_size: G, completions per prompt (>= 2).
        max_new_tokens, temperature, top_p: sampling.
        max_prompt_length: prompts longer than this (tokens) are dropped and counted.
        rewards: reward terms, summed with their weights.
        beta: KL coefficient (0 skips the reference model).
        epsilon_low, epsilon_high: clip range of the ratio.
        loss_type: ``grpo | dr_grpo | dapo | bnpo``.
        scale_rewards: advantage scaling ``group | batch | none``.
        kernel_impl: implementation of the advantage and loss kernels (``auto`` picks by
            device and logs it; ``reference`` runs the eager references).
        trainable: full or LoRA.
        train: the shared loop; ``batch_size`` is the number of prompts per micro-batch.
    """

    data: str = "ftibworld"
    tasks: tuple[Literal["translation", "headline"], ...] = ("translation",)
    max_prompts: int | None = None
    group_size: int = 4
    max_new_tokens: int = 32
    temperature: float = 0.8
    top_p: float = 0.9
    max_prompt_length: int = 256
    rewards: tuple[RewardSpec, ...] = field(default_factory=_default_rewards)
    beta: float = 0.0
    epsilon_low: float = 0.2
    epsilon_high: float | None = None
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"
    scale_rewards: Literal["group", "batch", "none"] = "group"
    kernel_impl: Literal["auto", "reference"] = "auto"
    trainable: TrainableConfig = TrainableConfig(mode="full")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5, batch_size=4, max_grad_norm=1.0))

    def __post_init__(self) -> None:
        from ftib.data.sources import check_spec

        check_spec(self.data, "data")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (group-relative advantages need a group), got {self.group_size}")
        if not self.tasks:
            raise ValueError("tasks: name at least one of translation, headline")
        if not 0 < self.temperature or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be > 0 and top_p in (0, 1]")
        if not self.rewards:
            raise ValueError("rewards: configure at least one reward")
        reg = Registry()
        for i, spec in enumerate(self.rewards):
            cls = reg.load(REWARDS, spec.name)
            build_config(cls.Config, spec.config, where=f"rewards[{i}].config")
            if not math.isfinite(spec.weight):
                raise ValueError(f"rewards[{i}].weight must be finite")


@dataclass
class Rollout:
    """One micro-batch after sampling and scoring."""

    input_ids: torch.Tensor  # (N, P + C) prompt (left-padded) + completion
    attention_mask: torch.Tensor  # (N, P + C)
    prompt_len: int
    completion_ids: torch.Tensor  # (N, C)
    completion_mask: torch.Tensor  # (N, C)
    advantages: torch.Tensor  # (N,)
    ref_logps: torch.Tensor | None
    metrics: dict[str, float]


def read_prompts(data: str, tasks: tuple[str, ...], max_prompts: int | None = None) -> list[dict[str, Any]]:
    """Prompt records of ``tasks`` from ``data``: ``id, prompt, reference, task, target_scripts``."""
    from ftib.data.loaders import load_headlines, load_translation
    from ftib.data.prompts import headline_prompt, translation_prompt
    from ftib.data.sources import is_world_spec, resolve

    loaders = {"translation": (load_translation, translation_prompt), "headline": (load_headlines, headline_prompt)}
    out = []
    for task in tasks:
        path = resolve(data, TASK_FILES[task]) if is_world_spec(data) else Path(data) / Path(TASK_FILES[task]).name
        load, make_prompt = loaders[task]
        rows = load(path)
        src_key, ref_key, target = TASK_FIELDS[task]
        n = len(rows) if max_prompts is None else min(max_prompts, len(rows))
        for r in rows.select(range(n)):
            prompt = r.get("prompt") or make_prompt(r[src_key])
            out.append({"id": r["id"], "prompt": prompt, "reference": r[ref_key], "task": task,
                        "target_scripts": [target]})
    if not out:
        raise FtibError(f"no prompts found in {data} for tasks {tasks}")
    return out


class _Rewards:
    """The configured reward plugins, weighted."""

    def __init__(self, specs: tuple[RewardSpec, ...], device: str, seed: int, data: str = "ftibworld") -> None:
        reg = Registry()
        self.terms = []
        for i, spec in enumerate(specs):
            cls = reg.load(REWARDS, spec.name)
            conf = dict(spec.config)
            model_spec = str(conf.get("model", ""))
            if spec.name == "semantic" and model_spec.startswith("ftibworld-encoder"):
                # Bare "ftibworld-encoder" follows the stage's own FTibWorld data.
                world = "ftibworld" + model_spec[len("ftibworld-encoder"):]
                if model_spec == "ftibworld-encoder" and data.startswith("ftibworld"):
                    world = data
                conf["model"] = str(ftibworld_encoder(world, seed=seed))
            reward = cls(build_config(cls.Config, conf, where=f"rewards[{i}].config"))
            if hasattr(reward, "bind"):
                reward.bind(device)
            self.terms.append((spec.name, spec.weight, reward))

    def __call__(self, prompts, completions, references, metadata) -> tuple[torch.Tensor, dict[str, float]]:
        total = torch.zeros(len(completions), dtype=torch.float32)
        metrics: dict[str, float] = {}
        for name, weight, reward in self.terms:
            r = reward(prompts, completions, references, metadata).float().cpu()
            if r.shape != total.shape:
                raise FtibError(f"reward {name!r} returned shape {tuple(r.shape)}, expected ({len(completions)},)")
            if not torch.isfinite(r).all():
                bad = int((~torch.isfinite(r)).sum())
                raise FtibError(f"reward {name!r} returned {bad} non-finite value(s); fix the reward or its inputs")
            total += weight * r
            metrics[f"reward/{name}_mean"] = float(r.mean())
            metrics[f"reward/{name}_std"] = float(r.std()) if r.numel() > 1 else 0.0
        return total, metrics


def ftibworld_encoder(world: str, seed: int = 0) -> Path:
    """The semantic-reward encoder for a FTibWorld build (``ftibworld[:SIZE[:SEED]]``):
    a small bi-encoder trained on its Tibetan–Chinese translation pairs and Tibetan /
    Chinese headline pairs on first use (``ftib reward-encoder``), then cached."""
    from ftib.data.sources import resolve
    from ftib.stages.reward_encoder import EncoderTrainConfig, train_encoder

    from ftib.core.rundir import cache_dir

    cache = cache_dir()
    pairs = []
    digest = hashlib.sha256()
    for rel, a, b in (("grpo/translation.jsonl", "source", "reference"),
                      ("grpo/headlines.jsonl", "headline", "headline_zh")):
        for line in resolve(world, rel).read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get(a) and rec.get(b):
                pairs.append((rec[a], rec[b]))
                digest.update(f"{rec[a]}\t{rec[b]}\n".encode())
    cfg = EncoderTrainConfig(vocab_size=2000, hidden_size=96, layers=2, heads=4, max_length=48,
                             epochs=8, batch_size=32, lr=2e-3, seed=seed)
    digest.update(repr(cfg).encode())
    # Keyed by the pairs and the training settings, so a changed world retrains it.
    out = cache / "encoders" / f"{world.replace(':', '-')}-{digest.hexdigest()[:12]}"
    if (out / "modules.json").is_file():
        return out
    train_encoder(pairs, out, cfg, progress=False)
    return out


def completion_mask(ids: torch.Tensor, stop_ids: set[int], pad_id: int) -> torch.Tensor:
    """1 up to and including the first stop token of each row, 0 after it."""
    is_stop = torch.zeros_like(ids, dtype=torch.bool)
    for s in stop_ids:
        is_stop |= ids == s
    after = (torch.cumsum(is_stop.int(), dim=1) - is_stop.int()) > 0
    return (~after).long()


def token_logps(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                completion_ids: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Per-token log-probs of ``completion_ids`` under ``model`` (no grad), chunked."""
    with torch.no_grad():
        hidden = completion_hidden(model, input_ids, attention_mask, prompt_len, completion_ids.shape[1])
        weight = model.get_output_embeddings().weight
        flat = hidden.reshape(-1, hidden.shape[-1])
        ids = completion_ids.reshape(-1)
        out = torch.empty(ids.shape[0], dtype=torch.float32, device=flat.device)
        for i in range(0, flat.shape[0], chunk):
            logits = (flat[i : i + chunk] @ weight.T).float()
            out[i : i + chunk] = logits.gather(1, ids[i : i + chunk, None]).squeeze(1) - logits.logsumexp(-1)
    return out.view_as(completion_ids)


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def completion_hidden(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      prompt_len: int, n_completion: int) -> torch.Tensor:
    """Last hidden states at the positions that predict each completion token: (N, C, H)."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = _decoder(model)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False)
    return out.last_hidden_state[:, prompt_len - 1 : prompt_len - 1 + n_completion]


class _GRPOTask:
    """The loop's view of GRPO: a micro-batch is a list of prompts; ``collate`` rolls out."""

    # The loss runs the decoder and lm_head weight directly (not ``model(...)``), which
    # FSDP2's root hooks cannot see; distributed GRPO uses ddp (rollouts per rank).
    supports_fsdp2 = False

    def __init__(self, stage_cfg: GRPOConfig, model, groups: list[ParamGroup], chat, prompts, rewards: _Rewards,
                 ref_model, save, logger) -> None:
        self.cfg, self.model, self._groups, self.chat = stage_cfg, model, groups, chat
        self.prompts, self.rewards, self.ref_model, self._save, self.log = prompts, rewards, ref_model, save, logger
        tok = chat.tokenizer
        self.stop_ids = {i for i in (tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id) if i is not None}
        self.pad_id = tok.pad_token_id
        # "reference": the eager references of both ops (advantages' is impl="torch").
        ref = stage_cfg.kernel_impl == "reference"
        self.adv_impl, self.loss_impl = ("torch", "reference") if ref else ("auto", "auto")

    def param_groups(self):
        return self._groups

    def train_samples(self):
        return self.prompts

    # -- rollout -----------------------------------------------------------------------
    def collate(self, items: list[dict[str, Any]]) -> Rollout:
        from ftib.kernels.advantages import group_advantages
        from ftib.stages.rewards import script_share

        cfg, G = self.cfg, self.cfg.group_size
        device = next(self.model.parameters()).device
        t0 = time.perf_counter()
        encs = [self.chat.encode([{"role": "user", "content": it["prompt"]}], add_generation_prompt=True) for it in items]
        for it, e in zip(items, encs):
            if e["input_ids"].numel() > cfg.max_prompt_length:
                raise FtibError(f"prompt {it['id']} has {e['input_ids'].numel()} tokens, more than "
                                f"max_prompt_length={cfg.max_prompt_length}; raise it or shorten the data")
        for e in encs:
            e.pop("labels")
        batch = self.chat.collate(encs, padding_side="left")
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        P = batch["input_ids"].shape[1]
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            out = self.model.generate(**batch, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                                      max_new_tokens=cfg.max_new_tokens, num_return_sequences=G,
                                      eos_token_id=sorted(self.stop_ids), pad_token_id=self.pad_id)
        self.model.train(was_training)
        t_gen = time.perf_counter() - t0
        comp = out[:, P:]
        if comp.shape[1] == 0:
            comp = torch.full((out.shape[0], 1), self.pad_id, dtype=out.dtype, device=out.device)
        cmask = completion_mask(comp, self.stop_ids, self.pad_id)
        comp = comp.masked_fill(cmask == 0, self.pad_id)
        texts = [self.chat.decode(row[m.bool()]) for row, m in zip(comp, cmask)]
        rep = [it for it in items for _ in range(G)]
        t1 = time.perf_counter()
        rewards, rmetrics = self.rewards([r["prompt"] for r in rep], texts, [r["reference"] for r in rep],
                                         [{"target_scripts": r["target_scripts"], "task": r["task"]} for r in rep])
        t_rew = time.perf_counter() - t1
        adv = group_advantages(rewards.to(device), G, scale=cfg.scale_rewards, impl=self.adv_impl)
        attn = torch.cat([batch["attention_mask"].repeat_interleave(G, 0), cmask], dim=1)
        ids = torch.cat([batch["input_ids"].repeat_interleave(G, 0), comp], dim=1)
        t2 = time.perf_counter()
        ref = None
        if cfg.beta != 0.0:
            ref = self._ref_logps(ids, attn, P, comp)
        t_ref = time.perf_counter() - t2
        lengths = cmask.sum(1).float()
        in_lang = [script_share(t, r["target_scripts"]) >= 0.5 for t, r in zip(texts, rep)]
        metrics = {
            "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
            "zero_std_groups": float(adv.zero_std_fraction), **rmetrics,
            "completion_len_mean": float(lengths.mean()), "completion_len_max": float(lengths.max()),
            "target_language_share": sum(in_lang) / len(in_lang),
            "time/generation_s": t_gen, "time/reward_s": t_rew, "time/ref_logps_s": t_ref,
        }
        return Rollout(ids, attn, P, comp, cmask, adv.advantages, ref, metrics)

    def _ref_logps(self, ids, attn, P, comp) -> torch.Tensor:
        if self.ref_model is not None:
            return token_logps(self.ref_model, ids, attn, P, comp)
        with self.model.disable_adapter():
            return token_logps(self.model, ids, attn, P, comp)

    # -- loss ----------------------------------------------------------------------------
    def _local_normaliser(self, r: Rollout) -> float:
        lt = self.cfg.loss_type
        if lt in ("dapo", "bnpo"):
            return float(r.completion_mask.sum())
        if lt == "grpo":
            return float(r.completion_mask.shape[0])
        return float(r.completion_mask.shape[0] * self.cfg.max_new_tokens)  # dr_grpo: B * L

    def loss_normaliser(self, r: Rollout) -> float:
        return self._local_normaliser(r)

    def compute_loss(self, r: Rollout) -> LossOutput:
        from ftib.kernels.grpo_loss import fused_linear_grpo_loss

        cfg = self.cfg
        t0 = time.perf_counter()
        C = r.completion_ids.shape[1]
        hidden = completion_hidden(self.model, r.input_ids, r.attention_mask, r.prompt_len, C)
        head = self.model.get_output_embeddings()
        weight = head.weight
        if hidden.dtype != weight.dtype:
            hidden = hidden.to(weight.dtype)
        norm = self._local_normaliser(r)
        out = fused_linear_grpo_loss(
            hidden, weight, r.completion_ids, r.completion_mask, r.advantages, bias=getattr(head, "bias", None),
            ref_logps=r.ref_logps, beta=cfg.beta, epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high,
            loss_type=cfg.loss_type, num_items_in_batch=float(r.completion_mask.sum()) if cfg.loss_type == "dapo" else None,
            max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, impl=self.loss_impl,
        )
        metrics = dict(r.metrics)
        metrics.update({k: float(v) for k, v in out.metrics.items()})
        metrics["time/loss_fwd_s"] = time.perf_counter() - t0
        # The loop divides by the sum of normalisers over the accumulation window.
        return LossOutput(loss=out.loss * norm, tokens=int(r.completion_mask.sum()),
                          samples=r.completion_ids.shape[0], metrics=metrics)

    def save_model(self, out_dir: Path) -> None:
        self._save(out_dir)


class GRPOStage(Stage):
    """Group-relative policy optimisation with semantic and language rewards."""

    Config = GRPOConfig

    def run(self, ctx):
        cfg: GRPOConfig = self.config
        bundle = training_bundle(ctx, cfg.trainable)
        prompts = read_prompts(cfg.data, cfg.tasks, cfg.max_prompts)
        model, groups = select_trainable(bundle.model, cfg.trainable)
        ctx.logger.info("%d prompts (%s); trainable parameters: %d", len(prompts), ", ".join(cfg.tasks),
                        trainable_parameter_count(groups))
        ref_model = None
        if cfg.beta != 0.0 and cfg.trainable.mode != "lora":
            ref_model = copy.deepcopy(model).eval()
            for p in ref_model.parameters():
                p.requires_grad_(False)
        rewards = _Rewards(cfg.rewards, ctx.device, ctx.seed, cfg.data)

        def save(out_dir):
            save_model_dir(model, out_dir, processor=bundle.chat, save_adapter=cfg.trainable.lora.save_adapter)

        task = _GRPOTask(cfg, model, groups, bundle.chat, prompts, rewards, ref_model, save, ctx.logger)
        trainer = Trainer(task, cfg.train, ctx)
        result = trainer.train()
        rows = [json.loads(line) for line in (ctx.run_dir / "metrics.jsonl").read_text().splitlines()
                if '"stage": ' in line]
        mine = [r for r in rows if r.get("stage") == ctx.metrics.scope.get("stage") and "reward_mean" in r]
        metrics = dict(result.metrics)
        if mine:
            k = max(1, len(mine) // 5)
            metrics["reward_first_20pct"] = sum(r["reward_mean"] for r in mine[:k]) / k
            metrics["reward_last_20pct"] = sum(r["reward_mean"] for r in mine[-k:]) / k
        return StageResult(checkpoint=trainer.save_final(), metrics=metrics)
