"""Scenes of FTibWorld: sampling (with category co-occurrence) and drawing with Pillow.

A scene is a square canvas divided into a ``grid x grid`` layout; each object sits in
its own cell, so position words are exact: column 0 is "left", the last column "right",
row 0 "top", the last row "bottom", and the middle cell of a 3x3 grid "centre".
Drawing is supersampled (4x) and downsampled with a fixed filter, so the same scene
always gives the same pixels.
"""

from __future__ import annotations

import io
import math
import random
from collections import Counter
from dataclasses import dataclass

from PIL import Image, ImageDraw

from ftib.data.world import lexicon as lx

BACKGROUND = (246, 244, 238)
SUPERSAMPLE = 4
CATEGORY_KEYS = tuple(o.key for o in lx.OBJECTS)
COLOUR_KEYS = tuple(c.key for c in lx.COLOURS)


@dataclass(frozen=True)
class Obj:
    category: str
    colour: str
    size: str  # "big" | "small"
    row: int
    col: int
    dx: float  # jitter inside the cell, fraction of the cell size
    dy: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    grid: int
    theme: str

    def positions(self, o: Obj) -> tuple[str, ...]:
        """Every position word that holds for ``o`` (a corner object has two)."""
        out = []
        last = self.grid - 1
        if o.col == 0:
            out.append("left")
        if o.col == last:
            out.append("right")
        if o.row == 0:
            out.append("top")
        if o.row == last:
            out.append("bottom")
        if self.grid % 2 == 1 and o.row == o.col == self.grid // 2:
            out.append("centre")
        return tuple(out)

    def counts(self) -> Counter:
        return Counter(o.category for o in self.objects)

    def colour_counts(self) -> Counter:
        return Counter(o.colour for o in self.objects)

    def categories(self) -> set[str]:
        return {o.category for o in self.objects}

    def unique_by_category(self) -> list[Obj]:
        """Objects that are the only one of their category (referable by category)."""
        c = self.counts()
        return [o for o in self.objects if c[o.category] == 1]

    def unique_by_category_colour(self) -> list[Obj]:
        c = Counter((o.category, o.colour) for o in self.objects)
        return [o for o in self.objects if c[(o.category, o.colour)] == 1]

    def signature(self) -> tuple:
        return (self.grid,) + tuple(sorted((o.category, o.colour, o.size, o.row, o.col) for o in self.objects))


def sample_scene(rng: random.Random, n_min: int = 1, n_max: int = 6, grid: int = 3) -> Scene:
    """A random scene with ``n_min..n_max`` objects following the theme statistics."""
    names = list(lx.THEMES)
    theme = rng.choices(names, weights=[lx.THEMES[t][1] for t in names])[0]
    members = lx.THEMES[theme][0]
    n = rng.randint(n_min, min(n_max, grid * grid))
    cells = rng.sample([(r, c) for r in range(grid) for c in range(grid)], n)
    objects = []
    for r, c in cells:
        cat = rng.choice(members) if rng.random() < lx.THEME_PURITY else rng.choice(CATEGORY_KEYS)
        objects.append(Obj(cat, rng.choice(COLOUR_KEYS), rng.choice(("big", "small")), r, c,
                           round(rng.uniform(-0.08, 0.08), 3), round(rng.uniform(-0.08, 0.08), 3)))
    objects.sort(key=lambda o: (o.row, o.col))
    return Scene(tuple(objects), grid, theme)


def category_statistics() -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Expected category frequency and pairwise co-occurrence weight under the themes.

    Used for POPE negatives: "popular" picks frequent absent categories, "adversarial"
    those that co-occur most with the categories present.
    """
    k = len(CATEGORY_KEYS)
    freq = {c: 0.0 for c in CATEGORY_KEYS}
    co: dict[tuple[str, str], float] = {}
    for members, w in lx.THEMES.values():
        p = {c: (1 - lx.THEME_PURITY) / k + (lx.THEME_PURITY / len(members) if c in members else 0.0)
             for c in CATEGORY_KEYS}
        for a in CATEGORY_KEYS:
            freq[a] += w * p[a]
            for b in CATEGORY_KEYS:
                if a != b:
                    co[(a, b)] = co.get((a, b), 0.0) + w * p[a] * p[b]
    return freq, co


# ------------------------------------------------------------------------------ drawing


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_object(d: ImageDraw.ImageDraw, cat: str, cx: float, cy: float, r: float, rgb) -> None:
    bg = BACKGROUND
    if cat == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
    elif cat == "square":
        s = r * 0.88
        d.rectangle((cx - s, cy - s, cx + s, cy + s), fill=rgb)
    elif cat == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=rgb)
    elif cat == "star":
        d.polygon(_star(cx, cy, r), fill=rgb)
    elif cat == "tree":
        d.polygon([(cx, cy - r), (cx + r * 0.75, cy + r * 0.35), (cx - r * 0.75, cy + r * 0.35)], fill=rgb)
        d.rectangle((cx - r * 0.15, cy + r * 0.35, cx + r * 0.15, cy + r), fill=rgb)
    elif cat == "house":
        d.rectangle((cx - r * 0.7, cy - r * 0.1, cx + r * 0.7, cy + r * 0.9), fill=rgb)
        d.polygon([(cx, cy - r), (cx + r * 0.95, cy - r * 0.1), (cx - r * 0.95, cy - r * 0.1)], fill=rgb)
        d.rectangle((cx - r * 0.18, cy + r * 0.35, cx + r * 0.18, cy + r * 0.9), fill=bg)
    elif cat == "flower":
        p = r * 0.38
        for ox, oy in ((0, -1), (1, 0), (0, 1), (-1, 0)):
            x, y = cx + ox * p, cy - r * 0.25 + oy * p
            d.ellipse((x - p, y - p, x + p, y + p), fill=rgb)
        d.ellipse((cx - p * 0.6, cy - r * 0.25 - p * 0.6, cx + p * 0.6, cy - r * 0.25 + p * 0.6), fill=bg)
        d.rectangle((cx - r * 0.08, cy + r * 0.35, cx + r * 0.08, cy + r), fill=rgb)
    elif cat == "fish":
        d.ellipse((cx - r * 0.75, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45), fill=rgb)
        d.polygon([(cx + r * 0.3, cy), (cx + r, cy - r * 0.5), (cx + r, cy + r * 0.5)], fill=rgb)
        e = r * 0.1
        d.ellipse((cx - r * 0.45 - e, cy - r * 0.12 - e, cx - r * 0.45 + e, cy - r * 0.12 + e), fill=bg)
    elif cat == "mountain":
        d.polygon([(cx - r, cy + r * 0.8), (cx - r * 0.3, cy - r * 0.9), (cx + r * 0.2, cy + r * 0.8)], fill=rgb)
        d.polygon([(cx - r * 0.3, cy + r * 0.8), (cx + r * 0.4, cy - r * 0.4), (cx + r, cy + r * 0.8)], fill=rgb)
    elif cat == "moon":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
        o = r * 0.45
        d.ellipse((cx - r + o, cy - r - o * 0.4, cx + r + o, cy + r - o * 0.4), fill=bg)
    else:  # pragma: no cover - categories come from the lexicon
        raise ValueError(f"no drawing for category {cat!r}")


def render(scene: Scene, size: int) -> Image.Image:
    """Draw ``scene`` as a ``size x size`` RGB image."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUND)
    d = ImageDraw.Draw(img)
    cell = big / scene.grid
    for o in scene.objects:
        cx = (o.col + 0.5 + o.dx) * cell
        cy = (o.row + 0.5 + o.dy) * cell
        r = cell * (0.40 if o.size == "big" else 0.26)
        _draw_object(d, o.category, cx, cy, r, lx.COLOUR_RGB[o.colour])
    return img.resize((size, size), Image.Resampling.LANCZOS)


def png_bytes(img: Image.Image) -> bytes:
    """PNG encoding without metadata chunks (byte-identical for identical pixels)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
