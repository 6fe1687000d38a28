"""Monitors of a GRPO run: the failure modes a semantic reward invites, watched per step.

None of TRL, verl, OpenRLHF or ms-swift ships these; each one is a number logged with
every step's metrics, a threshold (:class:`MonitorsConfig`), and an alarm:

* ``mixed_language`` — reward hacking by language mixing: the share of completions whose
  semantic reward is high (>= ``semantic_min``) although they fail language consistency
  (less than ``language_min_share`` of their letters in the task's target script, the
  rule of the stage's ``target_language_share``). A cross-lingual encoder pays a copy of
  the Tibetan source almost as well as a Chinese translation; this share is how that
  shows. Logged as ``monitor/mixed_language_share``; alarm above ``mixed_language_max``.
* ``length`` — length collapse or blow-up against the **cold-start distribution**: the
  mean completion length (tokens) of the first ``reference_steps`` steps of the stage,
  i.e. the completions of the policy GRPO started from, sampled with the same settings
  and ``max_new_tokens`` cap. (The SFT data's lengths would be another tokenisation of
  another task mix, and the first steps' completions are what the policy actually does
  before the reward has moved it.) ``monitor/length_ratio`` = this step's mean length /
  the reference; alarm below ``length_ratio_min`` or above ``length_ratio_max``.
* ``heldout`` — reward rising while held-out semantic similarity falls: before the first
  step and after every ``heldout_every`` optimiser steps, greedy completions of
  ``heldout_prompts`` prompts held out of the training pool are scored by the semantic
  reward (``monitor/heldout_similarity``; the starting policy's as
  ``monitor/heldout_similarity_start`` on step 0's row); alarm when it fell by more than
  ``heldout_drop_max`` since the previous evaluation while the mean training reward of
  the steps since then rose over that of the ``heldout_every`` steps before it.
* ``entropy`` — entropy collapse: the mean token entropy of the policy on its rollouts
  (the loss kernel's ``entropy``) against its cold-start mean (``monitor/entropy_ratio``);
  alarm below ``entropy_ratio_min``.
* ``kl`` — KL spikes: the step's mean per-token KL to the reference (the loss's ``kl``,
  TRL's k3 estimator); alarm above ``kl_max``. Only with ``beta > 0`` (otherwise no
  reference runs).
* ``zero_std`` — the share of groups whose rewards are all equal (no learning signal,
  ``zero_std_groups``); alarm above ``zero_std_max``.
* ``clip`` — the share of tokens whose ratio was clipped (``clip_ratio_region`` for the
  clipped objectives, ``cispo_clip_ratio`` for cispo); alarm above ``clip_max``.

A threshold of ``None`` turns its monitor off. A monitor is *over* at a step when its
value crosses the threshold (``monitor/<name>_alarm`` 1, else 0, logged every step it is
on); it *fires* when it has been over for ``patience`` consecutive steps. On firing,
``on_alarm: warn`` logs a warning (once per streak) and training goes on; ``on_alarm:
stop`` ends the stage after that step: no checkpoint of it is written, the model is set
back to the last good step checkpoint and saved as the stage's output, and
``monitor_stop.json`` in the stage directory names the monitor, the step and why. The
last good checkpoint is the newest one whose weights no over-threshold step measured:
the checkpoint after step k holds the weights step k+1 rolls out with, so for a streak
that fired at step s it is the newest at step <= s - patience - 1 (the stage's starting
weights, kept in memory for this, if there is none on disk; keep ``train.checkpoint_every``
small and ``keep_checkpoints`` >= 2).

Every number is computed from the step's own metrics and the earlier steps' rows (the
loop's history, restored on resume), so a resumed run alarms exactly where an
uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch

from ftib.core.errors import FtibError
from ftib.core.train import StepCheck

MONITORS = ("mixed_language", "length", "heldout", "entropy", "kl", "zero_std", "clip")
# The step metric that carries each monitor's value (besides its own monitor/ keys).
CLIP_KEYS = ("clip_ratio_region", "cispo_clip_ratio")


@dataclass(frozen=True, kw_only=True)
class MonitorsConfig:
    """Thresholds of the GRPO monitors (see the module docstring); ``None`` = off.

    Attributes:
        on_alarm: ``warn`` (log and go on) or ``stop`` (end the stage at the last good
            checkpoint).
        patience: consecutive steps a monitor must be over its threshold to fire (>= 1).
        reference_steps: the first steps of the stage whose completions form the
            cold-start reference of ``length`` and ``entropy`` (>= 1); neither alarms
            during them.
        semantic_reward: name of the reward term that measures meaning (``mixed_language``
            and ``heldout`` read it).
        mixed_language_max: alarm when the share of mixed-language hacks exceeds this, in [0, 1).
        semantic_min: a semantic reward >= this is "high", in [-1, 1].
        language_min_share: a completion with less than this share of letters in its
            target script fails language consistency, in (0, 1].
        length_ratio_min: alarm when mean length / cold-start mean falls below this, in (0, 1).
        length_ratio_max: alarm when it exceeds this, > 1.
        entropy_ratio_min: alarm when mean entropy / cold-start mean falls below this, in (0, 1).
        kl_max: alarm when the mean per-token KL exceeds this, > 0.
        zero_std_max: alarm when the share of zero-variance groups exceeds this, in [0, 1).
        clip_max: alarm when the clipped-token share exceeds this, in [0, 1).
        heldout_prompts: prompts held out of the training pool for ``heldout`` (0 = off).
        heldout_every: evaluate them every this many steps (>= 1).
        heldout_drop_max: alarm when their similarity fell by more than this, >= 0.
    """

    on_alarm: Literal["warn", "stop"] = "warn"
    patience: int = 1
    reference_steps: int = 1
    semantic_reward: str = "semantic"
    mixed_language_max: float | None = 0.25
    semantic_min: float = 0.5
    language_min_share: float = 0.5
    length_ratio_min: float | None = 0.25
    length_ratio_max: float | None = 4.0
    entropy_ratio_min: float | None = 0.1
    kl_max: float | None = 1.0
    zero_std_max: float | None = 0.95
    clip_max: float | None = 0.5
    heldout_prompts: int = 0
    heldout_every: int = 10
    heldout_drop_max: float = 0.05

    def __post_init__(self) -> None:
        def check(key: str, ok: bool, rule: str) -> None:
            if not ok:
                raise ValueError(f"{key} must be {rule}, got {getattr(self, key)}")

        def share(key: str, lo_open: bool = False, hi_closed: bool = False) -> None:
            v = getattr(self, key)
            if v is not None:
                lo = v > 0 if lo_open else v >= 0
                hi = v <= 1 if hi_closed else v < 1
                check(key, lo and hi, f"in {'(' if lo_open else '['}0, 1{']' if hi_closed else ')'}")

        check("patience", self.patience >= 1, ">= 1")
        check("reference_steps", self.reference_steps >= 1, ">= 1")
        check("heldout_prompts", self.heldout_prompts >= 0, ">= 0")
        check("heldout_every", self.heldout_every >= 1, ">= 1")
        check("heldout_drop_max", math.isfinite(self.heldout_drop_max) and self.heldout_drop_max >= 0,
              ">= 0 and finite")
        check("semantic_min", -1.0 <= self.semantic_min <= 1.0, "in [-1, 1]")
        share("language_min_share", lo_open=True, hi_closed=True)
        share("mixed_language_max")
        share("zero_std_max")
        share("clip_max")
        share("length_ratio_min", lo_open=True)
        share("entropy_ratio_min", lo_open=True)
        if self.length_ratio_max is not None:
            check("length_ratio_max", math.isfinite(self.length_ratio_max) and self.length_ratio_max > 1,
                  "> 1 and finite")
        if self.kl_max is not None:
            check("kl_max", math.isfinite(self.kl_max) and self.kl_max > 0, "> 0 and finite")

    def check_rewards(self, reward_names: Sequence[str]) -> None:
        """``heldout`` needs the semantic reward term: a ValueError naming the key otherwise."""
        if self.heldout_prompts and self.semantic_reward not in reward_names:
            raise ValueError(f"heldout_prompts needs the reward named by semantic_reward "
                             f"({self.semantic_reward!r}) among the rewards ({', '.join(reward_names)})")


def split_heldout(prompts: list[dict[str, Any]], n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, heldout)``: ``n`` evenly spaced prompts of the pool held out (no RNG, so
    every task of a mixed pool is represented in proportion), the rest trained on."""
    if n == 0:
        return prompts, []
    if n >= len(prompts):
        raise FtibError(f"monitors.heldout_prompts={n} would hold out all {len(prompts)} prompts; lower it")
    idx = {i * len(prompts) // n for i in range(n)}
    return [p for i, p in enumerate(prompts) if i not in idx], [p for i, p in enumerate(prompts) if i in idx]


def mixed_language_share(semantic: torch.Tensor, language_shares: Sequence[float], *, semantic_min: float,
                         language_min_share: float) -> float:
    """Share of completions with a high semantic reward that fail language consistency.

    Args:
        semantic: (N,) float32, the semantic reward term per completion (NaN: unscored,
            never counted as high).
        language_shares: N shares of letters in each completion's target script.
    """
    high = torch.nan_to_num(semantic.float(), nan=-math.inf) >= semantic_min
    off = torch.tensor([s < language_min_share for s in language_shares], dtype=torch.bool)
    return float((high & off).float().mean()) if len(language_shares) else 0.0


@dataclass(frozen=True, kw_only=True)
class HeldOut:
    """What the held-out evaluation needs, given by the stage.

    Attributes:
        prompts: the held-out prompt records (``prompt``, ``reference``, ...).
        score: ``score(prompts) -> float``: the mean semantic reward of the policy's
            greedy completions of ``prompts`` (the stage builds it from its model,
            chat processor and reward term, see :func:`greedy_similarity`).
    """

    prompts: list[dict[str, Any]]
    score: Callable[[list[dict[str, Any]]], float]


def greedy_similarity(model: torch.nn.Module, chat: Any, reward: Any, prompts: list[dict[str, Any]], *,
                      max_new_tokens: int, stop_ids: Sequence[int], pad_id: int, enable_thinking: bool | None,
                      batch_size: int = 16) -> float:
    """Mean of ``reward`` over greedy completions of ``prompts`` by ``model``: no sampling,
    so the global RNG (the rollouts' stream) is untouched and every rank gets the same
    number. The model is put in eval mode for the call and restored."""
    from ftib.models.chat import strip_thinking

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    scores: list[torch.Tensor] = []
    try:
        for b in range(0, len(prompts), batch_size):
            items = prompts[b : b + batch_size]
            encs = [chat.encode([{"role": "user", "content": it["prompt"]}], add_generation_prompt=True,
                                enable_thinking=enable_thinking) for it in items]
            for e in encs:
                e.pop("labels", None)
            batch = chat.collate(encs, padding_side="left")
            batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            with torch.no_grad():
                out = cast(Any, model).generate(**batch, do_sample=False, temperature=None, top_p=None, top_k=None,
                                     max_new_tokens=max_new_tokens, eos_token_id=sorted(stop_ids),
                                     pad_token_id=pad_id)
            texts = [strip_thinking(chat.decode(row))[0] for row in out[:, batch["input_ids"].shape[1] :]]
            r = reward([it["prompt"] for it in items], texts, [it["reference"] for it in items],
                       [{"target_scripts": it["target_scripts"], "task": it["task"]} for it in items])
            scores.append(r.float().cpu())
    finally:
        model.train(was_training)
    s = torch.cat(scores)
    return float(s.nanmean())


class Monitors:
    """The monitors of one GRPO stage (see the module docstring).

    Args:
        cfg: the thresholds.
        beta: the stage's KL coefficient (``kl`` is off when it is 0).
        reward_names: the configured reward terms (``mixed_language`` is off without
            ``cfg.semantic_reward`` among them).
        heldout: the held-out evaluation, or ``None`` (``heldout_prompts: 0``).
        logger: where alarms are reported.
    """

    def __init__(self, cfg: MonitorsConfig, *, beta: float, reward_names: Sequence[str], heldout: HeldOut | None,
                 logger: Any) -> None:
        self.cfg, self.heldout, self.log = cfg, heldout, logger
        self._start: float | None = None
        c = cfg
        self.on = {
            "mixed_language": c.mixed_language_max is not None and c.semantic_reward in reward_names,
            "length": c.length_ratio_min is not None or c.length_ratio_max is not None,
            "heldout": heldout is not None,
            "entropy": c.entropy_ratio_min is not None,
            "kl": c.kl_max is not None and beta != 0.0,
            "zero_std": c.zero_std_max is not None,
            "clip": c.clip_max is not None,
        }
        off = [m for m in MONITORS if not self.on[m]]
        if c.mixed_language_max is not None and not self.on["mixed_language"]:
            logger.info("monitor mixed_language is off: no reward named %r (monitors.semantic_reward)",
                        c.semantic_reward)
        if c.kl_max is not None and beta == 0.0:
            logger.info("monitor kl is off: beta is 0 (no reference model, no KL)")
        if off:
            logger.info("GRPO monitors off: %s", ", ".join(off))

    def begin(self, *, resumed: bool) -> None:
        """Before the first step: the held-out similarity of the starting policy (the
        baseline of the first comparison), on a fresh start; a resumed run finds it in
        the restored history (``monitor/heldout_similarity_start`` of step 0)."""
        if self.heldout is not None and not resumed:
            self._start = self.heldout.score(self.heldout.prompts)

    @property
    def needs_entropy(self) -> bool:
        """Whether the loss must compute the token entropy (one more row pass)."""
        return self.on["entropy"]

    # -- per rollout ---------------------------------------------------------------------
    def rollout_metrics(self, per_term: dict[str, torch.Tensor], language_shares: Sequence[float]) -> dict[str, float]:
        """The monitors' values that need each completion: ``per_term`` is every reward
        term's (N,) values, ``language_shares`` each completion's target-script share."""
        if not self.on["mixed_language"]:
            return {}
        return {"monitor/mixed_language_share": mixed_language_share(
            per_term[self.cfg.semantic_reward], language_shares, semantic_min=self.cfg.semantic_min,
            language_min_share=self.cfg.language_min_share)}

    # -- per step ------------------------------------------------------------------------
    def after_step(self, step: int, metrics: dict[str, float], history: list[dict[str, float]]) -> StepCheck:
        """The monitors' values for this step, which of them are over their thresholds,
        and the stop reason if one fires under ``on_alarm: stop`` (the loop's hook)."""
        c = self.cfg
        t0 = time.perf_counter()
        out: dict[str, float] = {}
        over: dict[str, str] = {}  # monitor -> why
        rows = [r for r in history if "reward_mean" in r]  # this stage's earlier steps

        def flag(name: str, value: float | None, bad: bool, why: str) -> None:
            if value is None or not math.isfinite(value):
                return
            out[f"monitor/{name}_alarm"] = float(bad)
            if bad:
                over[name] = why

        if self.on["mixed_language"]:
            v = metrics.get("monitor/mixed_language_share")
            limit = c.mixed_language_max
            flag("mixed_language", v, v is not None and limit is not None and v > limit,
                 f"{v:.3f} of completions have semantic reward >= {c.semantic_min} but fail language "
                 f"consistency (max {c.mixed_language_max})" if v is not None else "")
        if len(rows) >= c.reference_steps:
            ref = rows[: c.reference_steps]
            if self.on["length"] and "completion_len_mean" in metrics:
                base = _mean([r.get("completion_len_mean") for r in ref])
                if base is not None and base > 0:
                    ratio = metrics["completion_len_mean"] / base
                    out["monitor/length_ratio"] = ratio
                    lo, hi = c.length_ratio_min, c.length_ratio_max
                    bad = (lo is not None and ratio < lo) or (hi is not None and ratio > hi)
                    flag("length", ratio, bad, f"mean completion length is {ratio:.2f}x the cold-start mean "
                         f"({base:.1f} tokens; allowed {lo}..{hi})")
            if self.on["entropy"] and "entropy" in metrics:
                base = _mean([r.get("entropy") for r in ref])
                if base is not None and base > 0:
                    ratio = metrics["entropy"] / base
                    out["monitor/entropy_ratio"] = ratio
                    flag("entropy", ratio, c.entropy_ratio_min is not None and ratio < c.entropy_ratio_min,
                         f"mean token entropy is {ratio:.3f}x the cold-start mean ({base:.3f}; "
                         f"min {c.entropy_ratio_min})")
        if self.on["kl"] and "kl" in metrics:
            v = metrics["kl"]
            flag("kl", v, c.kl_max is not None and v > c.kl_max, f"KL to the reference is {v:.4f} (max {c.kl_max})")
        if self.on["zero_std"] and "zero_std_groups" in metrics:
            v = metrics["zero_std_groups"]
            flag("zero_std", v, c.zero_std_max is not None and v > c.zero_std_max, f"{v:.3f} of groups have zero reward variance "
                 f"(max {c.zero_std_max})")
        if self.on["clip"]:
            key = next((k for k in CLIP_KEYS if k in metrics), None)
            if key is not None:
                v = metrics[key]
                flag("clip", v, c.clip_max is not None and v > c.clip_max, f"{key} is {v:.3f} (max {c.clip_max})")
        if self.heldout is not None:
            if step == 0 and self._start is not None:
                out["monitor/heldout_similarity_start"] = self._start
            if (step + 1) % c.heldout_every == 0:
                sim = self.heldout.score(self.heldout.prompts)
                out["monitor/heldout_similarity"] = sim
                bad, why = self._heldout_falls(step, sim, metrics, history, out)
                flag("heldout", sim, bad, why)

        out["monitor/alarms"] = float(len(over))
        # After the step, outside step_time_s (the held-out evaluation is most of it).
        out["monitor/time_s"] = time.perf_counter() - t0
        fired = [m for m in MONITORS if m in over and self._streak(m, history) + 1 >= c.patience]
        for m in fired:
            if self._streak(m, history) + 1 == c.patience:  # once per streak
                self.log.warning("GRPO monitor %s alarm at step %d: %s", m, step, over[m])
        if fired and c.on_alarm == "stop":
            m = fired[0]
            return StepCheck(metrics=out, stop=f"GRPO monitor {m} alarm at step {step}: {over[m]}")
        return StepCheck(metrics=out)

    def _heldout_falls(self, step: int, sim: float, metrics: dict[str, float], history: list[dict[str, float]],
                       out: dict[str, float]) -> tuple[bool, str]:
        """Did held-out similarity fall by more than ``heldout_drop_max`` since the last
        evaluation (``heldout_every`` steps ago, or the start) while the training reward
        rose? The reward of a window is the mean ``reward_mean`` of its steps; the first
        window is compared with step 0's reward (the starting policy's rollouts)."""
        k = self.cfg.heldout_every
        rows = history + [metrics]  # rows[t] is step t
        prev_step = step - k
        if prev_step >= 0:
            prev = history[prev_step].get("monitor/heldout_similarity")
            before = _mean([r.get("reward_mean") for r in rows[max(0, prev_step - k + 1) : prev_step + 1]])
        else:
            prev = out.get("monitor/heldout_similarity_start", rows[0].get("monitor/heldout_similarity_start"))
            before = rows[0].get("reward_mean")
        since = _mean([r.get("reward_mean") for r in rows[prev_step + 1 : step + 1]])
        if prev is None or since is None or before is None:
            return False, ""
        bad = sim < prev - self.cfg.heldout_drop_max and since > before
        return bad, (f"held-out similarity fell {prev:.3f} -> {sim:.3f} over steps {prev_step + 1}..{step} while "
                     f"the mean reward rose {before:.3f} -> {since:.3f} (max drop {self.cfg.heldout_drop_max})")

    @staticmethod
    def _streak(name: str, history: list[dict[str, float]]) -> int:
        """Consecutive steps right before this one on which ``name`` was over."""
        n = 0
        key = f"monitor/{name}_alarm"
        for r in reversed(history):
            if r.get(key) != 1.0:
                break
            n += 1
        return n


def alarm_counts(history: list[dict[str, float]]) -> dict[str, float]:
    """Stage summary: on how many steps each monitor was over its threshold."""
    out = {}
    for m in MONITORS:
        flags = [r[f"monitor/{m}_alarm"] for r in history if f"monitor/{m}_alarm" in r]
        if flags:
            out[f"monitor_{m}_alarm_steps"] = float(sum(flags))
    return out


def last_good_checkpoint(steps_dir: Path, stop_step: int, patience: int) -> Path | None:
    """The newest intact step checkpoint whose weights no over-threshold step measured.

    A checkpoint written after step k holds the weights that step k+1 rolls out with;
    the streak that fired at ``stop_step`` began at ``stop_step - patience + 1``, whose
    rollouts came from checkpoint ``stop_step - patience``: the last good one is therefore
    the newest at step <= ``stop_step - patience - 1`` (conservative for ``heldout``,
    which measures the weights after its step). ``None`` if there is none on disk."""
    from ftib.core.train import step_of, verify_step_checkpoint

    limit = stop_step - patience - 1
    found = []
    for d in Path(steps_dir).glob("step-*") if Path(steps_dir).is_dir() else ():
        k = step_of(d)
        if k is not None and k <= limit and verify_step_checkpoint(d) is None:
            found.append((k, d))
    return max(found)[1] if found else None


def end_at_last_good(trainer: Any, stopped: Any, patience: int, start_state: dict[str, torch.Tensor] | None,
                     work_dir: Path, logger: Any, chosen: str | None = None) -> dict[str, float]:
    """After a monitor stopped the loop (``stopped``: the trainer's
    :class:`~ftib.core.train.EarlyStop`): set the trainable weights back to the last good
    step checkpoint (:func:`last_good_checkpoint`), or to ``start_state`` (the stage's
    starting weights) when there is none, write ``monitor_stop.json`` and return the
    stage metrics that record it. ``chosen``: the checkpoint selection
    (:mod:`ftib.stages.grpo_select`) already set the weights among the good steps; they
    are kept and the record names them."""
    good = None if chosen is not None else last_good_checkpoint(trainer.steps_dir, stopped.step, patience)
    if chosen is not None:
        where = f"{chosen} (checkpoint selection among the steps before the alarm's streak)"
    elif good is not None:
        trainer.load_trainable(good)
        where = str(good)
    else:
        if start_state is None:
            raise RuntimeError("end_at_last_good: no good step checkpoint and no starting state")
        trainer.load_trainable(start_state)
        where = "the stage's starting weights (no good step checkpoint: none written before the alarm's streak)"
    logger.warning("%s; the stage's output is %s", stopped.reason, where)
    record = {"reason": stopped.reason, "step": stopped.step, "output_weights": where}
    (Path(work_dir) / "monitor_stop.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return {"monitor_stop_step": float(stopped.step)}


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else None
