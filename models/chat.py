"""The one place where chat messages and images become model inputs.

Every stage and evaluator builds its inputs here, so training and evaluation see the
same text:

* :data:`CHAT_TEMPLATE` is the Qwen3-VL chat format as a Jinja template (saved with
  every tokenizer ftib writes, so ``tokenizer.apply_chat_template`` agrees);
  :func:`render` is the same format in Python and also returns where each assistant
  reply lies, which the loss mask needs. A test keeps the two identical.
* :class:`ChatProcessor` expands each image placeholder to
  ``<|vision_start|>`` + ``<|image_pad|>`` x N + ``<|vision_end|>`` with
  ``N = t * h * w / merge_size**2`` from the image processor's ``image_grid_thw``,
  tokenises, and returns ``input_ids``, ``attention_mask``, ``labels`` (assistant
  tokens only), ``pixel_values``, ``image_grid_thw`` and ``mm_token_type_ids``
  (0 text, 1 image), as Qwen3-VL's forward expects.

Messages use the Hugging Face chat format: ``{"role": ..., "content": str | [parts]}``
with parts ``{"type": "text", "text": ...}`` and ``{"type": "image"}``; the images
themselves are passed separately, in order of appearance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ftib.core.errors import FtibError
from ftib.models.tokenizer import IM_END, IM_START, IMAGE_PAD, VISION_END, VISION_START

IGNORE_INDEX = -100

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}"
    "{{- part['text'] -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- endif -%}"
)

IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END


def _parts(content: Any, where: str) -> list[tuple[str, str]]:
    if isinstance(content, str):
        return [("text", content)]
    if not isinstance(content, Sequence):
        raise FtibError(f"{where}: content must be a string or a list of parts, got {type(content).__name__}")
    out = []
    for p in content:
        kind = p.get("type") if isinstance(p, Mapping) else None
        if kind == "image":
            out.append(("image", ""))
        elif kind == "text":
            out.append(("text", p.get("text") or ""))
        else:
            raise FtibError(f"{where}: unknown content part {p!r}")
    return out


def render(messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False
           ) -> tuple[str, list[tuple[int, int]], int]:
    """Render messages in the chat format.

    Returns:
        ``(text, assistant_spans, n_images)``: the text (one
        :data:`IMAGE_PLACEHOLDER` per image part), the character spans of every
        assistant reply *including* its closing ``<|im_end|>`` (what SFT trains on),
        and the number of image parts.
    """
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    n_images = 0
    pos = 0

    def put(s: str) -> None:
        nonlocal pos
        pieces.append(s)
        pos += len(s)

    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            raise FtibError(f"messages[{i}]: role must be system, user or assistant, got {role!r}")
        put(f"{IM_START}{role}\n")
        start = pos
        for kind, text in _parts(m.get("content"), f"messages[{i}]"):
            if kind == "image":
                n_images += 1
                put(IMAGE_PLACEHOLDER)
            else:
                put(text)
        put(IM_END)
        if role == "assistant":
            spans.append((start, pos))
        put("\n")
    if add_generation_prompt:
        put(f"{IM_START}assistant\n")
    return "".join(pieces), spans, n_images


@dataclass
class ChatProcessor:
    """Builds model inputs from chat messages and images.

    Args:
        tokenizer: a Hugging Face tokenizer with the Qwen special tokens.
        image_processor: a Qwen2-VL-style image processor (``*ImageProcessorPil``) with
            ``merge_size``; ``None`` for text-only models.
    """

    tokenizer: Any
    image_processor: Any = None

    def __post_init__(self) -> None:
        vocab = self.tokenizer.get_vocab()
        for tok in (IM_START, IM_END):
            if tok not in vocab:
                raise FtibError(f"the tokenizer has no {tok} token; ftib's chat format needs Qwen's special tokens")
        self.image_token_id = vocab.get(IMAGE_PAD)
        if self.image_processor is not None and self.image_token_id is None:
            raise FtibError(f"the tokenizer has no {IMAGE_PAD} token but the model takes images")
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            raise FtibError("the tokenizer has no pad token")

    @property
    def multimodal(self) -> bool:
        return self.image_processor is not None

    def save_pretrained(self, out: Path | str) -> None:
        """Write the tokenizer (with :data:`CHAT_TEMPLATE`) and the image processor."""
        self.tokenizer.chat_template = CHAT_TEMPLATE
        self.tokenizer.save_pretrained(out)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(out)

    def _images(self, images: Sequence[Any]) -> dict[str, torch.Tensor]:
        loaded = []
        for im in images:
            if isinstance(im, (str, Path)):
                try:
                    with Image.open(im) as f:
                        im = f.convert("RGB")
                except (Image.DecompressionBombError, OSError, ValueError) as exc:
                    raise FtibError(f"{im}: not a usable image ({exc})") from exc
            elif isinstance(im, Image.Image):
                im = im.convert("RGB")
            else:
                raise FtibError(f"an image must be a path or a PIL image, got {type(im).__name__}")
            loaded.append(im)
        out = self.image_processor(images=loaded, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def encode(self, messages: Sequence[Mapping[str, Any]], images: Sequence[Any] = (), *,
               add_generation_prompt: bool = False, max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Encode one conversation.

        Args:
            messages: chat turns; image parts must match ``images`` in number and order.
            images: paths or PIL images.
            add_generation_prompt: append ``<|im_start|>assistant\\n`` (for generation;
                the final assistant reply, if any, should then be left out of messages).
            max_length: truncate longer sequences from the right; an image cut by the
                truncation is an error (the image tokens must stay whole).

        Returns:
            ``input_ids``, ``attention_mask``, ``labels``: ``(T,) int64`` (labels are
            ``-100`` outside assistant replies); and for models with images
            ``mm_token_type_ids: (T,) int64``, ``pixel_values: (P, C*tps*ps*ps) float32``
            and ``image_grid_thw: (n_images, 3) int64`` when images are given.
        """
        text, spans, n_images = render(messages, add_generation_prompt=add_generation_prompt)
        if n_images != len(images):
            raise FtibError(f"the messages have {n_images} image part(s) but {len(images)} image(s) were given")
        if n_images and not self.multimodal:
            raise FtibError("this model takes no images (text-only), but the messages contain image parts")
        vision: dict[str, torch.Tensor] = {}
        if n_images:
            vision = self._images(images)
            merge = self.image_processor.merge_size
            counts = (vision["image_grid_thw"].prod(-1) // (merge * merge)).tolist()
            text, spans = _expand_images(text, spans, counts)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor(enc["input_ids"], dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        if spans:
            starts = torch.tensor([s for s, _ in enc["offset_mapping"]])
            ends = torch.tensor([e for _, e in enc["offset_mapping"]])
            for s, e in spans:
                inside = (starts >= s) & (ends <= e) & (ends > starts)
                labels[inside] = ids[inside]
        if max_length is not None and ids.numel() > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
            if n_images:
                kept = int((ids == self.image_token_id).sum())
                need = int((vision["image_grid_thw"].prod(-1) // self.image_processor.merge_size ** 2).sum())
                if kept != need:
                    raise FtibError(f"max_length={max_length} cuts through an image "
                                    f"({kept} of {need} image tokens kept); raise max_length")
        out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        if self.multimodal:
            out["mm_token_type_ids"] = (ids == self.image_token_id).long()
        out.update(vision)
        return out

    def collate(self, items: Sequence[Mapping[str, torch.Tensor]], *, padding_side: str = "right"
                ) -> dict[str, torch.Tensor]:
        """Pad a list of :meth:`encode` outputs into a batch.

        ``input_ids`` pad with the tokenizer's pad id, ``labels`` with ``-100``,
        ``attention_mask``/``mm_token_type_ids`` with 0; ``pixel_values`` and
        ``image_grid_thw`` are concatenated in batch order (Qwen3-VL's layout).
        Use ``padding_side="left"`` for batched generation.
        """
        if padding_side not in ("left", "right"):
            raise FtibError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if not items:
            raise FtibError("cannot collate an empty batch")
        T = max(int(x["input_ids"].numel()) for x in items)
        fill = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX,
                "mm_token_type_ids": 0}
        batch: dict[str, torch.Tensor] = {}
        for key, value in fill.items():
            if key not in items[0]:
                continue
            rows = []
            for x in items:
                t = x[key]
                pad = torch.full((T - t.numel(),), value, dtype=t.dtype)
                rows.append(torch.cat([t, pad]) if padding_side == "right" else torch.cat([pad, t]))
            batch[key] = torch.stack(rows)
        with_images = [x for x in items if "pixel_values" in x]
        if with_images:
            batch["pixel_values"] = torch.cat([x["pixel_values"] for x in with_images])
            batch["image_grid_thw"] = torch.cat([x["image_grid_thw"] for x in with_images])
        return batch

    def prompt(self, messages: Sequence[Mapping[str, Any]], images: Sequence[Any] = ()) -> dict[str, torch.Tensor]:
        """A batch of one, ready for ``model.generate`` (generation prompt appended)."""
        enc = self.encode(messages, images, add_generation_prompt=True)
        enc.pop("labels")
        return {k: (v.unsqueeze(0) if k not in ("pixel_values", "image_grid_thw") else v) for k, v in enc.items()}

    def decode(self, ids: torch.Tensor | Sequence[int]) -> str:
        """Decode generated ids, dropping special tokens (``<|im_end|>`` ...)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _expand_images(text: str, spans: list[tuple[int, int]], counts: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """Replace the k-th placeholder by ``counts[k]`` image pads, shifting the spans."""
    out: list[str] = []
    shifts: list[tuple[int, int]] = []  # (position in the old text, cumulative shift after it)
    pos = 0
    shift = 0
    for n in counts:
        at = text.index(IMAGE_PLACEHOLDER, pos)
        out.append(text[pos:at])
        out.append(VISION_START + IMAGE_PAD * n + VISION_END)
        pos = at + len(IMAGE_PLACEHOLDER)
        shift += len(IMAGE_PAD) * (n - 1)
        shifts.append((pos, shift))
    out.append(text[pos:])

    def moved(i: int) -> int:
        s = 0
        for p, sh in shifts:
            if i >= p:
                s = sh
        return i + s

    return "".join(out), [(moved(a), moved(b)) for a, b in spans]
