"""A small Transformer encoder that classifies a sequence from its ``[CLS]`` token.

Pre-LN blocks (x + Attn(LN(x)), then x + FFN(LN(x))) with the attention written out, so
that chapter 23 can read every weight and also *replace* weights: the last layer's
attention can be frozen to uniform (Wiegreffe & Pinter's baseline) and the ``[CLS]``
query's row of the last layer can be overridden (Jain & Wallace's swapped attention).
Only the ``[CLS]`` row of the last layer reaches the output: the other positions of the
last layer feed nothing.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..attention._checks import check_divisible, check_positive_int, check_rank

Tensor = torch.Tensor


# --8<-- [start:block]
class ClassifierBlock(nn.Module):
    """One pre-LN encoder block with explicit attention weights (batch, heads, T, T)."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, *, uniform: bool = False):
        super().__init__()
        check_divisible("d_model", d_model, "num_heads", num_heads)
        self.num_heads, self.uniform = num_heads, uniform
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, x: Tensor, cls_attention: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch, seq, d_model = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (t.view(batch, seq, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))
        if self.uniform:  # frozen: every query spreads its weight evenly over all keys
            weights = torch.full((batch, self.num_heads, seq, seq), 1.0 / seq, device=x.device, dtype=x.dtype)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (batch, heads, T, T)
            weights = scores.softmax(dim=-1)
        if cls_attention is not None:  # (batch, heads, T): replace the [CLS] query's row
            weights = torch.cat([cls_attention[:, :, None, :], weights[:, :, 1:]], dim=2)
        attended = (weights @ v).transpose(1, 2).reshape(batch, seq, d_model)
        x = x + self.out(attended)
        return x + self.ff(self.norm2(x)), weights
# --8<-- [end:block]


# --8<-- [start:classifier]
class EvidenceClassifier(nn.Module):
    """Token + learned position embeddings, ``num_layers`` blocks, a linear head on [CLS].

    forward(tokens (batch, T)) -> logits (batch, num_classes). Pass ``embeddings``
    (batch, T, d_model) instead of tokens to differentiate with respect to the token
    embeddings (positions are added inside). ``cls_attention`` (batch, heads, T)
    replaces the [CLS] row of the last layer. ``return_weights=True`` also returns the
    list of every layer's weights, bottom first.
    """

    def __init__(self, vocab_size: int, num_classes: int, *, max_len: int, d_model: int = 32,
                 num_heads: int = 2, num_layers: int = 2, d_ff: int = 64, uniform_last: bool = False):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("num_classes", num_classes),
                            ("max_len", max_len), ("num_layers", num_layers)):
            check_positive_int(name, value)
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(
            ClassifierBlock(d_model, num_heads, d_ff, uniform=uniform_last and i == num_layers - 1)
            for i in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def embed(self, tokens: Tensor) -> Tensor:
        """Token embeddings only, (batch, T, d_model): what gradient attributions perturb."""
        return self.token_embedding(tokens)

    def forward(self, tokens: Tensor | None = None, *, embeddings: Tensor | None = None,
                cls_attention: Tensor | None = None, return_weights: bool = False):
        if (tokens is None) == (embeddings is None):
            raise ValueError("pass exactly one of tokens (batch, T) or embeddings (batch, T, d_model)")
        x = self.embed(check_rank("tokens", tokens, 2, "(batch, T)")) if embeddings is None else embeddings
        if x.shape[1] > self.position_embedding.num_embeddings:
            raise ValueError(f"sequence of {x.shape[1]} tokens is longer than max_len="
                             f"{self.position_embedding.num_embeddings}")
        x = x + self.position_embedding(torch.arange(x.shape[1], device=x.device))
        all_weights = []
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x, weights = block(x, cls_attention if last else None)
            all_weights.append(weights)
        logits = self.head(self.norm(x[:, 0]))  # the [CLS] position
        return (logits, all_weights) if return_weights else logits
# --8<-- [end:classifier]
