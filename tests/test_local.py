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
    return scaled_dot_product_attention(q, k, v, mask)


def as_mask(global_indices, q):
    """The (seq,) boolean global mask with True at ``global_indices``, for q's length."""
    mask = torch.zeros(q.shape[2], dtype=torch.bool)
    mask[list(global_indices)] = True
    return mask


def padding(lengths, seq, *, left=None):
    """(batch, seq) key padding mask, True = real token: right padding, or left padding
    for the sequences whose index is in ``left``."""
    mask = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]
    for b in left or ():
        mask[b] = mask[b].flip(0)
    return mask


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
    got = sliding_window_attention(q, k, v, window=window, causal=causal, dilation=dilation)
    mask = sliding_window_mask(seq, window, causal=causal, dilation=dilation)
    torch.testing.assert_close(got, dense(q, k, v, mask), atol=ATOL, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dilation", [1, 3])
def test_sliding_window_gradients_equal_dense_masked_gradients(causal, dilation):
    seq, window = 23, 3
    q, k, v = qkv(seq)
    mask = sliding_window_mask(seq, window, causal=causal, dilation=dilation)
    got = outputs_and_grads(
        lambda q, k, v: sliding_window_attention(q, k, v, window=window, causal=causal, dilation=dilation),
        q, k, v)
    assert_all_close(got, outputs_and_grads(lambda q, k, v: dense(q, k, v, mask), q, k, v))


def test_window_covering_the_sequence_equals_full_attention():
    seq = 17
    q, k, v = qkv(seq)
    full = dense(q, k, v, None)
    for window in (seq - 1, seq, 3 * seq):
        torch.testing.assert_close(sliding_window_attention(q, k, v, window=window), full,
                                   atol=ATOL, rtol=0)


def test_causal_window_covering_the_sequence_equals_causal_attention():
    seq = 17
    q, k, v = qkv(seq)
    expected = dense(q, k, v, causal_mask(seq))
    got = sliding_window_attention(q, k, v, window=seq - 1, causal=True)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_dilation_one_equals_plain_window():
    q, k, v = qkv(19)
    torch.testing.assert_close(
        sliding_window_attention(q, k, v, window=2, dilation=1), sliding_window_attention(q, k, v, window=2),
        atol=0, rtol=0,
    )


def test_dilated_window_is_a_plain_window_on_each_residue_class():
    seq, window, dilation = 22, 2, 3
    q, k, v = qkv(seq)
    dilated = sliding_window_attention(q, k, v, window=window, dilation=dilation)
    for residue in range(dilation):
        sub = [x[:, :, residue::dilation] for x in (q, k, v)]
        torch.testing.assert_close(dilated[:, :, residue::dilation],
                                   sliding_window_attention(*sub, window=window), atol=ATOL, rtol=0)


def test_sliding_window_accepts_grouped_kv_heads():
    seq, heads, kv_heads = 15, 4, 2
    q, k, v = qkv(seq, heads=heads, kv_heads=kv_heads)
    repeat = heads // kv_heads
    expected = sliding_window_attention(
        q, k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1), window=2)
    torch.testing.assert_close(sliding_window_attention(q, k, v, window=2), expected, atol=0, rtol=0)


@pytest.mark.parametrize("causal,dilation", [(False, 1), (True, 1), (False, 2)])
def test_sliding_window_passes_gradcheck(causal, dilation):
    q, k, v = (x.requires_grad_() for x in qkv(7, batch=1, heads=2, head_dim=3))
    assert torch.autograd.gradcheck(
        lambda q, k, v: sliding_window_attention(q, k, v, window=2, causal=causal, dilation=dilation),
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
    got = longformer_attention(q, k, v, window=window, global_mask=as_mask(global_indices, q),
                               dilation=dilation)
    mask = longformer_mask(seq, window, global_indices, dilation=dilation)
    torch.testing.assert_close(got, dense(q, k, v, mask), atol=ATOL, rtol=0)


def test_longformer_gradients_equal_dense_masked_gradients():
    seq, window, global_indices = 21, 2, [0, 7, 20]
    q, k, v = qkv(seq)
    mask = longformer_mask(seq, window, global_indices)
    global_mask = as_mask(global_indices, q)
    got = outputs_and_grads(
        lambda q, k, v: longformer_attention(q, k, v, window=window, global_mask=global_mask), q, k, v)
    assert_all_close(got, outputs_and_grads(lambda q, k, v: dense(q, k, v, mask), q, k, v))


def test_longformer_global_token_row_is_a_full_softmax_row():
    seq, global_indices = 30, [4, 11]
    q, k, v = qkv(seq)
    out = longformer_attention(q, k, v, window=1, global_mask=as_mask(global_indices, q))
    full = dense(q, k, v, None)  # every query sees every key
    torch.testing.assert_close(out[:, :, global_indices], full[:, :, global_indices],
                               atol=ATOL, rtol=0)


def test_longformer_separate_global_projections_match_the_two_part_reference():
    seq, window, global_indices = 20, 2, [0, 13]
    q, k, v = qkv(seq)
    global_q, global_k, global_v = qkv(seq, seed=7)
    got = longformer_attention(q, k, v, window=window, global_mask=as_mask(global_indices, q),
                               global_q=global_q, global_k=global_k, global_v=global_v)
    # Ordinary rows: window + global columns, seen through the local k and v.
    expected = dense(q, k, v, longformer_mask(seq, window, global_indices))
    # Global rows: full attention with Q_g, K_g, V_g.
    expected[:, :, global_indices] = dense(global_q, global_k, global_v, None)[:, :, global_indices]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_longformer_without_global_tokens_equals_sliding_window():
    q, k, v = qkv(18)
    torch.testing.assert_close(longformer_attention(q, k, v, window=3, global_mask=as_mask([], q)),
                               sliding_window_attention(q, k, v, window=3), atol=ATOL, rtol=0)


def test_longformer_passes_gradcheck():
    q, k, v = (x.requires_grad_() for x in qkv(8, batch=1, heads=2, head_dim=3))
    global_q = qkv(8, batch=1, heads=2, head_dim=3, seed=5)[0].requires_grad_()
    assert torch.autograd.gradcheck(
        lambda q, k, v, gq: longformer_attention(q, k, v, window=1, global_mask=as_mask([2, 5], q),
                                                 global_q=gq),
        (q, k, v, global_q))


# ---------------------------------------------------------------- padding and per-sequence globals
# A batch of documents of different lengths: each sequence is checked against dense
# attention under its own mask (the window or Longformer mask, AND its key padding).


def longformer_dense_mask(seq, window, global_mask, keep, dilation=1):
    """(batch, 1, seq, seq): longformer_mask of each sequence's own globals, AND its padding."""
    per_sequence = [longformer_mask(seq, window, g, dilation=dilation) for g in global_mask]
    return torch.stack(per_sequence)[:, None] & keep[:, None, None, :]


@PROPERTY
@given(
    seq=st.integers(1, 30), window=st.integers(1, 6), dilation=st.integers(1, 3),
    causal=st.booleans(), data=st.data(), seed=st.integers(0, 2**16),
)
def test_sliding_window_with_key_padding_equals_dense_masked_attention(
    seq, window, dilation, causal, data, seed,
):
    lengths = data.draw(st.lists(st.integers(0, seq), min_size=2, max_size=2))  # 0: all padding
    left = data.draw(st.lists(st.integers(0, 1), max_size=2, unique=True))
    keep = padding(lengths, seq, left=left)
    q, k, v = qkv(seq, seed=seed)
    got = sliding_window_attention(q, k, v, window=window, causal=causal, dilation=dilation,
                                   key_padding_mask=keep)
    mask = sliding_window_mask(seq, window, causal=causal, dilation=dilation) & keep[:, None, None, :]
    torch.testing.assert_close(got, dense(q, k, v, mask), atol=ATOL, rtol=0)


def test_a_query_whose_window_holds_only_padding_gets_zeros():
    q, k, v = qkv(12)
    keep = padding([5, 12], 12)  # sequence 0: keys 0..4 are real
    out = sliding_window_attention(q, k, v, window=2, causal=True, key_padding_mask=keep)
    assert torch.equal(out[0, :, 9], torch.zeros_like(out[0, :, 9]))  # keys 7, 8, 9: padding
    assert out[0, :, 6].abs().sum() > 0                                # key 4 is real


@pytest.mark.parametrize("causal,dilation", [(False, 1), (True, 1), (False, 2)])
def test_sliding_window_with_key_padding_gradients_equal_dense_gradients(causal, dilation):
    seq, window = 19, 2
    keep = padding([19, 11], seq, left=[1])
    q, k, v = qkv(seq)
    mask = sliding_window_mask(seq, window, causal=causal, dilation=dilation) & keep[:, None, None, :]
    got = outputs_and_grads(
        lambda q, k, v: sliding_window_attention(q, k, v, window=window, causal=causal,
                                                 dilation=dilation, key_padding_mask=keep), q, k, v)
    assert_all_close(got, outputs_and_grads(lambda q, k, v: dense(q, k, v, mask), q, k, v))


@PROPERTY
@given(
    seq=st.integers(2, 30), window=st.integers(1, 5), dilation=st.integers(1, 3),
    data=st.data(), seed=st.integers(0, 2**16),
)
def test_longformer_with_per_sequence_globals_and_padding_equals_dense_attention(
    seq, window, dilation, data, seed,
):
    flags = st.lists(st.booleans(), min_size=seq, max_size=seq)
    global_mask = torch.tensor([data.draw(flags), data.draw(flags)])  # (batch=2, seq)
    lengths = data.draw(st.lists(st.integers(0, seq), min_size=2, max_size=2))
    keep = padding(lengths, seq)
    q, k, v = qkv(seq, seed=seed)
    got = longformer_attention(q, k, v, window=window, global_mask=global_mask,
                               key_padding_mask=keep, dilation=dilation)
    expected = dense(q, k, v, longformer_dense_mask(seq, window, global_mask, keep, dilation))
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_longformer_with_per_sequence_globals_and_padding_gradients_equal_dense_gradients():
    seq, window = 17, 2
    global_mask = torch.zeros(2, seq, dtype=torch.bool)
    global_mask[0, [0, 6]] = True     # two global tokens here ...
    global_mask[1, 0] = True          # ... one there: slots of different fill
    keep = padding([17, 10], seq)
    q, k, v = qkv(seq)
    mask = longformer_dense_mask(seq, window, global_mask, keep)
    got = outputs_and_grads(
        lambda q, k, v: longformer_attention(q, k, v, window=window, global_mask=global_mask,
                                             key_padding_mask=keep), q, k, v)
    assert_all_close(got, outputs_and_grads(lambda q, k, v: dense(q, k, v, mask), q, k, v))


def test_a_shared_global_mask_equals_the_same_mask_for_every_sequence():
    q, k, v = qkv(14)
    shared = as_mask([1, 8], q)
    torch.testing.assert_close(
        longformer_attention(q, k, v, window=2, global_mask=shared),
        longformer_attention(q, k, v, window=2, global_mask=shared.expand(2, 14)), atol=0, rtol=0)


def test_per_sequence_global_projections_are_used_for_each_sequence_own_globals():
    seq, window = 12, 1
    q, k, v = qkv(seq)
    global_q, global_k, global_v = qkv(seq, seed=7)
    global_mask = torch.zeros(2, seq, dtype=torch.bool)
    global_mask[0, 3] = True
    global_mask[1, [0, 9]] = True
    keep = padding([12, 10], seq)
    got = longformer_attention(q, k, v, window=window, global_mask=global_mask, key_padding_mask=keep,
                               global_q=global_q, global_k=global_k, global_v=global_v)
    expected = dense(q, k, v, longformer_dense_mask(seq, window, global_mask, keep))
    rows = dense(global_q, global_k, global_v, keep[:, None, None, :])  # full rows with Q_g, K_g, V_g
    expected = torch.where(global_mask[:, None, :, None], rows, expected)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_sliding_window_and_longformer_with_padding_pass_gradcheck():
    q, k, v = (x.requires_grad_() for x in qkv(8, batch=2, heads=1, head_dim=3))
    keep = padding([8, 5], 8)
    global_mask = torch.zeros(2, 8, dtype=torch.bool)
    global_mask[0, 2] = True
    global_mask[1, [0, 4]] = True
    assert torch.autograd.gradcheck(
        lambda q, k, v: sliding_window_attention(q, k, v, window=1, dilation=2, key_padding_mask=keep),
        (q, k, v))
    assert torch.autograd.gradcheck(
        lambda q, k, v: longformer_attention(q, k, v, window=1, global_mask=global_mask,
                                             key_padding_mask=keep), (q, k, v))


# ---------------------------------------------------------------- bad input


def test_a_window_that_is_not_positive_is_rejected_by_name():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="window"):
        sliding_window_attention(q, k, v, window=-1)
    with pytest.raises(ValueError, match="window must be a positive"):
        sliding_window_attention(q, k, v, window=0)
    with pytest.raises(TypeError, match="window"):
        sliding_window_attention(q, k, v, window=2.0)
    with pytest.raises(ValueError, match="window"):
        sliding_window_mask(8, -3)


def test_non_positive_dilation_is_rejected_by_name():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="dilation"):
        sliding_window_attention(q, k, v, window=2, dilation=0)
    with pytest.raises(ValueError, match="dilation"):
        longformer_mask(8, 2, [0], dilation=-1)


def test_wrong_rank_is_rejected_by_name():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        sliding_window_attention(q[0], k, v, window=2)


def test_cross_attention_lengths_are_rejected():
    q, _, _ = qkv(8)
    _, k, v = qkv(9)
    with pytest.raises(ValueError, match="same length"):
        sliding_window_attention(q, k, v, window=2)


def test_bad_global_indices_are_rejected_by_name():
    with pytest.raises(ValueError, match="global_indices"):
        longformer_mask(8, 1, [0, 8])  # out of range
    with pytest.raises(ValueError, match="global_indices"):
        longformer_mask(8, 1, [3, 3])  # repeated
    with pytest.raises(ValueError, match="global_indices"):
        longformer_mask(8, 1, torch.ones(7, dtype=torch.bool))  # a mask of the wrong length


def test_bad_global_masks_are_rejected_by_name():
    q, k, v = qkv(8)  # batch 2
    with pytest.raises(TypeError, match="global_mask must be boolean"):
        longformer_attention(q, k, v, window=1, global_mask=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="global_mask must have shape"):
        longformer_attention(q, k, v, window=1, global_mask=torch.ones(3, 8, dtype=torch.bool))


def test_bad_key_padding_masks_are_rejected_by_name():
    q, k, v = qkv(8)  # batch 2
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        sliding_window_attention(q, k, v, window=1, key_padding_mask=torch.ones(2, 7, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_padding_mask must be boolean"):
        longformer_attention(q, k, v, window=1, key_padding_mask=torch.ones(2, 8))


def test_size_arguments_are_keyword_only():
    q, k, v = qkv(8)
    with pytest.raises(TypeError):
        sliding_window_attention(q, k, v, 2)
    with pytest.raises(TypeError):
        longformer_attention(q, k, v, 2, as_mask([0], q))


def test_mismatched_global_projection_is_rejected_by_name():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="global_q"):
        longformer_attention(q, k, v, window=1, global_mask=as_mask([0], q), global_q=q[:, :2])
