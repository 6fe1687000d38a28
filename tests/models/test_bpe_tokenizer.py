"""The locally trained byte-level BPE tokenizer with Qwen's special tokens."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from ftib.core.errors import FtibError
from ftib.data.world.build import text_corpus
from ftib.models.tokenizer import QWEN_ADDED_TOKENS, QWEN_SPECIAL_TOKENS, train_bpe_tokenizer

SAMPLE = "པར་འདིའི་ནང་ན་ཉ་དམར་པོ་གསུམ་ཡོད། 图里有三条红色的鱼。 There are 3 red fish.<|im_end|>"


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(text_corpus(0, 200), vocab_size=600)


def test_special_tokens_follow_the_bpe_vocabulary_in_qwen_order(tok):
    ids = tok.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS + QWEN_ADDED_TOKENS))
    first = ids[0]
    assert ids == list(range(first, first + len(ids)))
    assert len(tok) == first + len(ids)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.image_token == "<|image_pad|>" and tok.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    # A special token is one id, never split into bytes.
    assert tok("<|vision_start|><|image_pad|><|vision_end|>", add_special_tokens=False).input_ids == \
        tok.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"])


def test_round_trip_and_reload(tok, tmp_path):
    ids = tok(SAMPLE, add_special_tokens=False).input_ids
    assert tok.decode(ids) == SAMPLE
    # Learned merges shorten the Tibetan text below its UTF-8 byte count.
    bo = SAMPLE.split(" ")[0]
    assert len(tok(bo, add_special_tokens=False).input_ids) < len(bo.encode()) / 3
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(SAMPLE, add_special_tokens=False).input_ids == ids
    assert again.image_token_id == tok.image_token_id and again.eos_token_id == tok.eos_token_id


def test_training_is_deterministic():
    a = train_bpe_tokenizer(text_corpus(0, 50), vocab_size=400)
    b = train_bpe_tokenizer(text_corpus(0, 50), vocab_size=400)
    assert a.get_vocab() == b.get_vocab()


def test_vocab_size_must_exceed_the_byte_alphabet():
    with pytest.raises(FtibError, match="256"):
        train_bpe_tokenizer(["ཉ"], vocab_size=200)


def test_split_han_learns_no_merge_across_chinese_characters(tmp_path):
    """``split_han``: Chinese is one token per character (templated text otherwise fuses
    a whole question frame with its object); English and Tibetan keep their merges, the
    text round-trips, and the saved tokenizer encodes the same without the split."""
    from ftib.data.world.build import pretrain_text_corpus

    corpus = pretrain_text_corpus(0, 300)
    fused = train_bpe_tokenizer(corpus, vocab_size=2048)
    split = train_bpe_tokenizer(corpus, vocab_size=2048, split_han=True)
    zh = "这张图里有树吗？"
    assert len(fused(zh, add_special_tokens=False).input_ids) < len(zh) - 2  # frames fused
    ids = split(zh, add_special_tokens=False).input_ids
    assert [split.decode([i]) for i in ids] == list(zh)
    assert split.decode(split(SAMPLE, add_special_tokens=False).input_ids) == SAMPLE
    assert len(split(" picture", add_special_tokens=False).input_ids) == 1
    split.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(zh, add_special_tokens=False).input_ids == ids
