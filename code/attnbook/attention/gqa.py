"""Multi-query and grouped-query attention (Shazeer 2019, arXiv:1911.02150;
Ainslie et al. 2023, arXiv:2305.13245).

With ``num_heads`` query heads and ``G`` key/value heads, query head ``h`` attends with
kv head ``g(h) = h // (num_heads // G)``. ``G = num_heads`` is ordinary multi-head
attention, ``G = 1`` is multi-query attention; the KV cache shrinks by
``num_heads / G``. ``MultiHeadAttention(num_kv_heads=G)`` already computes this; this
module holds the pieces the chapter discusses: the grouping written out without copying
kv heads, and the conversion of a multi-head checkpoint by mean-pooling its K and V
projection heads within each group (Ainslie et al., §2.1 for a single head, §2.2 for groups).
Shapes follow the book:
q ``(batch, heads, q_len, head_dim)``, k and v ``(batch, kv_heads, k_len, head_dim)``;
masks are boolean, True = may attend.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from ._checks import check_divisible, check_mask, check_positive_int, check_qkv
from .dot_product import repeat_kv, stable_softmax
from .masks import causal_mask, combine_masks
from .multihead import MultiHeadAttention

Tensor = torch.Tensor


# --8<-- [start:grouped]
def grouped_query_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *,
    causal: bool = False, scale: float | None = None, return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(Q Kᵀ/√d) V where each group of query heads shares one kv head. Returns the
    output (batch, heads, q_len, head_dim), or ``(output, weights (batch, heads, q_len, k_len))``
    with ``return_weights=True``.

    Instead of copying each kv head (``repeat_kv``), the query heads are viewed as
    (groups, heads_per_group) and each group meets its own kv head in one einsum.
    """
    num_heads, num_kv_heads = check_qkv(q, k, v)
    mask = check_mask("mask", mask, (q.shape[0], num_heads, q.shape[2], k.shape[2]))
    if causal:  # bottom-right aligned, as everywhere in the book
        mask = combine_masks(mask, causal_mask(q.shape[2], k.shape[2], device=q.device))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q = rearrange(q, "b (g r) s d -> b g r s d", g=num_kv_heads)  # r = heads per group
    scores = torch.einsum("bgrsd,bgtd->bgrst", q, k) * scale      # (batch, G, r, q_len, k_len)
    if mask is not None:
        mask = mask.expand(q.shape[0], num_heads, *mask.shape[-2:])
        mask = rearrange(mask, "b (g r) s t -> b g r s t", g=num_kv_heads)
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = stable_softmax(scores, dim=-1)
    out = torch.einsum("bgrst,bgtd->bgrsd", weights, v)           # (batch, G, r, q_len, head_dim)
    flat = "b g r s x -> b (g r) s x"
    out = rearrange(out, flat)
    return (out, rearrange(weights, flat)) if return_weights else out
# --8<-- [end:grouped]


# --8<-- [start:repeat_vs_enable_gqa]
def repeat_kv_vs_enable_gqa(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False) -> float:
    """Largest absolute difference between two ways of running GQA through torch:
    copying kv heads with ``repeat_kv``, and SDPA's ``enable_gqa=True`` (no copy).
    (``is_causal`` is torch's top-left mask; both paths use the same one.)"""
    num_heads, _ = check_qkv(q, k, v)
    k_copies, v_copies = repeat_kv(k, num_heads), repeat_kv(v, num_heads)  # (b, heads, k_len, d)
    copied = F.scaled_dot_product_attention(q, k_copies, v_copies, is_causal=causal)
    shared = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    return (copied - shared).abs().max().item()
# --8<-- [end:repeat_vs_enable_gqa]


# --8<-- [start:mean_pool]
def mean_pool_kv_heads(weight: Tensor, num_heads: int, num_groups: int) -> Tensor:
    """Average the per-head rows of a K or V projection within each group.

    weight: (num_heads * head_dim, ...) (a Linear weight or bias); returns
    (num_groups * head_dim, ...). Group g averages heads g·r ... g·r + r - 1, r =
    num_heads / num_groups: the heads that ``repeat_kv`` will map back onto kv head g.
    """
    check_positive_int("num_heads", num_heads)
    check_positive_int("num_groups", num_groups)
    check_divisible("num_heads", num_heads, "num_groups", num_groups)
    check_divisible("weight.shape[0]", weight.shape[0], "num_heads", num_heads)
    heads = rearrange(weight, "(g r d) ... -> g r d ...", g=num_groups, r=num_heads // num_groups)
    return rearrange(heads.mean(dim=1), "g d ... -> (g d) ...")  # mean over the r heads of a group


@torch.no_grad()
def mha_to_gqa(mha: MultiHeadAttention, num_groups: int) -> MultiHeadAttention:
    """A new ``MultiHeadAttention`` with ``num_kv_heads = num_groups``, built from a
    multi-head checkpoint by mean-pooling its key and value heads within each group.

    Queries and the output projection are copied unchanged. ``num_groups = 1`` gives
    multi-query attention; ``num_groups = num_heads`` gives back the same model.
    """
    if not isinstance(mha, MultiHeadAttention):
        raise TypeError(f"mha must be a MultiHeadAttention, got {type(mha).__name__}")
    if mha.num_kv_heads != mha.num_heads:
        raise ValueError(f"mha must be multi-head (num_kv_heads == num_heads), got "
                         f"num_heads={mha.num_heads}, num_kv_heads={mha.num_kv_heads}")
    check_positive_int("num_groups", num_groups)
    check_divisible("num_heads", mha.num_heads, "num_groups", num_groups)
    w = mha.in_proj_weight
    gqa = MultiHeadAttention(mha.d_model, mha.num_heads, num_groups,
                             bias=mha.in_proj_bias is not None, dropout=mha.dropout,
                             device=w.device, dtype=w.dtype)
    pool = lambda t: mean_pool_kv_heads(t, mha.num_heads, num_groups)  # noqa: E731
    w_q, w_k, w_v = w.chunk(3, dim=0)  # each (num_heads * head_dim, d_model)
    gqa.in_proj_weight.copy_(torch.cat([w_q, pool(w_k), pool(w_v)]))
    if mha.in_proj_bias is not None:
        b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
        gqa.in_proj_bias.copy_(torch.cat([b_q, pool(b_k), pool(b_v)]))
    gqa.out_proj.load_state_dict(mha.out_proj.state_dict())
    return gqa
# --8<-- [end:mean_pool]

