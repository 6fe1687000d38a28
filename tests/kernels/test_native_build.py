"""The native module and the packaging: _C loads, ctest passes, a wheel is complete."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ftib.kernels import native

ROOT = Path(__file__).resolve().parents[2]


def test_build_info():
    info = native.build_info()
    assert info["cplusplus"] >= 201703 and info["compiler"] and info["hardware_threads"] >= 1


def test_utf8_codepoints_roundtrip_and_errors():
    text = "a\u0f40\u0f72\u0f0b中😀"
    assert native.utf8_codepoints(text.encode()) == [ord(c) for c in text]
    with pytest.raises(ValueError, match="invalid UTF-8 at byte offset 2"):
        native.utf8_codepoints(b"ab\xc0\xaf")
    with pytest.raises(TypeError, match="expects bytes"):
        native.utf8_codepoints("text")  # type: ignore[arg-type]


def _cmake_available() -> bool:
    return shutil.which("cmake") is not None and shutil.which("c++") is not None


@pytest.mark.skipif(not _cmake_available(), reason="needs cmake and a C++ compiler")
def test_ctest_passes(tmp_path):
    import pybind11

    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Debug",
                    f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", f"-DPython_EXECUTABLE={sys.executable}"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build), "--target", "ftib_cpp_tests", "-j", "2"],
                   check=True, capture_output=True)
    out = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(not _cmake_available(), reason="needs cmake and a C++ compiler")
def test_wheel_is_a_complete_namespace_package(tmp_path):
    """A non-editable wheel holds every subpackage, the native module and the recipes,
    and no top-level ftib/__init__.py; installed alone it imports and finds its recipe."""
    # Build from a copy: an in-tree build would leave an egg-info in the checkout, which
    # then shadows the installed metadata (entry points) whenever cwd is the checkout.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "runs", ".pytest_cache", "__pycache__", "*.so", ".benchmarks"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), "-q"], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("ftib-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "ftib/__init__.py" not in names
    for sub in ("core", "kernels", "stages", "evals", "data", "models", "bench"):
        assert f"ftib/{sub}/__init__.py" in names, sub
    assert "ftib/configs/tiny.yaml" in names
    assert any(n.startswith("ftib/kernels/_C") and n.endswith(".so") for n in names)
    assert not any(n.startswith(("tests/", "ftib/tests/")) for n in names)
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    assert "ftib = ftib.core.cli:main" in zipfile.ZipFile(wheel).read(ep).decode()

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    code = ("import ftib.core, ftib.kernels.native as n, ftib.core.cli as c; "
            "print(ftib.core.__file__); print(n.build_info()['compiler']); print(c.packaged_recipe())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(target)}, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(target)) and lines[2].startswith(str(target))
