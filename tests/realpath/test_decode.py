"""ftib's rollout decode step on the hub-faithful stand-ins: on Qwen3-VL-8B-Instruct's and
Qwen3-4B's real configs (shrunk), the same hidden states as transformers' modules step for
step; Qwen3.5's hybrid linear-attention layers are declined by name (the modules run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from ftib.models.bundle import load_bundle
from ftib.models.decode import fast_decoder
from ftib.stages.grpo import _decoder


def _decode_tests():
    spec = importlib.util.spec_from_file_location("ftib_test_decode", Path(__file__).parents[1] / "models" / "test_decode.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("family", ["qwen3-vl", "qwen3"])
def test_fast_decode_matches_the_modules_on_the_real_configs(standin, family):
    td = _decode_tests()
    model = load_bundle(str(standin(family))).model.float().eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    ids, mask = td._prompts()
    tokens = torch.randint(10, 1500, (3, 6), generator=torch.Generator().manual_seed(3))
    want = td.teacher_forced(model, ids, mask, tokens, fast=False, drop_at=2)
    got = td.teacher_forced(model, ids, mask, tokens, fast=True, drop_at=2)
    for g_, w in zip(got, want):
        torch.testing.assert_close(g_, w, atol=5e-5, rtol=1e-4)


def test_qwen3_5_hybrid_layers_are_declined_by_name(standin):
    model = load_bundle(str(standin("qwen3.5"))).model
    fast, why = fast_decoder(_decoder(model))
    assert fast is None and "Qwen3_5" in why and "supported" in why, why
