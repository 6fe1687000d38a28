"""Precision: every trainable tensor keeps float32 master weights (and float32 gradients
and AdamW state) when the model is loaded in bfloat16 and trained under bf16 autocast —
the CPT embeddings (at their lr scale), the Align merger, peft's trained copies — while
frozen weights stay bfloat16; ``train.master_weights: bfloat16`` keeps them in bf16."""

from __future__ import annotations

import pytest
import torch

from ftib.core.interfaces import RunContext
from ftib.core.rundir import MetricsSink
from ftib.core.train import TrainConfig, Trainer
from ftib.models.bundle import load_bundle
from ftib.stages.common import LabelledLMTask, LoraSpec, TrainableConfig, select_trainable


class _Task(LabelledLMTask):
    def __init__(self, model, groups, rows, collate):
        self.model, self._groups, self.rows, self.collate = model, groups, rows, collate

    def train_samples(self):
        return self.rows


def _stack(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _chat_rows(chat, n=4):
    """Captioned images, so the merger is in the graph."""
    from PIL import Image

    return [chat.encode([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "ཁ་དོག"}]},
                         {"role": "assistant", "content": "དམར་པོ།"}], [Image.new("RGB", (32, 32), (40 * i, 9, 9))])
            for i in range(n)]


def _rows(n=4, width=24):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 2000, (n, width), generator=g)
    return [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r.clone()} for r in ids]


def _ctx(tmp_path):
    return RunContext(run_dir=tmp_path, work_dir=tmp_path / "w", seed=0, device="cpu", dtype="bfloat16",
                      model_source="none", metrics=MetricsSink(tmp_path / "metrics.jsonl"))


CASES = {
    # name: (preset, trainable config, groups that must exist)
    "cpt-embeddings": ("tiny-qwen3", TrainableConfig(mode="embeddings", embedding_lr_scale=10.0), {"embeddings"}),
    "align-merger": ("tiny-qwen3-vl", TrainableConfig(mode="none", train_merger=True), {"merger"}),
    "sft-lora-embeddings": ("tiny-qwen3", TrainableConfig(mode="lora", lora=LoraSpec(r=4), lora_train_embeddings=True),
                            {"main", "embeddings"}),
}


@pytest.mark.parametrize("master", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_trainable_tensor_has_the_master_dtype(tmp_path, case, master):
    preset, trainable, want_groups = CASES[case]
    (tmp_path / "w").mkdir()
    bundle = load_bundle(preset, dtype="bfloat16")
    model, groups = select_trainable(bundle.model, trainable)
    rows, collate = (_chat_rows(bundle.chat), bundle.chat.collate) if bundle.multimodal else (_rows(), _stack)
    assert want_groups <= {g.name for g in groups}
    trainer = Trainer(_Task(model, groups, rows, collate),
                      TrainConfig(max_steps=1, batch_size=2, lr=1e-3, master_weights=master), _ctx(tmp_path),
                      progress=False)
    assert trainer.autocast_dtype is torch.bfloat16  # run dtype bfloat16 -> bf16 autocast
    trainer.train()
    want = getattr(torch, master)
    trainable_ids = set()
    for g in groups:
        for p in g.params:
            trainable_ids.add(id(p))
            name = next(n for n, q in model.named_parameters() if q is p)
            assert p.dtype == want, f"{case}: trainable {name} is {p.dtype}, not {want}"
            assert p.grad is None or p.grad.dtype == want, f"{case}: grad of {name} is {p.grad.dtype}"
            state = trainer.optimizer.state[p]
            assert state, f"{case}: {name} took no optimiser step"
            assert state["exp_avg"].dtype == want and state["exp_avg_sq"].dtype == want, name
    frozen = [(n, p.dtype) for n, p in model.named_parameters()
              if id(p) not in trainable_ids and p.is_floating_point() and p.dtype != torch.bfloat16]
    assert not frozen, f"{case}: frozen weights left bfloat16: {frozen[:3]}"
    if case == "cpt-embeddings":
        emb = next(pg for pg in trainer.optimizer.param_groups if pg["name"] == "embeddings")
        # the embeddings keep their lr scale (initial_lr: the group lr before the schedule)
        assert emb["initial_lr"] == pytest.approx(10.0 * 1e-3)


def test_unknown_master_dtype_is_a_config_error():
    from ftib.core.config import build
    from ftib.core.errors import ConfigError

    with pytest.raises(ConfigError, match="train.master_weights"):
        build(TrainConfig, {"master_weights": "float16"}, where="train")
