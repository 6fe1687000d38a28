"""Translation (default Tibetan -> Chinese): BLEU and chrF through sacrebleu, plus
semantic similarity.

BLEU's tokenisation follows the target language: Chinese by character (sacrebleu's
``zh`` tokenizer), Tibetan by syllable (:mod:`ftib.evals.text`, tsheg/shad aware, then
sacrebleu's ``none``), anything else with sacrebleu's ``13a``.

chrF (Popović, 2015) and chrF++ (Popović, 2017; word bigrams added) use sacrebleu's
defaults (character 6-grams, beta=2, whitespace ignored) on the *raw* text, as the
published FLORES-200 / NLLB Tibetan numbers do (``chrf``, ``chrf++``): tsheg and shad
count as characters there. For Tibetan targets ftib also reports ``chrf_syllable``:
chrF over the normalised syllables joined by spaces (tsheg and shad dropped, two
spellings of one syllable equal), which is not comparable with published tables.
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
    """Corpus BLEU, chrF and chrF++ (0-100; chrF on raw text) and sentence chrF per item
    for target ``lang``; Tibetan adds ``chrf_syllable`` (see the module docstring)."""
    import sacrebleu

    hyps, refs = list(hyps), list(refs)
    chrf = sacrebleu.corpus_chrf(hyps, [refs])
    chrfpp = sacrebleu.corpus_chrf(hyps, [refs], word_order=2)
    per = [{"chrf": sacrebleu.sentence_chrf(h, [r]).score} for h, r in zip(hyps, refs)]
    out = {"chrf": chrf.score, "chrf++": chrfpp.score}
    if lang == "bo":
        sh = [tokenize_for_metric(h) for h in hyps]
        sr = [tokenize_for_metric(r) for r in refs]
        out["bleu"] = sacrebleu.corpus_bleu(sh, [sr], tokenize="none").score
        out["chrf_syllable"] = sacrebleu.corpus_chrf(sh, [sr]).score
        for p, h, r in zip(per, sh, sr):
            p["chrf_syllable"] = sacrebleu.sentence_chrf(h, [r]).score
    else:
        out["bleu"] = sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh" if lang == "zh" else "13a").score
    return out, per


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
