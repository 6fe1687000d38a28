"""Ship a trained checkpoint as a packaged preset (``models/assets/<name>/``).

``python -m ftib.models.ship runs/ftibworld-base`` takes the last completed stage of the
``ftib run configs/ftibworld-base.yaml`` run directory, copies its ``save_pretrained``
files (weights as safetensors, config, tokenizer with its chat template, image
processor, generation config) into the package, writes the model card (``README.md``:
data, steps, wall time and scores, all read from the run's ``manifest.json``) and
``SHA256SUMS``, which :func:`ftib.models.presets.verify_shipped` checks on every load.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from ftib.core.errors import FtibError
from ftib.core.rundir import atomic_dir
from ftib.models.presets import SHIPPED, write_checksums

#: The files of a ``save_pretrained`` checkpoint that a preset ships (nothing else).
SHIP_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json")
MAX_BYTES = 20 * 1024 * 1024
#: Metrics shown in the model card, per evaluator name.
CARD_METRICS = {
    "pope": ("random/accuracy", "popular/accuracy", "adversarial/accuracy", "f1", "yes_ratio"),
    "mmbench": ("circular", "vanilla"),
    "mme": ("perception", "cognition"),
    "binary_vqa": ("accuracy", "balanced_accuracy"),
    "corevqa": ("accuracy", "balanced_accuracy"),
    "alignment_tax": ("nll_base", "nll_adapted", "kl_mean"),
}
#: Metrics shown as they are (not as percentages).
CARD_RAW = {"perception": "{:.0f}", "cognition": "{:.0f}", "nll_base": "{:.2f}", "nll_adapted": "{:.2f}",
            "kl_mean": "{:.2f}"}


def _seconds(stage: dict[str, Any]) -> float:
    return float(stage.get("seconds") or 0.0)


def _measured_on(manifest: dict[str, Any], cfg: dict[str, Any], stage_id: str) -> str:
    """What the stages up to ``stage_id`` ran on, from their records (older runs did not
    record it)."""
    ids = [st["id"] for st in cfg["stages"]]
    recs = [manifest["stages"].get(i, {}) for i in ids[: ids.index(stage_id) + 1]]
    seen = sorted({(r.get("cpus"), r.get("cpu_threads")) for r in recs}, key=str)
    if any(c is None or t is None for c, t in seen):
        return "CPU; cores and torch threads not recorded by this run"
    return "; ".join(f"{c} CPU cores, {t} torch thread{'s' if t != 1 else ''}" for c, t in seen)


#: The issue's Chinese targets for the base: (evaluator name, metric keys, label, minimum).
TARGETS = (
    ("pope", ("random/accuracy", "popular/accuracy", "adversarial/accuracy"), "POPE zh >= 95 on every split", 0.95),
    ("mmbench", ("circular",), "MMBench zh CircularEval >= 80", 0.80),
    ("binary_vqa", ("accuracy",), "BinaryVQA zh >= 90", 0.90),
)


def _repo_relative(path: str | None) -> str | None:
    """``configs/x.yaml`` for a recipe under a checkout's ``configs/`` (else the path)."""
    if not path:
        return None
    parts = Path(path).parts
    return "/".join(parts[parts.index("configs"):]) if "configs" in parts else path


def target_status(manifest: dict[str, Any], stage_id: str) -> list[tuple[str, str, bool | None]]:
    """``(target, measured, met)`` per target, from the Chinese evaluations run after
    ``stage_id`` (``met`` is ``None`` when none was run there)."""
    evals_cfg = {e["id"]: e for e in manifest["config"].get("evaluators", [])}
    out: list[tuple[str, str, bool | None]] = []
    for ev_name, keys, label, minimum in TARGETS:
        found = None
        for key, rec in manifest.get("evals", {}).items():
            after, _, eid = key.partition("/")
            e = evals_cfg.get(eid, {})
            if (after == stage_id and rec.get("status") == "completed" and e.get("name") == ev_name
                    and e.get("config", {}).get("lang") == "zh"):
                found = (rec.get("metrics", {}), e.get("config", {}).get("limit"))
        if found is None:
            out.append((label, "-", None))
            continue
        m, limit = found
        vals = [m.get(k) for k in keys]
        shown = " / ".join("-" if v is None else f"{100 * v:.1f}" for v in vals)
        met = all(v is not None and v >= minimum for v in vals)
        out.append((label, shown + (f" (limit {limit})" if limit else ""), met))
    return out


def render_card(name: str, manifest: dict[str, Any], stage_id: str, params: int, tokens: dict[str, float],
                notes: str | None = None) -> str:
    """The model card of shipped preset ``name`` from its run's manifest (``notes``: a
    Markdown section appended as it is, for what the manifest cannot say)."""
    cfg = manifest["config"]
    lines = [
        f"# {name}",
        "",
        "A tiny Qwen3-VL-architecture model (`Qwen3VLForConditionalGeneration`) pretrained on",
        "FTibWorld in **Chinese and English only**: the stand-in, in the embedded default, for",
        "a capable VLM that has never learned Tibetan (Qwen3-VL-8B-Instruct in the real recipe).",
        "",
        f"- parameters: {params:,}",
        f"- reproduce: `ftib run {_repo_relative(manifest.get('recipe_file')) or 'configs/' + name + '.yaml'}`, then",
        "  `python -m ftib.models.ship runs/ftibworld-base` (writes this folder)",
        f"- shipped checkpoint: stage `{stage_id}` of that run",
        f"- built with: torch {manifest['versions'].get('torch')}, transformers "
        f"{manifest['versions'].get('transformers')}, on {manifest['platform'].get('system')}",
        f"- starting point: preset `{cfg['model']['name_or_path']}` (random init, seed {manifest['seed']})",
        "",
        "## Tokenizer",
        "",
        "Byte-level BPE trained on Chinese/English FTibWorld text only (no Tibetan merges), with",
        "the Qwen chat special tokens. Tibetan therefore falls back to bytes:",
        "",
        f"- Tibetan: **{tokens['bo_tokens_per_syllable']:.2f} tokens per syllable** on FTibWorld Tibetan text "
        f"({tokens['bo_syllables']:.0f} syllables, seed 1)",
        f"- after extending it by {tokens['extended_added']:.0f} Tibetan tokens (`ftib.models.vocab.extend`, as the "
        f"main job's CPT; learnt on seed-0 text): **{tokens['bo_tokens_per_syllable_extended']:.2f}** tokens per syllable",
        f"- Chinese: {tokens['zh_tokens_per_char']:.2f} tokens per character " + (
            "(no merge crosses two Han characters: `tokenizer_split_han`)" if tokens["zh_tokens_per_char"] >= 0.99
            else "(the world's small Chinese vocabulary lets BPE merge whole phrases)"),
        "",
        "## Data and steps",
        "",
        "`ftibworld:base`: the small FTibWorld plus `pretrain/` (docs/data.md): general zh/en text,",
        "captions, the object and colour words of every scene cell, and chats of every FTibBench",
        "question type asked as the Chinese benchmarks ask them; none of its scenes is a benchmark",
        "scene.",
        "",
        "| stage | plugin | data | steps | batch | peak lr | wall s | loss, first → last 10 % of steps |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    total = 0.0
    ids = [st["id"] for st in cfg["stages"]]
    for st in cfg["stages"][: ids.index(stage_id) + 1]:
        rec = manifest["stages"].get(st["id"], {})
        m = rec.get("metrics", {})
        tr = st["config"].get("train", {})
        secs = _seconds(rec) or 0.0
        total += secs
        data = st["config"].get("data")
        data = ", ".join(data) if isinstance(data, list) else data
        lines.append(f"| {st['id']} | {st['name']} | `{data}` | {int(m.get('steps', 0))} | {tr.get('batch_size')} | "
                     f"{tr.get('lr')} | {secs:.0f} | {m.get('loss_first_10pct', float('nan')):.3f} → "
                     f"{m.get('loss_last_10pct', float('nan')):.3f} |")
    lines += ["", f"Training wall time: **{total / 60:.1f} min** ({_measured_on(manifest, cfg, stage_id)}).", "",
              "## Scores (FTibBench-mini, greedy decoding)", "",
              "| after | evaluator | lang | metrics |", "|---|---|---|---|"]
    evals_cfg = {e["id"]: e for e in cfg.get("evaluators", [])}
    for key, rec in manifest.get("evals", {}).items():
        if rec.get("status") != "completed":
            continue
        after, _, eid = key.partition("/")
        e = evals_cfg.get(eid, {})
        lang = e.get("config", {}).get("lang", "bo")
        limit = e.get("config", {}).get("limit")
        shown = CARD_METRICS.get(rec.get("name", e.get("name", "")), ())
        m = rec.get("metrics", {})
        vals = ", ".join(f"{k}={CARD_RAW[k].format(m[k])}" if k in CARD_RAW else f"{k}={100 * m[k]:.1f}"
                         for k in shown if k in m)
        lines.append(f"| {after} | {e.get('name', eid)}{f' (limit {limit})' if limit else ''} | {lang} | {vals} |")
    lines += ["", "Accuracies in %. Chance: POPE 50, MMBench CircularEval 0.4 (vanilla 25), BinaryVQA ~50,",
              "MME perception 300 of 1000. `alignment_tax`: mean per-token NLL (nats) of the named base",
              "(`nll_base`) and of this model (`nll_adapted`) on held-out general text, and their KL.",
              "", "## Image grounding", "",
              "Answer loss on held-out records with their own images minus with shifted images (nats per",
              "token; 0 = the answers do not depend on the image):", ""]
    for st in cfg["stages"][: ids.index(stage_id) + 1]:
        m = manifest["stages"].get(st["id"], {}).get("metrics", {})
        if "grounding_gap" in m:
            lines.append(f"- `{st['id']}`: gap {m['grounding_gap']:.3f} (before the stage {m.get('grounding_gap_before', 0):.3f}),"
                         f" loss {m['grounding_loss_matched']:.3f} with own images vs {m['grounding_loss_shuffled']:.3f}")
    lines += ["", "## Status against the targets", "",
              "The issue's targets for this model, on the Chinese FTibBench-mini, after the shipped stage:", "",
              "| target | measured | met |", "|---|---|---|"]
    rows = target_status(manifest, stage_id)
    for label, measured, met in rows:
        lines.append(f"| {label} | {measured} | {'yes' if met else ('no' if met is False else 'not measured')} |")
    missed = [label for label, _, met in rows if met is not True]
    lines += ["", "All targets are met." if not missed else
              f"**Not met** (or not measured): {'; '.join(missed)}."]
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    lines.append("")
    return "\n".join(lines)


EXTEND_ADD = 800  # as the main job's CPT (configs/tiny.yaml, extend.add)


def _syllables(text: str) -> int:
    return len([x for x in text.replace("\u0f0d", " ").replace(" ", "\u0f0b").split("\u0f0b") if x])


def tokenizer_figures(folder: Path) -> dict[str, float]:
    """Tokens per Tibetan syllable (base, and after a Tibetan extension by
    :data:`EXTEND_ADD` tokens learnt on FTibWorld Tibetan text of seed 0) and per Chinese
    character, counted on FTibWorld text of seed 1."""
    from tokenizers import Tokenizer

    from ftib.kernels.tibetan import contains_tibetan
    from ftib.models.presets import tokenizer_corpus
    from ftib.models import vocab

    base = Tokenizer.from_file(str(folder / "tokenizer.json"))
    train = [t for t in tokenizer_corpus("world", 0, 400) if contains_tibetan(t)]
    ext = vocab.extend(vocab.load_base(folder), train, EXTEND_ADD)
    extended = Tokenizer.from_str(json.dumps(ext.tokenizer_json))
    texts = tokenizer_corpus("world", 1, 200)
    bo = [t for t in texts if contains_tibetan(t)]
    zh = [t for t in texts if any("\u4e00" <= c <= "\u9fff" for c in t)]
    syll = sum(_syllables(t) for t in bo)

    def count(tok, items):
        return sum(len(tok.encode(t, add_special_tokens=False).ids) for t in items)

    return {"bo_tokens_per_syllable": count(base, bo) / syll,
            "bo_tokens_per_syllable_extended": count(extended, bo) / syll,
            "extended_added": float(ext.added_tokens), "bo_syllables": float(syll),
            "zh_tokens_per_char": count(base, zh) / sum(len(t) for t in zh)}


def ship(run_dir: Path | str, name: str = "ftibworld-base", stage: str | None = None,
         notes: str | None = None) -> Path:
    """Copy the checkpoint of ``stage`` (default: the last completed) of ``run_dir`` into
    shipped preset ``name``'s package folder, with its model card (``notes`` appended)
    and checksums."""
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    if name not in SHIPPED:
        raise FtibError(f"{name!r} is not a shipped preset ({', '.join(SHIPPED)})")
    order = [s["id"] for s in manifest["config"]["stages"]]
    done = [s for s in order if manifest["stages"].get(s, {}).get("status") == "completed"]
    if not done:
        raise FtibError(f"{run_dir}: no completed stage to ship")
    stage = stage or done[-1]
    if stage not in done:
        raise FtibError(f"{run_dir}: stage {stage!r} is not completed (completed: {', '.join(done)})")
    src = run_dir / manifest["stages"][stage]["checkpoint"]
    missing = [f for f in SHIP_FILES if not (src / f).is_file()]
    if missing:
        raise FtibError(f"{src}: checkpoint lacks {missing}")
    size = sum((src / f).stat().st_size for f in SHIP_FILES)
    if size > MAX_BYTES:
        raise FtibError(f"{src}: {size / 2**20:.1f} MiB exceeds the {MAX_BYTES / 2**20:.0f} MiB a shipped preset may take")
    from safetensors import safe_open

    with safe_open(str(src / "model.safetensors"), "pt") as fh:
        params = sum(_numel(fh.get_slice(k).get_shape()) for k in fh.keys())
    dest = SHIPPED[name]
    with atomic_dir(dest) as tmp:
        for f in SHIP_FILES:
            shutil.copy2(src / f, tmp / f)
        card = render_card(name, manifest, stage, params, tokenizer_figures(tmp), notes=notes)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        write_checksums(tmp)
    return dest


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ftib.models.ship", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--name", default="ftibworld-base")
    p.add_argument("--stage", default=None, help="stage id to ship (default: the last completed)")
    p.add_argument("--notes", default=None, help="a Markdown file appended to the model card as its Notes")
    a = p.parse_args(argv)
    if not a.run_dir:
        p.error("give a run directory")
    notes = Path(a.notes).read_text(encoding="utf-8") if a.notes else None
    print(ship(a.run_dir, a.name, a.stage, notes=notes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
