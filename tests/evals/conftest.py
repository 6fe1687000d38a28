"""Shared fixtures of the evaluator tests: a tiny FTibWorld build, scripted generators,
the real-text samples in ``../shared/data`` and the offline sentence encoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


class ScriptedGenerator:
    """A :class:`ftib.evals.generate.Generator` whose reply is ``reply(prompt, image)``;
    it records every request so tests can check what the model was shown."""

    def __init__(self, reply: Callable[[str, Any], str]) -> None:
        self.reply = reply
        self.calls: list[tuple[list[tuple[str, Any]], Any]] = []

    def generate(self, prompts: Sequence[tuple[str, Any]], decoding: Any) -> list[str]:
        self.calls.append((list(prompts), decoding))
        return [self.reply(text, image) for text, image in prompts]


@pytest.fixture(scope="session", autouse=True)
def _session_cache(ftib_cache):
    """Model presets are built into the per-session cache (tests/conftest.py)."""
    return ftib_cache


@pytest.fixture(scope="session")
def scripted() -> type[ScriptedGenerator]:
    return ScriptedGenerator


@pytest.fixture(scope="session")
def world(tiny_world: tuple[Path, dict]) -> Path:
    """The session's tiny FTibWorld build (tests/conftest.py)."""
    return tiny_world[0]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "ntrex128_bo_zh_en.tsv").is_file():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture(scope="session")
def encoder_path(minilm_path: Path) -> Path:
    return minilm_path


@pytest.fixture(scope="session")
def encoder(encoder_path: Path):
    """The offline sentence encoder, loaded once (loading dominates its cost)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ftib.evals.similarity import Encoder

    return Encoder(encoder_path)


@pytest.fixture
def ctx_factory(tmp_path: Path):
    """``make(bundle=..., model_source=...) -> RunContext`` in a fresh run directory."""
    from ftib.core.interfaces import RunContext
    from ftib.core.rundir import MetricsSink

    def make(bundle: Any = None, model_source: str = "scripted") -> RunContext:
        work = tmp_path / "evals" / "base" / "x"
        work.mkdir(parents=True, exist_ok=True)
        return RunContext(run_dir=tmp_path, work_dir=work, seed=0, device="cpu", dtype="float32",
                          model_source=model_source, bundle=bundle,
                          metrics=MetricsSink(tmp_path / "metrics.jsonl"))

    return make
