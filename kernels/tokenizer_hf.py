"""``transformers`` face of :class:`ftib.kernels.tokenizer.FastTokenizer`.

:class:`FastPreTrainedTokenizer` is a ``PreTrainedTokenizerFast`` (so chat templates,
``__call__``, padding, truncation, ``decode`` and ``save_pretrained`` behave as usual) whose
plain-text encoding runs in the native encoder. It is built like any fast tokenizer
(``FastPreTrainedTokenizer.from_pretrained(path)``) or from one
(:meth:`FastPreTrainedTokenizer.from_tokenizer`); a tokenizer the native encoder does not
implement raises :class:`~ftib.kernels.tokenizer.UnsupportedTokenizerError` at
construction -- asking for this class is an explicit request for the native path.

Calls the native encoder does not serve are passed, unchanged, to the ``tokenizers``
backend: text pairs, pre-split words, offsets, overflowing tokens, special-tokens masks,
``split_special_tokens=True``, a stride, and truncation together with a post-processor
that adds tokens. Both paths give the same ids (tests/kernels/test_fast_tokenizer.py).
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerFast
from transformers.tokenization_utils_base import BatchEncoding, TruncationStrategy

from ftib.kernels.tokenizer import FastTokenizer, fast_tokenizer_for

__all__ = ["FastPreTrainedTokenizer"]


class FastPreTrainedTokenizer(PreTrainedTokenizerFast):
    """``PreTrainedTokenizerFast`` whose text encoding runs in :class:`FastTokenizer`."""

    def __init__(self, *args: Any, num_threads: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.native: FastTokenizer = fast_tokenizer_for(self)
        self.num_threads = num_threads

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerFast, **kwargs: Any) -> FastPreTrainedTokenizer:
        """Wrap an already loaded fast tokenizer (same backend file, specials and template)."""
        init = dict(getattr(tokenizer, "init_kwargs", {}))
        init.pop("tokenizer_object", None)
        init.pop("tokenizer_file", None)
        init.update(kwargs)
        out = cls(tokenizer_object=tokenizer.backend_tokenizer, **init)
        if getattr(tokenizer, "chat_template", None):
            out.chat_template = tokenizer.chat_template
        return out

    def _native_ok(self, text: Any, text_pair: Any, is_split_into_words: bool, stride: int,
                   return_overflowing_tokens: bool, return_special_tokens_mask: bool,
                   return_offsets_mapping: bool, split_special_tokens: bool | None,
                   add_special_tokens: bool, truncation_strategy: TruncationStrategy,
                   kwargs: dict[str, Any]) -> bool:
        if text_pair is not None or is_split_into_words or stride or return_overflowing_tokens \
                or return_special_tokens_mask or return_offsets_mapping or kwargs:
            return False
        if (self.split_special_tokens if split_special_tokens is None else split_special_tokens):
            return False
        if truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE and add_special_tokens \
                and (self.native._prefix or self.native._suffix):
            return False
        if isinstance(text, str):
            return True
        return isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text)

    def _encode_plus(self, text: Any, text_pair: Any = None, add_special_tokens: bool = True,
                     padding_strategy: Any = None, truncation_strategy: Any = TruncationStrategy.DO_NOT_TRUNCATE,
                     max_length: int | None = None, stride: int = 0, is_split_into_words: bool = False,
                     pad_to_multiple_of: int | None = None, padding_side: str | None = None,
                     return_tensors: Any = None, return_token_type_ids: bool | None = None,
                     return_attention_mask: bool | None = None, return_overflowing_tokens: bool = False,
                     return_special_tokens_mask: bool = False, return_offsets_mapping: bool = False,
                     return_length: bool = False, verbose: bool = True,
                     split_special_tokens: bool | None = None, **kwargs: Any) -> BatchEncoding:
        args = dict(text=text, text_pair=text_pair, add_special_tokens=add_special_tokens,
                    truncation_strategy=truncation_strategy, max_length=max_length, stride=stride,
                    is_split_into_words=is_split_into_words, pad_to_multiple_of=pad_to_multiple_of,
                    padding_side=padding_side, return_tensors=return_tensors,
                    return_token_type_ids=return_token_type_ids, return_attention_mask=return_attention_mask,
                    return_overflowing_tokens=return_overflowing_tokens,
                    return_special_tokens_mask=return_special_tokens_mask,
                    return_offsets_mapping=return_offsets_mapping, return_length=return_length,
                    verbose=verbose, split_special_tokens=split_special_tokens)
        if padding_strategy is not None:
            args["padding_strategy"] = padding_strategy
        if not self._native_ok(text, text_pair, is_split_into_words, stride, return_overflowing_tokens,
                               return_special_tokens_mask, return_offsets_mapping, split_special_tokens,
                               add_special_tokens, truncation_strategy, kwargs):
            return super()._encode_plus(**args, **kwargs)
        batched = not isinstance(text, str)
        texts = list(text) if batched else [text]
        ids = self.native.encode_batch(texts, num_threads=self.num_threads, add_special_tokens=add_special_tokens)
        if truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE and max_length is not None:
            ids = [x[:max_length] if self.truncation_side == "right" else x[-max_length:] for x in ids]
        data: dict[str, Any] = {"input_ids": ids}
        if return_token_type_ids or (return_token_type_ids is None and "token_type_ids" in self.model_input_names):
            data["token_type_ids"] = [[0] * len(x) for x in ids]
        if not batched and not return_tensors:
            data = {k: v[0] for k, v in data.items()}
        out = self.pad(data, padding=padding_strategy if padding_strategy is not None else False,
                       max_length=max_length, pad_to_multiple_of=pad_to_multiple_of, padding_side=padding_side,
                       return_attention_mask=return_attention_mask, return_tensors=return_tensors)
        if return_length:
            lengths = [len(x) for x in ids]
            out["length"] = lengths if batched or return_tensors else lengths[0]
        return out
