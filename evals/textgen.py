"""Text-generation tasks scored against references: translation and headline.

Shared anatomy (:class:`TextTaskEvaluator`): each item's prompt is the one stored in the
file (FTibWorld stores it) or the template from :mod:`ftib.data.prompts`; the reply is
cleaned (:meth:`TextTaskEvaluator.clean`) and compared with the reference by the
subclass's surface metrics plus, when ``encoder`` is configured, semantic similarity.
Records carry ``correct=None`` (no single right answer) and the per-item scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ftib.core.interfaces import EvalResult, Evaluator, RunContext
from ftib.evals.generate import Decoding, Generator, generator_from_context
from ftib.evals.loaders import Item, check_data, load_items
from ftib.evals.metrics import mean
from ftib.models.chat import strip_thinking


@dataclass(frozen=True, kw_only=True)
class TextTaskConfig:
    """Attributes:
        data: ``ftibworld[:SIZE[:SEED]]``, a FTibWorld build folder, or the test file
            (JSON lines ``id, source|report, reference|headline``).
        limit: first ``limit`` items only.
        max_new_tokens: reply length cap.
        batch_size: prompts per ``generate`` call.
        encoder: sentence-transformers model for semantic similarity: a local
            directory, or ``ftibworld-encoder`` (the FTibWorld reward encoder of the
            GRPO stage, trained on first use and cached); ``None`` skips it.
        do_sample, temperature, top_p: sampling instead of greedy decoding (off by default).
    enable_thinking: passed to the model's chat template (``False``: Qwen3 answers
        without thinking; ``None``: the template's default). Replies are scored after
        any think block, with the strip rule recorded per item (``think_strip``).
    """

    data: str = "ftibworld"
    limit: int | None = None
    max_new_tokens: int = 64
    batch_size: int = 8
    encoder: str | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    enable_thinking: bool | None = False

    def __post_init__(self) -> None:
        check_data(self.data)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or null, got {self.limit}")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"temperature must be > 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        from ftib.models.reward_encoder import FTIBWORLD_ENCODER

        if self.encoder is not None and not str(self.encoder).startswith(FTIBWORLD_ENCODER) \
                and not Path(self.encoder).is_dir():
            raise ValueError(f"encoder: {self.encoder!r} is neither {FTIBWORLD_ENCODER!r} nor a local "
                             "sentence-transformers model directory")


class TextTaskEvaluator(Evaluator):
    """Base of translation and headline (not itself a plugin)."""

    Config: ClassVar[type] = TextTaskConfig
    bench: ClassVar[str]

    def load(self) -> list[Item]:
        return load_items(self.bench, self.config.data, None, self.config.limit)

    def prompt(self, item: Item) -> str:
        raise NotImplementedError

    def clean(self, reply: str) -> str:
        """The part of a reply that is scored: after any think block
        (:func:`~ftib.models.chat.strip_thinking`), stripped, first non-empty line."""
        reply, _ = strip_thinking(reply)
        for line in reply.strip().splitlines():
            if line.strip():
                return line.strip()
        return ""

    def surface(self, hyps: Sequence[str], refs: Sequence[str]) -> tuple[dict[str, float], list[dict[str, float]]]:
        """Corpus metrics and per-item metrics."""
        raise NotImplementedError

    def score(self, items: Sequence[Item], replies: Sequence[str], encoder: Any = None) -> EvalResult:
        if len(items) != len(replies):
            raise ValueError(f"{len(replies)} replies for {len(items)} items")
        hyps = [self.clean(r) for r in replies]
        refs = [it.gold or "" for it in items]
        metrics, per_item = self.surface(hyps, refs)
        if encoder is not None:
            sims = encoder.similarity(hyps, refs)
            metrics["similarity"] = mean(sims)
            for row, s in zip(per_item, sims):
                row["similarity"] = s
        metrics["empty_ratio"] = sum(not h for h in hyps) / len(hyps) if hyps else 0.0
        records = [
            {"id": it.id, "prediction": reply, "parsed": h, "gold": it.gold, "correct": None,
             "think_strip": strip_thinking(reply)[1], **row}
            for it, reply, h, row in zip(items, replies, hyps, per_item)
        ]
        details = {"items": len(items),
                   "encoder": str(self.config.encoder) if self.config.encoder else None}
        return EvalResult(metrics=metrics, records=records, details=details)

    def make_encoder(self, device: str = "cpu"):
        if self.config.encoder is None:
            return None
        from ftib.evals.similarity import Encoder
        from ftib.models.reward_encoder import resolve_encoder

        return Encoder(resolve_encoder(self.config.encoder, self.config.data), device=device)

    def run(self, generator: Generator, encoder: Any = None, items: Sequence[Item] | None = None) -> EvalResult:
        items = self.load() if items is None else list(items)
        c = self.config
        decoding = Decoding(max_new_tokens=c.max_new_tokens, batch_size=c.batch_size, do_sample=c.do_sample,
                            temperature=c.temperature, top_p=c.top_p, enable_thinking=c.enable_thinking)
        replies = generator.generate([(self.prompt(it), None) for it in items], decoding)
        if len(replies) != len(items):
            raise RuntimeError(f"the generator returned {len(replies)} replies for {len(items)} prompts")
        result = self.score(items, replies, encoder)
        result.details["decoding"] = decoding.as_dict()
        return result

    def evaluate(self, ctx: RunContext) -> EvalResult:
        return self.run(generator_from_context(ctx), self.make_encoder(ctx.device))
