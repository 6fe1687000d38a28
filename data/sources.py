"""Where a stage's or evaluator's data comes from: a local path, or FTibWorld.

A data spec in a recipe is either a path, or ``ftibworld[:SIZE[:SEED]][/PATH]`` naming the
embedded default (``ftibworld`` = size ``small``, seed 0); ``/PATH`` names a file inside
the build instead of the stage's standard part (``ftibworld:base/pretrain/instructions.jsonl``:
the multilingual base model's Chinese/English instructions). A FTibWorld build is made on
first use into the cache (``$FTIB_CACHE_DIR/world/<size>-seed<seed>``, default
``~/.cache/ftib``), atomically, and reused afterwards; the part a stage needs is a path
inside it (e.g. ``sft/instructions.jsonl``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from ftib.core.errors import ConfigError

log = logging.getLogger("ftib.data")

WORLD_PREFIX = "ftibworld"


def is_world_spec(spec: str) -> bool:
    return spec == WORLD_PREFIX or spec.startswith((WORLD_PREFIX + ":", WORLD_PREFIX + "/"))


def split_world_spec(spec: str) -> tuple[str, str | None]:
    """``"ftibworld:base/pretrain/corpus.jsonl"`` -> ("ftibworld:base", "pretrain/corpus.jsonl")."""
    head, sep, path = spec.partition("/")
    if sep and (not path or path.startswith("/") or ".." in Path(path).parts):
        raise ConfigError(f"data spec {spec!r}: the path after the world must be relative, inside the build")
    return head, (path if sep else None)


def parse_world_spec(spec: str) -> tuple[str, int]:
    """``"ftibworld:tiny:3"`` -> ("tiny", 3) (a ``/PATH`` suffix is ignored)."""
    from ftib.data.world.build import DEFAULT_SIZE, SIZES

    spec = split_world_spec(spec)[0]
    parts = spec.split(":")
    size = parts[1] if len(parts) > 1 and parts[1] else DEFAULT_SIZE
    if size not in SIZES:
        from ftib.core.errors import did_you_mean

        raise ConfigError(f"data spec {spec!r}: unknown FTibWorld size {size!r}; {did_you_mean(size, SIZES)}")
    try:
        seed = int(parts[2]) if len(parts) > 2 else 0
    except ValueError:
        raise ConfigError(f"data spec {spec!r}: the seed must be an integer") from None
    if len(parts) > 3:
        raise ConfigError(f"data spec {spec!r}: expected ftibworld[:SIZE[:SEED]][/PATH]")
    return size, seed


def check_spec(spec: str, what: str = "data") -> None:
    """Validate a spec before any work: a world spec parses, a path exists."""
    if is_world_spec(spec):
        parse_world_spec(spec)
    elif not Path(spec).expanduser().exists():
        raise ConfigError(f"{what}: {spec!r} does not exist (a path, or ftibworld[:SIZE[:SEED]])")


def world_root(spec: str) -> Path:
    """The directory of the FTibWorld build named by ``spec``, built on first use (and
    rebuilt when the cached one came from other arguments or another generator version)."""
    from ftib.data.world.build import ensure_world

    size, seed = parse_world_spec(spec)
    from ftib.core.rundir import cache_dir

    root = cache_dir() / "world" / f"{size}-seed{seed}"
    ensure_world(root, size=size, seed=seed)
    return root


def resolve(spec: str, part: str) -> Path:
    """The file or folder for ``spec``: ``world_root(spec) / part`` for a world spec
    (``world_root(spec) / PATH`` when the spec names one), else the path itself."""
    if is_world_spec(spec):
        inside = split_world_spec(spec)[1]
        part = inside or part
        path = world_root(spec) / part
        if not path.exists():
            raise ConfigError(f"FTibWorld build {world_root(spec)} has no {part}")
        return path
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"{spec!r} does not exist")
    return path


def world_encoder_pairs(world: str) -> list[tuple[str, str]]:
    """The (Tibetan, Chinese) text pairs of a FTibWorld build that the world's reward
    encoder is trained on: translation pairs and Tibetan/Chinese headline pairs (the
    ``world_encoder_pairs`` hook; :func:`ftib.models.reward_encoder.ftibworld_encoder`)."""
    import json

    from ftib.data.loaders import world_file

    pairs = []
    for part, a, b in (("translation", "source", "reference"), ("headlines", "headline", "headline_zh")):
        for line in resolve(world, world_file(part)).read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if rec.get(a) and rec.get(b):
                pairs.append((rec[a], rec[b]))
    return pairs
