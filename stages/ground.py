"""Ground: word-tied alignment of a vision–language model's vision tower.

What it trains: the vision tower and the vision→language merger (``trainable``; the
language model stays frozen, ``mode: none`` is required). Nothing else of the model
changes; the stage's small head (below) is not saved.

The objective: every merged image token should point where the *language model* keeps
the words that name what it shows. For each image the data gives a grid (``[rows,
cols]``) and, per occupied cell, a word per *slot* (``{"object": "花", "colour": "红色"}``;
slots are any names, unlisted cells are empty). Each merged token is assigned to the cell
covering most of its area (``min_cell_share``; tokens astride cells are left out and
counted in ``tokens_astride_cells``). Per slot the candidates are every word seen in that slot in the
data, plus a learnt "empty" vector; a candidate's vector is the language model's frozen
input embedding of the word (the mean over its tokens when it has several: counted in
``words_multi_token``). The token's logits are ``scale · token · candidate``, and the loss
is the cross-entropy against the cell's word (or "empty"), summed over slots.

Why (issue 17, ``python -m ftib.bench.lookup_probe image``): a question such as "is
there a fish?" needs a lookup whose key is the word in the question. With image tokens
that merely *encode* the scene (a linear read-out decodes 99 % of cells), a small VLM
learned that lookup slowly (65 % after 1,200 steps). With tokens tied to the words in
this way, it learned it almost as fast as it does from text (90–96 % after 1,000).

Data: JSON Lines ``id, image, grid, cells`` (``docs/data.md``), or ``ftibworld:base``
(``pretrain/cells.jsonl``: the object and colour words, in Chinese, of every cell of the
base model's pretraining scenes). ``held_out: n`` keeps the last ``n`` images out of
training and reports per-slot token accuracy on them before and after
(``heldout_acc/<slot>``; occupied tokens, and ``heldout_acc/empty``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ftib.core import Stage
from ftib.core.train import TrainConfig
from ftib.stages.common import TrainableConfig

#: the world part the stage reads from a ``ftibworld`` spec
WORLD_PART = "pretrain/cells.jsonl"


@dataclass(frozen=True, kw_only=True)
class GroundConfig:
    """Configuration of the ``ground`` stage (see the module docstring)."""

    data: str = "ftibworld:base"
    max_records: int | None = None
    held_out: int = 0
    #: also train empty cells (their tokens toward each slot's "empty" vector)
    empty_cells: bool = True
    #: a token is labelled with the cell covering the largest share of its area when
    #: that share is at least this (tokens astride cells are left out, and counted)
    min_cell_share: float = 0.5
    min_pixels: int | None = None
    max_pixels: int | None = None
    trainable: TrainableConfig = TrainableConfig(mode="none", train_vision=True, train_merger=True)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, warmup_steps=10, batch_size=32))

    def __post_init__(self) -> None:
        from ftib.core import ConfigError
        from ftib.data.loaders import check_pixel_range

        if self.trainable.mode != "none":
            raise ConfigError(f"stages.ground.trainable.mode must be 'none' (got {self.trainable.mode!r}): the "
                              f"language model's word embeddings are the targets, so it stays frozen")
        if not (self.trainable.train_vision or self.trainable.train_merger):
            raise ConfigError("stages.ground.trainable: set train_vision and/or train_merger (nothing would train)")
        if not 0.0 < self.min_cell_share <= 1.0:
            raise ConfigError(f"stages.ground.min_cell_share must lie in (0, 1], got {self.min_cell_share}")
        if self.held_out < 0:
            raise ConfigError(f"stages.ground.held_out must be >= 0, got {self.held_out}")
        check_pixel_range(self.min_pixels, self.max_pixels)


@dataclass
class CellImage:
    """One training image: its path, grid and per-slot cell labels (``None`` = empty)."""

    image: str
    grid: tuple[int, int]
    labels: dict[str, dict[tuple[int, int], int]]


class WordHead(torch.nn.Module):
    """Per slot: the frozen word vectors (buffers), a learnt "empty" vector; one scale."""

    def __init__(self, tables: dict[str, torch.Tensor]) -> None:
        super().__init__()
        hidden = next(iter(tables.values())).shape[1]
        self.slots = list(tables)
        for slot, table in tables.items():
            self.register_buffer(f"words_{slot}", table.detach().float().clone(), persistent=False)
        self.empty = torch.nn.ParameterDict({s: torch.nn.Parameter(torch.zeros(1, hidden)) for s in tables})
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def logits(self, feats: torch.Tensor, slot: str) -> torch.Tensor:
        table = torch.cat([self.empty[slot], getattr(self, f"words_{slot}")])
        return self.scale * feats.float() @ table.T


class _GroundNet(torch.nn.Module):
    """What the loop trains: the VLM and the head, under one module (so step checkpoints
    hold both and a resume restores both); only ``vlm`` is saved as the model."""

    def __init__(self, vlm: torch.nn.Module, head: WordHead) -> None:
        super().__init__()
        self.vlm, self.head = vlm, head


def cell_of_tokens(grid_thw: torch.Tensor, merge: int, grid: tuple[int, int],
                   min_share: float = 0.5) -> list[tuple[int, int] | None]:
    """The (row, col) of ``grid`` that each merged token of one image lies on, for its
    ``grid_thw`` (patches; tokens are row-major over the merged grid, frame by frame):
    the cell covering the largest share of the token's area, or ``None`` when that share
    is below ``min_share`` (a token astride cells, e.g. the middle token of three over
    four columns, is not labelled)."""
    t, h, w = (int(x) for x in grid_thw)
    hm, wm = h // merge, w // merge

    def best(i: int, n_tok: int, n_cell: int) -> tuple[int, float]:
        lo, hi = i / n_tok, (i + 1) / n_tok
        shares = [(max(0.0, min(hi, (c + 1) / n_cell) - max(lo, c / n_cell)) * n_tok, c) for c in range(n_cell)]
        share, cell = max(shares)
        return cell, share

    rows = [best(i, hm, grid[0]) for i in range(hm)]
    cols = [best(j, wm, grid[1]) for j in range(wm)]
    out: list[tuple[int, int] | None] = []
    for _ in range(t):
        for r, rs in rows:
            for c, cs in cols:
                out.append((r, c) if rs * cs >= min_share - 1e-9 else None)
    return out


class GroundTask:
    """The loop's view of the stage: batches of images with per-token slot labels."""

    supports_fsdp2 = False  # the loss runs the vision tower, not model(...)

    def __init__(self, vlm: torch.nn.Module, head: WordHead, groups: list, chat: Any,
                 images: list[CellImage], *, empty_cells: bool, min_share: float, save: Any) -> None:
        self.model = _GroundNet(vlm, head)
        self.head, self.chat, self.images, self._groups, self._save = head, chat, images, groups, save
        self.empty_cells, self.min_share = empty_cells, min_share
        self.astride = 0  # tokens of the training batches left unlabelled by min_cell_share
        self.merge = int(chat.image_processor.merge_size)

    def param_groups(self) -> list:
        return self._groups

    def train_samples(self) -> list[CellImage]:
        return self.images

    def collate(self, items: list[CellImage]) -> dict[str, Any]:
        # the loader verified every image; an error here names the file
        enc = self.chat.encode_images([it.image for it in items])
        labels: dict[str, list[int]] = {s: [] for s in self.head.slots}
        for it, thw in zip(items, enc["image_grid_thw"]):
            cells = cell_of_tokens(thw, self.merge, it.grid, self.min_share)
            self.astride += sum(c is None for c in cells)
            for slot in self.head.slots:
                table = it.labels[slot]
                labels[slot] += [-100 if c is None else table.get(c, 0 if self.empty_cells else -100)
                                 for c in cells]
        return {"pixel_values": enc["pixel_values"], "grid_thw": enc["image_grid_thw"],
                "labels": {s: torch.tensor(v) for s, v in labels.items()}}

    def loss_normaliser(self, batch: dict[str, Any]) -> int:
        return int(sum((v != -100).sum() for v in batch["labels"].values()))

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        vlm: Any = self.model.vlm
        visual = vlm.model.visual
        device = next(visual.parameters()).device
        out = visual(batch["pixel_values"].to(device, visual.dtype), grid_thw=batch["grid_thw"].to(device),
                     return_dict=True)
        feats = out.pooler_output
        n = len(next(iter(batch["labels"].values())))
        if feats.shape[0] != n:
            from ftib.core import FtibError

            raise FtibError(f"the vision tower returned {feats.shape[0]} merged tokens for a grid of {n}; "
                            f"is merge_size {self.merge} the model's?")
        return feats

    def compute_loss(self, batch: dict[str, Any]) -> Any:
        from ftib.core.train import LossOutput

        feats = self.features(batch)
        loss = feats.new_zeros((), dtype=torch.float32)
        metrics = {}
        for slot in self.head.slots:
            lab = batch["labels"][slot].to(feats.device)
            logits = self.head.logits(feats, slot)
            loss = loss + F.cross_entropy(logits, lab, ignore_index=-100, reduction="sum")
            occupied = lab > 0
            if occupied.any():
                metrics[f"acc/{slot}"] = float((logits.argmax(-1)[occupied] == lab[occupied]).float().mean())
        return LossOutput(loss=loss, tokens=int(feats.shape[0]), samples=len(batch["grid_thw"]), metrics=metrics)

    @torch.no_grad()
    def accuracy(self, images: list[CellImage], batch_size: int = 32) -> dict[str, float]:
        """Per-slot accuracy over occupied tokens of ``images``, and the share of empty
        tokens classed empty by every slot."""
        hits = {s: [0, 0] for s in self.head.slots}
        empty = [0, 0]  # empty tokens (every slot's label 0) that every slot classes empty
        was, astride = self.model.training, self.astride
        self.model.eval()
        for i in range(0, len(images), batch_size):
            batch = self.collate(images[i:i + batch_size])
            feats = self.features(batch)
            labels = torch.stack([batch["labels"][s] for s in self.head.slots]).to(feats.device)
            preds = torch.stack([self.head.logits(feats, s).argmax(-1) for s in self.head.slots])
            for k, slot in enumerate(self.head.slots):
                occ = labels[k] > 0
                hits[slot][0] += int((preds[k][occ] == labels[k][occ]).sum())
                hits[slot][1] += int(occ.sum())
            is_empty = (labels == 0).all(0)
            empty[0] += int((preds == 0).all(0)[is_empty].sum())
            empty[1] += int(is_empty.sum())
        self.model.train(was)
        self.astride = astride  # counts the training batches only
        out = {f"heldout_acc/{s}": h / n for s, (h, n) in hits.items() if n}
        if empty[1]:
            out["heldout_acc/empty"] = empty[0] / empty[1]
        return out

    def save_model(self, out_dir: Path) -> None:
        self._save(out_dir)


def word_tables(model: Any, tokenizer: Any, vocab: dict[str, list[str]]) -> tuple[dict[str, torch.Tensor], int]:
    """Per slot, the language model's input-embedding vector of each word (the mean over
    its tokens); returns the tables and how many words span more than one token."""
    from ftib.core import FtibError

    embeddings: Any = model.get_input_embeddings()
    emb = embeddings.weight.detach()
    tables, multi = {}, 0
    for slot, words in vocab.items():
        rows = []
        for word in words:
            ids = tokenizer.encode(word, add_special_tokens=False)
            if not ids:
                raise FtibError(f"slot {slot!r}: the word {word!r} encodes to no tokens")
            multi += len(ids) > 1
            rows.append(emb[ids].float().mean(0))
        tables[slot] = torch.stack(rows)
    return tables, multi


def read_cells(path: Path, max_records: int | None) -> tuple[list[CellImage], dict[str, list[str]]]:
    """The stage's images and the word vocabulary of each slot (first-seen order)."""
    from ftib.core import FtibError
    from ftib.data.loaders import load_cells

    rows = load_cells(path)
    if max_records is not None:
        rows = rows.select(range(min(max_records, len(rows))))
    vocab: dict[str, dict[str, int]] = {}  # slot -> word -> class (0 = empty)
    raw = list(rows)
    for r in raw:
        for cell in r["cells"]:
            for slot, word in cell["words"].items():
                words = vocab.setdefault(slot, {})
                if word not in words:
                    words[word] = len(words) + 1
    if not vocab:
        raise FtibError(f"{path}: no cell carries a word: nothing to align to")
    images = []
    for r in raw:
        labels: dict[str, dict[tuple[int, int], int]] = {s: {} for s in vocab}
        for cell in r["cells"]:
            for slot, word in cell["words"].items():
                labels[slot][(cell["row"], cell["col"])] = vocab[slot][word]
        images.append(CellImage(r["image"], (r["grid"][0], r["grid"][1]), labels))
    return images, {s: list(words) for s, words in vocab.items()}


class GroundStage(Stage):
    """Word-tied vision alignment (see the module docstring)."""

    Config = GroundConfig

    def run(self, ctx):
        from ftib.core import FtibError, StageResult
        from ftib.core.train import ParamGroup, Trainer
        from ftib.data.sources import resolve
        from ftib.models.pixels import with_pixel_budget
        from ftib.stages.common import (
            kernel_metrics,
            save_model_dir,
            select_trainable,
            trainable_parameter_count,
            training_bundle,
        )

        cfg: GroundConfig = self.config
        bundle = training_bundle(ctx, cfg.trainable)
        if not bundle.multimodal:
            raise FtibError(f"ground needs a vision-language model; {ctx.model_source} is text-only")
        path = resolve(cfg.data, WORLD_PART)
        images, vocab = read_cells(path, cfg.max_records)
        if cfg.held_out >= len(images):
            raise FtibError(f"stages.ground.held_out={cfg.held_out} leaves no training images of {len(images)}")
        train, held = (images[:-cfg.held_out], images[-cfg.held_out:]) if cfg.held_out else (images, [])
        chat = with_pixel_budget(bundle.chat, cfg.min_pixels, cfg.max_pixels, where="stages.ground")
        vlm, groups = select_trainable(bundle.model, cfg.trainable, logger=ctx.logger)
        tables, multi = word_tables(vlm, bundle.tokenizer, vocab)
        head = WordHead(tables).to(next(vlm.parameters()).device)
        groups = [*groups, ParamGroup("word_head", list(head.parameters()), weight_decay=0.0)]
        ctx.logger.info("ground: %d images (%d held out); slots %s; %d words span several tokens; "
                        "trainable parameters %d", len(images), len(held),
                        ", ".join(f"{s} ({len(w)} words)" for s, w in vocab.items()), multi,
                        trainable_parameter_count(groups))

        def save(out_dir: Path) -> None:
            save_model_dir(vlm, out_dir, processor=bundle.chat)

        task = GroundTask(vlm, head, groups, chat, train, empty_cells=cfg.empty_cells,
                          min_share=cfg.min_cell_share, save=save)
        before = task.accuracy(held) if held else {}
        trainer = Trainer(task, cfg.train, ctx)
        result = trainer.train()
        metrics = {**result.metrics, "data_images": float(len(images)), "words_multi_token": float(multi),
                   "tokens_astride_cells": float(task.astride),
                   **{f"words/{s}": float(len(w)) for s, w in vocab.items()}, **kernel_metrics(vlm)}
        if held:
            after = task.accuracy(held)
            metrics.update(after)
            metrics.update({f"{k}_before": v for k, v in before.items()})
            ctx.logger.info("ground: held-out token accuracy %s (before: %s)",
                            {k: round(v, 3) for k, v in after.items()},
                            {k: round(v, 3) for k, v in before.items()})
        return StageResult(checkpoint=trainer.save_final(), metrics=metrics)
