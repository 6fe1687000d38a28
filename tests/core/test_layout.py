"""The flat source layout (``core/`` is ``ftib.core``, ``kernels/`` is ``ftib.kernels``...)
must not shadow installed packages when the repository root is on ``sys.path``, as it
is for every ``python -m ...`` run from a checkout (the README's commands, CI's pytest)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: the repository's top-level package folders (setup.py maps each to ``ftib.<name>``)
TOP = ("core", "kernels", "stages", "evals", "data", "models", "bench", "configs")
#: names an installed distribution also provides, and how the folder hands it over
HANDED_OVER = {"kernels"}  # kernels/__init__.py gives the name to Hugging Face's ``kernels``


def test_no_installed_distribution_shares_a_top_level_folder_name():
    """A new dependency that ships a top-level module named like one of our folders
    would be shadowed by it from a checkout: name it here, so it is handled on purpose."""
    owners = importlib.metadata.packages_distributions()
    clash = {name: owners[name] for name in TOP if name in owners and name not in HANDED_OVER}
    assert not clash, (f"installed distributions provide top-level modules named like ftib's folders: {clash}; "
                       "from the repository root those folders shadow them (see kernels/__init__.py)")


def test_kernels_from_the_repository_root_is_hugging_faces_package():
    """``import kernels`` with the repository root first on ``sys.path`` gets the
    installed distribution (transformers >= 5.25 imports it), not ``ftib.kernels``."""
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the Hugging Face `kernels` distribution is not installed")
    code = ("import kernels, ftib.kernels, transformers.integrations.hub_kernels\n"
            "assert kernels.__file__ != ftib.kernels.__file__, kernels.__file__\n"
            "assert hasattr(kernels, 'get_kernel'), dir(kernels)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_kernels_without_the_distribution_is_a_missing_module(tmp_path):
    """Where no ``kernels`` distribution is on the path, the folder does not pose as one."""
    code = ("import sys\n"
            f"sys.path[:] = [{str(ROOT)!r}] + [p for p in sys.path if 'site-packages' not in p]\n"
            "try:\n    import kernels\nexcept ModuleNotFoundError as e:\n    print('missing', e.name)\n"
            "else:\n    print('imported', kernels.__file__)\n")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "missing kernels", out.stdout
