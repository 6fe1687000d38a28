"""The evaluators' pixel budget (``min_pixels`` / ``max_pixels``, as the align and sft
stages): a large photo becomes the image-token count Qwen's processor gives it under the
budget, the budget in effect is recorded with the result, and bad budgets are config
errors naming the key."""

from __future__ import annotations

import pytest
from PIL import Image

from ftib.core.config import build
from ftib.core.errors import ConfigError
from ftib.evals.generate import TransformersGenerator
from ftib.evals.loaders import Item
from ftib.evals.pope import PopeEvaluator
from ftib.models.pixels import patch_grid_pixels, processor_budget

PHOTO = (1920, 1080)  # (width, height), a full-HD photo


@pytest.fixture(scope="module")
def vl_bundle():
    from ftib.models.bundle import load_bundle

    return load_bundle("tiny-qwen3-vl")


def _pope(**config):
    return PopeEvaluator(build(PopeEvaluator.Config, {"max_new_tokens": 1, **config}, where="evaluators.pope"))


def _items():
    photo = Image.new("RGB", PHOTO, (20, 90, 160))
    item = Item(id="random/0", question="ཁྱིམ་ཡོད་དམ།", gold="yes", meta={"split": "random"})
    item.load_image = lambda: photo  # an in-memory image, as the loaders return decoded ones
    return [item]


def _image_tokens_shown(bundle, evaluator, monkeypatch) -> tuple[list[int], object]:
    """Run ``evaluator`` on the photo; the image-token count of every prompt the model got."""
    seen: list[int] = []
    real = bundle.model.generate

    def spy(**kw):
        seen.append(int((kw["input_ids"] == bundle.chat.image_token_id).sum()))
        return real(**kw)

    monkeypatch.setattr(bundle.model, "generate", spy)
    result = evaluator.run(TransformersGenerator(bundle), items=_items())
    return seen, result


def _processor_tokens(image_processor, min_pixels: int, max_pixels: int) -> int:
    """Image tokens of the photo from the processor itself under the budget: its
    ``image_grid_thw`` (patches) over merge_size**2."""
    grid = image_processor(images=[Image.new("RGB", PHOTO)],
                           size={"shortest_edge": min_pixels, "longest_edge": max_pixels})["image_grid_thw"][0]
    return int(grid.prod()) // image_processor.merge_size ** 2


def test_max_pixels_sets_the_image_tokens_of_a_large_photo(vl_bundle, monkeypatch):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    ip = vl_bundle.chat.image_processor
    grid = patch_grid_pixels(ip)
    lo, hi = grid, 40 * grid
    seen, result = _image_tokens_shown(vl_bundle, _pope(min_pixels=lo, max_pixels=hi), monkeypatch)
    # Qwen's rounding: sides to multiples of patch * merge, area scaled down into [lo, hi].
    h, w = smart_resize(PHOTO[1], PHOTO[0], factor=ip.patch_size * ip.merge_size, min_pixels=lo, max_pixels=hi)
    expected = h * w // grid
    assert seen == [expected] == [_processor_tokens(ip, lo, hi)]
    assert lo <= h * w <= hi and expected > 16  # not the preset's own 4096-pixel budget
    assert result.details["pixel_budget"] == {"min_pixels": lo, "max_pixels": hi, "source": "config"}
    assert result.details["decoding"]["max_pixels"] == hi
    assert processor_budget(ip) == (4096, 4096)  # the bundle's own processor is untouched


def test_default_is_the_processor_budget_and_is_recorded(vl_bundle, monkeypatch):
    ip = vl_bundle.chat.image_processor
    seen, result = _image_tokens_shown(vl_bundle, _pope(), monkeypatch)
    assert seen == [_processor_tokens(ip, *processor_budget(ip))]
    assert result.details["pixel_budget"] == {"min_pixels": 4096, "max_pixels": 4096, "source": "processor"}


@pytest.mark.parametrize("config, match", [
    ({"max_pixels": 0}, r"evaluators\.pope: max_pixels must be >= 1"),
    ({"min_pixels": -5}, r"evaluators\.pope: min_pixels must be >= 1"),
    ({"min_pixels": 5000, "max_pixels": 4000}, r"evaluators\.pope: min_pixels \(5000\) is above max_pixels"),
    ({"max_pixels": "many"}, r"evaluators\.pope\.max_pixels"),
])
def test_bad_budgets_are_config_errors(config, match):
    with pytest.raises(ConfigError, match=match):
        _pope(**config)


@pytest.mark.parametrize("evaluator", ["mmbench", "mme", "binary_vqa", "corevqa"])
def test_every_image_benchmark_takes_the_budget(evaluator):
    from ftib.core.registry import EVALUATORS, Registry

    cls = Registry().load(EVALUATORS, evaluator)
    conf = build(cls.Config, {"min_pixels": 256, "max_pixels": 1024}, where=f"evaluators.{evaluator}")
    assert cls(conf).decoding().max_pixels == 1024
    with pytest.raises(ConfigError, match=rf"evaluators\.{evaluator}: min_pixels"):
        build(cls.Config, {"min_pixels": 2048, "max_pixels": 1024}, where=f"evaluators.{evaluator}")


def test_budget_below_one_patch_grid_fails_before_any_generation(vl_bundle, monkeypatch):
    grid = patch_grid_pixels(vl_bundle.chat.image_processor)

    def no_generation(**kw):
        raise AssertionError("generate was called despite a bad budget")

    monkeypatch.setattr(vl_bundle.model, "generate", no_generation)
    gen = TransformersGenerator(vl_bundle)
    with pytest.raises(ConfigError, match=r"pope\.max_pixels: 255 is below one patch grid .*16x16 = 256 pixels"):
        _pope(max_pixels=grid - 1).run(gen, items=_items())
    with pytest.raises(ConfigError, match=r"pope\.min_pixels: 255 is below one patch grid"):
        _pope(min_pixels=grid - 1, max_pixels=grid - 1).run(gen, items=_items())
    # The preset's own minimum (4096) is above a max_pixels of 1024 set alone.
    with pytest.raises(ConfigError, match=r"pope\.min_pixels \(4096\) is above max_pixels \(1024\)"):
        _pope(max_pixels=1024).run(gen, items=_items())
    with pytest.raises(ConfigError, match=r"pope\.min_pixels/max_pixels: the model takes no images"):
        from ftib.models.bundle import load_bundle

        _pope(max_pixels=4096).run(TransformersGenerator(load_bundle("tiny-qwen3")), items=_items())
