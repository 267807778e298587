"""Head scores (attnbook.heads) and attention rollout (attnbook.explain) on constructed
attention maps whose answer is known exactly."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from attnbook.explain import attention_rollout
from attnbook.heads import (
    first_token_share,
    heads_above,
    induction_scores,
    previous_token_scores,
    repeated_random_tokens,
)


def one_hot_rows(targets, T):
    """A (T, T) map whose row i puts all its weight on key targets[i]."""
    attn = torch.zeros(T, T)
    attn[torch.arange(T), torch.tensor(targets)] = 1.0
    return attn


def test_repeated_tokens_repeat_after_the_prefix():
    g = torch.Generator().manual_seed(0)
    ids = repeated_random_tokens(3, 7, 50, generator=g, low=5, prefix=[1])
    assert ids.shape == (3, 15)
    assert (ids[:, 0] == 1).all()
    assert torch.equal(ids[:, 1:8], ids[:, 8:])
    assert ids[:, 1:].min() >= 5 and ids.max() < 50


@pytest.mark.parametrize("offset", [0, 1, 3])
def test_a_perfect_induction_head_scores_one_and_a_previous_token_head_zero(offset):
    period, T = 6, offset + 12
    # induction targets on the second copy; elsewhere attend to self
    targets = [i - period + 1 if i >= offset + period else i for i in range(T)]
    induction = one_hot_rows(targets, T)
    previous = one_hot_rows([max(i - 1, 0) for i in range(T)], T)
    attn = torch.stack([induction, previous])  # (heads, T, T)
    assert torch.allclose(induction_scores(attn, period, offset=offset), torch.tensor([1.0, 0.0]))
    prev = previous_token_scores(attn, offset=offset)
    assert prev[1] == 1.0 and prev[0] < 1.0


def test_uniform_causal_attention_has_the_closed_form_sink_share():
    T = 9
    attn = torch.tril(torch.ones(T, T))
    attn = attn / attn.sum(-1, keepdim=True)  # row i: 1 / (i + 1) on each of i + 1 keys
    expected = sum(1.0 / (i + 1) for i in range(1, T)) / (T - 1)
    assert first_token_share(attn[None]).item() == pytest.approx(expected, rel=1e-6)


@given(st.integers(1, 3), st.integers(1, 3), st.integers(2, 8))
def test_scores_keep_leading_axes_and_stay_in_unit_interval(layers, heads, period):
    g = torch.Generator().manual_seed(layers * 100 + heads * 10 + period)
    T = 2 * period + 1
    attn = torch.softmax(torch.randn(layers, 2, heads, T, T, generator=g), dim=-1)
    for score in (induction_scores(attn, period, offset=1), previous_token_scores(attn), first_token_share(attn)):
        assert score.shape == (layers, 2, heads)
        assert (score >= 0).all() and (score <= 1).all()


def test_heads_above_is_strict():
    scores = torch.tensor([[0.4, 0.41], [0.9, 0.1]])
    assert heads_above(scores, 0.4) == [(0, 1), (1, 0)]


@pytest.mark.parametrize("call, message", [
    (lambda: induction_scores(torch.ones(2, 5, 5), 3), "offset \\+ 2\\*period <= T=5"),
    (lambda: previous_token_scores(torch.ones(2, 4, 3)), "square"),
    (lambda: heads_above(torch.ones(3)), "layers, heads"),
    (lambda: repeated_random_tokens(1, 0, 5, generator=torch.Generator()), "period must be >= 1"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_rollout_of_identity_attention_is_the_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    assert torch.equal(attention_rollout([eye, eye, eye]), torch.eye(5).expand(2, 5, 5))


@given(st.integers(1, 4), st.floats(0.0, 1.0))
def test_rollout_rows_sum_to_one_and_compose_layer_by_layer(layers, residual):
    g = torch.Generator().manual_seed(layers)
    maps = [torch.softmax(torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64), -1) for _ in range(layers)]
    rollout = attention_rollout(maps, residual=residual)
    assert torch.allclose(rollout.sum(-1), torch.ones(2, 6, dtype=torch.float64))
    # the definition, written out: mix in the identity, renormalise, multiply top layer last
    expected = torch.eye(6, dtype=torch.float64)
    for attn in maps:
        mixed = residual * torch.eye(6, dtype=torch.float64) + (1 - residual) * attn.mean(1)
        expected = (mixed / mixed.sum(-1, keepdim=True)) @ expected
    assert torch.allclose(rollout, expected)


def test_rollout_with_no_residual_is_the_product_of_head_means():
    g = torch.Generator().manual_seed(3)
    a, b = (torch.softmax(torch.randn(1, 2, 4, 4, generator=g), -1) for _ in range(2))
    assert torch.allclose(attention_rollout([a, b], residual=0.0), b.mean(1) @ a.mean(1), atol=1e-6)


def test_rollout_rejects_bad_input():
    with pytest.raises(ValueError, match="residual must be in"):
        attention_rollout([torch.ones(1, 1, 2, 2)], residual=1.5)
    with pytest.raises(ValueError, match="attentions is empty"):
        attention_rollout([])
    with pytest.raises(ValueError, match=r"attentions\[1\] has T=3"):
        attention_rollout([torch.ones(1, 1, 2, 2), torch.ones(1, 1, 3, 3)])
