"""One small causal character language model, six ways to tell it where tokens are.

``PositionLM(vocab, method=...)`` is the same pre-norm Transformer for every method; only
where position enters changes:

* ``"sinusoidal"``, ``"learned"``: a vector added to the token embeddings (absolute);
* ``"rope"``: queries and keys rotated by their positions, in every layer;
* ``"t5"``: a learned scalar bias per (head, distance bucket), shared by all layers;
* ``"alibi"``: a fixed bias m_h·(j - i) per head, in every layer;
* ``"none"`` (NoPE): nothing. Only the causal mask breaks the symmetry between positions.

Layout: ids ``(batch, seq)`` -> logits ``(batch, seq, vocab)``; attention is causal.
"""
from __future__ import annotations

import torch
from torch import nn

from ..attention._checks import check_divisible, check_positive_int, check_rank
from ..attention.positional import (
    LearnedPositionalEmbedding,
    T5RelativePositionBias,
    alibi_bias,
    apply_rope,
    attention_with_bias,
    sinusoidal_encoding,
)

Tensor = torch.Tensor
METHODS = ("sinusoidal", "learned", "rope", "t5", "alibi", "none")


# --8<-- [start:attention]
class PositionAttention(nn.Module):
    """Causal multi-head self-attention that applies RoPE (if asked) and adds a score bias."""

    def __init__(self, d_model: int, num_heads: int, *, rope: bool, rope_layout: str = "half_split"):
        super().__init__()
        self.num_heads, self.rope, self.rope_layout = num_heads, rope, rope_layout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, bias: Tensor | None, rope_scale: float = 1.0) -> Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        if self.rope:                     # rotate q and k, never v: (batch, heads, seq, head_dim)
            q = apply_rope(q, layout=self.rope_layout, position_scale=rope_scale)
            k = apply_rope(k, layout=self.rope_layout, position_scale=rope_scale)
        out = attention_with_bias(q, k, v, bias, causal=True)
        return self.out(out.transpose(1, 2).flatten(2))          # (batch, seq, d_model)
# --8<-- [end:attention]


class PositionBlock(nn.Module):
    """Pre-norm block: x + attn(LN(x), bias), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, num_heads: int, rope: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = PositionAttention(d_model, num_heads, rope=rope)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: Tensor, bias: Tensor | None, rope_scale: float = 1.0) -> Tensor:
        x = x + self.attn(self.norm1(x), bias, rope_scale)
        return x + self.mlp(self.norm2(x))


# --8<-- [start:model]
class PositionLM(nn.Module):
    """Token embeddings + ``num_layers`` causal blocks + read-out, with ``method`` for positions.

    ``train_len`` is the context it is trained at: the size of the learned table, and the
    ``max_distance`` of the T5 buckets (the last bucket starts a little before it: see
    ``t5_relative_position_bucket``).
    """

    def __init__(self, vocab_size: int, method: str, *, train_len: int, d_model: int = 64,
                 num_heads: int = 4, num_layers: int = 2, t5_buckets: int = 16):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        for name, value in (("vocab_size", vocab_size), ("train_len", train_len), ("d_model", d_model),
                            ("num_heads", num_heads), ("num_layers", num_layers)):
            check_positive_int(name, value)
        check_divisible("d_model", d_model, "num_heads", num_heads)
        self.method, self.train_len, self.num_heads = method, train_len, num_heads
        self.embed = nn.Embedding(vocab_size, d_model)
        self.learned = LearnedPositionalEmbedding(train_len, d_model) if method == "learned" else None
        self.t5 = (T5RelativePositionBias(num_heads, num_buckets=t5_buckets, max_distance=train_len,
                                          bidirectional=False) if method == "t5" else None)
        self.blocks = nn.ModuleList(PositionBlock(d_model, num_heads, rope=method == "rope")
                                    for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, ids: Tensor, *, rope_scale: float = 1.0, clamp_positions: bool = False) -> Tensor:
        """Logits (batch, seq, vocab). ``rope_scale`` < 1: position interpolation (RoPE only).

        A learned table has no row for positions >= train_len: it raises, unless
        ``clamp_positions`` reuses the last row for all of them (to show what goes wrong).
        """
        check_rank("ids", ids, 2, "(batch, seq)")
        if rope_scale != 1.0 and self.method != "rope":
            raise ValueError(f"rope_scale={rope_scale} only applies to method='rope', not {self.method!r}")
        seq = ids.shape[1]
        x = self.embed(ids)                                         # (batch, seq, d_model)
        if self.method == "sinusoidal":
            x = x + sinusoidal_encoding(seq, x.shape[-1], dtype=x.dtype, device=x.device)
        elif self.method == "learned":
            if clamp_positions and seq > self.train_len:
                positions = torch.arange(seq, device=ids.device).clamp(max=self.train_len - 1)
                x = x + self.learned.table(positions)
            else:
                x = self.learned(x)                                 # raises beyond train_len
        bias = None                                                 # (1 or heads, seq, seq)
        if self.method == "t5":
            bias = self.t5(seq)
        elif self.method == "alibi":
            bias = alibi_bias(self.num_heads, seq, dtype=x.dtype, device=x.device)
        for block in self.blocks:
            x = block(x, bias, rope_scale)
        return self.head(self.norm(x))
# --8<-- [end:model]
