"""The model side of the evaluators, behind one small interface.

Every metric, parser and report in :mod:`ftib.evals` sees the model only as a
:class:`Generator`: a batch of ``(prompt text, optional PIL image)`` in, one reply string
per prompt out. :class:`TransformersGenerator` is the real one, built on
:mod:`ftib.models` (its :class:`~ftib.models.chat.ChatProcessor` is the one place where
chat text and images become model inputs); tests use scripted generators.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger("ftib.evals")

__all__ = ["Decoding", "Generator", "Prompt", "TransformersGenerator", "generator_from_context"]

#: One request: the user's text and an optional image (``PIL.Image`` or path).
Prompt = tuple[str, Any]


@dataclass(frozen=True, kw_only=True)
class Decoding:
    """Decoding settings; recorded with every result.

    Attributes:
        max_new_tokens: reply length cap (each benchmark sets its own).
        do_sample: ``False`` is greedy decoding (the default for evaluation).
        temperature, top_p: only used when sampling.
        batch_size: prompts per ``generate`` call (left-padded).
        enable_thinking: passed to the model's chat template (``None``: its default).
        min_pixels, max_pixels: pixel budget of the prompts' images (Qwen's names, see
            :mod:`ftib.models.pixels`); ``None``: the model processor's own.
    """

    max_new_tokens: int = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 8
    enable_thinking: bool | None = False
    min_pixels: int | None = None
    max_pixels: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Generator(Protocol):
    """Generates one reply per prompt.

    ``generate(prompts, decoding)`` returns ``len(prompts)`` strings in order; it must be
    deterministic for greedy decoding and must not change the model.
    """

    def generate(self, prompts: Sequence[Prompt], decoding: Decoding) -> list[str]: ...


class TransformersGenerator:
    """A :class:`Generator` over an :class:`ftib.models.ModelBundle`.

    Each prompt becomes one user turn (an image part first when there is an image), is
    encoded by the bundle's ``ChatProcessor`` (under the decoding's pixel budget,
    :meth:`chat_for`) with the generation prompt, and batches are
    left-padded for ``model.generate``, which stops on every eos id of the model's
    generation config (:meth:`~ftib.models.chat.ChatProcessor.stop_ids`). The reply is
    the decoded new tokens, special tokens dropped, stripped; a think block stays in it
    (the evaluators score after it and record the strip rule).
    """

    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle
        self._budgeted: dict[tuple[int | None, int | None], Any] = {}

    def chat_for(self, decoding: Decoding, *, where: str = "evaluator") -> Any:
        """The bundle's ``ChatProcessor`` under ``decoding``'s pixel budget
        (:func:`ftib.models.pixels.with_pixel_budget`; the bundle's own is unchanged).

        Raises:
            ConfigError: naming ``where.min_pixels``/``where.max_pixels``: a budget below
                one patch grid, min above max, or a budget for a text-only model.
        """
        key = (decoding.min_pixels, decoding.max_pixels)
        if key not in self._budgeted:
            from ftib.models.pixels import with_pixel_budget

            self._budgeted[key] = with_pixel_budget(self.bundle.chat, *key, where=where)
        return self._budgeted[key]

    def pixel_budget(self, decoding: Decoding, *, where: str = "evaluator") -> tuple[int, int] | None:
        """(min_pixels, max_pixels) the images are resized into under ``decoding``, or
        ``None`` for a text-only model."""
        from ftib.models.pixels import processor_budget

        ip = self.chat_for(decoding, where=where).image_processor
        return None if ip is None else processor_budget(ip)

    def _messages(self, text: str, image: Any) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = []
        if image is not None:
            content.append({"type": "image"})
        content.append({"type": "text", "text": text})
        return [{"role": "user", "content": content}]

    def generate(self, prompts: Sequence[Prompt], decoding: Decoding) -> list[str]:
        model = self.bundle.model
        # A bundle handed over by a training stage may be in train mode (dropout); generate
        # in eval mode and leave the model as it was found.
        was_training = model.training
        model.eval()
        try:
            return self._generate(prompts, decoding)
        finally:
            model.train(was_training)

    def _generate(self, prompts: Sequence[Prompt], decoding: Decoding) -> list[str]:
        import torch

        chat = self.chat_for(decoding)
        model = self.bundle.model
        device = next(model.parameters()).device
        out: list[str] = []
        for start in range(0, len(prompts), decoding.batch_size):
            chunk = prompts[start : start + decoding.batch_size]
            encoded = []
            for text, image in chunk:
                if image is not None and not chat.multimodal:
                    from ftib.core.errors import FtibError

                    raise FtibError("the benchmark has images but the model is text-only")
                enc = chat.encode(self._messages(text, image), [image] if image is not None else [],
                                  add_generation_prompt=True, enable_thinking=decoding.enable_thinking)
                enc.pop("labels")
                encoded.append(enc)
            batch = chat.collate(encoded, padding_side="left")
            batch = {k: v.to(device) for k, v in batch.items()}
            kwargs: dict[str, Any] = {
                "max_new_tokens": decoding.max_new_tokens,
                "do_sample": decoding.do_sample,
                "pad_token_id": chat.pad_token_id,
                "eos_token_id": chat.stop_ids(model),
            }
            if decoding.do_sample:
                kwargs.update(temperature=decoding.temperature, top_p=decoding.top_p)
            with torch.no_grad():
                ids = model.generate(**batch, **kwargs)
            new = ids[:, batch["input_ids"].shape[1] :]
            out += [chat.decode(row).strip() for row in new]
        return out


def generator_from_context(ctx: Any) -> Generator:
    """The generator an evaluator uses in a run: ``ctx.bundle`` itself when it already is
    a :class:`Generator`, else a :class:`TransformersGenerator` over
    :func:`ftib.models.bundle.bundle_from_context`."""
    if isinstance(ctx.bundle, Generator):
        return ctx.bundle
    from ftib.models.bundle import bundle_from_context

    return TransformersGenerator(bundle_from_context(ctx))
