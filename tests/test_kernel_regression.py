"""Nadaraya–Watson kernel regression (``attnbook.attention.kernel_regression``).

Exact identities are checked in float64. The two score forms compute the same quantity
through different sums (a squared difference vs a dot product minus a squared norm), so
they differ by rounding of values of order 1-100: 1e-10 leaves ample headroom and still
catches a wrong scale (an error of order 1). The limits (tiny and huge bandwidth) are
checked with bandwidths at which the neglected weights are below exp(-100), i.e. zero in
float64, or the scores are below 1e-12 apart.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention.kernel_regression import (
    NadarayaWatson,
    gaussian_scores,
    gaussian_scores_dot_product_form,
    nadaraya_watson,
    nadaraya_watson_weights,
)

F64 = torch.float64


def points(*shape, seed=0, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), m=st.integers(1, 6), d=st.integers(1, 3),
       bandwidth=st.floats(0.05, 20.0), seed=st.integers(0, 2**16))
def test_weight_rows_are_positive_and_sum_to_one(n, m, d, bandwidth, seed):
    weights = nadaraya_watson_weights(points(2, n, d, seed=seed), points(2, m, d, seed=seed + 1), bandwidth)
    assert weights.shape == (2, n, m)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, n, dtype=F64), rtol=0, atol=1e-12)


def test_weights_follow_the_kernel_ratio_pair_by_pair():
    queries, keys, sigma = points(3, 1, seed=1), points(4, 1, seed=2), 0.7
    expected = torch.empty(3, 4, dtype=F64)
    for i in range(3):
        kernel = [math.exp(-((queries[i, 0] - keys[j, 0]).item() ** 2) / (2 * sigma**2)) for j in range(4)]
        for j in range(4):
            expected[i, j] = kernel[j] / sum(kernel)
    torch.testing.assert_close(nadaraya_watson_weights(queries, keys, sigma), expected, rtol=0, atol=1e-14)


@settings(max_examples=30, deadline=None)
@given(d=st.integers(1, 4), bandwidth=st.floats(0.1, 10.0), seed=st.integers(0, 2**16))
def test_gaussian_weights_equal_softmax_of_the_dot_product_form(d, bandwidth, seed):
    queries, keys = points(2, 5, d, seed=seed, scale=3.0), points(2, 7, d, seed=seed + 1, scale=3.0)
    # the raw scores differ by -‖q‖²/2σ², one constant per row ...
    diff = gaussian_scores_dot_product_form(queries, keys, bandwidth) - gaussian_scores(queries, keys, bandwidth)
    row_constant = queries.pow(2).sum(-1, keepdim=True) / (2 * bandwidth**2)
    torch.testing.assert_close(diff, row_constant.expand_as(diff), rtol=1e-10, atol=1e-10)
    # ... which the softmax removes
    torch.testing.assert_close(torch.softmax(gaussian_scores_dot_product_form(queries, keys, bandwidth), -1),
                               nadaraya_watson_weights(queries, keys, bandwidth), rtol=0, atol=1e-12)


def test_tiny_bandwidth_is_nearest_neighbour_regression():
    queries, keys, values = points(20, 2, seed=3), points(9, 2, seed=4), points(9, 3, seed=5)
    out, weights = nadaraya_watson(queries, keys, values, bandwidth=1e-3, return_weights=True)
    nearest = torch.cdist(queries, keys).argmin(-1)
    torch.testing.assert_close(weights, torch.nn.functional.one_hot(nearest, 9).to(F64), rtol=0, atol=0)
    torch.testing.assert_close(out, values[nearest], rtol=0, atol=0)


def test_huge_bandwidth_is_the_mean_of_the_values():
    queries, keys, values = points(6, 1, seed=6), points(8, 1, seed=7), points(8, 2, seed=8)
    out, weights = nadaraya_watson(queries, keys, values, bandwidth=1e8, return_weights=True)
    torch.testing.assert_close(weights, torch.full((6, 8), 1 / 8, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(out, values.mean(0).expand(6, 2), rtol=0, atol=1e-12)


def test_masked_pairs_get_exactly_zero_weight_and_rows_still_sum_to_one():
    x = points(5, 1, seed=9)
    leave_one_out = ~torch.eye(5, dtype=torch.bool)
    weights = nadaraya_watson_weights(x, x, 0.5, leave_one_out)
    assert (weights.diagonal() == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(5, dtype=F64), rtol=0, atol=1e-12)


def test_module_learns_the_bandwidth_and_matches_the_function():
    x = torch.linspace(0, 5, 40, dtype=F64)[:, None]
    y = torch.sin(x)
    model = NadarayaWatson(bandwidth=2.0).to(F64)
    out = model(x, x, y)
    # σ is stored as log σ (created in float32), so compare with the σ the module holds
    assert abs(model.bandwidth.item() - 2.0) < 1e-6
    torch.testing.assert_close(out, nadaraya_watson(x, x, y, bandwidth=model.bandwidth.detach()), rtol=0, atol=1e-12)
    mask = ~torch.eye(40, dtype=torch.bool)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(100):
        loss = (model(x, x, y, mask) - y).pow(2).mean()
        first = first if first is not None else loss.item()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.1 * first      # a smooth function wants a much narrower kernel than σ = 2
    assert model.bandwidth.item() < 1.0


def test_gradient_of_the_bandwidth_matches_finite_differences():
    x, y = points(6, 1, seed=10), points(6, 1, seed=11)
    sigma = torch.tensor(0.8, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: nadaraya_watson(x, x, y, bandwidth=s), (sigma,))


@pytest.mark.parametrize("bandwidth, error", [(0.0, ValueError), (-1.0, ValueError), ("1", TypeError),
                                              (torch.tensor([1.0, 2.0]), ValueError)])
def test_bad_bandwidth_is_named(bandwidth, error):
    with pytest.raises(error, match="bandwidth"):
        nadaraya_watson_weights(points(2, 1), points(3, 1), bandwidth)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="for 1-D inputs use"):
        gaussian_scores(points(4), points(3, 1), 1.0)
    with pytest.raises(ValueError, match="same dim"):
        gaussian_scores(points(4, 2), points(3, 1), 1.0)
    with pytest.raises(ValueError, match="m = 3 keys"):
        nadaraya_watson(points(4, 1), points(3, 1), points(5, 1), bandwidth=1.0)
    with pytest.raises(TypeError, match="boolean"):
        nadaraya_watson_weights(points(4, 1), points(3, 1), 1.0, torch.ones(4, 3))
