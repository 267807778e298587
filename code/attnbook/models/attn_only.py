"""A small attention-only transformer: the model in which induction heads were first studied.

Elhage et al. (2021) and Olsson et al. (2022) strip a decoder-only transformer down to
token embeddings, position embeddings, a few layers of causal multi-head self-attention
(no feed-forward blocks) and an unembedding. Every layer adds its heads' outputs to the
residual stream, so each head can be read on its own. Two layers are enough for an
*induction head*: a head in layer 1 that, at a repeated token, attends to the token that
followed the same token earlier, helped by a *previous-token head* in layer 0.

Layout: tokens ``(batch, seq)`` -> logits ``(batch, seq, vocab)``; attention weights
``(layers, batch, heads, seq, seq)``; boolean masks True = may attend.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attention._checks import check_positive_int
from ..attention.dot_product import scaled_dot_product_attention

Tensor = torch.Tensor


@dataclass
class AttnOnlyConfig:
    """Sizes of an attention-only transformer; ``d_model`` must be divisible by ``num_heads``."""

    vocab_size: int
    max_len: int = 64
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2

    def __post_init__(self):
        for name in ("vocab_size", "max_len", "d_model", "num_heads", "num_layers"):
            check_positive_int(name, getattr(self, name))
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")


# --8<-- [start:layer]
def causal_self_attention_layer(x: Tensor, w_qkv: Tensor, w_out: Tensor, num_heads: int,
                                *, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """One layer of causal multi-head self-attention, written out.

    x: (batch, seq, d_model); w_qkv: (3 * d_model, d_model), the stacked W_Q, W_K, W_V
    (as ``nn.Linear`` stores them: out x in); w_out: (d_model, d_model). Returns the
    layer's output (batch, seq, d_model), or ``(output, weights)`` with weights
    (batch, heads, seq, seq), rows summing to 1 over keys j <= i.
    """
    batch, seq, d_model = x.shape
    if d_model % num_heads:
        raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
    q, k, v = F.linear(x, w_qkv).chunk(3, dim=-1)            # 3 x (batch, seq, d_model)
    # (batch, seq, d_model) -> (batch, heads, seq, head_dim)
    q, k, v = (t.view(batch, seq, num_heads, d_model // num_heads).transpose(1, 2) for t in (q, k, v))
    out, weights = scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)
    out = out.transpose(1, 2).reshape(batch, seq, d_model)   # concatenate the heads
    out = F.linear(out, w_out)
    return (out, weights) if return_weights else out
# --8<-- [end:layer]


# --8<-- [start:model]
class AttnOnlyTransformer(nn.Module):
    """Embeddings -> ``num_layers`` x (x + attention(LayerNorm(x))) -> LayerNorm -> logits.

    No feed-forward blocks, no dropout: every change to the residual stream comes from an
    attention head. ``forward(tokens, return_weights=True)`` also returns the attention
    weights of every layer, (layers, batch, heads, seq, seq).
    """

    def __init__(self, config: AttnOnlyConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        self.position_embedding = nn.Embedding(config.max_len, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(config.num_layers))
        self.qkv = nn.ModuleList(nn.Linear(d, 3 * d, bias=False) for _ in range(config.num_layers))
        self.out = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(d)
        self.unembed = nn.Linear(d, config.vocab_size, bias=False)
        for module in self.modules():   # GPT-2's initialisation: N(0, 0.02)
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: Tensor, *, return_weights: bool = False):
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (batch, seq), got shape {tuple(tokens.shape)}")
        seq = tokens.shape[1]
        if seq > self.config.max_len:
            raise ValueError(f"sequence length {seq} exceeds max_len={self.config.max_len}")
        positions = torch.arange(seq, device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)  # (batch, seq, d_model)
        all_weights = []
        for norm, qkv, out in zip(self.norms, self.qkv, self.out):
            update, weights = causal_self_attention_layer(norm(x), qkv.weight, out.weight,
                                                          self.config.num_heads, return_weights=True)
            x = x + update                                  # heads write into the residual stream
            all_weights.append(weights)
        logits = self.unembed(self.final_norm(x))           # (batch, seq, vocab)
        return (logits, torch.stack(all_weights)) if return_weights else logits

    def queries_keys(self, tokens: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """The queries and keys of ``layer`` for ``tokens``: two (batch, heads, seq, head_dim)."""
        if not 0 <= layer < self.config.num_layers:
            raise ValueError(f"layer must be in [0, {self.config.num_layers}), got {layer}")
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        for i in range(layer):
            x = x + causal_self_attention_layer(self.norms[i](x), self.qkv[i].weight,
                                                self.out[i].weight, self.config.num_heads)
        batch, seq, d = x.shape
        q, k, _ = F.linear(self.norms[layer](x), self.qkv[layer].weight).chunk(3, dim=-1)
        heads = self.config.num_heads
        return tuple(t.view(batch, seq, heads, d // heads).transpose(1, 2) for t in (q, k))
# --8<-- [end:model]
