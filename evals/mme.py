"""MME (Fu et al., 2023): yes/no question pairs per image, per subtask.

Per subtask: ``acc`` (questions right, %), ``acc_plus`` (images with both questions
right, %) and ``score = acc + acc_plus`` (0-200). ``perception`` and ``cognition`` sum
the subtask scores of each half (:data:`ftib.evals.metrics.MME_PERCEPTION`,
:data:`~ftib.evals.metrics.MME_COGNITION`). Only the 14 official subtask names are
accepted: an unknown or misspelt one is an error naming the file (the loader) or the
config key, never a silent 15th perception subtask. The questions are used as written
in the files: MME's questions carry their own answer instruction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ftib.evals.base import BenchConfig, BenchmarkEvaluator
from ftib.evals.loaders import Item
from ftib.evals.metrics import MME_COGNITION, check_mme_subtasks, mme_scores


class MMEEvaluator(BenchmarkEvaluator):
    """Yes/no; unparsed replies are wrong (and make acc+ of their image 0)."""

    @dataclass(frozen=True, kw_only=True)
    class Config(BenchConfig):
        """Attributes:
            cognition_subtasks: subtasks summed into ``cognition`` (the rest is perception).
        """

        max_new_tokens: int = 8
        cognition_subtasks: tuple[str, ...] = MME_COGNITION

        def __post_init__(self) -> None:
            super().__post_init__()
            check_mme_subtasks(self.cognition_subtasks, "cognition_subtasks")

    bench = "mme"
    answer_kind = "yes_no"

    def prompt(self, item: Item) -> str:
        return item.question

    def metrics(self, items: Sequence[Item], records: Sequence[dict[str, Any]]):
        res = mme_scores([it.meta["subtask"] for it in items], [it.meta["image_id"] for it in items],
                         [r["correct"] for r in records], self.config.cognition_subtasks)
        metrics = {"perception": res["perception"], "cognition": res["cognition"], "total": res["total"],
                   "unparsed_ratio": sum(r["parsed"] is None for r in records) / max(len(records), 1)}
        for sub, s in res["subtasks"].items():
            for k in ("acc", "acc_plus", "score"):
                metrics[f"{sub}/{k}"] = s[k]
        return metrics, {"subtasks": res["subtasks"]}
