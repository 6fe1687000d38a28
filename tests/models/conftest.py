"""Fixtures for the model tests: tiny presets built once per session in a temporary cache."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def preset_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ftib-cache")


@pytest.fixture(scope="session")
def vl_bundle(preset_cache):
    from ftib.models import load_bundle

    return load_bundle("tiny-qwen3-vl", cache_dir=preset_cache)


@pytest.fixture(scope="session")
def text_bundle(preset_cache):
    from ftib.models import load_bundle

    return load_bundle("tiny-qwen3", cache_dir=preset_cache)


@pytest.fixture(scope="session")
def scene_image(tmp_path_factory) -> Path:
    """A FTibWorld scene saved as PNG."""
    import random

    from ftib.data.world.scene import render, sample_scene

    path = tmp_path_factory.mktemp("img") / "scene.png"
    render(sample_scene(random.Random(0), 3, 3), 64).save(path)
    return path
