"""Jacobian norms against distance (``attnbook.gradient_paths``).

Checked against exact answers: a linear recurrence h_t = h_{t-1} W + x_t has
∂h_t/∂x_{t-k} = (W^k)ᵀ, and any model's Jacobian can be formed entry by entry with
``torch.autograd.functional.jacobian``. Float64; the only differences are summation
order, so 1e-12 relative is ample.
"""
from __future__ import annotations

import pytest
import torch

from attnbook.attention import scaled_dot_product_attention
from attnbook.gradient_paths import input_jacobian_norms, norms_by_distance

F64 = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def linear_recurrence(w):
    def run(x):  # (batch, seq, d) -> (batch, seq, d)
        h, outs = torch.zeros(x.shape[0], w.shape[0], dtype=x.dtype), []
        for t in range(x.shape[1]):
            h = h @ w + x[:, t]
            outs.append(h)
        return torch.stack(outs, 1)
    return run


def test_linear_recurrence_gives_the_norm_of_the_matrix_power():
    w = randn(3, 3, seed=1) / 2
    x = randn(2, 6, 3, seed=2)
    by_k = norms_by_distance(input_jacobian_norms(linear_recurrence(w), x, position=5), 5)
    expected = torch.stack([torch.linalg.matrix_power(w, k).norm() for k in range(6)])
    torch.testing.assert_close(by_k, expected.expand(2, 6), rtol=1e-12, atol=0)


def test_matches_the_full_jacobian_of_an_attention_layer():
    w_q, w_k, w_v = randn(4, 4, seed=3), randn(4, 4, seed=4), randn(4, 3, seed=5)

    def layer(x):  # one-head self-attention, (batch, seq, 4) -> (batch, seq, 3)
        q, k, v = ((x @ w)[:, None] for w in (w_q, w_k, w_v))
        return scaled_dot_product_attention(q, k, v)[:, 0]

    x = randn(2, 5, 4, seed=6)
    norms = input_jacobian_norms(layer, x, position=-1)
    for b in range(2):
        jac = torch.autograd.functional.jacobian(lambda xb: layer(xb[None])[0, -1], x[b])  # (3, 5, 4)
        torch.testing.assert_close(norms[b], jac.pow(2).sum((0, 2)).sqrt(), rtol=1e-12, atol=0)


def test_causal_model_has_zero_jacobian_for_later_inputs_and_accepts_2d_outputs():
    w = randn(3, 3, seed=7) / 2
    x = randn(1, 6, 3, seed=8)
    norms = input_jacobian_norms(linear_recurrence(w), x, position=2)
    assert (norms[:, 3:] == 0).all() and (norms[:, :3] > 0).all()
    last = input_jacobian_norms(lambda x: linear_recurrence(w)(x)[:, -1], x)
    torch.testing.assert_close(last, input_jacobian_norms(linear_recurrence(w), x, position=-1))


def test_bad_arguments_are_named():
    f = linear_recurrence(torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="inputs must have 3 dimensions"):
        input_jacobian_norms(f, randn(4, 2))
    with pytest.raises(ValueError, match="position="):
        input_jacobian_norms(f, randn(1, 4, 2))
    with pytest.raises(ValueError, match="out of range"):
        input_jacobian_norms(f, randn(1, 4, 2), position=4)
    with pytest.raises(ValueError, match="out of range"):
        norms_by_distance(torch.ones(2, 4), 4)
