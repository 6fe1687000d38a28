"""Load a model with its tokenizer and image processor: :func:`load_bundle`.

One code path serves hub names, local directories and the tiny presets: a preset
name is first turned into its cached directory (built on first use), then everything
loads through the ``transformers`` Auto classes. Image processors load with the Pillow
backend (``backend="pil"``) so nothing needs torchvision.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftib.core.errors import FtibError
from ftib.models.chat import ChatProcessor
from ftib.models.presets import PRESETS, is_preset, preset_dir

log = logging.getLogger("ftib.models")

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ModelBundle:
    """A model and everything needed to feed it.

    Attributes:
        model: ``Qwen3VLForConditionalGeneration``-like (``multimodal``) or a causal LM.
        tokenizer: the Hugging Face tokenizer.
        image_processor: Pillow image processor, ``None`` for text-only models.
        chat: the :class:`~ftib.models.chat.ChatProcessor` building inputs.
        source: what was loaded (preset name, directory or hub name).
        path: the directory the weights came from, when local.
    """

    model: Any
    tokenizer: Any
    image_processor: Any
    chat: ChatProcessor
    source: str
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def multimodal(self) -> bool:
        return self.image_processor is not None

    @property
    def processor(self) -> ChatProcessor:
        """The input builder; ``processor.save_pretrained(dir)`` writes tokenizer and
        image processor (what a checkpoint needs besides the weights)."""
        return self.chat

    def with_tokenizer(self, tokenizer: Any) -> ModelBundle:
        """The same model with another tokenizer (e.g. after vocabulary extension)."""
        return dataclasses.replace(self, tokenizer=tokenizer, chat=ChatProcessor(tokenizer, self.image_processor))

    def save(self, out: Path | str) -> Path:
        """``save_pretrained`` model, tokenizer (with the chat template) and processor."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.chat.save_pretrained(out)
        return out


def _is_multimodal(config: Any) -> bool:
    return getattr(config, "vision_config", None) is not None


def load_bundle(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    cache_dir: str | Path | None = None,
    preset_overrides: dict[str, Any] | None = None,
) -> ModelBundle:
    """Load model + tokenizer + image processor.

    Args:
        name_or_path: a preset name (``tiny-qwen3-vl``, ``tiny-qwen3``), a local
            directory written by ``save_pretrained``, or a hub name.
        revision, attn_implementation, trust_remote_code: passed to ``from_pretrained``
            (the recipe's ``model`` section).
        device: move the model there (default: stay on CPU).
        dtype: ``float32``/``bfloat16``/``float16``; default: the checkpoint's dtype.
        cache_dir: where presets are built and cached (default ``$FTIB_CACHE_DIR``).
        preset_overrides: preset fields to change (sizes ...); only for preset names.
    """
    import torch
    from transformers import (AutoConfig, AutoImageProcessor, AutoModelForCausalLM,
                              AutoModelForImageTextToText, AutoTokenizer)

    source = str(name_or_path)
    if preset_overrides and not is_preset(source):
        raise FtibError(f"preset_overrides given but {source!r} is not a preset ({', '.join(PRESETS)})")
    if is_preset(source):
        path: Path | None = preset_dir(source, cache_dir=cache_dir, **(preset_overrides or {}))
        location = str(path)
    else:
        p = Path(source).expanduser()
        if p.exists() and not p.is_dir():
            raise FtibError(f"model path {source!r} is a file; expected a directory written by save_pretrained")
        if p.is_dir() and not (p / "config.json").is_file():
            raise FtibError(f"model directory {source!r} has no config.json (not a save_pretrained directory)")
        path = p if p.is_dir() else None
        location = str(p) if path else source
    if dtype is not None and dtype not in DTYPES:
        raise FtibError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    common: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision is not None:
        common["revision"] = revision
    try:
        config = AutoConfig.from_pretrained(location, **common)
    except OSError as exc:
        hint = "" if path else (f"; it is not a preset ({', '.join(PRESETS)}) nor a local directory, "
                                "and the hub could not provide it")
        raise FtibError(f"cannot load model {source!r}{hint}: {exc}") from exc
    kwargs: dict[str, Any] = dict(common)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype)
    multimodal = _is_multimodal(config)
    auto = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    model = auto.from_pretrained(location, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(location, **common)
    image_processor = AutoImageProcessor.from_pretrained(location, backend="pil", **common) if multimodal else None
    if device is not None:
        model.to(device)
    model.eval()
    return ModelBundle(model=model, tokenizer=tokenizer, image_processor=image_processor,
                       chat=ChatProcessor(tokenizer, image_processor), source=source, path=path)


def bundle_from_context(ctx: Any) -> ModelBundle:
    """The bundle a stage or evaluator starts from: ``ctx.bundle`` when alive, else
    :func:`load_bundle` on ``ctx.model_source`` with the recipe's model options, on
    ``ctx.device`` in ``ctx.dtype``."""
    if ctx.bundle is not None:
        return ctx.bundle
    opts = {k: v for k, v in dict(ctx.model_options or {}).items() if k != "name_or_path"}
    return load_bundle(ctx.model_source, device=ctx.device, dtype=ctx.dtype, **opts)
