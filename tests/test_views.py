"""Neuron view and stage view (attnbook.viz.views) against exact identities and attnbook."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention.dot_product import scaled_dot_product_attention
from attnbook.viz.views import attention_stages, score_contributions


def _qk(seed=0, n=5, m=7, d=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, n, d, generator=g, dtype=dtype),
            torch.randn(2, 3, m, d, generator=g, dtype=dtype))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), m=st.integers(1, 6), d=st.integers(1, 9))
def test_neuron_view_products_sum_to_the_score(seed, n, m, d):
    q, k = _qk(seed, n, m, d)
    parts = score_contributions(q, k)
    assert parts.shape == (2, 3, n, m, d)
    # float64: the two sides add the same d products in different orders; ~1e-15 relative.
    torch.testing.assert_close(parts.sum(-1), q @ k.transpose(-2, -1) / math.sqrt(d), atol=1e-12, rtol=0)


def test_neuron_view_product_is_exactly_q_times_k_times_scale():
    q, k = _qk()
    parts = score_contributions(q, k, scale=0.5)
    # a single product and a multiplication by 0.5 (a power of two): exact, no tolerance
    assert torch.equal(parts[1, 2, 3, 4], q[1, 2, 3] * k[1, 2, 4] * 0.5)


def test_neuron_view_rejects_mismatched_head_dims():
    with pytest.raises(ValueError, match="share d_k"):
        score_contributions(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))


@pytest.mark.parametrize("causal", [False, True])
def test_stage_softmax_equals_attnbooks_weights(causal):
    q, k = _qk(n=6, m=6)
    v = torch.randn(2, 3, 6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    mask = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(4)) > 0.3
    mask[..., 0] = True  # every query keeps one key
    stages = attention_stages(q, k, mask, causal=causal)
    _, weights = scaled_dot_product_attention(q, k, v, mask, causal=causal, return_weights=True)
    # same operations in the same order in float64: equal to rounding (1e-15)
    torch.testing.assert_close(stages["softmax"], weights, atol=1e-14, rtol=0)


def test_stages_follow_each_other():
    q, k = _qk(n=4, m=4, d=16)
    s = attention_stages(q, k, causal=True)
    torch.testing.assert_close(s["scaled"], s["raw"] / 4.0, atol=1e-14, rtol=0)   # sqrt(16) = 4
    hidden = ~torch.ones(4, 4, dtype=torch.bool).tril()
    assert torch.isneginf(s["masked"][..., hidden]).all()
    assert torch.equal(s["masked"][..., ~hidden], s["scaled"][..., ~hidden])
    torch.testing.assert_close(s["softmax"].sum(-1), torch.ones(2, 3, 4, dtype=torch.float64), atol=1e-14, rtol=0)
    assert torch.equal(s["dropout"], s["softmax"])  # dropout_p = 0: nothing dropped


def test_dropout_stage_zeroes_and_rescales():
    q, k = _qk(n=6, m=6)
    s = attention_stages(q, k, dropout_p=0.5, generator=torch.Generator().manual_seed(0))
    kept = s["dropout"] != 0
    assert (~kept).any() and kept.any()
    torch.testing.assert_close(s["dropout"][kept], 2 * s["softmax"][kept], atol=1e-14, rtol=0)


def test_dropout_p_must_be_below_one():
    q, k = _qk()
    with pytest.raises(ValueError, match="dropout_p"):
        attention_stages(q, k, dropout_p=1.0)


def test_drawing_functions_name_bad_shapes():
    import matplotlib.pyplot as plt

    from attnbook.viz.views import head_view, model_view, neuron_view, stage_panels

    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=r"weights must be \(heads, 3, 3\)"):
        head_view(ax, torch.ones(2, 3, 4) / 4, ["a", "b", "c"])
    plt.close(fig)
    with pytest.raises(ValueError, match=r"\(layers, heads, n, n\)"):
        model_view(torch.ones(2, 3, 3) / 3)
    with pytest.raises(ValueError, match="2 tokens for 3 keys"):
        neuron_view(torch.zeros(3, 3, 4), ["a", "b"], 0)
    q, k = _qk(n=3, m=3)
    with pytest.raises(ValueError, match="ncols"):
        stage_panels(attention_stages(q[0, 0], k[0, 0]), ["a", "b", "c"], ncols=4)


def test_head_view_draws_one_segment_per_weight_above_threshold():
    import matplotlib.pyplot as plt

    from attnbook.viz.views import head_view

    weights = torch.tensor([[[1.0, 0.0], [0.3, 0.7]]])   # one head, 3 weights >= 0.05
    fig, ax = plt.subplots()
    head_view(ax, weights, ["a", "b"])
    assert sum(len(col.get_segments()) for col in ax.collections) == 3
    plt.close(fig)
