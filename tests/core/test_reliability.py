"""Run directories you can trust (issue 16): safe loading, one writer, resume-invariant
outputs, checkpoint integrity, per-point fingerprints. See docs/reliability.md."""

import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from ftib.core import RunDirError
from ftib.core.pipeline import Pipeline, _latest_step_checkpoint
from ftib.core.recipe import load_recipe
from ftib.core.rundir import LOCK, MetricsSink, RunDirLock, atomic_write_json, clean_stale_temporaries
from ftib.core.train import CHECKSUMS, Trainer, _checksums, verify_step_checkpoint

from .test_pipeline import RECIPE, calls
from .test_train import TinyTask, cfg, make_ctx


class _Planted:
    """A pickle that, if ever unpickled with the full unpickler, creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _train_with_steps(tmp_path):
    ctx = make_ctx(tmp_path)
    Trainer(TinyTask(), cfg(max_steps=4), ctx, progress=False).train()
    return ctx, sorted((ctx.work_dir / "steps").iterdir())


@pytest.mark.parametrize("fixed_checksums", [True, False])
def test_planted_pickle_in_every_checkpoint_file_never_runs(tmp_path, fixed_checksums):
    """Every file of a step checkpoint, replaced by a code-running pickle: resuming
    raises an error naming the file and the code never runs - also when the attacker
    rewrote checksums.json to match."""
    ctx, steps = _train_with_steps(tmp_path)
    step = steps[-1]
    names = sorted(p.name for p in step.iterdir() if p.name != CHECKSUMS)
    assert {"trainable.pt", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"} <= set(names)
    for name in names:
        marker = tmp_path / f"ran-{name}"
        original = (step / name).read_bytes()
        (step / name).write_bytes(pickle.dumps(_Planted(marker)))
        if fixed_checksums:
            atomic_write_json(step / CHECKSUMS, _checksums(step))
        resumed = make_ctx(tmp_path, resume_from=step)
        with pytest.raises(RunDirError, match=str(step / name) if fixed_checksums else "damaged") as info:
            Trainer(TinyTask(), cfg(max_steps=6), resumed, progress=False).train()
        assert not marker.exists(), f"code in {name} ran"
        if not fixed_checksums:
            assert name in str(info.value)
        (step / name).write_bytes(original)
        atomic_write_json(step / CHECKSUMS, _checksums(step))
    assert verify_step_checkpoint(step) is None


def test_truncated_newest_step_falls_back_to_the_newest_intact_one(tmp_path, caplog):
    ctx, steps = _train_with_steps(tmp_path)
    newest = steps[-1]
    data = (newest / "optimizer.pt").read_bytes()
    (newest / "optimizer.pt").write_bytes(data[: len(data) // 2])
    assert "optimizer.pt does not match its checksum" in verify_step_checkpoint(newest)
    chosen = _latest_step_checkpoint(ctx.work_dir)
    assert chosen == steps[-2]
    assert str(newest) in caplog.text and "newest intact" in caplog.text
    aside = list((ctx.work_dir / "corrupt").iterdir())
    assert len(aside) == 1 and (aside[0] / "optimizer.pt").exists(), "nothing is deleted"


def test_rng_state_is_tensors_only(tmp_path):
    _, steps = _train_with_steps(tmp_path)
    state = torch.load(steps[-1] / "rng.pt", weights_only=True)
    assert isinstance(state["python"]["state"], torch.Tensor)
    assert isinstance(state["numpy"]["state"], torch.Tensor)


def test_second_writer_is_refused_with_the_holders_pid_and_host(tmp_path):
    run_dir = tmp_path / "run"
    with RunDirLock(run_dir):
        with pytest.raises(RunDirError, match=rf"in use by pid {os.getpid()} on host \S+"):
            RunDirLock(run_dir).acquire()
    RunDirLock(run_dir).acquire().release()  # released on exit of the block


def test_lock_of_a_killed_process_is_released(tmp_path):
    run_dir = tmp_path / "run"
    code = textwrap.dedent(f"""
        import os, sys, time
        from ftib.core.rundir import RunDirLock
        RunDirLock({str(run_dir)!r}).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"pid {proc.pid}"):
            RunDirLock(run_dir).acquire()
    finally:
        proc.kill()
        proc.wait()
    RunDirLock(run_dir).acquire().release()


def test_run_dir_without_manifest_is_refused_or_archived(tmp_path, toy_plugins):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    run_dir = tmp_path / "run"
    Pipeline(load_recipe(path), run_dir, progress=False).run()
    (run_dir / "manifest.json").unlink()
    with pytest.raises(RunDirError, match="has no manifest.json but holds"):
        Pipeline(load_recipe(path), run_dir, progress=False).run()
    manifest = Pipeline(load_recipe(path), run_dir, force=True, progress=False).run()
    assert manifest["status"] == "completed"
    old = list(run_dir.glob("superseded/*-orphaned"))
    assert len(old) == 1 and (old[0] / "metrics.jsonl").exists()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 5, "the new log is not appended to the old one"


def test_stale_temporaries_are_cleaned(tmp_path):
    (tmp_path / "stages/s/steps/.step-000003.tmp-0123abcd").mkdir(parents=True)
    (tmp_path / ".manifest.json.tmp-deadbeef").write_text("{")
    (tmp_path / "superseded/x/.keep.tmp-00000000").mkdir(parents=True)
    removed = clean_stale_temporaries(tmp_path)
    assert len(removed) == 2
    assert not (tmp_path / "stages/s/steps/.step-000003.tmp-0123abcd").exists()
    assert (tmp_path / "superseded/x/.keep.tmp-00000000").exists()


def test_resumed_stage_log_equals_an_uninterrupted_one(tmp_path, toy_plugins, monkeypatch):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    straight = tmp_path / "straight"
    Pipeline(load_recipe(path), straight, progress=False).run()
    run_dir = tmp_path / "run"
    monkeypatch.setenv("TOY_FAIL_AT", "2")
    with pytest.raises(RuntimeError):
        Pipeline(load_recipe(path), run_dir, progress=False).run()
    # A row logged past the last checkpoint by the killed attempt, and a torn line.
    MetricsSink(run_dir / "metrics.jsonl").child(stage="first").log(2, {"loss": 99.0})
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"stage": "fir')
    monkeypatch.delenv("TOY_FAIL_AT")
    Pipeline(load_recipe(path), run_dir, progress=False).run()

    def rows(d):
        return [{k: v for k, v in json.loads(x).items() if k != "time"}
                for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert rows(run_dir) == rows(straight)


def _as_if_written_before_tag_existed(run_dir, stage_ids):
    """Rewrite a finished run's manifest as an ftib without the counter's ``tag`` option
    would have written it: the option absent from those stages' recorded configs and
    from the fingerprints."""
    from ftib.core.recipe import points_of

    path = run_dir / "manifest.json"
    m = json.loads(path.read_text())
    for s in m["config"]["stages"]:
        if s["id"] in stage_ids:
            del s["config"]["tag"]
    m["point_fingerprints"] = points_of(m["config"])
    m["fingerprint"] = "written-by-an-older-ftib"
    path.write_text(json.dumps(m))


def test_an_option_added_since_a_run_at_its_default_is_no_change(tmp_path, toy_plugins):
    """Upgrading ftib adds options; left at their defaults they keep the old behaviour, so
    a finished run is resumed as it is, not retrained. The same option at a value other
    than its default is a change (here of the first stage: nothing to reuse, refused)."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    run_dir = tmp_path / "run"
    Pipeline(load_recipe(path), run_dir, progress=False).run()
    _as_if_written_before_tag_existed(run_dir, {"second"})  # second has the default tag
    manifest = Pipeline(load_recipe(path), run_dir, progress=False).run()
    assert manifest["recomputed"] == []
    assert len(calls(run_dir, "first")) == 1 and len(calls(run_dir, "second")) == 1
    assert "tag" in manifest["config"]["stages"][1]["config"], "the manifest now records the new option"
    assert Pipeline(load_recipe(path), run_dir, progress=False).run()["recomputed"] == []
    _as_if_written_before_tag_existed(run_dir, {"first"})  # first's tag is "one", not the default
    with pytest.raises(RunDirError, match="different configuration"):
        Pipeline(load_recipe(path), run_dir, progress=False).run()


def test_changing_an_evaluator_or_a_later_stage_keeps_earlier_training(tmp_path, toy_plugins):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    run_dir = tmp_path / "run"
    Pipeline(load_recipe(path), run_dir, progress=False).run()
    manifest = Pipeline(load_recipe(path, ["evaluators.echo.items=3"]), run_dir, progress=False).run()
    assert len(calls(run_dir, "first")) == 1 and len(calls(run_dir, "second")) == 1
    assert manifest["recomputed"] == ["evals.base/echo", "evals.first/echo", "evals.second/echo"]
    assert len((run_dir / "evals/second/echo/records.jsonl").read_text().splitlines()) == 3
    manifest = Pipeline(load_recipe(path, ["evaluators.echo.items=3", "stages.second.steps=3"]), run_dir,
                        progress=False).run()
    assert len(calls(run_dir, "first")) == 1, "the unchanged first stage is not retrained"
    assert [c["start"] for c in calls(run_dir, "second")] == [0]
    assert manifest["recomputed"] == ["stages.second", "evals.second/echo"]
    assert list(run_dir.glob("superseded/*-changed/stages/second"))
    # Changing the first stage leaves nothing to reuse: refused without --force.
    with pytest.raises(RunDirError, match="different configuration"):
        Pipeline(load_recipe(path, ["evaluators.echo.items=3", "stages.second.steps=3", "stages.first.tag=x"]),
                 run_dir, progress=False).run()
    assert (run_dir / LOCK).exists()
