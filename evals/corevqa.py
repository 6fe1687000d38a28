"""COREVQA: true/false statements about crowded scenes.

Accuracy, per-label accuracy (``accuracy/true``, ``accuracy/false``) and balanced
accuracy; the reply is parsed with the yes/no rules mapped to true/false.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ftib.data.prompts import statement_prompt
from ftib.evals.base import BenchConfig, BenchmarkEvaluator
from ftib.evals.loaders import Item
from ftib.evals.metrics import label_metrics


class COREVQAEvaluator(BenchmarkEvaluator):
    @dataclass(frozen=True, kw_only=True)
    class Config(BenchConfig):
        max_new_tokens: int = 8

    bench = "corevqa"
    answer_kind = "true_false"

    def prompt(self, item: Item) -> str:
        return statement_prompt(item.question, self.config.lang)

    def metrics(self, items: Sequence[Item], records: Sequence[dict[str, Any]]):
        return label_metrics(records, ("true", "false")), {}
