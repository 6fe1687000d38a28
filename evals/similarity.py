"""Semantic similarity with a local sentence-embedding model.

The encoder is a ``sentence-transformers`` model loaded from a local directory only
(nothing is downloaded); similarity is the cosine of L2-normalised embeddings, in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ftib.core.errors import ConfigError

__all__ = ["Encoder"]


class Encoder:
    """A sentence encoder from a local directory.

    Args:
        path: a directory written by ``SentenceTransformer.save`` (with
            ``modules.json``) or a plain Hugging Face encoder directory.
        device: torch device string.
        batch_size: sentences per forward pass.
    """

    def __init__(self, path: Path | str, device: str = "cpu", batch_size: int = 32) -> None:
        from sentence_transformers import SentenceTransformer

        path = Path(path)
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise ConfigError(f"encoder {str(path)!r} is not a local sentence-transformers model directory")
        self.path = path
        self.batch_size = batch_size
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> list[float]:
        """Cosine similarity of ``a[i]`` and ``b[i]`` for each ``i``."""
        if len(a) != len(b):
            raise ValueError(f"{len(a)} texts against {len(b)}")
        if not a:
            return []
        ea = self.model.encode(list(a), batch_size=self.batch_size, normalize_embeddings=True,
                               convert_to_tensor=True, show_progress_bar=False)
        eb = self.model.encode(list(b), batch_size=self.batch_size, normalize_embeddings=True,
                               convert_to_tensor=True, show_progress_bar=False)
        return (ea * eb).sum(-1).clamp(-1.0, 1.0).tolist()
