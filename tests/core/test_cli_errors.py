"""Every bad input of issue 16 through the ``ftib`` command line: exit status 2, one
line naming the file or key, no traceback (``FTIB_DEBUG=1`` shows it)."""

import json
import os
import struct
import subprocess
import sys
import zlib

import pytest
import yaml

from .test_train import TINY_LM

ALIAS_BOMB = """\
model:
  name_or_path: tiny-qwen3-vl
  preset_overrides:
    a: &a [x, x, x, x, x, x, x, x, x]
    b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
    c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
    d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
    e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
    f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
    g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
    h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
    i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


def png_header_only(width, height):
    """A PNG whose header claims ``width x height`` (Pillow checks the size on open)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.fixture
def cli(tmp_path, install_dist):
    site = install_dist("ftib-tiny-lm", {"ftib.stages": {"tiny": "ftib_tiny_lm:TinyLMStage"}},
                        {"ftib_tiny_lm": TINY_LM})
    toy = next(p for p in sys.path if "ftib-tiny-lm" in p)
    env = {**os.environ, "PYTHONPATH": f"{toy}{os.pathsep}{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("FTIB_DEBUG", None)

    def run(recipe, *args, debug=False):
        path = tmp_path / "recipe.yaml"
        path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe))
        run_dir = args[0] if args and not str(args[0]).count("=") else tmp_path / "run"
        rest = args[1:] if args and run_dir == args[0] else args
        out = subprocess.run([sys.executable, "-m", "ftib.core.cli", "run", str(path), "--run-dir", str(run_dir),
                              "--no-progress", *rest], env={**env, **({"FTIB_DEBUG": "1"} if debug else {})},
                             capture_output=True, text=True, timeout=600)
        return out
    return run


TINY = {"model": "none", "stages": [{"name": "tiny", "config": {"train": {
    "max_steps": 4, "batch_size": 4, "lr": 0.03, "checkpoint_every": 1, "keep_checkpoints": 5}}}]}


def with_train(**train):
    r = json.loads(json.dumps(TINY))
    r["stages"][0]["config"]["train"].update(train)
    return r


BAD_RECIPES = [
    ("alias bomb", ALIAS_BOMB, "expands to more than"),
    ("after: 3", {"model": "m", "evaluators": [{"name": "pope", "after": 3}]}, "evaluators.pope.after"),
    ("lr nan", with_train(lr="nan"), "stages.tiny.train.lr: must be a finite number"),
    ("lr inf", with_train(lr=float("inf")), "stages.tiny.train.lr: must be a finite number"),
    ("batch_size 0", with_train(batch_size=0), "stages.tiny.train: train.batch_size must be >= 1"),
    ("image_size big", {"model": {"name_or_path": "tiny-qwen3-vl", "preset_overrides": {"image_size": "big"}}},
     "model.preset_overrides.image_size: expected int"),
    ("max_new_tokens 0", {"model": "tiny-qwen3-vl", "evaluators": [{"name": "pope", "after": "base",
                                                                    "config": {"max_new_tokens": 0}}]},
     "evaluators.pope"),
    ("negative temperature", {"model": "tiny-qwen3-vl", "evaluators": [{"name": "translation", "after": "base",
                                                                        "config": {"temperature": -1.0}}]},
     "evaluators.translation: temperature must be > 0"),
    ("max_new_tokens past the context", {"model": "tiny-qwen3-vl", "evaluators": [
        {"name": "translation", "after": "base", "config": {"max_new_tokens": 5000}}]},
     "evaluators.translation.max_new_tokens: 5000 exceeds the model's context of 4096"),
    ("block_size past the context", {"model": "tiny-qwen3-vl", "stages": [{"name": "cpt", "config": {
        "block_size": 5000}}]}, "stages.cpt.block_size: 5000 exceeds"),
    ("huge group_size", {"model": "tiny-qwen3-vl", "stages": [{"name": "grpo", "config": {
        "group_size": 100000}}]}, "stages.grpo: one rollout micro-batch needs about"),
]


@pytest.mark.parametrize("name,recipe,named", BAD_RECIPES, ids=[c[0] for c in BAD_RECIPES])
def test_bad_recipe_is_one_line_and_exit_2(cli, tmp_path, name, recipe, named):
    out = cli(recipe)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and named in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "run").exists(), "refused before any work"


def test_override_on_a_malformed_section_and_options_anywhere(cli, tmp_path):
    out = cli({"model": "m", "stages": [{"name": "tiny", "config": 5}]}, tmp_path / "run", "stages.tiny.train.lr=1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "stages.tiny.config in the recipe is a int" in out.stderr
    # KEY=VALUE after --run-dir is an override (issue 15, item 9); it reaches the recipe.
    out = cli(TINY, tmp_path / "run", "stages.tiny.train.lr=nan")
    assert out.returncode == 2 and "stages.tiny.train.lr" in out.stderr
    out = cli(TINY, tmp_path / "ok", "stages.tiny.train.max_steps=2")
    assert out.returncode == 0, out.stderr[-2000:]
    manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert manifest["config"]["stages"][0]["config"]["train"]["max_steps"] == 2


def test_decompression_bomb_names_the_image(cli, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "bomb.png").write_bytes(png_header_only(20000, 20000))
    (data / "captions.jsonl").write_text(json.dumps({"id": "a", "image": "bomb.png", "caption": "x"}) + "\n")
    out = cli({"model": "tiny-qwen3-vl", "stages": [{"name": "align",
                                                     "config": {"data": str(data / "captions.jsonl")}}]})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "bomb.png" in out.stderr and "decompression bomb" in out.stderr


@pytest.mark.parametrize("name", ["rng.pt"] + [pytest.param(n, marks=pytest.mark.slow)
                                              for n in ("trainable.pt", "optimizer.pt", "scheduler.pt")])
def test_truncated_checkpoint_file(cli, tmp_path, name):
    """Truncated newest step: its path is reported and the newest intact step is used;
    truncated with a matching checksum (no intact alternative): exit 2 naming the file."""
    run_dir = tmp_path / "run"
    assert cli(TINY, run_dir).returncode == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["stages"]["tiny"]["status"] = "failed"  # as if killed after its last step
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    steps = sorted((run_dir / "stages/tiny/steps").iterdir())
    newest = steps[-1] / name
    newest.write_bytes(newest.read_bytes()[:20])
    out = cli(TINY, run_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(newest) in out.stderr and f"newest intact step checkpoint {steps[-2]}" in out.stderr

    from ftib.core.rundir import atomic_write_json
    from ftib.core.train import CHECKSUMS, _checksums

    manifest["stages"]["tiny"]["status"] = "failed"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    for step in sorted((run_dir / "stages/tiny/steps").iterdir()):
        target = step / name
        target.write_bytes(target.read_bytes()[:20])
        atomic_write_json(step / CHECKSUMS, _checksums(step))
    latest = sorted((run_dir / "stages/tiny/steps").iterdir())[-1] / name
    out = cli(TINY, run_dir)
    assert out.returncode == 2 and "Traceback" not in out.stderr and str(latest) in out.stderr, out.stderr[-2000:]
    debug = cli(TINY, run_dir, debug=True)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_manifest_missing_and_locked_run_dirs(cli, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("{}\n")
    out = cli(TINY, run_dir)
    assert out.returncode == 2 and "has no manifest.json" in out.stderr and str(run_dir) in out.stderr
    from ftib.core.rundir import RunDirLock

    other = tmp_path / "other"
    with RunDirLock(other):
        out = cli(TINY, other)
    assert out.returncode == 2 and f"in use by pid {os.getpid()}" in out.stderr and "Traceback" not in out.stderr
