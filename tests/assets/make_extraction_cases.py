"""Authoring script of tests/assets/extraction_cases.jsonl: every expected value below is
hand-worked (the extractor is never asked). Run from the repository root:
    python tests/assets/make_extraction_cases.py
"""
import json

COL = {"A": "དམར་པོ", "B": "སྔོན་པོ", "C": "ལྗང་ཁུ", "D": "སེར་པོ"}
COLZ = {"A": "红色", "B": "蓝色", "C": "绿色", "D": "黄色"}
COLE = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}
CNT = {"A": "༢", "B": "༣", "C": "༤", "D": "༥"}
CNTA = {"A": "2", "B": "3", "C": "4", "D": "5"}
CNTW = {"A": "གཉིས", "B": "གསུམ", "C": "བཞི", "D": "ལྔ"}
TWO = {"A": "ཡོད", "B": "མེད"}
THREE = {"A": "cat", "B": "dog", "C": "bird"}
rows = []


def c(reply, options, expected, rule, why, **kw):
    rows.append({"kind": "choice", "reply": reply, "options": options, "expected": expected,
                 "rule": rule, "why": why, **kw})


def y(reply, expected, rule, why, question=None, kind="yes_no"):
    r = {"kind": kind, "reply": reply, "expected": expected, "rule": rule, "why": why}
    if question is not None:
        r["question"] = question
    rows.append(r)


# ---- option letters in every common shape, for every letter (CircularEval moves the
# gold answer through all four, so a shape that fails for one letter biases the score)
shapes = [
    ("{L}", "bare letter"), ("({L})", "bracketed letter"), ("[{L}]", "square-bracketed letter"),
    ("{L}.", "letter and full stop"), ("{L}。", "letter and Chinese full stop"),
    ("{L}: {T}", "letter, colon, option text"), ("{L}. {T}", "letter, dot, option text"),
    ("答案是{L}", "Chinese answer phrase"), ("答案：{L}", "Chinese answer colon"),
    ("我选{L}。", "Chinese 'I choose'"), ("{L}选项正确", "letter before 选项"),
    ("The answer is {L}.", "English answer phrase"), ("Answer: {L}", "English Answer:"),
    ("**{L}**", "markdown bold"), ("\\boxed{{{L}}}", "LaTeX boxed"),
    ("ལན་ནི་ {L}", "Tibetan answer phrase with a Latin letter"),
    ("The correct option is ({L}) because of the colour.", "option phrase, explanation after"),
    ("{L} is correct.", "letter and verb: a label, not the article"),
]
for L in "ABCD":
    for tmpl, why in shapes:
        c(tmpl.format(L=L, T=COL[L]), COL, L, "letter", why)
tib = {"A": "ཀ", "B": "ཁ", "C": "ག", "D": "ང"}
for L, t in tib.items():
    c(t, COL, L, "letter", "bare Tibetan option letter")
    c(f"{t}།", COL, L, "letter", "Tibetan option letter with shad")
    c(f"ལན་ནི་{t}་རེད།", COL, L, "letter", "Tibetan answer phrase, Tibetan letter, copula")
    c(f"གདམ་ག {t}", COL, L, "letter", "Tibetan 'option' word and letter")

c("ལན་དག་པ་ནི་ཁ་རེད།", COL, "B", "letter", "Tibetan 'the correct answer is' + Tibetan letter")
c("ལན་ཡང་དག་པ་ནི་ ང་ཡིན།", COL, "D", "letter", "Tibetan 'the right answer' + letter + copula")
c("ལན་འོས་ཤོས་ནི་ཀ་རེད།", COL, "A", "letter", "Tibetan 'the most fitting answer' + letter ཀ")
c("正确答案是C", COL, "C", "letter", "Chinese 'the correct answer is'")
c("གདམ་ཀ་ག་རེད།", COL, "C", "letter", "the spelling གདམ་ཀ of 'option'")
c("应该是B", COL, "B", "letter", "Chinese 'should be' + standalone letter")
c("B项", COL, "B", "letter", "letter before 项")
c("The best answer is: (B)", COL, "B", "letter", "answer phrase with a colon")

# ---- the English article vs the letter A
c("A is the right answer.", COL, "A", "letter", "'A is': a label")
c("A seems right to me.", COL, "A", "letter", "'A seems': a label")
c("A because the circle is red.", COL, "A", "letter", "'A because': a label")
c("I would say A since it is red.", COL, "A", "letter", "standalone A before 'since'")
c("A red circle, I think.", {"A": "a red circle", "B": "a blue square"}, "A", "option_text", "article 'A red' then the option's text")
c("A dog sits on the mat.", COL, None, "none", "'A dog': the article, no letter")
c("A cat.", THREE, "A", "option_text", "article, then the text of option A")
c("A bird.", THREE, "C", "option_text", "article 'A bird' is option C's text, not letter A")
c("It is A, the red one.", COL, "A", "letter", "standalone A before a comma")
c("A or B", COL, None, "none", "two letters: ambiguous")
c("Either A or C.", COL, None, "none", "two letters: ambiguous")
c("Looking at the picture, D seems right.", COL, "D", "letter", "one standalone letter")

# ---- echoed option lists
c("A. དམར་པོ B. སྔོན་པོ C. ལྗང་ཁུ D. སེར་པོ ལན་ནི་ C", COL, "C", "letter", "echoed option list removed, answer phrase decides")
c("A. red B. blue C. green D. yellow. The answer is D.", COLE, "D", "letter", "echoed English option list removed")
c("A. 红色 B. 蓝色 C. 绿色 D. 黄色 答案是B", COLZ, "B", "letter", "echoed Chinese option list removed")
c("A. red B. blue C. green D. yellow", COLE, None, "none", "only the echoed list: no answer")

# ---- option text
c("སྔོན་པོ་རེད།", COL, "B", "option_text", "Tibetan option text with copula")
c("ཁ་དོག་ནི་སེར་པོ་རེད།", COL, "D", "option_text", "ཁ in ཁ་དོག 'colour' is not the letter ཁ")
c("པར་ནང་གི་སྒོར་མོ་ནི་ལྗང་ཁུ་ཡིན།", COL, "C", "option_text", "option text inside a sentence")
c("是蓝色的。", COLZ, "B", "option_text", "Chinese option text")
c("图中的圆是黄色", COLZ, "D", "option_text", "Chinese option text in a sentence")
c("It is green.", COLE, "C", "option_text", "English option text")
c("red", COLE, "A", "option_text", "bare option text")
c("greenish", COLE, None, "none", "whole words: 'greenish' is not 'green'")
c("དམར་པོ་དང་སྔོན་པོ།", COL, None, "none", "two options named: ambiguous")
c("红色和蓝色", COLZ, None, "none", "two Chinese options named")
c("It is dark red.", {"A": "red", "B": "dark red", "C": "blue"}, "B", "option_text", "nested option: the outer one")

# ---- numbers for counting options
c("3", CNT, "B", "number", "Arabic digit, Tibetan-digit options")
c("There are 4 circles in the picture.", CNT, "C", "number", "one Arabic number in a sentence")
c("图中有5个", CNT, "D", "number", "Arabic digit in Chinese")
c("སྒོར་མོ་གསུམ་ཡོད།", CNT, "B", "number", "Tibetan number word, digit options")
c("སྒོར་མོ་བཞི་འདུག", CNTA, "C", "number", "Tibetan number word, Arabic options")
c("ལྔ།", CNT, "D", "number", "bare Tibetan number word")
c("གཉིས་ཡོད།", CNTA, "A", "number", "Tibetan number word with existential")
c("图中有三个圆。", CNT, "B", "number", "Chinese numeral with measure word")
c("两个", CNTA, "A", "number", "Chinese 两 = 2")
c("一共有四个", CNTA, "C", "number", "一共 'in total' is not the number one")
c("有三个三角形", CNTA, "B", "number", "三角 'triangle' is not three")
c("十分确定是五个", CNTA, "D", "number", "十分 'very' is not ten")
c("There are three.", CNT, "B", "number", "English number word")
c("Five circles.", CNTA, "D", "number", "capitalised English number word")
c("The red one has two dots.", CNTA, "A", "number", "'the red one' is a pronoun, two is the count")
c("གྲུ་གསུམ་གཉིས་ཡོད།", CNTA, "A", "number", "གྲུ་གསུམ 'triangle' is not three; གཉིས counts")
c("གྲུ་བཞི་ལྔ་འདུག", CNTA, "D", "number", "གྲུ་བཞི 'square' is not four")
c("3", CNTW, "B", "number", "Arabic digit, Tibetan number-word options")
c("༤", CNTW, "C", "number", "Tibetan digit, Tibetan number-word options")
c("三", CNTW, "B", "number", "Chinese numeral, Tibetan number-word options")
c("བཅུ་གཉིས་ཡོད།", {"A": "10", "B": "11", "C": "12", "D": "13"}, "C", "number", "Tibetan compound number 12")
c("十二个", {"A": "10", "B": "11", "C": "12", "D": "13"}, "C", "number", "Chinese compound number 12")
c("二十", {"A": "10", "B": "20", "C": "30", "D": "40"}, "B", "number", "Chinese tens")
c("3 or 4", CNT, None, "none", "two numbers: ambiguous")
c("སྒོར་མོ་གསུམ་དང་གྲུ་བཞི་གཉིས།", CNTA, None, "none", "two counts (3 and 2): ambiguous")
c("有三个红的和两个蓝的", CNTA, None, "none", "two Chinese counts: ambiguous")
c("9", CNTA, None, "none", "a number no option has")

# ---- unresolved: nothing to go on
c("", COL, None, "none", "empty reply")
c("   ", COL, None, "none", "blank reply")
c("ང་ཚོས་ཤེས་ཀྱི་མི་འདུག", {"A": "ཁྱི", "B": "ཞི་མི"}, None, "none", "'we do not know'")
c("I cannot tell from the image.", COLE, None, "none", "refusal")
c("无法判断", COLZ, None, "none", "Chinese refusal")
c("hmm", COL, None, "none", "nothing")

# ================================================================ yes / no
# Tibetan basics
for r, e, why in [
    ("ཡོད།", "yes", "existential"), ("ཡིན།", "yes", "copula"), ("རེད།", "yes", "bare copula"),
    ("འདུག", "yes", "evidential existential"), ("ལགས་སོ།", "yes", "honorific yes"),
    ("ཡོད། པར་འདིར་ཁྱི་གཅིག་ཡོད།", "yes", "first clause"), ("ཁྱི་གཅིག་འདུག", "yes", "existential in a sentence"),
    ("མེད།", "no", "negative existential"), ("མིན།", "no", "negative copula"), ("ཡོད་མ་རེད།", "no", "ཡོད + negated auxiliary"),
    ("མ་རེད། པར་ནང་ཁྱི་ཡོད།", "no", "first clause decides"), ("བདེན་པ་མ་རེད།", "no", "negation wins in its clause"),
    ("ཁྱི་མི་འདུག", "no", "negative evidential"), ("ཁྱི་མེད།", "no", "noun + negative existential"),
    ("ལགས། ཡོད།", "yes", "honorific first"), ("མ་རེད་ལགས།", "no", "negated copula, honorific"),
    ("བདེན་པ་རེད།", "yes", "true (copula)"), ("ནོར་འདུག", "no", "ནོར 'wrong' as a verb"),
    ("རྫུན་མ་རེད། ཡོད།", "no", "first clause has a negation"),
    ("ཡོད་པ་རེད།", "yes", "existential + auxiliary"), ("མེད་པ་རེད།", "no", "negative existential + auxiliary"),
    ("ཡིན་པ་རེད།", "yes", "copula + auxiliary"), ("མིན་པ་རེད།", "no", "negative copula + auxiliary"),
    ("ཁྱི་ཞིག་ཡོད་པ་འདྲ།", "yes", "'there seems to be a dog'"),
]:
    y(r, e, "yes_no_bo", why)

# Tibetan echoed "whether" constructions, each followed by a yes and by a no answer
echoes = [
    ("པར་འདིའི་ནང་ཁྱི་ཡོད་མེད་", "ཡོད་མེད"), ("དེ་ཞི་མི་ཡིན་མིན་", "ཡིན་མིན"), ("དེ་ཁྱི་རེད་མ་རེད་", "རེད་མ་རེད"),
    ("ཁྱི་འདུག་མ་འདུག་", "འདུག་མ་འདུག"), ("ཁྱི་ཡོད་དམ་", "question particle དམ"), ("དེ་ཞི་མི་ཡིན་ནམ་", "question particle ནམ"),
    ("ཁྱི་འདུག་གམ་", "question particle གམ"), ("ཁྱི་ཨེ་ཡོད་", "question prefix ཨེ"), ("དེ་དམར་པོ་ཡིན་མ་ཡིན་", "ཡིན་མ་ཡིན"),
    ("ཁྱི་ཡོད་མ་ཡོད་", "ཡོད་མ་ཡོད"),
]
for echo, name in echoes:
    y(f"{echo}ཞེས་པའི་དྲི་བའི་ལན་ནི། མེད།", "no", "yes_no_bo", f"echoed {name} skipped, then the answer (no)")
    y(f"{echo}ཞེས་པའི་དྲི་བའི་ལན་ནི། ཡོད།", "yes", "yes_no_bo", f"echoed {name} skipped, then the answer (yes)")
    y(f"{echo}ལན་ནི་མ་རེད།", "no", "yes_no_bo", f"echoed {name} and answer in one clause (no)")
    y(f"{echo}ཞེས་དྲིས་འདུག", None, "none", f"only the echoed {name}: no answer")

# whole syllables, compounds, conditionals
y("ནོར་བུ་ཞིག་ཡོད།", "yes", "yes_no_bo", "ནོར in ནོར་བུ 'jewel' is no negation")
y("ནོར་ཕྱུགས་མང་པོ་འདུག", "yes", "yes_no_bo", "ནོར in ནོར་ཕྱུགས 'livestock' is no negation")
y("ནོར་བུ་མེད།", "no", "yes_no_bo", "noun ནོར་བུ then a negative existential")
y("མིང་ཡོད།", "yes", "yes_no_bo", "མིང 'name' is not མིན")
y("ཡོད་ཚད་དམར་པོ་རེད།", "yes", "yes_no_bo", "ཡོད་ཚད 'all' asserts nothing; the copula answers", question="ཚང་མ་དམར་པོ་རེད་དམ།")
y("ཁྱི་ཡོད་ན་ཁ་དོག་ནག་པོ་རེད།", "yes", "yes_no_bo", "conditional ཡོད་ན skipped; copula answers a non-existence question")
y("ཁྱི་ཡོད་ན་ལེགས།", None, "none", "conditional only: 'it would be good if there were a dog'")

y("ནམ་མཁའ་སྔོན་པོ་རེད།", "yes", "yes_no_bo", "ནམ in ནམ་མཁའ 'sky' is no question particle")
y("ཆོས་དམ་པ་ཡོད།", "yes", "yes_no_bo", "དམ in དམ་པ 'holy' is no question particle")
y("ཁྱི་ཡོད་དམ་ལན་ནི་མེད།", "no", "yes_no_bo", "question particle before ལན 'answer' closes the echo")

# copula vs existential
EXQ = "པར་འདིའི་ནང་ཁྱི་ཡོད་དམ།"
y("དེ་ཞི་མི་རེད།", None, "none", "existence question: 'that is a cat' names a thing, no yes", question=EXQ)
y("དེ་ཞི་མི་རེད།", "yes", "yes_no_bo", "without the question a copula is a yes")
y("རེད།", "yes", "yes_no_bo", "existence question, bare copula answers", question=EXQ)
y("ཡིན་ལགས།", "yes", "yes_no_bo", "existence question, bare copula with honorific", question=EXQ)
y("ཁྱི་ཡོད་པ་རེད།", "yes", "yes_no_bo", "existential then auxiliary copula", question=EXQ)
y("ཁྱི་མེད་པ་རེད།", "no", "yes_no_bo", "negative existential then auxiliary", question=EXQ)
y("མ་རེད།", "no", "yes_no_bo", "existence question, bare negated copula", question=EXQ)
y("དེ་ཁྱི་མ་རེད།", None, "none", "existence question: 'that is not a dog' answers nothing", question=EXQ)
y("འདུག", "yes", "yes_no_bo", "existence question, evidential", question=EXQ)
y("ཁྱི་ནག་པོ་ཞིག་འདུག", "yes", "yes_no_bo", "existence question, noun + evidential", question=EXQ)

# Chinese basics
for r, e, why in [
    ("是的，图中有一只狗。", "yes", "是的"), ("有", "yes", "bare 有"), ("没有。", "no", "没有"), ("不对，那是蓝色的。", "no", "不对"),
    ("图中不存在猫", "no", "不存在"), ("是", "yes", "bare 是"), ("对", "yes", "对"), ("正确", "yes", "正确"),
    ("不是。", "no", "不是"), ("否", "no", "否"), ("没有猫。", "no", "没有 + noun"), ("无", "no", "无"),
    ("错", "no", "错"), ("存在", "yes", "存在"), ("有一只狗。", "yes", "有一"), ("確實有", "yes", "traditional 確實"),
    ("沒有", "no", "traditional 沒有"),
    ("图中并没有狗", "no", "并没有"), ("看不到狗", "no", "不 inside a verb complement"),
    ("可以看到一只狗", "yes", "可以 'can (see)'"), ("未发现狗", "no", "未 'not (found)'"),
]:
    y(r, e, "yes_no_zh", why)
# yes-expressions that contain a negation character, and neutral words
for r, e, why in [
    ("没错，图中有狗。", "yes", "没错 'exactly' is yes"), ("不错，是红色的。", "yes", "不错 'right' is yes"),
    ("沒錯", "yes", "traditional 沒錯"), ("非常确定，有。", "yes", "非 in 非常 'very' is no negation"),
    ("但是有一只猫", "yes", "是 in 但是 'but' is neutral; 有 answers"), ("还是有的", "yes", "是 in 还是 is neutral"),
    ("所有的都是红色", "yes", "有 in 所有 is neutral; 是 answers"), ("答案是没有", "no", "答案是 is neutral; 没有 answers"),
    ("答案是有", "yes", "答案是 is neutral; 有 answers"), ("不过没有狗", "no", "不 in 不过 'however' is neutral; 没有 answers"),
    ("无论如何，有。", "yes", "无 in 无论 is neutral"), ("对于这个问题，没有。", "no", "对 in 对于 is neutral"),
    ("颜色不同", "no", "不同 'different'"), ("没问题，有狗。", "yes", "没问题 'no problem' is yes"),
]:
    y(r, e, "yes_no_zh", why)
# Chinese echoed questions
for q in ("图中是否有狗", "图中有没有狗", "这是不是一只狗", "图中有狗吗", "这样对不对"):
    y(f"{q}？没有。", "no", "yes_no_zh", f"echo '{q}?' skipped (question mark), answer no")
    y(f"{q}：有的。", "yes", "yes_no_zh", f"echo '{q}' skipped (echo marker), answer yes")
    y(f"{q}，答案是没有", "no", "yes_no_zh", f"echo '{q}' skipped, answer in the next clause")
    y(q, None, "none", f"only the echo '{q}'")
# Chinese copula vs existential
ZQ = "图中有狗吗？"
y("这是一只猫。", None, "none", "existence question: 是 after a noun is a copula", question=ZQ)
y("是的。", "yes", "yes_no_zh", "existence question: bare 是的 answers", question=ZQ)
y("图中有一只狗", "yes", "yes_no_zh", "existence question: 有 answers", question=ZQ)
y("这是一只猫。", "yes", "yes_no_zh", "without the question 是 is a yes")

# English
for r, e, why in [
    ("Yes, there is a dog.", "yes", "leading yes"), ("yes", "yes", "bare yes"), ("No.", "no", "bare no"),
    ("No, there is a cat but no dog.", "no", "leading no"), ("There isn't a dog in the image.", "no", "-n't"),
    ("That is not correct.", "no", "negation wins"), ("**Yes** - the circle is red", "yes", "markdown"),
    ("YES", "yes", "upper case"), ("Nope.", "no", "nope"), ("Correct.", "yes", "correct"), ("False", "no", "false"),
    ("It is true.", "yes", "true"), ("Yeah, it's red.", "yes", "yeah"), ("I don't think so.", "no", "don't"),
    ("None.", "no", "none"), ("There are none.", "no", "none in a sentence"),
    ("Is there a dog in the image? No.", "no", "echoed question (?) skipped"),
    ("Is there a dog? Yes, there is.", "yes", "echoed question skipped, then yes"),
    ("As for whether there is a dog, no.", "no", "clause with 'whether' skipped"),
    ("You ask whether it is red. It is not.", "no", "whether-clause skipped, negation next"),
]:
    y(r, e, "yes_no_en", why)
EQ = "Is there a dog in the image?"
y("There is a dog in the image.", "yes", "yes_no_en", "existence question: 'there is' answers", question=EQ)
y("There are two dogs.", "yes", "yes_no_en", "existence question: 'there are' answers", question=EQ)
y("There is no dog.", "no", "yes_no_en", "existence question: 'no' wins", question=EQ)
y("There is a dog in the image.", None, "none", "without the question 'there is' decides nothing")
y("I know the answer.", None, "none", "'know' is not 'no'")
y("Nothing else to add.", None, "none", "'nothing' is not 'no'")
y("The notebook is red.", None, "none", "'notebook' is not 'not'")
y("Yesterday it rained.", None, "none", "'yesterday' is not 'yes'")
# hedges and empty
for r in ("I am not sure.", "不确定", "ང་མི་ཤེས།", "", "\n\n", "It is unclear.", "不一定", "ཧ་མ་གོ།"):
    y(r, None, "none", "hedge or empty")
# mixed script
y("Yes ཡོད།", "yes", "yes_no_bo", "mixed script: Tibetan first within a clause")
y("ཡོད། Yes", "yes", "yes_no_bo", "Tibetan clause first")
y("有。Yes.", "yes", "yes_no_zh", "Chinese clause first")

# true / false statements
for r, e, rule, why in [
    ("བདེན་པ་རེད།", "true", "yes_no_bo", "true"), ("རྫུན་པ་རེད།", "false", "yes_no_bo", "false"),
    ("False.", "false", "yes_no_en", "false"), ("正确", "true", "yes_no_zh", "correct"),
    ("错误", "false", "yes_no_zh", "wrong"), ("It is not true.", "false", "yes_no_en", "negated true"),
    ("没错", "true", "yes_no_zh", "没错 is an affirmation"), ("ནོར་འདུག", "false", "yes_no_bo", "wrong"),
    ("True, the dog is black.", "true", "yes_no_en", "leading true"),
    ("མི་བདེན།", "false", "yes_no_bo", "མི་བདེན 'untrue'"), ("ཡང་དག་པ་རེད།", "true", "yes_no_bo", "'correct' + copula"),
    ("没有错", "true", "yes_no_zh", "没有错 'nothing wrong' is an affirmation"),
]:
    y(r, e, rule, why, kind="true_false")

with open("tests/assets/extraction_cases.jsonl", "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
print(len(rows))
