"""Loading models/tokenizers/processors by name or path, tiny presets, vocabulary extension.

``load_bundle(name_or_path)`` returns a :class:`ModelBundle` (model, tokenizer, image
processor and the :class:`ChatProcessor` that builds inputs) for a preset name
(``tiny-qwen3-vl``, ``tiny-qwen3``), a local ``save_pretrained`` directory or a hub name.

Names are imported lazily so that ``import ftib.models.<module>`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelBundle": "ftib.models.bundle",
    "bundle_from_context": "ftib.models.bundle",
    "load_bundle": "ftib.models.bundle",
    "CHAT_TEMPLATE": "ftib.models.chat",
    "IGNORE_INDEX": "ftib.models.chat",
    "ChatProcessor": "ftib.models.chat",
    "render": "ftib.models.chat",
    "PRESETS": "ftib.models.presets",
    "PresetConfig": "ftib.models.presets",
    "build_preset": "ftib.models.presets",
    "get_preset": "ftib.models.presets",
    "preset_dir": "ftib.models.presets",
    "train_bpe_tokenizer": "ftib.models.tokenizer",
    "extend_embeddings": "ftib.models.embeddings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ftib.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
