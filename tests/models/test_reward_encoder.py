import json
import random

import pytest

from ftib.core import FtibError
from ftib.models.reward_encoder import EncoderTrainConfig, read_pairs, train_encoder
from ftib.stages.rewards import SemanticReward

TIB_DIGITS = "༠༡༢༣༤༥༦༧༨༩"


def digit_pairs(n, seed=0):
    """Numbers written with Tibetan digits paired with the same number in Chinese numerals."""
    zh = "零一二三四五六七八九"
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        num = str(rng.randrange(100, 99999))
        out.append({"bo": "".join(TIB_DIGITS[int(c)] for c in num) + "།", "zh": "".join(zh[int(c)] for c in num) + "。"})
    return out


def test_training_improves_heldout_retrieval_and_loads(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in digit_pairs(400)), encoding="utf-8")
    cfg = EncoderTrainConfig(vocab_size=300, hidden_size=48, layers=1, heads=2, epochs=6, batch_size=32,
                             lr=3e-3, holdout=0.2, max_length=16)
    report = train_encoder(read_pairs(path), tmp_path / "enc", cfg, progress=False)
    assert report["heldout_retrieval_top1_after"] > report["heldout_retrieval_top1_before"] + 0.2, report
    assert report["last_loss"] < report["first_loss"]
    assert json.loads((tmp_path / "enc" / "training_report.json").read_text())["train_pairs"] == 320
    reward = SemanticReward(SemanticReward.Config(model=str(tmp_path / "enc")))
    p = digit_pairs(1, seed=99)[0]
    same, other = reward(["x", "x"], [p["zh"], "零零零。"], [p["zh"], p["zh"]], [{}, {}]).tolist()
    assert same == pytest.approx(1.0, abs=1e-5) and other < same


def test_bad_pairs_files(tmp_path):
    with pytest.raises(FtibError, match="does not exist"):
        read_pairs(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"bo": "ཀ", "zh": "一"}\n{oops\n', encoding="utf-8")
    with pytest.raises(FtibError, match=r"bad.jsonl:2: not valid JSON"):
        read_pairs(bad)
    bad.write_text('{"bo": "ཀ", "n": 1}\n', encoding="utf-8")
    with pytest.raises(FtibError, match=r"bad.jsonl:1: need two text fields"):
        read_pairs(bad)
    bad.write_text('{"bo": "ཀ", "zh": "一"}\n' * 3, encoding="utf-8")
    with pytest.raises(FtibError, match="need at least 8"):
        read_pairs(bad)
