"""Grouped-query and multi-query attention: limits, the checkpoint conversion, the kernels."""
import pytest
import torch
import torch.nn.functional as F
from einops import repeat
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention import MultiHeadAttention, repeat_kv, scaled_dot_product_attention
from attnbook.attention.gqa import (
    grouped_query_attention, mean_pool_kv_heads, mha_to_gqa, repeat_kv_vs_enable_gqa,
)
from attnbook.attention.kv_cache import CausalSelfAttention, KVCache

D_MODEL, HEADS = 16, 4
HEAD_DIM = D_MODEL // HEADS


def make_mha(seed=0, bias=True):
    torch.manual_seed(seed)
    mha = MultiHeadAttention(D_MODEL, HEADS, bias=bias, dtype=torch.float64)
    with torch.no_grad():  # non-zero biases so that their pooling is tested too
        if bias:
            mha.in_proj_bias.normal_()
    return mha


def inputs(batch=2, seq=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, D_MODEL, dtype=torch.float64, generator=generator)


def make_heads_identical_within_groups(mha, groups):
    """Overwrite K and V heads so that the heads of each group equal their group mean."""
    with torch.no_grad():
        for rows in (slice(D_MODEL, 2 * D_MODEL), slice(2 * D_MODEL, 3 * D_MODEL)):
            for tensor in (mha.in_proj_weight, mha.in_proj_bias):
                pooled = mean_pool_kv_heads(tensor[rows], HEADS, groups)
                r = HEADS // groups
                tensor[rows] = repeat(pooled, "(g d) ... -> (g r d) ...", g=groups, r=r)
    return mha


# --- the limits ----------------------------------------------------------------------------

def test_gqa_with_as_many_groups_as_heads_is_mha():
    mha, x = make_mha(), inputs()
    gqa = mha_to_gqa(mha, HEADS)
    assert gqa.num_kv_heads == HEADS
    # Same weights and the same code path: bitwise equal.
    assert torch.equal(gqa(x, causal=True)[0], mha(x, causal=True)[0])


def test_one_group_is_multi_query_attention():
    mha = make_mha()
    mqa = mha_to_gqa(mha, 1)
    assert mqa.num_kv_heads == 1
    # all query heads, one k head, one v head
    assert mqa.in_proj_weight.shape == ((HEADS + 2) * HEAD_DIM, D_MODEL)
    k_heads = mha.in_proj_weight[D_MODEL:2 * D_MODEL].view(HEADS, HEAD_DIM, D_MODEL)
    torch.testing.assert_close(mqa.in_proj_weight[HEADS * HEAD_DIM:][:HEAD_DIM], k_heads.mean(0))


# --- the conversion ------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [1, 2, 4])
def test_mean_pooled_conversion_is_exact_when_heads_within_a_group_are_identical(groups):
    mha, x = make_heads_identical_within_groups(make_mha(), groups), inputs()
    gqa = mha_to_gqa(mha, groups)
    # The mean of identical heads is that head; only float64 round-off of the mean remains.
    torch.testing.assert_close(gqa(x)[0], mha(x)[0], rtol=0, atol=1e-12)


def test_mean_pooled_conversion_is_an_approximation_when_heads_differ():
    mha, x = make_mha(), inputs()
    assert (mha_to_gqa(mha, 2)(x)[0] - mha(x)[0]).abs().max() > 1e-3


def test_mean_pooling_averages_the_heads_that_repeat_kv_maps_back():
    weight = torch.randn(HEADS * HEAD_DIM, 3, dtype=torch.float64)
    pooled = mean_pool_kv_heads(weight, HEADS, 2).view(2, HEAD_DIM, 3)
    heads = weight.view(HEADS, HEAD_DIM, 3)
    torch.testing.assert_close(pooled[0], (heads[0] + heads[1]) / 2)  # group 0 = heads 0, 1
    torch.testing.assert_close(pooled[1], (heads[2] + heads[3]) / 2)  # group 1 = heads 2, 3
    # repeat_kv sends group g back to query heads g*r ... g*r + r - 1: the same heads.
    back = repeat_kv(pooled[None], HEADS)[0]
    assert torch.equal(back[1], pooled[0]) and torch.equal(back[2], pooled[1])


def test_converted_checkpoint_runs_with_a_smaller_kv_cache():
    torch.manual_seed(0)
    layer = CausalSelfAttention(D_MODEL, HEADS, dtype=torch.float64)
    x = inputs(seq=5)
    sizes = {}
    for groups in (4, 2, 1):
        layer.mha = mha_to_gqa(make_mha(), groups)
        cache = KVCache(1)
        with torch.no_grad():
            layer(x, cache)
        sizes[groups] = cache.nbytes
    assert sizes == {4: 4 * sizes[1], 2: 2 * sizes[1], 1: sizes[1]}  # bytes scale with the groups


# --- the kernels ---------------------------------------------------------------------------

def qkv(heads=4, kv_heads=2, q_len=5, k_len=7, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, h, n, 8, dtype=dtype, generator=g)
            for h, n in ((heads, q_len), (kv_heads, k_len), (kv_heads, k_len)))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_repeat_kv_equals_sdpa_enable_gqa(kv_heads, causal):
    q, k, v = qkv(kv_heads=kv_heads, k_len=5)
    # Same kernel on the same numbers: copying kv heads only changes memory layout (float64).
    assert repeat_kv_vs_enable_gqa(q, k, v, causal=causal) <= 1e-12
    q32, k32, v32 = q.float(), k.float(), v.float()
    assert repeat_kv_vs_enable_gqa(q32, k32, v32, causal=causal) <= 1e-6  # float32 round-off


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
def test_grouped_einsum_equals_repeated_kv_heads(kv_heads):
    q, k, v = qkv(kv_heads=kv_heads)
    mask = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[..., 0] = True  # every query keeps at least one key
    out, weights = grouped_query_attention(q, k, v, mask, causal=True, return_weights=True)
    k_copies, v_copies = repeat_kv(k, 4), repeat_kv(v, 4)
    ref_out, ref_weights = scaled_dot_product_attention(q, k_copies, v_copies, mask, causal=True, return_weights=True)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)  # float64, sums in another order
    torch.testing.assert_close(weights, ref_weights, rtol=0, atol=1e-12)


def test_grouped_einsum_equals_torch_enable_gqa():
    q, k, v = qkv()
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    out = grouped_query_attention(q, k, v)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)  # float64 round-off


@settings(max_examples=25, deadline=None)
@given(groups=st.integers(1, 3), per_group=st.integers(1, 3), q_len=st.integers(1, 5),
       extra_keys=st.integers(0, 4), causal=st.booleans(), seed=st.integers(0, 2**16))
def test_gqa_weights_rows_sum_to_one(groups, per_group, q_len, extra_keys, causal, seed):
    q, k, v = qkv(groups * per_group, groups, q_len, q_len + extra_keys, seed=seed)
    _, weights = grouped_query_attention(q, k, v, causal=causal, return_weights=True)
    ones = torch.ones_like(weights[..., 0])
    torch.testing.assert_close(weights.sum(-1), ones, rtol=0, atol=1e-12)  # float64 round-off
    assert (weights >= 0).all()


def test_gradcheck_grouped_query_attention_float64():
    q, k, v = (t.requires_grad_() for t in qkv(heads=2, kv_heads=1, q_len=3, k_len=4))
    def attend(q, k, v):
        return grouped_query_attention(q, k, v, causal=True)

    assert torch.autograd.gradcheck(attend, (q, k, v))


# --- bad input -----------------------------------------------------------------------------

def test_conversion_rejects_groups_that_do_not_divide_the_heads():
    with pytest.raises(ValueError, match="num_heads=4 is not divisible by num_groups=3"):
        mha_to_gqa(make_mha(), 3)
    with pytest.raises(ValueError, match="num_groups must be a positive integer"):
        mha_to_gqa(make_mha(), 0)


def test_conversion_rejects_a_model_that_is_already_grouped():
    with pytest.raises(ValueError, match="num_kv_heads=2"):
        mha_to_gqa(mha_to_gqa(make_mha(), 2), 1)
    with pytest.raises(TypeError, match="mha must be a MultiHeadAttention"):
        mha_to_gqa(torch.nn.Linear(2, 2), 1)


def test_grouped_attention_rejects_heads_that_do_not_share_evenly():
    q, k, v = qkv(heads=3, kv_heads=2)
    with pytest.raises(ValueError, match="not a multiple of the 2 heads"):
        grouped_query_attention(q, k, v)
    q, k, v = qkv()
    with pytest.raises(TypeError, match="mask must be a boolean tensor"):
        grouped_query_attention(q, k, v, torch.zeros(5, 7))
