"""A text-only stage keeps a VLM's vision token rows fixed (trainable.keep_vision_token_rows).

Why: with tied embeddings, text-only training moves the rows of tokens it never shows
(the softmax pushes every absent token down, and Adam turns a tiny gradient into a full
step); the drifted <|vision_start|>/<|vision_end|> rows left ``ftibworld-base``'s text
checkpoint unable to learn an image question (issue 17).
"""

from __future__ import annotations

import logging

import pytest
import torch

from ftib.core.train import zero_fixed_rows
from ftib.models.bundle import load_bundle
from ftib.stages.common import TrainableConfig, select_trainable, vision_token_ids


def _one_text_step(model, groups, tokenizer):
    opt = torch.optim.AdamW([{"params": g.params} for g in groups], lr=1e-2, weight_decay=0.0)
    ids = torch.tensor([tokenizer.encode("图中有两棵绿色的树。There is one red mountain.")])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    zero_fixed_rows([pair for g in groups for pair in g.fixed_rows])  # as the loop does
    opt.step()


@pytest.mark.parametrize("mode", ["full", "embeddings"])
@pytest.mark.parametrize("keep", [True, False])
def test_text_only_stage_keeps_vision_rows(mode, keep, caplog):
    bundle = load_bundle("tiny-qwen3-vl")
    model = bundle.model
    ids = vision_token_ids(model)
    assert len(ids) == 4 and set(ids) >= {model.config.vision_start_token_id, model.config.image_token_id}
    emb = model.get_input_embeddings().weight
    before = emb.detach().clone()
    cfg = TrainableConfig(mode=mode, keep_vision_token_rows=keep)
    with caplog.at_level(logging.INFO):
        model, groups = select_trainable(model, cfg, text_only=True, logger=logging.getLogger("t"))
    _one_text_step(model, groups, bundle.chat.tokenizer)
    moved = (emb.detach() - before).abs().amax(dim=1) > 0
    other = [i for i in range(emb.shape[0]) if i not in ids]
    assert moved[other].float().mean() > 0.9  # the rest of the table learns
    assert bool(moved[ids].any()) is (not keep)  # tied embeddings: they move unless kept
    assert ("stay fixed" in caplog.text) is keep


def test_stage_with_images_trains_vision_rows():
    """With images in the data the vision tokens are inputs: their rows train."""
    bundle = load_bundle("tiny-qwen3-vl")
    model = bundle.model
    emb = model.get_input_embeddings().weight
    before = emb.detach().clone()
    model, groups = select_trainable(model, TrainableConfig(mode="full"), text_only=False)
    _one_text_step(model, groups, bundle.chat.tokenizer)
    ids = vision_token_ids(bundle.model)
    assert bool(((emb.detach() - before).abs().amax(dim=1) > 0)[ids].all())


def test_text_model_has_no_vision_rows():
    bundle = load_bundle("tiny-qwen3")
    assert vision_token_ids(bundle.model) == []
    model, groups = select_trainable(bundle.model, TrainableConfig(mode="full"), text_only=True)
    assert groups
