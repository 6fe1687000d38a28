"""Every recipe in ``configs/`` end to end on hub-faithful stand-ins of the checkpoints it
names (tiny overrides: a step or two, a handful of records), through the ``ftib`` CLI as a
user runs it; then the formats of what it wrote. Slow (minutes each on 2 cores)."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
#: Hub name in a recipe -> stand-in family (tests/realpath/standins.py).
HUB_FAMILIES = {"Qwen/Qwen3-VL-8B-Instruct": "qwen3-vl", "Qwen/Qwen3-4B": "qwen3", "Qwen/Qwen3.5-9B": "qwen3.5"}
STEP = "train.max_steps=1 train.batch_size=1 train.grad_accum=1 train.checkpoint_every=1"


def _recipes() -> list[Path]:
    return sorted(CONFIGS.glob("*.yaml"))


def _model(path: Path) -> str:
    model = yaml.safe_load(path.read_text())["model"]
    return model if isinstance(model, str) else model["name_or_path"]


def test_every_recipe_names_a_preset_or_a_covered_checkpoint():
    """A new real-model recipe cannot slip past this suite: its checkpoint needs a stand-in."""
    from ftib.models.presets import is_preset

    for path in _recipes():
        name = _model(path)
        assert is_preset(name) or name in HUB_FAMILIES, f"{path.name}: {name} has no stand-in in tests/realpath"


def _stage_overrides(recipe: dict, minilm: Path) -> list[str]:
    out: list[str] = []
    for st in recipe["stages"]:
        sid = st.get("id", st["name"])
        p = f"stages.{sid}."
        out += [p + kv for kv in STEP.split()]
        if st["name"] == "cpt":
            out += [p + "data=[ftibworld:tiny]", p + "block_size=32", p + "max_documents=16", p + "extend.add=32"]
        elif st["name"] in ("align", "sft"):
            out += [p + "data=ftibworld:tiny", p + "max_records=4"]
        elif st["name"] == "grpo":
            rewards = [{"name": "semantic", "weight": 1.5, "config": {"model": str(minilm), "threshold": 0.0}},
                       {"name": "language", "weight": 1.0, "config": {"scripts": ["han"], "threshold": 0.9}}]
            out += [p + "data=ftibworld:tiny", p + "max_prompts=2", p + "group_size=2", p + "max_new_tokens=8",
                    p + "rewards=" + json.dumps(rewards)]
    for ev in recipe.get("evaluators") or []:
        p = f"evaluators.{ev.get('id', ev['name'])}."
        out += [p + "data=ftibworld:tiny", p + "limit=2"]
        if ev["name"] in ("translation", "headline"):
            out.append(p + "max_new_tokens=8")
    return out


REAL = [p for p in _recipes() if _model(p) in HUB_FAMILIES]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", REAL, ids=[p.stem for p in REAL])
def test_recipe_runs_end_to_end_on_its_standin(recipe, standin, minilm_path, tmp_path):
    from transformers import AutoTokenizer

    base = standin(HUB_FAMILIES[_model(recipe)])
    raw = yaml.safe_load(recipe.read_text())
    overrides = [f"model.name_or_path={base}", "run.device=cpu"] + _stage_overrides(raw, minilm_path)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", "ftib.core.cli", "run", "--run-dir", str(run_dir), "--no-progress",
                          str(recipe), *overrides], env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    base_tok = AutoTokenizer.from_pretrained(base)
    for sid, rec in manifest["stages"].items():
        final = run_dir / "stages" / sid / "final"
        # The base's own formats, byte for byte, in every checkpoint.
        for name in ("chat_template.json", "chat_template.jinja", "preprocessor_config.json",
                     "video_preprocessor_config.json", "generation_config.json"):
            if (base / name).is_file():
                assert filecmp.cmp(base / name, final / name, shallow=False), f"{sid}: {name}"
        tok = AutoTokenizer.from_pretrained(final)  # a tokenizer class plain transformers loads
        assert tok.chat_template == base_tok.chat_template, sid
        msgs = [{"role": "user", "content": "བཀྲ་ཤིས།"}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False)
        assert text == base_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True,
                                                    enable_thinking=False), sid
        if rec.get("metrics", {}).get("added_tokens"):
            assert len(tok) > len(base_tok)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for sid, st in ((s.get("id", s["name"]), s) for s in raw["stages"]):
        if st["name"] == "grpo":  # every rollout step says how many completions held a think block
            steps = [r for r in rows if r.get("stage") == sid and "reward_mean" in r]
            assert steps and all("think_block_share" in r for r in steps)
    for path in (run_dir / "evals").rglob("*.records.jsonl") if (run_dir / "evals").is_dir() else ():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        if rows and "parsed" in rows[0] and isinstance(rows[0].get("prediction"), str):
            assert all("think_strip" in r for r in rows), path
