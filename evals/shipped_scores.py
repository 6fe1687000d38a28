"""Scores of a shipped preset on a small subset of FTibBench-mini (the default test's check).

``python -m ftib.evals.shipped_scores WORLD OUT`` scores ``ftibworld-base`` on
:data:`SUBSET` of the Chinese FTibBench-mini of the FTibWorld build ``WORLD`` (the tiny
world, seed 0: none of its benchmark images occurs in the base model's pretraining data)
and writes ``OUT`` (``tests/assets/ftibworld_base_zh_subset.json``) with the command.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: The Chinese subset the default test scores the shipped model on: evaluator -> limit,
#: on the tiny FTibWorld (seed 0), whose benchmark images are none of the pretraining's.
SUBSET = {"pope": 24, "mmbench": 12, "binary_vqa": 40}
SUBSET_METRICS = {"pope": ("random/accuracy", "popular/accuracy", "adversarial/accuracy"),
                  "mmbench": ("circular", "vanilla"), "binary_vqa": ("accuracy",)}


def subset_scores(world: Path | str, name: str = "ftibworld-base", lang: str = "zh") -> dict[str, Any]:
    """Scores of shipped preset ``name`` on the :data:`SUBSET` of FTibBench-mini in ``lang``
    from the FTibWorld build ``world``, with the item counts behind each."""
    from ftib.core.registry import EVALUATORS, Registry
    from ftib.evals.generate import TransformersGenerator
    from ftib.models.bundle import load_bundle

    registry = Registry()
    classes = {bench: registry.load(EVALUATORS, bench) for bench in SUBSET}
    gen = TransformersGenerator(load_bundle(name))
    out: dict[str, Any] = {}
    for bench, limit in SUBSET.items():
        cls = classes[bench]
        ev = cls(cls.Config(data=str(world), lang=lang, limit=limit))
        res = ev.run(gen)
        out[bench] = {"items": res.details["items"], **{k: res.metrics[k] for k in SUBSET_METRICS[bench]}}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftib.evals.shipped_scores", description=__doc__.splitlines()[0])
    p.add_argument("world", help="a FTibWorld build (ftib data build --size tiny --seed 0)")
    p.add_argument("out")
    p.add_argument("--name", default="ftibworld-base")
    p.add_argument("--lang", default="zh")
    a = p.parse_args(argv)
    payload = {"command": f"python -m ftib.evals.shipped_scores <tiny FTibWorld, seed 0> {a.out}",
               "world": "ftib data build --size tiny --seed 0", "lang": a.lang, "subset": SUBSET,
               "scores": subset_scores(a.world, a.name, a.lang)}
    Path(a.out).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(payload["scores"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
