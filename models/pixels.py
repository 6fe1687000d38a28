"""Image pixel budget (``min_pixels`` / ``max_pixels``, Qwen's names).

Qwen2-VL-style image processors resize every image so that its area lies in
``[min_pixels, max_pixels]`` (keeping the aspect ratio, sides rounded to multiples of
``patch_size * merge_size``); the number of image tokens is area / (patch_size *
merge_size)**2. The processor's own budget (``size.shortest_edge`` / ``longest_edge`` in
``preprocessor_config.json``; Qwen3-VL: 65,536 .. 16,777,216 pixels) lets a 12-MP photo
become ~11,700 tokens, so stages and evaluators may set a smaller one. ``None`` keeps
the processor's value.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from ftib.core.errors import ConfigError


def processor_budget(image_processor: Any) -> tuple[int, int]:
    """(min_pixels, max_pixels) of a Qwen2-VL-style image processor."""
    size = image_processor.size
    return int(size.shortest_edge), int(size.longest_edge)


def patch_grid_pixels(image_processor: Any) -> int:
    """Pixels of one merged patch grid, (patch_size * merge_size)**2: one image token."""
    return int(image_processor.patch_size * image_processor.merge_size) ** 2


def with_pixel_budget(chat: Any, min_pixels: int | None, max_pixels: int | None, *, where: str) -> Any:
    """``chat`` (a :class:`~ftib.models.chat.ChatProcessor`) with its image processor's
    budget set; ``chat`` itself is unchanged (checkpoints keep the model's own
    processor config). Both ``None``, or a text-only model: ``chat`` as it is.

    Raises:
        ConfigError: naming ``where.min_pixels``/``where.max_pixels``: a budget below
            one patch grid, ``min_pixels > max_pixels``, or a budget for a text-only model.
    """
    if min_pixels is None and max_pixels is None:
        return chat
    ip = chat.image_processor
    if ip is None:
        raise ConfigError(f"{where}.min_pixels/max_pixels: the model takes no images")
    lo, hi = processor_budget(ip)
    lo = lo if min_pixels is None else int(min_pixels)
    hi = hi if max_pixels is None else int(max_pixels)
    grid = patch_grid_pixels(ip)
    for key, value in (("min_pixels", lo), ("max_pixels", hi)):
        if value < grid:
            raise ConfigError(f"{where}.{key}: {value} is below one patch grid of the model's image processor "
                              f"({ip.patch_size * ip.merge_size}x{ip.patch_size * ip.merge_size} = {grid} pixels)")
    if lo > hi:
        raise ConfigError(f"{where}.min_pixels ({lo}) is above max_pixels ({hi})")
    budgeted = copy.deepcopy(ip)
    budgeted.size = dataclasses.replace(ip.size, shortest_edge=lo, longest_edge=hi)
    return dataclasses.replace(chat, image_processor=budgeted)
