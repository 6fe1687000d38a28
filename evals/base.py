"""What every FTibBench evaluator shares: config, prompting, parsing, records.

An evaluator's work is split so that everything after generation is testable without a
model:

* :meth:`BenchmarkEvaluator.load` reads and validates the items (:mod:`ftib.evals.loaders`);
* :meth:`~BenchmarkEvaluator.prompt` turns an item into the Tibetan prompt the model sees
  (the templates live in :mod:`ftib.data.prompts`, shared with the SFT data);
* :meth:`~BenchmarkEvaluator.run` asks a :class:`~ftib.evals.generate.Generator` for the
  replies, then :meth:`~BenchmarkEvaluator.score` parses them
  (:mod:`ftib.evals.extract`) and computes the metrics (:mod:`ftib.evals.metrics`).

``evaluate(ctx)`` (the plugin contract) only builds the generator (and the optional
judge) from the run context and calls ``run``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

from ftib.core.config import path_field
from ftib.core.interfaces import EvalResult, Evaluator, RunContext
from ftib.data.loaders import check_pixel_range
from ftib.evals import extract as ex
from ftib.evals.generate import Decoding, Generator, TransformersGenerator, generator_from_context
from ftib.evals.loaders import LANGS, Item, check_data, load_items
from ftib.evals.metrics import rule_shares
from ftib.models.chat import strip_thinking

log = logging.getLogger("ftib.evals")

YES_NO = {"yes": "yes", "no": "no"}
CHUNK_BATCHES = 8
TRUE_FALSE = {"true": "true", "false": "false"}


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """Settings shared by the FTibBench evaluators.

    Attributes:
        data: ``ftibworld[:SIZE[:SEED]]`` (FTibBench-mini of the cached FTibWorld build,
            made on first use), a FTibWorld build folder, the benchmark's folder or its
            file; see :mod:`ftib.evals.loaders`.
        images: image folder for the JSON/CSV formats (default: ``images/`` beside the file).
        limit: evaluate only the first ``limit`` items of each file (MMBench: questions,
            with all their rotations; MME: images per subtask); ``None`` for all.
        max_new_tokens: reply length cap.
        batch_size: prompts per ``generate`` call.
        judge_model: a local model (directory or preset name) that resolves the replies
            no deterministic rule could parse; ``None``: unresolved replies stay wrong.
        judge_max_new_tokens: the judge's reply length cap.
        do_sample, temperature, top_p: sampling instead of greedy decoding (off by
            default; results then vary with the seed).
        enable_thinking: passed to the model's chat template (``False``: Qwen3 answers
            without thinking; ``None``: the template's default). Replies are scored after
            any think block, with the strip rule recorded per item (``think_strip``).
        lang: ``bo`` (Tibetan) or ``zh`` (Chinese): which copy of FTibBench-mini a
            FTibWorld ``data`` reads, and the language of the answering instruction
            in the prompt (:mod:`ftib.data.prompts`).
        min_pixels, max_pixels: the images' pixel budget (Qwen's names, as the ``align``
            and ``sft`` stages; :mod:`ftib.models.pixels`): each image is resized, aspect
            kept, to an area in this range, so it becomes area / (patch * merge)**2 image
            tokens. ``None``: the model processor's own (Qwen3-VL: up to 16.7 MP, ~16k
            tokens). A budget below one patch grid is a config error. The budget in
            effect is recorded in the result's ``details["pixel_budget"]``.
    """

    data: str = "ftibworld"
    images: Path | None = path_field(kind="dir", default=None)
    limit: int | None = None
    max_new_tokens: int = 16
    batch_size: int = 8
    judge_model: str | None = None
    judge_max_new_tokens: int = 4
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    enable_thinking: bool | None = False
    lang: str = "bo"
    min_pixels: int | None = None
    max_pixels: int | None = None

    def __post_init__(self) -> None:
        check_data(self.data)
        check_pixel_range(self.min_pixels, self.max_pixels)
        if self.lang not in LANGS:
            raise ValueError(f"lang must be one of {', '.join(LANGS)}, got {self.lang!r}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or null, got {self.limit}")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"temperature must be > 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")


class BenchmarkEvaluator(Evaluator):
    """Base of the question-answering benchmarks (not itself a plugin).

    Subclasses set :attr:`bench` (the loader's name), :attr:`answer_kind` and
    implement :meth:`prompt` and :meth:`metrics`.
    """

    Config: ClassVar[type] = BenchConfig
    bench: ClassVar[str]
    #: ``"choice"`` (option letters), ``"yes_no"`` or ``"true_false"``.
    answer_kind: ClassVar[str]

    # -- the pieces ---------------------------------------------------------------
    def load(self) -> list[Item]:
        return load_items(self.bench, self.config.data, self.config.images, self.config.limit,
                          lang=self.config.lang)

    def prompt(self, item: Item) -> str:
        raise NotImplementedError

    def decoding(self) -> Decoding:
        c = cast(BenchConfig, self.config)
        return Decoding(max_new_tokens=c.max_new_tokens, batch_size=c.batch_size, do_sample=c.do_sample,
                        temperature=c.temperature, top_p=c.top_p, enable_thinking=c.enable_thinking,
                        min_pixels=c.min_pixels, max_pixels=c.max_pixels)

    def allowed(self, item: Item) -> Mapping[str, str]:
        if self.answer_kind == "choice":
            return item.options
        return TRUE_FALSE if self.answer_kind == "true_false" else YES_NO

    def parse(self, item: Item, reply: str) -> ex.Parsed:
        if self.answer_kind == "choice":
            return ex.extract_choice(reply, item.options)
        labels = ("true", "false") if self.answer_kind == "true_false" else ("yes", "no")
        # The question is passed for its kind only (an existence question reads a
        # copula after a noun as no answer); its words never decide.
        return ex.extract_yes_no(reply, labels, question=item.question)

    def metrics(self, items: Sequence[Item], records: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, Any]]:
        """Scalar metrics and nested details from the scored records."""
        raise NotImplementedError

    # -- scoring and running ------------------------------------------------------
    def score(self, items: Sequence[Item], replies: Sequence[str], judge: ex.Judge | None = None) -> EvalResult:
        """Parse ``replies`` (one per item, in order) and compute the metrics."""
        if len(items) != len(replies):
            raise ValueError(f"{len(replies)} replies for {len(items)} items")
        records: list[dict[str, Any]] = []
        for item, reply in zip(items, replies):
            answer, think_strip = strip_thinking(reply)
            parsed = self.parse(item, answer)
            parsed = ex.resolve(parsed, judge, self.prompt(item), answer, self.allowed(item))
            records.append({
                "id": item.id,
                "prediction": reply,
                "parsed": parsed.value,
                "gold": item.gold,
                "correct": parsed.value is not None and parsed.value == item.gold,
                "rule": parsed.rule,
                "evidence": parsed.evidence,
                "think_strip": think_strip,
                **{k: v for k, v in item.meta.items() if k not in ("image_id",)},
            })
        metrics, details = self.metrics(items, records)
        shares = rule_shares([r["rule"] for r in records], ex.RULES)
        metrics.update({f"rule/{k}": v for k, v in shares.items() if v > 0 or k == ex.NONE})
        details["rules"] = shares
        details["items"] = len(items)
        return EvalResult(metrics=metrics, records=records, details=details)

    def run(self, generator: Generator, judge: ex.Judge | None = None, items: Sequence[Item] | None = None) -> EvalResult:
        """Generate a reply per item with ``generator``, then :meth:`score`."""
        items = self.load() if items is None else list(items)
        decoding = self.decoding()
        budget = self.pixel_budget(generator, decoding)
        log.info("%s: %d items, %s, pixel budget %s", self.bench, len(items), decoding.as_dict(), budget)
        # Images are decoded a few batches at a time, not all at once (real MMBench has
        # thousands of rows).
        chunk = decoding.batch_size * CHUNK_BATCHES
        replies: list[str] = []
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            got = generator.generate([(self.prompt(it), it.load_image()) for it in part], decoding)
            if len(got) != len(part):
                raise RuntimeError(f"the generator returned {len(got)} replies for {len(part)} prompts")
            replies += got
        result = self.score(items, replies, judge)
        result.details["decoding"] = decoding.as_dict()
        result.details["pixel_budget"] = budget
        result.details["judge"] = self.config.judge_model
        return result

    def pixel_budget(self, generator: Generator, decoding: Decoding) -> dict[str, Any]:
        """The images' budget for the record, checked before any generation:
        ``{"min_pixels", "max_pixels", "source"}`` with ``source`` ``config`` (set in the
        evaluator's config) or ``processor`` (the model processor's own). A generator
        that is not a :class:`TransformersGenerator` (scripted, prediction files) only
        has the configured values (``None``: its own)."""
        lo, hi = decoding.min_pixels, decoding.max_pixels
        source = "processor" if lo is None and hi is None else "config"
        budget: dict[str, Any] = {"min_pixels": lo, "max_pixels": hi, "source": source}
        if isinstance(generator, TransformersGenerator):
            # Raises ConfigError naming <bench>.min_pixels / max_pixels before any work.
            effective = generator.pixel_budget(decoding, where=self.bench)
            if effective is not None:
                budget.update(min_pixels=effective[0], max_pixels=effective[1])
        return budget

    def make_judge(self, ctx: RunContext) -> ex.Judge | None:
        if self.config.judge_model is None:
            return None
        from ftib.models.bundle import load_bundle

        gen = TransformersGenerator(load_bundle(self.config.judge_model, device=ctx.device))
        decoding = Decoding(max_new_tokens=self.config.judge_max_new_tokens, batch_size=1)
        return ex.GeneratorJudge(lambda texts: gen.generate([(t, None) for t in texts], decoding))

    def evaluate(self, ctx: RunContext) -> EvalResult:
        return self.run(generator_from_context(ctx), self.make_judge(ctx))
