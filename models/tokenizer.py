"""A byte-level BPE tokenizer trained locally, with Qwen's special tokens.

The tiny presets need a tokenizer without a download. This trains one with the
``tokenizers`` library using Qwen2's own pre-tokenisation (NFC, the Qwen split regex,
byte-level alphabet) and wraps it in ``transformers.Qwen2Tokenizer``, so it saves and
reloads through ``AutoTokenizer`` exactly like a real Qwen tokenizer. As in Qwen, the
special tokens come after the BPE vocabulary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from ftib.core.errors import FtibError

# Qwen2's pre-tokenisation pattern (contractions, letters, single digits, punctuation runs,
# newlines, spaces).
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

#: Qwen2.5/Qwen3's special tokens in their id order.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT, IM_START, IM_END,
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", VISION_START, VISION_END, "<|vision_pad|>",
    IMAGE_PAD, VIDEO_PAD,
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
# Qwen3 marks these as ordinary (non-special) added tokens.
QWEN_ADDED_TOKENS: tuple[str, ...] = ("<tool_response>", "</tool_response>", "<think>", "</think>")


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2048, *, min_frequency: int = 2,
                        split_han: bool = False):
    """Train a byte-level BPE on ``texts`` and return a ``Qwen2Tokenizer``.

    Args:
        texts: training text (any languages).
        vocab_size: size of the BPE vocabulary *before* the special tokens are appended
            (at least 256 + 1: the byte alphabet plus one merge).
        min_frequency: minimum pair count for a merge.
        split_han: learn no merge across two Chinese (Han) characters, so Chinese is
            tokenised character by character. On a small, templated corpus such as
            FTibWorld's, byte-level BPE otherwise merges whole question frames with
            their object (``这张图里有树吗`` became one token), and a model built on them
            never learns to compose a question from its words. Encoding needs nothing
            extra: Qwen's pre-tokenizer is kept, and with no cross-character merge
            learnt none can apply.

    Returns:
        ``transformers.Qwen2Tokenizer`` with ``eos_token="<|im_end|>"``,
        ``pad_token="<|endoftext|>"`` and the multimodal tokens registered as
        ``image_token``/``video_token``/``vision_start_token``/``vision_end_token``.
    """
    from transformers import Qwen2Tokenizer

    if vocab_size <= 256:
        raise FtibError(f"vocab_size must exceed the 256-byte alphabet, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        *([pre_tokenizers.Split(Regex(r"\p{Han}"), behavior="isolated", invert=False)] if split_han else []),
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer)
    state = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = state["vocab"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    # Give the special and added tokens their Qwen order right after the BPE vocabulary
    # before the wrapper registers them (it would otherwise number them as it meets them).
    n_bpe = len(vocab)
    for i, t in enumerate(QWEN_SPECIAL_TOKENS + QWEN_ADDED_TOKENS):
        vocab[t] = n_bpe + i
    hf = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        bos_token=None,
        errors="replace",
        extra_special_tokens={
            "image_token": IMAGE_PAD,
            "video_token": VIDEO_PAD,
            "vision_start_token": VISION_START,
            "vision_end_token": VISION_END,
        },
        model_max_length=32768,
    )
    hf.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS],
                  special_tokens=True)
    hf.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_ADDED_TOKENS])
    ids = hf.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS))
    if ids != list(range(n_bpe, n_bpe + len(QWEN_SPECIAL_TOKENS))):
        raise FtibError(f"special tokens did not get consecutive ids after the BPE vocabulary: {ids}")
    return hf
