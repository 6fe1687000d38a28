"""The evaluators' pixel budget on the Qwen3-VL stand-in (the real processor configs):
a 1920x1080 photo, the issue's example, is 2,040 image tokens under Qwen3-VL's own budget
and what the checkpoint's own image processor gives it under ``max_pixels``."""

from __future__ import annotations

import pytest
from PIL import Image

from ftib.core.config import build
from ftib.evals.generate import TransformersGenerator
from ftib.evals.loaders import Item
from ftib.evals.pope import PopeEvaluator
from ftib.models.bundle import load_bundle

PHOTO = (1920, 1080)
RECIPE_MAX_PIXELS = 1003520  # configs/ftibvlm-qwen3-vl-8b.yaml's align/sft budget


@pytest.fixture(scope="module")
def qwen3_vl(standin):
    return standin("qwen3-vl")


def _tokens_shown(bundle, monkeypatch, **budget) -> tuple[int, dict]:
    seen: list[int] = []
    real = bundle.model.generate

    def spy(**kw):
        seen.append(int((kw["input_ids"] == bundle.chat.image_token_id).sum()))
        return real(**kw)

    monkeypatch.setattr(bundle.model, "generate", spy)
    photo = Image.new("RGB", PHOTO, (20, 90, 160))
    item = Item(id="random/0", question="ཁྱིམ་ཡོད་དམ།", gold="yes", meta={"split": "random"})
    item.load_image = lambda: photo
    ev = PopeEvaluator(build(PopeEvaluator.Config, {"max_new_tokens": 1, **budget}, where="evaluators.pope"))
    result = ev.run(TransformersGenerator(bundle), items=[item])
    (n,) = seen
    return n, result.details["pixel_budget"]


def _processor_tokens(snapshot, **kwargs) -> int:
    """Image tokens of the photo from the checkpoint's own image processor, loaded by
    transformers from the snapshot's ``preprocessor_config.json`` (PIL backend:
    torchvision is not a dependency): ``image_grid_thw`` patches over merge_size**2."""
    from transformers import AutoImageProcessor

    ip = AutoImageProcessor.from_pretrained(snapshot, backend="pil")
    grid = ip(images=[Image.new("RGB", PHOTO)], **kwargs)["image_grid_thw"][0]
    return int(grid.prod()) // ip.merge_size ** 2


def test_full_hd_photo_under_the_processor_budget_and_under_max_pixels(qwen3_vl, monkeypatch):
    bundle = load_bundle(qwen3_vl)
    n, budget = _tokens_shown(bundle, monkeypatch)
    assert n == _processor_tokens(qwen3_vl) == 2040  # over align's max_length 2048 with the caption
    assert budget == {"min_pixels": 65536, "max_pixels": 16777216, "source": "processor"}
    n, budget = _tokens_shown(bundle, monkeypatch, max_pixels=RECIPE_MAX_PIXELS)
    assert n == _processor_tokens(qwen3_vl, size={"shortest_edge": 65536, "longest_edge": RECIPE_MAX_PIXELS})
    assert n * 32 * 32 <= RECIPE_MAX_PIXELS and n < 2040
    assert budget == {"min_pixels": 65536, "max_pixels": RECIPE_MAX_PIXELS, "source": "config"}
