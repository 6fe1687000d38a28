"""MMBench (Liu et al., 2023) with CircularEval, on the original TSV format.

Every question appears once per rotation of its options (rows ``index + k*1_000_000``);
under CircularEval a question counts only if every rotation is answered right, which
removes the gain from guessing and from position bias. Vanilla accuracy is over the
original rows only. Both are reported overall and per ``category`` / ``l2-category``.

Groups are built from the original rows, as VLMEvalKit does: rotated rows whose
original is missing are skipped and counted (``skipped_rows``, with a warning naming
the first ids). A question with fewer rotations than options counts wrong and is
reported (``missing_rotation``). ``chance/circular`` and ``chance/vanilla`` are a
uniform guesser's scores per question's own option count (see
:func:`ftib.evals.metrics.circular_eval`).
"""

from __future__ import annotations

import logging

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ftib.data.prompts import multiple_choice_prompt
from ftib.evals.base import BenchConfig, BenchmarkEvaluator
from ftib.evals.loaders import Item
from ftib.evals.metrics import circular_eval


class MMBenchEvaluator(BenchmarkEvaluator):
    """Multiple choice over A-D; the reply is parsed to a letter."""

    @dataclass(frozen=True, kw_only=True)
    class Config(BenchConfig):
        max_new_tokens: int = 8

    bench = "mmbench"
    answer_kind = "choice"

    def prompt(self, item: Item) -> str:
        return multiple_choice_prompt(item.question, item.options, item.hint, lang=self.config.lang)

    def metrics(self, items: Sequence[Item], records: Sequence[dict[str, Any]]):
        res = circular_eval(
            [it.meta["index"] for it in items], [r["correct"] for r in records],
            {"category": [it.meta["category"] for it in items],
             "l2-category": [it.meta["l2-category"] for it in items]},
            n_options=[len(it.options) for it in items],
        )
        if res["skipped_rows"]:
            logging.getLogger("ftib.evals").warning(
                "mmbench: %d rotated rows (%d questions) have no original row (index < 1e6) and are "
                "skipped, as VLMEvalKit does; first question ids: %s",
                res["skipped_rows"], res["skipped_groups"], res["skipped_ids"])
        if res["missing_rotation"]:
            logging.getLogger("ftib.evals").warning(
                "mmbench: %d questions miss a rotation and count as wrong; first ids: %s",
                res["missing_rotation"], res["missing_ids"])
        unparsed = sum(r["parsed"] is None for r in records)
        metrics = {"circular": res["circular"], "vanilla": res["vanilla"],
                   "questions": float(res["groups"]), "rows": float(len(records)),
                   "unparsed_ratio": unparsed / len(records) if records else 0.0,
                   "skipped_rows": float(res["skipped_rows"]),
                   "missing_rotation": float(res["missing_rotation"]),
                   "chance/circular": res["chance_circular"], "chance/vanilla": res["chance_vanilla"]}
        for cat, v in res["per_category"]["circular"].items():
            metrics[f"circular/{cat}"] = v
        details = {"per_category": res["per_category"], "per_l2-category": res["per_l2-category"],
                   "skipped_ids": res["skipped_ids"], "missing_ids": res["missing_ids"]}
        return metrics, details
