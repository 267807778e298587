"""Wrong attention code, kept on purpose: each function here is a bug the book has met.

The appendix "Attention bugs" shows each one beside what ``python -m attnbook.check``
prints for it, and tests/test_attention_bugs.py checks that the check fails on every
function here and passes on the library's. ``BUGS`` at the end lists them. Do not import
anything from here into working code.
"""
import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F


# --8<-- [start:scale_by_d_model]
def mha_scaled_by_d_model(x, w_q, w_k, w_v, w_o, num_heads):
    batch, seq, d_model = x.shape
    q, k, v = ((x @ w).view(batch, seq, num_heads, -1).transpose(1, 2) for w in (w_q, w_k, w_v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_model)  # BUG: one head has d_model / num_heads
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).reshape(batch, seq, d_model) @ w_o
# --8<-- [end:scale_by_d_model]


# --8<-- [start:merge_without_transpose]
def merge_heads_without_transpose(x):
    batch, heads, seq, head_dim = x.shape
    return x.reshape(batch, seq, heads * head_dim)  # BUG: memory order is (heads, seq), not (seq, heads)
# --8<-- [end:merge_without_transpose]


# --8<-- [start:is_causal_top_left]
def causal_attention_with_is_causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # BUG: top-left when q_len < k_len
# --8<-- [end:is_causal_top_left]


# --8<-- [start:mask_slicing]
FULL = torch.ones(2048, 2048, dtype=torch.bool).tril()  # built once for the longest context


def causal_mask_sliced(q_len, k_len):
    return FULL[:q_len, :k_len]  # BUG: the new queries are rows k_len - q_len ... k_len - 1
# --8<-- [end:mask_slicing]


# --8<-- [start:nan_rows]
def attention_nan_on_empty_rows(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # BUG: a row of -inf gives exp(-inf)/0 = NaN
# --8<-- [end:nan_rows]


# --8<-- [start:softmax_axis]
def attention_softmax_over_queries(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-2) @ v  # BUG: normalises each key's column over the queries
# --8<-- [end:softmax_axis]


# --8<-- [start:mask_inverted]
def attention_mask_inverted(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))  # BUG: hides the keys the mask allows
    return torch.softmax(scores, dim=-1) @ v
# --8<-- [end:mask_inverted]


# --8<-- [start:dropout_weights]
def attention_weights_after_dropout(q, k, v, p, generator):
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    keep = torch.rand(weights.shape, generator=generator, dtype=weights.dtype) >= p
    weights = weights * keep / (1 - p)  # BUG: the returned weights are the dropped ones
    return weights @ v, weights
# --8<-- [end:dropout_weights]


# --8<-- [start:no_causal_mask]
def causal_attention_without_mask(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)  # BUG: every position sees the whole sequence
# --8<-- [end:no_causal_mask]


# --8<-- [start:rope_interleaved]
def rope_interleaved(x, position_ids, base=10000.0):
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    angles = position_ids.double()[:, None] * freqs
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]  # BUG: pairs (2i, 2i+1); the weights expect (i, i + d/2)
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
# --8<-- [end:rope_interleaved]


# --8<-- [start:gqa_repeat]
def repeat_kv_tiled(x, num_heads):
    return x.repeat(1, num_heads // x.shape[1], 1, 1)  # BUG: heads come out 0, 1, 0, 1, ... not 0, 0, 1, 1
# --8<-- [end:gqa_repeat]


class Bug(NamedTuple):
    slug: str          # the snippet section above, and the appendix's anchor
    title: str
    exercise: str      # the attnbook.check exercise that catches it
    failing: str       # the name of the check that must fail
    wrong: Callable


BUGS = [
    Bug("scale_by_d_model", "Scaling by d_model instead of d_head", "multi-head",
        "equals torch's multi-head attention", mha_scaled_by_d_model),
    Bug("merge_without_transpose", "Joining heads in the wrong order", "merge-heads",
        "each token's heads end up side by side", merge_heads_without_transpose),
    Bug("softmax_axis", "The softmax over the wrong axis", "sdpa",
        "softmax normalises over the keys", attention_softmax_over_queries),
    Bug("mask_inverted", "A mask read the other way round", "sdpa",
        "mask: True = may attend", attention_mask_inverted),
    Bug("nan_rows", "Fully masked rows give NaN", "sdpa",
        "a fully masked query gives zeros, not NaN", attention_nan_on_empty_rows),
    Bug("dropout_weights", "Weights returned after dropout", "attention-dropout",
        "the weights returned are the probabilities before dropout", attention_weights_after_dropout),
    Bug("no_causal_mask", "A causal model without its mask", "causal-attention",
        "no position sees a later one", causal_attention_without_mask),
    Bug("is_causal_top_left", "is_causal under a KV cache", "causal-attention",
        "one new query attends to the whole cache", causal_attention_with_is_causal),
    Bug("mask_slicing", "Slicing a precomputed mask under a KV cache", "causal-mask",
        "q_len < k_len (a KV cache): aligned bottom-right", causal_mask_sliced),
    Bug("rope_interleaved", "RoPE layouts mixed", "rope", "the half-split layout", rope_interleaved),
    Bug("gqa_repeat", "GQA heads repeated in the wrong order", "repeat-kv",
        "query head h uses kv head h // (num_heads / kv_heads)", repeat_kv_tiled),
]
