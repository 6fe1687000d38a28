"""Headline generation (Tibetan report -> Tibetan headline): ROUGE-L over Tibetan
syllables, plus semantic similarity.

ROUGE-L F1 (Lin, 2004) per item on :func:`ftib.evals.text.metric_tokens` (syllables,
tsheg and shad dropped; not jieba, not whitespace), averaged over items.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftib.data.prompts import headline_prompt
from ftib.evals.loaders import Item
from ftib.evals.metrics import mean, rouge_l
from ftib.evals.text import metric_tokens
from ftib.evals.textgen import TextTaskConfig, TextTaskEvaluator


class HeadlineEvaluator(TextTaskEvaluator):
    @dataclass(frozen=True, kw_only=True)
    class Config(TextTaskConfig):
        max_new_tokens: int = 48

    bench = "headline"

    def prompt(self, item: Item) -> str:
        return item.prompt or headline_prompt(item.question)

    def surface(self, hyps, refs):
        per = []
        for h, r in zip(hyps, refs):
            s = rouge_l(metric_tokens(h), metric_tokens(r))
            per.append({"rouge_l": s["f"], "rouge_l_precision": s["precision"], "rouge_l_recall": s["recall"]})
        return {"rouge_l": mean(x["rouge_l"] for x in per) if per else 0.0}, per
