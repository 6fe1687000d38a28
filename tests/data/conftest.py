"""Fixtures for the FTibWorld tests: one tiny world built per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftib.data.world import build_world


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> tuple[Path, dict]:
    """(directory, manifest) of a tiny FTibWorld built with seed 0."""
    out = tmp_path_factory.mktemp("world") / "ftibworld"
    manifest = build_world(out, size="tiny", seed=0)
    return out, manifest
