"""Embedding initialisation for an extended vocabulary.

:func:`extend_embeddings` resizes a model's input and output embeddings to an extended
tokenizer (tied or untied) and initialises each new row:

- ``"mean"``: the mean of the base rows that the new token's string tokenises to with the
  base tokenizer (input and output matrices each from their own base rows). A token whose
  bytes are not a whole UTF-8 string (a fragment of a character, possible for a merge of
  byte-level pieces) has no string; its pieces are the base token ids it was merged from,
  read from the extended tokenizer's merge list.
- ``"random"``: normal noise with the mean and standard deviation of the existing rows
  (per matrix), from a seeded generator.

With a bilingual lexicon (``translations``, from :func:`lexicon_translations`), a new
token that occurs in the Tibetan form of a lexicon entry starts instead from the base
rows of the entry's translation: the mean, over the entries it occurs in, of the mean of
the rows the translation tokenises to. This is the dictionary-based initialisation of
WECHSEL (Minixhofer et al., NAACL 2022) in its simplest form: a Tibetan word starts where
the model already keeps its meaning in the dominant language, rather than at the mean of
its UTF-8 byte pieces, which carry no meaning. Tokens no entry covers keep ``init``.

The matrix grows to the extended vocabulary (or stays, when the model already has spare
padding rows, as Qwen's 151,936-row embeddings do); a new id that falls on such a spare
row overwrites it. Rows past the extended vocabulary are left as
``resize_token_embeddings`` makes them. Base rows are never changed, so CPT can train only
the new rows, the embeddings, LoRA, or everything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from ftib.core.errors import ConfigError, FtibError
from ftib.models.vocab import to_bytes

log = logging.getLogger(__name__)

__all__ = ["extend_embeddings", "lexicon_translations", "new_token_pieces"]


def _backend(tok: Any):
    """The ``tokenizers.Tokenizer`` behind a transformers tokenizer (or itself)."""
    from tokenizers import Tokenizer

    if isinstance(tok, Tokenizer):
        return tok
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return backend
    raise FtibError(f"{type(tok).__name__} is not a fast (tokenizers-backed) tokenizer")


def new_token_pieces(base_tokenizer: Any, extended_tokenizer: Any) -> dict[int, list[int]]:
    """For each token of the extended tokenizer missing from the base: its base pieces.

    Returns:
        ``{new id: [base ids]}`` in id order.

    Raises:
        FtibError: the extended tokenizer is not an extension of the base (a shared token
            has another id).
    """
    base = _backend(base_tokenizer)
    ext = _backend(extended_tokenizer)
    base_vocab = base.get_vocab(with_added_tokens=True)
    ext_vocab = ext.get_vocab(with_added_tokens=True)
    moved = [t for t, i in base_vocab.items() if ext_vocab.get(t) != i]
    if moved:
        raise FtibError(
            f"the extended tokenizer is not an extension of the base: {len(moved)} base tokens "
            f"are missing or have other ids (first: {moved[0]!r})"
        )
    new = sorted((i, t) for t, i in ext_vocab.items() if t not in base_vocab)
    merges_by_result: dict[str, tuple[str, str]] = {}
    model = json.loads(ext.to_str())["model"]
    for m in model.get("merges", []):
        a, b = m.split(" ") if isinstance(m, str) else m
        merges_by_result.setdefault(a + b, (a, b))

    def expand(token: str) -> list[int]:
        if token in base_vocab:
            return [base_vocab[token]]
        if token not in merges_by_result:
            raise FtibError(f"new token {token!r} has no string and no merge to split it by")
        a, b = merges_by_result[token]
        return expand(a) + expand(b)

    out: dict[int, list[int]] = {}
    for idx, token in new:
        try:
            text = to_bytes(token).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            out[idx] = expand(token)
            continue
        ids = base.encode(text, add_special_tokens=False).ids
        if not ids:
            raise FtibError(f"new token {token!r} tokenises to nothing with the base tokenizer")
        out[idx] = ids
    return out


def lexicon_translations(base_tokenizer: Any, extended_tokenizer: Any, lexicon: Sequence[tuple[str, str]],
                         normalize: Any = None) -> dict[int, list[list[int]]]:
    """For each new token of ``extended_tokenizer`` that occurs in a lexicon entry's
    source form: the base-tokenizer ids of each such entry's translation.

    Args:
        lexicon: ``(source, translation)`` pairs, e.g. (``"ཉ"``, ``"鱼"``). A source form is
            tokenised as in running text, with and without a trailing tsheg.
        normalize: applied to each source form first (CPT's Tibetan normalisation).

    Returns:
        ``{new id: [[base ids of a translation], ...]}`` in id order.
    """
    base = _backend(base_tokenizer)
    ext = _backend(extended_tokenizer)
    base_size = base.get_vocab_size(with_added_tokens=True)
    found: dict[int, list[list[int]]] = {}
    unused: list[str] = []
    for src, tgt in lexicon:
        target = base.encode(tgt, add_special_tokens=False).ids
        if not target:
            unused.append(f"{src!r} -> {tgt!r}")
            continue
        form = normalize(src) if normalize is not None else src
        ids = {i for text in (form, form + "\u0f0b") for i in ext.encode(text, add_special_tokens=False).ids}
        for i in sorted(ids):
            if i >= base_size:
                found.setdefault(i, []).append(target)
    if unused:
        log.warning("lexicon: %d of %d entries skipped, their translation tokenises to nothing: %s",
                    len(unused), len(lexicon), "; ".join(unused[:5]) + (" ..." if len(unused) > 5 else ""))
    return dict(sorted(found.items()))


@torch.no_grad()
def extend_embeddings(model: torch.nn.Module, base_tokenizer: Any, extended_tokenizer: Any,
                      init: Literal["mean", "random"] = "mean", *, pad_to_multiple_of: int | None = None,
                      seed: int = 0, translations: Mapping[int, Sequence[Sequence[int]]] | None = None
                      ) -> dict[int, list[int]]:
    """Resize ``model``'s embeddings to ``extended_tokenizer`` and initialise the new rows.

    Args:
        model: a ``transformers`` model (``get_input_embeddings``/``resize_token_embeddings``).
        base_tokenizer: the tokenizer the model was trained with.
        extended_tokenizer: its extension (same ids for every base token).
        init: ``"mean"`` (mean of the base pieces' rows) or ``"random"``.
        pad_to_multiple_of: pad the matrix rows to a multiple of this.
        seed: seed of ``"random"``.
        translations: ``{new id: [[base ids], ...]}`` (:func:`lexicon_translations`): those
            rows start from the mean of their translations' base rows instead.

    Returns:
        ``{new id: [base piece ids]}``, the pieces each new row was averaged from.

    Raises:
        ConfigError: unknown ``init``.
        FtibError: the tokenizers do not match each other or the model.
    """
    if init not in ("mean", "random"):
        raise ConfigError(f"init must be 'mean' or 'random', got {init!r}")
    pieces = new_token_pieces(base_tokenizer, extended_tokenizer)
    emb_in = model.get_input_embeddings().weight
    old_rows = emb_in.shape[0]
    base_size = _backend(base_tokenizer).get_vocab_size(with_added_tokens=True)
    if base_size > old_rows:
        raise FtibError(f"the base tokenizer has {base_size} tokens but the model only "
                        f"{old_rows} embedding rows: not this model's tokenizer")
    ext_size = _backend(extended_tokenizer).get_vocab_size(with_added_tokens=True)
    out_emb = model.get_output_embeddings()
    tied = out_emb is not None and out_emb.weight is emb_in
    src_in = emb_in.detach().clone()
    src_out = None if out_emb is None or tied else out_emb.weight.detach().clone()
    new_rows = max(old_rows, ext_size)
    model.resize_token_embeddings(new_rows, pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
    targets = [(model.get_input_embeddings().weight, src_in)]
    if src_out is not None:
        targets.append((model.get_output_embeddings().weight, src_out))
    ids = sorted(pieces)
    gen = torch.Generator().manual_seed(seed)
    for weight, src in targets:
        if init == "mean":
            rows = torch.stack([src[pieces[i]].float().mean(0) for i in ids])
        else:
            base_rows = src[:base_size].float()
            rows = torch.randn((len(ids), src.shape[1]), generator=gen) * base_rows.std() + base_rows.mean()
        weight[torch.tensor(ids, dtype=torch.long)] = rows.to(weight.dtype).to(weight.device)
        for i, targets_of_i in (translations or {}).items():
            if i not in pieces:
                raise FtibError(f"translations: id {i} is not a new token of the extended tokenizer")
            row = torch.stack([src[list(t)].float().mean(0) for t in targets_of_i]).mean(0)
            weight[i] = row.to(weight.dtype).to(weight.device)
    log.info("extended embeddings %d -> %d rows (%d new tokens, init=%s%s, %s)", old_rows,
             model.get_input_embeddings().weight.shape[0], len(ids), init,
             f", {len(translations)} from the lexicon" if translations else "", "tied" if tied else "untied")
    return pieces
