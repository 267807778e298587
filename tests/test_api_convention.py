"""The library's return convention, checked across mechanisms.

Every attention function returns the output tensor (batch, heads, q_len, d_v) only.
Weights (``return_weights=True``) and auxiliary results (``return_lse``,
``return_buckets``) come as a second element of a tuple only when asked for, and asking
never changes the output. Size and option arguments after q, k, v are keyword-only.
"""
from __future__ import annotations

import pytest
import torch

from attnbook.attention import scaled_dot_product_attention
from attnbook.attention.bigbird import bigbird_attention
from attnbook.attention.flash import flash_attention
from attnbook.attention.gqa import grouped_query_attention
from attnbook.attention.linear import linear_attention_quadratic
from attnbook.attention.linformer import linformer_attention
from attnbook.attention.local import longformer_attention, sliding_window_attention
from attnbook.attention.positional import attention_with_bias, shaw_attention
from attnbook.attention.reformer import full_shared_qk_attention, lsh_attention
from attnbook.attention.sparse import fixed_attention, strided_attention

from helpers import random_qkv

SEQ = 8
EYE = torch.eye(SEQ, dtype=torch.float64)   # a Linformer projection that changes nothing
TABLE = torch.zeros(5, 4, dtype=torch.float64)  # Shaw tables for max_distance 2, head_dim 4


def lsh(q, k, v, **flag):
    return lsh_attention(q, v, num_buckets=2, chunk_size=4, num_rounds=1,
                         generator=torch.Generator().manual_seed(0), **flag)


# name: (call, name of the flag that adds a second result, or None)
FUNCTIONS = {
    "scaled_dot_product_attention": (scaled_dot_product_attention, "return_weights"),
    "grouped_query_attention": (grouped_query_attention, "return_weights"),
    "linformer_attention": (lambda q, k, v, **f: linformer_attention(q, k, v, EYE, EYE, **f), "return_weights"),
    "linear_attention_quadratic": (linear_attention_quadratic, "return_weights"),
    "full_shared_qk_attention": (lambda q, k, v, **f: full_shared_qk_attention(q, v, **f), "return_weights"),
    "lsh_attention": (lsh, "return_buckets"),
    "attention_with_bias": (lambda q, k, v, **f: attention_with_bias(q, k, v, None, **f), "return_weights"),
    "shaw_attention": (lambda q, k, v, **f: shaw_attention(q, k, v, TABLE, TABLE, **f), "return_weights"),
    "flash_attention": (lambda q, k, v, **f: flash_attention(q, k, v, block_q=3, block_k=3, **f),
                        "return_lse"),
    "sliding_window_attention": (lambda q, k, v: sliding_window_attention(q, k, v, window=2), None),
    "longformer_attention": (lambda q, k, v: longformer_attention(q, k, v, window=2), None),
    "strided_attention": (lambda q, k, v: strided_attention(q, k, v, stride=4), None),
    "fixed_attention": (lambda q, k, v: fixed_attention(q, k, v, stride=4), None),
    "bigbird_attention": (lambda q, k, v: bigbird_attention(q, k, v, block_size=2, num_global_blocks=1,
                                                            num_random_blocks=0), None),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_attention_returns_the_output_and_more_only_when_asked(name):
    call, flag = FUNCTIONS[name]
    q, k, v = random_qkv(SEQ, batch=2, heads=2, head_dim=4)
    out = call(q, k, v)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 2, SEQ, 4)
    if flag is not None:
        both = call(q, k, v, **{flag: True})
        assert isinstance(both, tuple) and len(both) == 2
        torch.testing.assert_close(both[0], out, rtol=0, atol=0)


@pytest.mark.parametrize("call", [
    lambda q, k, v: lsh_attention(q, v, 2, 4, 1, torch.Generator().manual_seed(0)),
    lambda q, k, v: flash_attention(q, k, v, True),
    lambda q, k, v: sliding_window_attention(q, k, v, 2),
    lambda q, k, v: longformer_attention(q, k, v, 2),
    lambda q, k, v: strided_attention(q, k, v, 4),
    lambda q, k, v: fixed_attention(q, k, v, 4, 1),
    lambda q, k, v: bigbird_attention(q, k, v, 2),
    lambda q, k, v: full_shared_qk_attention(q, v, True),
], ids=["lsh", "flash", "sliding", "longformer", "strided", "fixed", "bigbird", "shared_qk"])
def test_sizes_and_options_after_q_k_v_are_keyword_only(call):
    q, k, v = random_qkv(SEQ, batch=1, heads=1, head_dim=4)
    with pytest.raises(TypeError, match="positional argument"):
        call(q, k, v)
