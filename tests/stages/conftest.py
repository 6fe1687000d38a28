"""The stage tests cache presets and FTibWorld builds per session (tests/conftest.py)."""

import pytest


@pytest.fixture(scope="session", autouse=True)
def _session_cache(ftib_cache):
    return ftib_cache
