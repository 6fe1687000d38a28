"""What the training stages share: which parameters train, LoRA, and checkpoints.

The trainable set is configuration, not code: every stage nests a
:class:`TrainableConfig`, and :func:`select_trainable` turns it into the loop's
parameter groups after freezing everything else.

Model anatomy this relies on (transformers 5):

* Qwen3-VL (``Qwen3VLForConditionalGeneration``): ``model.visual`` (vision tower, with
  ``merger`` and ``deepstack_merger_list`` — the vision→language projector),
  ``model.language_model`` (decoder, with ``embed_tokens``), ``lm_head``.
* Qwen3 / other causal LMs: ``get_input_embeddings()`` / ``get_output_embeddings()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ftib.core.errors import ConfigError, FtibError
from ftib.core.train import ParamGroup

MERGER_PREFIXES = ("model.visual.merger.", "model.visual.deepstack_merger_list.")
VISION_PREFIX = "model.visual."


@dataclass(frozen=True, kw_only=True)
class LoraSpec:
    """LoRA settings (``peft.LoraConfig``).

    Attributes:
        r, alpha, dropout: rank, scaling numerator and dropout of the adapters.
        target_modules: linear layers to adapt (names matched by peft).
        save_adapter: besides the merged model (what the next stage loads), also save
            the peft adapter under ``final/adapter``.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    save_adapter: bool = False


@dataclass(frozen=True, kw_only=True)
class TrainableConfig:
    """Which parameters of the language model train.

    Attributes:
        mode: ``none`` — the language model is frozen (train only the vision parts
            selected below); ``new_embeddings`` — only the embedding rows (input and output) of tokens
            added by the tokenizer extension; ``embeddings`` — the whole input/output
            embeddings; ``lora`` — LoRA adapters (plus the embeddings as
            ``modules_to_save`` when ``lora_train_embeddings``); ``full`` — everything
            in the language model.
        lora: adapter settings for ``mode: lora``.
        lora_train_embeddings: with LoRA, also train the embeddings in full.
        embedding_lr_scale: learning-rate multiplier for embedding parameters.
        train_vision: also train the vision tower (VLMs).
        train_merger: also train the vision→language merger (VLMs).
        keep_vision_token_rows: in a stage whose data has no images, keep the embedding
            rows (input and, when tied, output) of a VLM's vision special tokens
            (``vision_start/end``, image/video pads) fixed. Text-only data never shows
            them as input, but with tied embeddings the softmax still moves their rows
            (and Adam moves a row with a tiny gradient as far as any other): after
            ``ftibworld-base``'s text stage the drifted ``<|vision_start|>``/
            ``<|vision_end|>`` rows alone left the model unable to learn a one-object
            image question (grounding gap 0.00 vs 0.91 with those two rows restored;
            ``ftib.bench.grounding_probe``). ``false`` lets them train.
    """

    mode: Literal["none", "new_embeddings", "embeddings", "lora", "full"] = "full"
    lora: LoraSpec = LoraSpec()
    lora_train_embeddings: bool = False
    embedding_lr_scale: float = 1.0
    train_vision: bool = False
    train_merger: bool = False
    keep_vision_token_rows: bool = True


# The config fields of a VLM's vision special tokens (Qwen2/2.5/3-VL, Qwen3.5).
VISION_TOKEN_FIELDS = ("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id")


def vision_token_ids(model: torch.nn.Module) -> list[int]:
    """The ids of ``model``'s vision special tokens, from its config (sorted, unique)."""
    config = getattr(model, "config", None)
    ids = {getattr(config, f, None) for f in VISION_TOKEN_FIELDS}
    return sorted(i for i in ids if isinstance(i, int) and i >= 0)


def is_vlm(model: torch.nn.Module) -> bool:
    return any(n.startswith(VISION_PREFIX) for n, _ in model.named_parameters())


def _embedding_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not params[0]:
        params.append(out.weight)
    return params


def select_trainable(
    model: torch.nn.Module, cfg: TrainableConfig, *, new_token_start: int | None = None,
    text_only: bool = False, logger: Any = None,
) -> tuple[torch.nn.Module, list[ParamGroup]]:
    """Freeze the model, then unfreeze what ``cfg`` asks for.

    Returns the model to train (wrapped by peft for LoRA) and the parameter groups
    (``embeddings`` with ``embedding_lr_scale`` and no weight decay; ``main``; ``vision``;
    ``merger``). ``text_only``: the stage's data has no images, so a VLM's vision token
    rows stay fixed (``cfg.keep_vision_token_rows``; logged on ``logger``).
    """
    vlm = is_vlm(model)
    vision_ids = vision_token_ids(model) if vlm and text_only and cfg.keep_vision_token_rows else []
    if (cfg.train_vision or cfg.train_merger) and not vlm:
        raise ConfigError("trainable.train_vision/train_merger need a vision-language model")
    if cfg.mode == "lora":
        model = _wrap_lora(model, cfg)
    for p in model.parameters():
        p.requires_grad_(False)

    if cfg.mode == "lora" and cfg.lora_train_embeddings:
        emb = [p for n, p in model.named_parameters() if "modules_to_save" in n]
    else:
        emb = _embedding_params(model)
    groups: dict[str, list[torch.nn.Parameter]] = {"embeddings": [], "main": [], "vision": [], "merger": []}
    if cfg.mode in ("new_embeddings", "embeddings") or (cfg.mode == "lora" and cfg.lora_train_embeddings):
        if cfg.mode == "new_embeddings":
            if new_token_start is None:
                raise ConfigError(
                    "trainable.mode: new_embeddings needs the tokenizer extension "
                    "(no new tokens were added); use 'embeddings' or enable the extension"
                )
        groups["embeddings"] += emb
    emb_ids = {id(p) for p in emb}
    for name, p in model.named_parameters():
        if id(p) in emb_ids:
            continue
        if any(prefix in name for prefix in MERGER_PREFIXES):
            if cfg.train_merger:
                groups["merger"].append(p)
            continue
        if VISION_PREFIX in name:
            if cfg.train_vision:
                groups["vision"].append(p)
            continue
        if "original_module" in name:  # peft's frozen copy behind modules_to_save
            continue
        if cfg.mode == "full" or (cfg.mode == "lora" and "lora_" in name):
            groups["main"].append(p)
    if cfg.mode == "full":
        groups["embeddings"] += [p for p in emb if all(p is not q for q in groups["embeddings"])]
    out = []
    for name, params in groups.items():
        unique = list({id(p): p for p in params}.values())
        for p in unique:
            p.requires_grad_(True)
        if unique:
            scale = cfg.embedding_lr_scale if name == "embeddings" else 1.0
            wd = 0.0 if name == "embeddings" else None
            out.append(ParamGroup(name, unique, lr_scale=scale, weight_decay=wd))
    if not out:
        raise ConfigError("the trainable configuration selects no parameters")
    # Rows that must not move get a zero gradient, zeroed in place by the loop after the
    # gradients are reduced (ParamGroup.fixed_rows): with a zero gradient from the first
    # step AdamW's moments stay 0, and the embedding group has no weight decay.
    by_param = {id(p): g for g in out for p in g.params}
    if cfg.mode == "new_embeddings":
        for p in emb:
            by_param[id(p)].fixed_rows.append((p, slice(0, new_token_start)))
    elif vision_ids and any(p.requires_grad for p in emb):
        for p in emb:
            if p.requires_grad:
                by_param[id(p)].fixed_rows.append((p, [i for i in vision_ids if i < p.shape[0]]))
        if logger is not None:
            logger.info("text-only data: the embedding rows of the %d vision tokens (ids %s) stay fixed "
                        "(trainable.keep_vision_token_rows)", len(vision_ids), vision_ids)
    return model, out


def _wrap_lora(model: torch.nn.Module, cfg: TrainableConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    missing = [t for t in cfg.lora.target_modules if t not in names]
    if missing:
        raise ConfigError(
            f"trainable.lora.target_modules: {missing} are not linear layers of "
            f"{type(model).__name__} (has: {sorted(names)})"
        )
    # Restrict adapters to the language model of a VLM (vision blocks reuse names).
    lm_only = rf"^(?!.*visual).*\.({'|'.join(cfg.lora.target_modules)})$"
    modules_to_save = None
    if cfg.lora_train_embeddings:
        # peft keeps trainable copies of these and saves them with the adapter.
        modules_to_save = sorted({_module_name(model, model.get_input_embeddings())}
                                 | ({_module_name(model, model.get_output_embeddings())}
                                    if model.get_output_embeddings() is not None else set()))
    lcfg = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=lm_only, bias="none", modules_to_save=modules_to_save)
    return get_peft_model(model, lcfg)


def _module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name.rsplit(".", 1)[-1]
    raise ValueError("module not found in model")


def trainable_parameter_count(groups: Iterable[ParamGroup]) -> int:
    return sum(p.numel() for g in groups for p in g.params)


def kernel_metrics(model: torch.nn.Module) -> dict[str, float]:
    """``{"liger/<patch>": 1.0}`` for each liger-kernel patch on ``model`` (a stage's
    metrics, hence the manifest, record which kernels the stage trained with)."""
    from ftib.models.bundle import liger_patches

    return {f"liger/{name}": 1.0 for name in liger_patches(model)}


def save_model_dir(model: torch.nn.Module, out_dir: Path, *, processor: Any = None, tokenizer: Any = None,
                   save_adapter: bool = False) -> None:
    """Save a transformers-loadable checkpoint. A LoRA model is merged into a copy of its
    base weights (the training model is left as it is); with ``save_adapter`` the peft
    adapter is also written to ``out_dir/adapter`` (:func:`save_adapter_dir`)."""
    import copy

    from peft import PeftModel

    target = model
    if isinstance(model, PeftModel):
        if save_adapter:
            save_adapter_dir(model, out_dir / "adapter", processor=processor, tokenizer=tokenizer)
        target = copy.deepcopy(model).merge_and_unload()
    target.save_pretrained(out_dir)
    if processor is not None:
        processor.save_pretrained(out_dir)
    elif tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


ADAPTER_README = """
## Loading this adapter with plain transformers + peft

This adapter was trained by ftib on `{base}`. Its embedding matrices have
**{vocab} rows** (`ftib.vocab_size` in `adapter_config.json`: the tokenizer, saved in
this folder, has {n_tok} tokens, padded to {vocab} rows). Resize the base to that size —
the one call besides peft's own (a no-op when the sizes already agree) — then load:

```python
from transformers import {auto}, AutoTokenizer
from peft import PeftModel

base = {auto}.from_pretrained("{base}")
base.resize_token_embeddings({vocab})
model = PeftModel.from_pretrained(base, "path/to/this/adapter")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/adapter")
```

`ftib export --merge RUN_DIR/stages/<id> OUT` writes the merged model as a plain
Hugging Face directory instead.
"""


def save_adapter_dir(model: Any, out: Path, *, processor: Any = None, tokenizer: Any = None) -> Path:
    """Write a peft adapter a user can load without ftib.

    peft's own files (``adapter_config.json``, ``adapter_model.safetensors``, README),
    with ``base_model_name_or_path`` made absolute for a local base, plus the
    tokenizer/processor (:meth:`~ftib.models.chat.ChatProcessor.save_pretrained`, the
    base's formats included) and the embedding row count a base must be resized to
    (``"ftib": {"vocab_size": N}`` in ``adapter_config.json`` — peft ignores the key — and
    the README's loading snippet; Hugging Face's ``resize_token_embeddings`` is the one
    call needed after a vocabulary extension).
    """
    import json

    cfg = model.peft_config["default"]
    base = str(cfg.base_model_name_or_path or "")
    if base and Path(base).is_dir():
        cfg.base_model_name_or_path = base = str(Path(base).resolve())
    model.save_pretrained(out)
    if processor is not None:
        processor.save_pretrained(out)
    elif tokenizer is not None:
        tokenizer.save_pretrained(out)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    conf_path = out / "adapter_config.json"
    conf = json.loads(conf_path.read_text(encoding="utf-8"))
    conf["ftib"] = {"vocab_size": vocab}
    conf_path.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tok = processor.tokenizer if processor is not None else tokenizer
    auto = "AutoModelForImageTextToText" if is_vlm(model) else "AutoModelForCausalLM"
    readme = out / "README.md"
    head = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    readme.write_text(head + ADAPTER_README.format(base=base, vocab=vocab, auto=auto,
                                                   n_tok=len(tok) if tok is not None else "?"), encoding="utf-8")
    return out


@dataclass(frozen=True, kw_only=True)
class ReplaySpec:
    """Plain-text replay inside a chat stage (``stages.sft.replay``).

    Chat stages train on assistant tokens only, so a long run of them wears away the
    language model's plain-text ability (measured: the FTibWorld base's Chinese text NLL
    rose to 14.6 nats/token after 4,500 chat steps, worse than a uniform guess). Replay
    lists plain-text documents beside the conversations, each one row with every token
    labelled (the document end appended, as CPT does), so both are trained in the same
    batches.

    Attributes:
        data: text files or folders in CPT's formats, or ``ftibworld[:SIZE[:SEED]]``
            (its CPT corpus); e.g. ``ftibworld:base/pretrain/corpus.jsonl``.
        share: the share of each epoch's samples that are documents (conversations are
            the rest); documents repeat, in a seeded order, when there are too few.
        max_length: tokens per document row; a longer document is cut (counted as
            ``data_replay_truncated``).
    """

    data: tuple[str, ...]
    share: float = 0.2
    max_length: int = 256

    def __post_init__(self) -> None:
        from ftib.data.sources import check_spec

        if isinstance(self.data, str):
            object.__setattr__(self, "data", (self.data,))
        if not self.data:
            raise ConfigError("replay.data: give at least one text/JSONL file or ftibworld[:SIZE[:SEED]]")
        for i, spec in enumerate(self.data):
            check_spec(spec, f"replay.data[{i}]")
        if not 0.0 < self.share < 1.0:
            raise ConfigError(f"replay.share must lie strictly between 0 and 1 (the documents' share of the "
                              f"samples), got {self.share}")
        if self.max_length < 8:
            raise ConfigError(f"replay.max_length must be >= 8, got {self.max_length}")


def replay_samples(tokenizer: Any, spec: ReplaySpec, n_chat: int, *, seed: int,
                   keys: Iterable[str] = ()) -> tuple[list[ChatSample], dict[str, float]]:
    """The document rows of ``spec`` for an epoch of ``n_chat`` conversation samples:
    ``round(share / (1 - share) * n_chat)`` rows (at least one), documents drawn in a
    ``seed``-shuffled order and cycled. ``keys`` of the conversation samples that a
    text row also needs (``mm_token_type_ids``) are filled with zeros. Returns the
    samples and ``data_replay_*`` counts for the metrics."""
    from ftib.data.loaders import world_file
    from ftib.data.sources import resolve
    from ftib.models.chat import document_end_id
    from ftib.data.documents import read_documents, tokenize_documents

    docs = read_documents(tuple(resolve(d, world_file("cpt")) for d in spec.data))
    eos = document_end_id(tokenizer)
    ids = [d + [eos] for d in tokenize_documents(tokenizer, docs) if d]
    if not ids:
        raise FtibError(f"replay.data {', '.join(spec.data)}: every document tokenised to nothing")
    want = max(1, round(spec.share / (1.0 - spec.share) * n_chat))
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < want:
        order.extend(torch.randperm(len(ids), generator=g).tolist())
    rows: dict[int, ChatSample] = {}
    extra = [k for k in keys if k == "mm_token_type_ids"]
    truncated = 0
    samples = []
    for i in order[:want]:
        if i not in rows:
            t = torch.tensor(ids[i][: spec.max_length], dtype=torch.long)
            truncated += len(ids[i]) > spec.max_length
            tensors = {"input_ids": t, "attention_mask": torch.ones_like(t), "labels": t.clone()}
            tensors.update({k: torch.zeros_like(t) for k in extra})
            rows[i] = ChatSample(tensors)
        samples.append(rows[i])
    stats = {"data_replay_documents": float(len(ids)), "data_replay_rows": float(len(rows)),
             "data_replay_samples": float(len(samples)), "data_replay_truncated": float(truncated)}
    return samples, stats


def check_chat_data(cfg: Any) -> None:
    """The checks of a chat stage's data fields (``align``, ``sft``), for its Config's
    ``__post_init__``: the ``data`` spec, the pixel budget (``min_pixels`` <=
    ``max_pixels``) and ``max_drop_share`` in [0, 1]."""
    from ftib.data.loaders import check_pixel_range
    from ftib.data.sources import check_spec

    for spec in (cfg.data,) if isinstance(cfg.data, str) else cfg.data:
        check_spec(spec, "data")
    check_pixel_range(cfg.min_pixels, cfg.max_pixels)
    check_drop_share(cfg.max_drop_share)


def training_bundle(ctx: Any, trainable: TrainableConfig) -> Any:
    """The bundle a training stage starts from, on ``ctx.device``.

    With ``full``/``embeddings`` modes the model loads in float32; when only adapters or
    the vision parts train (``lora``/``none``), the frozen base loads in ``ctx.dtype`` to
    save memory. Either way the loop keeps every trainable tensor (embeddings, merger,
    peft's copies included) in ``train.master_weights`` (float32 by default; autocast
    handles bf16 compute): :func:`ftib.core.train.cast_master_weights`.
    """
    from ftib.models.bundle import bundle_from_context

    live = ctx.bundle is not None
    bundle = bundle_from_context(ctx, dtype=ctx.dtype if trainable.mode in ("lora", "none") else "float32")
    if live:  # the previous stage's model may have been left elsewhere
        bundle.model.to(ctx.device)
    return bundle


@dataclass
class ChatSample:
    """One encoded conversation (the output of ``ChatProcessor.encode``)."""

    tensors: dict[str, torch.Tensor]


class LabelledLMTask:
    """Shared part of the loop's view of a causal-LM stage whose batches carry ``labels``
    (``-100`` = no loss): the summed next-token cross-entropy and its token count.
    Subclasses set ``model``, ``_groups``, ``_save`` and provide ``train_samples`` and
    ``collate``."""

    model: torch.nn.Module

    def param_groups(self) -> list[ParamGroup]:
        return self._groups

    def loss_normaliser(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != -100).sum())

    kernel_impl: str = "auto"

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> Any:
        """Summed next-token cross-entropy over the labelled tokens of ``batch``.

        By default the model returns its last hidden states without logits and
        :func:`lm_loss_sum` computes the loss in vocabulary chunks with ftib's fused
        linear cross-entropy (:mod:`ftib.kernels.linear_ce`, ``kernel_impl`` = its
        ``impl``; ``"reference"`` = eager cross-entropy on full logits). With
        liger-kernel's fused linear cross-entropy on the model (``model.kernels.liger``)
        the model computes it instead (``labels`` passed in, ``num_items_in_batch=1``
        selects liger's sum reduction). All shift the labels the same way (token t
        predicts label t+1).
        """
        from ftib.core.train import LossOutput
        from ftib.models.bundle import liger_patches

        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        tokens = int(batch["attention_mask"].sum())
        if "fused_linear_cross_entropy" in liger_patches(self.model):
            out = self.model(**batch, labels=labels, use_cache=False, skip_logits=True, num_items_in_batch=1)
            return LossOutput(loss=out.loss, tokens=tokens, samples=labels.shape[0])
        loss = lm_loss_sum(self.model, batch, labels, impl=self.kernel_impl)
        return LossOutput(loss=loss, tokens=tokens, samples=labels.shape[0])

    def save_model(self, out_dir: Path) -> None:
        self._save(out_dir)


def check_drop_share(max_drop_share: float) -> None:
    """Config-time check of ``max_drop_share`` (a share in [0, 1]); shared by every
    stage with an ``overflow: drop`` policy."""
    if not 0.0 <= max_drop_share <= 1.0:
        raise ValueError(f"max_drop_share must lie in [0, 1], got {max_drop_share}")


def check_dropped(dropped: list[str], total: int, *, what: str, limit: str, max_drop_share: float,
                  logger: Any, hint: str) -> None:
    """Nothing dropped silently: warn with the count and the first five ``dropped``
    labels (source file and id), or stop when their share of ``total`` is above
    ``max_drop_share`` (a budget too small for the data must not silently shrink it).

    Args:
        dropped: one label per dropped item, e.g. ``"data/sft.jsonl (id r3) (70 tokens)"``.
        total: items before dropping.
        what: plural noun for the messages (``conversations``, ``prompts``).
        limit: the budget they exceed, as ``key=value``.
        hint: how to fix it, appended to the error.

    Raises:
        FtibError: more than ``max_drop_share`` of ``total`` dropped, naming the first ones.
    """
    if not dropped:
        return
    share = len(dropped) / max(1, total)
    head = "; ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else "")
    if share > max_drop_share:
        raise FtibError(f"{len(dropped)} of {total} {what} ({share:.1%}) exceed {limit}, more than "
                        f"max_drop_share={max_drop_share:.1%}: {head}; {hint}")
    logger.warning("dropped %d of %d %s over %s: %s", len(dropped), total, what, limit, head)


class ChatTask(LabelledLMTask):
    """The loop's view of a chat-formatted stage (Align, SFT): loss on assistant tokens.

    Every record is encoded once up front (so a bad image or an over-long record fails
    or is counted before training starts, never deep in a forward pass).

    Args:
        model: the model being trained (possibly peft-wrapped).
        groups: its parameter groups.
        chat: the bundle's :class:`~ftib.models.chat.ChatProcessor`.
        records: ``(messages, images)`` per conversation, with a source label for errors.
        max_length: token limit per conversation.
        overflow: what a longer conversation gets: ``error`` (stop, naming it),
            ``truncate`` (cut from the right; dropped if the cut would split an image), or
            ``drop``. Truncated and dropped ones are counted in the metrics; dropped ones
            are warned about with their first ids.
        max_drop_share: more than this share of dropped conversations is an error naming
            them (default 1%): a budget too small for the data must not silently shrink it.
        save: writes the model checkpoint.
        enable_thinking: passed to the model's chat template (``None``: its default).
        repeats: per record, how many times it is listed in an epoch (default once;
            encoded once either way). The metrics then count ``samples`` as well.
    """

    def __init__(self, model: torch.nn.Module, groups: list[ParamGroup], chat: Any,
                 records: list[tuple[list[dict], list[Any], str]], *, max_length: int,
                 overflow: Literal["error", "truncate", "drop"], save: Any, logger: Any,
                 max_drop_share: float = 0.01, enable_thinking: bool | None = False,
                 repeats: list[int] | None = None) -> None:
        from ftib.core.errors import FtibError

        self.model, self._groups, self.chat, self._save = model, groups, chat, save
        self.samples: list[ChatSample] = []
        self.stats = {"records": len(records), "truncated": 0, "dropped": 0, "no_assistant_tokens": 0}
        dropped: list[str] = []
        for n, (messages, images, where) in enumerate(records):
            try:
                full = chat.encode(messages, images, enable_thinking=enable_thinking)
            except FtibError as exc:
                raise FtibError(f"{where}: {exc}") from exc
            except OSError as exc:  # unreadable image file
                raise FtibError(f"{where}: cannot read an image: {exc}") from exc
            length = full["input_ids"].numel()
            if length > max_length:
                if overflow == "error":
                    raise FtibError(f"{where}: {length} tokens exceed max_length={max_length} (overflow: error; "
                                    f"raise max_length, lower max_pixels, or set overflow: truncate | drop)")
                if overflow == "drop":
                    self.stats["dropped"] += 1
                    dropped.append(f"{where} ({length} tokens)")
                    continue
                self.stats["truncated"] += 1
                try:
                    full = chat.encode(messages, images, max_length=max_length, enable_thinking=enable_thinking)
                except FtibError:
                    self.stats["dropped"] += 1  # truncation would cut an image
                    dropped.append(f"{where} ({length} tokens; truncation would cut an image)")
                    continue
            if int((full["labels"] != -100).sum()) == 0:
                self.stats["no_assistant_tokens"] += 1
                continue
            # a repeated record is one encoded sample listed several times in the epoch
            self.samples.extend([ChatSample(full)] * (repeats[n] if repeats is not None else 1))
        if repeats is not None:
            self.stats["samples"] = len(self.samples)
        check_dropped(dropped, len(records), what="conversations", limit=f"max_length={max_length}",
                      max_drop_share=max_drop_share, logger=logger, hint="raise max_length or lower max_pixels")
        if not self.samples:
            raise FtibError(f"no usable training conversations ({self.stats})")
        logger.info("conversations: %s", self.stats)

    def train_samples(self) -> list[ChatSample]:
        return self.samples

    def collate(self, items: list[ChatSample]) -> dict[str, torch.Tensor]:
        return self.chat.collate([s.tensors for s in items])


KERNEL_IMPLS = ("auto", "triton", "torch", "reference")


def _linear_head(model: torch.nn.Module) -> torch.nn.Module:
    """The lm_head as a module computing ``x @ weight.T (+ bias)``; peft's
    ``modules_to_save`` wrapper resolves ``weight`` to its active trainable copy."""
    head = model.get_output_embeddings()
    if isinstance(head, torch.nn.Linear) or type(head).__name__ == "ModulesToSaveWrapper":
        return head
    raise FtibError(f"the fused linear cross-entropy needs a plain linear lm_head; {type(model).__name__}'s is "
                    f"{type(head).__name__} (e.g. LoRA on lm_head): set the stage's kernel_impl: reference")


def lm_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], labels: torch.Tensor, *,
                impl: str = "auto") -> torch.Tensor:
    """Summed next-token cross-entropy of ``labels`` (B, T) (token t predicts label t+1;
    ``-100`` = no loss), float32, without materialising (tokens, V) logits.

    The model runs with ``logits_to_keep`` an empty index (its lm_head projects nothing)
    and returns its last hidden states (B, T, H); the lm_head weight then goes through
    :func:`ftib.kernels.linear_ce.fused_linear_cross_entropy`. The forward is still
    ``model(...)``, so FSDP2's root hooks and peft wrappers see it. ``impl="reference"``
    is the eager path: full logits, then :func:`shifted_ce_sum`.
    """
    from ftib.models.bundle import liger_patches

    if impl == "reference" or liger_patches(model):  # liger's patched forward keeps its own logits path
        return shifted_ce_sum(model(**batch, use_cache=False).logits, labels)
    from ftib.kernels.linear_ce import fused_linear_cross_entropy

    nothing = torch.zeros(0, dtype=torch.long, device=labels.device)
    out = model(**batch, use_cache=False, logits_to_keep=nothing, output_hidden_states=True)
    hidden = out.hidden_states[-1]  # the final norm's output (transformers ties it to last_hidden_state)
    head = _linear_head(model)
    target = torch.full_like(labels, -100)
    target[:, :-1] = labels[:, 1:]
    weight, bias = head.weight, getattr(head, "bias", None)
    if not torch.is_autocast_enabled(hidden.device.type) and hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)  # e.g. a bf16 frozen decoder under a float32 head
    return fused_linear_cross_entropy(hidden, weight, target, bias=bias, reduction="sum", impl=impl).loss


def shifted_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy (token t predicts label t+1; ``-100`` = no loss),
    in float32."""
    shifted = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), labels[:, 1:].reshape(-1),
                                             ignore_index=-100, reduction="sum")


@torch.no_grad()
def image_grounding(model: torch.nn.Module, chat: Any, records: list[tuple[list[dict], list[Any], str]],
                    batch_size: int = 16, *, enable_thinking: bool | None = False) -> dict[str, float]:
    """How much the model's answers depend on their images: the mean answer-token loss of
    ``records`` with their own images and with the images shifted (each conversation
    shown the image of the next record that has another image). ``gap = shuffled - matched`` is ~0 for a
    model that ignores its images and grows as it grounds its answers in them. Records
    without exactly one image are skipped; needs at least two."""
    rows = [(m, imgs) for m, imgs, _ in records if len(imgs) == 1]
    if len(rows) < 2:
        raise FtibError(f"the grounding check needs at least 2 single-image records, got {len(rows)}")
    shifted = [_next_other_image(rows, i) for i in range(len(rows))]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        totals = {}
        for name, shift in (("matched", 0), ("shuffled", 1)):
            loss_sum, count = 0.0, 0
            encoded = [chat.encode(m, shifted[i] if shift else imgs, enable_thinking=enable_thinking)
                       for i, (m, imgs) in enumerate(rows)]
            for start in range(0, len(encoded), batch_size):
                batch = {k: v.to(device) for k, v in chat.collate(encoded[start:start + batch_size]).items()}
                labels = batch.pop("labels")
                loss_sum += float(lm_loss_sum(model, batch, labels))
                count += int((labels[:, 1:] != -100).sum())
            totals[name] = loss_sum / max(count, 1)
    finally:
        model.train(was_training)
    return {"grounding_loss_matched": totals["matched"], "grounding_loss_shuffled": totals["shuffled"],
            "grounding_gap": totals["shuffled"] - totals["matched"], "grounding_records": float(len(rows))}


def _same_image(a: Any, b: Any) -> bool:
    if isinstance(a, (str, Path)) and isinstance(b, (str, Path)):
        return Path(a) == Path(b)
    return a is b


def _next_other_image(rows: list[tuple[Any, list[Any]]], i: int) -> list[Any]:
    """The image of the first record after ``i`` (cyclically) whose image is another
    one: records of one picture are often adjacent (a scene's questions in a row), and
    shifting onto the same picture would measure nothing."""
    for k in range(1, len(rows)):
        other = rows[(i + k) % len(rows)][1]
        if not _same_image(other[0], rows[i][1][0]):
            return other
    raise FtibError("the grounding check needs records of at least 2 different images; all held-out "
                    "records show the same one")


def grounding_indices(records: list, n: int) -> list[int]:
    """Indices of the last ``n`` single-image records (held out for :func:`image_grounding`)."""
    if n <= 0:
        return []
    idx = [i for i, (_, imgs, _) in enumerate(records) if len(imgs) == 1][-n:]
    if len(idx) < 2 or len(idx) >= len(records):
        raise FtibError(f"grounding_check: {n} held-out records requested but the data has "
                        f"{len(records)} records ({len(idx)} usable); lower grounding_check or set it to 0")
    return idx


def split_grounding_records(records: list, n: int,
                            repeats: list[int] | None = None) -> tuple[list, list, list[int] | None]:
    """``(train, held, train_repeats)``: the last ``n`` single-image records are held out of
    training for :func:`image_grounding` (``n = 0``: nothing held out); ``repeats``, aligned
    with ``records``, is returned aligned with ``train`` (``None`` stays ``None``)."""
    if repeats is not None and len(repeats) != len(records):
        raise ValueError(f"repeats has {len(repeats)} entries for {len(records)} records")
    idx = grounding_indices(records, n)
    held_set = set(idx)
    train = [r for i, r in enumerate(records) if i not in held_set]
    kept = None if repeats is None else [k for i, k in enumerate(repeats) if i not in held_set]
    return train, [records[i] for i in idx], kept


def train_chat_stage(ctx: Any, bundle: Any, records: list[tuple[list[dict], list[Any], str]], *,
                     trainable: TrainableConfig, train: Any, max_length: int,
                     overflow: Literal["error", "truncate", "drop"], grounding_check: int = 0,
                     max_drop_share: float = 0.01,
                     kernel_impl: str = "auto", pixels: tuple[int | None, int | None] = (None, None),
                     where: str = "stage", enable_thinking: bool | None = False,
                     repeats: list[int] | None = None, replay: ReplaySpec | None = None,
                     extra_metrics: dict[str, float] | None = None) -> Any:
    """Train ``bundle`` on chat ``records`` (Align, SFT): select the trainable set, run
    the shared loop, write the final checkpoint; data counts go into the metrics. With
    ``grounding_check = n > 0`` the last ``n`` single-image records are held out and
    :func:`image_grounding` is measured on them before and after training (metrics
    ``grounding_*`` and ``grounding_gap_before``). ``pixels`` = (min_pixels, max_pixels)
    of the images (``None``: the model processor's; :mod:`ftib.models.pixels`), checked
    against the model's patch grid (errors name ``where``). ``enable_thinking`` goes to the
    model's chat template for every conversation. ``repeats`` (aligned with ``records``):
    how many times each record appears in an epoch (a weighted mixture; default once).
    ``replay``: plain-text documents trained beside the conversations
    (:class:`ReplaySpec`; counts ``data_replay_*`` in the metrics). ``extra_metrics``
    (the caller's data counts) go into the metrics as they are."""
    from ftib.core import StageResult
    from ftib.core.train import Trainer

    from ftib.models.pixels import with_pixel_budget

    # Inputs are encoded under the stage's pixel budget; the checkpoint keeps the
    # model's own processor config (bundle.chat).
    chat = with_pixel_budget(bundle.chat, *pixels, where=where)
    records, held, repeats = split_grounding_records(records, grounding_check, repeats)
    before = image_grounding(bundle.model, chat, held, enable_thinking=enable_thinking) if held else {}
    model, groups = select_trainable(bundle.model, trainable, logger=ctx.logger,
                                     text_only=not any(imgs for _, imgs, _ in records + held))
    ctx.logger.info("trainable parameters: %d (%s)", trainable_parameter_count(groups),
                    ", ".join(g.name for g in groups))

    def save(out_dir: Path) -> None:
        save_model_dir(model, out_dir, processor=bundle.chat, save_adapter=trainable.lora.save_adapter)

    task = ChatTask(model, groups, chat, records, max_length=max_length, overflow=overflow,
                    save=save, logger=ctx.logger, max_drop_share=max_drop_share,
                    enable_thinking=enable_thinking, repeats=repeats)
    replay_stats: dict[str, float] = {}
    if replay is not None:
        texts, replay_stats = replay_samples(bundle.tokenizer, replay, len(task.samples), seed=ctx.seed,
                                             keys=task.samples[0].tensors)
        task.samples.extend(texts)
        ctx.logger.info("replay: %d plain-text rows beside %d conversation samples (%s)", len(texts),
                        len(task.samples) - len(texts), replay_stats)
    task.kernel_impl = kernel_impl
    trainer = Trainer(task, train, ctx)
    result = trainer.train()
    metrics = {**result.metrics, **{f"data_{k}": float(v) for k, v in task.stats.items()}, **replay_stats,
               **(extra_metrics or {}), **kernel_metrics(model)}
    if held:
        metrics.update(image_grounding(model, chat, held, enable_thinking=enable_thinking))
        if before:
            metrics["grounding_gap_before"] = before["grounding_gap"]
        ctx.logger.info("image grounding on %d held-out records: answer loss %.3f with their images, "
                        "%.3f with shifted images (gap %.3f%s)", len(held), metrics["grounding_loss_matched"],
                        metrics["grounding_loss_shuffled"], metrics["grounding_gap"],
                        f", {before['grounding_gap']:.3f} before training" if before else "")
    return StageResult(checkpoint=trainer.save_final(), metrics=metrics)
