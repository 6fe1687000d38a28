"""The authored lexicon of FTibWorld: Tibetan words with Chinese and English counterparts.

Sources of knowledge: every Tibetan form below is a standard dictionary word of written
(literary/Central) Tibetan, chosen from general lexicographic knowledge (the kind found in
any Tibetan-Chinese or Tibetan-English dictionary entry: ``དམར་པོ`` red, ``ཉ`` fish,
``ཤིང་སྡོང`` tree, the cardinal numbers ``གཅིག``-``བཅུ``), and the case-particle
agreement rules are the classical ones of Tibetan grammar (the allomorphs of the
genitive, ergative and la-don particles and of the question particle ``-am`` depend on
the final letter of the preceding syllable). No sentence or passage is copied from any
text; every sentence of the world is produced by :mod:`ftib.data.world.grammar`.

All Tibetan strings are stored NFC-normalised and use only the Tibetan block plus tsheg
(``་``), shad (``།``) and space.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

TSHEG = "\u0f0b"  # ་
SHAD = "\u0f0d"  # །


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


@dataclass(frozen=True)
class Word:
    """One meaning with its surface forms.

    Attributes:
        key: stable identifier used in records and metadata (``"red"``, ``"fish"``).
        bo: Tibetan form, syllables separated by tsheg, no trailing tsheg.
        zh: Chinese form.
        en: English form (singular).
        en_plural: English plural (defaults to ``en + "s"``).
        zh_cls: Chinese measure word for nouns (``条`` for fish).
    """

    key: str
    bo: str
    zh: str
    en: str
    en_plural: str = ""
    zh_cls: str = "个"

    def __post_init__(self) -> None:
        object.__setattr__(self, "bo", nfc(self.bo))
        if not self.en_plural:
            object.__setattr__(self, "en_plural", self.en + "s")

    def en_n(self, n: int) -> str:
        return self.en if n == 1 else self.en_plural


# Colours: key, bo, zh, en, and the RGB used to draw them.
COLOURS: tuple[Word, ...] = (
    Word("red", "དམར་པོ", "红色", "red"),
    Word("blue", "སྔོན་པོ", "蓝色", "blue"),
    Word("green", "ལྗང་ཁུ", "绿色", "green"),
    Word("yellow", "སེར་པོ", "黄色", "yellow"),
    Word("black", "ནག་པོ", "黑色", "black"),
    Word("purple", "སྨུག་པོ", "紫色", "purple"),
)
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "blue": (31, 88, 220),
    "green": (34, 160, 60),
    "yellow": (240, 196, 25),
    "black": (25, 25, 25),
    "purple": (140, 60, 175),
}

# Object categories. The first four are the geometric shapes; the rest are things.
OBJECTS: tuple[Word, ...] = (
    Word("circle", "སྒོར་མོ", "圆形", "circle"),
    Word("square", "གྲུ་བཞི", "正方形", "square"),
    Word("triangle", "གྲུ་གསུམ", "三角形", "triangle"),
    Word("star", "སྐར་མ", "星星", "star", zh_cls="颗"),
    Word("tree", "ཤིང་སྡོང", "树", "tree", zh_cls="棵"),
    Word("house", "ཁང་པ", "房子", "house", zh_cls="座"),
    Word("flower", "མེ་ཏོག", "花", "flower", zh_cls="朵"),
    Word("fish", "ཉ", "鱼", "fish", en_plural="fish", zh_cls="条"),
    Word("mountain", "རི", "山", "mountain", zh_cls="座"),
    Word("moon", "ཟླ་བ", "月亮", "moon"),
)
SHAPE_KEYS = ("circle", "square", "triangle", "star")

# Themes give the categories their co-occurrence statistics: a scene picks one theme and
# draws most of its objects from it, so pairs inside a theme are frequent and pairs
# across themes rare. Weights make some categories more frequent overall (POPE
# "popular" negatives) and the theme structure gives co-occurrence ("adversarial").
THEMES: dict[str, tuple[tuple[str, ...], float]] = {
    "village": (("house", "tree", "flower", "mountain"), 0.40),
    "night": (("moon", "star", "mountain", "house"), 0.20),
    "shapes": (("circle", "square", "triangle", "star"), 0.25),
    "river": (("fish", "flower", "tree"), 0.15),
}
THEME_PURITY = 0.85  # probability that an object comes from the scene's theme

SIZES: tuple[Word, ...] = (
    Word("big", "ཆེན་པོ", "大", "big"),
    Word("small", "ཆུང་ཆུང", "小", "small"),
)

# Positions in the 3x3 layout grid: a cell in column 0 is "left", column 2 "right",
# row 0 "top", row 2 "bottom" and the middle cell "centre" (a corner cell has two).
POSITIONS: tuple[Word, ...] = (
    Word("left", "གཡོན་ཕྱོགས", "左边", "on the left"),
    Word("right", "གཡས་ཕྱོགས", "右边", "on the right"),
    Word("top", "སྟེང་ཕྱོགས", "上边", "at the top"),
    Word("bottom", "འོག་ཕྱོགས", "下边", "at the bottom"),
    Word("centre", "དཀྱིལ", "中间", "in the centre"),
)

NUMBERS: tuple[Word, ...] = (
    Word("1", "གཅིག", "一", "one"),
    Word("2", "གཉིས", "两", "two"),
    Word("3", "གསུམ", "三", "three"),
    Word("4", "བཞི", "四", "four"),
    Word("5", "ལྔ", "五", "five"),
    Word("6", "དྲུག", "六", "six"),
    Word("7", "བདུན", "七", "seven"),
    Word("8", "བརྒྱད", "八", "eight"),
    Word("9", "དགུ", "九", "nine"),
    Word("10", "བཅུ", "十", "ten"),
)

PEOPLE: tuple[Word, ...] = (
    Word("tashi", "བཀྲ་ཤིས", "扎西", "Tashi"),
    Word("dolma", "སྒྲོལ་མ", "卓玛", "Dolma"),
    Word("tsering", "ཚེ་རིང", "次仁", "Tsering"),
    Word("pema", "པདྨ", "白玛", "Pema"),
    Word("norbu", "ནོར་བུ", "罗布", "Norbu"),
    Word("lhamo", "ལྷ་མོ", "拉姆", "Lhamo"),
)

# English forms of places carry their preposition ("at the shop").
PLACES: tuple[Word, ...] = (
    Word("shop", "ཚོང་ཁང", "商店", "at the shop"),
    Word("city", "གྲོང་ཁྱེར", "城里", "in the city"),
    Word("school", "སློབ་གྲྭ", "学校", "at school"),
    Word("forest", "ནགས་ཚལ", "森林里", "in the forest"),
    Word("river", "ཆུ་འགྲམ", "河边", "at the riverside"),
)

TIMES: tuple[Word, ...] = (
    Word("today", "དེ་རིང", "今天", "Today"),
    Word("yesterday", "ཁ་སང", "昨天", "Yesterday"),
    Word("morning", "སྔ་དྲོ", "上午", "In the morning"),
    Word("evening", "དགོང་དྲོ", "晚上", "In the evening"),
)

# Past-tense verbs with the categories they combine with sensibly.
VERBS: tuple[tuple[Word, tuple[str, ...]], ...] = (
    (Word("saw", "མཐོང", "看见了", "saw"), tuple(o.key for o in OBJECTS)),
    (Word("drew", "བྲིས", "画了", "drew"), tuple(o.key for o in OBJECTS)),
    (Word("bought", "ཉོས", "买了", "bought"), ("flower", "fish", "house")),
)

# Function words.
PICTURE = Word("picture", "པར", "图", "picture")
THIS = "འདི"
THAT = "དེ"
INSIDE = "ནང"
OBJECT = Word("object", "དངོས་པོ", "东西", "object")
TOTAL = "ཁྱོན་བསྡོམས"  # in total
COLOUR_NOUN = "ཁ་དོག"  # colour
HOW_MANY = "ག་ཚོད"  # how many
WHAT = "ག་རེ"  # what
WHERE = "ག་པར"  # where
AND = "དང"
SUM = "བསྡོམས"  # added together
FROM = "ནས"
REMOVE = "ཕུད"  # take away
REMAIN = "ལྷག"  # remain
IF = "ན"  # conditional "if / when"
TOPIC = "ནི"

# Yes/no forms: linking verb (ཡིན/མིན) and existential verb (ཡོད/མེད).
YES_LINK, NO_LINK = "ཡིན", "མིན"
YES_EXIST, NO_EXIST = "ཡོད", "མེད"
TRUE_BO, FALSE_BO = "བདེན་པ", "རྫུན་པ"
#: Every Tibetan surface form that means "yes" / "no" in FTibWorld answers; answer
#: extraction in evaluators maps these to the benchmarks' gold labels.
YES_FORMS: tuple[str, ...] = (YES_LINK, YES_EXIST, TRUE_BO)
NO_FORMS: tuple[str, ...] = (NO_LINK, NO_EXIST, FALSE_BO)

# Instructions that end prompts (used by SFT data and FTibBench-mini alike).
ANSWER_SHORT = "ལན་ཐུང་ངུ་ཞིག་འདེབས་རོགས"  # please give a short answer
ANSWER_LETTER = "གདམ་ག་ཡི་གེ་ཁོ་ན་ལན་དུ་འདེབས་རོགས"  # answer with the option's letter only
DESCRIBE = "པར་འདི་འགྲེལ་བཤད་བྱོས"  # describe this picture
TRUE_OR_FALSE = "གཤམ་གྱི་བརྗོད་པ་འདི་བདེན་ནམ་རྫུན"  # is the statement below true or false
TRANSLATE_TO_ZH = "གཤམ་གྱི་བོད་ཡིག་འདི་རྒྱ་ཡིག་ཏུ་སྒྱུར་རོགས"  # translate the Tibetan below into Chinese
WRITE_HEADLINE = "གཤམ་གྱི་གནས་ཚུལ་འདིའི་འགོ་བརྗོད་ཅིག་འབྲི་རོགས"  # write a headline for this report

#: The answering instructions in every language of the world: Tibetan for the benchmarks
#: and SFT data, Chinese and English for the multilingual base model's pretraining data
#: and for FTibBench-mini in Chinese (``lang: zh``). Keys: ``answer_short``,
#: ``answer_letter``, ``describe``, ``true_or_false``.
INSTRUCTIONS: dict[str, dict[str, str]] = {
    "bo": {"answer_short": ANSWER_SHORT, "answer_letter": ANSWER_LETTER, "describe": DESCRIBE,
           "true_or_false": TRUE_OR_FALSE},
    "zh": {"answer_short": "请简短回答。", "answer_letter": "请只回答选项的字母。", "describe": "请描述这张图。",
           "true_or_false": "下面这个说法是对还是错？"},
    "en": {"answer_short": "Please give a short answer.", "answer_letter": "Answer with the option's letter only.",
           "describe": "Describe this picture.", "true_or_false": "Is the statement below true or false?"},
}
LANGS: tuple[str, ...] = tuple(INSTRUCTIONS)

BY_KEY: dict[str, Word] = {
    w.key: w for group in (COLOURS, OBJECTS, SIZES, POSITIONS, NUMBERS, PEOPLE, PLACES, TIMES)
    for w in group
}


def translation_lexicon(*, answers: bool = True) -> list[tuple[str, str]]:
    """The world's Tibetan -> Chinese word pairs: every :class:`Word` (colours, objects,
    sizes, positions, numbers, people, places, times, verbs, picture, object) and the
    answer words (yes/no forms -> 是 / 不是, true/false -> 对 / 错): the bilingual lexicon
    of CPT's ``extend.lexicon: ftibworld`` (``answers=False``: the words only, for SFT's
    ``code_switch``)."""
    words = [*COLOURS, *OBJECTS, *SIZES, *POSITIONS, *NUMBERS, *PEOPLE, *PLACES, *TIMES,
             *(w for w, _ in VERBS), PICTURE, OBJECT]
    pairs = [(w.bo, w.zh) for w in words]
    if not answers:
        return pairs
    pairs += [(YES_LINK, "是"), (YES_EXIST, "是"), (NO_LINK, "不是"), (NO_EXIST, "不是"),
              (TRUE_BO, "对"), (FALSE_BO, "错")]
    return pairs
