"""Attention mechanisms. Layout ``(batch, heads, seq, head_dim)``; masks True = may attend.

The core (scaled dot-product, masks, multi-head) is imported here; each further mechanism
lives in a module of its own (``attnbook.attention.positional``, ``.sparse``, ``.flash``...)
and is imported from there, so that reading one mechanism never needs the others.
"""
from .dot_product import repeat_kv, scaled_dot_product_attention, sdpa, stable_softmax
from .masks import causal_mask, combine_masks, key_padding_to_attn_mask, padding_mask
from .multihead import (
    MultiHeadAttention,
    merge_heads,
    multi_head_attention,
    multi_head_attention_loop,
    split_heads,
)

__all__ = [
    "MultiHeadAttention", "causal_mask", "combine_masks", "key_padding_to_attn_mask",
    "merge_heads", "multi_head_attention", "multi_head_attention_loop", "padding_mask",
    "repeat_kv", "scaled_dot_product_attention", "sdpa", "split_heads", "stable_softmax",
]
