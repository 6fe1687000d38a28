"""Sequence packing for causal-LM training (CPT) and its padding baseline.

Packing concatenates tokenised documents into fixed-length blocks so no compute is
spent on padding. Each block carries per-document ``position_ids`` (restarting at 0 at
every document start) and labels that never ask a token to predict across a document
boundary. A document longer than the block is cut into block-sized pieces, each piece
starting its own positions.

Attention: with ``attn_implementation="flash_attention_2"`` transformers detects the
position restarts and attends within documents only (varlen kernels). With ``sdpa`` or
``eager`` a block is one causal sequence: tokens may attend to earlier documents of the
same block; their positions and labels still restart, so no loss term crosses a
boundary. This is the usual trade-off of packed pretraining; choose flash-attention on
GPU for strict document masking.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PackStats:
    documents: int
    tokens: int
    blocks: int
    padding: int
    split_documents: int

    @property
    def fill(self) -> float:
        total = self.blocks and self.tokens + self.padding
        return self.tokens / total if total else 0.0


def pack_documents(
    docs: Iterable[Sequence[int]],
    block_size: int,
    *,
    eos_id: int | None = None,
    pad_id: int = 0,
    drop_last: bool = False,
) -> tuple[dict[str, torch.Tensor], PackStats]:
    """Pack token lists into blocks.

    Args:
        docs: tokenised documents (each a sequence of ids; empty ones are skipped).
        block_size: tokens per block.
        eos_id: appended to every document when given, so the model learns to stop.
        pad_id: id used to fill the last block (its labels are ignored).
        drop_last: drop a partial last block instead of padding it.

    Returns:
        ``{"input_ids", "labels", "position_ids", "attention_mask"}``, each
        ``(num_blocks, block_size) int64``, and packing statistics.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    n_docs = n_tokens = n_split = 0
    for doc in docs:
        doc = list(doc) + ([eos_id] if eos_id is not None else [])
        if not doc or (eos_id is not None and len(doc) == 1):
            continue
        n_docs += 1
        n_tokens += len(doc)
        start = 0
        pieces = 0
        while start < len(doc):
            room = block_size - (len(ids) % block_size)
            piece = doc[start : start + room]
            ids.extend(piece)
            # A piece's first token has no in-document predecessor in this block.
            labels.extend([IGNORE_INDEX] + piece[1:])
            pos.extend(range(len(piece)))
            start += len(piece)
            pieces += 1
        n_split += pieces > 1
    remainder = len(ids) % block_size
    padding = 0
    if remainder:
        if drop_last:
            del ids[-remainder:], labels[-remainder:], pos[-remainder:]
        else:
            padding = block_size - remainder
            ids.extend([pad_id] * padding)
            labels.extend([IGNORE_INDEX] * padding)
            pos.extend(range(padding))
    n_blocks = len(ids) // block_size
    shape = (n_blocks, block_size)
    attn = torch.ones(len(ids), dtype=torch.long)
    if padding:
        attn[-padding:] = 0
    out = {
        "input_ids": torch.tensor(ids, dtype=torch.long).view(shape),
        "labels": torch.tensor(labels, dtype=torch.long).view(shape),
        "position_ids": torch.tensor(pos, dtype=torch.long).view(shape),
        "attention_mask": attn.view(shape),
    }
    kept = n_tokens - (remainder if drop_last else 0)
    return out, PackStats(n_docs, kept, n_blocks, padding, n_split)


def pad_batch(docs: Sequence[Sequence[int]], *, pad_id: int = 0, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """The unpacked baseline: right-pad a batch to its longest document.

    Returns ``input_ids``, ``labels`` (padding ignored), ``attention_mask``, ``(B, L) int64``.
    """
    docs = [list(d)[:max_length] if max_length else list(d) for d in docs]
    width = max((len(d) for d in docs), default=0)
    ids = torch.full((len(docs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(docs), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(docs), width), dtype=torch.long)
    for i, d in enumerate(docs):
        ids[i, : len(d)] = torch.tensor(d, dtype=torch.long)
        labels[i, 1 : len(d)] = torch.tensor(d[1:], dtype=torch.long)
        mask[i, : len(d)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
