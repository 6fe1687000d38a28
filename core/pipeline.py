"""The pipeline runner: stages in order, evaluators at their points, resumable.

Re-running the same recipe on the same run directory resumes: a stage recorded as
``completed`` (with its checkpoint still present) is skipped and its checkpoint feeds
the next stage; an interrupted stage is started again with ``ctx.resume_from`` set to
its latest step checkpoint; completed evaluations are not repeated. A run directory
whose manifest was written for a different recipe is refused unless ``force=True``,
which moves the previous run aside (nothing is deleted) and starts the stages afresh.

Trust (``docs/reliability.md``): the whole run holds :class:`~ftib.core.rundir.RunDirLock`;
temporaries a killed process left are removed first; a directory with files but no
manifest is refused (``--force`` archives them). Every point (base, each stage, each
evaluation) has its own fingerprint (:meth:`Recipe.point_fingerprints`): when only an
evaluator or a later stage changed, the unchanged stages are kept and only the changed
entries (and what follows them) are recomputed, their old folders moved to
``superseded/``; the manifest's ``recomputed`` lists them. A resumed stage's
``metrics.jsonl`` rows past its step checkpoint are dropped before it continues, so the
log equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from ftib.core import config as cfg
from ftib.core import distributed as D
from ftib.core.errors import RunDirError
from ftib.core.interfaces import DistInfo, EvalResult, RunContext, StageResult
from ftib.core.recipe import BASE_POINT, EvalEntry, Recipe, StageEntry
from ftib.core.registry import Registry
from ftib.core.rundir import (
    LOCK,
    MANIFEST_VERSION,
    METRICS,
    SUPERSEDED,
    Manifest,
    MetricsSink,
    RunDirLock,
    atomic_write_json,
    atomic_write_text,
    clean_stale_temporaries,
    recover_dir,
    sha256_path,
)

log = logging.getLogger("ftib.pipeline")

TRACKED_PACKAGES = (
    "ftib",
    "torch",
    "triton",
    "transformers",
    "peft",
    "datasets",
    "sentence-transformers",
    "tokenizers",
    "numpy",
    "liger-kernel",
    "flash-attn",
)

STEP_CHECKPOINTS = "steps"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    """The commit of the ftib source tree when it is a git checkout, else None."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    commit = out.stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=here,
        capture_output=True,
        text=True,
        timeout=5,
    )
    return commit + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def native_build_info() -> dict[str, Any] | None:
    """How the native module was built (the ``native_build_info`` hook), None when no
    hook is installed or the module is not built."""
    info = Registry().hook("native_build_info")
    if info is None:
        return None
    try:
        return dict(info())
    except ImportError:
        return None


def resolve_device(spec: str) -> str:
    if spec != "auto":
        if spec.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                from ftib.core.errors import ConfigError

                raise ConfigError(f"run.device: {spec!r} was requested but CUDA is not available")
        return spec
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(spec: str, device: str) -> str:
    if spec != "auto":
        return spec
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_bf16_supported():
            return "bfloat16"
    return "float32"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    import torch

    torch.manual_seed(seed)


def _latest_step_checkpoint(stage_dir: Path) -> Path | None:
    """The newest intact step checkpoint under ``stage_dir/steps`` (names sort by step).

    A step whose files do not match its ``checksums.json`` is reported by path and moved
    to ``stage_dir/corrupt/`` (kept for inspection, never deleted, and out of the way
    of pruning and of the step that will be written again under its name); the next
    older step is tried. Steps without checksums (a plugin's own format) are taken as
    they are.
    """
    from ftib.core.train import CHECKSUMS, verify_step_checkpoint

    steps = stage_dir / STEP_CHECKPOINTS
    if not steps.is_dir():
        return None
    for d in list(steps.iterdir()):
        if d.name.startswith(".") and d.name.endswith(".old"):
            recover_dir(steps / d.name[1:-4])
    done = sorted(
        (d for d in steps.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.name,
    )
    skipped: list[Path] = []
    for d in reversed(done):
        problem = verify_step_checkpoint(d) if (d / CHECKSUMS).exists() else None
        if problem is None:
            if skipped:
                log.warning("resuming from the newest intact step checkpoint %s instead", d)
            return d
        aside = stage_dir / "corrupt" / f"{d.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(d, aside)
        skipped.append(d)
        log.warning("step checkpoint %s is damaged (%s); moved to %s", d, problem, aside)
    if skipped:
        log.warning("no intact step checkpoint is left in %s; the stage starts over", steps)
    return None


def _step_number(step_dir: Path) -> int:
    """The step of a checkpoint folder named ``step-<N>`` (the trainer's format); -1 if
    the name carries none (a plugin's own format: its rows are then all redone)."""
    from ftib.core.train import step_of

    step = step_of(step_dir)
    return -1 if step is None else step


class Pipeline:
    """Runs a validated :class:`Recipe` in a run directory.

    Args:
        recipe: the validated recipe.
        run_dir: where everything is written (created if needed).
        force: accept a run directory made by a different recipe (the previous run is moved aside).
        progress: show a progress bar over stages and evaluations.
    """

    def __init__(self, recipe: Recipe, run_dir: Path, *, force: bool = False, progress: bool = True):
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.force = force
        self.progress = progress
        self.dist: DistInfo = D.env_dist_info()

    # -- run directory -------------------------------------------------------------
    def _open_manifest(self) -> Manifest:
        """Rank 0 opens (or creates) and writes the manifest; under torchrun the other
        ranks then read it and keep a copy in memory that they never write."""
        if self.dist.world_size > 1:
            manifest, failure, error = None, None, None
            if self.dist.is_main:
                try:
                    manifest = self._open_manifest_main()
                except Exception as exc:  # tell the other ranks instead of leaving them waiting
                    failure, error = exc, f"{type(exc).__name__}: {exc}"
            error = D.broadcast_object(error)
            if failure is not None:
                raise failure
            if error is not None:
                raise RunDirError(f"rank {self.dist.rank}: rank 0 could not open the run directory ({error})")
            if manifest is None:
                manifest = Manifest.load(self.run_dir)
                if manifest is None:
                    raise RunDirError(f"rank {self.dist.rank}: rank 0 wrote no manifest in {self.run_dir}")
                manifest.writable = False
            return manifest
        return self._open_manifest_main()

    def _open_manifest_main(self) -> Manifest:
        fingerprint = self.recipe.fingerprint()
        points = self.recipe.point_fingerprints()
        try:
            manifest = Manifest.load(self.run_dir)
        except RunDirError:
            if not self.force:
                raise
            manifest = None
            self._archive_previous_run("damaged")
        if manifest is None:
            stray = sorted(p.name for p in self.run_dir.iterdir() if p.name not in (LOCK, SUPERSEDED))
            if stray:
                if not self.force:
                    raise RunDirError(
                        f"run directory {self.run_dir} has no manifest.json but holds {', '.join(stray[:5])}"
                        f"{' ...' if len(stray) > 5 else ''}: it is not an ftib run (or its manifest was "
                        f"deleted); use another --run-dir, or --force to move them to superseded/<time>-orphaned/"
                    )
                self._archive_previous_run("orphaned", names=stray)
        recomputed: list[str] = []
        if manifest is not None and manifest.data.get("fingerprint") != fingerprint:
            old_points = manifest.data.get("point_fingerprints") or {}
            # compared as of the manifest's ftib: options added since, at their defaults, are no change
            points = self.recipe.point_fingerprints(previous=manifest.data.get("config") or {})
            done = [k for k, r in manifest.data.get("stages", {}).items() if r.get("status") == "completed"]
            kept = [k for k in done if k in points and old_points.get(k) == points[k]]
            # Nothing of the old training would survive: a different run, not a change.
            if old_points.get(BASE_POINT) != points[BASE_POINT] or (done and not kept):
                if not self.force:
                    diff = _config_diff(manifest.data.get("config", {}), self.recipe.to_dict())
                    raise RunDirError(
                        f"run directory {self.run_dir} was made by a different configuration "
                        f"({diff}), so none of its trained stages can be reused "
                        f"(changing only evaluators or later stages needs no --force): use another --run-dir, or --force to start over there "
                        f"(the old run is moved to superseded/<time>-replaced/)"
                    )
                self._archive_previous_run("replaced")
                manifest = None
            else:
                recomputed = self._invalidate_changed(manifest, old_points, points)
        if manifest is None:
            manifest = Manifest(
                self.run_dir,
                {
                    "manifest_version": MANIFEST_VERSION,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "fingerprint": fingerprint,
                    "recipe_file": str(self.recipe.source) if self.recipe.source else None,
                    "config": self.recipe.to_dict(),
                    "stages": {},
                    "evals": {},
                },
            )
        manifest.data["fingerprint"] = fingerprint
        manifest.data["point_fingerprints"] = self.recipe.point_fingerprints()
        # the recipe file of the latest invocation (the same configuration, perhaps another path)
        manifest.data["recipe_file"] = str(self.recipe.source) if self.recipe.source else None
        manifest.data["config"] = self.recipe.to_dict()
        manifest.data["recomputed"] = recomputed
        manifest.data["seed"] = self.recipe.run.seed
        manifest.data["versions"] = package_versions()
        manifest.data["git_commit"] = git_commit()
        manifest.data["native"] = native_build_info()
        manifest.data["platform"] = {"system": platform.platform(), "argv": sys.argv}
        manifest.data["data_hashes"] = {
            key: {"path": str(p), "sha256": sha256_path(p)}
            for key, p in self.recipe.data_files().items()
            if p.exists()
        }
        manifest.save()
        return manifest

    def _superseded_dir(self, why: str) -> Path:
        # ``<time>[.<n>]-<why>``: two supersessions within one second stay apart and
        # every folder still ends in its reason.
        stamp = time.strftime('%Y%m%d-%H%M%S')
        target = self.run_dir / SUPERSEDED / f"{stamp}-{why}"
        suffix = 0
        while target.exists():
            suffix += 1
            target = self.run_dir / SUPERSEDED / f"{stamp}.{suffix}-{why}"
        return target

    def _archive_previous_run(self, why: str, names: list[str] | None = None) -> None:
        """Move the previous run's manifest, metrics and stage/eval folders (or
        ``names``) aside into ``superseded/<time>-<why>/`` so nothing is lost and no
        stale step checkpoint can be mistaken for one of the new run."""
        names = names or ["manifest.json", METRICS, "stages", "evals", "report.md"]
        present = [n for n in names if (self.run_dir / n).exists()]
        if not present:
            return
        target = self._superseded_dir(why)
        target.mkdir(parents=True)
        for n in present:
            os.replace(self.run_dir / n, target / n)
        log.warning("moved the previous run's %s to %s", ", ".join(present), target)

    def _invalidate_changed(self, manifest: Manifest, old: dict[str, str], new: dict[str, str]) -> list[str]:
        """Reset the manifest entries whose point fingerprint changed (a changed stage
        changes every point after it) and move their folders and metrics rows to
        ``superseded/<time>-changed/``. Returns their names (``stages.<id>``,
        ``evals.<point>/<id>``), which this run recomputes."""
        changed: list[tuple[str, str, Path]] = []
        for section, subdir in (("stages", "stages"), ("evals", "evals")):
            for key in list(manifest.data.get(section, {})):
                if key in new and old.get(key) == new[key]:
                    continue
                changed.append((section, key, self.run_dir / subdir / key))
        if not changed:
            return []
        target = self._superseded_dir("changed")
        sink = MetricsSink(self.run_dir / METRICS)
        for section, key, folder in changed:
            rec = manifest.data[section].pop(key)
            if folder.exists():
                dest = target / folder.relative_to(self.run_dir)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(folder, dest)
            if section == "stages":
                sink.discard({"stage": key})
            else:
                point, _, eid = key.partition("/")
                sink.discard({"eval": eid, "point": point})
            target.mkdir(parents=True, exist_ok=True)
            atomic_write_json(target / f"{section}.{key.replace('/', '.')}.json", rec)
        names = [f"{section}.{key}" for section, key, _ in changed]
        log.warning("configuration changed for %s: recomputing them (previous results in %s)",
                    ", ".join(names), target)
        return names

    # -- contexts ------------------------------------------------------------------
    def _context(self, work_dir: Path, model_source: str, bundle: Any, metrics: MetricsSink,
                 logger_name: str, resume_from: Path | None = None, run_id: str = "") -> RunContext:
        work_dir.mkdir(parents=True, exist_ok=True)
        return RunContext(
            run_dir=self.run_dir,
            work_dir=work_dir,
            seed=self.recipe.run.seed,
            device=self.device,
            dtype=self.dtype,
            dist=self.dist,
            model_source=model_source,
            model_options=cfg.to_dict(self.recipe.model),
            bundle=bundle,
            resume_from=resume_from,
            metrics=metrics,
            run_id=run_id,
            logger=logging.getLogger(logger_name),
            progress=self.progress,
        )

    # -- the run -------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run (or resume) everything; return the final manifest data."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # One writer: rank 0 of a job holds the lock for the whole run (the OS frees it
        # however the process ends); the other ranks of the same job only read.
        lock = RunDirLock(self.run_dir).acquire() if self.dist.is_main else None
        try:
            if lock is not None:
                for p in clean_stale_temporaries(self.run_dir):
                    log.info("removed %s, left by an interrupted process", p)
            self.device = D.rank_device(resolve_device(self.recipe.run.device), self.dist)
            owns_group = D.setup(self.dist, self.device)
            try:
                return self._run()
            finally:
                if owns_group:
                    D.teardown()
        finally:
            if lock is not None:
                lock.release()

    def _run(self) -> dict[str, Any]:
        self.dtype = resolve_dtype(self.recipe.run.dtype, self.device)
        log.info("run directory %s (device %s, dtype %s)", self.run_dir, self.device, self.dtype)
        manifest = self._open_manifest()
        sink = MetricsSink(self.run_dir / METRICS, enabled=self.dist.is_main)
        invoked = time.time()

        work: list[tuple[str, str, StageEntry | EvalEntry]] = [("eval", BASE_POINT, e) for e in self.recipe.evaluators if BASE_POINT in e.after]
        for stage in self.recipe.stages:
            work.append(("stage", stage.id, stage))
            work += [("eval", stage.id, e) for e in self.recipe.evaluators if stage.id in e.after]

        model_source = self.recipe.model.name_or_path
        bundle = None
        produced: dict[str, str] = {BASE_POINT: model_source}
        bar = _progress(len(work), enabled=self.progress and self.dist.is_main)
        quiet = _QuietLibraryBars() if not self.progress else None
        try:
            for kind, point, entry in work:
                bar.set_description(f"{kind} {entry.id}" + (f" @ {point}" if kind == "eval" else ""))
                if isinstance(entry, StageEntry):  # kind == "stage"
                    if entry.start_from is not None and produced[entry.start_from] != model_source:
                        model_source, bundle = produced[entry.start_from], None
                    model_source, bundle = self._run_stage(manifest, sink, entry, model_source, bundle)
                    produced[entry.id] = model_source
                else:
                    self._run_eval(manifest, sink, entry, point, model_source, bundle)
                bar.update(1)
        finally:
            bar.close()
            if quiet is not None:
                quiet.restore()
        manifest.data["status"] = "completed"
        # Wall time of the invocation that completed the run (a resumed run counts only
        # the part it ran).
        manifest.data["last_invocation_seconds"] = round(time.time() - invoked, 1)
        manifest.save()
        return manifest.data

    def _run_stage(self, manifest: Manifest, sink: MetricsSink, stage: StageEntry,
                   model_source: str, bundle: Any) -> tuple[str, Any]:
        rec = manifest.entry("stages", stage.id)
        work_dir = self.run_dir / "stages" / stage.id
        if rec.get("status") == "completed":
            ckpt = rec.get("checkpoint")
            if ckpt is None:
                log.info("stage %s already completed (no new checkpoint); skipping", stage.id)
                return model_source, bundle
            path = self.run_dir / ckpt
            if path.exists():
                log.info("stage %s already completed; skipping (checkpoint %s)", stage.id, ckpt)
                return str(path), None
            log.warning("stage %s was completed but its checkpoint %s is gone; running it again",
                        stage.id, ckpt)
        resume_from = None
        if self.dist.is_main and rec.get("status") in {"running", "failed"}:
            resume_from = _latest_step_checkpoint(work_dir)
        resume_from = D.broadcast_object(resume_from)  # rank 0 decides, after recovering renames
        if resume_from is not None:
            log.info("stage %s resumes from %s", stage.id, resume_from)
        # The rows an interrupted attempt logged past its checkpoint are redone now.
        dropped = sink.discard({"stage": stage.id}, _step_number(resume_from) if resume_from else -1)
        if dropped:
            log.info("stage %s: dropped %d metrics rows of the interrupted attempt", stage.id, dropped)
        seed_everything(self.recipe.run.seed)
        ctx = self._context(work_dir, model_source, bundle, sink.child(stage=stage.id),
                            f"ftib.stage.{stage.id}", resume_from,
                            run_id=f"{self.recipe.point_fingerprints()[stage.id][:16]}/stages/{stage.id}")
        started = time.time()
        manifest.update("stages", stage.id, name=stage.name, status="running",
                        started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), model_source=model_source)
        try:
            result = stage.plugin(stage.config).run(ctx)
            if not isinstance(result, StageResult):
                raise TypeError(f"stage {stage.name!r} returned {type(result).__name__}, not StageResult")
        except BaseException as exc:
            manifest.update("stages", stage.id, status="failed",
                            error=f"{type(exc).__name__}: {exc}",
                            seconds=round(time.time() - started, 3))
            raise
        ckpt_rel = None
        if result.checkpoint is not None:
            ckpt = Path(result.checkpoint).resolve()
            try:
                ckpt_rel = ckpt.relative_to(self.run_dir.resolve()).as_posix()
            except ValueError:
                raise RunDirError(f"stage {stage.id!r} returned checkpoint {ckpt} outside the run directory") from None
            if not ckpt.exists():
                raise RunDirError(f"stage {stage.id!r} returned checkpoint {ckpt}, which does not exist")
        import torch

        manifest.update("stages", stage.id, status="completed", checkpoint=ckpt_rel,
                        metrics=jsonable(result.metrics),
                        artifacts={k: str(v) for k, v in result.artifacts.items()},
                        seconds=round(time.time() - started, 3), error=None,
                        # what the wall time was measured on (a model card states it)
                        cpu_threads=torch.get_num_threads(), cpus=os.cpu_count())
        if ckpt_rel is None:
            return model_source, result.bundle if result.bundle is not None else bundle
        return str(self.run_dir / ckpt_rel), result.bundle

    def _run_eval(self, manifest: Manifest, sink: MetricsSink, ev: EvalEntry, point: str,
                  model_source: str, bundle: Any) -> None:
        key = f"{point}/{ev.id}"
        rec = manifest.entry("evals", key)
        if rec.get("status") == "completed":
            log.info("evaluation %s already completed; skipping", key)
            return
        if self.dist.world_size > 1:
            # Evaluators are single-process: rank 0 scores, the other ranks wait for it.
            try:
                if self.dist.is_main:
                    self._evaluate(manifest, sink, ev, point, model_source, bundle, key)
            finally:
                D.barrier()
            return
        self._evaluate(manifest, sink, ev, point, model_source, bundle, key)

    def _evaluate(self, manifest: Manifest, sink: MetricsSink, ev: EvalEntry, point: str,
                  model_source: str, bundle: Any, key: str) -> None:
        work_dir = self.run_dir / "evals" / point / ev.id
        sink.discard({"eval": ev.id, "point": point})  # rows of an interrupted attempt
        seed_everything(self.recipe.run.seed)
        ctx = self._context(work_dir, model_source, bundle, sink.child(eval=ev.id, point=point),
                            f"ftib.eval.{ev.id}", run_id=f"{self.recipe.point_fingerprints()[key][:16]}/evals/{key}")
        started = time.time()
        manifest.update("evals", key, name=ev.name, status="running")
        try:
            result = ev.plugin(ev.config).evaluate(ctx)
            lines = record_lines(result, ev.name)
        except BaseException as exc:
            manifest.update("evals", key, status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        atomic_write_text(work_dir / "records.jsonl", "".join(line + "\n" for line in lines))
        atomic_write_json(work_dir / "metrics.json", {"metrics": jsonable(result.metrics),
                                                      "details": jsonable(result.details)})
        manifest.update("evals", key, status="completed", metrics=jsonable(result.metrics),
                        seconds=round(time.time() - started, 3), error=None)


def record_lines(result: Any, name: str) -> list[str]:
    """Check an evaluator's result against the contract and return its records as JSON
    lines (``records.jsonl``). Raises PluginError naming the evaluator."""
    from ftib.core.errors import PluginError

    if not isinstance(result, EvalResult):
        raise PluginError(f"evaluator {name!r} returned {type(result).__name__}, not EvalResult")
    lines = []
    for i, r in enumerate(result.records):
        missing = [k for k in EvalResult.REQUIRED_RECORD_KEYS if k not in r]
        if missing:
            raise PluginError(f"evaluator {name!r}: record {i} lacks keys {missing}")
        lines.append(json.dumps(jsonable(dict(r)), ensure_ascii=False))
    return lines


def jsonable(obj: Any) -> Any:
    """Convert tensors/numpy scalars/paths into plain JSON values (NaN -> None, since
    JSON has no NaN)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    return obj


def _config_diff(old: Any, new: Any, prefix: str = "") -> str:
    """A short description of where two resolved recipes differ."""
    diffs: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}[{i}]")
        elif a != b:
            diffs.append(f"{path}: {a!r} -> {b!r}")

    walk(old, new, prefix)
    if not diffs:
        return "unknown difference"
    more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
    return "; ".join(diffs[:3]) + more


class _NullBar:
    def set_description(self, *_: Any) -> None: ...
    def update(self, *_: Any) -> None: ...
    def close(self) -> None: ...


class _QuietLibraryBars:
    """``--no-progress`` also silences the bars the libraries draw inside stages: datasets'
    ("Generating train split", "tokenising" maps), transformers' ("Loading weights",
    "Writing model shards") and huggingface_hub's; :meth:`restore` puts the previous
    state back."""

    def __init__(self) -> None:
        import datasets
        import huggingface_hub.utils as hub
        import transformers.utils.logging as tf_logging

        # (was it on, disable, enable) per library; only what was on is turned back on
        libs = ((datasets.is_progress_bar_enabled(), datasets.disable_progress_bars, datasets.enable_progress_bars),
                (tf_logging.is_progress_bar_enabled(), tf_logging.disable_progress_bar,
                 tf_logging.enable_progress_bar),
                (not hub.are_progress_bars_disabled(), hub.disable_progress_bars, hub.enable_progress_bars))
        self._enable = [enable for was, _, enable in libs if was]
        for _, disable, _ in libs:
            disable()

    def restore(self) -> None:
        for enable in self._enable:
            enable()


def _progress(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", dynamic_ncols=True, leave=True)
