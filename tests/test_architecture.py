"""The layering rule of DESIGN.md as a test over every module of the package.

Dependencies run one way: ``core`` <- ``kernels`` <- ``models``/``data`` <-
``stages``/``evals``; ``bench`` may use everything. Every ``import`` statement counts,
module-level or inside a function (a lazy import is still a dependency). Besides the
layers, a plugin module (one named by an entry point in ``setup.py``) is never imported
by another module of the package: plugins are found through the registry.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What each top-level subpackage may import from ftib (besides itself).
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "kernels": {"core"},
    "models": {"core", "kernels"},
    "data": {"core", "kernels"},
    "stages": {"core", "kernels", "models", "data"},
    "evals": {"core", "kernels", "models", "data"},
    "bench": {"core", "kernels", "models", "data", "stages", "evals"},
    "configs": set(),
}


def _modules() -> list[tuple[str, Path]]:
    out = []
    for top in ALLOWED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.append(("ftib." + ".".join(parts), path))
    return out


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """Every ftib module that ``path`` imports, with the line of the import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from ftib.stages import grpo`` imports the submodule
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names
                      if f"{target}.{a.name}" in KNOWN]
    return [(line, name) for line, name in found if name.startswith("ftib.")]


def _plugin_modules() -> set[str]:
    """Modules named by the role groups (stages, evaluators, rewards) of setup.py.
    Command and hook modules are ordinary modules that happen to be registered."""
    text = (ROOT / "setup.py").read_text(encoding="utf-8")
    out: set[str] = set()
    for group in ("ftib.stages", "ftib.evaluators", "ftib.rewards"):
        block = re.search(rf'"{re.escape(group)}": \[(.*?)\]', text, re.S)
        assert block, f"setup.py has no entry-point group {group}"
        out |= set(re.findall(r"=\s*(ftib\.[\w.]+):\w+", block.group(1)))
    return out


MODULES = _modules()
KNOWN = {name for name, _ in MODULES}


def test_every_module_is_seen():
    assert "ftib.core.interfaces" in KNOWN and "ftib.stages.grpo" in KNOWN
    assert len(MODULES) > 50
    assert {"ftib.stages.grpo", "ftib.evals.pope", "ftib.stages.rewards"} <= _plugin_modules()


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_layering(module: str, path: Path):
    layer = module.split(".")[1]
    plugins = _plugin_modules()
    bad = []
    for line, target in _imports(module, path):
        parts = target.split(".")
        if len(parts) < 2:
            continue
        other = parts[1]
        if other not in ALLOWED:  # e.g. ``ftib.__version__`` style names
            continue
        if other != layer and other not in ALLOWED[layer]:
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({layer} may not import {other})")
        elif other == layer and target in plugins and target != module and layer != "bench":
            bad.append(f"{path.relative_to(ROOT)}:{line} imports the plugin module {target} "
                       "(plugins are reached through the registry)")
    assert not bad, "layering violated:\n" + "\n".join(bad)


def test_the_checker_catches_a_violation(tmp_path: Path):
    """The rule is not vacuous: a core module importing a plugin is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from ftib.evals.report import x\n", encoding="utf-8")
    assert _imports("ftib.core.bad", bad) == [(2, "ftib.evals.report")]
