"""Configuration of ``ftib data clean`` (one YAML file, ``--config clean.yaml``).

Every block carries its own frozen, keyword-only config; :class:`CleanConfig` nests
them. A YAML file gives any subset of the keys (unknown keys and wrong types fail
before any work, naming the key, through :func:`ftib.core.config.build`)::

    read: {txt_mode: block}
    repairs: {latin_glue: false}
    script: {doc_min_share: 0.6, mixed_lines: drop}
    quality: {min_syllables: 5}
    minhash: {shingle: 5, bands: 14, threshold: 0.72}
    write: {format: parquet}
    executor: {kind: slurm, slurm: {partition: cpu, time: "04:00:00"}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ftib.data.clean.rules import ALL_RULES


@dataclass(frozen=True, kw_only=True)
class ReadConfig:
    """Readers.

    Attributes:
        txt_mode: ``.txt`` files hold one document per blank-line-separated block
            (``block``) or per non-empty line (``line``, what the CPT stage reads).
        text_key: the text field of JSONL/Parquet/``datasets`` records.
        max_bad_line_share: a file whose share of undecodable (non-UTF-8) or unparsable
            lines exceeds this is an error (the run stops naming it); below it, each
            bad line is counted and listed in the report with file and line number.
    """

    txt_mode: Literal["block", "line"] = "block"
    text_key: str = "text"
    max_bad_line_share: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_bad_line_share <= 1.0:
            raise ValueError(f"max_bad_line_share must be in [0, 1], got {self.max_bad_line_share}")


@dataclass(frozen=True, kw_only=True)
class RepairConfig:
    """Repairs, each on (true) or off (false); see :mod:`ftib.data.clean.rules`."""

    zero_width: bool = True
    nbsp: bool = True
    replacement_char: bool = True
    private_use: bool = True
    doubled_vowel: bool = True
    orphan_mark: bool = True
    space_before_tsheg: bool = True
    repeated_tsheg: bool = True
    latin_glue: bool = True
    #: Number of before/after examples kept per rule and worker for the report.
    examples: int = 3

    def enabled(self) -> tuple[str, ...]:
        return tuple(r for r in ALL_RULES if getattr(self, r))


@dataclass(frozen=True, kw_only=True)
class ScriptConfig:
    """Script identification by the share of Tibetan letters (base and subjoined
    consonants) among all letters; lines and documents without letters are not judged.

    Attributes:
        line_min_share: a line whose Tibetan share is below this is removed (0 keeps all).
        mixed_lines: a *mixed* line has Tibetan share in ``[line_min_share, 1)`` (some
            letters of another script): ``keep`` or ``drop``.
        doc_min_share: after line removal, a document below this share is dropped.
    """

    line_min_share: float = 0.2
    mixed_lines: Literal["keep", "drop"] = "keep"
    doc_min_share: float = 0.5

    def __post_init__(self) -> None:
        for name in ("line_min_share", "doc_min_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")


@dataclass(frozen=True, kw_only=True)
class QualityConfig:
    """Quality filters in syllables (:func:`ftib.data.clean.rules.syllable_tokens`).

    Attributes:
        min_syllables: documents with fewer Tibetan syllables are dropped.
        repeat_ngram: n of the repeated-n-gram measure (Gopher's, in syllables).
        max_repeat_fraction: documents whose share of syllables inside repeated
            n-grams exceeds this are dropped (1.0 turns it off). Liturgy and canon
            repeat formulae by nature (the whole Derge sample has 65 % of its syllables
            in repeated 10-grams, 92 % in repeated 4-grams), hence the long n and
            high default: per line, it drops 5 of the sample's 1,791 lines.
        max_non_tibetan_share: documents whose share of non-space characters outside
            the Tibetan block exceeds this are dropped.
        drop_punctuation_lines: remove lines without any letter (``།།``, ``***``).
    """

    min_syllables: int = 3
    repeat_ngram: int = 10
    max_repeat_fraction: float = 0.9
    max_non_tibetan_share: float = 0.5
    drop_punctuation_lines: bool = True

    def __post_init__(self) -> None:
        if self.min_syllables < 0:
            raise ValueError(f"min_syllables must be >= 0, got {self.min_syllables}")
        if self.repeat_ngram < 1:
            raise ValueError(f"repeat_ngram must be >= 1, got {self.repeat_ngram}")
        for name in ("max_repeat_fraction", "max_non_tibetan_share"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")


@dataclass(frozen=True, kw_only=True)
class MinhashConfig:
    """MinHash near-duplicate removal on syllable shingles (datatrove's four minhash
    stages). LSH with ``bands`` bands of ``rows`` hashes finds pairs of Jaccard
    similarity ``s`` with probability ``1 - (1 - s**rows)**bands``; the S-curve's
    midpoint is about ``(1/bands)**(1/rows)`` (Leskovec, Rajaraman, Ullman, *Mining of
    Massive Datasets*, ch. 3.4). ``rows`` is chosen from ``threshold`` as the integer
    that puts this midpoint closest to it (14 bands and 0.72 give datatrove's default 8).

    Attributes:
        enabled: run the near-duplicate stages.
        shingle: syllables per shingle.
        bands: LSH bands (datatrove's ``num_buckets``).
        threshold: target Jaccard similarity above which documents are near-duplicates.
        seed: seed of the hash permutations.
    """

    enabled: bool = True
    shingle: int = 5
    bands: int = 14
    threshold: float = 0.72
    seed: int = 1

    def __post_init__(self) -> None:
        if self.shingle < 1:
            raise ValueError(f"minhash.shingle must be >= 1, got {self.shingle}")
        if self.bands < 1:
            raise ValueError(f"minhash.bands must be >= 1, got {self.bands}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"minhash.threshold must be in (0, 1), got {self.threshold}")

    @property
    def rows(self) -> int:
        """Hashes per band whose midpoint ``(1/bands)**(1/rows)`` is nearest ``threshold``."""
        if self.bands == 1:
            return 1
        exact = math.log(1.0 / self.bands) / math.log(self.threshold)
        candidates = {max(1, math.floor(exact)), max(1, math.ceil(exact))}
        return min(candidates, key=lambda r: abs((1.0 / self.bands) ** (1.0 / r) - self.threshold))

    @property
    def effective_threshold(self) -> float:
        return (1.0 / self.bands) ** (1.0 / self.rows)


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    """Exact duplicates: the same text after repairs and whitespace collapsing."""

    exact: bool = True


@dataclass(frozen=True, kw_only=True)
class WriteConfig:
    """Writer: ``{rank:05d}.jsonl`` or ``.parquet`` files with a ``text`` field in the
    output folder, which the CPT stage reads as ``stages.cpt.data: [DIR]``."""

    format: Literal["jsonl", "parquet"] = "jsonl"
    #: Also write the dropped documents, with their reason, under ``excluded/``.
    excluded: bool = True


@dataclass(frozen=True, kw_only=True)
class SlurmConfig:
    """Arguments of datatrove's ``SlurmPipelineExecutor`` (``partition`` is required)."""

    partition: str | None = None
    time: str = "04:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    qos: str = "normal"
    venv_path: str | None = None
    condaenv: str | None = None
    sbatch_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """Arguments of datatrove's ``RayPipelineExecutor``; the Ray cluster is whatever
    ``ray.init()`` finds (``RAY_ADDRESS``), else a local instance."""

    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2.0


@dataclass(frozen=True, kw_only=True)
class ExecutorConfig:
    """Where the pipeline runs.

    Attributes:
        kind: ``local`` (default, processes on this machine), ``slurm`` or ``ray``.
        tasks: shards per stage (datatrove shards by input file, so at most one task per
            file does work); ``None`` = ``workers``.
        workers: tasks run at the same time.
        start_method: local executor only, see below.
    """

    kind: Literal["local", "slurm", "ray"] = "local"
    tasks: int | None = None
    workers: int = 1
    #: How the local executor starts worker processes (datatrove's default,
    #: ``forkserver``, re-imports the pipeline's modules in every worker of every stage;
    #: ``fork`` skips that, and is safe unless the parent process holds threads, e.g. a
    #: started GPU runtime).
    start_method: Literal["forkserver", "fork", "spawn"] = "forkserver"
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"executor.workers must be >= 1, got {self.workers}")
        if self.tasks is not None and self.tasks < 1:
            raise ValueError(f"executor.tasks must be >= 1, got {self.tasks}")

    @property
    def n_tasks(self) -> int:
        return self.tasks if self.tasks is not None else self.workers


@dataclass(frozen=True, kw_only=True)
class CleanConfig:
    """The whole cleaning pipeline (see ``docs/data.md``, "Cleaning a corpus")."""

    read: ReadConfig = field(default_factory=ReadConfig)
    normalize: bool = True
    repairs: RepairConfig = field(default_factory=RepairConfig)
    script: ScriptConfig = field(default_factory=ScriptConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    minhash: MinhashConfig = field(default_factory=MinhashConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)


def load_clean_config(path: Path | None, overrides: dict[str, Any] | None = None) -> CleanConfig:
    """Read ``path`` (YAML; ``None`` = defaults) and apply ``overrides`` (top-level
    sections merged key by key, e.g. ``{"executor": {"kind": "ray"}}``)."""
    import yaml

    from ftib.core.config import build
    from ftib.core.errors import ConfigError

    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the clean config ({exc})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
        data = dict(loaded or {})
    for section, values in (overrides or {}).items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    where = str(path) if path is not None else "clean"
    return build(CleanConfig, data, where=where)
