"""Attributions (attnbook.explain): each checked against an exact identity or a value
computed by hand."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.explain import (
    attention_flow,
    attention_rollout,
    deletion_curve,
    gradient_x_input,
    integrated_gradients,
    js_divergence,
    occlusion,
    precision_at_k,
    roc_auc,
)


def random_attention(batch, heads, T, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, heads, T, T, generator=g, dtype=torch.float64).softmax(-1)


# -- rollout and flow --------------------------------------------------------------------

def test_rollout_of_identity_attention_is_the_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    assert torch.equal(attention_rollout([eye, eye, eye]), torch.eye(5).expand(2, 5, 5))


def test_rollout_mixes_in_the_residual_half_and_half():
    # one layer that swaps two tokens: with r = 1/2 every entry is 1/2; with r = 0 it stays
    # the swap. Identity attention cannot tell the two apart (it is the identity for any r).
    swap = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    torch.testing.assert_close(attention_rollout([swap]), torch.full((1, 2, 2), 0.5))
    torch.testing.assert_close(attention_rollout([swap], residual=0.0), swap[:, 0])


@settings(deadline=None, max_examples=20)
@given(T=st.integers(2, 6), layers=st.integers(1, 3), residual=st.floats(0.0, 1.0), seed=st.integers(0, 99))
def test_rollout_rows_are_distributions(T, layers, residual, seed):
    rollout = attention_rollout([random_attention(2, 2, T, seed + l) for l in range(layers)], residual=residual)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, T, dtype=torch.float64))


def test_flow_on_one_layer_is_the_edge_capacity():
    # one layer: the only path from input j to top node i is the edge j -> i, so the flow
    # is its capacity, 0.5 * attn[i, j] + 0.5 * [i == j] (residual 0.5, rows already sum to 1)
    attn = torch.tensor([[[[0.7, 0.2, 0.1], [0.4, 0.6, 0.0], [0.3, 0.3, 0.4]]]], dtype=torch.float64)
    expected = 0.5 * attn[0, 0] + 0.5 * torch.eye(3, dtype=torch.float64)
    # capacities are rounded to multiples of 1e-6: one edge is off by at most 5e-7
    torch.testing.assert_close(attention_flow([attn])[0], expected, atol=1e-6, rtol=0)


def test_flow_on_two_layers_equals_the_hand_computed_min_cut():
    # T = 2, no residual. From input 0 to top node 0 there are two edge-disjoint paths:
    # 0 -> 0 -> 0 with capacities A1[0,0] = .7 and A2[0,0] = .9 (bottleneck .7), and
    # 0 -> 1 -> 0 with A1[1,0] = .4 and A2[0,1] = .1 (bottleneck .1): max flow .8.
    # Rollout instead sums products: .9 * .7 + .1 * .4 = .67.
    a1 = torch.tensor([[[[0.7, 0.3], [0.4, 0.6]]]], dtype=torch.float64)
    a2 = torch.tensor([[[[0.9, 0.1], [0.5, 0.5]]]], dtype=torch.float64)
    flow = attention_flow([a1, a2], residual=0.0, query=0)
    torch.testing.assert_close(flow[0, 0], torch.tensor(0.8, dtype=torch.float64), atol=2e-6, rtol=0)
    rollout = attention_rollout([a1, a2], residual=0.0)
    torch.testing.assert_close(rollout[0, 0, 0], torch.tensor(0.67, dtype=torch.float64))


def test_flow_is_never_more_than_what_leaves_the_input_or_enters_the_top():
    attns = [random_attention(1, 2, 4, s) for s in range(3)]
    flow = attention_flow(attns)  # each edge capacity <= 1 and every top node receives 1 in total
    assert (flow <= 1.0 + 1e-5).all() and (flow >= 0).all()


def test_flow_rejects_bad_input():
    with pytest.raises(ValueError, match="residual"):
        attention_flow([random_attention(1, 1, 3, 0)], residual=1.5)
    with pytest.raises(ValueError, match="query=5"):
        attention_flow([random_attention(1, 1, 3, 0)], query=5)
    with pytest.raises(ValueError, match=r"\(batch, heads, T, T\)"):
        attention_flow([torch.rand(2, 3, 4)])


# -- gradients -----------------------------------------------------------------------------

def smooth_f(x):  # (batch, T, d) -> (batch,): non-linear, so IG is not exact in one step
    return torch.sin((x ** 3).sum((1, 2))) + (x[:, :, 0] * x[:, :, 1]).sum(1)


def test_gradient_x_input_of_a_linear_function_is_exact():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 3, generator=g, dtype=torch.float64)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    scores = gradient_x_input(lambda e: (e * w).sum((1, 2)), x)
    torch.testing.assert_close(scores, (x * w).sum(-1))


def test_integrated_gradients_completeness_error_shrinks_with_steps():
    g = torch.Generator().manual_seed(1)
    x = 0.8 * torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    baseline = 0.1 * torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    gap = smooth_f(x) - smooth_f(baseline)
    errors = [(integrated_gradients(smooth_f, x, baseline, steps=s).sum(1) - gap).abs().max().item()
              for s in (8, 32, 128)]
    # midpoint rule: error O(1/steps^2), so each 4x more steps cuts it by ~16; ask for 8x
    assert errors[1] < errors[0] / 8 and errors[2] < errors[1] / 8
    assert errors[2] < 1e-2


def test_integrated_gradients_in_chunks_equals_all_at_once():
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(integrated_gradients(smooth_f, x, steps=12, chunk=5),
                               integrated_gradients(smooth_f, x, steps=12))


def test_gradient_methods_reject_token_ids_and_wrong_outputs():
    with pytest.raises(ValueError, match="floating point"):
        gradient_x_input(smooth_f, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="one number per example"):
        integrated_gradients(lambda e: e.sum(-1), torch.rand(2, 3, 4))


# -- perturbation ------------------------------------------------------------------------

def count_of(token):  # f(tokens) = how many times ``token`` occurs
    return lambda ids: (ids == token).sum(1).double()


def test_occlusion_finds_the_counted_tokens():
    ids = torch.tensor([[1, 7, 3, 7], [7, 2, 2, 2]])
    scores = occlusion(count_of(7), ids, replace_with=0)
    assert torch.equal(scores, (ids == 7).double())


def test_deletion_curve_removes_the_highest_scores_first():
    ids = torch.tensor([[7, 1, 7, 2]])
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.0]])
    curve = deletion_curve(count_of(7), ids, scores, replace_with=0, max_k=3)
    assert curve.tolist() == [[2.0, 1.0, 1.0, 0.0]]
    # a candidate mask keeps position 0
    keep_first = torch.tensor([[False, True, True, True]])
    curve = deletion_curve(count_of(7), ids, scores, replace_with=0, max_k=2, candidates=keep_first)
    assert curve.tolist() == [[2.0, 2.0, 1.0]]


# -- metrics -----------------------------------------------------------------------------

def test_precision_and_auc_on_a_hand_made_ranking():
    evidence = torch.tensor([[False, True, False, True]])
    perfect = torch.tensor([[0.0, 2.0, 0.5, 1.0]])
    half = torch.tensor([[3.0, 2.0, 0.5, 0.0]])  # ranks: 0, 1(e), 2, 3(e)
    assert precision_at_k(perfect, evidence).item() == 1.0
    assert precision_at_k(half, evidence).item() == 0.5
    assert roc_auc(perfect, evidence).item() == 1.0
    # pairs (evidence, other): (1,0) lose, (1,2) win, (3,0) lose, (3,2) lose -> 1/4
    assert roc_auc(half, evidence).item() == 0.25
    assert roc_auc(torch.zeros(1, 4), evidence).item() == 0.5  # ties count one half


@settings(deadline=None, max_examples=30)
@given(seed=st.integers(0, 999))
def test_js_divergence_is_symmetric_and_bounded_by_ln2(seed):
    g = torch.Generator().manual_seed(seed)
    p, q = (torch.rand(3, 5, generator=g, dtype=torch.float64).softmax(-1) for _ in range(2))
    torch.testing.assert_close(js_divergence(p, q), js_divergence(q, p))
    assert (js_divergence(p, q) >= -1e-12).all() and (js_divergence(p, q) <= torch.log(torch.tensor(2.0))).all()
    disjoint = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(js_divergence(*disjoint), torch.log(torch.tensor(2.0)))
