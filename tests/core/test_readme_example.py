"""The "how to add a stage" example in the README works as written."""

import json
import re
from pathlib import Path

import yaml

from ftib.core.pipeline import Pipeline
from ftib.core.recipe import load_recipe
from ftib.core.registry import STAGES, Registry

README = Path(__file__).resolve().parents[2] / "README.md"


def _block(after_marker: str, lang: str) -> str:
    text = README.read_text(encoding="utf-8")
    pattern = rf"```{lang}\n({re.escape(after_marker)}.*?)```"
    match = re.search(pattern, text, re.S)
    assert match, f"README has no ```{lang} block starting with {after_marker!r}"
    return match.group(1)


def test_readme_stage_example_installs_and_runs(install_dist, tmp_path):
    source = _block("# hello_ftib.py", "python")
    toml = _block("# pyproject.toml of ftib-hello", "toml")
    entry = re.search(r'\[project\.entry-points\."ftib\.stages"\]\n(\w+) = "([\w.:]+)"', toml)
    install_dist("ftib-hello", {STAGES: {entry.group(1): entry.group(2)}}, {"hello_ftib": source})
    assert Registry().spec(STAGES, "hello").dist == "ftib-hello"

    recipe = yaml.safe_load(_block("model: tiny-qwen3-vl\nstages:\n  - name: hello", "yaml"))
    path = tmp_path / "hello.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    manifest = Pipeline(load_recipe(path), tmp_path / "run", progress=False).run()
    assert manifest["stages"]["hello"]["status"] == "completed"
    out = json.loads((tmp_path / "run" / "stages/hello/final/hello.json").read_text(encoding="utf-8"))
    assert out["greeting"] == "ཞོགས་པ་བདེ་ལེགས།" and out["from"] == "tiny-qwen3-vl"
