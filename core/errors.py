"""Errors raised by the microkernel. Each names the thing that is wrong and, where a
near miss exists, the closest valid alternative."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FtibError(Exception):
    """Base class of every error ftib raises on purpose (bad input, not a bug)."""


class ConfigError(FtibError):
    """A recipe or override is malformed: unknown key, wrong type, missing file."""


class PluginError(FtibError):
    """A plugin cannot be found, is provided twice, or does not honour its contract."""


class RunDirError(FtibError):
    """A run directory belongs to another configuration or is damaged."""


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """Return the candidate most similar to ``name`` (or None when nothing is close)."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if matches:
        return matches[0]
    # Prefix/substring hints catch abbreviations that difflib scores low ("tok" -> "tokenizer").
    for cand in sorted(candidates):
        if cand.startswith(name) or name in cand:
            return cand
    return None


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A sentence fragment to append to an error message."""
    candidates = sorted(set(candidates))
    best = closest(name, candidates)
    if best is not None:
        return f"did you mean {best!r}? (valid: {', '.join(candidates)})"
    if candidates:
        return f"valid: {', '.join(candidates)}"
    return "nothing is registered there"
