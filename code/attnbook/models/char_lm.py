"""A tiny character-level Transformer language model, with the causal mask as a switch.

``TinyLM(..., causal=True)`` is an ordinary next-token model: position t attends to
positions <= t only. ``causal=False`` is the classic bug: the same model with full
self-attention, which can read the character it is asked to predict from its input.
Layout: ids ``(batch, seq)`` -> logits ``(batch, seq, vocab)``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..attention._checks import check_positive_int, check_rank
from ..attention.multihead import MultiHeadAttention

Tensor = torch.Tensor


# --8<-- [start:block]
class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, num_heads: int, causal: bool):
        super().__init__()
        self.causal = causal
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, num_heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: Tensor, need_weights: bool = False):
        attended, weights = self.attn(self.norm1(x), causal=self.causal, need_weights=need_weights)
        x = x + attended                      # the residual stream keeps each token's own state
        return x + self.mlp(self.norm2(x)), weights
# --8<-- [end:block]


# --8<-- [start:model]
class TinyLM(nn.Module):
    """Embeddings + learned positions + ``num_layers`` blocks + a linear read-out."""

    def __init__(self, vocab_size: int, *, d_model: int = 64, num_heads: int = 4, num_layers: int = 2,
                 max_len: int = 64, causal: bool = True):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("num_heads", num_heads),
                            ("num_layers", num_layers), ("max_len", max_len)):
            check_positive_int(name, value)
        self.max_len, self.causal = max_len, causal
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(max_len, d_model)   # without it, order would be invisible
        self.blocks = nn.ModuleList(Block(d_model, num_heads, causal) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, ids: Tensor, need_weights: bool = False):
        check_rank("ids", ids, 2, "(batch, seq)")
        if ids.shape[1] > self.max_len:
            raise ValueError(f"ids has {ids.shape[1]} positions, more than max_len={self.max_len}")
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.position(positions)       # (batch, seq, d_model)
        all_weights = []
        for block in self.blocks:
            x, weights = block(x, need_weights)
            all_weights.append(weights)                        # (batch, heads, seq, seq) or None
        logits = self.head(self.norm(x))                       # (batch, seq, vocab)
        return (logits, all_weights) if need_weights else logits
# --8<-- [end:model]


# --8<-- [start:generate]
@torch.no_grad()
def generate(model: TinyLM, prompt: Tensor, steps: int, generator: torch.Generator,
             temperature: float = 1.0) -> Tensor:
    """Append ``steps`` sampled ids to the 1-D ``prompt``, one at a time.

    Each step feeds the last ``max_len`` ids and samples from the prediction at the *last*
    position: the one place where no future character is in the input, for either model.
    """
    check_rank("prompt", prompt, 1, "(seq,)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    model.eval()
    device = next(model.parameters()).device
    ids = prompt.to(device)
    for _ in range(steps):
        logits = model(ids[-model.max_len:][None])[0, -1]       # (vocab,)
        probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
        next_id = torch.multinomial(probs, 1, generator=generator)
        ids = torch.cat([ids, next_id.to(device)])
    return ids
# --8<-- [end:generate]
