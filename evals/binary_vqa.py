"""BinaryVQA (Borji, 2023): yes/no questions, unbalanced labels.

Because the labels are unbalanced, accuracy per gold label (``accuracy/yes``,
``accuracy/no``) and their mean (``balanced_accuracy``) are reported beside accuracy; a
model that always says "yes" scores the share of "yes" labels in accuracy but 0.5 in
balanced accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ftib.data.prompts import yes_no_prompt
from ftib.evals.base import BenchConfig, BenchmarkEvaluator
from ftib.evals.loaders import Item
from ftib.evals.metrics import label_metrics


class BinaryVQAEvaluator(BenchmarkEvaluator):
    @dataclass(frozen=True, kw_only=True)
    class Config(BenchConfig):
        max_new_tokens: int = 8

    bench = "binary_vqa"
    answer_kind = "yes_no"

    def prompt(self, item: Item) -> str:
        return yes_no_prompt(item.question, self.config.lang)

    def metrics(self, items: Sequence[Item], records: Sequence[dict[str, Any]]):
        return label_metrics(records, ("yes", "no")), {}
