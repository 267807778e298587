"""Scaled dot-product attention, written out and through ``torch``'s fused kernel.

Shapes: ``q`` is ``(batch, heads, q_len, head_dim)``; ``k`` and ``v`` are
``(batch, kv_heads, k_len, head_dim)`` where ``heads`` is a multiple of ``kv_heads``
(grouped-query attention; equal for ordinary multi-head attention). Masks are boolean,
**True = may attend**, and broadcast to ``(batch, heads, q_len, k_len)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import check_mask, check_qkv
from .masks import causal_mask, combine_masks

Tensor = torch.Tensor


def repeat_kv(x: Tensor, num_heads: int) -> Tensor:
    """Repeat each of ``x``'s kv heads so that it serves ``num_heads // kv_heads`` query heads.

    ``(batch, kv_heads, seq, head_dim) -> (batch, num_heads, seq, head_dim)``; query head
    ``h`` uses kv head ``h // (num_heads // kv_heads)``, as in Llama and SDPA's ``enable_gqa``.
    """
    kv_heads = x.shape[1]
    if kv_heads == num_heads:
        return x
    return x.repeat_interleave(num_heads // kv_heads, dim=1)


# --8<-- [start:softmax]
def stable_softmax(scores: Tensor, dim: int = -1) -> Tensor:
    """softmax(s)_j = exp(s_j - max s) / sum_i exp(s_i - max s).

    Subtracting the row maximum changes nothing mathematically (it cancels between
    numerator and denominator) but keeps every exponent <= 0, so nothing overflows.
    Rows that are entirely -inf (a query that may attend nothing) give all zeros.
    """
    row_max = scores.amax(dim=dim, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exps = torch.exp(scores - row_max)
    total = exps.sum(dim=dim, keepdim=True)
    return exps / torch.where(total > 0, total, torch.ones_like(total))
# --8<-- [end:softmax]


def attention_dropout(weights: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Zero each weight with probability ``p`` and scale the survivors by 1/(1 - p), so the
    expected output is unchanged; ``p = 0`` returns ``weights`` itself. The caller keeps the
    undropped ``weights`` for anything that reads them."""
    if p <= 0.0:
        return weights
    keep = torch.rand(weights.shape, generator=generator, device=weights.device) >= p
    return weights * keep / (1.0 - p)


# --8<-- [start:full-mask]
def full_mask(q: Tensor, k: Tensor, mask: Tensor | None, causal: bool) -> Tensor | None:
    """Check ``mask`` against q and k and AND it with the causal mask when ``causal``.

    ``mask`` must be boolean (True = may attend) and broadcast to
    ``(batch, heads, q_len, k_len)``; the causal mask is bottom-right aligned
    (``causal_mask``). Returns None when there is no mask and ``causal`` is False.
    """
    target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    mask = check_mask("mask", mask, target)
    if causal:
        mask = combine_masks(mask, causal_mask(q.shape[2], k.shape[2], device=q.device))
    return mask
# --8<-- [end:full-mask]


# --8<-- [start:sdpa]
def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
    generator: torch.Generator | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(Q Kᵀ / √d_k) V, written out. Returns the output (batch, heads, q_len, d_v),
    or ``(output, weights)`` with ``return_weights=True``.

    q: (batch, heads, q_len, d_k); k: (batch, kv_heads, k_len, d_k);
    v: (batch, kv_heads, k_len, d_v); mask: boolean, True = may attend, broadcastable
    to (batch, heads, q_len, k_len); causal: also hide keys after each query
    (bottom-right aligned, see ``causal_mask``). ``weights`` are the probabilities
    *before* dropout, so their rows always sum to 1 (or 0 for a fully masked query);
    weights: (batch, heads, q_len, k_len).
    """
    num_heads, _ = check_qkv(q, k, v)
    k, v = repeat_kv(k, num_heads), repeat_kv(v, num_heads)
    mask = full_mask(q, k, mask, causal)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale

    scores = (q @ k.transpose(-2, -1)) * scale  # (batch, heads, q_len, k_len)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = stable_softmax(scores, dim=-1)
    attended = attention_dropout(weights, dropout_p, generator)
    out = attended @ v  # (batch, heads, q_len, d_v)
    return (out, weights) if return_weights else out
# --8<-- [end:sdpa]


# --8<-- [start:fast]
def sdpa(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """The same attention through ``torch.nn.functional.scaled_dot_product_attention``.

    Same arguments and conventions as ``scaled_dot_product_attention`` but returns only
    the output: the fused kernels never materialise the weights. Grouped kv heads are
    passed with ``enable_gqa``. With ``causal=True`` the bottom-right causal mask is
    built here and ANDed with ``mask`` whenever a mask is given or ``q_len != k_len``
    (``is_causal`` aligns top-left and cannot be combined with ``attn_mask``); only
    ``causal=True`` with no mask and ``q_len == k_len``, where the two alignments agree,
    is passed on as ``is_causal=True``.
    """
    num_heads, num_kv_heads = check_qkv(q, k, v)
    if causal and (mask is not None or q.shape[2] != k.shape[2]):
        mask, causal = full_mask(q, k, mask, causal), False
    else:
        mask = full_mask(q, k, mask, False)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=scale, dropout_p=dropout_p,
        enable_gqa=num_heads != num_kv_heads,
    )
# --8<-- [end:fast]
