"""The stages' loss through ftib's fused linear cross-entropy equals eager cross-entropy
on full logits on a tiny model: CPT packed rows (text-only Qwen3) and a chat batch with an
image (Qwen3-VL), loss and every gradient; LoRA with trained embeddings (peft's
``modules_to_save`` lm_head); the lm_head is never asked for logits."""

from __future__ import annotations

import pytest
import torch

from ftib.models.bundle import load_bundle
from ftib.stages.common import LabelledLMTask, LoraSpec, TrainableConfig, lm_loss_sum, select_trainable


class _Task(LabelledLMTask):
    def __init__(self, model, impl):
        self.model, self.kernel_impl = model, impl


def _loss_and_grads(model, batch, impl):
    model.zero_grad(set_to_none=True)
    loss = _Task(model, impl).compute_loss(dict(batch)).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(model, batch):
    want, want_g = _loss_and_grads(model, batch, "reference")
    got, got_g = _loss_and_grads(model, batch, "auto")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got_g.keys() == want_g.keys() and got_g
    for n in want_g:
        torch.testing.assert_close(got_g[n], want_g[n], atol=1e-5, rtol=1e-4, msg=lambda m, n=n: f"{n}: {m}")


def _cpt_batch():
    from ftib.data.packing import pack_documents

    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(3, 2000, (int(n),), generator=g).tolist() for n in torch.randint(5, 60, (8,), generator=g)]
    packed, _ = pack_documents(docs, 48, eos_id=1, pad_id=0)
    return dict(packed)


def test_cpt_loss_matches_eager_full_logits():
    model = load_bundle("tiny-qwen3").model.train()
    _assert_same(model, _cpt_batch())


def test_chat_loss_with_an_image_matches_eager_full_logits():
    from PIL import Image

    b = load_bundle("tiny-qwen3-vl")
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "ཁ་དོག་གང་ཡིན།"}]},
            {"role": "assistant", "content": "དམར་པོ།"}]
    img = Image.new("RGB", (64, 48), (200, 30, 30))
    batch = b.chat.collate([b.chat.encode(msgs, [img]), b.chat.encode(msgs[:1] + [{"role": "assistant",
                                                                                  "content": "སྔོན་པོ།"}], [img])])
    _assert_same(b.model.train(), batch)


def test_lora_with_trained_embeddings_matches_eager():
    model = load_bundle("tiny-qwen3").model
    model, _ = select_trainable(model, TrainableConfig(mode="lora", lora=LoraSpec(r=4, dropout=0.0), lora_train_embeddings=True))
    _assert_same(model.train(), _cpt_batch())


def test_the_lm_head_projects_no_token():
    model = load_bundle("tiny-qwen3").model.train()
    rows = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(i[0].shape[-2]))
    try:
        batch = _cpt_batch()
        labels = batch.pop("labels")
        lm_loss_sum(model, batch, labels)
    finally:
        handle.remove()
    assert rows == [0], f"lm_head saw {rows} positions; the fused loss needs none"


def test_unknown_kernel_impl_is_rejected():
    from ftib.stages.cpt import CPTConfig

    from ftib.core.config import build
    from ftib.core.errors import ConfigError

    with pytest.raises(ConfigError, match="stages.cpt.kernel_impl"):
        build(CPTConfig, {"kernel_impl": "fast"}, where="stages.cpt")
