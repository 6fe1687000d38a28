"""Bilingual word lists (Tibetan -> translation) and what ftib does with them.

* :func:`read_lexicon` reads one: the world's (``ftibworld``), a two-column ``.tsv`` or a
  ``.jsonl`` of ``source``/``target`` records.
* CPT's ``extend.lexicon`` starts the new Tibetan tokens from their translations'
  embeddings (:mod:`ftib.models.embeddings`).
* SFT's ``code_switch`` (:func:`code_switch`) adds copies of conversations whose user
  turns have the translation words replaced by their Tibetan forms: dictionary-based
  code-switching augmentation (Qin et al., 2020, CoSDA-ML), which teaches the new words
  inside questions the model already answers in its own language.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from ftib.core import FtibError
from ftib.core.rundir import iter_jsonl
from ftib.kernels.tibetan import contains_tibetan


def read_lexicon(spec: str, *, answers: bool = True, what: str = "extend.lexicon") -> list[tuple[str, str]]:
    """``(Tibetan, translation)`` pairs: ``ftibworld`` (the world's Tibetan -> Chinese
    words, :func:`ftib.data.world.lexicon.translation_lexicon`), a ``.tsv`` file (two
    tab-separated columns per line; empty lines and ``#`` comments skipped) or a ``.jsonl``
    file (``source`` and ``target`` fields). A malformed line is an error naming it.
    ``answers=False`` leaves the world's answer words (yes/no, true/false) out: they are
    not word-for-word translations inside a question."""
    if spec == "ftibworld":
        from ftib.data.world.lexicon import translation_lexicon

        return translation_lexicon(answers=answers)
    path = Path(spec).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FtibError(f"{what}: cannot read {path} as UTF-8 text ({exc})") from exc
    pairs: list[tuple[str, str]] = []
    if path.suffix == ".jsonl":
        for i, rec in iter_jsonl(path, text):
            if not (isinstance(rec, dict) and isinstance(rec.get("source"), str) and isinstance(rec.get("target"), str)
                    and rec["source"].strip() and rec["target"].strip()):
                raise FtibError(f"{path}:{i}: a lexicon record needs non-empty string 'source' and 'target' fields")
            pairs.append((rec["source"].strip(), rec["target"].strip()))
    else:
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            cols = line.split("\t")
            if len(cols) != 2 or not cols[0].strip() or not cols[1].strip():
                raise FtibError(f"{path}:{i}: a lexicon line needs two non-empty tab-separated columns "
                                f"(source, translation), got {line[:60]!r}")
            pairs.append((cols[0].strip(), cols[1].strip()))
    if not pairs:
        raise FtibError(f"{what}: {path} holds no entries")
    return pairs


#: Tibetan letters, subjoined letters and vowel signs: a Tibetan word matches only where
#: neither neighbour is one of these (a tsheg, shad, space or other script bounds it), so
#: ``ཉ`` (fish) is not found inside ``ཉི`` or ``ཉིན``
_TIBETAN_LETTER = "\u0f40-\u0fbc"


def _word_pattern(words: list[str]) -> re.Pattern[str]:
    """One alternation of ``words``, longest first; a Tibetan word only on syllable
    boundaries."""
    def one(word: str) -> str:
        if contains_tibetan(word):
            return f"(?<![{_TIBETAN_LETTER}]){re.escape(word)}(?![{_TIBETAN_LETTER}])"
        return re.escape(word)

    return re.compile("|".join(one(w) for w in sorted(words, key=len, reverse=True)))


def _switch_user_turns(messages: list[dict], pattern: re.Pattern[str], table: dict[str, str]) -> tuple[list[dict], int]:
    """``messages`` with every match of ``pattern`` in the user turns' text replaced by
    its ``table`` entry, and how many were replaced."""
    out: list[dict] = []
    n = 0

    def sub(text: str) -> str:
        nonlocal n
        text, k = pattern.subn(lambda m: table[m.group(0)], text)
        n += k
        return text

    for msg in messages:
        content = msg.get("content")
        if msg.get("role") != "user":
            out.append(msg)
        elif isinstance(content, str):
            out.append({**msg, "content": sub(content)})
        else:
            out.append({**msg, "content": [
                {**part, "text": sub(part["text"])}
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                else part for part in content or []]})
    return out, n


def code_switch(records: list[tuple[list[dict], list, str]], pairs: list[tuple[str, str]], *, share: float,
                seed: int, direction: str = "to_tibetan"
                ) -> tuple[list[tuple[list[dict], list, str]], list[int], dict[str, int]]:
    """Code-switched copies of chat ``records`` (``(messages, images, where)``).

    ``pairs`` are ``(Tibetan, translation)``. ``direction``:

    * ``to_tibetan``: in a copy's user turns every translation word becomes its Tibetan
      form (a question in the model's language, with the new words in it);
    * ``from_tibetan``: every Tibetan word becomes its translation (a Tibetan question
      whose content words the model already knows);
    * ``both``: either, for each record whichever applies (a record holding words of both
      sides gets one copy per direction).

    Longest words first; Tibetan words on syllable boundaries only; assistant turns stay
    as they are. ``share`` of the records with at least one word to switch are copied,
    drawn with ``seed``. Returns the copies, the index of each one's original and counts
    (``candidates``, ``records``, ``words``; ``ambiguous``: words listed with several
    counterparts, of which the first is used). Nothing to switch anywhere is an error (a
    lexicon in another language than the data, or the wrong way round).
    """
    if direction not in ("to_tibetan", "from_tibetan", "both"):
        raise ValueError(f"direction {direction!r}: expected to_tibetan, from_tibetan or both")
    # (Tibetan, translation) read as (from, to): translation -> Tibetan, Tibetan -> translation
    ways = {"to_tibetan": [False], "from_tibetan": [True], "both": [False, True]}[direction]
    tables: list[tuple[re.Pattern[str], dict[str, str]]] = []
    ambiguous = 0
    for from_tibetan in ways:
        table: dict[str, str] = {}
        for bo, target in pairs:
            key, value = (bo, target) if from_tibetan else (target, bo)
            if key in table:
                ambiguous += table[key] != value
            else:
                table[key] = value
        tables.append((_word_pattern(list(table)), table))
    copies: list[tuple[list[dict], list, str]] = []
    origin: list[int] = []
    candidates: set[int] = set()
    drawn: list[tuple[int, list[dict], int]] = []
    for pattern, table in tables:
        for i, (messages, _, _) in enumerate(records):
            switched, n = _switch_user_turns(messages, pattern, table)
            if n:
                candidates.add(i)
                drawn.append((i, switched, n))
    if not drawn:
        raise FtibError(f"code_switch ({direction}): no word of the lexicon's {len(pairs)} pairs occurs in a user turn "
                        f"of the {len(records)} conversations (a lexicon in another language than the data, or the "
                        "wrong way round: it lists (Tibetan, translation) pairs)")
    rng = random.Random(seed)
    words = 0
    for j in sorted(rng.sample(range(len(drawn)), round(share * len(drawn)))):
        i, switched, n = drawn[j]
        messages, images, where = records[i]
        copies.append((switched, images, f"{where} (code-switched)"))
        origin.append(i)
        words += n
    return copies, origin, {"candidates": len(candidates), "records": len(copies), "words": words,
                            "ambiguous": ambiguous}
