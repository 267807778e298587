"""Multi-head attention: self and cross, batched over heads, with grouped kv heads.

The functional core (``split_heads``, ``merge_heads``, ``multi_head_attention``) follows
``torch.nn.functional.multi_head_attention_forward``: one packed input projection
``in_proj_weight`` of shape ``((heads + 2 * kv_heads) * head_dim, d_model)`` holding
W_Q, W_K and W_V stacked, and an output projection W_O. ``MultiHeadAttention`` is a
thin ``nn.Module`` that owns those weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._checks import check_divisible, check_key_padding_mask, check_positive_int, check_rank
from .dot_product import scaled_dot_product_attention, sdpa
from .masks import combine_masks, key_padding_to_attn_mask

Tensor = torch.Tensor


# --8<-- [start:heads]
def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(batch, seq, heads * head_dim) -> (batch, heads, seq, head_dim)."""
    return rearrange(x, "b s (h d) -> b h s d", h=num_heads)


def merge_heads(x: Tensor) -> Tensor:
    """(batch, heads, seq, head_dim) -> (batch, seq, heads * head_dim).

    The heads of one token must end up side by side, so the head axis moves next to
    head_dim *before* the reshape. Reshaping (heads, seq) directly would interleave
    different tokens' heads: a classic bug that a per-head loop test catches.
    """
    return rearrange(x, "b h s d -> b s (h d)")
# --8<-- [end:heads]


# --8<-- [start:project]
def project_heads(x, memory, in_proj_weight, in_proj_bias, num_heads, num_kv_heads):
    """Q from ``x`` and K, V from ``memory`` (x itself for self-attention), split into heads.

    ``in_proj_weight`` stacks W_Q (num_heads * head_dim rows) over W_K and W_V
    (num_kv_heads * head_dim rows each). Returns q (batch, heads, q_len, head_dim) and
    k, v (batch, kv_heads, k_len, head_dim).
    """
    head_dim = in_proj_weight.shape[0] // (num_heads + 2 * num_kv_heads)
    q_dim = num_heads * head_dim
    if memory is None:  # self-attention: one fused matmul for Q, K and V
        qkv = F.linear(x, in_proj_weight, in_proj_bias)
        q, kv = qkv[..., :q_dim], qkv[..., q_dim:]
    else:  # cross-attention: W_Q's rows act on x, the rest on memory
        b_q, b_kv = (None, None) if in_proj_bias is None else (in_proj_bias[:q_dim], in_proj_bias[q_dim:])
        q, kv = F.linear(x, in_proj_weight[:q_dim], b_q), F.linear(memory, in_proj_weight[q_dim:], b_kv)
    k, v = kv.chunk(2, dim=-1)
    return split_heads(q, num_heads), split_heads(k, num_kv_heads), split_heads(v, num_kv_heads)
# --8<-- [end:project]


# --8<-- [start:functional]
def multi_head_attention(
    x: Tensor,
    memory: Tensor | None,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    num_heads: int,
    num_kv_heads: int | None = None,
    *,
    key_padding_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    causal: bool = False,
    need_weights: bool = False,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor | None]:
    """Multi-head attention of ``x`` (batch, q_len, d_model) over ``memory``.

    memory: (batch, k_len, d_model), or None for self-attention (memory = x).
    key_padding_mask: (batch, k_len), True = real key. attn_mask: boolean, True = may
    attend, broadcastable to (batch, heads, q_len, k_len). Returns the output
    (batch, q_len, d_model) and, if ``need_weights``, the per-head attention
    weights (batch, heads, q_len, k_len); otherwise the fused SDPA kernel runs.
    """
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    # q: (batch, heads, q_len, head_dim); k, v: (batch, kv_heads, k_len, head_dim)
    q, k, v = project_heads(x, memory, in_proj_weight, in_proj_bias, num_heads, num_kv_heads)
    mask = attn_mask
    if key_padding_mask is not None:
        mask = combine_masks(mask, key_padding_to_attn_mask(key_padding_mask))
    if need_weights:
        out, weights = scaled_dot_product_attention(q, k, v, mask, causal=causal, dropout_p=dropout_p,
                                                    return_weights=True)
    else:
        out, weights = sdpa(q, k, v, mask, causal=causal, dropout_p=dropout_p), None
    return F.linear(merge_heads(out), out_proj_weight, out_proj_bias), weights
# --8<-- [end:functional]


# --8<-- [start:loop]
def multi_head_attention_loop(x, memory, in_proj_weight, in_proj_bias, out_proj_weight,
                              out_proj_bias, num_heads, *, attn_mask=None, causal=False):
    """The same computation one head at a time: the definition, written as a loop.

    Head i projects with its own slice of W_Q, W_K, W_V, attends, and the heads'
    outputs are concatenated along features before W_O. It pays the per-call overhead
    h times (the chapter measures when that matters); it is the equation, and the
    batched version is tested equal to it.
    """
    memory = x if memory is None else memory
    head_dim = out_proj_weight.shape[1] // num_heads
    w_q, w_k, w_v = in_proj_weight.split(num_heads * head_dim)
    b_q, b_k, b_v = (None,) * 3 if in_proj_bias is None else in_proj_bias.split(num_heads * head_dim)
    heads = []
    for i in range(num_heads):
        rows = slice(i * head_dim, (i + 1) * head_dim)
        q = F.linear(x, w_q[rows], None if b_q is None else b_q[rows])        # (batch, q_len, head_dim)
        k = F.linear(memory, w_k[rows], None if b_k is None else b_k[rows])   # (batch, k_len, head_dim)
        v = F.linear(memory, w_v[rows], None if b_v is None else b_v[rows])
        out = scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], attn_mask, causal=causal)
        heads.append(out[:, 0])
    return F.linear(torch.cat(heads, dim=-1), out_proj_weight, out_proj_bias)
# --8<-- [end:loop]


# --8<-- [start:module]
class MultiHeadAttention(nn.Module):
    """Multi-head (and grouped-query) attention; self-attention or cross-attention.

    ``num_kv_heads`` < ``num_heads`` shares each key/value head among
    ``num_heads // num_kv_heads`` query heads (GQA; 1 gives multi-query attention).
    """

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int | None = None,
                 *, bias: bool = True, dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("num_heads", num_heads)
        check_divisible("d_model", d_model, "num_heads", num_heads)
        num_kv_heads = num_heads if num_kv_heads is None else check_positive_int("num_kv_heads", num_kv_heads)
        check_divisible("num_heads", num_heads, "num_kv_heads", num_kv_heads)
        self.d_model, self.num_heads, self.num_kv_heads = d_model, num_heads, num_kv_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        factory = {"device": device, "dtype": dtype}
        qkv_dim = (num_heads + 2 * num_kv_heads) * self.head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(qkv_dim, d_model, **factory))
        self.in_proj_bias = nn.Parameter(torch.zeros(qkv_dim, **factory)) if bias else None
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        if self.out_proj.bias is not None:
            nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, memory: Tensor | None = None, *, key_padding_mask=None,
                attn_mask=None, causal: bool = False, need_weights: bool = False):
        check_rank("x", x, 3, "(batch, seq, d_model)")
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x has {x.shape[-1]} features, expected d_model={self.d_model} (shape {tuple(x.shape)})")
        if memory is not None:
            check_rank("memory", memory, 3, "(batch, seq, d_model)")
            if memory.shape[-1] != self.d_model or memory.shape[0] != x.shape[0]:
                raise ValueError(f"memory {tuple(memory.shape)} must be (batch={x.shape[0]}, k_len, d_model={self.d_model})")
        k_len = x.shape[1] if memory is None else memory.shape[1]
        check_key_padding_mask(key_padding_mask, x.shape[0], k_len)
        return multi_head_attention(
            x, memory, self.in_proj_weight, self.in_proj_bias, self.out_proj.weight, self.out_proj.bias,
            self.num_heads, self.num_kv_heads, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
            causal=causal, need_weights=need_weights, dropout_p=self.dropout if self.training else 0.0,
        )
# --8<-- [end:module]

