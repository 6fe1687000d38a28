"""Train a small sentence-transformers bi-encoder on parallel pairs, on the CPU.

The semantic reward needs an encoder that places a Tibetan sentence and its Chinese
translation close together. Real runs use a released Tibetan–Chinese embedding model;
the embedded default has none available offline, so ``ftib reward-encoder train`` builds
one in minutes:

* a byte-level BPE tokenizer trained on both sides of the pairs (``tokenizers``);
* a tiny BERT encoder from scratch (``transformers.BertModel``), mean pooling and L2
  normalisation (sentence-transformers ``Transformer`` → ``Pooling`` → ``Normalize``);
* contrastive training with in-batch negatives, symmetric InfoNCE with a fixed scale
  (the "multiple negatives ranking" objective; van den Oord et al. 2018, Henderson et
  al. 2017), AdamW, linear decay;
* held-out retrieval accuracy (top-1, both directions) before and after training,
  written to ``training_report.json`` beside the model.

The output directory loads with ``SentenceTransformer(path)`` and is what the ``semantic``
reward's ``model`` points at.

Pairs file: JSON Lines with two text fields (``--fields bo,zh``; by default the first two
string fields of the first record), or a TSV with a header row.
"""

from __future__ import annotations

import argparse
import hashlib
import csv
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ftib.core import FtibError
from ftib.core.rundir import atomic_dir, atomic_write_json, build_once, iter_jsonl

log = logging.getLogger("ftib.reward_encoder")


#: Encoder spec that names the FTibWorld reward encoder: ``ftibworld-encoder`` (the
#: world of the stage's or evaluator's own data) or ``ftibworld-encoder:SIZE[:SEED]``.
FTIBWORLD_ENCODER = "ftibworld-encoder"


def resolve_encoder(spec: str | Path, data: str = "ftibworld", seed: int = 0) -> str:
    """A sentence-transformers model name or directory for ``spec``: the FTibWorld
    encoder names are trained on first use and cached (:func:`ftibworld_encoder`); any
    other spec (hub name, local directory) is returned unchanged."""
    spec = str(spec)
    if not spec.startswith(FTIBWORLD_ENCODER):
        return spec
    world = "ftibworld" + spec[len(FTIBWORLD_ENCODER):]
    if spec == FTIBWORLD_ENCODER and str(data).startswith("ftibworld"):
        world = str(data)
    return str(ftibworld_encoder(world, seed=seed))


@dataclass(frozen=True, kw_only=True)
class EncoderTrainConfig:
    vocab_size: int = 4000
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    max_length: int = 96
    epochs: int = 4
    batch_size: int = 64
    lr: float = 2e-3
    scale: float = 20.0
    holdout: float = 0.1
    seed: int = 0


def read_pairs(path: Path, fields: tuple[str, str] | None = None) -> list[tuple[str, str]]:
    """Read (a, b) text pairs; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FtibError(f"pairs file {path} does not exist")
    pairs: list[tuple[str, str]] = []
    if path.suffix == ".tsv":
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            cols = fields or tuple((reader.fieldnames or [])[:2])
            for i, row in enumerate(reader, 2):
                if len(cols) != 2 or any(row.get(c) is None for c in cols):
                    raise FtibError(f"{path}:{i}: missing column(s) {cols}")
                pairs.append((row[cols[0]], row[cols[1]]))
    else:
        for i, rec in iter_jsonl(path):
            if fields is None:
                names = [k for k, v in rec.items() if isinstance(v, str)][:2]
                if len(names) != 2:
                    raise FtibError(f"{path}:{i}: need two text fields (or pass --fields a,b)")
                fields = (names[0], names[1])
            a, b = rec.get(fields[0]), rec.get(fields[1])
            if not isinstance(a, str) or not isinstance(b, str):
                raise FtibError(f"{path}:{i}: fields {fields} must both be strings")
            pairs.append((a, b))
    pairs = [(a.strip(), b.strip()) for a, b in pairs if a.strip() and b.strip()]
    if len(pairs) < 8:
        raise FtibError(f"{path}: {len(pairs)} usable pairs; need at least 8 to train an encoder")
    return pairs


def _build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[CLS]", "[SEP]"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")


def build_encoder(texts: list[str], cfg: EncoderTrainConfig, workdir: Path):
    """A fresh sentence-transformers model (tiny BERT + mean pooling + normalisation)."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    torch.manual_seed(cfg.seed)
    tokenizer = _build_tokenizer(texts, cfg.vocab_size)
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size,
                                num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                                intermediate_size=cfg.hidden_size * 4, max_position_embeddings=cfg.max_length + 2,
                                pad_token_id=tokenizer.pad_token_id), add_pooling_layer=False)
    backbone = workdir / "backbone"
    bert.save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    word = models.Transformer(str(backbone), max_seq_length=cfg.max_length)
    pool = models.Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")


def retrieval_accuracy(model, pairs: list[tuple[str, str]], batch_size: int = 128) -> float:
    """Top-1 accuracy of finding each side's partner among all pairs, both directions."""
    with torch.no_grad():
        a = model.encode([p[0] for p in pairs], batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
        b = model.encode([p[1] for p in pairs], batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    sims = a @ b.T
    gold = torch.arange(len(pairs))
    return float(((sims.argmax(1) == gold).float().mean() + (sims.argmax(0) == gold).float().mean()) / 2)


def train_encoder(pairs: list[tuple[str, str]], out: Path, cfg: EncoderTrainConfig = EncoderTrainConfig(),
                  progress: bool = True) -> dict:
    """Train and save the encoder to ``out`` (atomically); return the training report.

    Training seeds and draws from torch's global RNG (initialisation, dropout); it runs
    inside :func:`torch.random.fork_rng`, so building the encoder on first use leaves the
    caller's RNG exactly as a cached encoder would (a GRPO stage's sampling must not
    depend on whether the encoder was already in the cache).
    """
    with torch.random.fork_rng(devices=[]):
        return _train_encoder(pairs, out, cfg, progress)


def _train_encoder(pairs: list[tuple[str, str]], out: Path, cfg: EncoderTrainConfig,
                   progress: bool) -> dict:
    rng = random.Random(cfg.seed)
    pairs = list(pairs)
    rng.shuffle(pairs)
    n_hold = max(4, int(len(pairs) * cfg.holdout))
    held, train = pairs[:n_hold], pairs[n_hold:]
    out = Path(out)
    t0 = time.perf_counter()
    with atomic_dir(out) as tmp:
        model = build_encoder([t for p in train for t in p], cfg, tmp)
        before = retrieval_accuracy(model, held)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
        steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc="reward encoder", unit="step", dynamic_ncols=True)
        losses = []
        model.train()
        g = torch.Generator().manual_seed(cfg.seed)
        for _ in range(cfg.epochs):
            order = torch.randperm(len(train), generator=g).tolist()
            for i in range(0, len(order), cfg.batch_size):
                batch = [train[j] for j in order[i : i + cfg.batch_size]]
                if len(batch) < 2:
                    continue
                ea = model(model.tokenize([p[0] for p in batch]))["sentence_embedding"]
                eb = model(model.tokenize([p[1] for p in batch]))["sentence_embedding"]
                logits = cfg.scale * ea @ eb.T
                target = torch.arange(len(batch))
                loss = (torch.nn.functional.cross_entropy(logits, target)
                        + torch.nn.functional.cross_entropy(logits.T, target)) / 2
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if bar is not None:
            bar.close()
        model.eval()
        after = retrieval_accuracy(model, held)
        model.save(str(tmp))
        import shutil

        shutil.rmtree(tmp / "backbone", ignore_errors=True)
        report = {
            "pairs": len(pairs), "train_pairs": len(train), "heldout_pairs": len(held),
            "heldout_retrieval_top1_before": before, "heldout_retrieval_top1_after": after,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "steps": len(losses), "seconds": round(time.perf_counter() - t0, 2), "config": asdict(cfg),
        }
        atomic_write_json(tmp / "training_report.json", report)
    log.info("reward encoder: held-out top-1 retrieval %.3f -> %.3f in %.1fs (%s)", before, after,
             report["seconds"], out)
    return report


def register(subparsers) -> None:
    """``ftib reward-encoder train --pairs FILE --out DIR``."""
    p = subparsers.add_parser("reward-encoder", help="train the semantic reward's sentence encoder",
                              description="Train a small sentence-transformers bi-encoder on parallel pairs.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train on a pairs file", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--pairs", required=True, type=Path, help="JSONL (two text fields) or TSV with header")
    t.add_argument("--out", required=True, type=Path, help="output directory (a sentence-transformers model)")
    t.add_argument("--fields", help="the two field names, e.g. bo,zh (default: first two text fields)")
    for f in ("epochs", "batch_size", "hidden_size", "layers", "vocab_size", "seed"):
        t.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(EncoderTrainConfig(), f))
    t.add_argument("--lr", type=float, default=EncoderTrainConfig().lr)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    fields = None
    if args.fields:
        parts = tuple(s.strip() for s in args.fields.split(","))
        if len(parts) != 2:
            raise FtibError("--fields takes two names separated by a comma, e.g. bo,zh")
        fields = parts
    cfg = EncoderTrainConfig(epochs=args.epochs, batch_size=args.batch_size, hidden_size=args.hidden_size,
                             layers=args.layers, vocab_size=args.vocab_size, seed=args.seed, lr=args.lr)
    report = train_encoder(read_pairs(args.pairs, fields), args.out, cfg, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2))
    return 0


def ftibworld_encoder(world: str, seed: int = 0) -> Path:
    """The semantic-reward encoder for a FTibWorld build (``ftibworld[:SIZE[:SEED]]``):
    a small bi-encoder trained on its Tibetan–Chinese translation pairs and Tibetan /
    Chinese headline pairs on first use (``ftib reward-encoder``), then cached."""
    from ftib.core.registry import Registry
    from ftib.core.rundir import cache_dir

    # The world's files are ftib.data's; models reach them through the registry.
    world_pairs = Registry().hook("world_encoder_pairs")
    if world_pairs is None:
        raise FtibError(f"{FTIBWORLD_ENCODER} needs the 'world_encoder_pairs' hook (ftib.data), "
                        "which is not installed")
    cache = cache_dir()
    pairs = list(world_pairs(world))
    digest = hashlib.sha256()
    for a, b in pairs:
        digest.update(f"{a}\t{b}\n".encode())
    cfg = EncoderTrainConfig(vocab_size=2000, hidden_size=96, layers=2, heads=4, max_length=48,
                             epochs=8, batch_size=32, lr=2e-3, seed=seed)
    digest.update(repr(cfg).encode())
    # Keyed by the pairs and the training settings, so a changed world retrains it.
    out = cache / "encoders" / f"{world.replace(':', '-')}-{digest.hexdigest()[:12]}"
    build_once(out, lambda: (out / "modules.json").is_file(), lambda: train_encoder(pairs, out, cfg, progress=False))
    return out
