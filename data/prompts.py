"""Prompt builders shared by the training data (SFT) and the evaluators.

A benchmark question is shown to the model exactly as the SFT data showed it, so these
functions are the one place where a question becomes a prompt. The instructions are in
Tibetan (see :mod:`ftib.data.world.lexicon`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftib.data.world import lexicon as lx
from ftib.data.world.grammar import end

OPTION_LETTERS = ("A", "B", "C", "D")


def instruction(key: str, lang: str = "bo") -> str:
    """The answering instruction ``key`` in ``lang`` (Tibetan closed with shad)."""
    if lang not in lx.INSTRUCTIONS:
        from ftib.core.errors import did_you_mean

        raise ValueError(f"unknown prompt language {lang!r}; {did_you_mean(lang, lx.INSTRUCTIONS)}")
    text = lx.INSTRUCTIONS[lang][key]
    return end(text) if lang == "bo" else text


def yes_no_prompt(question: str, lang: str = "bo") -> str:
    """A polar question followed by "please give a short answer"."""
    return f"{question.strip()} {instruction('answer_short', lang)}"


def multiple_choice_prompt(question: str, options: Mapping[str, str], hint: str = "", lang: str = "bo") -> str:
    """MMBench-style prompt: optional hint, question, lettered options, instruction.

    Args:
        question: the question text.
        options: letter -> option text, in letter order; empty options are skipped
            (MMBench rows may have only two or three options).
        hint: context shown before the question (MMBench's ``hint`` column).
        lang: language of the closing instruction.
    """
    lines = [hint.strip()] if hint and hint.strip() else []
    lines.append(question.strip())
    for letter in OPTION_LETTERS:
        text = options.get(letter)
        if text is not None and str(text).strip():
            lines.append(f"{letter}. {str(text).strip()}")
    lines.append(instruction("answer_letter", lang))
    return "\n".join(lines)


def statement_prompt(statement: str, lang: str = "bo") -> str:
    """"Is the statement below true or false?" followed by the statement."""
    return f"{instruction('true_or_false', lang)}\n{statement.strip()}"


def describe_prompt(lang: str = "bo") -> str:
    """"Describe this picture."."""
    return instruction("describe", lang)


def translation_prompt(source: str) -> str:
    """"Translate the Tibetan below into Chinese." followed by the source."""
    return f"{end(lx.TRANSLATE_TO_ZH)}\n{source.strip()}"


def headline_prompt(report: str) -> str:
    """"Write a headline for this report." followed by the report."""
    return f"{end(lx.WRITE_HEADLINE)}\n{report.strip()}"


# The GRPO text tasks (and the SFT warm-up on them): the FTibWorld part (see
# ftib.data.loaders.WORLD_FILES) holding their records in a data folder or build.
TASK_PARTS = {"translation": "translation", "headline": "headlines"}
# (prompt builder field, reference field, target script of the answer)
TASK_FIELDS = {"translation": ("source", "reference", "han"), "headline": ("report", "headline", "tibetan")}


def read_prompts(data: str, tasks: tuple[str, ...], max_prompts: int | None = None,
                 skip: int = 0) -> list[dict[str, Any]]:
    """Prompt records of ``tasks`` from ``data``: ``id, prompt, reference, task,
    target_scripts`` and ``source`` (the file, for messages).

    ``skip`` leaves out the first ``skip`` records of each task's file (those a cold-start
    SFT with ``max_records: skip`` trained on), then ``max_prompts`` caps what is left; a
    ``skip`` that leaves nothing is an error naming the file and its length."""
    from ftib.core.errors import FtibError
    from ftib.data.loaders import load_headlines, load_translation, world_file
    from ftib.data.sources import is_world_spec, resolve

    loaders = {"translation": (load_translation, translation_prompt), "headline": (load_headlines, headline_prompt)}
    out = []
    for task in tasks:
        rel = world_file(TASK_PARTS[task])
        path = resolve(data, rel) if is_world_spec(data) else Path(data) / Path(rel).name
        load, make_prompt = loaders[task]
        rows = load(path)
        src_key, ref_key, target = TASK_FIELDS[task]
        if skip and skip >= len(rows):
            raise FtibError(f"{path}: skipping the first {skip} records leaves none of its {len(rows)}")
        n = len(rows) - skip if max_prompts is None else min(max_prompts, len(rows) - skip)
        for r in rows.select(range(skip, skip + n)):
            prompt = r.get("prompt") or make_prompt(r[src_key])
            out.append({"id": r["id"], "prompt": prompt, "reference": r[ref_key], "task": task,
                        "target_scripts": [target], "source": str(path)})
    if not out:
        raise FtibError(f"no prompts found in {data} for tasks {tasks}")
    return out
