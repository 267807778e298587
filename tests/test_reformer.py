"""Reformer LSH attention: hashing, sorting, chunked attention and its limits."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.functional import normalize

from attnbook.attention.reformer import (
    SELF_SCORE,
    LSHSelfAttention,
    full_shared_qk_attention,
    lsh_attention,
    lsh_hash,
    sort_by_bucket,
    unsort,
)
from attnbook.attention.multihead import merge_heads, split_heads

# float64 identities: the same sums in another order agree to a few ulps; 1e-12 is far
# below any real difference (a wrongly included key changes outputs by ~1e-2).
EXACT = dict(rtol=0, atol=1e-12)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def qk_v(batch=2, heads=3, seq=16, dim=8, v_dim=5, seed=0):
    g = seeded(seed)
    return (torch.randn(batch, heads, seq, dim, generator=g, dtype=torch.float64),
            torch.randn(batch, heads, seq, v_dim, generator=g, dtype=torch.float64))


def effective_weights(qk, **kwargs):
    """lsh_attention applied to identity values returns the (seq × seq) weights it used."""
    batch, heads, seq, _ = qk.shape
    identity = torch.eye(seq, dtype=qk.dtype).expand(batch, heads, seq, seq)
    return lsh_attention(qk, identity, **kwargs)


@pytest.mark.parametrize("causal", [False, True])
def test_one_bucket_and_one_chunk_equal_full_shared_qk_attention(causal):
    qk, v = qk_v()
    out = lsh_attention(qk, v, num_buckets=1, chunk_size=16, num_rounds=1, generator=seeded(),
                        causal=causal)
    expected = full_shared_qk_attention(qk, v, causal=causal)
    torch.testing.assert_close(out, expected, **EXACT)


def test_identical_rounds_combine_to_the_single_round_result():
    # With one bucket every round sees every key: each round's output is the same, their
    # log-sum-exps are equal, so the round weights are 1/3 each and the mix changes nothing.
    qk, v = qk_v()
    out = lsh_attention(qk, v, num_buckets=1, chunk_size=16, num_rounds=3, generator=seeded())
    torch.testing.assert_close(out, full_shared_qk_attention(qk, v), **EXACT)


def test_full_shared_qk_attention_gives_no_weight_to_the_token_itself():
    qk, v = qk_v()
    _, weights = full_shared_qk_attention(qk, v, return_weights=True)
    assert weights.diagonal(dim1=-2, dim2=-1).max() < 1e-30    # exp(SELF_SCORE - typical score)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 16, dtype=torch.float64), **EXACT)


def test_a_token_attends_itself_when_nothing_else_is_available():
    qk, v = qk_v()
    _, weights = full_shared_qk_attention(qk, v, causal=True, return_weights=True)
    torch.testing.assert_close(weights[..., 0, 0], torch.ones(2, 3, dtype=torch.float64), **EXACT)
    lsh = effective_weights(qk, num_buckets=4, chunk_size=4, num_rounds=2, generator=seeded(),
                            causal=True)
    torch.testing.assert_close(lsh[..., 0, 0], torch.ones(2, 3, dtype=torch.float64), **EXACT)
    assert SELF_SCORE < 0


@settings(max_examples=25, deadline=None)
@given(buckets=st.lists(st.integers(0, 5), min_size=1, max_size=30), dim=st.integers(1, 4))
def test_unsort_after_sort_by_bucket_is_the_identity(buckets, dim):
    buckets = torch.tensor(buckets)
    x = torch.randn(len(buckets), dim, generator=seeded(len(buckets)))
    x_sorted, order = sort_by_bucket(x, buckets)
    assert torch.equal(unsort(x_sorted, order), x)


def test_sort_by_bucket_orders_by_bucket_then_position():
    buckets = torch.tensor([[2, 0, 1, 0, 2, 1, 0]])
    positions = torch.arange(7.0)[None, :, None]
    sorted_positions, order = sort_by_bucket(positions, buckets)
    assert order.tolist() == [[1, 3, 6, 2, 5, 0, 4]]
    assert sorted_positions[..., 0].tolist() == [[1.0, 3.0, 6.0, 2.0, 5.0, 0.0, 4.0]]


def test_hash_is_reproducible_from_the_generator_seed_and_in_range():
    qk, _ = qk_v()
    first = lsh_hash(qk, num_buckets=8, generator=seeded(3), num_rounds=4)
    again = lsh_hash(qk, num_buckets=8, generator=seeded(3), num_rounds=4)
    assert first.shape == (2, 3, 4, 16) and torch.equal(first, again)
    assert 0 <= first.min() and first.max() < 8
    assert not torch.equal(first, lsh_hash(qk, num_buckets=8, generator=seeded(4), num_rounds=4))


def test_collision_rate_rises_with_cosine_similarity():
    # Pairs (x, y) with cos(x, y) = c, each hashed by the same 4000 independent rotations.
    # The rate estimates P[h(x) = h(y)], which grows with c: the property LSH rests on (§2);
    # 4000 draws give a standard error < 0.008, far below the gaps between these bins.
    dim, cosines = 16, torch.tensor([-0.9, -0.5, 0.0, 0.5, 0.9, 0.99], dtype=torch.float64)
    g = seeded(0)
    x = normalize(torch.randn(len(cosines), dim, generator=g, dtype=torch.float64), dim=-1)
    noise = torch.randn(len(cosines), dim, generator=g, dtype=torch.float64)
    perpendicular = normalize(noise - (noise * x).sum(-1, keepdim=True) * x, dim=-1)
    y = cosines[:, None] * x + (1 - cosines[:, None] ** 2).sqrt() * perpendicular
    pairs = torch.stack([x, y], dim=1)[None]                      # (1, pairs as heads, 2, dim)
    buckets = lsh_hash(pairs, num_buckets=8, generator=seeded(1), num_rounds=4000)
    rates = (buckets[..., 0] == buckets[..., 1]).double().mean(dim=-1)[0]   # (pairs,)
    assert torch.all(rates[1:] > rates[:-1]), rates
    assert rates[-1] > 0.8 and rates[0] < 0.05   # nearly always together vs nearly never


@settings(max_examples=25, deadline=None)
@given(num_buckets=st.sampled_from([1, 2, 4, 8]), chunk_size=st.sampled_from([2, 4, 8]),
       num_rounds=st.integers(1, 4), causal=st.booleans(), seed=st.integers(0, 2**16))
def test_rows_of_the_effective_weights_are_probabilities(num_buckets, chunk_size, num_rounds, causal,
                                                         seed):
    qk, _ = qk_v(seq=16, seed=seed)
    weights = effective_weights(qk, num_buckets=num_buckets, chunk_size=chunk_size,
                                num_rounds=num_rounds, generator=seeded(seed), causal=causal)
    assert weights.min() >= 0
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 16, dtype=torch.float64), **EXACT)


def test_constant_values_come_out_unchanged_with_several_rounds():
    qk, _ = qk_v()
    v = torch.full((2, 3, 16, 4), 2.5, dtype=torch.float64)
    out = lsh_attention(qk, v, num_buckets=4, chunk_size=4, num_rounds=3, generator=seeded())
    torch.testing.assert_close(out, v, **EXACT)


def test_causal_lsh_attention_never_attends_the_future():
    qk, _ = qk_v(seq=32)
    weights = effective_weights(qk, num_buckets=4, chunk_size=4, num_rounds=3, generator=seeded(),
                                causal=True)
    assert torch.all(weights.triu(diagonal=1) == 0)


def test_causal_outputs_do_not_depend_on_future_values():
    qk, v = qk_v(seq=32)
    v = v.clone().requires_grad_()
    out = lsh_attention(qk, v, num_buckets=4, chunk_size=4, num_rounds=2, generator=seeded(),
                        causal=True)
    out[:, :, 10].sum().backward()
    assert torch.all(v.grad[:, :, 11:] == 0)


def test_each_query_sees_at_most_two_chunks_per_round():
    qk, _ = qk_v(seq=32)
    weights = effective_weights(qk, num_buckets=8, chunk_size=4, num_rounds=1, generator=seeded())
    assert (weights > 0).sum(-1).max() <= 2 * 4 - 1   # its chunk and the previous, minus itself


def test_lsh_attention_returns_buckets_on_request():
    qk, v = qk_v()
    out, buckets = lsh_attention(qk, v, num_buckets=4, chunk_size=4, num_rounds=2, generator=seeded(5),
                                 return_buckets=True)
    assert out.shape == v.shape
    assert torch.equal(buckets, lsh_hash(qk, num_buckets=4, generator=seeded(5), num_rounds=2))


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_passes(causal):
    qk, v = (x.requires_grad_() for x in qk_v(batch=1, heads=2, seq=8, dim=4, v_dim=3))
    # A fresh generator per call: every evaluation must hash with the same rotations.
    fn = lambda qk, v: lsh_attention(qk, v, num_buckets=4, chunk_size=4, num_rounds=2,
                                      generator=seeded(7), causal=causal)
    assert torch.autograd.gradcheck(fn, (qk, v))


def test_module_equals_the_functional_form_with_its_weights():
    torch.manual_seed(0)
    layer = LSHSelfAttention(d_model=12, num_heads=3, num_buckets=4, chunk_size=4, num_rounds=2,
                             causal=True)
    x = torch.randn(2, 8, 12)
    qk, v = split_heads(layer.qk_proj(x), 3), split_heads(layer.v_proj(x), 3)
    expected = layer.out_proj(merge_heads(lsh_attention(qk, v, num_buckets=4, chunk_size=4, num_rounds=2,
                                                             generator=seeded(), causal=True)))
    torch.testing.assert_close(layer(x, seeded()), expected, rtol=0, atol=0)


def test_num_buckets_must_be_one_or_even():
    qk, v = qk_v()
    with pytest.raises(ValueError, match="num_buckets"):
        lsh_attention(qk, v, num_buckets=3, chunk_size=4, num_rounds=1, generator=seeded())


def test_sequence_must_be_a_multiple_of_the_chunk_size():
    qk, v = qk_v(seq=10)
    with pytest.raises(ValueError, match="seq=10 is not divisible by chunk_size=4"):
        lsh_attention(qk, v, num_buckets=2, chunk_size=4, num_rounds=1, generator=seeded())


def test_generator_must_be_passed_explicitly():
    qk, v = qk_v()
    with pytest.raises(TypeError, match="generator"):
        lsh_attention(qk, v, num_buckets=2, chunk_size=4, num_rounds=1, generator=0)


def test_qk_and_v_must_agree_in_length():
    qk, v = qk_v()
    with pytest.raises(ValueError, match="qk and v must agree"):
        lsh_attention(qk, v[:, :, :8], num_buckets=2, chunk_size=4, num_rounds=1,
                      generator=seeded())


def test_qk_must_have_four_dimensions():
    qk, v = qk_v()
    with pytest.raises(ValueError, match="qk must have 4 dimensions"):
        lsh_attention(qk[0], v, num_buckets=2, chunk_size=4, num_rounds=1, generator=seeded())
