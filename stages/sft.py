"""SFT: multimodal instruction tuning in Tibetan.

What it trains: the language model, in full or through LoRA adapters (``peft``; target
modules by config), with the vision tower frozen by default (``trainable``).

Data (``source: instructions``): multimodal chat records (JSON Lines ``id, task, images, messages`` in the Hugging
Face chat format; see ``docs/data.md``), or ``ftibworld[:SIZE[:SEED]]``
(``sft/instructions.jsonl``: describe, count, colour, position, yes/no and multiple
choice). Conversations go through the model's chat template (the bundle's one chat
processor); the loss covers the assistant tokens only. A record whose last turn is not
the assistant's is rejected by the loader with its file and row; conversations longer
than ``max_length`` are dropped or truncated (``overflow``) and counted in the metrics.
Packing is not used for SFT: conversations are padded per micro-batch.

``enable_thinking`` (default ``false``) goes to the model's chat template: with Qwen3's
template and ``false`` the reply is trained after the empty ``<think>\n\n</think>\n\n``
that the generation prompt then holds, as the model will be prompted; ``true`` trains the
model to write that block itself; ``null`` is the template's default.

``source: translation | headline`` trains on the GRPO task files instead (prompt →
reference as one chat turn): the SFT warm-up of the two-stage semantic-GRPO recipe.

``tasks: [pope, ...]`` keeps only the records of those tasks (a curriculum stage, e.g. the
existence chats of ``ftibworld:base/pretrain/dialogues.jsonl`` first).

``task_weights: {multiple_choice: 3, ...}`` weights the mixture: each record of a named
task is listed that many times in an epoch (others once), so a weak question type is
drawn more often while the rest are replayed. Every named task must be in the data.

``data: [ftibworld, ftibworld:base/pretrain/dialogues.jsonl]`` trains several instruction
files together (e.g. Tibetan chats beside the Chinese ones the model already answers, so
the new language is learnt without the old one being trained away); ``data_weights:
[1, 2]`` lists each record of a source that many times per epoch (times its task weight).
Record ids are kept with their file, so a bad record is named wherever it came from;
``grounding_check`` holds out records of the first source (the language being taught).
With several sources ``tasks`` and ``task_weights`` name tasks of their union (each task
must be in some source, each source must keep a record): translation instructions beside
replayed existence chats is ``data: [instructions, dialogues]``, ``tasks: [translate,
existence]``.

``code_switch: {lexicon: ftibworld, share: 0.5}`` adds code-switched copies of that share
of the conversations whose user turns hold a translation word of the lexicon (the
world's, a ``.tsv`` or a ``.jsonl``, as CPT's ``extend.lexicon``): each such word is
replaced by its Tibetan form, the answers stay as they are (dictionary-based
code-switching, :func:`ftib.data.lexicon.code_switch`). Chinese questions with Tibetan
content words teach the new words inside questions the model already answers.

``grounding_check: n`` holds the last ``n`` single-image records out of training and
reports how much their answers depend on the images (``grounding_gap``: answer loss with
shifted images minus with their own), before and after training.

``replay: {data: [ftibworld:base/pretrain/corpus.jsonl], share: 0.2}`` trains plain-text
documents beside the conversations (every token labelled), so the language model keeps
its plain-text ability through a long chat stage
(:class:`~ftib.stages.common.ReplaySpec`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ftib.core import Stage
from ftib.core.train import TrainConfig
from ftib.stages.common import ReplaySpec, TrainableConfig, check_chat_data, train_chat_stage, training_bundle


@dataclass(frozen=True, kw_only=True)
class CodeSwitchSpec:
    """``stages.sft.code_switch``: the lexicon (``ftibworld`` - its words, not its answer
    words -, a ``.tsv`` or a ``.jsonl`` of (Tibetan, translation) pairs) and the share of
    the conversations holding one of its translations that get a code-switched copy."""

    lexicon: str
    share: float = 0.5
    #: ``to_tibetan`` (translation words -> Tibetan in the model's own questions),
    #: ``from_tibetan`` (Tibetan words -> translations in the Tibetan questions) or ``both``
    direction: Literal["to_tibetan", "from_tibetan", "both"] = "to_tibetan"

    def __post_init__(self) -> None:
        from ftib.core import ConfigError

        if isinstance(self.share, bool) or not 0.0 < self.share <= 1.0:
            raise ConfigError(f"code_switch.share: {self.share!r} is not in (0, 1] (the share of "
                              "conversations with a lexicon word that get a code-switched copy)")
        if self.lexicon != "ftibworld":
            from ftib.data.sources import check_spec

            check_spec(self.lexicon, "code_switch.lexicon")


@dataclass(frozen=True, kw_only=True)
class SFTConfig:
    """Configuration of the ``sft`` stage (see the module docstring)."""

    #: one instruction source, or several trained together (``source: instructions``)
    data: str | tuple[str, ...] = "ftibworld"
    #: times each record of each ``data`` source is listed per epoch (``null``: once each)
    data_weights: tuple[int, ...] | None = None
    source: Literal["instructions", "translation", "headline"] = "instructions"
    #: keep only records whose ``task`` is one of these (a curriculum stage; ``null``: all)
    tasks: tuple[str, ...] | None = None
    #: times each record of a task is listed per epoch (a weighted mixture; unnamed: 1)
    task_weights: dict[str, int] | None = None
    max_records: int | None = None
    max_length: int = 512
    overflow: Literal["error", "truncate", "drop"] = "drop"
    max_drop_share: float = 0.01
    grounding_check: int = 0
    kernel_impl: Literal["auto", "triton", "torch", "reference"] = "auto"
    min_pixels: int | None = None
    max_pixels: int | None = None
    enable_thinking: bool | None = False
    #: code-switched copies of conversations (Tibetan words in their questions; ``null``: none)
    code_switch: CodeSwitchSpec | None = None
    #: plain-text documents trained beside the conversations (``null``: none)
    replay: ReplaySpec | None = None
    trainable: TrainableConfig = TrainableConfig(mode="full")
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-4, warmup_steps=10))

    def __post_init__(self) -> None:
        from ftib.core import ConfigError

        check_chat_data(self)
        specs = self.sources()
        if not specs:
            raise ConfigError("stages.sft.data: give at least one source (a JSONL file or ftibworld[:SIZE[:SEED]])")
        if len(specs) > 1 and self.source != "instructions":
            raise ConfigError(f"stages.sft.data lists {len(specs)} sources; source={self.source!r} reads one "
                              "(several sources are for instruction files)")
        if self.data_weights is not None and len(self.data_weights) != len(specs):
            raise ConfigError(f"stages.sft.data_weights has {len(self.data_weights)} entries for "
                              f"{len(specs)} data sources (one per source, in order)")
        weights = [(f"data_weights[{i}]", k, "each record of that source") for i, k in enumerate(self.data_weights or ())]
        weights += [(f"task_weights.{t}", k, "each of its records") for t, k in (self.task_weights or {}).items()]
        for key, k, what in weights:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ConfigError(f"stages.sft.{key}: {k!r} is not a whole number >= 1 "
                                  f"(the times {what} is listed per epoch)")
        if self.task_weights and self.tasks is not None:
            outside = sorted(set(self.task_weights) - set(self.tasks))
            if outside:
                raise ConfigError(f"stages.sft.task_weights names {outside[0]!r}, which stages.sft.tasks "
                                  f"leaves out (tasks: {list(self.tasks)})")
        for key, value in (("task_weights", self.task_weights), ("data_weights", self.data_weights),
                           ("code_switch", self.code_switch)):
            if value and self.source != "instructions":
                raise ConfigError(f"stages.sft.{key} applies to instruction records; source={self.source!r} "
                                  "has none")

    def sources(self) -> tuple[str, ...]:
        """The ``data`` sources, as a tuple (one source is the common case)."""
        return (self.data,) if isinstance(self.data, str) else tuple(self.data)


def text_task_records(cfg: SFTConfig) -> list[tuple[list[dict], list, str]]:
    """Chat records from the GRPO task files (prompt -> reference): the SFT warm-up of
    the semantic-GRPO recipe, and the SFT arm of the alignment-tax comparison."""
    from ftib.data.prompts import read_prompts

    (spec,) = cfg.sources()
    prompts = read_prompts(spec, (cfg.source,), cfg.max_records)
    return [([{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["reference"]}], [],
             f"{spec} {cfg.source} (id {p['id']})") for p in prompts]


def check_tasks_present(rows: Any, tasks: Any, path: Any, key: str = "tasks") -> None:
    """A task named in ``stages.sft.<key>`` with no record in ``rows`` is an error naming
    the tasks the file has (a typo must not train on nothing)."""
    from collections import Counter

    from ftib.core import ConfigError

    have = Counter(rows["task"])
    missing = [t for t in tasks if t not in have]
    if missing:
        raise ConfigError(f"stages.sft.{key}: {path} has no record of task {missing[0]!r}; its tasks: "
                          + task_listing(have))


def task_listing(counts: Any) -> str:
    """``colour (12), count (9)``: a file's tasks and their record counts, for errors."""
    return ", ".join(f"{t} ({n})" for t, n in sorted(counts.items()))


def select_tasks(rows: Any, tasks: tuple[str, ...], path: Any, each: bool = True) -> Any:
    """The records of ``rows`` whose ``task`` is in ``tasks``; with ``each``, a task with
    no record is an error naming the tasks the file has (a typo must not train on
    nothing). Several sources are checked together first (``check_tasks_in_sources``)."""
    if each:
        check_tasks_present(rows, tasks, path)
    keep = set(tasks)
    return rows.filter(lambda r: r["task"] in keep)


def check_tasks_in_sources(loaded: list[tuple[Any, Any]], tasks: Any, task_weights: Any) -> None:
    """With several ``data`` sources, ``tasks`` and ``task_weights`` apply to their union:
    each named task needs a record in some source (a typo is an error naming every
    source's tasks), and each source must keep a record (one that contributes nothing is
    an error naming it and its tasks) - so a multimodal source and a text-only one (e.g.
    existence chats replayed beside translation instructions) share one task list."""
    from collections import Counter

    from ftib.core import ConfigError

    have = [(path, Counter(rows["task"])) for path, rows in loaded]

    for key, named in (("tasks", tasks), ("task_weights", task_weights)):
        for t in named or ():
            if not any(t in counts for _, counts in have):
                raise ConfigError(f"stages.sft.{key}: no data source has a record of task {t!r}; "
                                  + "; ".join(f"{path} has {task_listing(c)}" for path, c in have))
    if tasks is not None:
        for path, counts in have:
            if not any(t in counts for t in tasks):
                raise ConfigError(f"stages.sft.tasks: {path} has no record of any of the tasks "
                                  f"{', '.join(tasks)}; its tasks: {task_listing(counts)}")


class SFTStage(Stage):
    """Multimodal instruction tuning (see the module docstring)."""

    Config = SFTConfig

    def run(self, ctx):
        from ftib.core import ConfigError
        from ftib.data.loaders import load_sft, world_file
        from ftib.data.sources import resolve

        cfg: SFTConfig = self.config
        bundle = training_bundle(ctx, cfg.trainable)
        repeats: list[int] | None = None
        extra: dict[str, float] = {}
        if cfg.source == "instructions":
            per_source: list[tuple[list, list[int]]] = []
            weights = cfg.data_weights or (1,) * len(cfg.sources())
            paths = [resolve(spec, world_file("sft")) for spec in cfg.sources()]
            loaded = [(path, load_sft(path)) for path in paths]
            single = len(loaded) == 1
            if not single:
                check_tasks_in_sources(loaded, cfg.tasks, cfg.task_weights)
            for (path, rows), weight in zip(loaded, weights):
                if cfg.tasks is not None:
                    rows = select_tasks(rows, cfg.tasks, path, each=single)
                if cfg.max_records is not None:
                    rows = rows.select(range(min(cfg.max_records, len(rows))))
                if cfg.task_weights and single:
                    check_tasks_present(rows, cfg.task_weights, path, key="task_weights")
                per_source.append(([(r["messages"], list(r["images"]), f"{path} (id {r['id']})") for r in rows],
                                   [weight * (cfg.task_weights or {}).get(t, 1) for t in rows["task"]]))
            # the first source last: the grounding check holds out the end of the list
            records = [r for recs, _ in per_source[1:] + per_source[:1] for r in recs]
            weights_of = [k for _, ks in per_source[1:] + per_source[:1] for k in ks]
            if cfg.code_switch is not None:
                records, weights_of, extra = self._code_switch(ctx, cfg.code_switch, records, weights_of)
            repeats = None if all(k == 1 for k in weights_of) else weights_of
        else:
            if cfg.tasks is not None:
                raise ConfigError(f"stages.sft.tasks selects instruction records; source={cfg.source!r} has none")
            records = text_task_records(cfg)
        return train_chat_stage(ctx, bundle, records, trainable=cfg.trainable, train=cfg.train,
                                max_length=cfg.max_length, overflow=cfg.overflow,
                                grounding_check=cfg.grounding_check, kernel_impl=cfg.kernel_impl,
                                pixels=(cfg.min_pixels, cfg.max_pixels), max_drop_share=cfg.max_drop_share,
                                where="stages.sft",
                                enable_thinking=cfg.enable_thinking, repeats=repeats, replay=cfg.replay,
                                extra_metrics=extra)

    def _code_switch(self, ctx: Any, spec: CodeSwitchSpec, records: list,
                     weights: list[int]) -> tuple[list, list[int], dict[str, float]]:
        """The records with their code-switched copies first (the grounding check keeps
        holding out originals), the repeat weights (a copy's is its original's) and the
        counts for the metrics (``data_code_switch_*``)."""
        from ftib.data.lexicon import code_switch, read_lexicon

        pairs = read_lexicon(spec.lexicon, answers=False, what="stages.sft.code_switch.lexicon")
        copies, origin, stats = code_switch(records, pairs, share=spec.share, seed=ctx.seed, direction=spec.direction)
        ctx.logger.info("code-switching (%s, %s): %d copies of the %d conversations with a lexicon word, "
                        "%d words switched", spec.lexicon, spec.direction, stats["records"], stats["candidates"],
                        stats["words"])
        if stats["ambiguous"]:
            ctx.logger.warning("code_switch: %d lexicon words are listed with several counterparts; the first "
                               "listed is used for each", stats["ambiguous"])
        extra = {f"data_code_switch_{k}": float(v) for k, v in stats.items()}
        return copies + records, [weights[i] for i in origin] + weights, extra
