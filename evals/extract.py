"""Answer extraction: from a free-form model reply to the answer it gives.

Deterministic rules run first, in a fixed order, and each parse records the rule that
resolved it (``Parsed.rule``) so a report can show how much of a score rests on which
rule. What no rule resolves stays unresolved (``value=None``, rule ``"none"``) and is
scored as wrong; an optional judge (a local model, see :class:`GeneratorJudge`) may look
at the leftovers and is logged as rule ``"judge"``. There is never a random fallback.

Multiple choice (:func:`extract_choice`), in this order:

1. ``letter`` -- an option letter given explicitly. Letters are ``A``-``D``, their
   full-width forms (``Ａ``) and the Tibetan ``ཀ ཁ ག ང`` (the first four letters of the
   alphabet, used as option labels in Tibetan exams). Accepted shapes: the whole reply
   is a letter (``"B"``, ``"(C)"``, ``"ཁ།"``); the reply starts with a letter and a
   delimiter (``"A. red"``, ``"B) ..."``, ``"C：..."``); a letter after an answer phrase
   (``answer is B``, ``答案是C``, ``选B``, ``ལན་ནི་ D``, ``གདམ་ག་ཁ``); or exactly one
   distinct standalone Latin letter among the valid ones anywhere in the reply (``A``
   followed by a lower-case word is the English article, not a letter). Tibetan letters
   are only taken in the first three shapes, since ``ཁ`` or ``ག`` alone are also words.
2. ``option_text`` -- the reply contains the text of exactly one option (compared as
   metric tokens: Tibetan syllables, CJK characters, lower-cased words; an option whose
   text lies inside another matched option's text does not count separately).
3. ``number`` -- the reply holds exactly one distinct number (Arabic or Tibetan digits
   ``༠``-``༩``) and exactly one option has that value (as digits or a number word).

Yes/no (:func:`extract_yes_no`), clause by clause (clauses end at a shad, sentence
punctuation, comma or newline); the first clause that carries a polarity decides, and in
a clause a negation wins over an affirmation (``not correct``, ``བདེན་པ་མ་རེད``). A
clause that hedges (``not sure``, ``不确定``, ``མི་ཤེས``) carries no polarity:

4. ``yes_no_bo`` -- Tibetan: yes ``ཡིན ཡོད རེད འདུག བདེན ལགས``; no ``མིན མེད རྫུན ནོར``
   and ``མ་`` + (``རེད ཡིན ཡོད འདུག``), ``མི་འདུག``.
5. ``yes_no_zh`` -- Chinese: yes ``是 有 对 正确 存在``; no ``不 没 否 无 错``
   (``是否`` is an echo of the question and ignored).
6. ``yes_no_en`` -- English: yes ``yes true correct yeah yep``; no ``no not false
   incorrect wrong nope`` and ``-n't``. A clause that starts with ``yes``/``no`` is
   decided by that word.

True/false statements use the same rules with ``true``/``false`` as the labels.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ftib.evals.text import metric_tokens
from ftib.kernels.tibetan import TSHEG, normalize, syllables

__all__ = [
    "RULES",
    "Parsed",
    "Judge",
    "GeneratorJudge",
    "extract_choice",
    "extract_yes_no",
    "parse_number",
    "resolve",
]

LETTER = "letter"
OPTION_TEXT = "option_text"
NUMBER = "number"
YES_NO_BO = "yes_no_bo"
YES_NO_ZH = "yes_no_zh"
YES_NO_EN = "yes_no_en"
JUDGE = "judge"
NONE = "none"

#: Every rule name a record can carry, in the order the rules run.
RULES = (LETTER, OPTION_TEXT, NUMBER, YES_NO_BO, YES_NO_ZH, YES_NO_EN, JUDGE, NONE)

LETTERS = ("A", "B", "C", "D")
TIBETAN_LETTER = {"ཀ": "A", "ཁ": "B", "ག": "C", "ང": "D"}


@dataclass(frozen=True)
class Parsed:
    """The answer a reply gives: ``value`` (``None`` when unresolved) and the rule used."""

    value: str | None
    rule: str

    @property
    def ok(self) -> bool:
        return self.value is not None


UNRESOLVED = Parsed(None, NONE)

# ----------------------------------------------------------------------------- letters
_OPEN = r"[\(\[<{]?"
_CLOSE = r"[\)\]>}]?"
_TIB_L = "ཀཁགང"
_WHOLE = re.compile(
    rf"^\s*{_OPEN}\s*([A-D]|[{_TIB_L}])\s*{_CLOSE}\s*[.。:,、!་།༎\s]*$"
)
_LEAD_LATIN = re.compile(rf"^\s*{_OPEN}([A-D]){_CLOSE}\s*(?:[.。:,、།)]|\s*$|\s+[-–—])")
_LEAD_TIB = re.compile(rf"^\s*{_OPEN}([{_TIB_L}]){_CLOSE}\s*[.。:།)]")
_PHRASE = re.compile(
    r"(?i:answer|option|choice)\s*(?i:is|would be|should be|:)?\s*(?i:option\s*)?"
    rf"{_OPEN}\s*([A-D](?![A-Za-z])|[a-d](?=\s*(?:$|[.,;)\]])))"
    rf"|(?:答案|选项|选择|应选|选)\s*(?:是|为|應該是|应该是)?\s*:?\s*{_OPEN}\s*([A-D])"
    rf"|(?<![\u0f40-\u0fbc])(?:ལན|གདམ་ག)(?:་ནི)?[་།\s:]*{_OPEN}\s*([A-D](?![A-Za-z])|[{_TIB_L}](?=\s|[།)\]]|$|་(?:རེད|ཡིན)))",
)
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'])([A-D])(?![A-Za-z0-9'])")
_ARTICLE = re.compile(r"A\s+(?!or\b|and\b)[a-z]")


def _nfkc(text: str) -> str:
    """NFKC outside Tibetan only (full-width ``Ａ`` -> ``A``; Tibetan kept as it is)."""
    return re.sub(
        "[^\u0f00-\u0fff]+", lambda m: unicodedata.normalize("NFKC", m.group(0)), text
    )


def _letter(text: str, valid: Sequence[str]) -> str | None:
    for pattern in (_WHOLE, _LEAD_LATIN, _LEAD_TIB):
        m = pattern.match(text)
        if m:
            return TIBETAN_LETTER.get(m.group(1), m.group(1))
    m = _PHRASE.search(text)
    if m:
        g = next(x for x in m.groups() if x)
        return TIBETAN_LETTER.get(g, g.upper())
    found = set()
    for m in _STANDALONE.finditer(text):
        if m.group(1) == "A" and _ARTICLE.match(text, m.start()):
            continue
        if m.group(1) in valid:
            found.add(m.group(1))
    return found.pop() if len(found) == 1 else None


# ----------------------------------------------------------------------- option text
def _contains(hay: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(hay[i : i + n] == needle for i in range(len(hay) - n + 1))


def _option_text(text: str, options: Mapping[str, str]) -> str | None:
    reply = metric_tokens(text)
    toks = {k: metric_tokens(str(v)) for k, v in options.items() if str(v).strip()}
    exact = [k for k, t in toks.items() if t and t == reply]
    if len(exact) == 1:
        return exact[0]
    matched = [k for k, t in toks.items() if _contains(reply, t)]
    # "dark red" matched implies "red" matched too; keep only the outermost options.
    outer = [
        k for k in matched
        if not any(j != k and toks[j] != toks[k] and _contains(toks[j], toks[k]) for j in matched)
    ]
    return outer[0] if len(outer) == 1 else None


# --------------------------------------------------------------------------- numbers
_TIB_DIGITS = str.maketrans("༠༡༢༣༤༥༦༧༨༩", "0123456789")
_NUMBER_WORDS: dict[str, int] = {}
for _i, (_bo, _zh, _en) in enumerate(
    zip(
        ["ཀླད་ཀོར", "གཅིག", "གཉིས", "གསུམ", "བཞི", "ལྔ", "དྲུག", "བདུན", "བརྒྱད", "དགུ", "བཅུ"],
        ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九", "十"],
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"],
    )
):
    _NUMBER_WORDS[normalize(_bo)] = _i
    _NUMBER_WORDS[_zh] = _i
    _NUMBER_WORDS[_en] = _i
_NUMBER_WORDS["两"] = 2
_DIGITS = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?![\d.])")


def parse_number(text: str) -> float | None:
    """The value of a text that *is* a number: digits in either script or a number word
    (``"༣"``, ``"3"``, ``"གསུམ།"``, ``"三"``, ``"three"``); ``None`` otherwise."""
    s = _nfkc(normalize(text)).translate(_TIB_DIGITS).strip().strip("་།.。 ").lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return float(s)
    return float(_NUMBER_WORDS[s]) if s in _NUMBER_WORDS else None


def _number(text: str, options: Mapping[str, str]) -> str | None:
    values = {float(m.group(0)) for m in _DIGITS.finditer(text.translate(_TIB_DIGITS))}
    if len(values) != 1:
        return None
    (value,) = values
    hits = [k for k, v in options.items() if parse_number(str(v)) == value]
    return hits[0] if len(hits) == 1 else None


def extract_choice(reply: str, options: Mapping[str, str]) -> Parsed:
    """The option letter a reply chooses (rules 1-3 of the module docstring).

    Args:
        reply: the model's reply.
        options: letter -> option text; empty or missing options are not valid choices.
    """
    options = {k: v for k, v in options.items() if v is not None and str(v).strip()}
    text = _nfkc(normalize(reply or ""))
    if not text.strip():
        return UNRESOLVED
    letter = _letter(text, [k for k in LETTERS if k in options])
    if letter is not None:
        return Parsed(letter, LETTER)
    hit = _option_text(text, options)
    if hit is not None:
        return Parsed(hit, OPTION_TEXT)
    hit = _number(text, options)
    if hit is not None:
        return Parsed(hit, NUMBER)
    return UNRESOLVED


# --------------------------------------------------------------------------- yes / no
_CLAUSE = re.compile(r"[།༎༏༐༑\n.!?。！？;；,，:：]+")
_BO_YES = {normalize(w) for w in ("ཡིན", "ཡོད", "རེད", "འདུག", "བདེན", "ལགས")}
_BO_NO = {normalize(w) for w in ("མིན", "མེད", "རྫུན", "ནོར")}
_BO_NEG_PREFIX = {"མ": {"རེད", "ཡིན", "ཡོད", "འདུག"}, "མི": {"འདུག"}}
_ZH_NO = re.compile(r"不|没|否|無|无|错|錯")
_ZH_YES = re.compile(r"是|有|对|對|正确|正確|存在")
_EN_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_EN_YES = {"yes", "true", "correct", "yeah", "yep"}
_EN_NO = {"no", "not", "false", "incorrect", "wrong", "nope"}
# "I am not sure" is no answer at all: a clause with a hedge carries no polarity.
_HEDGE = re.compile(
    r"not sure|unsure|unclear|(?:do not|don't|cannot|can't|can not) (?:know|tell|determine|say)"
    r"|cannot be determined|不确定|不確定|不知道|无法判断|無法判斷|无法确定|不清楚"
    r"|མི་ཤེས|ཤེས་ཀྱི་མ་རེད|ཤེས་རྒྱུ་མ་རེད|ཧ་མ་གོ",
    re.IGNORECASE,
)


def _bo_polarity(clause: str) -> bool | None:
    sylls = [s.rstrip(TSHEG) for s in syllables(clause)]
    yes = False
    for i, s in enumerate(sylls):
        if s in _BO_NO:
            return False
        nxt = sylls[i + 1] if i + 1 < len(sylls) else None
        if s in _BO_NEG_PREFIX and nxt in _BO_NEG_PREFIX[s]:
            return False
        if s in _BO_YES:
            yes = True
    return True if yes else None


def _zh_polarity(clause: str) -> bool | None:
    clause = clause.replace("是否", "")
    if _ZH_NO.search(clause):
        return False
    return True if _ZH_YES.search(clause) else None


def _en_polarity(clause: str) -> bool | None:
    words = _EN_WORD.findall(clause.lower().replace("’", "'"))
    if not words:
        return None
    if words[0] in _EN_YES:
        return True
    if words[0] in _EN_NO:
        return False
    if any(w in _EN_NO or w.endswith("n't") for w in words):
        return False
    return True if any(w in _EN_YES for w in words) else None


def extract_yes_no(reply: str, labels: tuple[str, str] = ("yes", "no")) -> Parsed:
    """Yes or no (rules 4-6 of the module docstring).

    Args:
        reply: the model's reply.
        labels: the values returned for an affirmative and a negative answer
            (``("true", "false")`` for statements).
    """
    text = _nfkc(normalize(reply or ""))
    for clause in _CLAUSE.split(text):
        if not clause.strip() or _HEDGE.search(clause):
            continue
        for rule, fn in ((YES_NO_BO, _bo_polarity), (YES_NO_ZH, _zh_polarity), (YES_NO_EN, _en_polarity)):
            polarity = fn(clause)
            if polarity is not None:
                return Parsed(labels[0] if polarity else labels[1], rule)
    return UNRESOLVED


# ----------------------------------------------------------------------------- judge
class Judge(Protocol):
    """Resolves replies the rules could not: returns one of ``allowed`` or ``None``."""

    def __call__(self, question: str, reply: str, allowed: Mapping[str, str]) -> str | None: ...


class GeneratorJudge:
    """A local model asked which allowed answer a reply gives.

    The judge's own reply goes through the deterministic rules again (letters for
    choices); a judge reply that names nothing allowed leaves the item unresolved.

    Args:
        generate: ``list[str] -> list[str]`` text generation (greedy), e.g. a
            :class:`ftib.evals.generate.Generator` bound to text-only prompts.
    """

    def __init__(self, generate) -> None:
        self.generate = generate

    def __call__(self, question: str, reply: str, allowed: Mapping[str, str]) -> str | None:
        keys = list(allowed)
        lines = [
            "Question:", question.strip(), "", "Reply:", reply.strip(), "",
            "Which of these answers does the reply give? Answer with the letter only, "
            "or Z if it gives none of them.",
        ]
        letters = LETTERS[: len(keys)]
        for letter, key in zip(letters, keys):
            lines.append(f"{letter}. {allowed[key]}")
        (out,) = self.generate(["\n".join(lines)])
        parsed = _letter(_nfkc(normalize(out)), letters)
        if parsed is None or parsed not in letters:
            return None
        return keys[letters.index(parsed)]


def resolve(parsed: Parsed, judge: Judge | None, question: str, reply: str,
            allowed: Mapping[str, str]) -> Parsed:
    """``parsed`` itself when resolved; else the judge's answer (rule ``judge``) if any."""
    if parsed.ok or judge is None:
        return parsed
    value = judge(question, reply, allowed)
    if value is None or value not in allowed:
        return parsed
    return Parsed(value, JUDGE)
