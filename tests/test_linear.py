"""Linear attention (Katharopoulos et al. 2020): its parallel, chunked, prefix-sum and
recurrent forms are one computation; the quadratic masked form is the reference."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention.linear import (
    causal_kernelized_attention,
    causal_kernelized_attention_prefix_sum,
    causal_linear_attention_recurrent,
    elu_feature_map,
    kernelized_attention,
    linear_attention,
    linear_attention_quadratic,
    linear_attention_step,
)

# Every identity below is exact algebra; in float64 the forms differ only by rounding
# in sums of a few dozen O(1) terms, ~1e-15 relative. 1e-12 leaves room and still
# catches any real mistake (a missing or extra key changes outputs by ~1e-2).
TIGHT = {"atol": 1e-12, "rtol": 1e-12}


def random_qkv(batch=2, heads=3, n=37, d=5, d_v=4, seed=0, kv_heads=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    kv_heads = heads if kv_heads is None else kv_heads
    q = torch.randn(batch, heads, n, d, generator=g, dtype=dtype)
    k = torch.randn(batch, kv_heads, n, d, generator=g, dtype=dtype)
    v = torch.randn(batch, kv_heads, n, d_v, generator=g, dtype=dtype)
    return q, k, v


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(min_value=-700, max_value=1e6), min_size=1, max_size=32))
def test_elu_feature_map_is_positive(values):
    # elu(x) + 1 = exp(x) > 0 for x < 0; exp underflows to 0 in float64 below about
    # -745, hence the lower bound of the inputs.
    x = torch.tensor(values, dtype=torch.float64)
    assert bool((elu_feature_map(x) > 0).all())


def test_elu_feature_map_stays_positive_where_elu_plus_one_rounds_to_zero():
    # In float32, elu(-20) + 1 = (exp(-20) - 1) + 1 rounds to exactly 0 (exp(-20) ≈ 2e-9
    # is below half an ulp of 1); the feature map must return exp(-20) instead.
    x = torch.tensor([-20.0, -80.0])
    assert bool((torch.nn.functional.elu(x) + 1 == 0).all())  # the pitfall is real
    torch.testing.assert_close(elu_feature_map(x), torch.exp(x), rtol=1e-6, atol=0.0)


def test_noncausal_linear_attention_equals_quadratic_form():
    q, k, v = random_qkv()
    reference = linear_attention_quadratic(q, k, v)
    torch.testing.assert_close(linear_attention(q, k, v), reference, **TIGHT)


def test_noncausal_linear_attention_handles_cross_attention_lengths():
    q, _, _ = random_qkv(n=5, seed=1)
    _, k, v = random_qkv(n=11, seed=2)
    reference, weights = linear_attention_quadratic(q, k, v, return_weights=True)
    assert weights.shape == (2, 3, 5, 11)
    torch.testing.assert_close(linear_attention(q, k, v), reference, **TIGHT)


def test_causal_linear_attention_equals_masked_quadratic_form():
    q, k, v = random_qkv()
    reference = linear_attention_quadratic(q, k, v, causal=True)
    torch.testing.assert_close(linear_attention(q, k, v, causal=True), reference, **TIGHT)


def test_causal_linear_attention_equals_its_recurrence():
    q, k, v = random_qkv()
    recurrent = causal_linear_attention_recurrent(q, k, v)
    torch.testing.assert_close(linear_attention(q, k, v, causal=True), recurrent, **TIGHT)


def test_prefix_sum_form_equals_masked_quadratic_form():
    q, k, v = random_qkv()
    reference = linear_attention_quadratic(q, k, v, causal=True)
    prefix = causal_kernelized_attention_prefix_sum(elu_feature_map(q), elu_feature_map(k), v)
    torch.testing.assert_close(prefix, reference, **TIGHT)


@pytest.mark.parametrize(
    "form", [causal_kernelized_attention, causal_kernelized_attention_prefix_sum])
@pytest.mark.parametrize("chunk_size", [1, 3, 8, 36, 37, 100])
def test_chunked_causal_equals_unchunked(form, chunk_size):
    # chunk_size = n (37) is the unchunked computation; 1, 3, 8 and 36 cut the sequence
    # unevenly, so the carried state crosses full and ragged chunks; 100 > n is one chunk.
    q, k, v = random_qkv(n=37)
    phi_q, phi_k = elu_feature_map(q), elu_feature_map(k)
    unchunked = form(phi_q, phi_k, v, chunk_size=37)
    torch.testing.assert_close(form(phi_q, phi_k, v, chunk_size=chunk_size), unchunked, **TIGHT)


def test_causal_quadratic_weights_are_lower_triangular_and_normalised():
    q, k, v = random_qkv(n=9)
    _, weights = linear_attention_quadratic(q, k, v, causal=True, return_weights=True)
    assert bool((weights.triu(diagonal=1) == 0).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 9, dtype=torch.float64), **TIGHT)


def test_recurrent_state_has_a_fixed_size():
    q, k, v = random_qkv(n=6, d=5, d_v=4)
    state = None
    for t in range(6):
        _, state = linear_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], state)
        kv_state, key_sum = state
        assert kv_state.shape == (2, 3, 5, 4) and key_sum.shape == (2, 3, 5)  # (m, d_v) and (m,)


def test_feature_map_is_pluggable():
    # φ(x) = [1] (one constant feature) makes every key equally similar to every
    # query: non-causal attention returns mean(V), causal attention the running mean.
    def constant_feature(x):
        return torch.ones(*x.shape[:-1], 1, dtype=x.dtype)

    q, k, v = random_qkv(n=8)
    mean = v.mean(dim=2, keepdim=True).expand_as(v)
    running_mean = v.cumsum(dim=2) / torch.arange(1, 9, dtype=v.dtype)[:, None]
    torch.testing.assert_close(
        linear_attention(q, k, v, feature_map=constant_feature), mean, **TIGHT)
    for out in (linear_attention(q, k, v, causal=True, feature_map=constant_feature, chunk_size=3),
                causal_linear_attention_recurrent(q, k, v, feature_map=constant_feature)):
        torch.testing.assert_close(out, running_mean, **TIGHT)


def test_padded_keys_change_nothing():
    q, k, v = random_qkv(batch=1, n=10)
    keep = torch.tensor([[True] * 7 + [False] * 3])
    garbage_k, garbage_v = k.clone(), v.clone()
    garbage_k[:, :, 7:], garbage_v[:, :, 7:] = 100.0, -100.0
    expected = linear_attention(q, k[:, :, :7], v[:, :, :7])
    got = linear_attention(q, garbage_k, garbage_v, key_padding_mask=keep)
    torch.testing.assert_close(got, expected, **TIGHT)


def test_causal_right_padding_leaves_real_positions_unchanged():
    q, k, v = random_qkv(batch=1, n=10)
    keep = torch.tensor([[True] * 7 + [False] * 3])
    expected = linear_attention(q[:, :, :7], k[:, :, :7], v[:, :, :7], causal=True)
    got = linear_attention(q, k, v, causal=True, key_padding_mask=keep, chunk_size=4)
    torch.testing.assert_close(got[:, :, :7], expected, **TIGHT)


def test_query_that_sees_no_key_gets_zeros_not_nan():
    # Left padding with a causal mask: the first query's only visible key is padding.
    q, k, v = random_qkv(batch=1, n=6)
    keep = torch.tensor([[False, True, True, True, True, True]])
    out = linear_attention(q, k, v, causal=True, key_padding_mask=keep)
    assert bool(torch.isfinite(out).all())
    assert bool((out[:, :, 0] == 0).all())


def test_grouped_kv_heads_equal_repeated_kv_heads():
    q, k, v = random_qkv(heads=4, kv_heads=2)
    repeated = [x.repeat_interleave(2, dim=1) for x in (k, v)]
    for causal in (False, True):
        torch.testing.assert_close(linear_attention(q, k, v, causal=causal),
                                   linear_attention(q, *repeated, causal=causal), **TIGHT)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), causal=st.booleans())
def test_output_lies_within_the_range_of_the_values(seed, n, causal):
    # Every weight φ(q_i)ᵀφ(k_j) / Σ is positive and each row sums to 1, so each output
    # channel is a convex combination of that channel of the visible values.
    q, k, v = random_qkv(batch=1, heads=2, n=n, seed=seed)
    out = linear_attention(q, k, v, causal=causal, chunk_size=5)
    slack = 1e-12  # rounding of a convex combination of O(1) numbers
    assert bool((out >= v.amin(dim=2, keepdim=True) - slack).all())
    assert bool((out <= v.amax(dim=2, keepdim=True) + slack).all())


def _largest_saved_tensor(fn, *inputs):
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs).sum().backward()
    return max(sizes)


@pytest.mark.parametrize("causal", [False, True])
def test_no_n_by_n_tensor_is_saved_for_backward(causal):
    # Linear memory, checked without timing: with n = 256, d = 8 and chunks of 32 the
    # largest tensor autograd keeps is a few thousand numbers, far below n² = 65,536.
    q, k, v = (t.requires_grad_() for t in random_qkv(batch=1, heads=1, n=256, d=8, d_v=8))
    largest = _largest_saved_tensor(
        lambda *x: linear_attention(*x, causal=causal, chunk_size=32), q, k, v)
    assert largest < 256 * 256 // 8


@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_gradcheck(causal):
    q, k, v = (t.requires_grad_() for t in random_qkv(batch=1, heads=1, n=5, d=3, d_v=2))
    assert torch.autograd.gradcheck(
        lambda q, k, v: linear_attention(q, k, v, causal=causal, chunk_size=3), (q, k, v))


def test_prefix_sum_and_recurrent_forms_gradcheck():
    q, k, v = (t.requires_grad_() for t in random_qkv(batch=1, heads=1, n=5, d=3, d_v=2))
    assert torch.autograd.gradcheck(
        lambda q, k, v: causal_kernelized_attention_prefix_sum(
            elu_feature_map(q), elu_feature_map(k), v, chunk_size=2), (q, k, v))
    assert torch.autograd.gradcheck(causal_linear_attention_recurrent, (q, k, v))


def test_kernelized_attention_rejects_feature_size_mismatch():
    q, k, v = random_qkv()
    with pytest.raises(ValueError, match="head_dim"):
        kernelized_attention(q, k[..., :2], v)


def test_causal_needs_equal_lengths():
    q, _, _ = random_qkv(n=4)
    _, k, v = random_qkv(n=6)
    with pytest.raises(ValueError, match="q_len == k_len"):
        linear_attention(q, k, v, causal=True)


def test_bad_key_padding_mask_is_rejected():
    q, k, v = random_qkv(n=4)
    with pytest.raises(ValueError, match="key_padding_mask"):
        linear_attention(q, k, v, key_padding_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_padding_mask"):
        linear_attention(q, k, v, key_padding_mask=torch.ones(2, 4))


def test_bad_chunk_size_and_feature_map_are_rejected():
    q, k, v = random_qkv(n=4)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention(q, k, v, causal=True, chunk_size=0)
    with pytest.raises(TypeError, match="feature_map"):
        linear_attention(q, k, v, feature_map="elu")
