"""Score functions of the RNN encoder-decoder era: Bahdanau (additive) and Luong.

Exact identities are checked in float64, where a correct implementation agrees to about
1e-15 relative; tolerances of 1e-12 leave room for a different summation order only.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck

from attnbook.attention.additive import (
    AdditiveAttention,
    additive_attention,
    additive_scores,
    project_keys,
    source_attention,
)
from attnbook.attention.luong import (
    LuongAttention,
    concat_scores,
    dot_scores,
    general_scores,
    local_p_weights,
    location_scores,
    luong_output,
    predictive_positions,
)

F64 = torch.float64
EXACT = {"rtol": 0.0, "atol": 1e-12}  # float64, same maths in a different order


def additive_params(query_dim=5, key_dim=4, attn_dim=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    W_q = torch.randn(attn_dim, query_dim, generator=gen, dtype=F64)
    W_k = torch.randn(attn_dim, key_dim, generator=gen, dtype=F64)
    v = torch.randn(attn_dim, generator=gen, dtype=F64)
    return W_q, W_k, v


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ---------------------------------------------------------------- Bahdanau (additive)

def test_additive_scores_follow_the_equation_pair_by_pair():
    W_q, W_k, v = additive_params()
    query, keys = randn(2, 3, 5, seed=1), randn(2, 4, 4, seed=2)
    expected = torch.empty(2, 3, 4, dtype=F64)
    for b in range(2):
        for i in range(3):
            for j in range(4):  # the definition, one (i, j) pair at a time
                expected[b, i, j] = v @ torch.tanh(W_q @ query[b, i] + W_k @ keys[b, j])
    torch.testing.assert_close(additive_scores(query, keys, W_q, W_k, v), expected, **EXACT)


def test_precomputed_key_projection_equals_recomputing_it_each_step():
    W_q, W_k, v = additive_params()
    steps, keys = randn(2, 6, 5, seed=1), randn(2, 4, 4, seed=2)
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    cached = project_keys(keys, W_k)  # once per source sentence
    for t in range(steps.shape[1]):   # a decoder loop, one step at a time
        fresh = additive_attention(steps[:, t], keys, W_q, W_k, v, mask)
        reused = additive_attention(steps[:, t], keys, W_q, W_k, v, mask, projected_keys=cached)
        torch.testing.assert_close(reused, fresh, rtol=0, atol=0)  # the same arithmetic: bit-identical


def test_all_query_steps_at_once_equal_one_step_at_a_time():
    W_q, W_k, v = additive_params()
    steps, keys = randn(2, 6, 5, seed=1), randn(2, 4, 4, seed=2)
    context, weights = additive_attention(steps, keys, W_q, W_k, v, return_weights=True)
    for t in range(steps.shape[1]):
        c_t, a_t = additive_attention(steps[:, t], keys, W_q, W_k, v, return_weights=True)
        torch.testing.assert_close(c_t, context[:, t], **EXACT)
        torch.testing.assert_close(a_t, weights[:, t], **EXACT)


def test_padded_source_positions_get_exactly_zero_weight():
    W_q, W_k, v = additive_params()
    query, keys = randn(2, 3, 5, seed=1), randn(2, 6, 4, seed=2)
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    context, weights = additive_attention(query, keys, W_q, W_k, v, mask, return_weights=True)
    assert torch.all(weights[1, :, 3:] == 0)  # exactly zero, not merely small
    # ...so whatever the padding holds cannot reach the output.
    garbage = keys.clone()
    garbage[1, 3:] = 1e6
    context_garbage = additive_attention(query, garbage, W_q, W_k, v, mask)
    torch.testing.assert_close(context_garbage, context, **EXACT)
    # and the padded sentence behaves as if it were never padded.
    short_context, short_weights = additive_attention(query[1:], keys[1:, :3], W_q, W_k, v, return_weights=True)
    torch.testing.assert_close(context[1:], short_context, **EXACT)
    torch.testing.assert_close(weights[1:, :, :3], short_weights, **EXACT)


def test_one_item_source_gives_context_equal_to_that_item():
    W_q, W_k, v = additive_params()
    query, keys = randn(3, 4, 5, seed=1), randn(3, 1, 4, seed=2)
    context, weights = additive_attention(query, keys, W_q, W_k, v, return_weights=True)
    assert torch.all(weights == 1)  # softmax of a single score is exactly 1
    torch.testing.assert_close(context, keys.expand(3, 4, 4), rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), q_len=st.integers(1, 4), src_len=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_additive_weights_are_a_distribution_over_real_tokens(batch, q_len, src_len, seed):
    W_q, W_k, v = additive_params(seed=seed)
    query, keys = randn(batch, q_len, 5, seed=seed + 1), randn(batch, src_len, 4, seed=seed + 2)
    lengths = torch.randint(1, src_len + 1, (batch,), generator=torch.Generator().manual_seed(seed))
    mask = torch.arange(src_len)[None] < lengths[:, None]
    _, weights = additive_attention(query, keys, W_q, W_k, v, mask, return_weights=True)
    assert torch.all(weights >= 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(batch, q_len, dtype=F64), rtol=0, atol=1e-12)


def test_additive_attention_gradients_match_finite_differences():
    W_q, W_k, v = additive_params(query_dim=3, key_dim=2, attn_dim=4)
    query, keys = randn(2, 2, 3, seed=1), randn(2, 3, 2, seed=2)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    inputs = [t.clone().requires_grad_() for t in (query, keys, W_q, W_k, v)]
    assert gradcheck(lambda q, k, wq, wk, vv: additive_attention(q, k, wq, wk, vv, mask), inputs)


def test_additive_module_uses_its_parameters_and_cached_keys():
    torch.manual_seed(0)
    layer = AdditiveAttention(query_dim=5, key_dim=4, attn_dim=6, dtype=F64)
    query, keys = randn(2, 3, 5, seed=1), randn(2, 4, 4, seed=2)
    expected = additive_attention(query, keys, layer.query_proj.weight, layer.key_proj.weight, layer.v)
    torch.testing.assert_close(layer(query, keys), expected, **EXACT)
    torch.testing.assert_close(layer(query, keys, projected_keys=layer.project_keys(keys)), expected, **EXACT)


def test_source_mask_must_be_boolean_and_batch_by_src_len():
    W_q, W_k, v = additive_params()
    query, keys = randn(2, 3, 5), randn(2, 4, 4)
    with pytest.raises(TypeError, match="source_mask"):
        additive_attention(query, keys, W_q, W_k, v, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"source_mask must have shape \(batch, src_len\) = \(2, 4\)"):
        additive_attention(query, keys, W_q, W_k, v, torch.ones(2, 5, dtype=torch.bool))


def test_additive_weights_of_the_wrong_shape_are_named():
    W_q, W_k, v = additive_params()
    query, keys = randn(2, 3, 5), randn(2, 4, 4)
    with pytest.raises(ValueError, match="W_k has shape"):
        additive_attention(query, keys, W_q, W_k.T, v)
    with pytest.raises(ValueError, match="W_q"):
        additive_attention(query, keys, W_q[:, :2], W_k, v)
    with pytest.raises(ValueError, match="query must have 3 dimensions"):
        additive_attention(query[None], keys, W_q, W_k, v)
    with pytest.raises(ValueError, match="attn_dim"):
        AdditiveAttention(5, 4, 0)


# ---------------------------------------------------------------- Luong

def test_general_score_with_identity_matrix_equals_dot_score():
    query, keys = randn(2, 3, 4, seed=1), randn(2, 5, 4, seed=2)
    torch.testing.assert_close(general_scores(query, keys, torch.eye(4, dtype=F64)), dot_scores(query, keys),
                               rtol=0, atol=0)  # multiplying by I is exact


def test_general_score_is_the_bilinear_form():
    query, keys, W_a = randn(2, 3, 4, seed=1), randn(2, 5, 6, seed=2), randn(4, 6, seed=3)
    expected = torch.einsum("bid,de,bje->bij", query, W_a, keys)  # h_tᵀ W_a h̄_s
    torch.testing.assert_close(general_scores(query, keys, W_a), expected, **EXACT)


def test_concat_score_equals_the_explicit_concatenation():
    query, keys = randn(2, 3, 4, seed=1), randn(2, 5, 6, seed=2)
    W_a, v = randn(7, 10, seed=3), randn(7, seed=4)
    pairs = torch.cat([query[:, :, None, :].expand(2, 3, 5, 4), keys[:, None, :, :].expand(2, 3, 5, 6)], -1)
    expected = torch.tanh(pairs @ W_a.T) @ v  # v_aᵀ tanh(W_a [h_t; h̄_s]), built literally
    torch.testing.assert_close(concat_scores(query, keys, W_a, v), expected, **EXACT)


def test_location_scores_ignore_the_source_content():
    query, W_a = randn(2, 3, 4, seed=1), randn(10, 4, seed=2)
    scores = location_scores(query, W_a, src_len=6)
    assert scores.shape == (2, 3, 6)
    torch.testing.assert_close(scores, query @ W_a[:6].T, **EXACT)


@settings(max_examples=25, deadline=None)
@given(score=st.sampled_from(["dot", "general", "concat", "location"]), output_layer=st.booleans(),
       seed=st.integers(0, 10**6))
def test_luong_global_weights_rows_sum_to_one_and_skip_padding(score, output_layer, seed):
    torch.manual_seed(seed)
    layer = LuongAttention(4, score=score, max_src_len=8, output_layer=output_layer, dtype=F64)
    query, keys = randn(2, 3, 4, seed=seed), randn(2, 6, 4, seed=seed + 1)
    mask = torch.tensor([[True] * 6, [True, True, False, False, False, False]])
    out, weights = layer(query, keys, mask, return_weights=True)
    assert out.shape == (2, 3, 4) and weights.shape == (2, 3, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, dtype=F64), rtol=0, atol=1e-12)
    assert torch.all(weights[1, :, 2:] == 0)


def test_luong_output_layer_is_tanh_of_W_c_on_context_and_query():
    torch.manual_seed(0)
    layer = LuongAttention(4, score="dot", output_layer=True, dtype=F64)
    query, keys = randn(2, 3, 4, seed=1), randn(2, 5, 4, seed=2)
    attentional, weights = layer(query, keys, return_weights=True)
    context = weights @ keys
    expected = torch.tanh(torch.cat([context, query], -1) @ layer.W_c.weight.T)  # h̃_t = tanh(W_c[c_t; h_t])
    torch.testing.assert_close(attentional, expected, **EXACT)
    torch.testing.assert_close(luong_output(context, query, layer.W_c.weight), expected, **EXACT)


def test_luong_one_step_query_equals_a_row_of_all_steps():
    torch.manual_seed(0)
    layer = LuongAttention(4, score="concat", half_window=2, dtype=F64)
    query, keys = randn(2, 3, 4, seed=1), randn(2, 7, 4, seed=2)
    out, weights = layer(query, keys, return_weights=True)
    out_1, weights_1 = layer(query[:, 1], keys, return_weights=True)
    torch.testing.assert_close(out_1, out[:, 1], **EXACT)
    torch.testing.assert_close(weights_1, weights[:, 1], **EXACT)


def test_predictive_positions_lie_strictly_inside_each_source():
    query, W_p, v_p = randn(3, 5, 4, seed=1) * 10, randn(6, 4, seed=2), randn(6, seed=3) * 10
    lengths = torch.tensor([3, 7, 12])
    positions = predictive_positions(query, W_p, v_p, lengths)  # S · sigmoid(...)
    assert positions.shape == (3, 5)
    assert torch.all(positions >= 0) and torch.all(positions <= lengths[:, None])


@settings(max_examples=25, deadline=None)
@given(half_window=st.integers(1, 4), seed=st.integers(0, 10**6))
def test_local_p_weights_are_exactly_zero_outside_the_window(half_window, seed):
    src_len = 12
    scores = randn(2, 3, src_len, seed=seed)
    positions = torch.rand(2, 3, generator=torch.Generator().manual_seed(seed), dtype=F64) * src_len
    mask = torch.tensor([[True] * src_len, [True] * 9 + [False] * 3])
    weights = local_p_weights(scores, positions, half_window, mask)
    distance = (torch.arange(src_len, dtype=F64) - positions[..., None]).abs()
    inside = (distance <= half_window) & mask[:, None, :]
    assert torch.all(weights[~inside] == 0)  # exactly zero outside [p_t - D, p_t + D] and at padding
    assert torch.all(weights[inside] > 0)


def test_local_p_weights_are_a_window_softmax_times_a_gaussian():
    half_window, src_len = 2, 10
    scores, positions = randn(1, 2, src_len, seed=1), torch.tensor([[3.3, 7.9]], dtype=F64)
    weights = local_p_weights(scores, positions, half_window)
    sigma = half_window / 2
    for t, p in enumerate(positions[0].tolist()):
        window = [s for s in range(src_len) if abs(s - p) <= half_window]
        align = torch.softmax(scores[0, t, window], -1)  # softmax over the window only
        gauss = torch.exp(-(torch.tensor(window, dtype=F64) - p) ** 2 / (2 * sigma**2))
        torch.testing.assert_close(weights[0, t, window], align * gauss, **EXACT)
    # As in Luong Eq. 10 the Gaussian comes after the softmax: rows sum to less than 1.
    assert torch.all(weights.sum(-1) < 1)


def test_luong_local_p_module_zeroes_everything_outside_its_predicted_window():
    torch.manual_seed(0)
    layer = LuongAttention(4, score="general", half_window=2, dtype=F64)
    query, keys = randn(2, 5, 4, seed=1), randn(2, 11, 4, seed=2)
    mask = torch.tensor([[True] * 11, [True] * 7 + [False] * 4])
    _, weights = layer(query, keys, mask, return_weights=True)
    positions = predictive_positions(query, layer.W_p.weight, layer.v_p, mask.sum(-1))
    outside = (torch.arange(11, dtype=F64) - positions[..., None]).abs() > 2
    assert torch.all(weights[outside] == 0)
    assert torch.all(weights[1, :, 7:] == 0)


def test_luong_general_and_local_p_gradients_match_finite_differences():
    query, keys, W_a = randn(2, 2, 3, seed=1), randn(2, 5, 3, seed=2), randn(3, 3, seed=3)
    W_p, v_p = randn(4, 3, seed=4), randn(4, seed=5)
    mask = torch.tensor([[True] * 5, [True] * 4 + [False]])

    def local_p_context(q, k, w_a, w_p, vp):
        scores = general_scores(q, k, w_a)
        positions = predictive_positions(q, w_p, vp, mask.sum(-1))
        return local_p_weights(scores, positions, 2, mask) @ k

    inputs = [t.clone().requires_grad_() for t in (query, keys, W_a, W_p, v_p)]
    assert gradcheck(local_p_context, inputs)
    global_inputs = [t.clone().requires_grad_() for t in (query, keys, W_a)]
    assert gradcheck(lambda q, k, w: source_attention(general_scores(q, k, w), k, mask), global_inputs)


def test_luong_concat_gradients_match_finite_differences():
    query, keys, W_a, v = randn(2, 2, 3, seed=1), randn(2, 4, 2, seed=2), randn(3, 5, seed=3), randn(3, seed=4)
    inputs = [t.clone().requires_grad_() for t in (query, keys, W_a, v)]
    assert gradcheck(lambda q, k, w, vv: source_attention(concat_scores(q, k, w, vv), k), inputs)


def test_luong_bad_arguments_are_named():
    with pytest.raises(ValueError, match="score must be one of"):
        LuongAttention(4, score="bilinear")
    with pytest.raises(ValueError, match="key_dim == query_dim"):
        LuongAttention(4, 6, score="dot")
    with pytest.raises(ValueError, match="max_src_len"):
        LuongAttention(4, score="location")
    with pytest.raises(ValueError, match="half_window"):
        LuongAttention(4, half_window=0)
    with pytest.raises(ValueError, match="same width"):
        dot_scores(randn(1, 2, 4), randn(1, 3, 5))
    with pytest.raises(ValueError, match="W_a has shape"):
        general_scores(randn(1, 2, 4), randn(1, 3, 5), randn(5, 4))
    with pytest.raises(ValueError, match="src_len=9"):
        location_scores(randn(1, 2, 4), randn(8, 4), src_len=9)
    with pytest.raises(ValueError, match="positions must have shape"):
        local_p_weights(randn(1, 2, 5), randn(2, 1), 2)
