"""A misspelt key at any nesting level of every shipped recipe is named, with the key it
was probably meant to be; optional nested sections (``X | None`` unions) included."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ftib.core.config import ConfigError, build
from ftib.core.recipe import build_recipe, read_yaml
from ftib.core.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))
# Mappings whose keys are data, not field names (any key is valid there).
# (sft.task_weights: task names, checked against the data when the stage runs;
# evaluators' target: metric names, checked against the metrics when the report is written)
FREE_FORM = {"preset_overrides", "metadata", "task_weights", "target"}


def _key_paths(node: Any, path: tuple = ()) -> list[tuple]:
    """Every (path to a mapping, key) in a recipe, below ``stages``/``evaluators``/
    ``run``/``model``, skipping free-form mappings."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in FREE_FORM:
                continue
            out.append((path, k))
            out += _key_paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _key_paths(v, path + (i,))
    return out


def _typo(key: str) -> str:
    return key + "z" if not key.endswith("z") else key + "q"


def _get(node: Any, path: tuple) -> Any:
    for p in path:
        node = node[p]
    return node


CASES = []
for recipe in RECIPES:
    raw = read_yaml(recipe)
    for path, key in _key_paths(raw):
        if not path or path[-1] == "name" or key in ("name", "id"):
            continue  # top-level sections and plugin names have their own errors
        CASES.append(pytest.param(recipe, path, key, id=f"{recipe.stem}:{'.'.join(map(str, path + (key,)))}"))


@pytest.mark.parametrize("recipe,path,key", CASES)
def test_misspelt_key_is_named(recipe: Path, path: tuple, key: str):
    raw = copy.deepcopy(read_yaml(recipe))
    parent = _get(raw, path)
    parent[_typo(key)] = parent.pop(key)
    with pytest.raises(ConfigError) as err:
        build_recipe(raw, Registry(), source=recipe)
    msg = str(err.value)
    assert _typo(key) in msg, msg
    assert key in msg.replace(_typo(key), ""), f"no suggestion of {key!r} in: {msg}"


def test_cases_cover_nested_levels():
    depths = {len(p.values[1]) for p in CASES}
    assert len(CASES) > 50 and max(depths) >= 4, (len(CASES), depths)


@dataclass(frozen=True, kw_only=True)
class Inner:
    add: int = 0


@dataclass(frozen=True, kw_only=True)
class Outer:
    extend: Inner | None = None


def test_union_reports_the_nested_error():
    """``extend: {add_tokenz: 5}`` (an ``ExtendSpec | None`` field) names the key."""
    with pytest.raises(ConfigError, match=r"extend\.add_tokenz.*add"):
        build(Outer, {"extend": {"add_tokenz": 5}}, where="cpt")
    with pytest.raises(ConfigError, match=r"expected"):
        build(Outer, {"extend": 3}, where="cpt")
