"""Write FTibWorld to a directory: every stage's data and FTibBench-mini.

``build_world(out, size="small", seed=0)`` is deterministic: the same arguments give
byte-identical files (PNG without metadata, JSON with fixed key order, no timestamps).
Each part draws from its own random stream derived from ``(seed, part name)``;
benchmarks and text test sets use streams of their own ("held-out seeds") and reject any
scene or sentence that also occurs in the training parts.

See ``docs/data.md`` for the schema of every file.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import io
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftib.core.errors import FtibError
from ftib.core.rundir import atomic_dir, build_once, sha256_path
from ftib.data import prompts
from ftib.data.world import grammar as g
from ftib.data.world import lexicon as lx
from ftib.data.world.scene import Scene, category_statistics, png_bytes, render, sample_scene
from ftib.kernels.tibetan import contains_tibetan

log = logging.getLogger("ftib.data.world")

GENERATOR_VERSION = 5
MANIFEST = "world.json"
CARD = "DATASET_CARD.md"
W = lx.BY_KEY
ROTATION_STRIDE = 1_000_000  # MMBench CircularEval: copy k of row i has index i + k*stride


@dataclass(frozen=True, kw_only=True)
class WorldSize:
    """How many records each part gets."""

    cpt_docs: int
    captions: int
    sft: int
    translation: int
    headlines: int
    general_train: int
    general_heldout: int
    mmbench: int  # questions before rotation (4 rows each)
    mme_images: int  # per subtask (2 questions each)
    pope_images: int  # shared by the three splits
    binaryvqa: int
    corevqa: int
    translation_test: int
    headline_test: int
    #: Pretraining data of the multilingual base model (``pretrain/``, Chinese and
    #: English only): scenes with captions and questions, and text documents. Zero in
    #: the sizes the adaptation recipes use; only the ``base`` size writes them.
    pretrain_scenes: int = 0
    pretrain_questions_per_scene: int = 6
    pretrain_text: int = 0
    #: questions per chat of ``pretrain/dialogues.jsonl`` and ``sft/dialogues.jsonl``
    #: (one chat per scene and task)
    pretrain_dialogue_turns: int = 8


SIZES: dict[str, WorldSize] = {
    "tiny": WorldSize(cpt_docs=120, captions=120, sft=240, translation=160, headlines=80,
                      general_train=80, general_heldout=40, mmbench=24, mme_images=8, pope_images=12,
                      binaryvqa=40, corevqa=40, translation_test=40, headline_test=20),
    "small": WorldSize(cpt_docs=1200, captions=1200, sft=2400, translation=1000, headlines=400,
                       general_train=400, general_heldout=150, mmbench=100, mme_images=30, pope_images=50,
                       binaryvqa=150, corevqa=150, translation_test=100, headline_test=50),
    "medium": WorldSize(cpt_docs=5000, captions=5000, sft=10000, translation=4000, headlines=1600,
                        general_train=1600, general_heldout=400, mmbench=300, mme_images=80,
                        pope_images=150, binaryvqa=500, corevqa=500, translation_test=300,
                        headline_test=150),
}
# The base model's world: the "small" world (so FTibBench-mini is the same files, byte
# for byte) plus the Chinese/English pretraining part.
SIZES["base"] = dataclasses.replace(SIZES["small"], pretrain_scenes=6000, pretrain_text=6000)
DEFAULT_SIZE = "small"
DEFAULT_IMAGE_SIZE = 64

MME_SUBTASKS = ("existence", "count", "position", "color", "numerical_calculation")
POPE_SPLITS = ("random", "popular", "adversarial")


def derive_seed(seed: int, name: str) -> int:
    """An independent 64-bit seed for part ``name`` of the world built with ``seed``."""
    return int.from_bytes(hashlib.sha256(f"ftibworld:{seed}:{name}".encode()).digest()[:8], "big")


def _rng(seed: int, name: str) -> random.Random:
    return random.Random(derive_seed(seed, name))


def _jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


# ------------------------------------------------------------------------ scene → text


def caption(scene: Scene, rng: random.Random) -> g.Sentence:
    """A faithful description: one sentence per (category, colour) group, up to two
    position sentences and the total."""
    groups: dict[tuple[str, str], int] = {}
    for o in scene.objects:
        groups[(o.category, o.colour)] = groups.get((o.category, o.colour), 0) + 1
    sents = [g.exists(g.NP(W[c], W[col], count=n), rng) for (c, col), n in groups.items()]
    uniq = scene.unique_by_category_colour()
    for o in rng.sample(uniq, min(2, len(uniq))):
        held = scene.positions(o)
        if held:  # inner cells of a 4x4 grid have no position word
            sents.append(g.located(g.NP(W[o.category], W[o.colour], definite=True), W[rng.choice(held)]))
    if 1 < len(scene.objects) <= len(lx.NUMBERS):  # crowded 4x4 scenes may exceed the numbers
        sents.append(g.total(len(scene.objects), rng))
    return g.Sentence(g.paragraph([s.bo for s in sents]), "".join(s.zh for s in sents),
                      " ".join(s.en for s in sents))


def _other(rng: random.Random, pool: Iterable[str], exclude: Iterable[str]) -> str:
    ex = set(exclude)
    choices = [p for p in pool if p not in ex]
    return rng.choice(choices)


def polar_question(scene: Scene, rng: random.Random, kind: str, truth: bool) -> g.QA | None:
    """A yes/no question of ``kind`` about ``scene`` whose answer is ``truth``; None when
    the scene cannot support it (e.g. no uniquely referable object)."""
    cats = scene.categories()
    all_cats = [o.key for o in lx.OBJECTS]
    if kind == "existence":
        if truth:
            return g.ask_exists(W[rng.choice(sorted(cats))], True, rng)
        if len(cats) == len(all_cats):
            return None
        return g.ask_exists(W[_other(rng, all_cats, cats)], False, rng)
    if kind == "count":
        cat = rng.choice(sorted(cats))
        n = scene.counts()[cat]
        if not truth:
            n = _other(rng, range(1, 7), [n])
        return g.ask_count_is(W[cat], n, truth, rng)
    if kind == "color":
        uniq = scene.unique_by_category()
        if not uniq:
            return None
        o = rng.choice(uniq)
        colour = o.colour if truth else _other(rng, [c.key for c in lx.COLOURS], [o.colour])
        return g.ask_colour_is(g.NP(W[o.category]), W[colour], truth)
    if kind == "position":
        uniq = [o for o in scene.unique_by_category_colour() if scene.positions(o)]
        if not uniq:
            return None
        o = rng.choice(uniq)
        held = scene.positions(o)
        pos = rng.choice(held) if truth else _other(rng, [p.key for p in lx.POSITIONS], held)
        return g.ask_position_is(g.NP(W[o.category], W[o.colour]), W[pos], truth)
    if kind == "numerical_calculation":
        if len(cats) < 2:
            return None
        a, b = rng.sample(sorted(cats), 2)
        n = scene.counts()[a] + scene.counts()[b]
        if n > len(lx.NUMBERS):  # a crowded scene: the sum has no number word
            return None
        if not truth:
            n = _other(rng, range(2, 11), [n])
        return g.ask_sum_is(W[a], W[b], n, truth)
    raise ValueError(f"unknown question kind {kind!r}")


def statement(scene: Scene, rng: random.Random, truth: bool) -> g.Sentence | None:
    """A declarative statement about ``scene`` that is true or false (COREVQA style)."""
    kind = rng.choice(("count", "exists", "located"))
    cats = scene.categories()
    if kind == "count":
        cat = rng.choice(sorted(cats))
        n = scene.counts()[cat]
        if not truth:
            n = _other(rng, range(1, 11), [n])
        return g.exists(g.NP(W[cat], count=n), rng)
    if kind == "exists":
        if truth:
            o = rng.choice(scene.objects)
            n = sum(1 for x in scene.objects if (x.category, x.colour) == (o.category, o.colour))
            return g.exists(g.NP(W[o.category], W[o.colour], count=n), rng)
        present = {(o.category, o.colour) for o in scene.objects}
        absent = [(c.key, col.key) for c in lx.OBJECTS for col in lx.COLOURS if (c.key, col.key) not in present]
        c, col = rng.choice(absent)
        return g.exists(g.NP(W[c], W[col], count=rng.randint(1, 3)), rng)
    uniq = [o for o in scene.unique_by_category_colour() if scene.positions(o)]
    if not uniq:
        return None
    o = rng.choice(uniq)
    held = scene.positions(o)
    pos = rng.choice(held) if truth else _other(rng, [p.key for p in lx.POSITIONS], held)
    return g.located(g.NP(W[o.category], W[o.colour], definite=True), W[pos])


@dataclass(frozen=True)
class MultipleChoice:
    """An MMBench-style question about a scene, in every language of the world.

    Attributes:
        question: the question (``.bo``, ``.zh``, ``.en``).
        options: the four options in display order, as lexicon words.
        gold: index of the right option in ``options``.
        category, l2: MMBench's ``category`` and ``l2-category``.
    """

    question: g.Sentence
    options: tuple[lx.Word, ...]
    gold: int
    category: str
    l2: str

    def option_texts(self, lang: str) -> list[str]:
        return [getattr(o, lang) for o in self.options]


def multiple_choice(scene: Scene, rng: random.Random) -> MultipleChoice | None:
    """A four-option question about ``scene`` or None when the scene cannot support it."""
    kind = rng.choice(("colour", "count", "position", "existence"))
    if kind == "colour":
        uniq = scene.unique_by_category()
        if not uniq:
            return None
        o = rng.choice(uniq)
        qa = g.ask_colour(g.NP(W[o.category]), W[o.colour])
        wrong = rng.sample([c.key for c in lx.COLOURS if c.key != o.colour], 3)
        opts = [W[k] for k in [o.colour] + wrong]
        cat, l2 = "attribute_recognition", "finegrained_perception (instance-level)"
    elif kind == "count":
        cat_key = rng.choice(sorted(scene.categories()))
        n = scene.counts()[cat_key]
        qa = g.ask_count(W[cat_key], n, rng)
        wrong = rng.sample([k for k in range(1, 7) if k != n], 3)
        opts = [g.number(k) for k in [n] + wrong]
        cat, l2 = "object_counting", "finegrained_perception (instance-level)"
    elif kind == "position":
        uniq = [o for o in scene.unique_by_category_colour() if scene.positions(o)]
        if not uniq:
            return None
        o = rng.choice(uniq)
        held = scene.positions(o)
        pos = rng.choice(held)
        qa = g.ask_position(g.NP(W[o.category], W[o.colour]), W[pos])
        others = [p.key for p in lx.POSITIONS if p.key not in held]
        if len(others) < 3:
            return None
        opts = [W[k] for k in [pos] + rng.sample(others, 3)]
        cat, l2 = "object_localization", "finegrained_perception (instance-level)"
    else:
        cats = scene.categories()
        absent = [o.key for o in lx.OBJECTS if o.key not in cats]
        if len(absent) < 3:
            return None
        present = rng.choice(sorted(cats))
        q = g.ask_which_object(rng)
        qa = g.QA(q, g.Sentence(W[present].bo, W[present].zh, W[present].en), present)
        opts = [W[k] for k in [present] + rng.sample(absent, 3)]
        cat, l2 = "object_existence", "coarse_perception"
    order = list(range(4))
    rng.shuffle(order)
    shuffled = [opts[i] for i in order]
    return MultipleChoice(qa.question, tuple(shuffled), order.index(0), cat, l2)


# ------------------------------------------------------------------------------ builder


class _Writer:
    """Collects files in memory-light fashion under a root and records their rows."""

    def __init__(self, root: Path, image_size: int) -> None:
        self.root = root
        self.image_size = image_size
        self.rows: dict[str, int] = {}

    def image(self, rel: str, scene: Scene) -> bytes:
        data = png_bytes(render(scene, self.image_size))
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return data

    def image_bytes(self, rel: str, data: bytes) -> None:
        """Write an already encoded image (a copy shared by two benchmark languages)."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def jsonl(self, rel: str, rows: list[dict[str, Any]]) -> None:
        self.bytes(rel, _jsonl(rows), len(rows))

    def bytes(self, rel: str, data: bytes, rows: int) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.rows[rel] = rows


def _scenes(rng: random.Random, n: int, *, exclude: set | None = None, n_min: int = 1, n_max: int = 6,
            grid: int = 3, accept: Callable[[Scene], bool] | None = None) -> list[Scene]:
    out = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 200 * n + 1000:
            raise FtibError("FTibWorld could not sample enough distinct held-out scenes; use a larger grid")
        s = sample_scene(rng, n_min, n_max, grid)
        if exclude is not None and s.signature() in exclude:
            continue
        if accept is not None and not accept(s):
            continue
        out.append(s)
    return out


def _cpt_doc(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(("description", "narrative", "arithmetic", "counting"))
    if kind == "description":
        s = caption(sample_scene(rng), rng)
        return kind, s.bo
    if kind == "narrative":
        sents = [_event(rng).bo for _ in range(rng.randint(2, 4))]
        if rng.random() < 0.5:
            sents.append(g.also_there(rng.choice(lx.PLACES), g.NP(rng.choice(lx.OBJECTS), count=rng.randint(1, 5))).bo)
        return kind, g.paragraph(sents)
    if kind == "arithmetic":
        sents = []
        for _ in range(rng.randint(3, 5)):
            obj = rng.choice(lx.OBJECTS)
            a = rng.randint(1, 9)
            if rng.random() < 0.5:
                sents.append(g.addition(obj, a, rng.randint(1, 10 - a)).bo)
            else:
                a = rng.randint(2, 10)
                sents.append(g.subtraction(obj, a, rng.randint(1, a - 1)).bo)
        return kind, g.paragraph(sents)
    sents = []
    for _ in range(rng.randint(2, 4)):
        sents.append(g.exists(g.NP(rng.choice(lx.OBJECTS), rng.choice(lx.COLOURS), count=rng.randint(1, 10)), rng).bo)
    return kind, g.paragraph(sents)


def _event(rng: random.Random, *, with_time: bool = True, with_place: bool = True) -> g.Sentence:
    verb, objs = rng.choice(lx.VERBS)
    obj = W[rng.choice(objs)]
    np = g.NP(obj, rng.choice(lx.COLOURS) if rng.random() < 0.7 else None, count=rng.randint(1, 5))
    return g.event(rng.choice(lx.TIMES) if with_time else None, rng.choice(lx.PEOPLE),
                   rng.choice(lx.PLACES) if with_place else None, verb, np)


def _translation_source(rng: random.Random) -> tuple[str, g.Sentence]:
    kind = rng.choice(("exists", "located", "event", "addition", "subtraction", "total", "question"))
    obj = rng.choice(lx.OBJECTS)
    if kind == "exists":
        return kind, g.exists(g.NP(obj, rng.choice(lx.COLOURS), count=rng.randint(1, 6)), rng)
    if kind == "located":
        return kind, g.located(g.NP(obj, rng.choice(lx.COLOURS), definite=True), rng.choice(lx.POSITIONS))
    if kind == "event":
        return kind, _event(rng, with_time=rng.random() < 0.6, with_place=rng.random() < 0.6)
    if kind == "addition":
        a = rng.randint(1, 9)
        return kind, g.addition(obj, a, rng.randint(1, 10 - a))
    if kind == "subtraction":
        a = rng.randint(2, 10)
        return kind, g.subtraction(obj, a, rng.randint(1, a - 1))
    if kind == "total":
        return kind, g.total(rng.randint(2, 10), rng)
    return kind, g.ask_count(obj, 1, rng).question


def _headline(rng: random.Random) -> dict[str, Any]:
    person = rng.choice(lx.PEOPLE)
    verb, objs = rng.choice(lx.VERBS)
    np = g.NP(W[rng.choice(objs)], rng.choice(lx.COLOURS) if rng.random() < 0.7 else None, count=rng.randint(1, 5))
    place = rng.choice(lx.PLACES)
    main = g.event(rng.choice(lx.TIMES), person, place, verb, np)
    extra = [g.also_there(place, g.NP(rng.choice(lx.OBJECTS), rng.choice(lx.COLOURS), count=rng.randint(1, 5)))
             for _ in range(rng.randint(1, 3))]
    at = rng.randint(0, len(extra))
    report = extra[:at] + [main] + extra[at:]
    head = g.event(None, person, None, verb, np)
    return {
        "report": g.paragraph([s.bo for s in report]),
        "headline": head.bo,
        "headline_zh": head.zh,
        "headline_en": head.en,
        "report_zh": "".join(s.zh for s in report),
    }


def _general_item(rng: random.Random) -> dict[str, Any]:
    lang = rng.choice(("zh", "en"))
    kind = rng.choice(("arithmetic", "comparison", "successor", "sentence"))
    if kind == "arithmetic":
        a, b = rng.randint(1, 50), rng.randint(1, 50)
        prompt = f"{a}加{b}等于几？" if lang == "zh" else f"What is {a} plus {b}?"
        answer = str(a + b)
    elif kind == "comparison":
        a, b = rng.sample(range(1, 100), 2)
        prompt = f"{a}和{b}哪个大？" if lang == "zh" else f"Which is larger, {a} or {b}?"
        answer = str(max(a, b))
    elif kind == "successor":
        a = rng.randint(1, 98)
        prompt = f"{a}后面的数是几？" if lang == "zh" else f"What number comes after {a}?"
        answer = str(a + 1)
    else:
        s = caption(sample_scene(rng), rng) if rng.random() < 0.5 else _event(rng)
        text = s.zh if lang == "zh" else s.en
        return {"lang": lang, "kind": kind, "prompt": "", "answer": "", "text": text}
    sep = "" if lang == "zh" else " "
    return {"lang": lang, "kind": kind, "prompt": prompt, "answer": answer, "text": f"{prompt}{sep}{answer}"}


def _unique(rng: random.Random, n: int, make: Callable[[random.Random], dict[str, Any]], key: str,
            exclude: set[str] | None = None) -> list[dict[str, Any]]:
    seen = set(exclude or ())
    out: list[dict[str, Any]] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise FtibError(f"FTibWorld ran out of distinct {key!r} values after {len(out)} of {n}; "
                            "use a smaller size")
        rec = make(rng)
        if rec[key] in seen:
            continue
        seen.add(rec[key])
        out.append(rec)
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def build_world(out: Path | str, *, size: str = DEFAULT_SIZE, seed: int = 0,
                image_size: int = DEFAULT_IMAGE_SIZE, overwrite: bool = True) -> dict[str, Any]:
    """Generate FTibWorld into ``out`` (atomically) and return its manifest.

    Args:
        out: output directory; replaced as a whole when it already holds a FTibWorld
            build (``world.json``), refused when it holds anything else.
        size: ``"tiny"``, ``"small"`` or ``"medium"`` (see :data:`SIZES`).
        seed: the world seed; every part derives its own stream from it.
        image_size: side of the square images in pixels (>= 32).
        overwrite: when False an existing build is an error.
    """
    if size not in SIZES:
        from ftib.core.errors import did_you_mean

        raise FtibError(f"unknown FTibWorld size {size!r}; {did_you_mean(size, SIZES)}")
    if image_size < 32:
        raise FtibError(f"image_size must be at least 32 pixels, got {image_size}")
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise FtibError(f"{out} exists and is not a directory")
        if any(out.iterdir()):
            if not (out / MANIFEST).is_file():
                raise FtibError(f"{out} is not empty and holds no FTibWorld build ({MANIFEST}); "
                                "refusing to replace it - choose another --out")
            if not overwrite:
                raise FtibError(f"{out} already holds a FTibWorld build")
    t0 = time.perf_counter()
    sz = SIZES[size]
    with atomic_dir(out) as tmp:
        w = _Writer(tmp, image_size)
        train_scenes: set = set()
        bench_scenes: set = set()
        _build_cpt(w, sz, seed)
        _build_align(w, sz, seed, train_scenes)
        _build_sft(w, sz, seed, train_scenes)
        train_src = _build_grpo(w, sz, seed)
        _build_general(w, sz, seed)
        _build_text_tests(w, sz, seed, train_src)
        _build_mmbench(w, sz, seed, train_scenes, bench_scenes)
        _build_mme(w, sz, seed, train_scenes, bench_scenes)
        _build_pope(w, sz, seed, train_scenes, bench_scenes)
        _build_binaryvqa(w, sz, seed, train_scenes, bench_scenes)
        _build_corevqa(w, sz, seed, train_scenes, bench_scenes)
        # Last, so that the benchmarks are those of a build without it; it excludes
        # every benchmark scene.
        if sz.pretrain_scenes or sz.pretrain_text:
            _build_pretrain(w, sz, seed, bench_scenes)
        manifest = _manifest(w, size, seed, image_size)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / CARD).write_text(render_card(manifest), encoding="utf-8")
    log.info("FTibWorld (%s, seed %d) written to %s in %.1fs", size, seed, out, time.perf_counter() - t0)
    return manifest


# ----------------------------------------------------------------------------- parts


def _build_cpt(w: _Writer, sz: WorldSize, seed: int) -> None:
    rng = _rng(seed, "train/cpt")
    rows = []
    for i in range(sz.cpt_docs):
        kind, text = _cpt_doc(rng)
        rows.append({"id": f"cpt-{i:06d}", "kind": kind, "text": text})
    w.jsonl("cpt/corpus.jsonl", rows)


def _build_align(w: _Writer, sz: WorldSize, seed: int, train_scenes: set) -> None:
    rng = _rng(seed, "train/align")
    rows = []
    for i, scene in enumerate(_scenes(rng, sz.captions)):
        train_scenes.add(scene.signature())
        rel = f"images/{i:06d}.png"
        w.image(f"align/{rel}", scene)
        cap = caption(scene, rng)
        rows.append({"id": f"align-{i:06d}", "image": rel, "caption": cap.bo, "caption_zh": cap.zh,
                     "caption_en": cap.en})
    w.jsonl("align/captions.jsonl", rows)


def _text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


_IMAGE_PART = {"type": "image", "text": None}

SFT_TASKS = ("describe", "count", "colour", "position", "yes_no", "multiple_choice", "true_false",
             "translate", "headline")
SFT_WEIGHTS = (0.12, 0.12, 0.12, 0.1, 0.2, 0.12, 0.08, 0.08, 0.06)


def _sft_record(scene: Scene, rng: random.Random, task: str, lang: str = "bo") -> tuple[str, str] | None:
    """(user prompt, assistant answer) for an image task in ``lang``, or None if unsupported.

    The random draws do not depend on ``lang``: the same stream gives the same question in
    every language."""
    if task == "describe":
        return prompts.describe_prompt(lang), getattr(caption(scene, rng), lang)
    if task == "count":
        if rng.random() < 0.3 and 1 < len(scene.objects) <= len(lx.NUMBERS):
            qa = g.ask_total(len(scene.objects), rng)
        else:
            cat = rng.choice(sorted(scene.categories()))
            qa = g.ask_count(W[cat], scene.counts()[cat], rng)
        return getattr(qa.question, lang), getattr(qa.answer, lang)
    if task == "colour":
        uniq = scene.unique_by_category()
        if not uniq:
            return None
        o = rng.choice(uniq)
        qa = g.ask_colour(g.NP(W[o.category]), W[o.colour])
        return getattr(qa.question, lang), getattr(qa.answer, lang)
    if task == "position":
        uniq = [o for o in scene.unique_by_category_colour() if scene.positions(o)]
        if not uniq:
            return None
        o = rng.choice(uniq)
        qa = g.ask_position(g.NP(W[o.category], W[o.colour]), W[rng.choice(scene.positions(o))])
        return getattr(qa.question, lang), getattr(qa.answer, lang)
    if task == "yes_no":
        qa = polar_question(scene, rng, rng.choice(MME_SUBTASKS), rng.random() < 0.5)
        return None if qa is None else (prompts.yes_no_prompt(getattr(qa.question, lang), lang),
                                        getattr(qa.answer, lang))
    if task == "pope":
        # Existence probes with POPE's three kinds of negatives (random, frequent,
        # co-occurring), so that a model trained on them cannot answer from priors.
        cats = sorted(scene.categories())
        if rng.random() < 0.5:
            qa = g.ask_exists(W[rng.choice(cats)], True, rng)
        else:
            absent = len(lx.OBJECTS) - len(cats)
            if absent < 1:
                return None
            split = rng.choice(POPE_SPLITS)
            neg = _pope_negatives(scene, split, min(3, absent), rng)
            qa = g.ask_exists(W[rng.choice(neg)], False, rng)
        return prompts.yes_no_prompt(getattr(qa.question, lang), lang), getattr(qa.answer, lang)
    if task == "multiple_choice":
        mc = multiple_choice(scene, rng)
        if mc is None:
            return None
        question = getattr(mc.question, lang)
        return prompts.multiple_choice_prompt(question, dict(zip(prompts.OPTION_LETTERS, mc.option_texts(lang))),
                                              lang=lang), prompts.OPTION_LETTERS[mc.gold]
    if task == "true_false":
        truth = rng.random() < 0.5
        st = statement(scene, rng, truth)
        return None if st is None else (prompts.statement_prompt(getattr(st, lang), lang),
                                        getattr(g.statement_answer(truth), lang))
    raise ValueError(task)


def _build_sft(w: _Writer, sz: WorldSize, seed: int, train_scenes: set) -> None:
    rng = _rng(seed, "train/sft")
    rows: list[dict[str, Any]] = []
    scenes: list[tuple[str, Scene]] = []
    n_img = 0
    while len(rows) < sz.sft:
        task = rng.choices(SFT_TASKS, weights=SFT_WEIGHTS)[0]
        rid = f"sft-{len(rows):06d}"
        if task == "translate":
            _, src = _translation_source(rng)
            user, answer, images = prompts.translation_prompt(src.bo), src.zh, []
        elif task == "headline":
            h = _headline(rng)
            user, answer, images = prompts.headline_prompt(h["report"]), h["headline"], []
        else:
            scene = sample_scene(rng)
            made = _sft_record(scene, rng, task)
            if made is None:
                continue
            user, answer = made
            rel = f"images/{n_img:06d}.png"
            n_img += 1
            train_scenes.add(scene.signature())
            w.image(f"sft/{rel}", scene)
            scenes.append((rel, scene))
            images = [rel]
        content = ([_IMAGE_PART] if images else []) + [_text(user)]
        rows.append({"id": rid, "task": task, "images": images, "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [_text(answer)]},
        ]})
    w.jsonl("sft/instructions.jsonl", rows)
    # The same pictures as multi-turn Tibetan chats (their own random stream: the
    # instructions above are the same with or without them).
    w.jsonl("sft/dialogues.jsonl", _dialogues(scenes, _rng(seed, "train/sft-dialogues"), sz.pretrain_dialogue_turns,
                                              langs=("bo",), prefix="sfq"))


def _translation_row(rng: random.Random) -> dict[str, Any]:
    kind, s = _translation_source(rng)
    return {"kind": kind, "prompt": prompts.translation_prompt(s.bo), "source": s.bo, "reference": s.zh,
            "reference_en": s.en}


def _headline_row(rng: random.Random) -> dict[str, Any]:
    h = _headline(rng)
    return {"prompt": prompts.headline_prompt(h["report"]), **h}


def _with_ids(prefix: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{i:06d}", **r} for i, r in enumerate(rows)]


def _build_grpo(w: _Writer, sz: WorldSize, seed: int) -> dict[str, set[str]]:
    tr = _unique(_rng(seed, "train/translation"), sz.translation, _translation_row, "source")
    hl = _unique(_rng(seed, "train/headlines"), sz.headlines, _headline_row, "report")
    w.jsonl("grpo/translation.jsonl", _with_ids("tr", tr))
    w.jsonl("grpo/headlines.jsonl", _with_ids("hl", hl))
    return {"source": {r["source"] for r in tr}, "report": {r["report"] for r in hl}}


def _build_general(w: _Writer, sz: WorldSize, seed: int) -> None:
    train = _unique(_rng(seed, "train/general"), sz.general_train, _general_item, "text")
    held = _unique(_rng(seed, "heldout/general"), sz.general_heldout, _general_item, "text",
                   exclude={r["text"] for r in train})
    w.jsonl("general/train.jsonl", _with_ids("gen", train))
    w.jsonl("general/heldout.jsonl", _with_ids("genh", held))


def _build_text_tests(w: _Writer, sz: WorldSize, seed: int, train_src: dict[str, set[str]]) -> None:
    tr = _unique(_rng(seed, "heldout/translation"), sz.translation_test, _translation_row, "source",
                 exclude=train_src["source"])
    hl = _unique(_rng(seed, "heldout/headlines"), sz.headline_test, _headline_row, "report",
                 exclude=train_src["report"])
    w.jsonl("bench/translation/test.jsonl", _with_ids("trt", tr))
    w.jsonl("bench/headline/test.jsonl", _with_ids("hlt", hl))


# --------------------------------------------------------- the base model's pretraining

PRETRAIN_LANGS = ("zh", "en")
PRETRAIN_LANG_WEIGHTS = (0.7, 0.3)  # Chinese is the dominant language the benchmarks measure
PRETRAIN_TASKS = ("pope", "yes_no", "multiple_choice", "true_false", "count", "colour", "position")
PRETRAIN_TASK_WEIGHTS = (0.22, 0.22, 0.16, 0.12, 0.1, 0.09, 0.09)
PRETRAIN_CROWDED = 0.15  # share of COREVQA-like 4x4 scenes with 8-14 objects


def _text_doc(rng: random.Random, lang: str) -> tuple[str, str]:
    """A Chinese or English document of the world (the counterpart of :func:`_cpt_doc`)."""
    sep = "" if lang == "zh" else " "
    kind = rng.choice(("description", "narrative", "arithmetic", "counting", "qa"))
    if kind == "description":
        return kind, getattr(caption(sample_scene(rng), rng), lang)
    if kind == "narrative":
        sents = [_event(rng) for _ in range(rng.randint(2, 4))]
        if rng.random() < 0.5:
            sents.append(g.also_there(rng.choice(lx.PLACES), g.NP(rng.choice(lx.OBJECTS), count=rng.randint(1, 5))))
        return kind, sep.join(getattr(x, lang) for x in sents)
    if kind == "arithmetic":
        sents = []
        for _ in range(rng.randint(3, 5)):
            obj = rng.choice(lx.OBJECTS)
            a = rng.randint(1, 9)
            if rng.random() < 0.5:
                sents.append(g.addition(obj, a, rng.randint(1, 10 - a)))
            else:
                a = rng.randint(2, 10)
                sents.append(g.subtraction(obj, a, rng.randint(1, a - 1)))
        return kind, sep.join(getattr(x, lang) for x in sents)
    if kind == "counting":
        sents = [g.exists(g.NP(rng.choice(lx.OBJECTS), rng.choice(lx.COLOURS), count=rng.randint(1, 10)), rng)
                 for _ in range(rng.randint(2, 4))]
        return kind, sep.join(getattr(x, lang) for x in sents)
    item = _general_item(rng)
    return kind, item["text"] if item["lang"] == lang else _general_item(rng)["text"]


def _pretrain_scene(rng: random.Random, exclude: set) -> Scene:
    if rng.random() < PRETRAIN_CROWDED:
        return _scenes(rng, 1, exclude=exclude, n_min=8, n_max=14, grid=4,
                       accept=lambda s: max(s.counts().values()) <= 10)[0]
    return _scenes(rng, 1, exclude=exclude)[0]


def _build_pretrain(w: _Writer, sz: WorldSize, seed: int, bench_scenes: set) -> None:
    """``pretrain/``: the Chinese/English data of the multilingual base model.

    * ``pretrain/captions.jsonl``: one zh and one en caption chat per scene (SFT schema);
    * ``pretrain/instructions.jsonl``: the captions again and, per scene,
      ``pretrain_questions_per_scene`` questions
      of every FTibBench type (POPE-style existence with random, frequent and co-occurring
      negatives, MME's five yes/no kinds, MMBench multiple choice, COREVQA statements,
      open count/colour/position), asked exactly as the Chinese benchmarks ask them,
      plus text-only general questions (arithmetic, comparison, successor);
    * ``pretrain/corpus.jsonl``: zh/en documents of the world (CPT schema);
    * ``pretrain/cells.jsonl``: per scene, the Chinese object and colour word of every
      occupied cell (the ``ground`` stage's word-tied alignment);
    * ``pretrain/dialogues.jsonl``: per scene and task of :data:`DIALOGUE_TASKS`, one
      multi-turn chat of ``pretrain_dialogue_turns`` questions of that task about the
      scene, in one language (a curriculum stage selects tasks with ``sft.tasks``).

    Scenes never equal a benchmark scene; Tibetan never occurs. ``cells`` and
    ``dialogues`` draw from their own random streams, so the other files are the same
    with or without them.
    """
    rng = _rng(seed, "train/pretrain")
    captions: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    scenes: list[tuple[str, Scene]] = []
    for i in range(sz.pretrain_scenes):
        scene = _pretrain_scene(rng, bench_scenes)
        rel = f"images/{i:06d}.png"
        scenes.append((rel, scene))
        w.image(f"pretrain/{rel}", scene)
        cap = caption(scene, rng)
        for lang in PRETRAIN_LANGS:
            chat = _chat(prompts.describe_prompt(lang), getattr(cap, lang), image=True)
            captions.append({"id": f"ptc-{len(captions):06d}", "task": "describe", "lang": lang, "images": [rel],
                             "messages": chat})
            # also in the instruction mixture: captions keep the vision tower's gradient
            # rich while it trains on short answers
            rows.append({"id": f"pti-{len(rows):06d}", "task": "describe", "lang": lang, "images": [rel],
                         "messages": chat})
        made = 0
        tries = 0
        while made < sz.pretrain_questions_per_scene and tries < 4 * sz.pretrain_questions_per_scene:
            tries += 1
            task = rng.choices(PRETRAIN_TASKS, weights=PRETRAIN_TASK_WEIGHTS)[0]
            lang = rng.choices(PRETRAIN_LANGS, weights=PRETRAIN_LANG_WEIGHTS)[0]
            rec = _sft_record(scene, rng, task, lang)
            if rec is None:
                continue
            rows.append({"id": f"pti-{len(rows):06d}", "task": task, "lang": lang, "images": [rel],
                         "messages": _chat(*rec, image=True)})
            made += 1
    docs = []
    for i in range(sz.pretrain_text):
        lang = rng.choices(PRETRAIN_LANGS, weights=PRETRAIN_LANG_WEIGHTS)[0]
        kind, text = _text_doc(rng, lang)
        docs.append({"id": f"ptd-{i:06d}", "kind": kind, "lang": lang, "text": text})
        item = _general_item(rng)
        if item["prompt"]:
            rows.append({"id": f"pti-{len(rows):06d}", "task": "general", "lang": item["lang"], "images": [],
                         "messages": _chat(item["prompt"], item["answer"], image=False)})
    # Text questions are interleaved with the image ones (a stage reads the file in order
    # only for its held-out check; batches are shuffled).
    w.jsonl("pretrain/captions.jsonl", captions)
    w.jsonl("pretrain/instructions.jsonl", rows)
    w.jsonl("pretrain/corpus.jsonl", docs)
    w.jsonl("pretrain/cells.jsonl", [cell_words(scene, f"ptg-{i:06d}", rel) for i, (rel, scene) in enumerate(scenes)])
    w.jsonl("pretrain/dialogues.jsonl", _dialogues(scenes, _rng(seed, "train/pretrain-dialogues"),
                                                   sz.pretrain_dialogue_turns))


def cell_words(scene: Scene, rid: str, image: str) -> dict[str, Any]:
    """A ``ground`` record of ``scene``: its grid and the Chinese object and colour word
    of every occupied cell (the base's dominant language)."""
    return {"id": rid, "image": image, "grid": [scene.grid, scene.grid],
            "cells": [{"row": o.row, "col": o.col, "words": {"object": W[o.category].zh, "colour": W[o.colour].zh}}
                      for o in scene.objects]}


#: the tasks of ``pretrain/dialogues.jsonl``: ``existence`` (yes/no existence with
#: negatives drawn uniformly from the absent objects, plain 3x3 scenes only: the first
#: step of the curriculum) and every pretraining task
DIALOGUE_TASKS = ("existence", *PRETRAIN_TASKS)


def _existence_record(scene: Scene, rng: random.Random, lang: str) -> tuple[str, str] | None:
    """An existence question with a uniformly drawn absent object as its negative: the
    first step of the curriculum. With POPE's frequent and co-occurring negatives
    instead (the ``pope`` task) the same small model stayed at chance for 1,000 steps;
    with these it learnt the lookup within 400-650 (issue 17)."""
    qa = polar_question(scene, rng, "existence", rng.random() < 0.5)
    return None if qa is None else (prompts.yes_no_prompt(getattr(qa.question, lang), lang),
                                    getattr(qa.answer, lang))


def _dialogues(scenes: list[tuple[str, Scene]], rng: random.Random, turns: int, *,
               langs: tuple[str, ...] = PRETRAIN_LANGS, prefix: str = "ptq") -> list[dict[str, Any]]:
    """Per scene and task, one chat of up to ``turns`` distinct questions of that task
    (the image in the first turn), in one of ``langs`` (Chinese/English: 70 % / 30 %):
    many answers of one kind about one picture per example, which is what taught a
    small model the question-conditioned lookup (issue 17)."""
    out: list[dict[str, Any]] = []
    weights = PRETRAIN_LANG_WEIGHTS if langs == PRETRAIN_LANGS else None
    for rel, scene in scenes:
        for task in DIALOGUE_TASKS:
            if task == "existence" and scene.grid != 3:
                continue  # the curriculum's first step: plain 3x3 scenes only
            lang = rng.choices(langs, weights=weights)[0]
            msgs: list[dict[str, Any]] = []
            asked: set[str] = set()
            for _ in range(3 * turns):
                if len(asked) == turns:
                    break
                rec = _existence_record(scene, rng, lang) if task == "existence" else _sft_record(scene, rng, task, lang)
                if rec is None or rec[0] in asked:
                    continue
                asked.add(rec[0])
                msgs += _chat(*rec, image=not msgs)
            if msgs:
                out.append({"id": f"{prefix}-{len(out):06d}", "task": task, "lang": lang, "images": [rel],
                            "messages": msgs})
    return out


def _chat(user: str, answer: str, *, image: bool) -> list[dict[str, Any]]:
    content = ([_IMAGE_PART] if image else []) + [_text(user)]
    return [{"role": "user", "content": content}, {"role": "assistant", "content": [_text(answer)]}]


def pretrain_text_corpus(seed: int = 0, n: int = 2000) -> list[str]:
    """Chinese and English text of the world (no Tibetan): what the base model's
    tokenizer is trained on. Covers every lexicon entry's zh/en forms, every zh/en
    instruction and the questions of every task."""
    rng = _rng(seed, "tokenizer/pretrain-corpus")
    out: list[str] = []
    for word in lx.BY_KEY.values():
        out += [word.zh, word.en, word.en_plural]
    for lang in PRETRAIN_LANGS:
        out += list(lx.INSTRUCTIONS[lang].values())
    for _ in range(n):
        lang = rng.choice(PRETRAIN_LANGS)
        out.append(_text_doc(rng, lang)[1])
        scene = sample_scene(rng)
        out.append(getattr(caption(scene, rng), lang))
        rec = _sft_record(scene, rng, rng.choice(PRETRAIN_TASKS), lang)
        if rec is not None:
            out += list(rec)
        out.append(_general_item(rng)["text"])
    if any(contains_tibetan(t) for t in out):  # pragma: no cover - a grammar bug would trip it
        raise FtibError("the Chinese/English tokenizer corpus contains Tibetan text")
    return out


MMBENCH_FILE = "bench/mmbench/FTibWorld_MMBench_DEV_BO.tsv"
#: FTibBench-mini in Chinese: the same images and questions as the Tibetan files, asked
#: in Chinese, in the same formats under ``bench/zh/`` (see :data:`BENCH_LANGS`).
ZH_ROOT = "bench/zh"
MMBENCH_FILE_ZH = f"{ZH_ROOT}/mmbench/FTibWorld_MMBench_DEV_ZH.tsv"
#: Language -> folder of that language's copy of the benchmarks.
BENCH_LANGS: dict[str, str] = {"bo": "bench", "zh": ZH_ROOT}
MMBENCH_COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category",
                   "split", "image")


def _tsv(header: tuple[str, ...], rows: list[list[Any]]) -> bytes:
    buf = io.StringIO()
    wr = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    wr.writerow(header)
    wr.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _csv(header: list[str], rows: list[list[Any]]) -> bytes:
    buf = io.StringIO()
    wr = csv.writer(buf, lineterminator="\n")
    wr.writerow(header)
    wr.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _first_sentence_zh(text: str) -> str:
    return text.split("。")[0] + "。" if "。" in text else text


def _build_mmbench(w: _Writer, sz: WorldSize, seed: int, train_scenes: set, bench_scenes: set) -> None:
    rng = _rng(seed, "heldout/mmbench")
    base: list[tuple[int, MultipleChoice, g.Sentence, str]] = []
    while len(base) < sz.mmbench:
        scene = _scenes(rng, 1, exclude=train_scenes)[0]
        mc = multiple_choice(scene, rng)
        if mc is None:
            continue
        hint = g.Sentence("", "", "")
        if mc.category == "object_localization" and rng.random() < 0.3:
            cap = caption(scene, rng)
            hint = g.Sentence(cap.bo.split(" ")[0], _first_sentence_zh(cap.zh), "")
        bench_scenes.add(scene.signature())
        image = _b64(png_bytes(render(scene, w.image_size)))
        base.append((len(base), mc, hint, image))
    for lang, rel in (("bo", MMBENCH_FILE), ("zh", MMBENCH_FILE_ZH)):
        rows: list[list[Any]] = []
        for k in range(4):  # the original (k=0) and its three circular rotations
            for idx, mc, hint, image in base:
                opts = mc.option_texts(lang)
                rot = opts[k:] + opts[:k]
                answer = prompts.OPTION_LETTERS[(mc.gold - k) % 4]
                rows.append([idx + k * ROTATION_STRIDE, getattr(mc.question, lang), getattr(hint, lang), *rot,
                             answer, mc.category, mc.l2, "dev", image])
        w.bytes(rel, _tsv(MMBENCH_COLUMNS, rows), len(rows))


def _build_mme(w: _Writer, sz: WorldSize, seed: int, train_scenes: set, bench_scenes: set) -> None:
    for sub in MME_SUBTASKS:
        rng = _rng(seed, f"heldout/mme/{sub}")
        n = 0
        while n < sz.mme_images:
            scene = _scenes(rng, 1, exclude=train_scenes, n_min=2)[0]
            yes = polar_question(scene, rng, sub, True)
            no = polar_question(scene, rng, sub, False)
            if yes is None or no is None:
                continue
            bench_scenes.add(scene.signature())
            stem = f"{sub}_{n:04d}"
            pair = [(yes, "Yes"), (no, "No")]
            rng.shuffle(pair)
            data = w.image(f"bench/mme/{sub}/images/{stem}.png", scene)
            w.image_bytes(f"{ZH_ROOT}/mme/{sub}/images/{stem}.png", data)
            for lang, root in BENCH_LANGS.items():
                lines = "".join(f"{prompts.yes_no_prompt(getattr(qa.question, lang), lang)}\t{ans}\n"
                                for qa, ans in pair)
                w.bytes(f"{root}/mme/{sub}/questions_answers_YN/{stem}.txt", lines.encode("utf-8"), 2)
            n += 1


def _pope_negatives(scene: Scene, split: str, k: int, rng: random.Random) -> list[str]:
    present = scene.categories()
    absent = [o.key for o in lx.OBJECTS if o.key not in present]
    if split == "random":
        return rng.sample(absent, k)
    freq, co = category_statistics()
    if split == "popular":
        score = {a: freq[a] for a in absent}
    else:  # adversarial: absent categories that co-occur most with those present
        score = {a: sum(co[(p, a)] for p in present) for a in absent}
    return sorted(absent, key=lambda a: (-score[a], a))[:k]


def _build_pope(w: _Writer, sz: WorldSize, seed: int, train_scenes: set, bench_scenes: set) -> None:
    rng = _rng(seed, "heldout/pope")
    scenes = _scenes(rng, sz.pope_images, exclude=train_scenes, n_min=2,
                     accept=lambda s: len(s.categories()) >= 2)
    names = []
    for i, scene in enumerate(scenes):
        bench_scenes.add(scene.signature())
        name = f"ftibworld_pope_{i:06d}.png"
        data = w.image(f"bench/pope/images/{name}", scene)
        w.image_bytes(f"{ZH_ROOT}/pope/images/{name}", data)
        names.append(name)
    for split in POPE_SPLITS:
        srng = _rng(seed, f"heldout/pope/{split}")
        rows: dict[str, list[dict[str, Any]]] = {lang: [] for lang in BENCH_LANGS}
        for scene, name in zip(scenes, names):
            present = sorted(scene.categories())
            k = min(3, len(present), len(lx.OBJECTS) - len(present))
            pos = srng.sample(present, k)
            neg = _pope_negatives(scene, split, k, srng)
            for cat, label in [(c, "yes") for c in pos] + [(c, "no") for c in neg]:
                qa = g.ask_exists(W[cat], label == "yes", srng)
                for lang, out in rows.items():
                    out.append({"question_id": len(out) + 1, "image": name, "text": getattr(qa.question, lang),
                                "label": label})
        # POPE's files are JSON lines despite the .json extension.
        for lang, root in BENCH_LANGS.items():
            w.bytes(f"{root}/pope/ftibworld_pope_{split}.json", _jsonl(rows[lang]), len(rows[lang]))


def _build_binaryvqa(w: _Writer, sz: WorldSize, seed: int, train_scenes: set, bench_scenes: set) -> None:
    rng = _rng(seed, "heldout/binaryvqa")
    rows: dict[str, list[list[Any]]] = {lang: [] for lang in BENCH_LANGS}
    while len(rows["bo"]) < sz.binaryvqa:
        scene = _scenes(rng, 1, exclude=train_scenes)[0]
        truth = rng.random() < 0.65  # unbalanced, like the original
        qa = polar_question(scene, rng, rng.choice(MME_SUBTASKS), truth)
        if qa is None:
            continue
        bench_scenes.add(scene.signature())
        qid = len(rows["bo"])
        name = f"{qid:06d}.png"
        data = w.image(f"bench/binaryvqa/images/{name}", scene)
        w.image_bytes(f"{ZH_ROOT}/binaryvqa/images/{name}", data)
        for lang, out in rows.items():
            out.append([qid, name, getattr(qa.question, lang), "yes" if truth else "no"])
    for lang, root in BENCH_LANGS.items():
        w.bytes(f"{root}/binaryvqa/questions.csv", _csv(["question_id", "image", "question", "answer"], rows[lang]),
                len(rows[lang]))


def _build_corevqa(w: _Writer, sz: WorldSize, seed: int, train_scenes: set, bench_scenes: set) -> None:
    rng = _rng(seed, "heldout/corevqa")
    rows: dict[str, list[list[Any]]] = {lang: [] for lang in BENCH_LANGS}
    while len(rows["bo"]) < sz.corevqa:
        # Crowded scenes: a 4x4 grid with 8-14 objects.
        scene = _scenes(rng, 1, exclude=train_scenes, n_min=8, n_max=14, grid=4,
                        accept=lambda s: max(s.counts().values()) <= 10)[0]
        truth = len(rows["bo"]) % 2 == 0  # balanced
        st = statement(scene, rng, truth)
        if st is None:
            continue
        bench_scenes.add(scene.signature())
        qid = len(rows["bo"])
        name = f"corevqa_{qid:06d}.png"
        data = w.image(f"bench/corevqa/images/{name}", scene)
        w.image_bytes(f"{ZH_ROOT}/corevqa/images/{name}", data)
        for lang, out in rows.items():
            out.append([qid, name, getattr(st, lang), "True" if truth else "False"])
    for lang, root in BENCH_LANGS.items():
        w.bytes(f"{root}/corevqa/COREVQA.csv", _csv(["id", "image", "statement", "answer"], rows[lang]),
                len(rows[lang]))


# ------------------------------------------------------------------------- manifest


def _manifest(w: _Writer, size: str, seed: int, image_size: int) -> dict[str, Any]:
    files = {}
    for rel in sorted(w.rows):
        if "/questions_answers_YN/" in rel:
            continue  # hashed with their folder below
        files[rel] = {"sha256": sha256_path(w.root / rel), "rows": w.rows[rel]}
    dirs = {}
    for d in sorted({p.parent for p in w.root.rglob("*.png")} |
                    {p.parent.parent for p in w.root.rglob("questions_answers_YN/*.txt")}):
        rel = d.relative_to(w.root).as_posix()
        dirs[rel] = {"sha256": sha256_path(d), "files": sum(1 for p in d.rglob("*") if p.is_file())}
    return {
        "name": "FTibWorld",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "image_size": image_size,
        "counts": dataclasses.asdict(SIZES[size]),
        "part_seeds": {name: derive_seed(seed, name) for name in (
            "train/cpt", "train/align", "train/sft", "train/translation", "train/headlines", "train/general",
            "heldout/general", "heldout/translation", "heldout/headlines", "heldout/mmbench",
            *(f"heldout/mme/{s}" for s in MME_SUBTASKS), "heldout/pope", "heldout/binaryvqa",
            "heldout/corevqa")},
        "files": files,
        "dirs": dirs,
    }


def render_card(manifest: dict[str, Any]) -> str:
    """DATASET_CARD.md: what was generated, how, its schema pointers, seeds and hashes."""
    lines = [
        "# FTibWorld dataset card",
        "",
        "A generated Tibetan world (images drawn with Pillow, text from an authored lexicon and",
        "grammar with Chinese and English counterparts) and FTibBench-mini. Nothing here was",
        "downloaded or copied; see `docs/data.md` in the ftib repository for every file's schema.",
        "",
        "## Build",
        "",
        f"- command: `ftib data build --size {manifest['size']} --seed {manifest['seed']}"
        f" --image-size {manifest['image_size']}`",
        f"- generator version: {manifest['generator_version']}",
        f"- seed: {manifest['seed']} (each part derives its own stream; benchmarks and test sets use",
        "  held-out streams and exclude every scene and sentence of the training parts)",
        f"- image size: {manifest['image_size']} x {manifest['image_size']} RGB PNG",
        "",
        "## Files",
        "",
        "| file | rows | sha256 |",
        "|---|---:|---|",
    ]
    for rel, info in manifest["files"].items():
        lines.append(f"| `{rel}` | {info['rows']} | `{info['sha256']}` |")
    lines += ["", "## Image and question folders", "", "| folder | files | sha256 |", "|---|---:|---|"]
    for rel, info in manifest["dirs"].items():
        lines.append(f"| `{rel}/` | {info['files']} | `{info['sha256']}` |")
    lines += [
        "",
        "## Schema (summary)",
        "",
        "- `cpt/corpus.jsonl`: `id, kind, text` - Tibetan documents (description, narrative,",
        "  arithmetic, counting).",
        "- `align/captions.jsonl`: `id, image, caption, caption_zh, caption_en`; `image` is relative",
        "  to `align/`.",
        "- `sft/instructions.jsonl`: `id, task, images, messages`; messages are chat turns whose",
        "  `content` is a list of `{type: image|text, text}` parts; `images` relative to `sft/`.",
        "- `grpo/translation.jsonl`, `bench/translation/test.jsonl`: `id, kind, prompt, source,",
        "  reference, reference_en` (Tibetan -> Chinese).",
        "- `grpo/headlines.jsonl`, `bench/headline/test.jsonl`: `id, prompt, report, headline,",
        "  headline_zh, headline_en, report_zh`.",
        "- `general/{train,heldout}.jsonl`: `id, lang, kind, prompt, answer, text` (Chinese/English).",
        f"- `{MMBENCH_FILE}`: MMBench TSV `{', '.join(MMBENCH_COLUMNS)}`; rows",
        f"  `index + k*{ROTATION_STRIDE}` (k = 1..3) are the circular rotations of row `index`.",
        "- `bench/mme/<subtask>/`: `images/<stem>.png` and `questions_answers_YN/<stem>.txt`, two",
        "  lines `question<TAB>Yes|No` per image (one Yes, one No).",
        "- `bench/pope/ftibworld_pope_{random,popular,adversarial}.json`: JSON lines",
        "  `question_id, image, text, label` (yes/no, balanced), images in `bench/pope/images/`.",
        "- `bench/binaryvqa/questions.csv`: `question_id, image, question, answer` (yes/no, unbalanced).",
        "- `bench/corevqa/COREVQA.csv`: `id, image, statement, answer` (True/False) on crowded scenes.",
        "",
        "## Answers in Tibetan",
        "",
        f"Yes forms: {', '.join(lx.YES_FORMS)}; no forms: {', '.join(lx.NO_FORMS)}. Gold labels in",
        "the benchmark files keep the original benchmarks' English labels.",
        "",
        "## Part seeds",
        "",
    ]
    for name, s in manifest["part_seeds"].items():
        lines.append(f"- `{name}`: {s}")
    return "\n".join(lines) + "\n"


def text_corpus(seed: int = 0, n: int = 2000) -> list[str]:
    """Text of the world in all three languages without writing files or drawing images:
    what a tokenizer for FTibWorld is trained on. Covers every lexicon entry, every
    prompt instruction and the answer forms."""
    rng = _rng(seed, "tokenizer/corpus")
    out: list[str] = []
    for word in lx.BY_KEY.values():
        out += [word.bo, word.zh, word.en, word.en_plural]
    for _ in range(n):
        _, doc = _cpt_doc(rng)
        out.append(doc)
        cap = caption(sample_scene(rng), rng)
        out += [cap.zh, cap.en]
        row = _translation_row(rng)
        out += [row["prompt"], row["reference"], row["reference_en"]]
        if rng.random() < 0.3:
            h = _headline_row(rng)
            out += [h["prompt"], h["headline"], h["report_zh"], h["headline_en"]]
        out.append(_general_item(rng)["text"])
        scene = sample_scene(rng)
        task = rng.choice(SFT_TASKS[:7])
        made = _sft_record(scene, rng, task)
        if made is not None:
            out += list(made)
    return out


def ensure_world(out: Path | str, *, size: str = DEFAULT_SIZE, seed: int = 0,
                 image_size: int = DEFAULT_IMAGE_SIZE) -> dict[str, Any]:
    """Return the manifest of the FTibWorld build in ``out``, building it first when it
    is missing or was built with other arguments or another generator version."""
    path = Path(out) / MANIFEST
    wanted = {"size": size, "seed": seed, "image_size": image_size, "generator_version": GENERATOR_VERSION}

    def current() -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return manifest if all(manifest.get(k) == v for k, v in wanted.items()) else None

    # Under a lock: two processes asking for the same world at once build it once.
    build_once(Path(out), lambda: current() is not None,
               lambda: build_world(out, size=size, seed=seed, image_size=image_size))
    manifest = current()
    if manifest is None:
        raise FtibError(f"FTibWorld build {out} has no valid {MANIFEST} after building it")
    return manifest


def tokenizer_corpus(kind: str, seed: int, docs: int) -> list[str]:
    """Text to train a preset's tokenizer on (the ``world_text_corpus`` hook): ``"zh_en"``
    the Chinese/English pretraining text (:func:`pretrain_text_corpus`), ``"world"`` the
    Tibetan world text (:func:`text_corpus`)."""
    if kind == "zh_en":
        return pretrain_text_corpus(seed, docs)
    if kind == "world":
        return text_corpus(seed, docs)
    raise ValueError(f"unknown tokenizer corpus {kind!r}; expected 'world' or 'zh_en'")
