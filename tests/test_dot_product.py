"""Specification of scaled dot-product attention and its masks.

Covers ``attnbook.attention.dot_product`` (``scaled_dot_product_attention``, ``sdpa``,
``stable_softmax``, ``repeat_kv``) and ``attnbook.attention.masks`` (``causal_mask``,
``padding_mask``, ``key_padding_to_attn_mask``, ``combine_masks``). Conventions: tensors
are ``(batch, heads, seq, head_dim)``; boolean masks mean True = may attend.

Tolerances: float64 identities use 1e-12. The two sides compute the same sums in
slightly different orders (a fused kernel vs our written-out steps), so they differ by a
few units in the last place of values of order 1 (float64 epsilon is 2.2e-16); 1e-12
leaves three orders of magnitude of headroom and still catches any real mistake (a
missing scale, a wrong mask, a wrong head mapping each give errors of order 0.1).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention import (
    causal_mask,
    combine_masks,
    key_padding_to_attn_mask,
    padding_mask,
    repeat_kv,
    scaled_dot_product_attention,
    sdpa,
    stable_softmax,
)

F64 = torch.float64
TOL64 = 1e-12  # see the module docstring


def make_qkv(batch=2, heads=4, kv_heads=None, q_len=5, k_len=None, d_k=8, d_v=None,
             dtype=F64, seed=0):
    """Random q, k, v in the book's layout, reproducible from ``seed``."""
    kv_heads = heads if kv_heads is None else kv_heads
    k_len = q_len if k_len is None else k_len
    d_v = d_k if d_v is None else d_v
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, d_k, generator=g, dtype=dtype)
    k = torch.randn(batch, kv_heads, k_len, d_k, generator=g, dtype=dtype)
    v = torch.randn(batch, kv_heads, k_len, d_v, generator=g, dtype=dtype)
    return q, k, v


def random_mask(shape, seed=0, p_keep=0.6):
    """A random boolean mask (True = may attend) whose every row keeps at least one key."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < p_keep
    mask[..., 0] = True  # no fully masked rows: those are tested on their own
    return mask


def self_attention(x, w_q, w_k, w_v, causal=False):
    """x: (batch, seq, d_model) -> (batch, seq, d_v) with one head and no positions."""
    q, k, v = ((x @ w)[:, None] for w in (w_q, w_k, w_v))  # (batch, 1, seq, d)
    out = scaled_dot_product_attention(q, k, v, causal=causal)
    return out[:, 0]


# -- agreement with torch's fused kernel -----------------------------------------------------

def test_matches_torch_sdpa_float64():
    q, k, v = make_qkv(d_v=6)
    ours = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=TOL64)


def test_matches_torch_sdpa_with_boolean_mask_float64():
    q, k, v = make_qkv(q_len=6, k_len=7)
    mask = random_mask((2, 1, 6, 7))  # broadcasts over heads
    ours = scaled_dot_product_attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOL64)


def test_matches_torch_sdpa_with_key_padding_mask_float64():
    q, k, v = make_qkv(q_len=6)
    keep = key_padding_to_attn_mask(padding_mask(torch.tensor([6, 3])))  # (2, 1, 1, 6)
    ours = scaled_dot_product_attention(q, k, v, keep)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOL64)


def test_matches_torch_sdpa_causal_float64():
    q, k, v = make_qkv(q_len=7)
    ours = scaled_dot_product_attention(q, k, v, causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOL64)


def test_matches_torch_sdpa_with_explicit_scale_float64():
    q, k, v = make_qkv()
    ours = scaled_dot_product_attention(q, k, v, scale=0.3)
    ref = F.scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOL64)


def test_grouped_kv_heads_match_torch_enable_gqa_float64():
    q, k, v = make_qkv(heads=6, kv_heads=2)
    ours = scaled_dot_product_attention(q, k, v, causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOL64)


def test_repeat_kv_maps_query_head_h_to_kv_head_h_div_group():
    _, k, _ = make_qkv(heads=2, kv_heads=2)
    repeated = repeat_kv(k, 6)  # group size 3
    for h in range(6):
        assert torch.equal(repeated[:, h], k[:, h // 3])


def test_matches_torch_sdpa_with_bottom_right_causal_mask_when_q_len_differs():
    # With a KV cache, 3 new queries sit at the END of 8 keys: bottom-right alignment.
    q, k, v = make_qkv(q_len=3, k_len=8)
    ours = scaled_dot_product_attention(q, k, v, causal=True)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(3, 8))
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOL64)


def test_torch_is_causal_aligns_top_left_so_it_differs_when_q_len_differs():
    # Pins the pitfall the chapter warns about: is_causal=True is the top-left triangle.
    q, k, v = make_qkv(q_len=3, k_len=8)
    top_left = torch.ones(3, 8, dtype=torch.bool).tril()
    torch_causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch_top_left = F.scaled_dot_product_attention(q, k, v, attn_mask=top_left)
    torch.testing.assert_close(torch_causal, torch_top_left, rtol=0, atol=TOL64)
    ours = scaled_dot_product_attention(q, k, v, causal=True)
    assert (ours - torch_causal).abs().max() > 1e-3


@pytest.mark.parametrize(
    "case", ["plain", "mask", "causal", "gqa", "q_len<k_len causal", "mask+causal"])
def test_sdpa_equals_scaled_dot_product_attention(case):
    kw = dict(heads=6, kv_heads=3) if case == "gqa" else {}
    q_len, k_len = (3, 7) if case == "q_len<k_len causal" else (5, 5)
    q, k, v = make_qkv(q_len=q_len, k_len=k_len, **kw)
    mask = random_mask((2, 1, q_len, k_len)) if "mask" in case else None
    causal = "causal" in case or case == "gqa"
    ours = scaled_dot_product_attention(q, k, v, mask, causal=causal)
    torch.testing.assert_close(sdpa(q, k, v, mask, causal=causal), ours, rtol=0, atol=TOL64)


# -- the weights ------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(q_len=st.integers(1, 6), k_len=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_weight_rows_sum_to_one(q_len, k_len, seed):
    q, k, v = make_qkv(q_len=q_len, k_len=k_len, seed=seed)
    _, weights = scaled_dot_product_attention(q, k, v, random_mask((2, 4, q_len, k_len), seed), return_weights=True)
    # float64 sum of <= 6 terms of size <= 1: rounding is a few ulps.
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, q_len, dtype=F64), rtol=0, atol=TOL64)
    assert (weights >= 0).all()


def test_masked_keys_get_exactly_zero_weight():
    q, k, v = make_qkv(q_len=6, k_len=9)
    mask = random_mask((2, 4, 6, 9), p_keep=0.4)
    _, weights = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert torch.all(weights[~mask] == 0)  # exactly: exp(-inf) is 0
    assert torch.all(weights[mask] > 0)


def test_fully_masked_row_gives_zero_weights_and_zero_output():
    q, k, v = make_qkv(q_len=4, k_len=5)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[2] = False  # query 2 may attend nothing
    out, weights = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert torch.all(weights[..., 2, :] == 0)
    assert torch.all(out[..., 2, :] == 0)
    assert torch.isfinite(out).all()
    # the other rows are untouched: they equal attention with those rows alone
    rest = [0, 1, 3]
    ref = scaled_dot_product_attention(q[..., rest, :], k, v)
    torch.testing.assert_close(out[..., rest, :], ref, rtol=0, atol=0)


def test_fully_masked_row_in_sdpa_is_zero_too():
    q, k, v = make_qkv(q_len=4, k_len=5)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[0] = False
    assert torch.all(sdpa(q, k, v, mask)[..., 0, :] == 0)


def test_dropout_returns_pre_dropout_weights_that_sum_to_one():
    q, k, v = make_qkv(q_len=6)
    _, clean = scaled_dot_product_attention(q, k, v, return_weights=True)
    out, weights = scaled_dot_product_attention(q, k, v, dropout_p=0.5,
                                                generator=torch.Generator().manual_seed(1), return_weights=True)
    assert torch.equal(weights, clean)
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]), rtol=0, atol=TOL64)
    out_again = scaled_dot_product_attention(q, k, v, dropout_p=0.5,
                                                generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, out_again)  # the generator makes dropout reproducible
    assert not torch.allclose(out, clean @ v)  # and dropout did change the output


# -- the softmax ------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(shift=st.floats(-1e3, 1e3), seed=st.integers(0, 2**16))
def test_adding_a_constant_to_a_score_row_changes_nothing(shift, seed):
    scores = torch.randn(4, 7, generator=torch.Generator().manual_seed(seed), dtype=F64)
    # s + shift rounds each score to the ulp of |shift| <= 1e3, i.e. ~1e-13: tolerance 1e-10.
    torch.testing.assert_close(stable_softmax(scores + shift), stable_softmax(scores),
                               rtol=0, atol=1e-10)


def test_stable_softmax_equals_torch_softmax():
    scores = torch.randn(3, 4, 9, generator=torch.Generator().manual_seed(0), dtype=F64) * 5
    scores[0, 1, 3:] = float("-inf")  # partially masked rows behave like torch's
    torch.testing.assert_close(stable_softmax(scores), torch.softmax(scores, -1), rtol=0, atol=TOL64)
    torch.testing.assert_close(stable_softmax(scores, dim=0), torch.softmax(scores, 0),
                               rtol=0, atol=TOL64)


def test_stable_softmax_does_not_overflow_where_naive_softmax_does():
    scores = torch.tensor([[100.0, 99.0, 90.0, -5.0]], dtype=torch.float32)  # exp(100) > float32 max
    naive = scores.exp() / scores.exp().sum(-1, keepdim=True)
    assert torch.isnan(naive).any()
    stable = stable_softmax(scores)
    assert torch.isfinite(stable).all()
    ref = torch.softmax(scores.double(), -1).float()
    torch.testing.assert_close(stable, ref, rtol=1e-6, atol=1e-7)  # float32 rounding


def test_stable_softmax_does_not_underflow_where_naive_softmax_does():
    scores = torch.tensor([[-1000.0, -1001.0, -1002.0]], dtype=torch.float32)  # exp(-1000) == 0
    naive = scores.exp() / scores.exp().sum(-1, keepdim=True)
    assert torch.isnan(naive).all()  # 0 / 0
    torch.testing.assert_close(stable_softmax(scores), torch.softmax(scores.double(), -1).float(),
                               rtol=1e-6, atol=1e-7)


# -- causality --------------------------------------------------------------------------------

def test_causal_outputs_do_not_depend_on_future_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, generator=g, dtype=F64)
    w_q, w_k, w_v = (torch.randn(6, 6, generator=g, dtype=F64) for _ in range(3))
    y = self_attention(x, w_q, w_k, w_v, causal=True)
    for t in range(7):
        x_changed = x.clone()
        x_changed[:, t + 1:] = torch.randn(2, 7 - t, 6, generator=g, dtype=F64) * 10
        y_changed = self_attention(x_changed, w_q, w_k, w_v, causal=True)
        assert torch.equal(y_changed[:, : t + 1], y[:, : t + 1])  # bit-identical
        assert not torch.equal(y_changed[:, t + 1:], y[:, t + 1:])


def test_causal_gradients_from_future_inputs_are_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 4, generator=g, dtype=F64)
    w_q, w_k, w_v = (torch.randn(4, 4, generator=g, dtype=F64) for _ in range(3))
    jac = torch.autograd.functional.jacobian(lambda x: self_attention(x, w_q, w_k, w_v, causal=True), x)
    jac = jac[0, :, :, 0]  # (t, out_dim, s, in_dim)
    for t in range(6):
        assert torch.all(jac[t, :, t + 1:] == 0)  # exactly zero: masked weights are exactly 0
        assert jac[t, :, : t + 1].abs().sum() > 0


def test_causal_mask_is_the_lower_triangle_for_square_inputs():
    assert torch.equal(causal_mask(4), torch.ones(4, 4, dtype=torch.bool).tril())


def test_causal_mask_is_bottom_right_aligned():
    mask = causal_mask(2, 5)  # queries at positions 3 and 4 of 5
    assert mask.tolist() == [[True, True, True, True, False], [True] * 5]


@pytest.mark.parametrize("q_len, k_len", [(1, 1), (3, 7), (5, 5), (1, 6)])
def test_causal_mask_equals_torchs_causal_lower_right(q_len, k_len):
    # The chapter and the notation page name torch's own bottom-right mask as the equivalent.
    from torch.nn.attention.bias import causal_lower_right
    q, k, v = make_qkv(batch=1, heads=1, q_len=q_len, k_len=k_len)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q_len, k_len))
    ours = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(q_len, k_len))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL64)


@pytest.mark.parametrize("q_len, k_len", [(5, 5), (3, 7)])
def test_sdpa_with_a_mask_and_causal_ands_the_bottom_right_mask_in(q_len, k_len):
    # sdpa builds the causal mask itself whenever a mask is given (is_causal cannot be
    # combined with attn_mask), for square inputs too; the result must equal the AND.
    q, k, v = make_qkv(q_len=q_len, k_len=k_len)
    mask = random_mask((2, 1, q_len, k_len), seed=3)  # key 0 is kept by it and by causal_mask
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask & causal_mask(q_len, k_len))
    torch.testing.assert_close(sdpa(q, k, v, mask, causal=True), expected, rtol=0, atol=TOL64)


# -- permutation equivariance -----------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(perm=st.permutations(range(6)))
def test_self_attention_without_positions_is_permutation_equivariant(perm):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 6, 5, generator=g, dtype=F64)
    w_q, w_k, w_v = (torch.randn(5, 5, generator=g, dtype=F64) for _ in range(3))
    perm = torch.tensor(perm)
    y = self_attention(x, w_q, w_k, w_v)
    y_permuted = self_attention(x[:, perm], w_q, w_k, w_v)
    torch.testing.assert_close(y_permuted, y[:, perm], rtol=0, atol=TOL64)


# -- footnote 4 of Vaswani et al. (2017) ------------------------------------------------------

@pytest.mark.parametrize("d_k", [4, 64, 256])
def test_variance_of_dot_product_of_standard_normal_vectors_is_d_k(d_k):
    # q.k = sum of d_k products q_i k_i, each of mean 0 and variance 1, so Var = d_k.
    # The sample variance s^2 of N draws has standard error sqrt((mu4 - d^2) / N) with
    # mu4 = E[(q.k)^4] = 3 d^2 + 6 d, i.e. relative error sqrt((2 + 6/d) / N); we allow 5 of them.
    n = 20_000
    g = torch.Generator().manual_seed(4)
    q = torch.randn(n, d_k, generator=g, dtype=F64)
    k = torch.randn(n, d_k, generator=g, dtype=F64)
    sample_var = (q * k).sum(-1).var()
    bound = 5 * math.sqrt((2 + 6 / d_k) / n)
    assert abs(sample_var / d_k - 1) < bound
    scaled_var = ((q * k).sum(-1) / math.sqrt(d_k)).var()
    assert abs(scaled_var - 1) < bound  # dividing by sqrt(d_k) restores unit variance


# -- gradients --------------------------------------------------------------------------------

@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_float64(causal):
    q, k, v = (t.requires_grad_() for t in make_qkv(batch=1, heads=2, q_len=3, k_len=4, d_k=3, seed=3))
    mask = random_mask((1, 1, 3, 4), seed=3)

    def attention_output(q, k, v):
        return scaled_dot_product_attention(q, k, v, mask, causal=causal)

    assert torch.autograd.gradcheck(attention_output, (q, k, v))


# -- bad input --------------------------------------------------------------------------------

def test_wrong_rank_is_rejected_naming_the_argument():
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match=r"q must have 4 dimensions"):
        scaled_dot_product_attention(q[0], k, v)
    with pytest.raises(ValueError, match=r"v must have 4 dimensions"):
        sdpa(q, k, v[0])


def test_mismatched_head_dim_is_rejected():
    q, k, v = make_qkv()
    with pytest.raises(ValueError, match=r"q and k must have the same head_dim"):
        scaled_dot_product_attention(q, k[..., :-1], v)


def test_heads_not_a_multiple_of_kv_heads_is_rejected():
    q, k, v = make_qkv(heads=4, kv_heads=3)
    with pytest.raises(ValueError, match=r"q has 4 heads, which is not a multiple of the 3 heads of k"):
        scaled_dot_product_attention(q, k, v)


def test_non_boolean_mask_is_rejected():
    q, k, v = make_qkv()
    with pytest.raises(TypeError, match=r"mask must be a boolean tensor"):
        scaled_dot_product_attention(q, k, v, torch.zeros(5, 5))
    with pytest.raises(TypeError, match=r"mask must be a boolean tensor"):
        sdpa(q, k, v, torch.ones(5, 5, dtype=torch.int64))


def test_mask_that_does_not_broadcast_is_rejected():
    q, k, v = make_qkv(q_len=5, k_len=6)
    with pytest.raises(ValueError, match=r"mask has shape \(6, 5\), which does not broadcast"):
        scaled_dot_product_attention(q, k, v, torch.ones(6, 5, dtype=torch.bool))


def test_causal_mask_with_fewer_keys_than_queries_is_rejected():
    with pytest.raises(ValueError, match=r"k_len >= q_len"):
        causal_mask(5, 3)
    q, k, v = make_qkv(q_len=5, k_len=3)
    with pytest.raises(ValueError, match=r"k_len >= q_len"):
        scaled_dot_product_attention(q, k, v, causal=True)


def test_padding_mask_with_lengths_beyond_max_len_is_rejected():
    with pytest.raises(ValueError, match=r"max_len=4 is shorter than the longest sequence \(6\)"):
        padding_mask(torch.tensor([2, 6]), max_len=4)


def test_padding_mask_marks_real_tokens_true():
    keep = padding_mask(torch.tensor([3, 1, 0]), max_len=4)
    assert keep.tolist() == [[True, True, True, False], [True, False, False, False], [False] * 4]


def test_combine_masks_is_a_logical_and_that_skips_none():
    a = torch.tensor([True, True, False])
    b = torch.tensor([True, False, False])
    assert combine_masks(None, None) is None
    assert combine_masks(a, None) is a
    assert combine_masks(a, None, b).tolist() == [True, False, False]
