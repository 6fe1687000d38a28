"""Translation (default Tibetan -> Chinese): BLEU and chrF through sacrebleu, plus
semantic similarity.

Tokenisation follows the target language: Chinese by character (sacrebleu's ``zh``
tokenizer), Tibetan by syllable (:mod:`ftib.evals.text`, tsheg/shad aware, then
sacrebleu's ``none``), anything else with sacrebleu's ``13a``. chrF (Popović, 2015;
sacrebleu defaults: character 6-grams, beta=2, whitespace ignored) sees Tibetan as its
syllables joined by spaces, so tsheg and shad do not count as characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ftib.data.prompts import translation_prompt
from ftib.evals.loaders import Item
from ftib.evals.text import tokenize_for_metric
from ftib.evals.textgen import TextTaskConfig, TextTaskEvaluator


def bleu_chrf(hyps: Sequence[str], refs: Sequence[str], lang: str) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Corpus BLEU and chrF (0-100) and sentence chrF per item for target ``lang``."""
    import sacrebleu

    if lang == "bo":
        hyps = [tokenize_for_metric(h) for h in hyps]
        refs = [tokenize_for_metric(r) for r in refs]
        tok = "none"
    else:
        tok = "zh" if lang == "zh" else "13a"
    bleu = sacrebleu.corpus_bleu(list(hyps), [list(refs)], tokenize=tok)
    chrf = sacrebleu.corpus_chrf(list(hyps), [list(refs)])
    per = [{"chrf": sacrebleu.sentence_chrf(h, [r]).score} for h, r in zip(hyps, refs)]
    return {"bleu": bleu.score, "chrf": chrf.score}, per


class TranslationEvaluator(TextTaskEvaluator):
    @dataclass(frozen=True, kw_only=True)
    class Config(TextTaskConfig):
        """Attributes:
            target_lang: language of the references (``zh``, ``bo``, ``en``), which picks
                the tokenisation.
        """

        target_lang: Literal["zh", "bo", "en"] = "zh"

    bench = "translation"

    def prompt(self, item: Item) -> str:
        return item.prompt or translation_prompt(item.question)

    def surface(self, hyps, refs):
        return bleu_chrf(hyps, refs, self.config.target_lang)
