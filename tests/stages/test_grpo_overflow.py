"""GRPO prompts over ``max_prompt_length``: the ``overflow`` policy (error | drop) and
``max_drop_share``, the same shape and messages as the chat stages' (test_budgets.py)."""

from __future__ import annotations

import logging

import pytest

from ftib.core.config import build
from ftib.core.errors import ConfigError, FtibError
from ftib.models.bundle import load_bundle
from ftib.stages.grpo import GRPOConfig, _fitting_prompts

LOG = logging.getLogger("test.grpo_overflow")
LANG_ONLY = [{"name": "language", "weight": 1.0, "config": {"scripts": ["han"]}}]
SOURCE = "data/translation.jsonl"


def _cfg(**kw):
    return build(GRPOConfig, {"rewards": LANG_ONLY, "max_prompt_length": 64, **kw}, where="stages.grpo")


def _prompts(n_long, n_short):
    return [{"id": f"p{i}", "prompt": "ཀ་" * 200 if i < n_long else "དམར་པོ།", "source": SOURCE}
            for i in range(n_long + n_short)]


@pytest.fixture(scope="module")
def chat():
    return load_bundle("tiny-qwen3").chat


def test_defaults_match_the_chat_stages():
    from ftib.stages.sft import SFTConfig

    g, s = _cfg(), SFTConfig()
    assert (g.overflow, g.max_drop_share) == (s.overflow, s.max_drop_share) == ("drop", 0.01)


def test_overflow_error_names_the_file_and_id(chat):
    with pytest.raises(FtibError, match=r"data/translation\.jsonl \(id p0\) \(\d+ tokens\) exceed "
                                        r"max_prompt_length=64 \(overflow: error"):
        _fitting_prompts(_prompts(1, 3), chat, _cfg(overflow="error"), LOG)


def test_overflow_error_passes_when_every_prompt_fits(chat):
    keep, dropped = _fitting_prompts(_prompts(0, 3), chat, _cfg(overflow="error"), LOG)
    assert [p["id"] for p in keep] == ["p0", "p1", "p2"] and dropped == []


def test_drop_within_the_share_is_counted_and_warned(chat, caplog):
    with caplog.at_level(logging.WARNING, logger="test.grpo_overflow"):
        keep, dropped = _fitting_prompts(_prompts(2, 8), chat, _cfg(max_drop_share=0.25), LOG)
    assert len(dropped) == 2 and [p["id"] for p in keep] == [f"p{i}" for i in range(2, 10)]
    assert "dropped 2 of 10 prompts over max_prompt_length=64" in caplog.text
    assert "id p0" in caplog.text and "id p1" in caplog.text and SOURCE in caplog.text


def test_drop_past_the_share_stops_with_the_file_and_ids(chat):
    with pytest.raises(FtibError, match=r"1 of 50 prompts \(2\.0%\) exceed max_prompt_length=64, more than "
                                        r"max_drop_share=1\.0%: data/translation\.jsonl \(id p0\)"):
        _fitting_prompts(_prompts(1, 49), chat, _cfg(), LOG)
    # At the share itself nothing stops: 1 of 100 is 1%.
    keep, dropped = _fitting_prompts(_prompts(1, 99), chat, _cfg(), LOG)
    assert len(keep) == 99 and len(dropped) == 1


@pytest.mark.parametrize("data, match", [
    ({"overflow": "truncate"}, r"stages\.grpo\.overflow"),
    ({"overflow": "skip"}, r"stages\.grpo\.overflow"),
    ({"max_drop_share": 1.5}, r"stages\.grpo: max_drop_share must lie in \[0, 1\], got 1\.5"),
    ({"max_drop_share": -0.1}, r"max_drop_share must lie in \[0, 1\]"),
])
def test_config_errors_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(**data)
