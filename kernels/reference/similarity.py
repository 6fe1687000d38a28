"""Reference for the embedding-reward similarity: the same maths in eager PyTorch.

Used by the tests (parity) and by ``bench/test_bench_similarity.py`` (the eager baseline).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` over the positions where ``mask`` is set.

    Args:
        hidden: (N, T, H) float32/bfloat16/float16.
        mask: (N, T) bool, integer or float weights.

    Returns:
        (N, H) float32; rows whose mask sums to 0 are zeros.
    """
    h = hidden.float()
    m = mask.float()
    # sum_t m[n, t] h[n, t, :] as a batched (1, T) x (T, H) product: the fastest eager
    # form (about 3.5x faster on CPU than sentence-transformers' broadcast-multiply-sum).
    total = torch.bmm(m.unsqueeze(1), h).squeeze(1)
    count = m.sum(dim=1, keepdim=True)
    return torch.where(count != 0, total / count, torch.zeros_like(total))


def embedding_similarity(
    hidden: torch.Tensor,
    mask: torch.Tensor,
    ref: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
    *,
    ref_hidden: torch.Tensor | None = None,
    ref_mask: torch.Tensor | None = None,
    threshold: float | None = None,
) -> torch.Tensor:
    """Cosine similarity of pooled completion embeddings with their references.

    Args:
        hidden: (N, T, H) completion hidden states of the embedding model.
        mask: (N, T) attention mask of the completions.
        ref: (M, H) reference embeddings (already pooled), or None with ``ref_hidden``.
        index: (N,) int64, ``index[n]`` is the reference row of completion n; None means
            M == N and completion n uses reference n.
        ref_hidden: (M, Tr, H) reference hidden states, pooled with ``ref_mask`` (M, Tr).
        threshold: tau in [0, 1); scores are rescaled to max(0, (s - tau) / (1 - tau)).

    Returns:
        (N,) float32 scores in [-1, 1] ([0, 1] with a threshold).
    """
    pooled = masked_mean_pool(hidden, mask)
    if ref is not None:
        refs = ref.float()
    elif ref_hidden is not None and ref_mask is not None:
        refs = masked_mean_pool(ref_hidden, ref_mask)
    else:
        raise ValueError("similarity reference: give ref (M, H), or ref_hidden (M, Tr, H) with ref_mask (M, Tr)")
    a = F.normalize(pooled, dim=-1)
    b = F.normalize(refs, dim=-1)
    if index is not None:
        b = b[index]
    s = (a * b).sum(dim=-1)
    if threshold is not None:
        s = ((s - threshold) / (1.0 - threshold)).clamp_min(0.0)
    return s
