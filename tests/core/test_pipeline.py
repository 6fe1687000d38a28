import json

import pytest
import yaml

from ftib.core import RunDirError
from ftib.core.pipeline import Pipeline
from ftib.core.recipe import load_recipe

RECIPE = {
    "run": {"seed": 3, "device": "cpu"},
    "model": "base-model",
    "stages": [
        {"name": "counter", "id": "first", "config": {"steps": 3, "tag": "one"}},
        {"name": "counter", "id": "second", "config": {"steps": 2}},
    ],
    "evaluators": [{"name": "echo", "after": ["base", "first", "second"]}],
}


@pytest.fixture
def recipe_file(tmp_path, toy_plugins):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def calls(run_dir, stage):
    log = run_dir / "stages" / stage / "calls.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def run(recipe_file, run_dir, *overrides, force=False):
    return Pipeline(load_recipe(recipe_file, list(overrides)), run_dir, force=force, progress=False).run()


def test_stages_chain_and_evals_are_recorded(recipe_file, tmp_path):
    run_dir = tmp_path / "run"
    manifest = run(recipe_file, run_dir)
    assert manifest["status"] == "completed"
    assert manifest["stages"]["first"]["status"] == "completed"
    assert manifest["stages"]["first"]["checkpoint"] == "stages/first/final"
    # Each stage's checkpoint is the next stage's input.
    assert calls(run_dir, "first")[0]["model_source"] == "base-model"
    assert calls(run_dir, "second")[0]["model_source"] == str(run_dir / "stages/first/final")
    # Evaluators ran at every point, saw the right model, and wrote records.
    assert manifest["evals"]["base/echo"]["metrics"] == {"accuracy": 0.0}
    assert manifest["evals"]["second/echo"]["metrics"] == {"accuracy": 1.0}
    records = (run_dir / "evals/first/echo/records.jsonl").read_text().splitlines()
    assert [json.loads(r)["prediction"] for r in records] == ["one", "one"]
    # manifest: config, versions, seed, native build; metrics.jsonl one line per step.
    assert manifest["seed"] == 3 and "torch" in manifest["versions"]
    assert manifest["config"]["stages"][0]["config"] == {"steps": 3, "tag": "one"}
    assert manifest["native"]["compiler"]
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(x["stage"], x["step"]) for x in lines] == [("first", 0), ("first", 1), ("first", 2),
                                                        ("second", 0), ("second", 1)]


def test_rerun_skips_completed_stages(recipe_file, tmp_path):
    run_dir = tmp_path / "run"
    run(recipe_file, run_dir)
    manifest = run(recipe_file, run_dir)
    assert len(calls(run_dir, "first")) == 1 and len(calls(run_dir, "second")) == 1
    assert manifest["stages"]["second"]["status"] == "completed"


def test_interrupted_stage_resumes_from_last_step(recipe_file, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    monkeypatch.setenv("TOY_FAIL_AT", "1")
    with pytest.raises(RuntimeError, match="injected failure at step 1"):
        run(recipe_file, run_dir, "stages.second.steps=4")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["first"]["status"] == "failed"
    assert "injected failure" in manifest["stages"]["first"]["error"]
    monkeypatch.delenv("TOY_FAIL_AT")
    manifest = run(recipe_file, run_dir, "stages.second.steps=4")
    first = calls(run_dir, "first")
    assert [c["start"] for c in first] == [0, 1]
    assert first[1]["resume_from"].endswith("steps/step-000000")
    assert manifest["stages"]["first"]["status"] == "completed"
    assert manifest["stages"]["first"]["error"] is None


def test_foreign_run_dir_is_refused(recipe_file, tmp_path):
    run_dir = tmp_path / "run"
    run(recipe_file, run_dir)
    with pytest.raises(RunDirError, match=r"different configuration \(stages\[0\]\.config\.steps: 3 -> 5\)"):
        run(recipe_file, run_dir, "stages.first.steps=5")
    # Nothing was touched by the refusal.
    assert len(calls(run_dir, "first")) == 1
    manifest = run(recipe_file, run_dir, "stages.first.steps=5", force=True)
    assert manifest["stages"]["first"]["status"] == "completed"
    assert [c["start"] for c in calls(run_dir, "first")] == [0]  # --force starts the stages afresh
    old = list(run_dir.glob("superseded/*-replaced"))
    assert len(old) == 1, "the old run must be kept"
    assert (old[0] / "manifest.json").exists() and (old[0] / "stages/first/steps/step-000002").is_dir()
    assert sorted(p.name for p in (run_dir / "stages/first/steps").iterdir()) == [
        f"step-{i:06d}" for i in range(5)]


def test_completed_stage_with_missing_checkpoint_runs_again(recipe_file, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    run(recipe_file, run_dir)
    shutil.rmtree(run_dir / "stages/second/final")
    run(recipe_file, run_dir)
    assert len(calls(run_dir, "first")) == 1 and len(calls(run_dir, "second")) == 2


def test_stage_can_start_from_an_earlier_point(toy_plugins, tmp_path):
    recipe = tmp_path / "branch.yaml"
    recipe.write_text(yaml.safe_dump({"model": "base-model", "stages": [
        {"name": "counter", "id": "warm", "config": {"steps": 1}},
        {"name": "counter", "id": "arm_a", "config": {"steps": 1, "tag": "a"}},
        {"name": "counter", "id": "arm_b", "from": "warm", "config": {"steps": 1, "tag": "b"}},
        {"name": "counter", "id": "from_base", "from": "base", "config": {"steps": 1}},
    ]}))
    run_dir = tmp_path / "run"
    Pipeline(load_recipe(recipe), run_dir, progress=False).run()
    warm = str(run_dir / "stages/warm/final")
    assert calls(run_dir, "arm_a")[0]["model_source"] == warm
    assert calls(run_dir, "arm_b")[0]["model_source"] == warm
    assert calls(run_dir, "from_base")[0]["model_source"] == "base-model"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": "m", "stages": [{"name": "counter", "from": "later"}]}))
    from ftib.core import ConfigError

    with pytest.raises(ConfigError, match="from: 'later' is not 'base' or an earlier stage"):
        load_recipe(bad)
