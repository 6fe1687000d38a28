"""Checkpoint selection of a GRPO run under an alignment-tax budget.

With ``select: {metric: similarity, max_tax: 0.1, every: K}`` the stage measures, after
every K-th optimiser step (and after the last one), two numbers of the current weights:

* the **held-out task metric** ``select/similarity``: the mean of the reward term
  ``select.reward`` (the semantic reward by default) over greedy completions of
  ``select.heldout_prompts`` prompts held out of the training pool
  (:func:`~ftib.stages.grpo_monitors.greedy_similarity`, as the monitors' held-out
  check; the two sets are disjoint and neither is trained on);
* the **alignment tax** ``select/tax``: the drift of the policy from the stage's starting
  weights on held-out general (Chinese/English) text, computed exactly as the
  ``alignment_tax`` evaluator computes it (:func:`ftib.models.drift.alignment_tax`):
  ``select.tax`` names the number, ``nll_increase_mean`` (default; the seed paper's
  measure) or ``kl_mean``, both logged (``select/nll_increase_mean``, ``select/kl_mean``).
  The text is the last ``tax_texts`` texts of ``tax_data``'s general held-out text (the
  evaluator's default data; the evaluator reads the file from its start, so with a
  ``limit`` below the file's length the two measure different texts).

An evaluation is *within budget* when its tax is <= ``max_tax``; the stage's output is the
within-budget evaluation with the highest metric (the earliest on a tie). Its weights are
copied to ``selected/step-NNNNNN/`` in the stage directory when it becomes the best so far
(``trainable.pt``, ``candidate.json``, ``checksums.json``), outside the step checkpoints,
so ``keep_checkpoints`` never rotates it away; the stage writes ``final/`` from them and
``selection.json`` (the choice and the whole curve). No framework ships this.

Decisions a demanding user would ask about:

* **No evaluation within budget**: the stage warns, its output is the **starting
  weights** (whose tax is 0 by definition: they are the reference), and it records
  ``select/none_within_budget: 1`` and ``select/step: -1``. Not the lowest-tax candidate:
  that one is still over the budget the user set, and silently exceeding a budget is
  what the budget is there to prevent.
* **The starting weights are not a candidate** when some evaluation is within budget
  (the stage trains to be better than its start; the start's metric is logged as
  ``select/similarity_start`` on step 0's row so the curve shows whether it was).
* **Monitors that stop the stage** (``monitors.on_alarm: stop``): the candidates are the
  evaluations no over-threshold step measured, i.e. at steps <= the stop step -
  ``patience`` - 1 (the monitors' rule for the last good checkpoint); selection then
  chooses among them, and ``monitor_stop.json`` names the selection's output.
* **Resume**: every evaluation is a row of the loop's history (restored from the step
  checkpoint), so a resumed run chooses from the same rows; ``selected/`` keeps the best
  as of every step checkpoint on disk (a resumed run may restart from any of them), so
  the choice is always on disk. The reference is the stage's input model, loaded again
  on resume. The choice is checked against ``candidate.json`` before it is used.

Cost: one greedy pass over the held-out prompts and two teacher-forced passes (policy and
reference) over the tax texts per evaluation, under the stage's autocast, on every rank
(same numbers; rank 0 writes ``selected/``). A full-parameter stage with ``beta: 0``
keeps a frozen copy of its starting model as the tax reference (LoRA uses the adapter
disabled, ``beta > 0`` the KL reference it already has).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ftib.core.errors import FtibError, RunDirError
from ftib.core.rundir import atomic_dir, atomic_write_json, sha256_path
from ftib.core.train import CHECKSUMS, STEP_DIR_FORMAT, EarlyStop, step_of, verify_step_checkpoint

SELECTED_DIR = "selected"
TAX_KEYS = ("nll_increase_mean", "kl_mean")


@dataclass(frozen=True, kw_only=True)
class SelectConfig:
    """Checkpoint selection under an alignment-tax budget (see the module docstring).

    Attributes:
        metric: the held-out task metric to maximise: ``similarity`` (the mean of
            ``reward`` over greedy completions of the held-out prompts).
        max_tax: the budget: an evaluation whose tax exceeds it is never chosen (>= 0,
            in nats per token).
        every: evaluate after every this many optimiser steps, and after the last (>= 1).
        reward: the reward term that scores the held-out completions (a configured one).
        heldout_prompts: prompts held out of the training pool for the metric (>= 1).
        tax: which alignment-tax number the budget is on: ``nll_increase_mean`` (mean
            per-token NLL increase) or ``kl_mean`` (mean KL(start || policy)).
        tax_data: where the general held-out text comes from: ``ftibworld[:SIZE[:SEED]]``
            (its ``general/heldout.jsonl``, the alignment_tax evaluator's default), a
            FTibWorld build folder, a general-text JSON Lines file (``id, lang, text``)
            or a folder of them.
        tax_texts: the last this many texts of it (>= 1).
        tax_max_length: tokens per text (>= 2).
    """

    metric: Literal["similarity"] = "similarity"
    max_tax: float
    every: int = 10
    reward: str = "semantic"
    heldout_prompts: int = 16
    tax: Literal["nll_increase_mean", "kl_mean"] = "nll_increase_mean"
    tax_data: str = "ftibworld"
    tax_texts: int = 32
    tax_max_length: int = 128

    def __post_init__(self) -> None:
        from ftib.data.sources import check_spec

        def check(key: str, ok: bool, rule: str) -> None:
            if not ok:
                raise ValueError(f"{key} must be {rule}, got {getattr(self, key)}")

        check("max_tax", math.isfinite(self.max_tax) and self.max_tax >= 0, ">= 0 and finite")
        check("every", self.every >= 1, ">= 1")
        check("heldout_prompts", self.heldout_prompts >= 1, ">= 1")
        check("tax_texts", self.tax_texts >= 1, ">= 1")
        check("tax_max_length", self.tax_max_length >= 2, ">= 2")
        check_spec(self.tax_data, "tax_data")

    def check_rewards(self, reward_names: Sequence[str]) -> None:
        """The metric's reward term must be configured: a ValueError naming the key otherwise."""
        if self.reward not in reward_names:
            from ftib.core.errors import did_you_mean

            raise ValueError(f"reward {self.reward!r} is not among the rewards ({', '.join(reward_names)}); "
                             f"{did_you_mean(self.reward, reward_names)}")


def general_texts(spec: str, n: int, logger: Any) -> list[str]:
    """The last ``n`` texts of the general held-out text of ``spec`` (see
    :attr:`SelectConfig.tax_data`); fewer (with a warning) if the files hold fewer."""
    from ftib.data.loaders import load_general, world_file
    from ftib.data.sources import is_world_spec, resolve

    rel = world_file("general_heldout")
    if is_world_spec(spec):
        files = [resolve(spec, rel)]
    else:
        path = Path(spec).expanduser()
        if (path / "world.json").is_file():
            files = [path / rel]
        elif path.is_dir():
            files = sorted(p for p in path.glob("*.jsonl") if p.is_file())
        else:
            files = [path]
    if not files:
        raise FtibError(f"select.tax_data: no *.jsonl file in {spec}")
    texts = [t for f in files for t in load_general(f)["text"]]
    if len(texts) < 2:
        raise FtibError(f"select.tax_data: {spec} holds {len(texts)} general text(s); the tax needs some")
    if len(texts) < n:
        logger.warning("select.tax_texts=%d but %s holds %d general texts: the tax uses all of them",
                       n, spec, len(texts))
    return list(texts[-n:])


class AdapterDisabled:
    """The base of a peft model as a causal LM for :func:`ftib.models.drift.alignment_tax`:
    every forward runs with the adapter disabled (the LoRA stage's starting weights)."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @property
    def training(self) -> bool:
        return bool(self.model.training)

    def eval(self) -> AdapterDisabled:
        self.model.eval()
        return self

    def train(self, mode: bool = True) -> AdapterDisabled:
        self.model.train(mode)
        return self

    def parameters(self) -> Any:
        return self.model.parameters()

    def __call__(self, **kw: Any) -> Any:
        with self.model.disable_adapter():
            return self.model(**kw)


@dataclass(frozen=True, kw_only=True)
class Measure:
    """What an evaluation needs, given by the stage.

    Attributes:
        score: ``score() -> float``: the held-out metric of the current weights.
        tax: ``tax() -> dict``: the alignment-tax metrics of the current weights
            (:func:`ftib.models.drift.alignment_tax`'s), at least :data:`TAX_KEYS`.
    """

    score: Callable[[], float]
    tax: Callable[[], dict[str, float]]


@dataclass(frozen=True)
class Candidate:
    """One evaluation within budget."""

    step: int
    similarity: float
    tax: float


def candidates(rows: Sequence[dict[str, float]]) -> list[Candidate]:
    """The within-budget evaluations of ``rows`` (``rows[t]`` is step t's row)."""
    out = []
    for t, r in enumerate(rows):
        sim = r.get("select/similarity")
        if r.get("select/within_budget") == 1.0 and sim is not None and math.isfinite(sim):
            out.append(Candidate(step=t, similarity=float(sim), tax=float(r["select/tax"])))
    return out


def best_upto(rows: Sequence[dict[str, float]], limit: int) -> Candidate | None:
    """The within-budget evaluation with the highest metric among steps <= ``limit``
    (the earliest on a tie), or ``None``."""
    best = None
    for c in candidates(rows):
        if c.step <= limit and (best is None or c.similarity > best.similarity):
            best = c
    return best


class Selection:
    """The checkpoint selection of one GRPO stage (see the module docstring).

    Args:
        cfg: the ``select`` config.
        measure: the two measurements of the current weights.
        max_steps: the stage's ``train.max_steps`` (the last step is always evaluated).
        stop_patience: ``monitors.patience`` when monitors may stop the stage
            (``on_alarm: stop``), else ``None``.
        work_dir: the stage directory (``selected/`` and ``selection.json`` go there).
        is_main: whether this rank writes files.
        logger: where the choice is reported.
    """

    def __init__(self, cfg: SelectConfig, *, measure: Measure, max_steps: int, stop_patience: int | None,
                 work_dir: Path, is_main: bool, logger: Any) -> None:
        self.cfg, self.measure, self.max_steps, self.patience = cfg, measure, max_steps, stop_patience
        self.dir = Path(work_dir) / SELECTED_DIR
        self.work_dir, self.is_main, self.log = Path(work_dir), is_main, logger
        self._start: float | None = None
        self._state: Callable[[], dict[str, torch.Tensor]] | None = None
        self._steps_dir: Path | None = None

    def bind(self, *, state: Callable[[], dict[str, torch.Tensor]], steps_dir: Path) -> None:
        """The trainer's trainable-state getter and step-checkpoint folder."""
        self._state, self._steps_dir = state, Path(steps_dir)

    def begin(self, *, resumed: bool) -> None:
        """Before the first step of a fresh start: the starting policy's metric (for the
        curve and the fallback's record); a resumed run finds it on step 0's row."""
        if not resumed:
            self._start = self.measure.score()

    def due(self, step: int) -> bool:
        return (step + 1) % self.cfg.every == 0 or step == self.max_steps - 1

    # -- per step --------------------------------------------------------------------------
    def after_step(self, step: int, history: list[dict[str, float]]) -> dict[str, float]:
        """The evaluation of this step's weights if one is due (the loop's hook, called
        after the optimiser step): its row metrics; a new best is copied to ``selected/``."""
        out: dict[str, float] = {}
        if step == 0 and self._start is not None:
            out["select/similarity_start"] = self._start
        if not self.due(step):
            return out
        t0 = time.perf_counter()
        sim = float(self.measure.score())
        taxes = self.measure.tax()
        tax = float(taxes[self.cfg.tax])
        within = math.isfinite(tax) and tax <= self.cfg.max_tax
        out.update({"select/similarity": sim, "select/tax": tax, "select/within_budget": float(within),
                    **{f"select/{k}": float(taxes[k]) for k in TAX_KEYS}})
        rows = list(history) + [out]
        best = best_upto(rows, step)
        out["select/best"] = float(best is not None and best.step == step)
        if best is not None and best.step == step and self.is_main:
            self._write(step, sim, tax)
        if self.is_main:
            self._prune(rows, step)
        out["select/time_s"] = time.perf_counter() - t0
        return out

    def _write(self, step: int, sim: float, tax: float) -> None:
        if self._state is None:
            raise RuntimeError("Selection.bind was not called")
        with atomic_dir(self.dir / STEP_DIR_FORMAT.format(step)) as d:
            torch.save(self._state(), d / "trainable.pt")
            atomic_write_json(d / "candidate.json", {"step": step, "similarity": sim, "tax": tax,
                                                     "tax_metric": self.cfg.tax, "max_tax": self.cfg.max_tax})
            sums = {f.name: sha256_path(f) for f in sorted(d.iterdir()) if f.is_file()}
            atomic_write_json(d / CHECKSUMS, sums)

    def _needed(self, rows: Sequence[dict[str, float]], step: int) -> set[int]:
        """Steps of ``selected/`` that may still be chosen: the best as of now, as of every
        step checkpoint on disk (a resume restarts from one of them with its history),
        and, when monitors may stop the stage, as of every limit a stop at this step or
        later can set (stop step - patience - 1 >= step - patience - 1)."""
        limits = {step}
        if self._steps_dir is not None and self._steps_dir.is_dir():
            limits |= {k for k in map(step_of, self._steps_dir.glob("step-*")) if k is not None}
        if self.patience is not None:
            limits |= set(range(step - self.patience - 1, step + 1))
        found = (best_upto(rows, lim) for lim in limits if lim >= 0)
        return {c.step for c in found if c is not None}

    def _prune(self, rows: Sequence[dict[str, float]], step: int) -> None:
        keep = self._needed(rows, step)
        for d in self._dirs():
            if step_of(d) not in keep:
                shutil.rmtree(d)

    def _dirs(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(d for d in self.dir.glob("step-*") if d.is_dir() and step_of(d) is not None)

    # -- at the end ------------------------------------------------------------------------
    def finish(self, history: list[dict[str, float]], stopped: EarlyStop | None,
               load: Callable[[Path | dict[str, torch.Tensor]], None],
               start_state: dict[str, torch.Tensor]) -> tuple[dict[str, float], str]:
        """Set the trainable weights to the choice (``load``: the trainer's
        ``load_trainable``), write ``selection.json`` and return the stage metrics and a
        description of the output weights."""
        cfg = self.cfg
        limit = len(history) - 1
        if stopped is not None and self.patience is not None:
            limit = stopped.step - self.patience - 1
        chosen = best_upto(history, limit)
        start_sim = history[0].get("select/similarity_start", math.nan) if history else math.nan
        curve = [{"step": t, "similarity": r["select/similarity"], "tax": r["select/tax"],
                  "within_budget": bool(r["select/within_budget"]),
                  **{k: r[f"select/{k}"] for k in TAX_KEYS if f"select/{k}" in r}}
                 for t, r in enumerate(history) if "select/similarity" in r]
        if chosen is None:
            load(start_state)
            where = "the stage's starting weights (no evaluation within the tax budget)"
            self.log.warning("checkpoint selection: none of the %d evaluations%s has %s <= max_tax=%g (lowest: "
                             "%s); the stage's output is its starting weights (tax 0)", len(curve),
                             f" up to step {limit}" if limit < len(history) - 1 else "", cfg.tax, cfg.max_tax,
                             _fmt(min((c["tax"] for c in curve), default=math.nan)))
            metrics = {"select/step": -1.0, "select/similarity": float(start_sim), "select/tax": 0.0,
                       "select/none_within_budget": 1.0}
        else:
            d = self.dir / STEP_DIR_FORMAT.format(chosen.step)
            self._check(d, chosen)
            load(d)
            where = str(d)
            self.log.info("checkpoint selection: step %d (%s %.4f, %s %.4f <= %g) of %d evaluations; output %s",
                          chosen.step, cfg.metric, chosen.similarity, cfg.tax, chosen.tax, cfg.max_tax,
                          len(curve), d)
            metrics = {"select/step": float(chosen.step), "select/similarity": chosen.similarity,
                       "select/tax": chosen.tax, "select/none_within_budget": 0.0}
        metrics.update({"select/max_tax": cfg.max_tax, "select/evaluations": float(len(curve)),
                        "select/similarity_start": float(start_sim)})
        if self.is_main:
            for d in self._dirs():  # only the choice stays on disk
                if chosen is None or step_of(d) != chosen.step:
                    shutil.rmtree(d)
            atomic_write_json(self.work_dir / "selection.json", {
                "metric": cfg.metric, "tax_metric": cfg.tax, "max_tax": cfg.max_tax, "every": cfg.every,
                "chosen_step": None if chosen is None else chosen.step,
                "similarity": metrics["select/similarity"], "tax": metrics["select/tax"],
                "none_within_budget": chosen is None, "candidates_up_to_step": limit,
                "similarity_start": None if math.isnan(start_sim) else start_sim,
                "output_weights": where, "curve": curve})
        return metrics, where

    @staticmethod
    def _check(d: Path, chosen: Candidate) -> None:
        problem = verify_step_checkpoint(d) if d.is_dir() else f"{d} is missing"
        if problem is None:
            rec = json.loads((d / "candidate.json").read_text(encoding="utf-8"))
            if rec.get("step") != chosen.step or rec.get("similarity") != chosen.similarity:
                problem = (f"{d / 'candidate.json'} records step {rec.get('step')} similarity "
                           f"{rec.get('similarity')}, the run's history step {chosen.step} similarity "
                           f"{chosen.similarity}")
        if problem is not None:
            raise RunDirError(f"checkpoint selection chose step {chosen.step} but its weights cannot be used: "
                              f"{problem}")


def _fmt(v: float) -> str:
    return "none" if not math.isfinite(v) else f"{v:.4f}"
