"""Align: image–text alignment of a vision–language model on Tibetan captions.

What it trains: by default only the vision→language merger/projector of Qwen3-VL
(``model.visual.merger`` and the deepstack mergers); the vision tower and the language
model are frozen. Each of the three can be unfrozen by config (``trainable``).

Data: image–caption pairs (JSON Lines ``id, image, caption``; see ``docs/data.md``), or
``ftibworld[:SIZE[:SEED]]`` (``align/captions.jsonl``). Each pair becomes one chat turn —
the user shows the image and asks for a description in Tibetan, the assistant answers
with the caption — encoded by the bundle's one chat processor, with the loss on the
caption tokens only.

``enable_thinking`` (default ``false``) goes to the model's chat template (see SFT).

``grounding_check: n`` holds the last ``n`` captions out of training and measures, before
and after training, their caption loss with their own images and with shifted images
(:func:`ftib.stages.common.image_grounding`); the difference, ``grounding_gap``, is how
much the captions depend on the pictures (about 0 for a model that ignores them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ftib.core import Stage
from ftib.core.train import TrainConfig
from ftib.stages.common import TrainableConfig, check_chat_data, train_chat_stage, training_bundle


def describe_prompt() -> str:
    """The Tibetan instruction "describe this picture", as the SFT data phrases it."""
    from ftib.data.world import lexicon
    from ftib.data.world.grammar import end

    return end(lexicon.DESCRIBE)


@dataclass(frozen=True, kw_only=True)
class AlignConfig:
    """Configuration of the ``align`` stage (see the module docstring)."""

    data: str = "ftibworld"
    max_records: int | None = None
    max_length: int = 512
    overflow: Literal["error", "truncate", "drop"] = "drop"
    max_drop_share: float = 0.01
    grounding_check: int = 0
    kernel_impl: Literal["auto", "triton", "torch", "reference"] = "auto"
    min_pixels: int | None = None
    max_pixels: int | None = None
    enable_thinking: bool | None = False
    trainable: TrainableConfig = TrainableConfig(mode="none", train_merger=True)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, warmup_steps=5))

    def __post_init__(self) -> None:
        check_chat_data(self)


class AlignStage(Stage):
    """Image–caption alignment (see the module docstring)."""

    Config = AlignConfig

    def run(self, ctx):
        from ftib.core import FtibError
        from ftib.data.loaders import load_captions, world_file
        from ftib.data.sources import resolve

        cfg: AlignConfig = self.config
        bundle = training_bundle(ctx, cfg.trainable)
        if not bundle.multimodal:
            raise FtibError(f"align needs a vision-language model; {ctx.model_source} is text-only")
        path = resolve(cfg.data, world_file("captions"))
        rows = load_captions(path)
        if cfg.max_records is not None:
            rows = rows.select(range(min(cfg.max_records, len(rows))))
        prompt = describe_prompt()
        records = [
            ([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
              {"role": "assistant", "content": r["caption"]}], [r["image"]], f"{path} (id {r['id']})")
            for r in rows
        ]
        return train_chat_stage(ctx, bundle, records, trainable=cfg.trainable, train=cfg.train,
                                max_length=cfg.max_length, overflow=cfg.overflow,
                                grounding_check=cfg.grounding_check, kernel_impl=cfg.kernel_impl,
                                pixels=(cfg.min_pixels, cfg.max_pixels), max_drop_share=cfg.max_drop_share,
                                where="stages.align",
                                enable_thinking=cfg.enable_thinking)
