"""Tiny presets through load_bundle: train step, generation, save/load round trip."""

from __future__ import annotations

import hashlib

import pytest
import torch

from ftib.core.errors import FtibError
from ftib.models import get_preset, load_bundle, preset_dir
from ftib.models.presets import PRESET_FILE, build_preset

IMAGE_PROMPT = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "ཉ་ག་ཚོད་ཡོད།"}]}]
IMAGE_QA = IMAGE_PROMPT + [{"role": "assistant", "content": "གསུམ་ཡོད།"}]


def test_presets_are_the_real_classes_and_small(vl_bundle, text_bundle):
    assert type(vl_bundle.model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(text_bundle.model).__name__ == "Qwen3ForCausalLM"
    assert vl_bundle.multimodal and not text_bundle.multimodal
    assert type(vl_bundle.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    for b in (vl_bundle, text_bundle):
        n = sum(p.numel() for p in b.model.parameters())
        assert n < 2_000_000, n
        assert b.model.config.get_text_config().vocab_size == len(b.tokenizer)


def test_vl_forward_backward_generate_on_an_image_prompt(vl_bundle, scene_image):
    model, chat = vl_bundle.model, vl_bundle.chat
    batch = chat.collate([chat.encode(IMAGE_QA, [scene_image])])
    model.train()
    try:
        out = model(**batch)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        vis = [p.grad for p in model.model.visual.parameters() if p.grad is not None]
        lm = model.get_input_embeddings().weight.grad
        assert vis and any(g.abs().sum() > 0 for g in vis), "no gradient reached the vision tower"
        assert lm is not None and lm.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    prompt = chat.prompt(IMAGE_PROMPT, [scene_image])
    with torch.no_grad():
        gen = model.generate(**prompt, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert gen.shape == (1, prompt["input_ids"].shape[1] + 6)
    assert torch.equal(gen[0, : prompt["input_ids"].shape[1]], prompt["input_ids"][0])


def test_text_forward_backward_generate(text_bundle):
    model, chat = text_bundle.model, text_bundle.chat
    batch = chat.collate([chat.encode([{"role": "user", "content": "ཉ།"}, {"role": "assistant", "content": "ཡོད།"}])])
    assert "mm_token_type_ids" not in batch
    model.train()
    try:
        out = model(**batch)
        out.loss.backward()
        assert torch.isfinite(out.loss) and model.get_input_embeddings().weight.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    prompt = chat.prompt([{"role": "user", "content": "ཉ།"}])
    gen = model.generate(**prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert gen.shape[1] == prompt["input_ids"].shape[1] + 4


@pytest.mark.parametrize("which", ["vl_bundle", "text_bundle"])
def test_save_load_round_trip_gives_identical_logits(which, request, tmp_path, scene_image):
    bundle = request.getfixturevalue(which)
    images = [scene_image] if bundle.multimodal else []
    messages = IMAGE_QA if bundle.multimodal else [{"role": "user", "content": "ཉ།"},
                                                   {"role": "assistant", "content": "ཡོད།"}]
    bundle.save(tmp_path / "ckpt")
    again = load_bundle(tmp_path / "ckpt")
    assert again.path == tmp_path / "ckpt"
    batch = bundle.chat.collate([bundle.chat.encode(messages, images)])
    batch2 = again.chat.collate([again.chat.encode(messages, images)])
    for k in batch:
        assert torch.equal(batch[k], batch2[k]), k
    with torch.no_grad():
        assert torch.equal(bundle.model(**batch).logits, again.model(**batch2).logits)


def _weights_digest(path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_preset_build_is_deterministic_and_cached(vl_bundle, preset_cache, tmp_path):
    cached = preset_dir("tiny-qwen3-vl", cache_dir=preset_cache)
    assert vl_bundle.path == cached and (cached / PRESET_FILE).is_file()
    rebuilt = build_preset(get_preset("tiny-qwen3-vl"), tmp_path / "again")
    assert _weights_digest(rebuilt) == _weights_digest(cached)
    assert (rebuilt / "tokenizer.json").read_bytes() == (cached / "tokenizer.json").read_bytes()
    # A different seed gives different weights and a different cache entry.
    other = get_preset("tiny-qwen3-vl", seed=1)
    assert other.fingerprint() != get_preset("tiny-qwen3-vl").fingerprint()


def test_preset_overrides_change_the_architecture(preset_cache):
    b = load_bundle("tiny-qwen3", cache_dir=preset_cache,
                    preset_overrides={"hidden_size": 32, "num_layers": 1, "intermediate_size": 64,
                                      "vocab_size": 400, "tokenizer_docs": 50})
    assert b.model.config.hidden_size == 32 and b.model.config.num_hidden_layers == 1


def test_load_errors(tmp_path, preset_cache):
    with pytest.raises(FtibError, match="unknown model preset 'tiny-qwen3-vll'; did you mean 'tiny-qwen3-vl'"):
        get_preset("tiny-qwen3-vll")
    with pytest.raises(FtibError, match="unknown or fixed field 'hidden'"):
        load_bundle("tiny-qwen3", cache_dir=preset_cache, preset_overrides={"hidden": 3})
    with pytest.raises(FtibError, match="not divisible"):
        get_preset("tiny-qwen3", hidden_size=30)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FtibError, match="no config.json"):
        load_bundle(tmp_path / "empty")
    with pytest.raises(FtibError, match="not a preset"):
        load_bundle(str(tmp_path / "missing-model-dir"))
    with pytest.raises(FtibError, match="dtype"):
        load_bundle("tiny-qwen3", cache_dir=preset_cache, dtype="float64")


def test_the_image_reaches_the_language_model(vl_bundle, scene_image, tmp_path):
    from PIL import Image

    other = tmp_path / "blank.png"
    Image.new("RGB", (64, 64), (246, 244, 238)).save(other)
    chat, model = vl_bundle.chat, vl_bundle.model
    a = chat.collate([chat.encode(IMAGE_QA, [scene_image])])
    b = chat.collate([chat.encode(IMAGE_QA, [other])])
    assert torch.equal(a["input_ids"], b["input_ids"])
    with torch.no_grad():
        la, lb = model(**a).logits[0, -1], model(**b).logits[0, -1]
    assert not torch.allclose(la, lb), "the answer logits do not depend on the image"
