"""The ``ftib`` console script, run as a user would (subprocesses)."""

import json
import os
import shutil
import subprocess
import sys

import yaml

from ftib.core.registry import GROUPS


def ftib(*args, env=None, cwd=None):
    exe = shutil.which("ftib")
    cmd = [exe] if exe else [sys.executable, "-m", "ftib.core.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=300)


def test_version_and_help():
    out = ftib("--version")
    assert out.returncode == 0 and out.stdout.startswith("ftib ")
    help_text = ftib("run", "--help").stdout
    assert "KEY=VALUE" in help_text and "stages.sft.lr=1e-4" in help_text and "--run-dir" in help_text
    assert ftib("list", "--help").returncode == 0


def test_list_prints_every_group():
    out = ftib("list")
    assert out.returncode == 0, out.stderr
    for group in GROUPS:
        assert f"{group}:" in out.stdout


def test_drop_in_plugin_is_listed_and_runs(toy_site, tmp_path):
    env = {"PYTHONPATH": f"{toy_site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    listed = ftib("list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "counter" in listed.stdout and "ftib-toy" in listed.stdout and "[plugin]" in listed.stdout
    hidden = ftib("list", env={**env, "FTIB_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "counter" not in hidden.stdout

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": "m", "stages": [{"name": "counter"}],
                                      "evaluators": [{"name": "echo"}]}))
    run_dir = tmp_path / "run"
    out = ftib("run", str(recipe), "stages.counter.steps=2", "--run-dir", str(run_dir), "--no-progress", env=env)
    assert out.returncode == 0, out.stderr
    assert "counter" in out.stdout and "completed" in out.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["counter"]["status"] == "completed"
    assert manifest["evals"]["counter/echo"]["metrics"]["accuracy"] == 1.0

    # A changed config on the same run directory is refused with a clear message.
    out = ftib("run", str(recipe), "stages.counter.steps=3", "--run-dir", str(run_dir), env=env)
    assert out.returncode == 2 and "different configuration" in out.stderr
    # An unknown key is reported with the closest valid one, before any work.
    out = ftib("run", str(recipe), "stages.counter.stepz=3", "--run-dir", str(tmp_path / "r2"), env=env)
    assert out.returncode == 2 and "did you mean 'steps'" in out.stderr
    assert not (tmp_path / "r2").exists()


def test_default_recipe_runs(tmp_path):
    """`ftib run` with no recipe runs the packaged default (shortened here by overrides;
    the full run is the main job of CI and of the README)."""
    from ftib.core.cli import packaged_recipe
    from ftib.core.recipe import read_yaml

    def tiny(spec: str) -> str | None:
        # the tiny world has every file of the small one; the base model's own
        # pretraining data (`ftibworld:base/pretrain/...`) exists only in the base world
        if "/pretrain/" in spec:
            return None
        return "ftibworld:tiny/" + spec.split("/", 1)[1] if "/" in spec else "ftibworld:tiny"

    def tiny_data(data: str | list[str]) -> str:
        if isinstance(data, str):
            return tiny(data) or "ftibworld:tiny"
        kept = [t for t in map(tiny, data) if t] or ["ftibworld:tiny"]
        return "[" + ",".join(kept) + "]"

    shorten = []
    for st in read_yaml(packaged_recipe()).get("stages") or []:
        sid = st.get("id", st["name"])
        shorten += [f"stages.{sid}.train.max_steps=1", f"stages.{sid}.train.checkpoint_every=0"]
        cfg = st.get("config") or {}
        if "data" in cfg:
            shorten.append(f"stages.{sid}.data=" + tiny_data(cfg["data"]))
            if "data_weights" in cfg:  # one weight per source, and the sources changed
                shorten.append(f"stages.{sid}.data_weights=null")
        if "replay" in cfg:
            shorten.append(f"stages.{sid}.replay.data=[ftibworld:tiny]")
    for ev in read_yaml(packaged_recipe()).get("evaluators") or []:
        eid = ev.get("id", ev["name"])
        shorten += [f"evaluators.{eid}.limit=2", f"evaluators.{eid}.data=ftibworld:tiny"]
    env = {"FTIB_CACHE_DIR": str(tmp_path / "cache")}
    out = ftib("run", *shorten, "--run-dir", str(tmp_path / "run"), "--no-progress", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    # --no-progress reaches the stages' training loops and the libraries' bars inside
    # stages (datasets' "Generating train split", tokenising maps) too
    assert "step/s" not in out.stderr and "train:" not in out.stderr, out.stderr[-2000:]
    assert "examples/s" not in out.stderr and "Generating" not in out.stderr, out.stderr[-2000:]
    # ... and transformers' weight loading and shard writing bars
    assert "Loading weights" not in out.stderr and "Writing model shards" not in out.stderr, out.stderr[-2000:]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["recipe_file"].endswith("tiny.yaml") and manifest["status"] == "completed"
    assert all(rec["status"] == "completed" for rec in manifest["stages"].values())
    # each stage records what its wall time was measured on (model cards state it)
    assert all(rec["cpu_threads"] >= 1 and rec["cpus"] >= 1 for rec in manifest["stages"].values())
    assert all(rec["status"] == "completed" for rec in manifest["evals"].values())
