"""One-token decode steps of a Qwen3-family text decoder without its module calls.

A GRPO rollout is many decode steps of a few rows: on a small model (and on a big one at
small batch) the step's time is transformers' Python, not arithmetic: every step calls the
decoder's ``forward`` (input checks, output capturing, mask creation), then per layer the
layer, attention, two norms, two head norms, seven projections and the MLP as modules,
and the ``DynamicCache`` concatenates each layer's keys and values. :class:`FastDecoder`
runs the same step as straight tensor code over the same weights: RoPE from the decoder's
own ``rotary_emb`` module (so every rope type and M-RoPE come out as transformers
computes them), the query heads packed per key/value head as ``sdpa_attention_forward``
packs a single query, and a preallocated key/value buffer written in place. In float32
without autocast (the CPU case) RMSNorm is one ``F.rms_norm``, RoPE one batched GEMM per
q and k (:func:`rope_matrices`) and attention two batched GEMMs: the same arithmetic,
hidden states within ~2e-6 of the modules'. With bf16/fp16 weights or under autocast
(the GPU case) the step is transformers' own operations and SDPA, bit for bit.

Scope, checked by :func:`fast_decoder` (which says why when it declines, so the caller
can log it and run the modules instead):

* decoders whose layers are ``Qwen3DecoderLayer`` or ``Qwen3VLTextDecoderLayer`` (the
  Qwen3 and Qwen3-VL language models; Qwen3.5's hybrid linear-attention layers are not);
* full attention only (no sliding window), any ``_attn_implementation``: the decode step
  computes the same attention (SDPA, or the two GEMMs above);
* no forward hooks on the decoder's modules (accelerate offload, FSDP);
* projections, norms and MLPs that are not the plain transformers / ``torch.nn`` classes
  (a peft LoRA layer, a quantised linear) are *called as modules*, so they keep their
  own forward: LoRA adapters, merged or not, enabled or not, act as in the modules.

The prefill (the prompt, many tokens) still runs through the decoder's ``forward``; its
``DynamicCache`` is copied into the buffer once.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

#: transformers' decoder-layer classes whose step this module reproduces.
SUPPORTED_LAYERS = ("Qwen3DecoderLayer", "Qwen3VLTextDecoderLayer")
_RMS_NORMS = ("Qwen3RMSNorm", "Qwen3VLTextRMSNorm")
_MLPS = ("Qwen3MLP", "Qwen3VLTextMLP")


def _text_model(decoder: Any) -> Any:
    """The module holding ``layers`` (Qwen3-VL's decoder keeps it as ``language_model``)."""
    return getattr(decoder, "language_model", decoder)


def _why_not(text: Any) -> str | None:
    layers = getattr(text, "layers", None)
    if layers is None or not len(layers):
        return f"{type(text).__name__} has no decoder layers"
    for name in ("embed_tokens", "norm", "rotary_emb"):
        if not hasattr(text, name):
            return f"{type(text).__name__} has no {name}"
    kinds = {type(layer).__name__ for layer in layers}
    if not kinds <= set(SUPPORTED_LAYERS):
        return f"layers {sorted(kinds - set(SUPPORTED_LAYERS))} (supported: {', '.join(SUPPORTED_LAYERS)})"
    for layer in layers:
        if getattr(layer.self_attn, "sliding_window", None):
            return "sliding-window attention"
    for m in text.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return f"forward hooks on {type(m).__name__}"
    return None


def fast_decoder(decoder: Any) -> tuple[FastDecoder | None, str]:
    """``(FastDecoder, "")`` for a supported decoder, else ``(None, reason)``."""
    text = _text_model(decoder)
    why = _why_not(text)
    if why is not None:
        return None, why
    return FastDecoder(text, vision=text is not decoder), ""


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # transformers' Qwen3RMSNorm (float32 statistics, then the weight in the input dtype).
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)  # one kernel; equal in float32
    h = x.to(torch.float32)
    return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _norm(m: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    if type(m).__name__ in _RMS_NORMS:
        w, eps = m.weight, m.variance_epsilon
        return lambda x: _rms(x, w, eps)
    return m


def _proj(m: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    if type(m) is torch.nn.Linear:
        w, b = m.weight, m.bias
        return lambda x: F.linear(x, w, b)
    return m  # LoRA, quantised...: its own forward


def rope_matrices(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as one matrix per row: ``x * cos + rotate_half(x) * sin == x @ M`` with
    ``M = diag(cos) + R diag(sin)``, R the signed half-swap (``rotate_half(x) = x @ R``).
    ``cos``/``sin``: (n, d); returns (n, d, d). One batched GEMM per q and k then applies
    the rotation (two non-zeros per column: the same two products as the elementwise
    form, summed in one order)."""
    n, d = cos.shape
    half = d // 2
    m = torch.diag_embed(cos)
    # rotate_half(x)[j] = -x[j + half] for j < half, x[j - half] for j >= half.
    idx = torch.arange(half, device=cos.device)
    m[:, idx + half, idx] = -sin[:, :half]
    m[:, idx, idx + half] = sin[:, half:]
    return m


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _Layer:
    __slots__ = ("ln1", "ln2", "q", "k", "v", "o", "qn", "kn", "mlp", "heads", "kv_heads", "head_dim", "scale")

    def __init__(self, layer: Any) -> None:
        attn = layer.self_attn
        self.ln1, self.ln2 = _norm(layer.input_layernorm), _norm(layer.post_attention_layernorm)
        self.q, self.k, self.v, self.o = (_proj(attn.q_proj), _proj(attn.k_proj), _proj(attn.v_proj),
                                          _proj(attn.o_proj))
        self.qn, self.kn = _norm(attn.q_norm), _norm(attn.k_norm)
        self.head_dim = attn.head_dim
        self.kv_heads = attn.config.num_key_value_heads
        self.heads = attn.config.num_attention_heads
        self.scale = attn.scaling
        mlp = layer.mlp
        if type(mlp).__name__ in _MLPS and isinstance(mlp.act_fn, torch.nn.SiLU):
            gate, up, down = _proj(mlp.gate_proj), _proj(mlp.up_proj), _proj(mlp.down_proj)
            self.mlp = lambda x: down(F.silu(gate(x)) * up(x))
        else:
            self.mlp = mlp


class FastDecoder:
    """Decode steps of a supported text decoder (see the module docstring) over a
    preallocated key/value buffer. Use: ``start`` with the prefill's cache, then
    ``step`` per token, ``select`` when rows leave the batch."""

    def __init__(self, text: Any, vision: bool) -> None:
        self.text = text
        self.vision = vision  # Qwen3-VL: M-RoPE takes (3, N, 1) position ids
        self.embed = text.embed_tokens
        self.norm = _norm(text.norm)
        self.rotary = text.rotary_emb
        self.layers = [_Layer(layer) for layer in text.layers]
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.length = 0

    def start(self, cache: Any, capacity: int, mask: torch.Tensor) -> None:
        """Copy the prefill's ``DynamicCache`` (N rows, L positions) into buffers of
        ``L + capacity`` positions; ``mask`` (N, L + capacity), nonzero where a row
        attends (its prompt's padding is 0)."""
        self.keys, self.values = [], []
        for i in range(len(self.layers)):
            k, v = cache.layers[i].keys, cache.layers[i].values
            n, h, length, d = k.shape
            # (rows * kv heads, positions, d): the batched GEMMs' layout, written in place.
            kb = k.new_empty(n * h, length + capacity, d)
            vb = v.new_empty(n * h, length + capacity, v.shape[-1])
            kb.view(n, h, -1, d)[:, :, :length] = k
            vb.view(n, h, -1, v.shape[-1])[:, :, :length] = v
            self.keys.append(kb)
            self.values.append(vb)
            self.length = length
        self._set_mask(mask)

    def _set_mask(self, mask: torch.Tensor) -> None:
        # Additive (rows * kv heads, 1, positions): 0 where attended, -inf at padding.
        self._mask = mask
        self._keep = mask.bool()[:, None, None, :]  # SDPA's padding mask (bf16/autocast path)
        h = self.layers[0].kv_heads
        add = torch.zeros(mask.shape, dtype=self.keys[0].dtype, device=mask.device).masked_fill_(mask == 0, float("-inf"))
        self._add = add.repeat_interleave(h, 0)[:, None, :]

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows ``keep`` (the cache's ``batch_select_indices``)."""
        h = self.layers[0].kv_heads
        rows = (keep[:, None] * h + torch.arange(h, device=keep.device)).reshape(-1)
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self._set_mask(self._mask[keep])

    def step(self, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """One token per row: ``tokens`` (n,), ``position`` (n, 1) its position ids.
        Returns the final-norm hidden state (n, H); the token's key and value are
        written at position ``length``, which then advances."""
        n = tokens.shape[0]
        x = self.embed(tokens[:, None])  # (n, 1, H)
        pos = position[None].expand(3, n, 1) if self.vision else position
        cos, sin = self.rotary(x, pos)  # (n, 1, d), as the decoder computes them
        # bf16/fp16 weights or autocast (the GPU case): transformers' own elementwise ops and
        # SDPA, so the roundings are its roundings.
        exact = x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type)
        if exact:
            cos, sin = cos[:, :1], sin[:, :1]  # (n, 1, d): broadcast over the heads
        else:
            rot = rope_matrices(cos[:, 0], sin[:, 0])  # (n, d, d)
        at = self.length
        end = at + 1
        add, keep = self._add[:, :, :end], self._keep[..., :end]  # views: no work per step
        for i, L in enumerate(self.layers):
            h = L.ln1(x)
            d, kvh = L.head_dim, L.kv_heads
            q = L.qn(L.q(h).view(n, -1, d))  # (n, heads, d)
            k = L.kn(L.k(h).view(n, -1, d))  # (n, kv heads, d)
            if exact:
                q = q * cos + _rotate_half(q) * sin
                k = k * cos + _rotate_half(k) * sin
            else:
                q, k = torch.bmm(q, rot), torch.bmm(k, rot)
            kb, vb = self.keys[i], self.values[i]
            kb[:, at] = k.reshape(n * kvh, d)
            vb[:, at] = L.v(h).view(n * kvh, -1)
            # One query row: the heads that share a key/value head are its rows, as
            # transformers' SDPA path packs a single query.
            qp = q.reshape(n * kvh, -1, d)
            if not exact:
                # Float32 (the CPU case): two batched GEMMs and a softmax, ~2x faster
                # than SDPA's CPU kernel at decode shapes.
                scores = torch.baddbmm(add, qp, kb[:, :end].transpose(1, 2), alpha=L.scale)
                o = torch.bmm(scores.softmax(-1), vb[:, :end])
            else:  # bf16/fp16: SDPA, which accumulates the scores in float32
                o = F.scaled_dot_product_attention(
                    qp.view(n, kvh, -1, d), kb.view(n, kvh, -1, d)[:, :, :end],
                    vb.view(n, kvh, -1, vb.shape[-1])[:, :, :end], attn_mask=keep, scale=L.scale)
            x = x + L.o(o.reshape(n, 1, L.heads * d))
            x = x + L.mlp(L.ln2(x))
        self.length = end
        return self.norm(x)[:, 0]
