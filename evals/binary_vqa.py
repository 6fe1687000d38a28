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
from ftib.evals.metrics import accuracy, binary_metrics, grouped_accuracy


def label_metrics(records: Sequence[dict[str, Any]], labels: tuple[str, str]) -> dict[str, float]:
    """Accuracy, per-label accuracy, balanced accuracy, positive ratio, unparsed ratio."""
    correct = [r["correct"] for r in records]
    per = grouped_accuracy(correct, [r["gold"] for r in records])
    out = {"accuracy": accuracy(correct)}
    for lab in labels:
        out[f"accuracy/{lab}"] = per.get(lab, 0.0)
    present = [per[lab] for lab in labels if lab in per]
    out["balanced_accuracy"] = sum(present) / len(present) if present else 0.0
    b = binary_metrics([r["parsed"] for r in records], [r["gold"] for r in records], labels[0])
    out[f"{labels[0]}_ratio"] = b["yes_ratio"]
    out["unparsed_ratio"] = b["unparsed_ratio"]
    return out


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
