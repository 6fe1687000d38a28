"""Typed access to the private native module ``ftib.kernels._C``.

Import errors are reported with how to build the module, never hidden.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any


def load() -> ModuleType:
    """Return ``ftib.kernels._C`` or raise ImportError explaining how to build it."""
    try:
        from ftib.kernels import _C  # type: ignore[attr-defined]
    except ImportError as exc:
        raise ImportError(
            "ftib's native module ftib.kernels._C is not built or does not load "
            f"({exc}); reinstall with `pip install -e .` (needs a C++17 compiler and CMake)"
        ) from exc
    return _C


def build_info() -> dict[str, Any]:
    """Compiler, build type, sanitizers and hardware threads of the native build."""
    return dict(load().build_info())


def utf8_codepoints(data: bytes) -> list[int]:
    """Strictly decode UTF-8; ValueError names the byte offset of the first bad byte."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"utf8_codepoints expects bytes, got {type(data).__name__}")
    return list(load().utf8_codepoints(bytes(data)))
