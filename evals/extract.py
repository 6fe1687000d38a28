"""Answer extraction: from a free-form model reply to the answer it gives.

A small deterministic grammar per language (Tibetan, Chinese, English) runs first, in a
fixed order. Every parse records the rule that resolved it (``Parsed.rule``) and the
word or clause that decided it (``Parsed.evidence``), so a report can show how much of a
score rests on which rule and a reader can check any single item. What no rule resolves
stays unresolved (``value=None``, rule ``"none"``) and is scored as wrong; an optional
judge (a local model, see :class:`GeneratorJudge`) may look at the leftovers and is
logged as rule ``"judge"``. There is never a random fallback (VLMEvalKit's
``extract_answer_from_item`` draws a random letter when its judge fails; ftib does not).

Before any rule: NFKC outside Tibetan (``Ａ`` -> ``A``), Tibetan normalisation, and
markdown/LaTeX wrappers removed (``**B**``, ``\\boxed{B}``, backticks).

Multiple choice (:func:`extract_choice`), in this order:

1. ``letter`` -- an option letter given explicitly: ``A``-``D`` (full-width too) and the
   Tibetan ``ཀ ཁ ག ང``. An echoed option list (two or more ``X. option text`` pieces) is
   removed first, so the list the model repeats does not decide. Shapes: the whole
   reply is a letter (``"B"``, ``"(C)"``, ``"ཁ།"``); the reply starts with a letter and a
   delimiter (``"A. red"``, ``"B) ..."``, ``"C：..."``) or with ``A`` and a verb
   (``"A is correct"``); a letter after an answer phrase (``answer is B``, ``答案是C``,
   ``选B``, ``B选项``, ``ལན་ནི་ D``, ``ལན་དག་པ་ནི་ཁ་རེད``,
   ``གདམ་ག་ཁ``, ``གདམ་ཀ་ག``); or exactly one distinct standalone Latin
   letter among the valid ones anywhere in the reply. ``A`` followed by a lower-case
   word is the English article *unless* that word is a verb, conjunction or
   preposition that only a label can precede (``A is``, ``A seems``, ``A because``),
   see :data:`_LABEL_FOLLOWERS`. Tibetan letters are only taken in the first three
   shapes, since ``ཁ`` or ``ག`` alone are also words.
2. ``option_text`` -- the reply contains the text of exactly one option (compared as
   metric tokens: Tibetan syllables, CJK characters, lower-cased words; an option whose
   text lies inside another matched option's text does not count separately).
3. ``number`` -- the reply holds exactly one distinct number and exactly one option has
   that value. Numbers are Arabic or Tibetan digits, Tibetan number words read as whole
   syllables (``གསུམ``, ``བཅུ་གཉིས``; not in ``གྲུ་གསུམ`` "triangle" or ``གཅིག་མཚུངས``
   "same"), Chinese numerals (``三``, ``十二``, ``两``; not in ``十分`` "very",
   ``三角`` "triangle", ``一样`` "same" ...) and English number words (``three``; ``one``
   after a determiner is a pronoun).

Yes/no (:func:`extract_yes_no`), clause by clause (clauses end at a shad, sentence
punctuation, comma or newline); the first clause that carries a polarity decides, and in
a clause a negation wins over an affirmation (``not correct``, ``བདེན་པ་མ་རེད``). A
clause that hedges (``not sure``, ``不确定``, ``མི་ཤེས``) carries no polarity, and neither
does the *question echoed in the reply*: a clause ending in ``?``; English ``whether``;
Chinese ``是否 有没有 是不是 对不对 …吗``; Tibetan "whether" constructions ``X་མེད``
(``ཡོད་མེད``), ``ཡིན་མིན``, ``X་མ་X`` (``རེད་མ་རེད``, ``འདུག་མ་འདུག``), ``X་མི་X``, a
question particle (``ཡོད་དམ``, ``ཡིན་ནམ``, ``རེད་དམ``) and ``ཨེ་X`` -- in Tibetan the echo
and everything before it in the clause are skipped, and what follows is read:

4. ``yes_no_bo`` -- Tibetan, whole syllables only: yes existentials ``ཡོད འདུག``, copulas
   ``ཡིན རེད``, and ``བདེན ལགས``; no ``མེད མིན``, ``མ་`` + (``རེད ཡིན ཡོད འདུག``), ``མི་འདུག``, ``མི་བདེན``,
   ``རྫུན`` and ``ནོར`` (not in ``ནོར་བུ`` "jewel", ``ནོར་ཕྱུགས`` "livestock"). Conditional
   and concessive forms (``ཡོད་ན`` "if there is", ``ཡིན་ཡང`` "although") and ``ཡོད་ཚད``
   "all" assert nothing. For an *existence* question (the question has ``ཡོད འདུག མེད``),
   a copula after a noun (``དེ་ཞི་མི་རེད`` "that is a cat") names a thing and is not a
   yes; only a bare copula (``རེད།``, ``ཡིན་ལགས``) answers.
5. ``yes_no_zh`` -- Chinese, longest word first (:data:`_ZH_WORDS`): yes ``是 是的 有 对
   正确 存在 没错 不错 没有错 没问题 确实``, no ``不 不是 没 没有 否 无 错 错误 不对``; words that only
   contain such a character are neutral (``但是 还是 可是 非常 不过 无论 对于 所有 答案是``).
   For an existence question (``有`` or ``存在`` in the question), ``是`` after other
   words is a copula (``这是一只猫``), not a yes.
6. ``yes_no_en`` -- English, whole words: yes ``yes true correct yeah yep``; no ``no not
   false incorrect wrong nope none`` and ``-n't``. A clause that starts with ``yes``/
   ``no`` is decided by that word. For an existence question (``is there``/``are
   there``), ``there is``/``there are`` is a yes.

:func:`pope_official` reproduces instead the official POPE script's rule (rule
``pope_official``): keep the text before the first ``.``, drop commas, split on spaces;
``No``, ``no`` or ``not`` among the words means no, anything else means yes.

True/false statements use the same rules with ``true``/``false`` as the labels.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    "pope_official",
    "question_kind",
    "resolve",
]

LETTER = "letter"
OPTION_TEXT = "option_text"
NUMBER = "number"
YES_NO_BO = "yes_no_bo"
YES_NO_ZH = "yes_no_zh"
YES_NO_EN = "yes_no_en"
POPE_OFFICIAL = "pope_official"
JUDGE = "judge"
NONE = "none"

#: Every rule name a record can carry, in the order the rules run.
RULES = (LETTER, OPTION_TEXT, NUMBER, YES_NO_BO, YES_NO_ZH, YES_NO_EN, POPE_OFFICIAL, JUDGE, NONE)

LETTERS = ("A", "B", "C", "D")
TIBETAN_LETTER = {"ཀ": "A", "ཁ": "B", "ག": "C", "ང": "D"}


@dataclass(frozen=True)
class Parsed:
    """The answer a reply gives.

    Attributes:
        value: the answer (``None`` when unresolved).
        rule: the rule that resolved it (one of :data:`RULES`).
        evidence: the word or clause that decided, with the shape that matched
            (``"phrase: 答案是C"``, ``"syllable: མེད"``); not part of equality.
    """

    value: str | None
    rule: str
    evidence: str = field(default="", compare=False)

    @property
    def ok(self) -> bool:
        return self.value is not None


UNRESOLVED = Parsed(None, NONE)

# ----------------------------------------------------------------------- clean-up
_MARKUP = re.compile(r"\\boxed\{([^{}]*)\}|\*\*|__|`")


def _nfkc(text: str) -> str:
    """NFKC outside Tibetan only (full-width ``Ａ`` -> ``A``; Tibetan kept as it is)."""
    return re.sub(
        "[^\u0f00-\u0fff]+", lambda m: unicodedata.normalize("NFKC", m.group(0)), text
    )


def _clean(reply: str | None) -> str:
    text = _nfkc(normalize(reply or ""))
    return _MARKUP.sub(lambda m: m.group(1) or "", text)


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
    rf"|(?:答案|选项|選項|选择|選擇|应选|應選|选|選)\s*(?:是|为|為|應該是|应该是)?\s*[:：]?\s*{_OPEN}\s*([A-D])"
    rf"|(?<![A-Za-z]){_OPEN}([A-D]){_CLOSE}\s*(?:选项|選項|项|項)"
    rf"|(?<![\u0f40-\u0fbc])(?:ལན|གདམ་[གཀ])(?:་(?:ཡང་)?དག་པ|་འོས་ཤོས)?(?:་ནི)?[་།\s:]*{_OPEN}\s*([A-D](?![A-Za-z])|[{_TIB_L}](?=\s|[།)\]]|$|་(?:རེད|ཡིན)))",
)
_STANDALONE = re.compile(r"(?<![A-Za-z0-9'])([A-D])(?![A-Za-z0-9'])")
#: Words after which a capital ``A`` is an option label, not the English article: an
#: article is followed by an adjective or noun, never by a verb, conjunction or
#: preposition ("A is correct", "A seems right", "A because ...", "A or B").
_LABEL_FOLLOWERS = frozenset(
    "is was would should could seems seem looks appears matches fits describes shows "
    "corresponds answers best correct right wrong because since as or and but so then "
    "with for from in on at to by".split()
)
_ARTICLE = re.compile(r"A\s+([a-z]+)")


def _strip_echoed_options(text: str, options: Mapping[str, str]) -> tuple[str, bool]:
    """Remove an echoed option list: two or more ``X. option text`` pieces."""
    spans = []
    for k, v in options.items():
        m = re.search(rf"(?<![A-Za-z]){_OPEN}{k}{_CLOSE}\s*[.:：、)]\s*{re.escape(str(v).strip())}", text)
        if m:
            spans.append(m.span())
    if len(spans) < 2:
        return text, False
    for a, b in sorted(spans, reverse=True):
        text = text[:a] + " " + text[b:]
    return text, True


def _is_article(text: str, pos: int) -> bool:
    m = _ARTICLE.match(text, pos)
    return bool(m) and m.group(1) not in _LABEL_FOLLOWERS


def _letter(text: str, valid: Sequence[str]) -> tuple[str, str] | None:
    """``(letter, evidence)`` or ``None``."""
    for name, pattern in (("whole", _WHOLE), ("leading", _LEAD_LATIN), ("leading", _LEAD_TIB)):
        m = pattern.match(text)
        if m:
            return TIBETAN_LETTER.get(m.group(1), m.group(1)), f"{name}: {m.group(0).strip()}"
    m = _PHRASE.search(text)
    if m:
        g = next(x for x in m.groups() if x)
        return TIBETAN_LETTER.get(g, g.upper()), f"phrase: {m.group(0).strip()}"
    m = re.match(r"\s*A\s+([a-z]+)", text)
    if m and m.group(1) in _LABEL_FOLLOWERS and m.group(1) not in ("or", "and"):
        return "A", f"leading: A {m.group(1)}"
    found: dict[str, str] = {}
    for m in _STANDALONE.finditer(text):
        if m.group(1) == "A" and _is_article(text, m.start()):
            continue
        if m.group(1) in valid:
            found.setdefault(m.group(1), text[max(0, m.start() - 12): m.end() + 12].strip())
    if len(found) == 1:
        ((k, ctx),) = found.items()
        return k, f"standalone: {ctx}"
    return None


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
_BO_UNITS = ["ཀླད་ཀོར", "གཅིག", "གཉིས", "གསུམ", "བཞི", "ལྔ", "དྲུག", "བདུན", "བརྒྱད", "དགུ", "བཅུ"]
_ZH_UNITS = "零一二三四五六七八九十"
_EN_UNITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
             "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
             "eighteen", "nineteen", "twenty"]
_NUMBER_WORDS: dict[str, int] = {}
for _i, _bo in enumerate(_BO_UNITS):
    _NUMBER_WORDS[normalize(_bo)] = _i
for _i, _zh in enumerate(_ZH_UNITS):
    _NUMBER_WORDS[_zh] = _i
for _i, _en in enumerate(_EN_UNITS):
    _NUMBER_WORDS[_en] = _i
_NUMBER_WORDS["两"] = _NUMBER_WORDS["兩"] = 2
_DIGITS = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?![\d.])")
# Tibetan number syllables (tsheg stripped). 11-19 are བཅུ + unit (with the linking
# forms གཅིག, གཉིས ... after བཅུ), 20, 30 ... are unit + བཅུ.
_BO_NUM = {normalize(w).rstrip(TSHEG): i for i, w in enumerate(_BO_UNITS) if i}
_BO_NUM["ཀླད"] = 0
#: Tibetan syllables before which a number syllable belongs to a word, not a count:
#: གྲུ་གསུམ "triangle", གྲུ་བཞི "square", ཁ་གཅིག "some", ཚེས་གཅིག "the first (day)".
_BO_NUM_BEFORE = frozenset({"གྲུ", "ཁ", "ཚེས", "ཟླ"})
#: ... and after which: གཅིག་མཚུངས "same", གཅིག་པུ "alone", གཅིག་སྒྲིལ "unity".
_BO_NUM_AFTER = frozenset({"མཚུངས", "པུ", "སྒྲིལ", "གྱུར", "ཀོར"})
_ZH_NUM = re.compile("[零一二两兩三四五六七八九十]+")
#: Chinese words containing numerals that are no count ("very", "triangle", "same" ...).
_ZH_NUM_WORDS = ("十分", "三角", "四边", "四方", "五边", "六边", "一样", "一樣", "一些", "一起", "一下",
                 "一般", "一定", "一直", "一点", "一切", "一共", "唯一", "统一", "之一", "第一", "万一",
                 "一模一样", "五颜六色", "一致")
_EN_PRONOUN_ONE = re.compile(
    r"\b(?:the|this|that|which|each|every|any|no|another)\s+(?:[a-z]+\s+){0,2}?one\b|\bone of\b")


def _zh_value(run: str) -> int | None:
    """``三`` -> 3, ``十二`` -> 12, ``二十`` -> 20, ``二十三`` -> 23 (0-99)."""
    v = [_NUMBER_WORDS[c] for c in run]
    if "十" not in run:
        return v[0] if len(v) == 1 else None
    i = run.index("十")
    tens = v[0] if i == 1 else (1 if i == 0 else None)
    rest = v[i + 1:]
    if tens is None or len(rest) > 1 or "十" in run[i + 1:]:
        return None
    return tens * 10 + (rest[0] if rest else 0)


def parse_number(text: str) -> float | None:
    """The value of a text that *is* a number: digits in either script or a number word
    (``"༣"``, ``"3"``, ``"གསུམ།"``, ``"བཅུ་གཉིས"``, ``"三"``, ``"十二"``, ``"three"``);
    ``None`` otherwise."""
    s = _nfkc(normalize(text)).translate(_TIB_DIGITS).strip().strip("་།.。 ").lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return float(s)
    if s in _NUMBER_WORDS:
        return float(_NUMBER_WORDS[s])
    if _ZH_NUM.fullmatch(s):
        v = _zh_value(s)
        return None if v is None else float(v)
    vals = _bo_numbers(s)
    if len(vals) == 1 and "".join(x[1] for x in vals).replace(TSHEG, "") == s.replace(TSHEG, ""):
        return float(vals[0][0])
    return None


def _bo_numbers(text: str) -> list[tuple[int, str]]:
    """Tibetan number words in ``text`` as ``(value, words)``, whole syllables only."""
    out: list[tuple[int, str]] = []
    for run in re.findall("[\u0f00-\u0fff]+", text):
        sylls = [s.rstrip(TSHEG).rstrip("།") for s in syllables(run)]
        i = 0
        while i < len(sylls):
            s = sylls[i]
            if s not in _BO_NUM or (s == "ཀླད" and sylls[i + 1: i + 2] != ["ཀོར"]):
                i += 1
                continue
            if (i > 0 and sylls[i - 1] in _BO_NUM_BEFORE) or (
                    s != "ཀླད" and i + 1 < len(sylls) and sylls[i + 1] in _BO_NUM_AFTER):
                i += 1
                continue
            j, value = i + 1, (0 if s == "ཀླད" else _BO_NUM[s])
            if s == "ཀླད":
                j += 1
            elif s == "བཅུ" and j < len(sylls) and sylls[j] in _BO_NUM and 0 < _BO_NUM[sylls[j]] < 10:
                value, j = 10 + _BO_NUM[sylls[j]], j + 1
            elif value < 10 and j < len(sylls) and sylls[j] == "བཅུ":
                value, j = value * 10, j + 1
            out.append((value, "་".join(sylls[i:j])))
            i = j
    return out


def _numbers(text: str) -> dict[float, str]:
    """Every number ``text`` states, value -> the words that state it."""
    found: dict[float, str] = {}
    for m in _DIGITS.finditer(text.translate(_TIB_DIGITS)):
        found.setdefault(float(m.group(0)), m.group(0))
    for value, words in _bo_numbers(text):
        found.setdefault(float(value), words)
    masked = text
    for w in _ZH_NUM_WORDS:
        masked = masked.replace(w, "□" * len(w))
    for m in _ZH_NUM.finditer(masked):
        v = _zh_value(m.group(0))
        if v is not None:
            found.setdefault(float(v), m.group(0))
    low = _EN_PRONOUN_ONE.sub(" ", text.lower())
    for w in re.findall(r"[a-z]+", low):
        if w in _NUMBER_WORDS and w.isascii() and len(w) > 2:
            found.setdefault(float(_NUMBER_WORDS[w]), w)
    return found


def _number(text: str, options: Mapping[str, str]) -> tuple[str, str] | None:
    values = _numbers(text)
    if len(values) != 1:
        return None
    ((value, words),) = values.items()
    hits = [k for k, v in options.items() if parse_number(str(v)) == value]
    return (hits[0], words) if len(hits) == 1 else None


def extract_choice(reply: str, options: Mapping[str, str]) -> Parsed:
    """The option letter a reply chooses (rules 1-3 of the module docstring).

    Args:
        reply: the model's reply.
        options: letter -> option text; empty or missing options are not valid choices.
    """
    options = {k: v for k, v in options.items() if v is not None and str(v).strip()}
    text = _clean(reply)
    if not text.strip():
        return UNRESOLVED
    text, echoed = _strip_echoed_options(text, options)
    note = " (echoed option list removed)" if echoed else ""
    got = _letter(text, [k for k in LETTERS if k in options])
    if got is not None:
        return Parsed(got[0], LETTER, got[1] + note)
    hit = _option_text(text, options)
    if hit is not None:
        return Parsed(hit, OPTION_TEXT, f"option text: {options[hit]}{note}")
    got = _number(text, options)
    if got is not None:
        return Parsed(got[0], NUMBER, f"number: {got[1]}{note}")
    return UNRESOLVED


# --------------------------------------------------------------------------- yes / no
_CLAUSE = re.compile(r"([།༎༏༐༑\n.!?。！？;；,，:：]+)")
_HEDGE = re.compile(
    r"not sure|unsure|unclear|(?:do not|don't|cannot|can't|can not) (?:know|tell|determine|say)"
    r"|cannot be determined|不确定|不確定|不知道|无法判断|無法判斷|无法确定|無法確定|不清楚|不一定"
    r"|མི་ཤེས|ཤེས་ཀྱི་མ་རེད|ཤེས་རྒྱུ་མ་རེད|ཧ་མ་གོ",
    re.IGNORECASE,
)


def question_kind(question: str | None) -> str | None:
    """``"existence"`` when the question asks whether something is there (Tibetan
    ``ཡོད འདུག མེད``, Chinese ``有 存在``, English ``is there`` / ``are there``), else
    ``None``. Only this kind changes how a reply is read (copulas, see rules 4-6)."""
    if not question:
        return None
    q = _nfkc(normalize(question))
    sylls = {s.rstrip(TSHEG).rstrip("།") for s in syllables(q)}
    if sylls & {"ཡོད", "འདུག", "མེད"} or re.search("有|存在", q) or re.search(
            r"\b(?:is|are) there\b|\bthere (?:is|are)\b", q, re.IGNORECASE):
        return "existence"
    return None


# Tibetan ------------------------------------------------------------------------
_BO_EXIST_YES = {"ཡོད", "འདུག"}
_BO_COPULA_YES = {"ཡིན", "རེད"}
_BO_OTHER_YES = {"བདེན", "ལགས"}
_BO_NO = {"མིན", "མེད", "རྫུན", "ནོར"}
_BO_NEG_PREFIX = {"མ": {"རེད", "ཡིན", "ཡོད", "འདུག"}, "མི": {"འདུག", "བདེན"}}
_BO_PAIRS = {("ཡོད", "མེད"), ("ཡིན", "མིན"), ("འདུག", "མེད")}
#: Question particles after a verb or auxiliary: ཡོད་དམ, ཡིན་ནམ, འདུག་གམ ...
_BO_Q = {"འམ", "གམ", "ངམ", "དམ", "ནམ", "བམ", "མམ", "རམ", "ལམ", "སམ", "ཏམ"}
#: Syllables after which a polarity syllable is part of another word or a conditional.
_BO_NOT_AFTER: dict[str, frozenset[str]] = {
    "ནོར": frozenset({"བུ", "ཕྱུགས", "རྫས", "ལུས", "འཛིན", "སྐྱོང"}),
    "ཡོད": frozenset({"ཚད", "ན", "ནའང", "ཀྱང", "པའི"}),
    "ཡིན": frozenset({"ན", "ཡང", "ནའང", "ཀྱང", "སྟབས"}),
    "རེད": frozenset({"ན", "ཀྱང", "ཡང"}),
    "འདུག": frozenset({"ན", "ཀྱང", "ས", "གནས"}),
    "བདེན": frozenset({"ན"}),
}
_BO_PARTICLES = {"ལགས", "སོ", "ནོ", "དོ", "པ", "བ", "པས", "ཀྱི", "གི", "གྱི"}
#: Quotative particles and verbs of asking: "... ཞེས་དྲིས་འདུག" "(it) asks whether ...";
#: the auxiliary of the reporting verb belongs to the report, not to an answer.
_BO_QUOTE = {"ཞེས", "ཅེས", "ཤེས", "ཟེར"}
_BO_ASK = {"དྲིས", "འདྲི", "དྲི", "ཞུས", "ཟེར"}
_BO_AUX = {"འདུག", "རེད", "ཡོད", "པ", "སོང", "བྱུང", "ཡིན"}


def _bo_echo_end(sylls: list[str]) -> int:
    """Index after the last echoed "whether" construction in ``sylls`` (0 if none)."""
    end = 0
    for i, s in enumerate(sylls):
        nxt = sylls[i + 1] if i + 1 < len(sylls) else None
        after = sylls[i + 2] if i + 2 < len(sylls) else None
        if (s, nxt) in _BO_PAIRS:
            end = i + 2
        elif nxt in _BO_Q and (after is None or after in _BO_QUOTE or after in ("ལན", "དྲི")):
            # a question particle closes the question (ནམ in ནམ་མཁའ "sky", དམ in དམ་པ
            # "holy" do not)
            end = i + 2
        elif nxt in ("མ", "མི") and i + 2 < len(sylls) and sylls[i + 2] == s:
            end = i + 3
        elif s == "ཨེ" and nxt is not None:
            end = i + 2
    return end


def _bo_polarity(clause: str, kind: str | None) -> tuple[bool, str] | None:
    sylls = [s.rstrip(TSHEG).rstrip("།") for s in syllables(clause)]
    sylls = [s for s in sylls if s and re.search("[\u0f40-\u0fbc]", s)]
    if not sylls:
        return None
    start = _bo_echo_end(sylls)
    if start and start < len(sylls) and sylls[start] in _BO_QUOTE:
        ask = next((k for k in range(start + 1, min(start + 4, len(sylls))) if sylls[k] in _BO_ASK), None)
        if ask is not None:
            start = ask + 1
            while start < len(sylls) and sylls[start] in _BO_AUX:
                start += 1
    yes: tuple[bool, str] | None = None
    content_before = False  # a non-particle syllable precedes (for copulas)
    existential = False
    for i in range(start, len(sylls)):
        s = sylls[i]
        nxt = sylls[i + 1] if i + 1 < len(sylls) else None
        if nxt in _BO_NOT_AFTER.get(s, ()):
            content_before = True
            continue
        if s in _BO_NEG_PREFIX and nxt in _BO_NEG_PREFIX[s]:
            if nxt in _BO_COPULA_YES and kind == "existence" and content_before and not existential:
                return None  # "it is not a cat" answers no existence question
            return False, f"syllables: {s}་{nxt}"
        if s in _BO_NO:
            return False, f"syllable: {s}"
        if s in _BO_EXIST_YES:
            existential = True
            yes = yes or (True, f"syllable: {s}")
        elif s in _BO_COPULA_YES:
            if kind == "existence" and content_before and not existential:
                pass  # copula after a noun: "that is a cat" is not "yes, there is"
            else:
                yes = yes or (True, f"syllable: {s}")
        elif s in _BO_OTHER_YES:
            yes = yes or (True, f"syllable: {s}")
        elif s not in _BO_PARTICLES:
            content_before = True
    return yes


# Chinese ------------------------------------------------------------------------
#: Chinese words and their polarity (``None``: neutral), matched longest first so that
#: a character inside a longer word does not count on its own.
_ZH_WORDS: dict[str, bool | None] = {
    **dict.fromkeys("是 是的 有 有的 对 對 对的 對的 正确 正確 存在 确实 確實 没错 沒錯 不错 不錯 当然 當然 "
                    "可以 肯定 有一 有个 有個 没有错 沒有錯 没问题 沒問題".split(), True),
    **dict.fromkeys("不 不是 没 沒 没有 沒有 否 無 无 错 錯 错误 錯誤 不对 不對 不存在 不正确 不正確 并非 並非 "
                    "非 未".split(), False),
    **dict.fromkeys("但是 可是 还是 還是 就是 总是 總是 于是 於是 只是 也是 或是 要是 若是 凡是 不过 不過 不仅 不僅 "
                    "无论 無論 否则 否則 非常 对于 對於 对比 對比 相对 相對 对应 對應 对象 對象 面对 面對 所有 有些 "
                    "有点 有點 有关 有關 没什么 答案是 答案为 答案為 是否 有没有 有沒有 是不是 对不对 對不對 "
                    "不同 无法 無法".split(), None),
}
_ZH_WORDS["不同"] = False  # "different" answers "is it the same" with no
_ZH_MAX = max(map(len, _ZH_WORDS))
_ZH_ECHO = re.compile("是否|有没有|有沒有|是不是|对不对|對不對|[吗嗎么麼呢]$")


def _zh_polarity(clause: str, kind: str | None) -> tuple[bool, str] | None:
    clause = clause.strip()
    if not re.search("[\u4e00-\u9fff]", clause):
        return None
    yes: tuple[bool, str] | None = None
    i, first = 0, True
    while i < len(clause):
        for n in range(min(_ZH_MAX, len(clause) - i), 0, -1):
            w = clause[i : i + n]
            if w in _ZH_WORDS:
                break
        else:
            if re.match("[\u4e00-\u9fff]", clause[i]):
                first = False
            i += 1
            continue
        pol = _ZH_WORDS[w]
        if pol is False:
            return False, f"word: {w}"
        if pol is True and not (w in ("是", "是的") and kind == "existence" and not first):
            yes = yes or (True, f"word: {w}")
        first = False
        i += n
    return yes


# English ------------------------------------------------------------------------
_EN_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_EN_YES = {"yes", "true", "correct", "yeah", "yep"}
_EN_NO = {"no", "not", "false", "incorrect", "wrong", "nope", "none"}


def _en_polarity(clause: str, kind: str | None) -> tuple[bool, str] | None:
    words = _EN_WORD.findall(clause.lower().replace("’", "'"))
    if not words or "whether" in words:
        return None
    if words[0] in _EN_YES:
        return True, f"word: {words[0]}"
    if words[0] in _EN_NO:
        return False, f"word: {words[0]}"
    for w in words:
        if w in _EN_NO or w.endswith("n't"):
            return False, f"word: {w}"
    for w in words:
        if w in _EN_YES:
            return True, f"word: {w}"
    if kind == "existence":
        m = re.search(r"\bthere (?:is|are)\b|\bthere's\b", " ".join(words))
        if m:
            return True, f"existential: {m.group(0)}"
    return None


def _clauses(text: str):
    """``(clause, is_question)`` pairs; a clause closed by ``?`` is a question."""
    parts = _CLAUSE.split(text)
    for k in range(0, len(parts), 2):
        delim = parts[k + 1] if k + 1 < len(parts) else ""
        yield parts[k], ("?" in delim or "？" in delim)


def extract_yes_no(reply: str, labels: tuple[str, str] = ("yes", "no"),
                   question: str | None = None) -> Parsed:
    """Yes or no (rules 4-6 of the module docstring).

    Args:
        reply: the model's reply.
        labels: the values returned for an affirmative and a negative answer
            (``("true", "false")`` for statements).
        question: the question asked, if known; only its kind is used
            (:func:`question_kind`: an existence question reads copulas differently).
    """
    kind = question_kind(question)
    text = _clean(reply)
    for clause, is_question in _clauses(text):
        if not clause.strip() or is_question or _HEDGE.search(clause):
            continue
        if _ZH_ECHO.search(clause.strip()):
            continue
        for rule, fn in ((YES_NO_BO, _bo_polarity), (YES_NO_ZH, _zh_polarity), (YES_NO_EN, _en_polarity)):
            got = fn(clause, kind)
            if got is not None:
                polarity, evidence = got
                return Parsed(labels[0] if polarity else labels[1], rule, f"{evidence} in {clause.strip()!r}")
    return UNRESOLVED


def pope_official(reply: str) -> Parsed:
    """The official POPE script's parse (Li et al., 2023; ``evaluate.py`` of
    github.com/RUCAIBox/POPE): the text before the first ``.``, commas removed, split on
    single spaces; ``No``, ``not`` or ``no`` among the words -> ``"no"``, otherwise
    ``"yes"`` (an empty or non-English reply is therefore "yes"). Never unresolved."""
    text = reply or ""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    neg = next((w for w in words if w in ("No", "not", "no")), None)
    if neg is not None:
        return Parsed("no", POPE_OFFICIAL, f"word: {neg}")
    return Parsed("yes", POPE_OFFICIAL, "no negative word in the first sentence")


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
        got = _letter(_clean(out), letters)
        if got is None or got[0] not in letters:
            return None
        return keys[letters.index(got[0])]


def resolve(parsed: Parsed, judge: Judge | None, question: str, reply: str,
            allowed: Mapping[str, str]) -> Parsed:
    """``parsed`` itself when resolved; else the judge's answer (rule ``judge``) if any."""
    if parsed.ok or judge is None:
        return parsed
    value = judge(question, reply, allowed)
    if value is None or value not in allowed:
        return parsed
    return Parsed(value, JUDGE, "judge model")
