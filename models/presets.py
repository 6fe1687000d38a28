"""Tiny presets: real Qwen3-VL / Qwen3 classes with small configs, built without downloads.

A preset is a frozen :class:`PresetConfig`. :func:`build_preset` trains the tokenizer on
FTibWorld text, builds the model with weights drawn from ``torch.manual_seed(seed)``
and writes model, tokenizer (with ftib's chat template) and image processor with
``save_pretrained`` into a directory. The result loads through
:func:`ftib.models.load_bundle` like any Hugging Face checkpoint. Building is
deterministic: the same config gives the same files (weights bit-for-bit).

:func:`preset_dir` caches builds under ``$FTIB_CACHE_DIR/presets/<name>-<hash>``
(default ``~/.cache/ftib``), the hash covering the config and the generator versions,
so ``load_bundle("tiny-qwen3-vl")`` builds once and then loads from disk.

Two kinds of preset:

* *built* presets (:data:`PRESETS`): random-init weights, built locally in seconds; the
  fast stand-ins for tests (``tiny-qwen3-vl``, ``tiny-qwen3``) and the starting point of
  the base model's pretraining recipe (``ftibworld-base-init``, whose tokenizer is
  trained on Chinese and English only).
* *shipped* presets (:data:`SHIPPED`): pretrained weights that come with the package,
  in ``models/assets/<name>/`` with a ``SHA256SUMS`` file. ``ftibworld-base`` is the
  multilingual (zh/en) FTibWorld base model, reproduced by
  ``ftib run configs/ftibworld-base.yaml``; its model card is ``README.md`` in its folder.
  A shipped file that is missing or fails its checksum is an error naming the file,
  never a silent rebuild.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftib.core.errors import FtibError, did_you_mean
from ftib.core.rundir import atomic_dir, build_once

log = logging.getLogger("ftib.models")

PRESET_FORMAT_VERSION = 1
PRESET_FILE = "ftib_preset.json"


@dataclass(frozen=True, kw_only=True)
class PresetConfig:
    """Everything that defines a tiny preset.

    Text model: ``hidden_size``, ``intermediate_size``, ``num_layers``, ``num_heads``,
    ``num_kv_heads``, ``head_dim`` (``hidden_size // num_heads`` when 0). Vision tower
    (``vision=True`` only): ``vision_*`` sizes, ``patch_size``, ``merge_size``,
    ``temporal_patch_size``; images are resized to ``image_size`` x ``image_size``
    (so each image costs ``(image_size / patch_size / merge_size)**2`` LM tokens).
    Tokenizer: byte-level BPE with ``vocab_size`` merges-vocabulary entries trained on
    ``tokenizer_docs`` FTibWorld documents from ``tokenizer_seed``.
    """

    name: str
    vision: bool
    seed: int = 0
    vocab_size: int = 2048
    tokenizer_docs: int = 1500
    tokenizer_seed: int = 0
    #: ``world``: the tokenizer learns from FTibWorld text in all three languages;
    #: ``zh_en``: from its Chinese and English text only (no Tibetan merges, so Tibetan
    #: falls back to bytes, as in a Chinese/English model such as Qwen).
    tokenizer_corpus: str = "world"
    #: no BPE merge across Chinese characters (:func:`ftib.models.tokenizer.train_bpe_tokenizer`)
    tokenizer_split_han: bool = False
    hidden_size: int = 96
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 0
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_heads: int = 4
    patch_size: int = 8
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_size: int = 64

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def fingerprint(self) -> str:
        """Hash of the config and of the tokenizer's training text, so that a change to the
        FTibWorld grammar never reuses a stale cached build."""
        config = dataclasses.asdict(self)
        if not config["tokenizer_split_han"]:  # the default leaves earlier fingerprints as they were
            del config["tokenizer_split_han"]
        blob = json.dumps({"config": config, "format": PRESET_FORMAT_VERSION,
                           "corpus": _corpus_digest(self.tokenizer_corpus, self.tokenizer_seed,
                                                    self.tokenizer_docs)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def check(self) -> None:
        if self.tokenizer_corpus not in TOKENIZER_CORPORA:
            raise FtibError(f"preset {self.name}: tokenizer_corpus {self.tokenizer_corpus!r}; "
                            f"{did_you_mean(self.tokenizer_corpus, TOKENIZER_CORPORA)}")
        if self.hidden_size % self.num_heads:
            raise FtibError(f"preset {self.name}: hidden_size {self.hidden_size} is not divisible by "
                            f"num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise FtibError(f"preset {self.name}: num_heads must be a multiple of num_kv_heads")
        if self.vision:
            if self.image_size % (self.patch_size * self.merge_size):
                raise FtibError(f"preset {self.name}: image_size {self.image_size} must be a multiple of "
                                f"patch_size*merge_size = {self.patch_size * self.merge_size}")
            if self.vision_hidden_size % self.vision_heads:
                raise FtibError(f"preset {self.name}: vision_hidden_size must be divisible by vision_heads")
            if self.resolved_head_dim % 2 or self.resolved_head_dim < 6:
                raise FtibError(f"preset {self.name}: head_dim must be even and >= 6 for M-RoPE")


TOKENIZER_CORPORA = ("world", "zh_en")


def tokenizer_corpus(kind: str, seed: int, docs: int) -> list[str]:
    """The tokenizer training text of a preset (see :attr:`PresetConfig.tokenizer_corpus`):
    FTibWorld text, which is ftib.data's, reached through the ``world_text_corpus`` hook."""
    from ftib.core.errors import FtibError
    from ftib.core.registry import Registry

    corpus = Registry().hook("world_text_corpus")
    if corpus is None:
        raise FtibError("building a preset's tokenizer needs the 'world_text_corpus' hook (ftib.data), "
                        "which is not installed")
    return list(corpus(kind, seed, docs))


@functools.lru_cache(maxsize=8)
def _corpus_digest(kind: str, seed: int, docs: int) -> str:
    h = hashlib.sha256()
    for text in tokenizer_corpus(kind, seed, docs):
        h.update(text.encode("utf-8") + b"\0")
    return h.hexdigest()


PRESETS: dict[str, PresetConfig] = {
    "tiny-qwen3-vl": PresetConfig(name="tiny-qwen3-vl", vision=True),
    "tiny-qwen3": PresetConfig(name="tiny-qwen3", vision=False),
    # The random-init start of `configs/ftibworld-base.yaml`: 48-pixel images (one LM
    # token per scene cell), a tokenizer without Tibetan whose merges stop at every Han
    # character (as Qwen's: a Chinese word is one to three tokens; without the split the
    # world's small Chinese vocabulary fused whole questions into one token, and a
    # Tibetan question, 18 tokens after extension, shared nothing with its Chinese twin;
    # docs/tokenizer.md, "The base model's Chinese tokens").
    "ftibworld-base-init": PresetConfig(name="ftibworld-base-init", vision=True, image_size=48,
                                        tokenizer_corpus="zh_en", tokenizer_split_han=True,
                                        hidden_size=128, intermediate_size=320,
                                        num_layers=3, num_heads=4, num_kv_heads=2),
}

ASSETS = Path(__file__).resolve().parent / "assets"
CHECKSUMS = "SHA256SUMS"
#: Shipped (pretrained) presets: name -> their folder in the package.
SHIPPED: dict[str, Path] = {"ftibworld-base": ASSETS / "ftibworld-base"}


def all_preset_names() -> list[str]:
    return sorted(set(PRESETS) | set(SHIPPED))


def is_preset(name: str) -> bool:
    return name in PRESETS or name in SHIPPED


def looks_like_preset(name: str) -> str | None:
    """The preset ``name`` was probably meant to be (a typo), or None.

    Hub names carry an organisation (``Qwen/Qwen3-VL-8B-Instruct``) and local paths a
    separator, so only a bare name close to a preset's is flagged."""
    from ftib.core.errors import closest

    if "/" in name or "\\" in name or Path(name).expanduser().exists() or is_preset(name):
        return None
    return closest(name, all_preset_names())


def write_checksums(folder: Path | str) -> Path:
    """Write ``SHA256SUMS`` (``<sha256>  <file>`` per file, sorted) for a shipped preset."""
    folder = Path(folder)
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(folder).as_posix()}"
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != CHECKSUMS]
    out = folder / CHECKSUMS
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def verify_shipped(name: str) -> Path:
    """The folder of shipped preset ``name`` after checking every file against ``SHA256SUMS``.

    Raises:
        FtibError: the folder, its checksum list or a listed file is missing, or a file's
            hash differs (naming the file and both hashes).
    """
    folder = SHIPPED[name]
    sums = folder / CHECKSUMS
    if not sums.is_file():
        raise FtibError(f"shipped preset {name}: {sums} is missing (the package is incomplete; reinstall ftib "
                        f"or rebuild the weights with `ftib run configs/{name}.yaml`)")
    listed = 0
    for ln, line in enumerate(sums.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, _, rel = line.partition("  ")
        if len(digest) != 64 or not rel:
            raise FtibError(f"{sums}:{ln}: expected '<sha256>  <file>'")
        path = folder / rel
        if not path.is_file():
            raise FtibError(f"shipped preset {name}: {path} is missing (listed in {sums})")
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != digest:
            raise FtibError(f"shipped preset {name}: {path} fails its checksum (sha256 {got}, {sums} says "
                            f"{digest}); the file is corrupt or was changed - reinstall ftib or rebuild it with "
                            f"`ftib run configs/{name}.yaml`")
        listed += 1
    if not listed:
        raise FtibError(f"shipped preset {name}: {sums} lists no files")
    return folder


def get_preset(name: str, **overrides: Any) -> PresetConfig:
    """The preset ``name`` with fields replaced by ``overrides`` (unknown ones are errors)."""
    if name in SHIPPED:
        raise FtibError(f"preset {name!r} is shipped pretrained weights; it has no build config "
                        "and takes no preset_overrides")
    if name not in PRESETS:
        raise FtibError(f"unknown model preset {name!r}; {did_you_mean(name, all_preset_names())}")
    fields = {f.name for f in dataclasses.fields(PresetConfig)}
    for key in overrides:
        if key not in fields or key in ("name", "vision"):
            raise FtibError(f"preset {name}: unknown or fixed field {key!r}; "
                            f"{did_you_mean(key, fields - {'name', 'vision'})}")
    from ftib.core.config import build, to_dict

    # Typed like every config field (an image_size of "big" is refused here, naming it).
    cfg = build(PresetConfig, {**to_dict(PRESETS[name]), **overrides}, where="model.preset_overrides")
    cfg.check()
    return cfg


def cache_root() -> Path:
    from ftib.core.rundir import cache_dir

    return cache_dir()


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (t, h, w) like Qwen3-VL's 24/20/20 of 64."""
    half = head_dim // 2
    hw = max(1, half * 20 // 64)
    return [half - 2 * hw, hw, hw]


def model_config(cfg: PresetConfig, tokenizer: Any):
    """The transformers config of preset ``cfg`` for ``tokenizer``'s vocabulary."""
    from transformers import Qwen3Config, Qwen3VLConfig

    vocab = len(tokenizer)
    text = dict(
        vocab_size=vocab,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.resolved_head_dim,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
    )
    if not cfg.vision:
        return Qwen3Config(**text, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
                           tie_word_embeddings=cfg.tie_word_embeddings, eos_token_id=tokenizer.eos_token_id,
                           bos_token_id=None)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.rope_theta,
                               "mrope_section": _mrope_section(cfg.resolved_head_dim), "mrope_interleaved": True}
    grid = cfg.image_size // cfg.patch_size
    vision = dict(
        depth=cfg.vision_depth,
        hidden_size=cfg.vision_hidden_size,
        intermediate_size=cfg.vision_intermediate_size,
        num_heads=cfg.vision_heads,
        patch_size=cfg.patch_size,
        spatial_merge_size=cfg.merge_size,
        temporal_patch_size=cfg.temporal_patch_size,
        out_hidden_size=cfg.hidden_size,
        num_position_embeddings=grid * grid,
        deepstack_visual_indexes=[cfg.vision_depth - 1] if cfg.num_layers > 1 else [],
    )
    ids = tokenizer.convert_tokens_to_ids
    conf = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    conf.eos_token_id = tokenizer.eos_token_id
    conf.pad_token_id = tokenizer.pad_token_id
    return conf


def image_processor_for(cfg: PresetConfig):
    """A Pillow-backed Qwen2-VL image processor resizing to ``image_size`` squared."""
    from transformers import Qwen2VLImageProcessorPil

    pixels = cfg.image_size * cfg.image_size
    return Qwen2VLImageProcessorPil(
        patch_size=cfg.patch_size,
        merge_size=cfg.merge_size,
        temporal_patch_size=cfg.temporal_patch_size,
        size={"shortest_edge": pixels, "longest_edge": pixels},
    )


def build_preset(cfg: PresetConfig, out: Path | str) -> Path:
    """Build preset ``cfg`` and write it to ``out`` (replaced atomically)."""
    import torch
    from transformers import Qwen3ForCausalLM, Qwen3VLForConditionalGeneration
    from transformers import GenerationConfig

    from ftib.models.chat import CHAT_TEMPLATE
    from ftib.models.tokenizer import train_bpe_tokenizer

    cfg.check()
    out = Path(out)
    tokenizer = train_bpe_tokenizer(tokenizer_corpus(cfg.tokenizer_corpus, cfg.tokenizer_seed, cfg.tokenizer_docs),
                                    cfg.vocab_size, split_han=cfg.tokenizer_split_han)
    tokenizer.chat_template = CHAT_TEMPLATE
    conf = model_config(cfg, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        cls = Qwen3VLForConditionalGeneration if cfg.vision else Qwen3ForCausalLM
        model = cls(conf).float()
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if cfg.vision:
            image_processor_for(cfg).save_pretrained(tmp)
        (tmp / PRESET_FILE).write_text(json.dumps({"preset": dataclasses.asdict(cfg),
                                                   "fingerprint": cfg.fingerprint()}, indent=2) + "\n")
    n = sum(p.numel() for p in model.parameters())
    log.info("built preset %s (%d parameters) in %s", cfg.name, n, out)
    return out


def preset_dir(name: str, *, cache_dir: Path | str | None = None, **overrides: Any) -> Path:
    """Directory of preset ``name``: a built preset in the cache (built on first use), or
    a shipped preset's package folder after its checksums pass."""
    if name in SHIPPED:
        if overrides:
            raise FtibError(f"preset {name!r} is shipped pretrained weights; preset_overrides "
                            f"{sorted(overrides)} cannot apply")
        return verify_shipped(name)
    cfg = get_preset(name, **overrides)
    root = Path(cache_dir) if cache_dir else cache_root()
    path = root / "presets" / f"{cfg.name}-{cfg.fingerprint()}"

    def build() -> None:
        log.info("building preset %s into %s", name, path)
        build_preset(cfg, path)

    build_once(path, (path / PRESET_FILE).is_file, build)
    return path
