"""Positional information: sinusoidal, learned, Shaw relative, T5 buckets, RoPE and ALiBi.

Exact identities are checked in float64 (tolerance 1e-12 unless stated: the same maths in
another order). RoPE angles reach a few hundred radians in these tests; sin/cos of such
arguments are still accurate to ~1e-13, hence 1e-10 there.
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

from attnbook.attention.dot_product import scaled_dot_product_attention
from attnbook.attention.masks import causal_mask
from attnbook.attention.positional import (
    LearnedPositionalEmbedding,
    ShawRelativePosition,
    SinusoidalPositionalEncoding,
    T5RelativePositionBias,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    apply_rope_half_split,
    apply_rope_interleaved,
    attention_with_bias,
    relative_positions,
    position_angles,
    rope_layout_permutation,
    rotate_half,
    shaw_attention,
    shaw_relative_embeddings,
    sinusoidal_encoding,
    sinusoidal_shift_matrix,
    t5_relative_position_bucket,
)

F64 = torch.float64
EXACT = {"rtol": 0.0, "atol": 1e-12}
ROPE_TOL = {"rtol": 0.0, "atol": 1e-10}


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def is_toeplitz(matrix: torch.Tensor) -> bool:
    """Every diagonal constant: M[..., i, j] == M[..., i + 1, j + 1]."""
    return torch.equal(matrix[..., :-1, :-1], matrix[..., 1:, 1:])


# ---------------------------------------------------------------- absolute: sinusoidal, learned

def test_sinusoidal_encoding_matches_the_closed_form():
    d_model, seq_len = 8, 20
    encoding = sinusoidal_encoding(seq_len, d_model, dtype=F64)
    expected = torch.empty(seq_len, d_model, dtype=F64)
    for pos in range(seq_len):
        for i in range(d_model // 2):  # Vaswani et al., Section 3.5
            expected[pos, 2 * i] = math.sin(pos / 10000 ** (2 * i / d_model))
            expected[pos, 2 * i + 1] = math.cos(pos / 10000 ** (2 * i / d_model))
    torch.testing.assert_close(encoding, expected, **EXACT)


@settings(max_examples=25, deadline=None)
@given(shift=st.integers(-50, 50), half_d=st.integers(1, 8))
def test_sinusoidal_shift_is_one_fixed_rotation_for_every_position(shift, half_d):
    d_model = 2 * half_d
    encoding = sinusoidal_encoding(200, d_model, dtype=F64)
    shift_matrix = sinusoidal_shift_matrix(shift, d_model)  # built without knowing pos
    rows = torch.arange(max(0, -shift), min(200, 200 - shift))
    torch.testing.assert_close(encoding[rows + shift], encoding[rows] @ shift_matrix.T, **ROPE_TOL)
    torch.testing.assert_close(shift_matrix @ shift_matrix.T, torch.eye(d_model, dtype=F64), **EXACT)


def test_sinusoidal_offset_equals_slicing_a_longer_encoding():
    torch.testing.assert_close(sinusoidal_encoding(5, 6, offset=7, dtype=F64),
                               sinusoidal_encoding(12, 6, dtype=F64)[7:], rtol=0, atol=0)


def test_sinusoidal_module_adds_the_encoding_to_its_input():
    x = randn(2, 5, 6)
    torch.testing.assert_close(SinusoidalPositionalEncoding(6)(x, offset=3),
                               x + sinusoidal_encoding(8, 6, dtype=F64)[3:], **EXACT)


def test_learned_positions_add_one_table_row_per_position():
    torch.manual_seed(0)
    layer = LearnedPositionalEmbedding(10, 4, dtype=F64)
    x = randn(2, 3, 4)
    torch.testing.assert_close(layer(x, offset=2), x + layer.table.weight[2:5], rtol=0, atol=0)
    with pytest.raises(ValueError, match="max_len=10"):
        layer(randn(1, 11, 4))


def test_absolute_encodings_reject_odd_widths_and_negative_offsets():
    with pytest.raises(ValueError, match="d_model must be even"):
        sinusoidal_encoding(4, 7)
    with pytest.raises(ValueError, match="offset must be >= 0"):
        sinusoidal_encoding(4, 8, offset=-1)
    with pytest.raises(ValueError, match="d_model"):
        LearnedPositionalEmbedding(10, 0)


# ---------------------------------------------------------------- relative positions, Shaw

def test_relative_positions_are_bottom_right_aligned_like_causal_mask():
    full = relative_positions(6)
    torch.testing.assert_close(relative_positions(2, 6), full[-2:], rtol=0, atol=0)
    assert torch.equal(relative_positions(2, 6) <= 0, causal_mask(2, 6))  # past and present = visible


def test_shaw_with_zero_relative_embeddings_equals_plain_attention():
    q, k, v = randn(2, 3, 5, 4, seed=1), randn(2, 3, 5, 4, seed=2), randn(2, 3, 5, 4, seed=3)
    zeros = torch.zeros(2 * 2 + 1, 4, dtype=F64)
    mask = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(0)) > 0.3
    for causal in (False, True):
        out, weights = shaw_attention(q, k, v, zeros, zeros, mask, causal=causal, return_weights=True)
        ref_out, ref_weights = scaled_dot_product_attention(q, k, v, mask, causal=causal, return_weights=True)
        torch.testing.assert_close(out, ref_out, **EXACT)
        torch.testing.assert_close(weights, ref_weights, **EXACT)


def test_shaw_attention_follows_its_equations_pair_by_pair():
    q, k, v = randn(1, 2, 4, 3, seed=1), randn(1, 2, 4, 3, seed=2), randn(1, 2, 4, 3, seed=3)
    w_key, w_value, max_distance = randn(5, 3, seed=4), randn(5, 3, seed=5), 2
    out = shaw_attention(q, k, v, w_key, w_value)
    expected = torch.empty_like(out)
    for h in range(2):
        for i in range(4):  # Shaw Eqs. 3-7, one pair at a time
            index = [max(-max_distance, min(max_distance, j - i)) + max_distance for j in range(4)]
            logits = torch.stack([q[0, h, i] @ (k[0, h, j] + w_key[index[j]]) for j in range(4)]) / math.sqrt(3)
            alpha = torch.softmax(logits, -1)
            expected[0, h, i] = sum(alpha[j] * (v[0, h, j] + w_value[index[j]]) for j in range(4))
    torch.testing.assert_close(out, expected, **EXACT)


def test_shaw_relative_embeddings_are_toeplitz_and_saturate_beyond_the_clip():
    table, max_distance = randn(2 * 3 + 1, 4), 3
    embeddings = shaw_relative_embeddings(table, 9, 9)  # (q, k, d)
    assert is_toeplitz(embeddings.permute(2, 0, 1))
    distance = relative_positions(9)
    assert torch.all(embeddings[distance <= -max_distance] == table[0])   # everything far behind
    assert torch.all(embeddings[distance >= max_distance] == table[-1])  # everything far ahead
    # With the same query at every position, the relative logits q·a^K_ij form a Toeplitz bias.
    q = randn(1, 1, 1, 4).expand(1, 1, 9, 4)
    bias = torch.einsum("bhid,ijd->bhij", q, embeddings)
    assert is_toeplitz(bias)


def test_shaw_attention_gradients_match_finite_differences():
    tensors = [randn(1, 2, 3, 2, seed=s) for s in (1, 2, 3)] + [randn(3, 2, seed=4), randn(3, 2, seed=5)]
    inputs = [t.clone().requires_grad_() for t in tensors]
    assert gradcheck(lambda q, k, v, wk, wv: shaw_attention(q, k, v, wk, wv, causal=True), inputs)


def test_shaw_module_shares_its_tables_across_heads_and_supports_grouped_kv():
    torch.manual_seed(0)
    layer = ShawRelativePosition(head_dim=4, max_distance=2, dtype=F64)
    q, k, v = randn(2, 4, 5, 4, seed=1), randn(2, 2, 5, 4, seed=2), randn(2, 2, 5, 4, seed=3)
    out, weights = layer(q, k, v, causal=True, return_weights=True)
    expected = shaw_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1),
                              layer.rel_key_table, layer.rel_value_table, causal=True,
                              return_weights=True)
    torch.testing.assert_close((out, weights), expected, **EXACT)


def test_shaw_table_must_have_an_odd_number_of_rows():
    with pytest.raises(ValueError, match="table must have 2 \\* max_distance \\+ 1 rows"):
        shaw_relative_embeddings(randn(4, 3), 3, 3)
    with pytest.raises(ValueError, match="max_distance"):
        ShawRelativePosition(4, 0)


# ---------------------------------------------------------------- T5 buckets

def test_t5_buckets_are_exact_for_short_distances():
    offsets = torch.arange(-7, 8)  # |j - i| < num_buckets / 4 = 8 when bidirectional
    buckets = t5_relative_position_bucket(offsets)
    expected = torch.where(offsets > 0, 16 + offsets, -offsets)  # keys ahead use the upper 16 buckets
    assert torch.equal(buckets, expected)
    assert len(set(buckets.tolist())) == 15  # one bucket per offset
    back = torch.arange(0, 16)  # causal: all 32 buckets look back, 16 of them exact
    assert torch.equal(t5_relative_position_bucket(-back, bidirectional=False), back)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_buckets_grow_with_distance_and_saturate_at_max_distance(bidirectional):
    distance = torch.arange(0, 400)
    behind = t5_relative_position_bucket(-distance, bidirectional=bidirectional)
    assert torch.all(behind[1:] >= behind[:-1])  # monotone in distance
    last = 15 if bidirectional else 31
    assert torch.all(behind[128:] == last) and behind.max() == last
    if bidirectional:
        ahead = t5_relative_position_bucket(distance, bidirectional=True)
        assert torch.all(ahead[1:] >= ahead[:-1]) and torch.all(ahead[128:] == 31)
    else:  # a causal model has no buckets for the future: they all share bucket 0
        assert torch.all(t5_relative_position_bucket(distance, bidirectional=False) == 0)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (16, 40)])
def test_t5_buckets_match_the_transformers_implementation(bidirectional, num_buckets, max_distance):
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    offsets = torch.arange(-300, 301)
    ours = t5_relative_position_bucket(offsets, bidirectional=bidirectional,
                                       num_buckets=num_buckets, max_distance=max_distance)
    theirs = t5.T5Attention._relative_position_bucket(offsets, bidirectional, num_buckets, max_distance)
    assert torch.equal(ours, theirs)


def test_t5_bias_is_toeplitz_per_head_and_aligned_bottom_right():
    torch.manual_seed(0)
    layer = T5RelativePositionBias(num_heads=3, dtype=F64)
    torch.nn.init.normal_(layer.table.weight)  # the table starts at zero; make it informative
    bias = layer(10)
    assert bias.shape == (1, 3, 10, 10)
    assert is_toeplitz(bias)
    torch.testing.assert_close(layer(4, 10), bias[:, :, -4:], rtol=0, atol=0)  # cached decoding
    buckets = t5_relative_position_bucket(relative_positions(10))
    torch.testing.assert_close(bias[0, 1], layer.table.weight[buckets, 1], rtol=0, atol=0)


def test_t5_bias_starts_as_plain_attention_and_learns():
    layer = T5RelativePositionBias(num_heads=2, dtype=F64)
    q, k, v = randn(1, 2, 5, 4, seed=1), randn(1, 2, 5, 4, seed=2), randn(1, 2, 5, 4, seed=3)
    out = attention_with_bias(q, k, v, layer(5), scale=1.0)  # T5 does not scale by 1/sqrt(d)
    torch.testing.assert_close(out, scaled_dot_product_attention(q, k, v, scale=1.0), **EXACT)
    out.sum().backward()
    assert layer.table.weight.grad.abs().sum() > 0


def test_t5_rejects_too_few_buckets():
    with pytest.raises(ValueError, match="num_buckets"):
        T5RelativePositionBias(4, num_buckets=2)
    with pytest.raises(ValueError, match="num_heads"):
        T5RelativePositionBias(0)


# ---------------------------------------------------------------- attention with an additive bias

def test_attention_with_zero_bias_equals_plain_attention():
    q, k, v = randn(2, 4, 5, 3, seed=1), randn(2, 2, 7, 3, seed=2), randn(2, 2, 7, 3, seed=3)
    out, weights = attention_with_bias(q, k, v, torch.zeros(4, 5, 7, dtype=F64), causal=True, return_weights=True)
    expected = scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)
    torch.testing.assert_close((out, weights), expected, **EXACT)


def test_attention_with_bias_gradients_match_finite_differences():
    tensors = [randn(1, 2, 3, 2, seed=s) for s in (1, 2, 3)] + [randn(2, 3, 3, seed=4)]
    inputs = [t.clone().requires_grad_() for t in tensors]
    assert gradcheck(lambda q, k, v, b: attention_with_bias(q, k, v, b, causal=True), inputs)


def test_attention_bias_must_be_float_and_broadcastable():
    q = randn(1, 2, 3, 4)
    with pytest.raises(TypeError, match="bias must be a float tensor"):
        attention_with_bias(q, q, q, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"bias has shape \(3, 2, 3\)"):
        attention_with_bias(q, q, q, randn(3, 2, 3))
    with pytest.raises(ValueError, match=r"bias has shape \(5, 2, 3, 3\)"):  # would enlarge the batch
        attention_with_bias(q, q, q, randn(5, 2, 3, 3))


# ---------------------------------------------------------------- RoPE

def rope_at(x: torch.Tensor, position: int, layout: str) -> torch.Tensor:
    """RoPE of a single vector x (head_dim,) placed at ``position``."""
    return apply_rope(x[None, None, None], layout=layout, offset=position)[0, 0, 0]


@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 200), n=st.integers(0, 200), shift=st.integers(0, 200),
       layout=st.sampled_from(["half_split", "interleaved"]), seed=st.integers(0, 10**6))
def test_rope_scores_depend_only_on_the_offset(m, n, shift, layout, seed):
    q, k = randn(8, seed=seed), randn(8, seed=seed + 1)
    score = rope_at(q, m, layout) @ rope_at(k, n, layout)
    shifted = rope_at(q, m + shift, layout) @ rope_at(k, n + shift, layout)
    torch.testing.assert_close(shifted, score, **ROPE_TOL)


@pytest.mark.parametrize("layout", ["half_split", "interleaved"])
def test_rope_preserves_norms_and_is_the_identity_at_position_zero(layout):
    x = randn(2, 3, 50, 8)
    rotated = apply_rope(x, layout=layout)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), **EXACT)
    torch.testing.assert_close(rotated[:, :, 0], x[:, :, 0], rtol=0, atol=0)  # R_0 = I exactly


def test_rope_layouts_agree_after_the_channel_permutation():
    x, angles = randn(2, 3, 9, 8), position_angles(9, 8, offset=4)
    perm = rope_layout_permutation(8)
    assert perm.tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    torch.testing.assert_close(apply_rope_half_split(x[..., perm], angles),
                               apply_rope_interleaved(x, angles)[..., perm], **EXACT)
    # Scores are invariant to a common channel permutation, so ported weights give the same attention.
    q, k = randn(1, 1, 9, 8, seed=1), randn(1, 1, 9, 8, seed=2)
    native = apply_rope(q, layout="interleaved") @ apply_rope(k, layout="interleaved").transpose(-2, -1)
    ported = apply_rope(q[..., perm]) @ apply_rope(k[..., perm]).transpose(-2, -1)
    torch.testing.assert_close(ported, native, **EXACT)


def test_mixing_rope_layouts_changes_the_scores():
    # Weights trained with interleaved RoPE, run with half-split RoPE and not permuted:
    # the classic porting bug. The scores change a lot, and nothing crashes.
    q, k = randn(1, 1, 16, 8, seed=1), randn(1, 1, 16, 8, seed=2)
    native = apply_rope(q, layout="interleaved") @ apply_rope(k, layout="interleaved").transpose(-2, -1)
    mixed = apply_rope(q, layout="half_split") @ apply_rope(k, layout="half_split").transpose(-2, -1)
    assert (mixed - native).abs().max() > 0.5 * native.abs().max()


def test_interleaved_rope_equals_meta_complex_multiplication():
    x, angles = randn(2, 3, 7, 8), position_angles(7, 8, base=500.0)
    as_complex = torch.view_as_complex(x.reshape(2, 3, 7, 4, 2).contiguous())  # x_2i + i·x_2i+1
    rotated = torch.view_as_real(as_complex * torch.polar(torch.ones_like(angles), angles)).flatten(-2)
    torch.testing.assert_close(apply_rope_interleaved(x, angles), rotated, **EXACT)


def test_half_split_rope_equals_x_cos_plus_rotate_half_sin():
    x, angles = randn(1, 2, 5, 6), position_angles(5, 6)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    torch.testing.assert_close(apply_rope_half_split(x, angles), x * cos + rotate_half(x) * sin, **EXACT)
    torch.testing.assert_close(rotate_half(rotate_half(x)), -x, rtol=0, atol=0)  # a quarter turn, twice


@pytest.mark.parametrize("layout", ["half_split", "interleaved"])
def test_rope_with_an_offset_equals_slicing_a_longer_sequence(layout):
    x = randn(2, 3, 12, 8)
    full = apply_rope(x, layout=layout)
    torch.testing.assert_close(apply_rope(x[:, :, 9:], layout=layout, offset=9), full[:, :, 9:], **EXACT)


def test_rope_gradients_match_finite_differences():
    x = randn(1, 2, 3, 4).requires_grad_()
    assert gradcheck(lambda t: apply_rope(t, offset=2), [x])
    assert gradcheck(lambda t: apply_rope(t, layout="interleaved"), [x])


def test_rope_bad_input_is_named():
    with pytest.raises(ValueError, match="head_dim must be even"):
        apply_rope(randn(1, 1, 3, 5))
    with pytest.raises(ValueError, match="layout must be one of"):
        apply_rope(randn(1, 1, 3, 4), layout="complex")
    with pytest.raises(ValueError, match="offset must be >= 0"):
        apply_rope(randn(1, 1, 3, 4), offset=-2)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        apply_rope(randn(3, 4))
    with pytest.raises(ValueError, match=r"angles must have shape"):
        apply_rope_half_split(randn(1, 3, 4), position_angles(4, 4))


# ---------------------------------------------------------------- ALiBi

def test_alibi_slopes_for_eight_heads_are_one_half_to_one_256th_exactly():
    expected = [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    for dtype in (torch.float32, F64):  # powers of two are exact in both
        assert alibi_slopes(8, dtype=dtype).tolist() == expected


def test_alibi_slopes_for_twelve_heads_follow_the_reference_rule():
    # Reference get_slopes(12): the closest power of two below 12 is 8, giving 2^-1 .. 2^-8;
    # the 4 missing slopes are get_slopes(16)[0::2][:4]. get_slopes(16) is 2^-0.5, 2^-1, 2^-1.5, ...
    # and every other one from the first is 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    expected = [2**-1, 2**-2, 2**-3, 2**-4, 2**-5, 2**-6, 2**-7, 2**-8,
                2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]
    assert alibi_slopes(12, dtype=F64).tolist() == expected


def test_alibi_slopes_for_six_heads_follow_the_reference_rule():
    # get_slopes(6): the closest power of two is 4, whose slopes are 2^(-8/4 · h) = 2^-2, 2^-4, 2^-6,
    # 2^-8; the 2 missing ones are get_slopes(8)[0::2][:2] = (2^-1, 2^-3).
    expected = [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    assert alibi_slopes(6, dtype=F64).tolist() == expected


def test_alibi_slopes_match_bloom_in_transformers_for_many_head_counts():
    bloom = pytest.importorskip("transformers.models.bloom.modeling_bloom")
    for num_heads in range(1, 65):
        theirs = bloom._get_alibi_slopes(num_heads, "cpu").to(torch.float32)
        # float32 rounding of the same powers of two: a few ulps
        torch.testing.assert_close(alibi_slopes(num_heads), theirs, rtol=1e-6, atol=0)


def test_alibi_bias_is_slope_times_key_minus_query_position():
    bias = alibi_bias(4, 6, dtype=F64)
    slopes = alibi_slopes(4, dtype=F64)
    for i in range(6):
        for j in range(6):
            torch.testing.assert_close(bias[:, i, j], slopes * (j - i), **EXACT)
    assert is_toeplitz(bias)
    torch.testing.assert_close(alibi_bias(4, 2, 6, dtype=F64), bias[:, -2:], rtol=0, atol=0)  # like causal_mask


@pytest.mark.parametrize("causal", [True, False])
def test_bloom_bias_m_times_j_gives_the_same_softmax_rows_as_alibi(causal):
    # Bloom adds m·j instead of m·(j - i); the difference -m·i is constant along each row,
    # and the softmax ignores a constant added to a row.
    q, k, v = randn(2, 4, 6, 3, seed=1), randn(2, 4, 6, 3, seed=2), randn(2, 4, 6, 3, seed=3)
    key_positions = torch.arange(6, dtype=F64)
    bloom_bias = alibi_slopes(4, dtype=F64)[:, None, None] * key_positions  # (heads, 1, k_len)
    ours = attention_with_bias(q, k, v, alibi_bias(4, 6, dtype=F64), causal=causal)
    bloom = attention_with_bias(q, k, v, bloom_bias, causal=causal)
    torch.testing.assert_close(bloom, ours, **EXACT)


def test_alibi_bad_head_counts_are_named():
    with pytest.raises(ValueError, match="num_heads must be a positive integer, got 0"):
        alibi_slopes(0)
    with pytest.raises(ValueError, match="num_heads must be a positive integer, got -3"):
        alibi_bias(-3, 4)
    with pytest.raises(TypeError, match="num_heads must be an int"):
        alibi_slopes(8.0)
