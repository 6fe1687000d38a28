"""Chat template and multimodal input building (one place for every stage/evaluator)."""

from __future__ import annotations

import pytest
import torch

from ftib.core.errors import FtibError
from ftib.models.chat import CHAT_TEMPLATE, IGNORE_INDEX, IMAGE_PLACEHOLDER, render

CONVERSATIONS = [
    [{"role": "user", "content": "ཉ་ཡོད་དམ།"}],
    [{"role": "system", "content": "sys"},
     {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "ཉ་ག་ཚོད་ཡོད།"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "གསུམ་ཡོད།"}]},
     {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]},
     {"role": "assistant", "content": "B"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("gen", [False, True])
def test_python_render_equals_the_jinja_template(vl_bundle, messages, gen):
    text, spans, n_images = render(messages, add_generation_prompt=gen)
    jinja = vl_bundle.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                                    chat_template=CHAT_TEMPLATE)
    assert text == jinja
    assert n_images == text.count(IMAGE_PLACEHOLDER)
    assert [text[a:b] for a, b in spans] == [
        (m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]) + "<|im_end|>"
        for m in messages if m["role"] == "assistant"]
    # The saved tokenizer carries the same template.
    assert vl_bundle.tokenizer.chat_template == CHAT_TEMPLATE


def test_encode_image_tokens_types_and_labels(vl_bundle, scene_image):
    chat = vl_bundle.chat
    messages = CONVERSATIONS[1]
    enc = chat.encode(messages, [scene_image, scene_image])
    ids, labels, types = enc["input_ids"], enc["labels"], enc["mm_token_type_ids"]
    merge = vl_bundle.image_processor.merge_size
    per_image = (enc["image_grid_thw"].prod(-1) // merge**2).tolist()
    image_id = vl_bundle.tokenizer.image_token_id
    assert enc["image_grid_thw"].shape == (2, 3)
    assert int((ids == image_id).sum()) == sum(per_image)
    assert torch.equal(types, (ids == image_id).long())
    assert enc["pixel_values"].shape[0] == int(enc["image_grid_thw"].prod(-1).sum())
    # Each image's pads are contiguous, wrapped by vision start/end.
    vs, ve = vl_bundle.tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])
    starts = (ids == vs).nonzero().flatten().tolist()
    for s, n in zip(starts, per_image):
        assert ids[s + 1:s + 1 + n].eq(image_id).all() and ids[s + 1 + n] == ve
    # Labels cover exactly the assistant replies and their <|im_end|>.
    trained = vl_bundle.tokenizer.decode(ids[labels != IGNORE_INDEX])
    assert trained == "གསུམ་ཡོད།<|im_end|>B<|im_end|>"
    assert (labels[labels != IGNORE_INDEX] == ids[labels != IGNORE_INDEX]).all()


def test_encode_rejects_mismatched_images_and_truncated_images(vl_bundle, text_bundle, scene_image):
    with pytest.raises(FtibError, match="2 image part"):
        vl_bundle.chat.encode(CONVERSATIONS[1], [scene_image])
    with pytest.raises(FtibError, match="takes no images"):
        text_bundle.chat.encode(CONVERSATIONS[1], [scene_image, scene_image])
    with pytest.raises(FtibError, match="cuts through an image"):
        vl_bundle.chat.encode(CONVERSATIONS[1], [scene_image, scene_image], max_length=12)


def test_collate_pads_and_concatenates(vl_bundle, scene_image):
    chat = vl_bundle.chat
    a = chat.encode(CONVERSATIONS[1], [scene_image, scene_image])
    b = chat.encode([{"role": "user", "content": "ཉ།"}, {"role": "assistant", "content": "ཡོད།"}])
    for side in ("right", "left"):
        batch = chat.collate([a, b], padding_side=side)
        T = a["input_ids"].numel()
        assert batch["input_ids"].shape == (2, T)
        n_pad = T - b["input_ids"].numel()
        pad_slice = slice(T - n_pad, T) if side == "right" else slice(0, n_pad)
        assert (batch["input_ids"][1, pad_slice] == chat.pad_token_id).all()
        assert (batch["labels"][1, pad_slice] == IGNORE_INDEX).all()
        assert (batch["attention_mask"][1, pad_slice] == 0).all()
        assert batch["attention_mask"].sum() == a["input_ids"].numel() + b["input_ids"].numel()
        assert torch.equal(batch["pixel_values"], a["pixel_values"])
        assert torch.equal(batch["image_grid_thw"], a["image_grid_thw"])
