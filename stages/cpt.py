"""CPT: continual pretraining of the language model on Tibetan text.

What it trains: the language model (text-only LMs, or the decoder inside Qwen3-VL — the
vision tower and merger stay frozen), on plain Tibetan text.

Algorithmic choices, in order:

1. *Optional vocabulary extension* (``extend``): continued BPE on the corpus on top of the
   model's byte-level BPE (:mod:`ftib.models.vocab`), then the embedding matrices are
   resized and each new row is initialised as the mean of the base rows of its pieces
   (:func:`ftib.models.extend_embeddings`). It is deterministic, so a resumed run redoes
   it and lands on the same tokenizer.
2. *Normalisation*: every document goes through :func:`ftib.kernels.tibetan.normalize`
   (the mark-reordering rules that ``tokenizer.json`` cannot express).
3. *Tokenisation* through ``datasets.map(batched=True)``; the model's document end ends
   every document (``<|endoftext|>`` for Qwen, its pretraining separator — not the chat
   turn end ``<|im_end|>`` that Qwen3's tokenizer names as EOS;
   :func:`ftib.models.chat.document_end_id`).
4. *Packing* (default) into ``block_size`` blocks with per-document positions and labels
   that never cross a document (:mod:`ftib.data.packing`; a document longer than a block
   continues in the next one, counted as ``data_split_documents``); or, with
   ``packing: false``, one document per row, truncated to ``block_size`` (counted as
   ``data_truncated``) and padded to the batch's longest.
5. *Trainable set* from ``trainable.mode`` (``new_embeddings | embeddings | lora | full``),
   see :mod:`ftib.stages.common`; the shared loop (:mod:`ftib.core.train`) does the rest.

Input (``data``): UTF-8 text files, one document per non-empty line (``.txt``), JSON Lines
with a ``text`` field (``.jsonl``), Parquet with a ``text`` column, a folder of such files
(what ``ftib data clean --out DIR`` writes), or ``ftibworld[:SIZE[:SEED]]`` for FTibWorld's CPT
corpus (``cpt/corpus.jsonl``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ftib.core import ConfigError, FtibError, Stage, StageResult
from ftib.core.rundir import iter_jsonl
from ftib.data.documents import read_documents, tokenize_documents
from ftib.data.lexicon import read_lexicon
from ftib.core.train import TrainConfig, Trainer
from ftib.stages.common import (LabelledLMTask, TrainableConfig, kernel_metrics, save_model_dir, select_trainable,
                                trainable_parameter_count, training_bundle)


@dataclass(frozen=True, kw_only=True)
class ExtendSpec:
    """Tokenizer extension run as CPT's first step.

    Attributes:
        add: new tokens to learn (at most).
        min_frequency: a merge must occur at least this often.
        init: initialisation of the new embedding rows.
        lexicon: bilingual lexicon for the new rows' initialisation (``None``: ``init`` only).
        pad_to_multiple_of: grow the embedding matrices to a multiple of this many rows
            (rows past the tokenizer are never input; as output rows they only learn to
            stay unlikely), as Qwen's own 151,936 rows are. Matrix products with an odd
            vocabulary size are markedly slower: a CPT step of a tiny Qwen3 on the CPU
            took 12 % longer with 154,757 rows than with 154,880. ``None`` = exactly the
            tokenizer's size.
    """

    add: int = 2000
    min_frequency: int = 2
    init: Literal["mean", "random"] = "mean"
    pad_to_multiple_of: int | None = 128
    #: a bilingual lexicon (``ftibworld``, or a ``.tsv`` / ``.jsonl`` file, see
    #: :func:`read_lexicon`): new tokens of its Tibetan words start from the embedding of
    #: their translation (:func:`ftib.models.embeddings.lexicon_translations`)
    lexicon: str | None = None

    def __post_init__(self) -> None:
        if self.add < 1:
            raise ValueError(f"extend.add must be >= 1, got {self.add}")
        if self.lexicon is not None and self.lexicon != "ftibworld" and not Path(self.lexicon).expanduser().is_file():
            raise ConfigError(f"extend.lexicon: {self.lexicon!r} is not a file (a .tsv or .jsonl lexicon, "
                              "or ftibworld for the world's own)")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"extend.pad_to_multiple_of must be >= 1 or null, got {self.pad_to_multiple_of}")


@dataclass(frozen=True, kw_only=True)
class CPTConfig:
    """Configuration of the ``cpt`` stage (see the module docstring)."""

    data: tuple[str, ...] = ("ftibworld",)
    block_size: int = 256
    packing: bool = True
    max_documents: int | None = None
    extend: ExtendSpec | None = None
    kernel_impl: Literal["auto", "triton", "torch", "reference"] = "auto"
    trainable: TrainableConfig = TrainableConfig(mode="full")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4, warmup_steps=10))

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("data: give at least one text/JSONL file or ftibworld[:SIZE[:SEED]]")
        from ftib.data.sources import check_spec

        for i, spec in enumerate(self.data):
            check_spec(spec, f"data[{i}]")
        if self.block_size < 8:
            raise ValueError(f"block_size must be >= 8, got {self.block_size}")


class _CPTTask(LabelledLMTask):
    """The loop's view of CPT: rows of a packed (or padded) token table."""

    def __init__(self, model: torch.nn.Module, groups: list, rows: list[dict[str, torch.Tensor]], pad_id: int,
                 packing: bool, save: Any) -> None:
        self.model, self._groups, self.rows, self.pad_id = model, groups, rows, pad_id
        self.packing, self._save = packing, save

    def train_samples(self) -> list[dict[str, torch.Tensor]]:
        return self.rows

    def collate(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if self.packing:
            return {k: torch.stack([it[k] for it in items]) for k in items[0]}
        from ftib.data.packing import pad_batch

        return pad_batch([it["input_ids"].tolist() for it in items], pad_id=self.pad_id)


class CPTStage(Stage):
    """Continual pretraining on Tibetan text (see the module docstring)."""

    Config = CPTConfig

    def run(self, ctx):
        from ftib.data.packing import pack_documents
        cfg: CPTConfig = self.config
        bundle = training_bundle(ctx, cfg.trainable)
        model = bundle.model
        tokenizer = bundle.tokenizer
        from ftib.data.loaders import world_file
        from ftib.data.sources import resolve

        docs = read_documents(tuple(resolve(spec, world_file("cpt")) for spec in cfg.data), cfg.max_documents)
        new_token_start = lexicon_tokens = None
        if cfg.extend is not None:
            tokenizer, new_token_start, lexicon_tokens = _extend_vocabulary(model, tokenizer, docs, cfg.extend, ctx)
            bundle = bundle.with_tokenizer(tokenizer)
        elif cfg.trainable.mode == "new_embeddings":
            raise ConfigError("stages.cpt.trainable.mode: new_embeddings needs `extend` (no tokens are added)")
        ids = tokenize_documents(tokenizer, docs)
        from ftib.models.chat import document_end_id

        eos = document_end_id(tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        data_stats: dict[str, float] = {"data_empty_documents": float(sum(not d for d in ids))}
        if cfg.packing:
            packed, stats = pack_documents(ids, cfg.block_size, eos_id=eos, pad_id=pad_id)
            rows = [{k: v[i] for k, v in packed.items()} for i in range(stats.blocks)]
            ctx.logger.info("packed %d documents (%d tokens) into %d blocks of %d (fill %.1f%%, %d split)",
                            stats.documents, stats.tokens, stats.blocks, cfg.block_size, 100 * stats.fill,
                            stats.split_documents)
            data_stats.update(data_split_documents=float(stats.split_documents), data_tokens=float(stats.tokens),
                              data_fill=stats.fill)
        else:
            kept = [(d + [eos]) for d in ids if d]
            rows = [{"input_ids": torch.tensor(d[: cfg.block_size])} for d in kept]
            truncated = sum(len(d) > cfg.block_size for d in kept)
            data_stats.update(data_truncated=float(truncated),
                              data_tokens=float(sum(min(len(d), cfg.block_size) for d in kept)))
            ctx.logger.info("%d documents, one per row (%d truncated to %d tokens)",
                            len(rows), truncated, cfg.block_size)
        if not rows:
            raise FtibError(f"no CPT training rows: every document tokenised to nothing ({data_stats})")
        model, groups = select_trainable(model, cfg.trainable, new_token_start=new_token_start,
                                         text_only=True, logger=ctx.logger)
        ctx.logger.info("trainable parameters: %d (%s)", trainable_parameter_count(groups),
                        ", ".join(f"{g.name}={sum(p.numel() for p in g.params)}" for g in groups))

        def save(out_dir: Path) -> None:
            save_model_dir(model, out_dir, processor=bundle.chat,
                           save_adapter=cfg.trainable.lora.save_adapter)

        task = _CPTTask(model, groups, rows, pad_id, cfg.packing, save)
        task.kernel_impl = cfg.kernel_impl
        trainer = Trainer(task, cfg.train, ctx)
        result = trainer.train()
        final = trainer.save_final()
        metrics = dict(result.metrics)
        metrics["documents"] = float(len(docs))
        metrics.update(data_stats)
        metrics.update(kernel_metrics(model))
        if new_token_start is not None:
            metrics["added_tokens"] = float(len(tokenizer) - new_token_start)
            if lexicon_tokens is not None:
                metrics["lexicon_tokens"] = float(lexicon_tokens)
        return StageResult(checkpoint=final, metrics=metrics)


def _extend_vocabulary(model: torch.nn.Module, tokenizer: Any, docs: list[str], spec: ExtendSpec,
                       ctx) -> tuple[Any, int, int | None]:
    """Extend ``tokenizer`` on ``docs`` and the model's embeddings; return the new
    tokenizer, the first new id and how many new rows the lexicon initialised (``None``
    without one)."""
    from transformers import PreTrainedTokenizerFast

    from ftib.models import extend_embeddings
    from ftib.models.vocab import extend, load_base, write_extended

    base_dir = ctx.work_dir / "base_tokenizer"
    tokenizer.save_pretrained(base_dir)
    result = extend(load_base(base_dir), docs, spec.add, min_frequency=spec.min_frequency)
    out = ctx.work_dir / "tokenizer"
    write_extended(result, out)
    extended = PreTrainedTokenizerFast.from_pretrained(out)
    if getattr(tokenizer, "chat_template", None) and not getattr(extended, "chat_template", None):
        extended.chat_template = tokenizer.chat_template
    translations = None
    if spec.lexicon is not None:
        from ftib.kernels.tibetan import normalize
        from ftib.models.embeddings import lexicon_translations

        lexicon = read_lexicon(spec.lexicon)
        translations = lexicon_translations(tokenizer, extended, lexicon, normalize=normalize)
        ctx.logger.info("lexicon %s: %d entries; %d of the %d new tokens start from their translations",
                        spec.lexicon, len(lexicon), len(translations), len(extended) - result.first_new_id)
    extend_embeddings(model, tokenizer, extended, init=spec.init, seed=ctx.seed,
                      pad_to_multiple_of=spec.pad_to_multiple_of, translations=translations)
    ctx.logger.info("tokenizer extended by %d tokens (ids from %d)", result.added_tokens, result.first_new_id)
    return extended, result.first_new_id, (len(translations) if translations is not None else None)
