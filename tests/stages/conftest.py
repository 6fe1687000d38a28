
import pytest


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
