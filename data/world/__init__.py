"""FTibWorld: a deterministic, generated Tibetan world (images, text, FTibBench-mini).

``build_world(out, size=..., seed=...)`` writes every stage's data and the five
benchmarks in their original file formats; ``ftib data build`` is its command line.
"""

from ftib.data.world.build import (DEFAULT_IMAGE_SIZE, DEFAULT_SIZE, SIZES, WorldSize, build_world,
                                   ensure_world)

__all__ = ["DEFAULT_IMAGE_SIZE", "DEFAULT_SIZE", "SIZES", "WorldSize", "build_world", "ensure_world"]
