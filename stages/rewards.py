"""Reward plugins for GRPO (entry-point group ``ftib.rewards``).

* ``semantic`` — embedding-level similarity of a completion to its reference: a
  sentence-transformers encoder (hub name or local path, loaded once, frozen), batched
  encoding, reference embeddings cached, cosine by the similarity kernel
  (:func:`ftib.kernels.similarity.embedding_similarity`), threshold rescale
  ``max(0, (s - tau) / (1 - tau))``. The seed paper weights it 1.5.
* ``language`` — is the completion written in the target script(s)? The share of its
  letters (Unicode categories L* and M*, so Tibetan vowel signs count) that belong to the
  target scripts; 1/0 against a threshold, or the share itself. An empty completion, or
  one with no letters at all (digits, punctuation), scores 0: it shows no language. The
  seed paper weights it 1.0.
* ``length`` — a soft length window in characters (optional shaping).
* ``format`` — the completion matches a regular expression (optional).

Every reward returns ``(N,) float32`` on the CPU; the GRPO stage weights and sums them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ftib.core import ConfigError, FtibError, Reward, RewardContext

from ftib.data.scripts import SCRIPT_RANGES, Script, script_of, script_share  # noqa: F401  (re-exported)


class LanguageReward(Reward):
    """Language consistency: the completion is written in the target script(s)."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """Attributes:
        scripts: the target scripts (e.g. ``[han]`` for Tibetan→Chinese translation).
        threshold: minimum share of letters in the target scripts for a reward of 1.
        mode: ``binary`` (1/0 against the threshold) or ``fraction`` (the share itself).
        target_key: metadata key that, when present, overrides ``scripts`` per item.
        """

        scripts: tuple[Script, ...] = ("tibetan",)
        threshold: float = 0.9
        mode: Literal["binary", "fraction"] = "binary"
        target_key: str = "target_scripts"

        def __post_init__(self) -> None:
            if not self.scripts:
                raise ValueError("scripts: name at least one of tibetan, han, latin")
            if not 0.0 < self.threshold <= 1.0:
                raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")

    def __call__(self, prompts, completions, references, metadata) -> torch.Tensor:
        _check_lengths(prompts, completions, references, metadata)
        out = []
        for text, meta in zip(completions, metadata):
            scripts = meta.get(self.config.target_key, self.config.scripts) if meta else self.config.scripts
            if isinstance(scripts, str):
                scripts = (scripts,)
            unknown = [s for s in scripts if s not in SCRIPT_RANGES]
            if unknown:
                raise FtibError(f"language reward: unknown scripts {unknown} in metadata (known: {sorted(SCRIPT_RANGES)})")
            share = script_share(text, scripts)
            out.append(share if self.config.mode == "fraction" else float(share >= self.config.threshold))
        return torch.tensor(out, dtype=torch.float32)


class LengthReward(Reward):
    """1 inside ``[min_chars, max_chars]``, falling linearly to 0 over ``slack`` characters."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        min_chars: int = 1
        max_chars: int = 200
        slack: int = 50

        def __post_init__(self) -> None:
            if not 0 <= self.min_chars <= self.max_chars or self.slack < 1:
                raise ValueError("need 0 <= min_chars <= max_chars and slack >= 1")

    def __call__(self, prompts, completions, references, metadata) -> torch.Tensor:
        _check_lengths(prompts, completions, references, metadata)
        c = self.config
        out = []
        for text in completions:
            n = len(text.strip())
            gap = (c.min_chars - n) if n < c.min_chars else (n - c.max_chars) if n > c.max_chars else 0
            out.append(max(0.0, 1.0 - gap / c.slack))
        return torch.tensor(out, dtype=torch.float32)


class FormatReward(Reward):
    """1 when the (stripped) completion fully matches ``pattern``, else 0."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        pattern: str = r"(?s).+"

        def __post_init__(self) -> None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from exc

    def __call__(self, prompts, completions, references, metadata) -> torch.Tensor:
        _check_lengths(prompts, completions, references, metadata)
        rx = re.compile(self.config.pattern)
        return torch.tensor([float(rx.fullmatch(c.strip()) is not None) for c in completions], dtype=torch.float32)


class SemanticReward(Reward):
    """Cosine similarity of completion and reference embeddings (sentence-transformers)."""

    @dataclass(frozen=True, kw_only=True)
    class Config:
        """Attributes:
        model: sentence-transformers model, hub name or local directory.
        threshold: tau of the rescale ``max(0, (s - tau) / (1 - tau))``; None = raw cosine.
        batch_size: encoding batch size.
        device: where the encoder runs (``auto`` = the policy's device when known, else CPU).
        impl: similarity kernel implementation (``auto | triton | native | torch``).
        max_cache: reference embeddings kept in the cache.
        """

        model: str
        threshold: float | None = None
        batch_size: int = 64
        device: str = "auto"
        impl: Literal["auto", "triton", "native", "torch"] = "auto"
        max_cache: int = 100_000

        def __post_init__(self) -> None:
            if self.threshold is not None and not 0.0 <= self.threshold < 1.0:
                raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")
            # A local encoder is checked when the config is built, before any work starts.
            check_encoder_dir(self.model)

    config: Config  # the plugin's own Config (the base class knows only `object`)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._encoder = None
        self._cache: dict[str, torch.Tensor] = {}
        self.device = "cpu"
        self.model = config.model  # the encoder loaded: config.model as resolved by bind
        self._bound = False

    def bind(self, context: RewardContext) -> SemanticReward:
        """Resolve the encoder against the run and run it on the policy's device (called
        by the GRPO stage): ``ftibworld-encoder`` (bare: trained on the stage's own
        FTibWorld data, ``context.data``) is trained on first use and cached; a hub name
        or a directory is used as it is."""
        from ftib.models.reward_encoder import resolve_encoder

        if self.config.device == "auto":
            self.device = context.device
        self.model = resolve_encoder(self.config.model, context.data, seed=context.seed)
        check_encoder_dir(self.model)
        self._bound = True
        return self

    @property
    def encoder(self):
        if self._encoder is None:
            from ftib.models.reward_encoder import FTIBWORLD_ENCODER

            if self.model.startswith(FTIBWORLD_ENCODER) and not self._bound:
                raise FtibError(f"semantic reward: model {self.model!r} is trained from the run's data; "
                                "bind(RewardContext(...)) the reward before calling it (the GRPO stage does)")
            self._encoder = load_encoder(self.model, self.config.device if self.config.device != "auto" else self.device)
        return self._encoder

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            emb = self.encoder.encode(list(texts), batch_size=self.config.batch_size, convert_to_tensor=True,
                                      normalize_embeddings=False, show_progress_bar=False)
        return emb.detach().float()

    def reference_embeddings(self, references: Sequence[str]) -> torch.Tensor:
        missing = [r for r in dict.fromkeys(references) if r not in self._cache]
        if missing:
            if len(self._cache) + len(missing) > self.config.max_cache:
                self._cache.clear()
            for text, row in zip(missing, self._embed(missing)):
                self._cache[text] = row
        return torch.stack([self._cache[r] for r in references])

    def __call__(self, prompts, completions, references, metadata) -> torch.Tensor:
        from ftib.kernels.similarity import embedding_similarity

        _check_lengths(prompts, completions, references, metadata)
        unique_refs = list(dict.fromkeys(references))
        ref = self.reference_embeddings(unique_refs)
        index = torch.tensor([unique_refs.index(r) for r in references], dtype=torch.long, device=ref.device)
        # The encoder already pooled (its own pooling); each completion is one "token".
        hyp = self._embed(completions).to(ref.device)
        mask = torch.ones(hyp.shape[0], 1, device=ref.device)
        scores = embedding_similarity(hyp[:, None, :], mask, ref, index, threshold=self.config.threshold,
                                      impl=self.config.impl)
        empty = torch.tensor([not c.strip() for c in completions], device=scores.device)
        return scores.masked_fill(empty, 0.0).float().cpu()


def check_encoder_dir(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names a local directory (a path, or an existing one);
    raise :class:`ConfigError` when such a directory is missing or holds no
    sentence-transformers model. Hub names are not checked (they may need a download)."""
    from pathlib import Path

    path = Path(name_or_path).expanduser()
    if not (name_or_path.startswith((".", "/", "~")) or path.exists()):
        return False
    if not path.is_dir():
        raise ConfigError(f"semantic reward: encoder directory {str(path)!r} does not exist")
    if not (path / "modules.json").is_file() and not (path / "config_sentence_transformers.json").is_file():
        raise ConfigError(
            f"semantic reward: {str(path)!r} is not a sentence-transformers model "
            "(no modules.json); train one with `ftib reward-encoder train`"
        )
    return True


def load_encoder(name_or_path: str, device: str = "cpu"):
    """Load a sentence-transformers model by hub name or local path, frozen, in eval mode."""
    from pathlib import Path

    from sentence_transformers import SentenceTransformer

    path = Path(name_or_path).expanduser()
    looks_local = check_encoder_dir(name_or_path)
    try:
        model = SentenceTransformer(str(path) if looks_local else name_or_path, device=device)
    except OSError as exc:
        raise ConfigError(f"semantic reward: cannot load encoder {name_or_path!r}: {exc}") from exc
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _check_lengths(prompts: Sequence[str], completions: Sequence[str], references: Sequence[str],
                   metadata: Sequence[Mapping[str, Any]]) -> None:
    n = len(completions)
    if not (len(prompts) == len(references) == len(metadata) == n):
        raise ValueError(
            f"reward inputs differ in length: prompts {len(prompts)}, completions {n}, "
            f"references {len(references)}, metadata {len(metadata)}"
        )
