"""The contracts between the microkernel and its plugins.

A plugin is a class with a nested frozen, keyword-only dataclass ``Config`` and one of
the three roles below. It is registered under an entry point (see
:mod:`ftib.core.registry`) and built by the pipeline as ``Plugin(config)``; runtime
objects (models, tokenizers) are never part of a config, they arrive through the
:class:`RunContext` or are loaded by the plugin from ``ctx.model_source``.

Call order for one ``ftib run``:

1. The recipe is parsed and every plugin's ``Config`` is built and validated (unknown
   keys, wrong types, missing files) **before any work starts**.
2. For each stage, in recipe order: the pipeline builds ``Stage(config)``, then calls
   ``stage.run(ctx)`` exactly once with a fresh :class:`RunContext`. A stage that
   completed in an earlier run with the same configuration is not built again; its
   recorded checkpoint becomes the next stage's ``ctx.model_source``.
3. After each stage (or before the first one, ``after: base``), the evaluators attached
   to that point are built and ``evaluator.evaluate(ctx)`` is called once.
4. Rewards are not run by the pipeline: a stage (GRPO) builds them from its own config
   through the registry and calls them on each batch of completions.

Besides the three roles, the kernel calls a few named **hooks** (entry-point group
``ftib.hooks``, :meth:`ftib.core.registry.Registry.hook`) so that ``core`` never imports
another package of ftib; :data:`HOOKS` lists each one and its contract.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ftib.core.rundir import MetricsSink


@dataclass(frozen=True, kw_only=True)
class DistInfo:
    """Where this process sits in a distributed job (single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass(kw_only=True)
class RunContext:
    """Everything a stage or evaluator may rely on, prepared by the pipeline.

    Attributes:
        run_dir: the run directory (``manifest.json``, ``metrics.jsonl`` live here).
        work_dir: this plugin's own directory inside the run directory
            (``stages/<id>/`` or ``evals/<point>/<id>/``); created before the call. A
            plugin writes only here.
        seed: the run's seed. The pipeline has already seeded ``random``, ``numpy`` and
            ``torch`` with it before the call; plugins derive any further seeds from it.
        device: resolved device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``); never
            ``"auto"``.
        dtype: resolved compute dtype name (``"float32"``, ``"bfloat16"``, ``"float16"``).
        dist: the distributed position of this process.
        model_source: what the plugin starts from: the recipe's model (hub name, local
            path or preset name) for the first stage, else the checkpoint directory the
            previous stage returned.
        model_options: the recipe's ``model`` section (``ModelSpec`` as a dict) for
            loaders that need revision, attention implementation, etc.
        bundle: the previous stage's in-memory model bundle when it is still alive in
            this process (saves a reload); ``None`` otherwise. A plugin must work when it
            is ``None``.
        resume_from: for a stage that was interrupted in an earlier run, its latest
            step checkpoint directory; ``None`` on a fresh start.
        metrics: sink for step-level metrics (appends to ``metrics.jsonl``).
        run_id: identifies this run's configuration and this plugin's place in it
            (recipe fingerprint + id); step checkpoints carry it so that a checkpoint
            from another run is refused.
        logger: logger named after the plugin.
        progress: whether the run shows progress bars (``ftib run --no-progress``:
            ``False``); long loops inside a plugin follow it.
    """

    run_dir: Path
    work_dir: Path
    seed: int
    device: str
    dtype: str
    dist: DistInfo = field(default_factory=DistInfo)
    model_source: str
    model_options: Mapping[str, Any] = field(default_factory=dict)
    bundle: Any = None
    resume_from: Path | None = None
    metrics: MetricsSink
    run_id: str = ""
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("ftib"))
    progress: bool = True

    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)


@dataclass(kw_only=True)
class StageResult:
    """What a stage returns.

    Attributes:
        checkpoint: directory of the model the next stage starts from (usually
            ``ctx.work_dir / "final"``, written with :func:`ftib.core.rundir.atomic_dir`);
            ``None`` if the stage does not change the model (the next stage then starts
            from this stage's ``model_source``). It must lie inside ``ctx.run_dir``.
        metrics: final scalar metrics (loss, tokens/s ...), recorded in the manifest.
        bundle: optionally the live model bundle, handed to the next plugin as
            ``ctx.bundle`` in this process.
        artifacts: other named files the stage produced (plots, tokenizer ...).
    """

    checkpoint: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    bundle: Any = None
    artifacts: dict[str, Path] = field(default_factory=dict)


@dataclass(kw_only=True)
class EvalResult:
    """What an evaluator returns.

    Attributes:
        metrics: named scalar scores (``accuracy``, ``f1`` ...), written to the
            manifest and to ``evals/<point>/<id>/metrics.json``.
        records: one dict per item, with at least ``id``, ``prediction``, ``parsed``,
            ``gold`` and ``correct`` (``None`` where correctness does not apply); written
            as ``records.jsonl`` by the pipeline.
        details: nested breakdowns (per category, per split) for reports.
    """

    metrics: dict[str, float]
    records: Sequence[Mapping[str, Any]] = ()
    details: dict[str, Any] = field(default_factory=dict)

    REQUIRED_RECORD_KEYS: ClassVar[tuple[str, ...]] = (
        "id",
        "prediction",
        "parsed",
        "gold",
        "correct",
    )


class _Plugin(abc.ABC):
    """Shared anatomy: a nested ``Config`` dataclass and construction from it."""

    Config: ClassVar[type]

    def __init__(self, config: Any) -> None:
        expected = type(self).Config
        if not isinstance(config, expected):
            raise TypeError(
                f"{type(self).__name__} expects a {expected.__qualname__}, "
                f"got {type(config).__name__}"
            )
        self.config = config

    @classmethod
    def check_plugin_class(cls) -> None:
        """Raise TypeError unless this class honours the plugin anatomy."""
        conf = getattr(cls, "Config", None)
        if conf is None or not dataclasses.is_dataclass(conf):
            raise TypeError(f"{cls.__qualname__}.Config must be a dataclass")
        params = getattr(conf, "__dataclass_params__", None)
        if params is None or not params.frozen:
            raise TypeError(f"{cls.__qualname__}.Config must be a frozen dataclass")


class Stage(_Plugin):
    """A configured unit of training.

    Contract:
        * ``__init__(config)`` only stores and checks the config; no heavy work.
        * ``run(ctx)`` is called once per run. It starts from ``ctx.model_source`` (or
          ``ctx.bundle`` when given), writes everything under ``ctx.work_dir``, logs
          step metrics to ``ctx.metrics``, and, when ``ctx.resume_from`` is set,
          continues from that step checkpoint instead of starting over.
        * It returns a :class:`StageResult`; raising marks the stage failed in the
          manifest (a re-run then resumes it).
        * Training stages build on the shared loop (``ftib.core.train``), which owns the
          optimiser, schedule, accumulation, precision, checkpoints and throughput.
    """

    @abc.abstractmethod
    def run(self, ctx: RunContext) -> StageResult:
        """Train and return where the resulting model is."""


class Evaluator(_Plugin):
    """Scores a model on a dataset.

    Contract:
        * ``evaluate(ctx)`` loads the model from ``ctx.bundle`` or ``ctx.model_source``,
          must not modify it, and returns an :class:`EvalResult` whose records follow
          ``EvalResult.REQUIRED_RECORD_KEYS``.
        * It may write extra files under ``ctx.work_dir``; the pipeline writes
          ``metrics.json`` and ``records.jsonl`` there.
    """

    @abc.abstractmethod
    def evaluate(self, ctx: RunContext) -> EvalResult:
        """Score the model and return metrics plus per-item records."""


@dataclass(frozen=True, kw_only=True)
class RewardContext:
    """What a stage tells its rewards when it binds them (:meth:`Reward.bind`).

    Attributes:
        device: the policy's device (``"cpu"``, ``"cuda:0"``).
        data: the stage's data spec (``ftibworld[:SIZE[:SEED]]`` or a folder), for a
            reward whose model is derived from the training data.
        seed: the run's seed, for anything a reward builds from that data.
    """

    device: str
    data: str
    seed: int


class Reward(_Plugin):
    """Scores GRPO completions.

    Contract:
        * Called as ``reward(prompts, completions, references, metadata)`` with four
          sequences of equal length N (``metadata`` items are dicts, possibly empty).
        * Returns a float32 tensor of shape ``(N,)`` on the CPU or on the policy's
          device; higher is better; NaN marks a completion the reward cannot score
          (it gets advantage 0, as in TRL), any other non-finite value is an error.
          The GRPO stage weights and sums rewards and logs each one separately.
        * Must be deterministic for the same inputs and must not keep gradients.
        * :meth:`bind` is called once, after the reward is built from its config and
          before the first call, with a :class:`RewardContext`. Whatever a reward needs
          from the run it takes there (a reward holding a model moves it to
          ``context.device``; one whose model is trained from the stage's data resolves
          it from ``context.data`` and ``context.seed``), so the stage treats every
          reward alike and never tests a reward's name. The default does nothing.
    """

    def bind(self, context: RewardContext) -> Reward:
        """Take what the reward needs from the run (see :class:`RewardContext`); return
        ``self``."""
        return self

    @abc.abstractmethod
    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        references: Sequence[str],
        metadata: Sequence[Mapping[str, Any]],
    ) -> torch.Tensor:
        """Return rewards ``(N,) float32``."""


#: The hooks of ``ftib.hooks``: name -> contract. Each name has at most one provider
#: (a duplicate is an error, as for plugins); a missing hook disables what it does,
#: with a log line, never the run.
HOOKS: dict[str, str] = {
    "run_report": "run_report(run_dir: Path) -> dict[str, Path]: write the run's report "
                  "(report.md and plots) from manifest.json and metrics.jsonl after `ftib run`; "
                  "return the written paths by kind ('markdown', ...).",
    "model_limits": "model_limits(name_or_path: str, preset_overrides: Mapping | None) -> "
                    "ftib.core.recipe.ModelLimits: the model's context length and sizes without "
                    "loading weights, for the checks before any work (recipe.check_limits).",
    "native_build_info": "native_build_info() -> dict: how the native module was built "
                         "(compiler, flags, SIMD), recorded in manifest.json.",
    "world_text_corpus": "world_text_corpus(kind: 'world' | 'zh_en', seed: int, docs: int) -> list[str]: "
                         "FTibWorld text a preset's tokenizer is trained on (ftib.models reaches "
                         "ftib.data's generator this way).",
    "world_encoder_pairs": "world_encoder_pairs(world: str) -> list[tuple[str, str]]: the "
                           "(Tibetan, Chinese) pairs of a FTibWorld build that its reward encoder "
                           "is trained on.",
}
