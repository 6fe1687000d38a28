"""``ftib data clean``: the datatrove pipeline, its executors and the report.

Stages (each one datatrove executor; a later one ``depends`` on the one before):

1. ``filter`` (``tasks`` tasks): readers -> encoding repairs -> ftib normaliser ->
   spelling repairs -> script filter -> syllable quality filter -> JSONL in ``_work``.
2. ``exact_sig``, ``exact_find`` (1 task): datatrove's exact dedup on
   :func:`~ftib.data.clean.blocks.exact_key`.
3. ``minhash_sig``, ``minhash_buckets`` (``bands`` tasks), ``minhash_cluster`` (1 task):
   datatrove's MinHash stages on syllable shingles (the signature stage reads stage 1's
   output through the exact filter, so its document indices match stage 4's).
4. ``write``: stage 1's output -> exact filter -> MinHash filter -> kept-document stats
   -> JSONL/Parquet ``{rank:05d}.*`` files in the output folder.
5. ``report`` (1 task): ``report.md``, ``report.json`` and ``lengths.png``.

Resume: datatrove marks each finished task in ``_logs/<stage>/completions``; running
the same command again skips finished tasks. ``clean.json`` in the output folder names
the inputs and config; another pipeline's folder is refused unless ``force``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftib.core.errors import FtibError
from ftib.data.clean.config import CleanConfig

log = logging.getLogger("ftib.data.clean")

MARKER = "clean.json"
TOOL = "ftib data clean"
TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)


@dataclass(frozen=True, kw_only=True)
class InputSet:
    """Input files by kind (absolute paths) and ``datasets`` ``save_to_disk`` folders."""

    txt: tuple[Path, ...] = ()
    jsonl: tuple[Path, ...] = ()
    parquet: tuple[Path, ...] = ()
    datasets: tuple[Path, ...] = ()

    @property
    def n_sources(self) -> int:
        return len(self.txt) + len(self.jsonl) + len(self.parquet) + len(self.datasets)


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    for kind, suffixes in (("txt", TEXT_SUFFIXES), ("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES)):
        if name.endswith(suffixes):
            return kind
    return None


def is_datasets_folder(path: Path) -> bool:
    """A folder written by ``datasets.Dataset.save_to_disk``."""
    return path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def collect_inputs(inputs: list[Path]) -> InputSet:
    """Sort the CLI's inputs into files by kind; folders are searched recursively.

    Raises:
        FtibError: an input that does not exist, a file of unknown kind, or no input
            file at all (an empty input is an error, not an empty corpus).
    """
    found: dict[str, list[Path]] = {"txt": [], "jsonl": [], "parquet": [], "datasets": []}
    for raw in inputs:
        path = Path(raw).expanduser().resolve()
        if not path.exists():
            raise FtibError(f"input {raw} does not exist")
        if is_datasets_folder(path):
            found["datasets"].append(path)
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                kind = _kind(p) if p.is_file() else None
                if kind:
                    found[kind].append(p)
        else:
            kind = _kind(path)
            if kind is None:
                raise FtibError(f"input {raw}: unknown kind (expected .txt, .jsonl[.gz], .parquet, "
                                f"or a folder of them / a `datasets` save_to_disk folder)")
            found[kind].append(path)
    result = InputSet(**{k: tuple(dict.fromkeys(v)) for k, v in found.items()})
    if result.n_sources == 0:
        raise FtibError(f"no input files in {', '.join(map(str, inputs))} "
                        "(looked for .txt, .jsonl, .parquet and datasets folders)")
    if all(p.stat().st_size == 0 for k in ("txt", "jsonl", "parquet") for p in getattr(result, k)) \
            and not result.datasets:
        raise FtibError(f"every input file is empty: {', '.join(map(str, inputs))}")
    return result


# --- output folder -------------------------------------------------------------------

def _marker(inputs: InputSet, cfg: CleanConfig) -> dict[str, Any]:
    from ftib.core.config import to_dict

    cfg_dict = to_dict(cfg)
    # How many workers run it does not change the result; the shard count does.
    cfg_dict["executor"].pop("workers", None)
    if cfg.executor.tasks is None:
        cfg_dict["executor"]["tasks"] = cfg.executor.n_tasks
    return {"tool": TOOL, "inputs": {k: [str(p) for p in getattr(inputs, k)] for k in
                                     ("txt", "jsonl", "parquet", "datasets")}, "config": cfg_dict}


def prepare_output(out: Path, marker: dict[str, Any], *, force: bool) -> bool:
    """Claim ``out`` for this pipeline; returns True when resuming an earlier run.

    A non-empty folder without our ``clean.json``, or with one from other inputs or
    another config, is refused unless ``force`` -- which deletes the folder first.
    """
    if out.exists() and not out.is_dir():
        raise FtibError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        path = out / MARKER
        previous = None
        if path.is_file():
            try:
                previous = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                previous = None
        if previous == marker:
            return True
        if not force:
            what = ("results of another `ftib data clean` (other inputs or config)" if previous
                    else "files that are not an `ftib data clean` output")
            raise FtibError(f"--out {out} holds {what}; choose another folder or pass --force to replace it")
        log.warning("--force: deleting %s", out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    from ftib.core.rundir import atomic_write_json

    atomic_write_json(out / MARKER, marker)
    return False


# --- pipeline --------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Layout:
    """Folders of one run."""

    out: Path

    @property
    def work(self) -> Path:
        return self.out / "_work"

    @property
    def logs(self) -> Path:
        return self.out / "_logs"

    @property
    def side(self) -> Path:
        return self.work / "side"

    @property
    def filtered(self) -> Path:
        return self.work / "filtered"

    @property
    def excluded(self) -> Path:
        return self.out / "excluded"


def _readers(inputs: InputSet, cfg: CleanConfig, layout: Layout, progress: bool) -> list[Any]:
    from datatrove.pipeline.readers import HuggingFaceDatasetReader, ParquetReader

    from ftib.data.clean.blocks import TibetanJsonlReader, TibetanTextReader, counting_adapter

    steps: list[Any] = []
    problems = str(layout.side / "problems")
    # One reader per input file (datatrove shards each reader's files by rank); a
    # file's folder is its data folder and its name the glob pattern.
    for p in inputs.txt:
        steps.append(TibetanTextReader(str(p.parent), glob_pattern=p.name, recursive=False,
                                       mode=cfg.read.txt_mode, max_bad_line_share=cfg.read.max_bad_line_share,
                                       problems_folder=problems, doc_progress=progress))
    for p in inputs.jsonl:
        steps.append(TibetanJsonlReader(str(p.parent), glob_pattern=p.name, recursive=False,
                                        text_key=cfg.read.text_key, max_bad_line_share=cfg.read.max_bad_line_share,
                                        problems_folder=problems, doc_progress=progress))
    for p in inputs.parquet:
        steps.append(ParquetReader(str(p.parent), glob_pattern=p.name, recursive=False,
                                   text_key=cfg.read.text_key, doc_progress=progress,
                                   adapter=counting_adapter))
    for p in inputs.datasets:
        steps.append(HuggingFaceDatasetReader(str(p), load_from_disk=True, text_key=cfg.read.text_key,
                                              doc_progress=progress, adapter=counting_adapter))
    return steps


def _minhash_config(cfg: CleanConfig):
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.text import TextNormConfig

    # Datatrove's default text simplification strips every Mn character, i.e. Tibetan
    # vowel signs and subjoined letters; keep them (shingles are of whole syllables).
    norm = TextNormConfig(norm_unicode_diacritics=False)
    return MinhashConfig(n_grams=cfg.minhash.shingle, num_buckets=cfg.minhash.bands,
                         hashes_per_bucket=cfg.minhash.rows, seed=cfg.minhash.seed, norm_config=norm,
                         hash_config=_hash_config())


def _hash_config():
    """SHA-1 (64-bit) rather than datatrove's default xxhash: datatrove hashes ``str``,
    which xxhash >= 4 no longer accepts (datatrove's ``processing`` extra pins
    ``xxhash<4``; ftib does not, so that the extra never downgrades a shared install)."""
    from datatrove.utils.hashing import HashConfig

    return HashConfig(precision=64, hash_fc="sha1")


def _excluded_writer(layout: Layout, cfg: CleanConfig, name: str):
    if not cfg.write.excluded:
        return None
    from datatrove.pipeline.writers import JsonlWriter

    return JsonlWriter(str(layout.excluded / name))


def build_stages(inputs: InputSet, cfg: CleanConfig, layout: Layout, *, progress: bool = True
                 ) -> list[tuple[str, list[Any], int]]:
    """The pipeline as ``(stage name, steps, tasks)`` in execution order."""
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                          MinhashDedupSignature)
    from datatrove.pipeline.dedup.exact_dedup import (ExactDedupConfig, ExactDedupFilter, ExactDedupSignature,
                                                      ExactFindDedups)
    from datatrove.pipeline.writers import JsonlWriter, ParquetWriter

    from ftib.data.clean import blocks, rules
    from ftib.data.clean.report import WriteReport

    tasks = cfg.executor.n_tasks
    side = layout.side
    enabled = cfg.repairs.enabled()
    ex = {"examples": cfg.repairs.examples, "examples_folder": str(side / "examples")}
    first: list[Any] = _readers(inputs, cfg, layout, progress)
    pre = tuple(r for r in enabled if r in rules.PRE_RULES)
    post = tuple(r for r in enabled if r in rules.POST_RULES)
    if pre:
        first.append(blocks.TibetanRepairs(pre, side_name="repairs_pre", **ex))
    if cfg.normalize:
        first.append(blocks.TibetanNormalizer(**ex))
    if post:
        first.append(blocks.TibetanRepairs(post, side_name="repairs_post", **ex))
    first.append(blocks.TibetanScriptFilter(cfg.script, _excluded_writer(layout, cfg, "script"), **ex))
    first.append(blocks.SyllableQualityFilter(cfg.quality, _excluded_writer(layout, cfg, "quality"), **ex))
    first.append(JsonlWriter(str(layout.filtered)))
    stages: list[tuple[str, list[Any], int]] = [("filter", first, tasks)]

    def filtered_reader() -> Any:
        return blocks.IntermediateReader(str(layout.filtered))

    dedup_filters: list[Any] = []
    if cfg.dedup.exact:
        exact = ExactDedupConfig(content_getter=blocks.exact_key, hash_config=_hash_config())
        sigs, dups = str(layout.work / "exact" / "sigs"), str(layout.work / "exact" / "dups")
        stages.append(("exact_sig", [filtered_reader(), ExactDedupSignature(sigs, exact)], tasks))
        stages.append(("exact_find", [ExactFindDedups(sigs, dups, exact, save_cluster_size=True)], 1))
        dedup_filters.append(ExactDedupFilter(dups, exact, _excluded_writer(layout, cfg, "exact_duplicates")))
    if cfg.minhash.enabled:
        mh = _minhash_config(cfg)
        mdir = layout.work / "minhash"
        tok = blocks.SyllableWordTokenizer()
        stages.append(("minhash_sig", [filtered_reader(), *_fresh(dedup_filters, layout, cfg),
                                       MinhashDedupSignature(str(mdir / "sigs"), mh, language=tok)], tasks))
        stages.append(("minhash_buckets", [MinhashDedupBuckets(str(mdir / "sigs"), str(mdir / "buckets"), config=mh)],
                       mh.num_buckets))
        stages.append(("minhash_cluster", [MinhashDedupCluster(str(mdir / "buckets"), str(mdir / "clusters"), config=mh,
                                                               save_cluster_id=True, save_cluster_size=True)], 1))
        dedup_filters.append(MinhashDedupFilter(str(mdir / "clusters"), _excluded_writer(layout, cfg, "near_duplicates"),
                                                load_cluster_ids=True, load_cluster_sizes=True))
    if cfg.write.format == "parquet":
        writer: Any = ParquetWriter(str(layout.out), output_filename="${rank}.parquet")
    else:
        writer = JsonlWriter(str(layout.out), output_filename="${rank}.jsonl", compression=None)
    stages.append(("write", [filtered_reader(), *dedup_filters, blocks.KeptDocStats(str(side / "kept")), writer],
                   tasks))
    stages.append(("report", [WriteReport(str(layout.out), cfg)], 1))
    return stages


def _fresh(dedup_filters: list[Any], layout: Layout, cfg: CleanConfig) -> list[Any]:
    """The exact filter again for the MinHash signature stage, without an exclusion
    writer (stage 4 writes the excluded duplicates once)."""
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupFilter

    return [ExactDedupFilter(f.data_folder, f.config) for f in dedup_filters]


def _executor(kind: str, pipeline: list[Any], tasks: int, cfg: CleanConfig, logging_dir: Path, depends: Any,
              name: str) -> Any:
    ec = cfg.executor
    workers = min(ec.workers, tasks)
    if kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logging_dir),
                                     depends=depends, start_method=ec.start_method)
    if kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        s = ec.slurm
        if not s.partition:
            raise FtibError("executor.slurm.partition is required for --executor slurm")
        return SlurmPipelineExecutor(pipeline, tasks=tasks, workers=workers, time=s.time, partition=s.partition,
                                     cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb, qos=s.qos,
                                     venv_path=s.venv_path, condaenv=s.condaenv, sbatch_args=dict(s.sbatch_args),
                                     job_name=f"ftib-clean-{name}", logging_dir=str(logging_dir), depends=depends)
    if kind == "ray":
        try:
            from datatrove.executor.ray import RayPipelineExecutor
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise FtibError("--executor ray needs Ray: pip install 'ftib[clean-ray]'") from exc
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise FtibError("--executor ray needs Ray: pip install 'ftib[clean-ray]'") from exc
        return RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logging_dir),
                                   depends=depends, cpus_per_task=ec.ray.cpus_per_task,
                                   mem_per_cpu_gb=ec.ray.mem_per_cpu_gb)
    raise FtibError(f"unknown executor {kind!r} (local, slurm or ray)")


def run_clean(inputs: list[Path], out: Path, cfg: CleanConfig, *, force: bool = False,
              progress: bool = True) -> Path:
    """Clean ``inputs`` into ``out``; returns the path of ``report.md`` (for Slurm, the
    path it will have once the submitted jobs finish).

    Raises:
        FtibError: empty or unknown input, an output folder of another pipeline, a file
            that is mostly not UTF-8, or a stage that failed.
    """
    try:
        import datatrove  # noqa: F401
    except ImportError as exc:
        raise FtibError("`ftib data clean` needs datatrove: pip install 'ftib[clean]'") from exc
    out = Path(out).expanduser().resolve()
    found = collect_inputs(inputs)
    resumed = prepare_output(out, _marker(found, cfg), force=force)
    if resumed:
        log.info("resuming %s (finished tasks are skipped)", out)
    layout = Layout(out=out)
    # When every document is dropped, stage 1 writes no file; later readers need the
    # folder to exist to read it as empty.
    layout.filtered.mkdir(parents=True, exist_ok=True)
    kind = cfg.executor.kind
    last = None
    for name, steps, tasks in build_stages(found, cfg, layout, progress=progress and kind == "local"):
        last = _executor(kind, steps, tasks, cfg, layout.logs / name, last, name)
    assert last is not None
    if kind == "ray":
        import ray

        # datatrove's Ray executor expects a connected Ray; ray.init() joins the cluster
        # named by RAY_ADDRESS, else starts a local instance.
        if not ray.is_initialized():
            ray.init()
    try:
        last.run()
    except FtibError:
        raise
    except Exception as exc:
        raise FtibError(f"the clean pipeline failed ({type(exc).__name__}: {exc}); logs in {layout.logs}; "
                        "run the same command again to resume") from exc
    report = out / "report.md"
    if kind == "local":
        failed = [n for n, _, t in build_stages(found, cfg, layout, progress=False)
                  if len(list((layout.logs / n / "completions").glob("*"))) < t]
        if failed:
            raise FtibError(f"stages {failed} did not finish; logs in {layout.logs}; run again to resume")
        if not report.is_file():
            raise FtibError(f"the pipeline finished without writing {report}")
        # Intermediate data is only needed to resume an unfinished run; the side files
        # (examples, problems, kept stats) stay for the report.
        for sub in ("filtered", "exact", "minhash"):
            shutil.rmtree(layout.work / sub, ignore_errors=True)
    return report
