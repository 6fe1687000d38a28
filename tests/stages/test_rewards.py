import os

import pytest
import torch

from ftib.core import ConfigError, build_config
from ftib.stages.rewards import FormatReward, LanguageReward, LengthReward, SemanticReward, script_share

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def call(reward, completions, metadata=None):
    n = len(completions)
    return reward(["p"] * n, completions, ["r"] * n, metadata or [{}] * n).tolist()


@pytest.mark.parametrize(
    "text, scripts, share",
    [
        ("བཀྲ་ཤིས་བདེ་ལེགས།", ("tibetan",), 1.0),
        ("红色的圆", ("han",), 1.0),
        ("红色 red", ("han",), 0.4),          # 2 Han letters of 5
        ("ཀ་ A", ("tibetan",), 0.5),
        ("café", ("latin",), 1.0),
        ("cafe\u0301", ("latin",), 1.0),       # a combining accent counts with its letter
        ("123 !!", ("tibetan",), 0.0),        # no letters at all
        ("", ("han",), 0.0),
        ("ཀ红", ("tibetan", "han"), 1.0),
    ],
)
def test_script_share(text, scripts, share):
    assert script_share(text, scripts) == pytest.approx(share)


def test_language_reward_modes_and_metadata():
    binary = LanguageReward(build_config(LanguageReward.Config, {"scripts": ["han"], "threshold": 0.8}))
    assert call(binary, ["红色的圆", "红色 red", "", "༡༢"]) == [1.0, 0.0, 0.0, 0.0]
    frac = LanguageReward(LanguageReward.Config(scripts=("han",), mode="fraction"))
    assert call(frac, ["红色 red"]) == pytest.approx([0.4])
    per_item = call(binary, ["ཀ་ཁ་", "ཀ་ཁ་"], [{"target_scripts": ["tibetan"]}, {}])
    assert per_item == [1.0, 0.0]
    with pytest.raises(ValueError, match="differ in length"):
        binary(["p"], ["a", "b"], ["r"], [{}])
    with pytest.raises(ConfigError, match="threshold"):
        build_config(LanguageReward.Config, {"threshold": 0})


def test_length_and_format_rewards():
    length = LengthReward(LengthReward.Config(min_chars=2, max_chars=4, slack=2))
    assert call(length, ["a", "abc", "abcde", "abcdefgh"]) == [0.5, 1.0, 0.5, 0.0]
    fmt = FormatReward(FormatReward.Config(pattern=r"[A-D]"))
    assert call(fmt, ["A", " B ", "AB", "E"]) == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="regular expression"):
        build_config(FormatReward.Config, {"pattern": "("})


def test_semantic_reward_with_a_real_encoder(minilm_path):
    reward = SemanticReward(SemanticReward.Config(model=str(minilm_path), impl="native"))
    refs = ["A red circle is on the left.", "Three blue squares."]
    comps = ["A red circle is on the left.", "There is a red circle on the left side.",
             "The stock market fell sharply today.", ""]
    scores = reward(["p"] * 4, comps, [refs[0]] * 4, [{}] * 4)
    assert scores.dtype == torch.float32 and scores.shape == (4,)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] > 0.7 > scores[2]
    assert scores[3] == 0.0  # empty completion
    # Same scores as the encoder's own cosine similarity, through every kernel impl.
    emb = reward.encoder.encode(comps[:3] + refs[:1], convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(emb[:3], emb[3:4])
    torch.testing.assert_close(scores[:3], cos.float(), atol=1e-5, rtol=1e-5)
    torch_impl = SemanticReward(SemanticReward.Config(model=str(minilm_path), impl="torch", threshold=0.5))
    rescaled = torch_impl(["p"] * 3, comps[:3], [refs[0]] * 3, [{}] * 3)
    torch.testing.assert_close(rescaled, ((cos.float() - 0.5) / 0.5).clamp(min=0), atol=1e-5, rtol=1e-5)
    assert set(reward._cache) == {refs[0]}  # references are encoded once and cached


def test_semantic_reward_bad_encoder_paths(tmp_path):
    """A local encoder path is checked when the config is built (before any work), and
    again when the encoder loads (the directory may change in between)."""
    from ftib.core.config import build
    from ftib.stages.rewards import load_encoder

    with pytest.raises(ConfigError, match="does not exist"):
        build(SemanticReward.Config, {"model": str(tmp_path / "nope")})
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="not a sentence-transformers model"):
        build(SemanticReward.Config, {"model": str(tmp_path / "plain")})
    with pytest.raises(ConfigError, match="not a sentence-transformers model"):
        load_encoder(str(tmp_path / "plain"))


def test_semantic_reward_resolves_its_encoder_in_bind(tmp_path, monkeypatch):
    """The reward, not the stage, turns ``ftibworld-encoder`` into a trained encoder,
    from the RewardContext it is bound with."""
    import ftib.models.reward_encoder as reward_encoder
    from ftib.core import FtibError, RewardContext

    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "modules.json").write_text("[]")
    calls = []

    def fake_resolve(spec, data="ftibworld", seed=0):
        calls.append((spec, data, seed))
        return str(enc)

    monkeypatch.setattr(reward_encoder, "resolve_encoder", fake_resolve)
    unbound = SemanticReward(SemanticReward.Config(model="ftibworld-encoder"))
    with pytest.raises(FtibError, match="bind"):
        unbound.encoder  # noqa: B018  (the property loads the encoder)
    reward = SemanticReward(SemanticReward.Config(model="ftibworld-encoder"))
    assert reward.bind(RewardContext(device="meta", data="ftibworld:tiny:3", seed=5)) is reward
    assert calls == [("ftibworld-encoder", "ftibworld:tiny:3", 5)]
    assert reward.model == str(enc) and reward.device == "meta"
    pinned = SemanticReward(SemanticReward.Config(model="ftibworld-encoder", device="cpu"))
    pinned.bind(RewardContext(device="meta", data="ftibworld", seed=0))
    assert pinned.device == "cpu"  # config.device other than auto wins over the policy's
    # A resolved directory that holds no sentence-transformers model fails in bind.
    (tmp_path / "plain").mkdir()
    monkeypatch.setattr(reward_encoder, "resolve_encoder", lambda spec, data="", seed=0: str(tmp_path / "plain"))
    with pytest.raises(ConfigError, match="not a sentence-transformers model"):
        SemanticReward(SemanticReward.Config(model="ftibworld-encoder")).bind(
            RewardContext(device="cpu", data="ftibworld", seed=0))
