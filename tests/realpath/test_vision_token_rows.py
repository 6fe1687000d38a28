"""keep_vision_token_rows finds the real checkpoints' vision tokens: on the hub-faithful
stand-ins of Qwen3-VL-8B-Instruct and Qwen3.5-9B (their config.json and tokenizer), the
ids it keeps are those of the four vision special tokens."""

from __future__ import annotations

import pytest

from ftib.models.bundle import load_bundle
from ftib.stages.common import vision_token_ids

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


@pytest.mark.parametrize("family", ["qwen3-vl", "qwen3.5"])
def test_vision_token_ids_of_the_real_configs(standin, family):
    bundle = load_bundle(str(standin(family)))
    ids = vision_token_ids(bundle.model)
    assert bundle.chat.tokenizer.convert_ids_to_tokens(ids) == VISION_TOKENS
