"""Can a model learn the question-conditioned lookup that POPE needs? (issue 17)

POPE asks "is there a *fish* in the picture?": the answer needs a query that depends on
the question (find the scene element that matches the question's object). The fixed-query
questions ("how many objects?") ground quickly in FTibWorld; this one did not, in text or
in images. This probe measures how fast the lookup is learnt, in two settings:

``text``
    A fresh Qwen3 language model reads an FTibWorld scene's Chinese caption (which names
    every object) followed by ``k`` existence questions, half of them about absent
    objects; the loss is on the answers only. With ``k`` = 1 this is the shape of the
    base's instruction data (one question per record); with ``k`` = 8 one caption is
    read once for eight answers.

``image``
    A VLM checkpoint gets the scene as an FTibWorld image (rendered at ``image_size``, 64
    pixels as the world's files; the processor of ``ftibworld-base`` brings it to 48
    pixels, one merged token per cell) and
    ``k`` existence questions as a multi-turn chat. Optionally first
    ``--align-steps``: the vision tower and merger are trained alone so that each cell's
    merged token scores highest against the language model's own (frozen) embedding of
    the cell's object word and colour word (a "word-tied" head: logits are dot products
    with the embedding rows of 花, 鱼, 红色, ...; empty cells get one learnt vector). That
    puts an object's image token where the language model already keeps its word.
    ``--freeze-vision`` keeps the tower and merger fixed during the question training.

Accuracy is on ``held_out`` scenes (150 for images, 200 for text by default), one
question each: right when the right answer has a lower answer loss than the flipped one
(是。 for 不是。 or back). Chance is 50 %.

Usage::

    python -m ftib.bench.lookup_probe text --k 8 --steps 1000
    python -m ftib.bench.lookup_probe image runs/ftibworld-base/stages/text/final \\
        --align-steps 300 --freeze-vision --k 8 --steps 1000

CPU, float32, one thread (``torch.set_num_threads(1)``): text ~0.3 s per step at k = 8,
image ~0.5 s per step.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger("ftib.bench")

YES, NO = "是。", "不是。"


@dataclass(frozen=True, kw_only=True)
class LookupPoint:
    """One evaluation: training step, last batch loss, held-out accuracy (0-1), seconds."""

    step: int
    loss: float
    accuracy: float
    seconds: float


def existence_questions(scene: Any, rng: random.Random, k: int) -> list[tuple[str, str]]:
    """``k`` Chinese existence questions about ``scene`` with their answers (是。/不是。),
    by the world's own :func:`ftib.data.world.build.polar_question`; each is about a
    present object with probability 1/2 (always, when every category is present)."""
    from ftib.data.world.build import polar_question

    out = []
    for _ in range(k):
        qa = polar_question(scene, rng, "existence", rng.random() < 0.5) or polar_question(
            scene, rng, "existence", True)  # None: every category is present, nothing to deny
        assert qa is not None
        out.append((qa.question.zh, qa.answer.zh))
    return out


def _scene(rng: random.Random) -> Any:
    from ftib.data.world import scene as S

    return S.sample_scene(rng, 1, 6, 3)


# --------------------------------------------------------------------------- text probe


def text_probe(*, k: int = 8, steps: int = 1000, lr: float = 1e-3, layers: int = 3, width: int = 128,
               tokenizer: str = "han", batch_size: int = 16, every: int = 200, held_out: int = 200,
               tokenizer_scenes: int = 3000, seed: int = 0,
               report: Callable[[LookupPoint], None] | None = None) -> list[LookupPoint]:
    """Train a fresh ``layers`` x ``width`` Qwen3 LM on caption + ``k`` questions.

    ``tokenizer``: ``han`` (Han characters split before a byte-level BPE, as Qwen keeps
    Chinese tokens short) or ``bytes`` (plain byte-level BPE, which merges the world's
    templated phrases into single tokens, as the base's tokenizer does). Both have 600
    tokens, trained on ``tokenizer_scenes`` scenes' captions and questions.
    """
    from ftib.data.world.build import caption
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if tokenizer not in ("han", "bytes"):
        raise ValueError(f"tokenizer must be 'han' or 'bytes', not {tokenizer!r}")
    torch.manual_seed(seed)
    corpus_rng = random.Random(seed + 1)
    corpus = []
    for _ in range(tokenizer_scenes):
        s = _scene(corpus_rng)
        corpus.append(caption(s, corpus_rng).zh)
        corpus += [q for q, _ in existence_questions(s, corpus_rng, 4)]
    special = ["<pad>", "<q>", "<a>"]
    tk = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\p{Han}"), behavior="isolated"),
                                                 byte_level]) if tokenizer == "han" else byte_level)
    tk.train_from_iterator(corpus + [YES, NO] * 200, trainers.BpeTrainer(
        vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    found = [tk.token_to_id(s) for s in special]
    if None in found:
        raise RuntimeError(f"the probe tokenizer lost a special token: {dict(zip(special, found))}")
    pad, q_id, a_id = (i for i in found if i is not None)

    def encode(s: Any, rng: random.Random, n: int, flip: bool = False) -> tuple[list[int], list[int]]:
        ids = tk.encode(caption(s, rng).zh).ids
        lab = [-100] * len(ids)
        for q, a in existence_questions(s, rng, n):
            if flip:
                a = NO if a == YES else YES
            qi, ai = [q_id] + tk.encode(q).ids + [a_id], tk.encode(a).ids
            ids += qi + ai
            lab += [-100] * len(qi) + ai
        return ids, lab

    def batch(rows: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        t = max(len(i) for i, _ in rows)
        out = {"input_ids": torch.full((len(rows), t), pad), "labels": torch.full((len(rows), t), -100),
               "attention_mask": torch.zeros(len(rows), t, dtype=torch.long)}
        for j, (i, lab) in enumerate(rows):
            out["input_ids"][j, :len(i)] = torch.tensor(i)
            out["labels"][j, :len(i)] = torch.tensor(lab)
            out["attention_mask"][j, :len(i)] = 1
        return out

    held = [(batch([a]), batch([b])) for a, b in _held_pairs(held_out, 10_000, lambda s, r, f: encode(s, r, 1, f))]
    cfg = Qwen3Config(vocab_size=tk.get_vocab_size(), hidden_size=width, intermediate_size=width * 5 // 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=width // 4,
                      max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=pad)
    net = Qwen3ForCausalLM(cfg)

    def accuracy() -> float:
        return _pairwise_accuracy(net, held)

    return _train(net, lambda rng: batch([encode(_scene(rng), rng, k) for _ in range(batch_size)]),
                  accuracy, steps=steps, lr=lr, every=every, seed=seed, report=report)


# -------------------------------------------------------------------------- image probe


def align_vision_to_words(bundle: Any, *, steps: int = 300, lr: float = 1e-3, batch_size: int = 32,
                          image_size: int = 64, seed: int = 0) -> dict[str, float]:
    """Train ``bundle``'s vision tower and merger (nothing else) so that each scene
    cell's merged token (images rendered at ``image_size``, as the data the model will
    see: the features must be aligned on the pixels it is trained and tested on) scores highest, by dot product, against the language
    model's input embedding of the cell's object word and of its colour word (Chinese;
    the mean of its tokens' embeddings for a word of several tokens, as the ``ground``
    stage). Returns held-out cell accuracies."""
    from ftib.data.world import lexicon as lx
    from ftib.data.world import scene as S
    from ftib.stages.ground import WordHead, word_tables

    net, chat = bundle.model, bundle.chat
    visual = net.model.visual
    hidden = net.get_input_embeddings().weight.shape[1]
    # the ``ground`` stage's head: frozen word embeddings, a learnt "empty" vector, a scale
    tables, multi = word_tables(net, chat.tokenizer, {"category": [lx.BY_KEY[k].zh for k in S.CATEGORY_KEYS],
                                                      "colour": [lx.BY_KEY[k].zh for k in S.COLOUR_KEYS]})
    if multi:  # as the ``ground`` stage: such a word's target is the mean of its tokens' embeddings
        log.info("%d object/colour words span several tokens; their targets are the mean of their tokens", multi)
    head = WordHead(tables)

    def scenes(n: int, rng: random.Random) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        sc = [S.sample_scene(rng, 1, 6, 3) for _ in range(n)]
        enc = chat.image_processor(images=[S.render(s, image_size) for s in sc], return_tensors="pt")
        labels = {name: torch.zeros(n, 9, dtype=torch.long) for name in tables}
        for i, s in enumerate(sc):
            for o in s.objects:
                labels["category"][i, o.row * 3 + o.col] = S.CATEGORY_KEYS.index(o.category) + 1
                labels["colour"][i, o.row * 3 + o.col] = S.COLOUR_KEYS.index(o.colour) + 1
        return {"pixel_values": enc["pixel_values"], "grid_thw": enc["image_grid_thw"]}, labels

    logits = head.logits

    def features(pix: dict[str, torch.Tensor]) -> torch.Tensor:
        out = visual(pix["pixel_values"], grid_thw=pix["grid_thw"], return_dict=True).pooler_output
        if out.shape[0] != pix["grid_thw"].shape[0] * 9:
            raise ValueError("the word-tied alignment needs one merged token per scene cell (a 48-pixel budget) "
                             f"(got {out.shape[0]} tokens for {pix['grid_thw'].shape[0]} images)")
        return out.view(-1, 9, hidden)

    params = [*visual.parameters(), *head.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    for _ in range(steps):
        pix, labels = scenes(batch_size, rng)
        f = features(pix)
        loss = torch.stack([F.cross_entropy(logits(f, n).flatten(0, 1), labels[n].flatten()) for n in tables]).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    pix, labels = scenes(256, random.Random(seed + 999))
    with torch.no_grad():
        f = features(pix)
        occupied = labels["category"] > 0
        return {n: float((logits(f, n).argmax(-1)[occupied] == labels[n][occupied]).float().mean())
                for n in tables} | {"empty": float((logits(f, "category").argmax(-1)[~occupied] == 0).float().mean())}


def image_probe(model: str, *, k: int = 8, steps: int = 1000, lr: float = 1e-3, align_steps: int = 0,
                freeze_vision: bool = False, batch_size: int = 16, every: int = 100, held_out: int = 150,
                image_size: int = 64, seed: int = 0, report: Callable[[LookupPoint], None] | None = None
                ) -> tuple[dict[str, float], list[LookupPoint]]:
    """Train ``model`` (preset or checkpoint; loaded fresh, nothing written) on
    ``image_size``-pixel scenes with ``k`` existence questions each, after ``align_steps`` of
    :func:`align_vision_to_words`. Returns the alignment's cell accuracies and the curve."""
    from ftib.data.world import scene as S
    from ftib.models.bundle import load_bundle

    torch.manual_seed(seed)
    bundle = load_bundle(model)
    net, chat = bundle.model, bundle.chat
    if chat.image_processor is None:
        raise SystemExit(f"{model}: a text-only model has no images to probe")
    aligned = align_vision_to_words(bundle, steps=align_steps, image_size=image_size, seed=seed) if align_steps else {}
    if aligned and report:
        print("word-tied alignment, held-out cell accuracy:", {n: round(v, 3) for n, v in aligned.items()}, flush=True)
    if freeze_vision:
        for p in net.model.visual.parameters():
            p.requires_grad_(False)

    def conversation(s: Any, rng: random.Random, n: int, flip: bool = False) -> dict[str, torch.Tensor]:
        msgs: list[dict[str, Any]] = []
        for i, (q, a) in enumerate(existence_questions(s, rng, n)):
            if flip:
                a = NO if a == YES else YES
            msgs.append({"role": "user", "content": [{"type": "image"}] * (i == 0) + [{"type": "text", "text": q}]})
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
        return chat.encode(msgs, [S.render(s, image_size)])

    held = [(chat.collate([a]), chat.collate([b]))
            for a, b in _held_pairs(held_out, 50_000, lambda s, r, f: conversation(s, r, 1, f))]

    def accuracy() -> float:
        return _pairwise_accuracy(net, held)

    curve = _train(net, lambda rng: chat.collate([conversation(_scene(rng), rng, k) for _ in range(batch_size)]),
                   accuracy, steps=steps, lr=lr, every=every, seed=seed, report=report)
    return aligned, curve


# ------------------------------------------------------------------------------ shared


def _held_pairs(n: int, seed: int, make: Callable[[Any, random.Random, bool], Any]) -> list[tuple[Any, Any]]:
    """``n`` held-out (right, flipped) items: ``make(scene, rng, flip)`` twice from the
    same rng state, so both have the same scene and question (scene ``seed + i``,
    questions ``seed + 10_000 + i``)."""
    out = []
    for i in range(n):
        s, r = _scene(random.Random(seed + i)), random.Random(seed + 10_000 + i)
        state = r.getstate()
        right = make(s, r, False)
        r.setstate(state)
        out.append((right, make(s, r, True)))
    return out


def _pairwise_accuracy(net: torch.nn.Module, pairs: list[tuple[dict, dict]]) -> float:
    """Share of pairs whose first (right answer) has the lower answer loss."""
    net.eval()
    with torch.no_grad():
        ok = sum(float(net(**right).loss < net(**flipped).loss) for right, flipped in pairs)
    net.train()
    return ok / len(pairs)


def _train(net: torch.nn.Module, make_batch: Any, accuracy: Any, *, steps: int, lr: float, every: int,
           seed: int, report: Callable[[LookupPoint], None] | None) -> list[LookupPoint]:
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    points = [LookupPoint(step=0, loss=float("nan"), accuracy=accuracy(), seconds=0.0)]
    if report:
        report(points[-1])
    net.train()
    for step in range(1, steps + 1):
        loss = net(**make_batch(rng)).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        if step % every == 0 or step == steps:
            points.append(LookupPoint(step=step, loss=loss.item(), accuracy=accuracy(),
                                      seconds=time.perf_counter() - t0))
            if report:
                report(points[-1])
    return points


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="How fast is POPE's question-conditioned lookup learnt?")
    sub = ap.add_subparsers(dest="setting", required=True)
    for name in ("text", "image"):
        sp = sub.add_parser(name)
        if name == "image":
            sp.add_argument("model", help="VLM preset name or save_pretrained directory")
            sp.add_argument("--align-steps", type=int, default=0, help="word-tied vision alignment steps first")
            sp.add_argument("--freeze-vision", action="store_true")
            sp.add_argument("--image-size", type=int, default=64, help="render size (the world's files: 64)")
        else:
            sp.add_argument("--tokenizer", choices=("han", "bytes"), default="han")
            sp.add_argument("--layers", type=int, default=3)
            sp.add_argument("--width", type=int, default=128)
        sp.add_argument("--k", type=int, default=8, help="questions per scene")
        sp.add_argument("--steps", type=int, default=1000)
        sp.add_argument("--lr", type=float, default=1e-3)
        sp.add_argument("--every", type=int, default=100)
        sp.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    def show(p: LookupPoint) -> None:
        print(f"step {p.step:5d}  loss {p.loss:.3f}  accuracy {100 * p.accuracy:5.1f} %  {p.seconds:6.0f} s",
              flush=True)

    if args.setting == "text":
        text_probe(k=args.k, steps=args.steps, lr=args.lr, layers=args.layers, width=args.width,
                   tokenizer=args.tokenizer, every=args.every, seed=args.seed, report=show)
    else:
        image_probe(args.model, k=args.k, steps=args.steps, lr=args.lr, align_steps=args.align_steps,
                    freeze_vision=args.freeze_vision, every=args.every, image_size=args.image_size,
                    seed=args.seed, report=show)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
