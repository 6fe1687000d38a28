"""A small grammar of Tibetan with aligned Chinese and English renderings.

Every function turns one *meaning* (a scene fact, an event, a sum) into a
:class:`Sentence` holding the Tibetan, Chinese and English surface forms, so any
Tibetan sentence of the world has a translation by construction.

Tibetan morphology follows the classical agreement rules: the genitive
(``གི/ཀྱི/གྱི/འི``), ergative (``གིས/ཀྱིས/གྱིས/ས``), la-don (``ཏུ/དུ/སུ/ར``) and
question (``-am``) particles take their form from the final letter of the preceding
syllable; a sentence ends with shad, written after a tsheg when the last syllable ends
in ``ང`` and omitted after ``ག``, as in standard orthography. Word order is SOV with
noun-adjective-numeral noun phrases (``ཉ་དམར་པོ་གསུམ``, "three red fish").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ftib.data.world import lexicon as lx
from ftib.data.world.lexicon import SHAD, TSHEG, Word, nfc

_BASE_CONSONANTS = {chr(c) for c in range(0x0F40, 0x0F6D)}
_SUFFIX_LETTERS = set("གངདནབམའརལས")


@dataclass(frozen=True)
class Sentence:
    """One meaning in three languages."""

    bo: str
    zh: str
    en: str


def final_letter(word: str) -> str | None:
    """The suffix letter closing ``word``'s last syllable, or None for an open syllable.

    A syllable is open when it ends in a vowel sign or a subjoined letter, or when it has
    a single base consonant (the root, e.g. ``མ`` in ``སྒྲོལ་མ``).
    """
    syllable = word.rstrip(TSHEG).split(TSHEG)[-1]
    if not syllable:
        raise ValueError(f"empty Tibetan word {word!r}")
    last = syllable[-1]
    if last not in _BASE_CONSONANTS:
        return None
    if sum(ch in _BASE_CONSONANTS for ch in syllable) < 2:
        return None
    return last if last in _SUFFIX_LETTERS else None


def _attach(word: str, table: dict[str | None, str]) -> str:
    fin = final_letter(word)
    if fin is None or fin == "འ":
        # Open syllables (and suffix འ) fuse with the particle: པདྨ + འི -> པདྨའི.
        open_form = table[None]
        if fin == "འ" and open_form.startswith("འ"):
            open_form = open_form[1:]
        return nfc(word + open_form)
    return nfc(word + TSHEG + table[fin])


_LETTER = {"g": "ག", "ng": "ང", "d": "ད", "n": "ན", "b": "བ", "m": "མ", "a": "འ", "r": "ར",
           "l": "ལ", "s": "ས"}


def _t(spec: dict[str, str], open_form: str) -> dict[str | None, str]:
    out: dict[str | None, str] = {None: open_form}
    for letters, form in spec.items():
        for name in letters.split(","):
            out[_LETTER[name]] = form
    return out


GENITIVE = _t({"g,ng": "གི", "d,b,s": "ཀྱི", "n,m,r,l": "གྱི"}, "འི")
ERGATIVE = _t({"g,ng": "གིས", "d,b,s": "ཀྱིས", "n,m,r,l": "གྱིས"}, "ས")
LADON = _t({"g,b": "ཏུ", "ng,d,n,m,r,l": "དུ", "s": "སུ"}, "ར")
QUESTION = _t({k: v for k, v in (
    ("g", "གམ"), ("ng", "ངམ"), ("d", "དམ"), ("n", "ནམ"), ("b", "བམ"), ("m", "མམ"),
    ("r", "རམ"), ("l", "ལམ"), ("s", "སམ"),
)}, "འམ")


def genitive(word: str) -> str:
    return _attach(word, GENITIVE)


def ergative(word: str) -> str:
    return _attach(word, ERGATIVE)


def ladon(word: str) -> str:
    return _attach(word, LADON)


def question(word: str) -> str:
    """``ཡོད`` -> ``ཡོད་དམ``: the interrogative particle agreeing with the last syllable."""
    return _attach(word, QUESTION)


def join(*parts: str) -> str:
    """Join Tibetan words with tsheg (empty parts skipped)."""
    return nfc(TSHEG.join(p.strip(TSHEG) for p in parts if p))


def end(clause: str) -> str:
    """Close a clause with shad, following the tsheg-before-shad and ག rules."""
    clause = clause.rstrip(TSHEG)
    fin = clause[-1]
    if fin == "ང":
        return nfc(clause + TSHEG + SHAD)
    if fin == "ག" and final_letter(clause) == "ག":
        return nfc(clause)
    return nfc(clause + SHAD)


def paragraph(sentences: list[str]) -> str:
    """Tibetan sentences are separated by a space after the shad."""
    return " ".join(sentences)


# ---------------------------------------------------------------------------- phrases


@dataclass(frozen=True)
class NP:
    """A noun phrase: category, optional colour, size and count, maybe definite."""

    obj: Word
    colour: Word | None = None
    size: Word | None = None
    count: int | None = None
    definite: bool = False

    def bo(self) -> str:
        parts = [self.obj.bo]
        if self.colour:
            parts.append(self.colour.bo)
        if self.size:
            parts.append(self.size.bo)
        if self.count is not None:
            parts.append(number(self.count).bo)
        if self.definite:
            parts.append(lx.THAT)
        return join(*parts)

    def zh(self) -> str:
        head = ""
        if self.definite:
            head = "那" + (number(self.count).zh if self.count and self.count > 1 else "") + self.obj.zh_cls
        elif self.count is not None:
            head = number(self.count).zh + self.obj.zh_cls
        colour = f"{self.colour.zh}的" if self.colour else ""
        size = self.size.zh if self.size else ""
        return f"{head}{colour}{size}{self.obj.zh}"

    def en(self) -> str:
        n = self.count if self.count is not None else 1
        words = []
        if self.definite:
            words.append("the")
            if self.count is not None and self.count > 1:
                words.append(number(self.count).en)
        elif self.count is not None:
            words.append(number(self.count).en)
        else:
            words.append("an" if (self.size or self.colour or self.obj).en[0] in "aeiou" else "a")
        if self.size:
            words.append(self.size.en)
        if self.colour:
            words.append(self.colour.en)
        words.append(self.obj.en_n(n))
        return " ".join(words)


def number(n: int) -> Word:
    if not 1 <= n <= len(lx.NUMBERS):
        raise ValueError(f"FTibWorld numbers run from 1 to {len(lx.NUMBERS)}, got {n}")
    return lx.NUMBERS[n - 1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# Paired frames: (Tibetan "in this picture" frame, Chinese frame, English frame).
_IN_PICTURE = (
    (join(genitive(join(lx.PICTURE.bo, lx.THIS)), lx.INSIDE, "ན"), "图里", "in the picture"),
    (ladon(join(lx.PICTURE.bo, lx.THIS)), "这张图里", "in this picture"),
    (join(genitive(join(lx.PICTURE.bo, lx.THIS)), ladon(lx.INSIDE)), "图中", "in the picture"),
)


def in_picture(rng: random.Random | None = None) -> tuple[str, str, str]:
    return _IN_PICTURE[rng.randrange(len(_IN_PICTURE)) if rng else 0]


# --------------------------------------------------------------------------- sentences


def exists(np: NP, rng: random.Random | None = None) -> Sentence:
    """"There are <np> in the picture." (``np`` indefinite with a count)."""
    bo_frame, zh_frame, en_frame = in_picture(rng)
    be = "is" if (np.count or 1) == 1 else "are"
    return Sentence(
        end(join(bo_frame, np.bo(), lx.YES_EXIST)),
        f"{zh_frame}有{np.zh()}。",
        f"There {be} {np.en()} {en_frame}.",
    )


def located(np: NP, position: Word) -> Sentence:
    """"The <np> is <position>."."""
    return Sentence(
        end(join(np.bo(), lx.TOPIC, position.bo, "ན", lx.YES_EXIST)),
        f"{np.zh()}在{position.zh}。",
        f"{_cap(np.en())} {'is' if (np.count or 1) == 1 else 'are'} {position.en}.",
    )


def total(n: int, rng: random.Random | None = None) -> Sentence:
    bo_frame, zh_frame, en_frame = in_picture(rng)
    return Sentence(
        end(join(bo_frame, lx.TOTAL, lx.OBJECT.bo, number(n).bo, lx.YES_EXIST)),
        f"{zh_frame}一共有{number(n).zh}个东西。",
        f"There {'is' if n == 1 else 'are'} {number(n).en} {lx.OBJECT.en_n(n)} {en_frame} in total.",
    )


def event(time: Word | None, person: Word, place: Word | None, verb: Word, np: NP) -> Sentence:
    """"<time> <person> <verb> <np> <place>." in the past tense."""
    bo = join(time.bo if time else "", ergative(person.bo), ladon(place.bo) if place else "", np.bo(), verb.bo)
    zh = f"{time.zh if time else ''}{person.zh}{'在' + place.zh if place else ''}{verb.zh}{np.zh()}。"
    en = " ".join(x for x in (time.en + "," if time else "", person.en, verb.en, np.en(),
                               place.en if place else "") if x) + "."
    return Sentence(end(bo), zh, _cap(en))


def also_there(place: Word, np: NP) -> Sentence:
    """"There were also <np> <place>."."""
    return Sentence(
        end(join(ladon(place.bo), np.bo(), "ཡང", lx.YES_EXIST)),
        f"{place.zh}也有{np.zh()}。",
        f"There {'was' if (np.count or 1) == 1 else 'were'} also {np.en()} {place.en}.",
    )


def addition(obj: Word, a: int, b: int) -> Sentence:
    c = a + b
    bo = join(obj.bo, number(a).bo, lx.AND, obj.bo, number(b).bo, lx.SUM, lx.IF, obj.bo, number(c).bo,
              lx.YES_LINK)
    zh = (f"{number(a).zh}{obj.zh_cls}{obj.zh}加{number(b).zh}{obj.zh_cls}{obj.zh}"
          f"是{number(c).zh}{obj.zh_cls}{obj.zh}。")
    en = f"{_cap(number(a).en)} {obj.en_n(a)} plus {number(b).en} {obj.en_n(b)} make {number(c).en} {obj.en_n(c)}."
    return Sentence(end(bo), zh, en)


def subtraction(obj: Word, a: int, b: int) -> Sentence:
    c = a - b
    bo = join(obj.bo, number(a).bo, lx.FROM, number(b).bo, lx.REMOVE, lx.IF, number(c).bo, lx.REMAIN)
    zh = f"{number(a).zh}{obj.zh_cls}{obj.zh}拿走{number(b).zh}{obj.zh_cls}，还剩{number(c).zh}{obj.zh_cls}。"
    en = f"Take {number(b).en} away from {number(a).en} {obj.en_n(a)} and {number(c).en} remain."
    return Sentence(end(bo), zh, en)


# --------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class QA:
    """A Tibetan question with its Tibetan answer, plus zh/en renderings and gold label.

    ``label`` is ``"yes"``/``"no"`` for polar questions, else the answer's key
    (a colour key, a number, a position key).
    """

    question: Sentence
    answer: Sentence
    label: str


def _yn(yes: bool, link: bool) -> Sentence:
    if link:
        word = lx.YES_LINK if yes else lx.NO_LINK
    else:
        word = lx.YES_EXIST if yes else lx.NO_EXIST
    return Sentence(end(word), "是。" if yes else "不是。", "Yes." if yes else "No.")


def ask_exists(obj: Word, present: bool, rng: random.Random | None = None) -> QA:
    bo_frame, zh_frame, en_frame = in_picture(rng)
    q = Sentence(end(join(bo_frame, obj.bo, question(lx.YES_EXIST))), f"{zh_frame}有{obj.zh}吗？",
                 f"Is there {NP(obj).en()} {en_frame}?")
    return QA(q, _yn(present, link=False), "yes" if present else "no")


def _definite(np: NP) -> NP:
    return NP(np.obj, np.colour, np.size, np.count, definite=True)


def ask_colour_is(np: NP, colour: Word, truth: bool) -> QA:
    d = _definite(np)
    q = Sentence(end(join(d.bo(), colour.bo, question(lx.YES_LINK))),
                 f"{d.zh()}是{colour.zh}的吗？", f"Is {d.en()} {colour.en}?")
    return QA(q, _yn(truth, link=True), "yes" if truth else "no")


def ask_colour(np: NP, colour: Word) -> QA:
    d = _definite(np)
    q = Sentence(end(join(genitive(d.bo()), lx.COLOUR_NOUN, lx.WHAT, lx.YES_LINK)),
                 f"{d.zh()}是什么颜色的？", f"What colour is {d.en()}?")
    a = Sentence(end(join(colour.bo, lx.YES_LINK)), f"{colour.zh}。", f"{_cap(colour.en)}.")
    return QA(q, a, colour.key)


def ask_count(obj: Word, n: int, rng: random.Random | None = None) -> QA:
    bo_frame, zh_frame, en_frame = in_picture(rng)
    q = Sentence(end(join(bo_frame, obj.bo, lx.HOW_MANY, lx.YES_EXIST)), f"{zh_frame}有几{obj.zh_cls}{obj.zh}？",
                 f"How many {obj.en_plural} are there {en_frame}?")
    a = Sentence(end(join(number(n).bo, lx.YES_EXIST)), f"{number(n).zh}{obj.zh_cls}。", f"{_cap(number(n).en)}.")
    return QA(q, a, str(n))


def ask_count_is(obj: Word, n: int, truth: bool, rng: random.Random | None = None) -> QA:
    bo_frame, zh_frame, en_frame = in_picture(rng)
    q = Sentence(end(join(bo_frame, obj.bo, number(n).bo, question(lx.YES_EXIST))),
                 f"{zh_frame}有{number(n).zh}{obj.zh_cls}{obj.zh}吗？",
                 f"Are there exactly {number(n).en} {obj.en_n(n)} {en_frame}?")
    return QA(q, _yn(truth, link=False), "yes" if truth else "no")


def ask_total(n: int, rng: random.Random | None = None) -> QA:
    bo_frame, zh_frame, en_frame = in_picture(rng)
    q = Sentence(end(join(bo_frame, lx.OBJECT.bo, lx.HOW_MANY, lx.YES_EXIST)), f"{zh_frame}一共有几个东西？",
                 f"How many objects are there {en_frame}?")
    a = Sentence(end(join(number(n).bo, lx.YES_EXIST)), f"{number(n).zh}个。", f"{_cap(number(n).en)}.")
    return QA(q, a, str(n))


def ask_which_object(rng: random.Random | None = None) -> Sentence:
    """"What object is in the picture?" (multiple choice over categories)."""
    bo_frame, zh_frame, en_frame = in_picture(rng)
    return Sentence(end(join(bo_frame, lx.OBJECT.bo, lx.WHAT, lx.YES_EXIST)), f"{zh_frame}有什么东西？",
                    f"Which object is there {en_frame}?")


def ask_position(np: NP, position: Word) -> QA:
    d = _definite(np)
    q = Sentence(end(join(d.bo(), lx.WHERE, lx.YES_EXIST)), f"{d.zh()}在哪里？", f"Where is {d.en()}?")
    a = Sentence(end(join(position.bo, "ན", lx.YES_EXIST)), f"在{position.zh}。", f"{_cap(position.en)}.")
    return QA(q, a, position.key)


def ask_position_is(np: NP, position: Word, truth: bool) -> QA:
    d = _definite(np)
    q = Sentence(end(join(d.bo(), position.bo, "ན", question(lx.YES_EXIST))),
                 f"{d.zh()}在{position.zh}吗？", f"Is {d.en()} {position.en}?")
    return QA(q, _yn(truth, link=False), "yes" if truth else "no")


def ask_sum_is(a: Word, b: Word, n: int, truth: bool) -> QA:
    """"Do the number of <a> and the number of <b> add up to n?"."""
    q = Sentence(
        end(join(genitive(a.bo), "གྲངས་ཀ", lx.AND, genitive(b.bo), "གྲངས་ཀ", lx.SUM, lx.IF, number(n).bo,
                 question(lx.YES_LINK))),
        f"{a.zh}的数量加{b.zh}的数量等于{number(n).zh}吗？",
        f"Do the {a.en_plural} and the {b.en_plural} add up to {number(n).en}?",
    )
    return QA(q, _yn(truth, link=True), "yes" if truth else "no")


def statement_answer(truth: bool) -> Sentence:
    word = lx.TRUE_BO if truth else lx.FALSE_BO
    return Sentence(end(word), "对。" if truth else "错。", "True." if truth else "False.")


def with_instruction(bo_question: str, instruction: str) -> str:
    """A question followed by an answering instruction (e.g. :data:`lexicon.ANSWER_SHORT`)."""
    return nfc(bo_question + " " + end(instruction))
