from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

# Source of a third-party ftib plugin, written to a temporary folder next to a .dist-info
# whose entry_points.txt registers it, exactly as `pip install` of a plugin would.
TOY_PLUGIN = '''
"""A third-party ftib plugin used by the tests (installed as a drop-in)."""
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ftib.core import EvalResult, Evaluator, Reward, Stage, StageResult
from ftib.core.rundir import atomic_dir


class CounterStage(Stage):
    """Counts to ``steps``, writing one step checkpoint per step; the final checkpoint
    records the model it started from. ``TOY_FAIL_AT=<step>`` makes it crash there."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        steps: int = 3
        tag: str = "counter"

    def run(self, ctx):
        start = 0
        if ctx.resume_from is not None:
            start = json.loads((ctx.resume_from / "state.json").read_text())["step"] + 1
        with open(ctx.work_dir / "calls.log", "a") as fh:
            fh.write(json.dumps({"resume_from": str(ctx.resume_from) if ctx.resume_from else None,
                                 "start": start, "model_source": ctx.model_source}) + "\\n")
        fail_at = os.environ.get("TOY_FAIL_AT")
        for step in range(start, self.config.steps):
            if fail_at is not None and int(fail_at) == step:
                raise RuntimeError(f"injected failure at step {step}")
            with atomic_dir(ctx.work_dir / "steps" / f"step-{step:06d}") as d:
                (d / "state.json").write_text(json.dumps({"step": step}))
            ctx.metrics.log(step, {"loss": 1.0 / (step + 1)})
        final = ctx.work_dir / "final"
        with atomic_dir(final) as d:
            (d / "model.json").write_text(json.dumps({"from": ctx.model_source, "tag": self.config.tag}))
        return StageResult(checkpoint=final, metrics={"steps": float(self.config.steps)})


class EchoEvaluator(Evaluator):
    """Reports which model it saw, with one record per item."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        items: int = 2

    def evaluate(self, ctx):
        src = Path(ctx.model_source)
        tag = json.loads((src / "model.json").read_text())["tag"] if src.is_dir() else "base"
        records = [{"id": i, "prediction": tag, "parsed": tag, "gold": "counter",
                    "correct": tag == "counter"} for i in range(self.config.items)]
        acc = sum(r["correct"] for r in records) / len(records)
        return EvalResult(metrics={"accuracy": acc}, records=records)


class LengthReward(Reward):
    @dataclass(frozen=True, kw_only=True)
    class Config:
        scale: float = 1.0

    def __call__(self, prompts, completions, references, metadata):
        return torch.tensor([self.config.scale * len(c) for c in completions], dtype=torch.float32)


class NotAStage:
    """Registered in the stage group by mistake."""


class MutableConfigStage(Stage):
    @dataclass(kw_only=True)
    class Config:
        x: int = 1

    def run(self, ctx):
        return StageResult()
'''

TOY_ENTRY_POINTS = {
    "ftib.stages": {"counter": "ftib_toy:CounterStage"},
    "ftib.evaluators": {"echo": "ftib_toy:EchoEvaluator"},
    "ftib.rewards": {"toy-length": "ftib_toy:LengthReward"},
}


def write_dist(root: Path, dist: str, entry_points: Mapping[str, Mapping[str, str]],
               modules: Mapping[str, str] | None = None, version: str = "0.1") -> Path:
    """Create ``root/<dist>-<version>.dist-info`` (+ module files) like ``pip install`` would."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in eps.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    for name, source in (modules or {}).items():
        (root / f"{name}.py").write_text(source)
    return root


@pytest.fixture
def install_dist(tmp_path, monkeypatch) -> Callable[..., Path]:
    """Install fake distributions into temporary sys.path entries for one test."""
    added: list[str] = []

    def install(dist: str, entry_points, modules=None, version: str = "0.1") -> Path:
        root = write_dist(tmp_path / f"site-{dist}-{len(added)}", dist, entry_points, modules, version)
        sys.path.insert(0, str(root))
        added.append(str(root))
        importlib.invalidate_caches()
        return root

    yield install
    for p in added:
        if p in sys.path:
            sys.path.remove(p)
    for mod in [m for m in sys.modules if m.startswith("ftib_toy")]:
        del sys.modules[mod]
    importlib.invalidate_caches()


@pytest.fixture
def toy_plugins(install_dist) -> Path:
    """The toy third-party plugin distribution, installed."""
    return install_dist("ftib-toy", TOY_ENTRY_POINTS, {"ftib_toy": TOY_PLUGIN})


@pytest.fixture
def toy_site(tmp_path) -> Path:
    """The toy plugin written to a folder (not on sys.path): for subprocess tests."""
    return write_dist(tmp_path / "toy-site", "ftib-toy", TOY_ENTRY_POINTS, {"ftib_toy": TOY_PLUGIN})
