"""Prompt builders shared by the training data (SFT) and the evaluators.

A benchmark question is shown to the model exactly as the SFT data showed it, so these
functions are the one place where a question becomes a prompt. The instructions are in
Tibetan (see :mod:`ftib.data.world.lexicon`).
"""

from __future__ import annotations

from collections.abc import Mapping

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
