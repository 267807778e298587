"""Sparse Transformer (strided, fixed) and BigBird: patterns, reachability, efficient == dense.

Tolerance: the gathered and the dense forms add up the same float64 terms in a different
order (the dense form also adds exact zeros for masked keys), so they differ by rounding,
about seq * 1e-16 relative; 1e-10 leaves four orders of magnitude of margin and would
still catch a single misplaced key, whose effect is of order 1e-2.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention import scaled_dot_product_attention
from attnbook.attention.bigbird import (
    bigbird_attention,
    bigbird_block_index,
    bigbird_layout,
    bigbird_mask,
)
from attnbook.attention.sparse import (
    fixed_attention,
    fixed_key_index,
    fixed_mask,
    gather_attention,
    key_index_from_mask,
    strided_attention,
    strided_key_index,
    strided_mask,
)

from helpers import outputs_and_grads
from helpers import random_qkv as qkv

ATOL = 1e-10  # see the module docstring
PROPERTY = settings(max_examples=25, deadline=None)


def dense(q, k, v, mask):
    return scaled_dot_product_attention(q, k, v, mask)


def reachable_in_two_hops(mask):
    """Boolean (seq, seq): j can reach i's output through at most one intermediate token."""
    one_hop = mask.double()
    return (one_hop @ one_hop) > 0  # every row contains its diagonal, so this includes one hop


def index_to_counts(key_index, key_valid, seq):
    """How many times each (query, key) pair is listed by a padded key list."""
    counts = torch.zeros(key_index.shape[0], seq, dtype=torch.long)
    return counts.scatter_add_(1, key_index, key_valid.long())


# ---------------------------------------------------------------- patterns


@PROPERTY
@given(seq=st.integers(1, 40), stride=st.integers(1, 12))
def test_strided_mask_equals_the_transcribed_definition(seq, stride):
    mask = strided_mask(seq, stride=stride)
    for q in range(seq):
        for k in range(seq):
            expected = q >= k and ((q - k) % stride == 0 or q - k < stride)
            assert bool(mask[q, k]) == expected


@PROPERTY
@given(seq=st.integers(1, 40), stride=st.integers(1, 12), data=st.data())
def test_fixed_mask_equals_the_transcribed_definition(seq, stride, data):
    num_summary = data.draw(st.integers(1, stride))
    mask = fixed_mask(seq, stride=stride, num_summary=num_summary)
    for i in range(seq):
        for j in range(seq):
            same_block = j // stride == i // stride
            summary = j % stride in range(stride - num_summary, stride)
            assert bool(mask[i, j]) == (j <= i and (same_block or summary))


def test_strided_mask_is_not_every_other_column():
    # The pitfall: keeping every second key column never lets anyone attend odd positions.
    seq = 16
    every_other_column = torch.zeros(seq, seq, dtype=torch.bool)
    every_other_column[:, ::2] = True
    every_other_column &= torch.ones(seq, seq, dtype=torch.bool).tril()
    mask = strided_mask(seq, stride=2)
    assert not torch.equal(mask, every_other_column)
    assert mask[1:, 1::2].any()  # odd positions are attended (by the next query at least)
    assert mask.any(dim=0).all()  # every key is attended by someone


@pytest.mark.parametrize("pattern", ["strided", "fixed"])
def test_sparse_patterns_never_see_the_future(pattern):
    mask = strided_mask(30, stride=5) if pattern == "strided" else fixed_mask(30, stride=5, num_summary=2)
    assert not mask.triu(diagonal=1).any()


@pytest.mark.parametrize("seq,stride", [(16, 4), (30, 5), (64, 8), (100, 10), (37, 6), (50, 3)])
def test_strided_and_fixed_reach_every_earlier_position_in_two_hops(seq, stride):
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    for mask in (strided_mask(seq, stride=stride), fixed_mask(seq, stride=stride, num_summary=1),
                 fixed_mask(seq, stride=stride, num_summary=2)):
        assert torch.equal(reachable_in_two_hops(mask), causal)


@pytest.mark.parametrize("seq,stride", [(16, 4), (64, 8)])
def test_one_component_alone_does_not_reach_everything_in_two_hops(seq, stride):
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    for component in ("local", "stride"):
        one_part = strided_mask(seq, stride=stride, component=component)
        assert not torch.equal(reachable_in_two_hops(one_part), causal)


def test_strided_rows_hold_order_sqrt_n_keys():
    for seq in (64, 256, 1024, 4096, 16384):
        stride = math.isqrt(seq)  # l = sqrt(n)
        key_index, key_valid = strided_key_index(seq, stride=stride)  # no seq x seq matrix needed
        keys_per_row = key_valid.sum(dim=1)
        assert int(keys_per_row.max()) <= 2 * math.sqrt(seq)  # stride + (seq - 1) // stride
        if seq <= 1024:
            assert torch.equal(keys_per_row, strided_mask(seq, stride=stride).sum(dim=1))


@pytest.mark.parametrize("component", ["both", "local", "stride"])
def test_strided_key_index_lists_exactly_the_mask_once(component):
    for seq, stride in [(1, 3), (17, 4), (24, 5), (9, 20)]:
        key_index, key_valid = strided_key_index(seq, stride=stride, component=component)
        counts = index_to_counts(key_index, key_valid, seq)
        assert counts.max() <= 1
        assert torch.equal(counts.bool(), strided_mask(seq, stride=stride, component=component))


@pytest.mark.parametrize("component", ["both", "block", "summary"])
def test_fixed_key_index_lists_exactly_the_mask_once(component):
    for seq, stride, num_summary in [(1, 3, 1), (17, 4, 1), (24, 5, 2), (30, 6, 6), (9, 20, 3)]:
        key_index, key_valid = fixed_key_index(seq, stride=stride, num_summary=num_summary,
                                               component=component)
        counts = index_to_counts(key_index, key_valid, seq)
        assert counts.max() <= 1
        assert torch.equal(counts.bool(), fixed_mask(seq, stride=stride, num_summary=num_summary,
                                                     component=component))


# ---------------------------------------------------------------- gathered == dense


@PROPERTY
@given(seq=st.integers(1, 40), stride=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_strided_attention_equals_dense_masked_attention(seq, stride, seed):
    q, k, v = qkv(seq, seed=seed)
    got = strided_attention(q, k, v, stride=stride)
    torch.testing.assert_close(got, dense(q, k, v, strided_mask(seq, stride=stride)), atol=ATOL, rtol=0)


@PROPERTY
@given(seq=st.integers(1, 40), stride=st.integers(1, 9), data=st.data(),
       seed=st.integers(0, 2**16))
def test_fixed_attention_equals_dense_masked_attention(seq, stride, data, seed):
    num_summary = data.draw(st.integers(1, stride))
    q, k, v = qkv(seq, seed=seed)
    got = fixed_attention(q, k, v, stride=stride, num_summary=num_summary)
    expected = dense(q, k, v, fixed_mask(seq, stride=stride, num_summary=num_summary))
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@PROPERTY
@given(seq=st.integers(1, 40), stride=st.integers(1, 9), chunk=st.integers(1, 50),
       seed=st.integers(0, 2**16))
def test_gathered_strided_and_fixed_equal_dense_masked_attention(seq, stride, chunk, seed):
    q, k, v = qkv(seq, seed=seed)
    for key_list, mask in (
        (strided_key_index(seq, stride=stride), strided_mask(seq, stride=stride)),
        (fixed_key_index(seq, stride=stride, num_summary=1), fixed_mask(seq, stride=stride, num_summary=1)),
    ):
        got = gather_attention(q, k, v, *key_list, query_chunk=chunk)
        torch.testing.assert_close(got, dense(q, k, v, mask), atol=ATOL, rtol=0)


@PROPERTY
@given(q_len=st.integers(1, 12), k_len=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_gather_attention_with_any_mask_equals_dense_masked_attention(q_len, k_len, seed):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(q_len, k_len, generator=generator) < 0.4
    q = qkv(q_len, seed=seed)[0]
    _, k, v = qkv(k_len, seed=seed + 1)
    got = gather_attention(q, k, v, *key_index_from_mask(mask))
    # Rows with no allowed key give zeros in both forms (stable_softmax's convention).
    torch.testing.assert_close(got, dense(q, k, v, mask), atol=ATOL, rtol=0)


def test_query_chunk_does_not_change_the_result():
    q, k, v = qkv(29)
    key_list = strided_key_index(29, stride=5)
    whole = gather_attention(q, k, v, *key_list, query_chunk=29)
    for chunk in (1, 4, 7, 100):
        torch.testing.assert_close(gather_attention(q, k, v, *key_list, query_chunk=chunk),
                                   whole, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["strided", "fixed", "gather", "bigbird"])
def test_sparse_attention_accepts_grouped_kv_heads(name):
    attention = {
        "strided": lambda q, k, v: strided_attention(q, k, v, stride=4),
        "fixed": lambda q, k, v: fixed_attention(q, k, v, stride=4, num_summary=2),
        "gather": lambda q, k, v: gather_attention(q, k, v, *strided_key_index(20, stride=4)),
        "bigbird": lambda q, k, v: bigbird_attention(q, k, v, block_size=2, num_window_blocks=3,
                                                     num_global_blocks=1, num_random_blocks=2),
    }[name]
    q, k, v = qkv(20, heads=4, kv_heads=2)
    expected = attention(q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1))
    torch.testing.assert_close(attention(q, k, v), expected, atol=0, rtol=0)


# ---------------------------------------------------------------- BigBird patterns


BIGBIRD_CONFIGS = [  # (num_blocks, window blocks, global blocks, random blocks)
    (8, 3, 1, 2), (12, 3, 2, 3), (10, 5, 1, 1), (6, 1, 0, 2), (9, 3, 0, 0), (4, 3, 4, 0),
]


@pytest.mark.parametrize("num_blocks,window,num_global,num_random", BIGBIRD_CONFIGS)
def test_bigbird_rows_have_exactly_r_random_blocks_outside_window_and_globals(
    num_blocks, window, num_global, num_random,
):
    key_blocks, _ = bigbird_block_index(num_blocks, num_window_blocks=window, num_global_blocks=num_global,
                                        num_random_blocks=num_random, seed=3)
    random_blocks = key_blocks[:, num_global + window:]  # slots: globals, window, random
    assert random_blocks.shape == (num_blocks - num_global, num_random)
    for row, query_block in enumerate(range(num_global, num_blocks)):
        chosen = random_blocks[row].tolist()
        assert len(set(chosen)) == num_random  # distinct
        for block in chosen:
            assert block >= num_global  # not a global block
            assert abs(block - query_block) > window // 2  # not in the window


@pytest.mark.parametrize("num_blocks,window,num_global,num_random", BIGBIRD_CONFIGS)
def test_bigbird_layout_rows_are_window_plus_globals_plus_random(
    num_blocks, window, num_global, num_random,
):
    layout = bigbird_layout(num_blocks, num_window_blocks=window, num_global_blocks=num_global,
                            num_random_blocks=num_random, seed=3)
    assert layout[:num_global].all() and layout[:, :num_global].all()  # global rows, columns
    for query_block in range(num_global, num_blocks):
        in_window = [b for b in range(num_blocks)
                     if abs(b - query_block) <= window // 2 and b >= num_global]
        expected = num_global + len(in_window) + num_random
        assert int(layout[query_block].sum()) == expected
        assert layout[query_block, in_window].all()


@pytest.mark.parametrize("seed", range(5))
def test_bigbird_with_a_global_block_has_diameter_at_most_two(seed):
    mask = bigbird_mask(64, block_size=4, num_window_blocks=3, num_global_blocks=1, num_random_blocks=2,
                        seed=seed)
    assert reachable_in_two_hops(mask).all()


def test_bigbird_without_globals_or_random_needs_more_than_two_hops():
    mask = bigbird_mask(64, block_size=4, num_window_blocks=3, num_global_blocks=0,
                        num_random_blocks=0)  # a pure block window: far blocks are far apart
    assert not reachable_in_two_hops(mask).all()


def test_bigbird_same_seed_same_layout_different_seed_different():
    first = bigbird_layout(16, num_window_blocks=3, num_global_blocks=1, num_random_blocks=3, seed=11)
    assert torch.equal(first, bigbird_layout(16, num_window_blocks=3, num_global_blocks=1,
                                             num_random_blocks=3, seed=11))
    assert not torch.equal(first, bigbird_layout(16, num_window_blocks=3, num_global_blocks=1,
                                                 num_random_blocks=3, seed=12))


def test_bigbird_mask_expands_each_layout_entry_to_a_block():
    layout = bigbird_layout(6, num_window_blocks=3, num_global_blocks=1, num_random_blocks=1, seed=2)
    mask = bigbird_mask(18, block_size=3, num_window_blocks=3, num_global_blocks=1, num_random_blocks=1,
                        seed=2)
    assert torch.equal(mask.view(6, 3, 6, 3).all(dim=(1, 3)), layout)
    assert torch.equal(mask.view(6, 3, 6, 3).any(dim=(1, 3)), layout)


# ---------------------------------------------------------------- BigBird attention


@pytest.mark.parametrize("num_blocks,window,num_global,num_random", BIGBIRD_CONFIGS)
@pytest.mark.parametrize("block_size", [1, 3])
def test_bigbird_attention_equals_dense_masked_attention(
    num_blocks, window, num_global, num_random, block_size,
):
    seq = num_blocks * block_size
    q, k, v = qkv(seq)
    got = bigbird_attention(q, k, v, block_size=block_size, num_window_blocks=window,
                            num_global_blocks=num_global, num_random_blocks=num_random, seed=5)
    mask = bigbird_mask(seq, block_size=block_size, num_window_blocks=window, num_global_blocks=num_global,
                        num_random_blocks=num_random, seed=5)
    torch.testing.assert_close(got, dense(q, k, v, mask), atol=ATOL, rtol=0)


# ---------------------------------------------------------------- gradients


SPARSE_CASES = {
    "strided": (lambda q, k, v: strided_attention(q, k, v, stride=4),
                lambda seq: strided_mask(seq, stride=4)),
    "gathered_strided": (
        lambda q, k, v: gather_attention(q, k, v, *strided_key_index(q.shape[2], stride=4), query_chunk=5),
        lambda seq: strided_mask(seq, stride=4)),
    "fixed": (lambda q, k, v: fixed_attention(q, k, v, stride=4, num_summary=2),
              lambda seq: fixed_mask(seq, stride=4, num_summary=2)),
    "bigbird": (lambda q, k, v: bigbird_attention(q, k, v, block_size=2, num_window_blocks=3,
                                                  num_global_blocks=1, num_random_blocks=2, seed=1),
                lambda seq: bigbird_mask(seq, block_size=2, num_window_blocks=3, num_global_blocks=1,
                                         num_random_blocks=2, seed=1)),
}


@pytest.mark.parametrize("name", SPARSE_CASES)
def test_sparse_gradients_equal_dense_masked_gradients(name):
    attention, make_mask = SPARSE_CASES[name]
    seq = 24
    q, k, v = qkv(seq)
    mask = make_mask(seq)
    got = outputs_and_grads(attention, q, k, v)
    expected = outputs_and_grads(lambda q, k, v: dense(q, k, v, mask), q, k, v)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", SPARSE_CASES)
def test_sparse_attention_passes_gradcheck(name):
    attention, _ = SPARSE_CASES[name]
    q, k, v = (x.requires_grad_() for x in qkv(12, batch=1, heads=2, head_dim=3))
    assert torch.autograd.gradcheck(attention, (q, k, v))


# ---------------------------------------------------------------- bad input


def test_non_positive_stride_is_rejected_by_name():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="stride"):
        strided_attention(q, k, v, stride=0)
    with pytest.raises(ValueError, match="stride"):
        fixed_mask(8, stride=-2)
    with pytest.raises(TypeError, match="stride"):
        strided_mask(8, stride=2.5)


def test_num_summary_larger_than_stride_is_rejected_by_name():
    with pytest.raises(ValueError, match="num_summary"):
        fixed_mask(16, stride=4, num_summary=5)
    with pytest.raises(ValueError, match="num_summary"):
        fixed_key_index(16, stride=4, num_summary=0)


def test_unknown_component_is_rejected_by_name():
    with pytest.raises(ValueError, match="component"):
        strided_mask(8, stride=2, component="block")


def test_wrong_rank_is_rejected_by_name():
    q, k, v = qkv(8)
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        strided_attention(q[0], k, v, stride=2)
    with pytest.raises(ValueError, match="k must have 4 dimensions"):
        bigbird_attention(q, k[0], v, block_size=2)


def test_bad_key_index_is_rejected_by_name():
    q, k, v = qkv(8)
    key_index, key_valid = strided_key_index(8, stride=2)
    with pytest.raises(TypeError, match="key_index"):
        gather_attention(q, k, v, key_index.int(), key_valid)
    with pytest.raises(ValueError, match="key_index"):
        gather_attention(q, k, v, key_index + 8, key_valid)
    with pytest.raises(ValueError, match="key_valid"):
        gather_attention(q, k, v, key_index, key_valid[:, :1])


def test_sequence_not_divisible_by_block_size_is_rejected_by_name():
    q, k, v = qkv(10)
    with pytest.raises(ValueError, match="block_size"):
        bigbird_attention(q, k, v, block_size=4)
    with pytest.raises(ValueError, match="block_size"):
        bigbird_attention(q, k, v, block_size=0)


def test_bad_bigbird_block_counts_are_rejected_by_name():
    with pytest.raises(ValueError, match="num_window_blocks"):
        bigbird_layout(8, num_window_blocks=2, num_global_blocks=1, num_random_blocks=1)  # even window
    with pytest.raises(ValueError, match="num_random_blocks"):
        bigbird_layout(6, num_window_blocks=3, num_global_blocks=1,
                       num_random_blocks=3)  # too few blocks outside the window
    with pytest.raises(ValueError, match="num_global_blocks"):
        bigbird_layout(4, num_window_blocks=3, num_global_blocks=5, num_random_blocks=0)
    with pytest.raises(ValueError, match="num_global_blocks"):
        bigbird_layout(4, num_window_blocks=3, num_global_blocks=-1, num_random_blocks=0)
