"""POPE (Li et al., 2023): object-hallucination probing with yes/no questions.

Per split (random, popular, adversarial): accuracy, precision, recall, F1 (positive =
"yes") and the yes-ratio of the *predictions*, plus the number of unparsed replies
(scored as wrong). The unsuffixed metrics are the means over the splits present.

``parse`` picks how a reply becomes yes/no:

* ``strict`` (default): :func:`ftib.evals.extract.extract_yes_no`, the Tibetan /
  Chinese / English grammar; a reply it cannot read is unparsed (wrong, not-yes).
* ``official``: :func:`ftib.evals.extract.pope_official`, the rule of the original POPE
  script (no ``No``/``no``/``not`` in the first sentence means yes), so numbers compare
  with published POPE tables. It reads only English and never leaves a reply
  unparsed, so a Tibetan "no" (``མེད``) counts as yes: use it only to compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ftib.data.prompts import yes_no_prompt
from ftib.evals import extract as ex
from ftib.evals.base import BenchConfig, BenchmarkEvaluator
from ftib.evals.loaders import Item
from ftib.evals.metrics import binary_metrics

SPLIT_ORDER = ("random", "popular", "adversarial")
MEANED = ("accuracy", "precision", "recall", "f1", "yes_ratio", "unparsed_ratio")


class PopeEvaluator(BenchmarkEvaluator):
    @dataclass(frozen=True, kw_only=True)
    class Config(BenchConfig):
        """Attributes:
            parse: ``strict`` (ftib's grammar) or ``official`` (the POPE script's rule).
        """

        max_new_tokens: int = 8
        parse: Literal["strict", "official"] = "strict"

    bench = "pope"
    answer_kind = "yes_no"

    def prompt(self, item: Item) -> str:
        return yes_no_prompt(item.question, self.config.lang)

    def parse(self, item: Item, reply: str) -> ex.Parsed:
        if self.config.parse == "official":
            return ex.pope_official(reply)
        return super().parse(item, reply)

    def metrics(self, items: Sequence[Item], records: Sequence[dict[str, Any]]):
        splits = sorted({it.meta["split"] for it in items},
                        key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else 99, s))
        per: dict[str, dict[str, float]] = {}
        for s in splits:
            rows = [r for it, r in zip(items, records) if it.meta["split"] == s]
            per[s] = binary_metrics([r["parsed"] for r in rows], [r["gold"] for r in rows], "yes")
        metrics = {k: sum(per[s][k] for s in splits) / len(splits) for k in MEANED} if splits else {}
        metrics["unparsed"] = sum(per[s]["unparsed"] for s in splits)
        for s in splits:
            for k, v in per[s].items():
                metrics[f"{s}/{k}"] = v
        return metrics, {"splits": per}
