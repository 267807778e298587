"""Sliding-window, dilated and Longformer attention: efficient forms against dense masking.

Tolerance: the efficient and the dense forms add up the same float64 terms in a different
order (and the dense form adds exact zeros for masked keys), so they differ by rounding,
about seq * 1e-16 relative; 1e-10 leaves four orders of magnitude of margin and would
still catch a single misplaced key, whose effect is of order 1e-2.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention import causal_mask, scaled_dot_product_attention
from attnbook.attention.local import (
    longformer_attention,
    longformer_mask,
    sliding_window_attention,
    sliding_window_mask,
)

from helpers import outputs_and_grads
from helpers import random_qkv as qkv

ATOL = 1e-10  # see the module docstring
PROPERTY = settings(max_examples=25, deadline=None)


def dense(q, k, v, mask):
    return scaled_dot_product_attention(q, k, v, mask)[0]


def assert_all_close(got, expected):
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- masks


def test_sliding_window_mask_matches_its_definition():
    seq, window, dilation = 13, 2, 3
    for causal in (False, True):
        mask = sliding_window_mask(seq, window, causal=causal, dilation=dilation)
        for i in range(seq):
            for j in range(seq):
                offset = j - i
                upper = 0 if causal else window * dilation
                allowed = -window * dilation <= offset <= upper and offset % dilation == 0
                assert bool(mask[i, j]) == allowed, (i, j, causal)


def test_sliding_window_rows_hold_at_most_2w_plus_1_keys():
    seq, window = 50, 4
    assert sliding_window_mask(seq, window).sum(dim=1).max() == 2 * window + 1
    assert sliding_window_mask(seq, window, causal=True).sum(dim=1).max() == window + 1


def test_dilation_one_mask_is_the_plain_window_mask():
    plain = sliding_window_mask(20, 3)
    assert torch.equal(sliding_window_mask(20, 3, dilation=1), plain)


def test_longformer_mask_is_window_plus_full_global_rows_and_columns():
    seq, window, global_indices = 16, 1, [0, 9]
    mask = longformer_mask(seq, window, global_indices)
    assert mask[global_indices].all() and mask[:, global_indices].all()
    others = [i for i in range(seq) if i not in global_indices]
    band = sliding_window_mask(seq, window)
    assert torch.equal(mask[others][:, others], band[others][:, others])


# ---------------------------------------------------------------- sliding window


@PROPERTY
@given(
    seq=st.integers(1, 40), window=st.integers(1, 12), dilation=st.integers(1, 5),
    causal=st.booleans(), seed=st.integers(0, 2**16),
)
def test_sliding_window_attention_equals_dense_masked_attention(
    seq, window, dilation, causal, seed,
):
    q, k, v = qkv(seq, seed=seed)
    got = sliding_window_attention(q, k, v, window, causal=causal, dilation=dilation)
    mask = sliding_window_mask(seq, window, causal=causal, dilation=dilation)
    torch.testing.assert_close(got, dense(q, k, v, mask), atol=ATOL, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dilation", [1, 3])
def test_sliding_window_gradients_equal_dense_masked_gradients(causal, dilation):
    seq, window = 23, 3
    q, k, v = qkv(seq)
    mask = sliding_window_mask(seq, window, causal=causal, dilation=dilation)
    got = outputs_and_grads(
        lambda q, k, v: sliding_window_attention(q, k, v, window, causal=causal, dilation=dilation),
        q, k, v)
    assert_all_close(got, outputs_and_grads(lambda q, k, v: dense(q, k, v, mask), q, k, v))


def test_window_covering_the_sequence_equals_full_attention():
    seq = 17
    q, k, v = qkv(seq)
    full = dense(q, k, v, None)
    for window in (seq - 1, seq, 3 * seq):
        torch.testing.assert_close(sliding_window_attention(q, k, v, window), full,
                                   atol=ATOL, rtol=0)


def test_causal_window_covering_the_sequence_equals_causal_attention():
    seq = 17
    q, k, v = qkv(seq)
    expected = dense(q, k, v, causal_mask(seq))
    got = sliding_window_attention(q, k, v, seq - 1, causal=True)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_dilation_one_equals_plain_window():
    q, k, v = qkv(19)
    torch.testing.assert_close(
        sliding_window_attention(q, k, v, 2, dilation=1), sliding_window_attention(q, k, v, 2),
        atol=0, rtol=0,
    )


def test_dilated_window_is_a_plain_window_on_each_residue_class():
    seq, window, dilation = 22, 2, 3
    q, k, v = qkv(seq)
    dilated = sliding_window_attention(q, k, v, window, dilation=dilation)
    for residue in range(dilation):
        sub = [x[:, :, residue::dilation] for x in (q, k, v)]
        torch.testing.assert_close(dilated[:, :, residue::dilation],
                                   sliding_window_attention(*sub, window), atol=ATOL, rtol=0)


def test_sliding_window_accepts_grouped_kv_heads():
    seq, heads, kv_heads = 15, 4, 2
    q, k, v = qkv(seq, heads=heads, kv_heads=kv_heads)
    repeat = heads // kv_heads
    expected = sliding_window_attention(
        q, k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1), 2)
    torch.testing.assert_close(sliding_window_attention(q, k, v, 2), expected, atol=0, rtol=0)


@pytest.mark.parametrize("causal,dilation", [(False, 1), (True, 1), (False, 2)])
def test_sliding_window_passes_gradcheck(causal, dilation):
    q, k, v = (x.requires_grad_() for x in qkv(7, batch=1, heads=2, head_dim=3))
    assert torch.autograd.gradcheck(
        lambda q, k, v: sliding_window_attention(q, k, v, 2, causal=causal, dilation=dilation),
        (q, k, v))


# ---------------------------------------------------------------- Longformer


@PROPERTY
@given(
    seq=st.integers(2, 36), window=st.integers(1, 6), dilation=st.integers(1, 3),
    data=st.data(), seed=st.integers(0, 2**16),
)
def test_longformer_equals_dense_attention_under_its_mask(seq, window, dilation, data, seed):
    global_indices = data.draw(st.lists(st.integers(0, seq - 1), max_size=4, unique=True))
    q, k, v = qkv(seq, seed=seed)
    got = longformer_attention(q, k, v, window, global_indices, dilation=dilation)
    mask = longformer_mask(seq, window, global_indices, dilation=dilation)
    torch.testing.assert_close(got, dense(q, k, v, mask), atol=ATOL, rtol=0)


def test_longformer_gradients_equal_dense_masked_gradients():
    seq, window, global_indices = 21, 2, [0, 7, 20]
    q, k, v = qkv(seq)
    mask = longformer_mask(seq, window, global_indices)
    got = outputs_and_grads(lambda q, k, v: longformer_attention(q, k, v, window, global_indices),
                            q, k, v)
    assert_all_close(got, outputs_and_grads(lambda q, k, v: dense(q, k, v, mask), q, k, v))


def test_longformer_global_token_row_is_a_full_softmax_row():
    seq, global_indices = 30, [4, 11]
    q, k, v = qkv(seq)
    out = longformer_attention(q, k, v, 1, global_indices)
    full = dense(q, k, v, None)  # every query sees every key
    torch.testing.assert_close(out[:, :, global_indices], full[:, :, global_indices],
                               atol=ATOL, rtol=0)


def test_longformer_separate_global_projections_match_the_two_part_reference():
    seq, window, global_indices = 20, 2, [0, 13]
    q, k, v = qkv(seq)
    global_q, global_k, global_v = qkv(seq, seed=7)
    got = longformer_attention(q, k, v, window, global_indices,
                               global_q=global_q, global_k=global_k, global_v=global_v)
    # Ordinary rows: window + global columns, seen through the local k and v.
    expected = dense(q, k, v, longformer_mask(seq, window, global_indices))
    # Global rows: full attention with Q_g, K_g, V_g.
    expected[:, :, global_indices] = dense(global_q, global_k, global_v, None)[:, :, global_indices]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_longformer_without_global_tokens_equals_sliding_window():
    q, k, v = qkv(18)
    torch.testing.assert_close(longformer_attention(q, k, v, 3, []),
                               sliding_window_attention(q, k, v, 3), atol=ATOL, rtol=0)


def test_longformer_passes_gradcheck():
    q, k, v = (x.requires_grad_() for x in qkv(8, batch=1, heads=2, head_dim=3))
    global_q = qkv(8, batch=1, heads=2, head_dim=3, seed=5)[0].requires_grad_()
    assert torch.autograd.gradcheck(
        lambda q, k, v, gq: longformer_attention(q, k, v, 1, [2, 5], global_q=gq),
        (q, k, v, global_q))


# ---------------------------------------------------------------- bad input


def test_a_window_that_is_not_positive_is_rejected_by_name():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="window"):
        sliding_window_attention(q, k, v, -1)
    with pytest.raises(ValueError, match="window must be a positive"):
        sliding_window_attention(q, k, v, 0)
    with pytest.raises(TypeError, match="window"):
        sliding_window_attention(q, k, v, 2.0)
    with pytest.raises(ValueError, match="window"):
        sliding_window_mask(8, -3)


def test_non_positive_dilation_is_rejected_by_name():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="dilation"):
        sliding_window_attention(q, k, v, 2, dilation=0)
    with pytest.raises(ValueError, match="dilation"):
        longformer_mask(8, 2, [0], dilation=-1)


def test_wrong_rank_is_rejected_by_name():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        sliding_window_attention(q[0], k, v, 2)


def test_cross_attention_lengths_are_rejected():
    q, _, _ = qkv(8)
    _, k, v = qkv(9)
    with pytest.raises(ValueError, match="same length"):
        sliding_window_attention(q, k, v, 2)


def test_bad_global_indices_are_rejected_by_name():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="global_indices"):
        longformer_attention(q, k, v, 1, [0, 8])  # out of range
    with pytest.raises(ValueError, match="global_indices"):
        longformer_attention(q, k, v, 1, [3, 3])  # repeated
    with pytest.raises(TypeError, match="global_indices"):
        longformer_attention(q, k, v, 1, torch.ones(8, dtype=torch.bool))


def test_mismatched_global_projection_is_rejected_by_name():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="global_q"):
        longformer_attention(q, k, v, 1, [0], global_q=q[:, :2])
