"""The one place where chat messages and images become model inputs.

Every stage and evaluator builds its inputs here, so training and evaluation see the
same text:

* Every conversation is rendered by the model's own chat template
  (``tokenizer.apply_chat_template``, :func:`render_template`), with ``enable_thinking``
  passed to the template exactly as Qwen3's documentation does; the assistant-only loss
  mask is derived from that rendering (the prompt-completion rule TRL uses for
  conversational prompt/completion data: a reply starts where the template's rendering
  of the conversation before it, plus the generation prompt, ends; it ends with the
  template's end-of-turn ``<|im_end|>``).
* :data:`CHAT_TEMPLATE` is ftib's own template, used only by the tiny presets (saved
  with their tokenizer); :func:`render` is that format in Python, kept as the preset
  template's reference (a test keeps the two identical). A real checkpoint keeps its
  own template, processor, video-processor and generation configs in every checkpoint
  ftib writes (:meth:`ChatProcessor.save_pretrained`).
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

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from PIL import Image

from ftib.core.errors import FtibError
from ftib.models.tokenizer import ENDOFTEXT, IM_END, IM_START, IMAGE_PAD, VISION_END, VISION_START

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


THINK_START, THINK_END = "<think>", "</think>"

#: Files of a checkpoint's own formats that ftib never rewrites: copied byte for byte
#: from the directory a bundle was loaded from into every checkpoint it saves (the
#: processor-level chat template, the image/video processor configs as the hub wrote them,
#: the processor config and the generation config).
FORMAT_FILES = ("chat_template.json", "chat_template.jinja", "preprocessor_config.json",
                "video_preprocessor_config.json", "processor_config.json", "generation_config.json")


class Rendering(NamedTuple):
    """A conversation rendered by a chat template.

    Attributes:
        text: the template's output (one ``<|vision_start|><|image_pad|><|vision_end|>``
            per image part, not yet expanded).
        spans: character spans ``[start, end)`` of every assistant reply as the model
            must produce it (after the generation prompt, through ``<|im_end|>``).
        n_images: image placeholders in ``text``.
    """

    text: str
    spans: list[tuple[int, int]]
    n_images: int


def _template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check messages and put them in the form Qwen's templates take: a content made
    only of text parts becomes one string (Qwen3's text template renders a list content
    as empty), image parts stay parts."""
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            raise FtibError(f"messages[{i}]: role must be system, user or assistant, got {role!r}")
        content = m.get("content")
        if not isinstance(content, str):
            parts = _parts(content, f"messages[{i}]")
            if all(kind == "text" for kind, _ in parts):
                content = "".join(t for _, t in parts)
            else:
                content = [{"type": "image"} if kind == "image" else {"type": "text", "text": t} for kind, t in parts]
        out.append({**{k: v for k, v in m.items() if k != "content"}, "role": role, "content": content})
    return out


def _reply_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content if p.get("type") == "text")


def render_template(tokenizer: Any, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
                    enable_thinking: bool | None = None) -> Rendering:
    """Render ``messages`` with the tokenizer's own chat template and locate the replies.

    The text is ``tokenizer.apply_chat_template(messages, tokenize=False, ...)`` with
    ``enable_thinking`` passed through when not ``None`` (``None``: the template's
    default; Qwen3's is thinking on). For the assistant turn ``i``, with ``R`` the
    rendering of ``messages[:i]`` and ``P`` the same plus the generation prompt, the
    reply starts after ``P`` when the full rendering continues with ``P`` (what the
    model is prompted with at generation time), else after the turn header the template
    writes (Qwen3 renders earlier turns without the think block that its generation
    prompt opens); it ends after the first ``<|im_end|>`` from there.

    Raises:
        FtibError: an unknown role/part, a video part, an assistant turn first, or a
            template whose renderings of conversation prefixes are not prefixes (the
            mask cannot be derived; the message says which turn).
    """
    prepared = _template_messages(messages)
    kw: dict[str, Any] = {} if enable_thinking is None else {"enable_thinking": enable_thinking}

    def apply(msgs: list[dict[str, Any]], gen: bool) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **kw)

    text = apply(prepared, add_generation_prompt)
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(prepared):
        if m["role"] != "assistant":
            continue
        if i == 0:
            raise FtibError("messages[0]: a conversation cannot start with an assistant turn")
        before, prompt = apply(prepared[:i], False), apply(prepared[:i], True)
        if not (text.startswith(before) and prompt.startswith(before)):
            raise FtibError(f"messages[{i}]: the chat template does not render the conversation before this "
                            "turn as a prefix of the whole; ftib cannot derive the assistant mask from it")
        if text.startswith(prompt):
            start = len(prompt)
        else:
            gen = prompt[len(before):]
            header = gen[: gen.index("\n") + 1] if "\n" in gen else gen
            if not text.startswith(header, len(before)):
                raise FtibError(f"messages[{i}]: the chat template renders this assistant turn without its "
                                f"generation prompt {gen!r}")
            start = len(before) + len(header)
        end = text.find(IM_END, start)
        if end < 0:
            raise FtibError(f"messages[{i}]: the chat template ends this assistant turn without {IM_END}")
        end += len(IM_END)
        answer = _reply_text(m["content"]).split(THINK_END)[-1].strip()
        if answer and answer not in text[start:end]:
            raise FtibError(f"messages[{i}]: the reply is not inside the span the chat template gives it "
                            f"({text[start:end]!r})")
        spans.append((start, end))
    n_parts = sum(isinstance(m["content"], list) and sum(p["type"] == "image" for p in m["content"])
                  for m in prepared)
    n_images = text.count(IMAGE_PLACEHOLDER)
    if n_images != n_parts:
        raise FtibError(f"the chat template rendered {n_images} image placeholder(s) for {n_parts} image part(s)")
    return Rendering(text, spans, n_images)


def strip_thinking(reply: str) -> tuple[str, str]:
    """The answer part of a generated reply, without Qwen3's think block.

    Returns:
        ``(answer, rule)``: ``rule`` is ``"after_think_end"`` (the text after the last
        ``</think>``), ``"unterminated_think"`` (a ``<think>`` never closed within the
        token budget: no answer, ``""``) or ``"none"`` (no think block; the reply as is).
        Recorded per item by the evaluators and used by the GRPO rewards.
    """
    if THINK_END in reply:
        return reply.rsplit(THINK_END, 1)[1].strip(), "after_think_end"
    if reply.lstrip().startswith(THINK_START):
        return "", "unterminated_think"
    return reply, "none"


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Every id generation stops on: the generation config's ``eos_token_id`` (an int or
    a list; Qwen3 lists ``<|im_end|>`` and ``<|endoftext|>``), the tokenizer's EOS and
    ``<|im_end|>``."""
    ids: set[int] = set()
    eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif eos is not None:
        ids.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    im_end = tokenizer.get_vocab().get(IM_END)
    if im_end is not None:
        ids.add(int(im_end))
    return sorted(ids)


def document_end_id(tokenizer: Any) -> int:
    """The token that ends a pretraining document: Qwen's ``<|endoftext|>`` (its
    pretraining separator; ``<|im_end|>`` ends a chat turn), else the tokenizer's EOS."""
    tid = tokenizer.get_vocab().get(ENDOFTEXT)
    if tid is None:
        tid = tokenizer.eos_token_id
    if tid is None:
        raise FtibError(f"the tokenizer has neither {ENDOFTEXT} nor an EOS token to end documents with")
    return int(tid)


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
        source_dir: the checkpoint directory this came from; its :data:`FORMAT_FILES`
            are carried into every checkpoint saved.
    """

    tokenizer: Any
    image_processor: Any = None
    source_dir: Path | None = None

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
        """Write the tokenizer (with its own chat template) and the image processor, then
        copy the source checkpoint's :data:`FORMAT_FILES` over them byte for byte, so the
        output keeps the base's processor classes, video processor, chat template and
        generation config."""
        out = Path(out)
        self.tokenizer.save_pretrained(out)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(out)
        if self.source_dir is not None and Path(self.source_dir).resolve() != out.resolve():
            for name in FORMAT_FILES:
                if (Path(self.source_dir) / name).is_file():
                    shutil.copyfile(Path(self.source_dir) / name, out / name)

    def encode_images(self, images: Sequence[Any]) -> dict[str, torch.Tensor]:
        """``pixel_values`` and ``image_grid_thw`` of ``images`` (paths or PIL images)
        through the image processor; an unreadable file is an error naming it."""
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

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = False,
               enable_thinking: bool | None = None) -> Rendering:
        """:func:`render_template` with this processor's tokenizer."""
        if not getattr(self.tokenizer, "chat_template", None):
                where = f" in {self.source_dir}" if self.source_dir else ""
                raise FtibError(f"the tokenizer{where} has no chat template (no chat_template.jinja, "
                                "chat_template.json or tokenizer_config.json 'chat_template'); ftib renders "
                                "every conversation through the model's own template")
        return render_template(self.tokenizer, messages, add_generation_prompt=add_generation_prompt,
                               enable_thinking=enable_thinking)

    def stop_ids(self, model: Any = None) -> list[int]:
        """:func:`stop_token_ids` for ``model``'s generation config."""
        return stop_token_ids(self.tokenizer, getattr(model, "generation_config", None))

    def encode(self, messages: Sequence[Mapping[str, Any]], images: Sequence[Any] = (), *,
               add_generation_prompt: bool = False, max_length: int | None = None,
               enable_thinking: bool | None = None) -> dict[str, torch.Tensor]:
        """Encode one conversation.

        Args:
            messages: chat turns; image parts must match ``images`` in number and order.
            images: paths or PIL images.
            add_generation_prompt: append the template's generation prompt (for
                generation; the final assistant reply, if any, should then be left out).
            enable_thinking: passed to the chat template (``None``: its default).
            max_length: truncate longer sequences from the right; an image cut by the
                truncation is an error (the image tokens must stay whole).

        Returns:
            ``input_ids``, ``attention_mask``, ``labels``: ``(T,) int64`` (labels are
            ``-100`` outside assistant replies); and for models with images
            ``mm_token_type_ids: (T,) int64``, ``pixel_values: (P, C*tps*ps*ps) float32``
            and ``image_grid_thw: (n_images, 3) int64`` when images are given.
        """
        text, spans, n_images = self.render(messages, add_generation_prompt=add_generation_prompt,
                                            enable_thinking=enable_thinking)
        if n_images != len(images):
            raise FtibError(f"the messages have {n_images} image part(s) but {len(images)} image(s) were given")
        if n_images and not self.multimodal:
            raise FtibError("this model takes no images (text-only), but the messages contain image parts")
        vision: dict[str, torch.Tensor] = {}
        if n_images:
            vision = self.encode_images(images)
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

    def prompt(self, messages: Sequence[Mapping[str, Any]], images: Sequence[Any] = (), *,
               enable_thinking: bool | None = None) -> dict[str, torch.Tensor]:
        """A batch of one, ready for ``model.generate`` (generation prompt appended)."""
        enc = self.encode(messages, images, add_generation_prompt=True, enable_thinking=enable_thinking)
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
