"""The evaluators' pixel budget on the Qwen3-VL stand-in (the real processor configs):
a 1920x1080 photo, the issue's example, is 2,040 image tokens under Qwen3-VL's own budget,
and under ``max_pixels`` what the checkpoint's own image processor gives it. (The full
generate path is covered on the tiny preset, tests/evals/test_pixel_budget.py.)"""

from __future__ import annotations

import pytest
from PIL import Image

from ftib.core.config import build
from ftib.evals.generate import TransformersGenerator
from ftib.evals.pope import PopeEvaluator
from ftib.models.bundle import load_bundle

PHOTO = (1920, 1080)
RECIPE_MAX_PIXELS = 1003520  # configs/ftibvlm-qwen3-vl-8b.yaml's align/sft budget


@pytest.fixture(scope="module")
def qwen3_vl(standin):
    return standin("qwen3-vl")


def _checkpoint_tokens(snapshot, **kwargs) -> int:
    """Image tokens of the photo from the checkpoint's own image processor, loaded by
    transformers from the snapshot's ``preprocessor_config.json`` (PIL backend:
    torchvision is not a dependency): ``image_grid_thw`` patches over merge_size**2."""
    from transformers import AutoImageProcessor

    ip = AutoImageProcessor.from_pretrained(snapshot, backend="pil")
    grid = ip(images=[Image.new("RGB", PHOTO)], **kwargs)["image_grid_thw"][0]
    return int(grid.prod()) // ip.merge_size ** 2


@pytest.mark.parametrize("config, size", [
    ({}, None),
    ({"max_pixels": RECIPE_MAX_PIXELS}, {"shortest_edge": 65536, "longest_edge": RECIPE_MAX_PIXELS}),
])
def test_full_hd_photo_tokens_equal_the_checkpoint_processor(qwen3_vl, config, size):
    bundle = load_bundle(qwen3_vl)
    ev = PopeEvaluator(build(PopeEvaluator.Config, config, where="evaluators.pope"))
    gen = TransformersGenerator(bundle)
    budget = ev.pixel_budget(gen, ev.decoding())
    chat = gen.chat_for(ev.decoding(), where="pope")
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "ཁྱིམ་ཡོད་དམ།"}]}]
    ids = chat.encode(turn, [Image.new("RGB", PHOTO, (20, 90, 160))], add_generation_prompt=True)["input_ids"]
    n = int((ids == chat.image_token_id).sum())
    if size is None:
        assert n == _checkpoint_tokens(qwen3_vl) == 2040  # with a caption, over align's max_length 2048
        assert budget == {"min_pixels": 65536, "max_pixels": 16777216, "source": "processor"}
    else:
        assert n == _checkpoint_tokens(qwen3_vl, size=size) < 2040
        assert n * 32 * 32 <= RECIPE_MAX_PIXELS
        assert budget == {"min_pixels": 65536, "max_pixels": RECIPE_MAX_PIXELS, "source": "config"}
