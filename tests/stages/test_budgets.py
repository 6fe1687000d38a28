"""Nothing dropped silently: the pixel budget (min_pixels / max_pixels) and the overflow
policy of over-long conversations (error | truncate | drop, max_drop_share)."""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from ftib.core.errors import ConfigError, FtibError
from ftib.models.bundle import load_bundle
from ftib.models.pixels import patch_grid_pixels, processor_budget, with_pixel_budget
from ftib.stages.common import ChatTask

LOG = logging.getLogger("test.budgets")


def _image_tokens(chat, image):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "ཁ་དོག"}]},
            {"role": "assistant", "content": "དམར་པོ།"}]
    ids = chat.encode(msgs, [image])["input_ids"]
    return int((ids == chat.image_token_id).sum())


def test_pixel_budget_sets_the_image_token_count_and_leaves_the_model_processor_alone():
    chat = load_bundle("tiny-qwen3-vl").chat
    ip = chat.image_processor
    grid = patch_grid_pixels(ip)
    before = processor_budget(ip)
    photo = Image.new("RGB", (640, 480), (10, 120, 30))
    full = _image_tokens(chat, photo)
    small = with_pixel_budget(chat, grid, 4 * grid, where="stages.align")
    assert _image_tokens(small, photo) <= 4 < full
    assert processor_budget(ip) == before and _image_tokens(chat, photo) == full
    assert with_pixel_budget(chat, None, None, where="x") is chat


def test_pixel_budget_below_one_patch_grid_is_a_config_error():
    chat = load_bundle("tiny-qwen3-vl").chat
    grid = patch_grid_pixels(chat.image_processor)
    with pytest.raises(ConfigError, match=r"stages\.sft\.max_pixels: .* below one patch grid"):
        with_pixel_budget(chat, None, grid - 1, where="stages.sft")
    with pytest.raises(ConfigError, match=r"stages\.sft\.min_pixels .* above max_pixels"):
        with_pixel_budget(chat, 4 * grid, 2 * grid, where="stages.sft")
    with pytest.raises(ConfigError, match="takes no images"):
        with_pixel_budget(load_bundle("tiny-qwen3").chat, None, 4096, where="stages.sft")


@pytest.mark.parametrize("stage", ["align", "sft"])
def test_chat_stage_configs_check_their_data_fields(stage, tmp_path):
    """align and sft share their data-field checks (stages.common.check_chat_data)."""
    from ftib.core.config import build
    from ftib.stages.align import AlignConfig
    from ftib.stages.sft import SFTConfig

    cls = {"align": AlignConfig, "sft": SFTConfig}[stage]
    with pytest.raises(ConfigError, match=r"max_drop_share must lie in \[0, 1\], got 1.5"):
        build(cls, {"max_drop_share": 1.5}, where=f"stages.{stage}")
    with pytest.raises(ConfigError, match="min_pixels"):
        build(cls, {"min_pixels": 5000, "max_pixels": 4000}, where=f"stages.{stage}")
    with pytest.raises(ConfigError, match=r"data: .*missing' does not exist"):
        build(cls, {"data": str(tmp_path / "missing")}, where=f"stages.{stage}")


def test_stage_configs_check_the_pixel_range():
    from ftib.core.config import build

    from ftib.stages.align import AlignConfig

    with pytest.raises(ConfigError, match="min_pixels"):
        build(AlignConfig, {"min_pixels": 5000, "max_pixels": 4000}, where="stages.align")
    with pytest.raises(ConfigError, match="overflow"):
        build(AlignConfig, {"overflow": "skip"}, where="stages.align")


def _records(n_long, n_short, path="data/sft.jsonl"):
    long = "ཀ་" * 200
    rows = []
    for i in range(n_long + n_short):
        text = long if i < n_long else "དམར་པོ།"
        rows.append(([{"role": "user", "content": "ཁ་དོག"}, {"role": "assistant", "content": text}], [],
                     f"{path} (id r{i})"))
    return rows


def _task(records, **kw):
    chat = load_bundle("tiny-qwen3").chat
    return ChatTask(None, [], chat, records, max_length=64, save=None, logger=LOG, **kw)


def test_overflow_error_names_the_record():
    with pytest.raises(FtibError, match=r"data/sft\.jsonl \(id r0\): \d+ tokens exceed max_length=64"):
        _task(_records(1, 3), overflow="error")


def test_drop_past_the_share_stops_with_the_file_and_ids():
    with pytest.raises(FtibError, match=r"1 of 50 conversations \(2\.0%\).*max_drop_share=1\.0%.*id r0"):
        _task(_records(1, 49), overflow="drop")


def test_drop_within_the_share_is_counted_and_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="test.budgets"):
        task = _task(_records(2, 8), overflow="drop", max_drop_share=0.25)
    assert task.stats["dropped"] == 2 and len(task.samples) == 8
    assert "dropped 2 of 10" in caplog.text and "id r0" in caplog.text and "id r1" in caplog.text
    kept = _task(_records(2, 8), overflow="truncate")
    assert kept.stats["truncated"] == 2 and kept.stats["dropped"] == 0 and len(kept.samples) == 10
