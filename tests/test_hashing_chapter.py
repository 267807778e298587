"""The exact collision probability of Reformer's angular hash (chapter 14)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention.reformer import collision_probability, lsh_hash


@settings(max_examples=15, deadline=None)
@given(theta=st.floats(0.02, math.pi - 0.02))
def test_integral_at_two_buckets_matches_the_closed_form(theta):
    # at b = 2 the power G^0 = 1 leaves 2·P(u > 0, w > 0) = 1 − θ/π; the 800-point grid is
    # within 1e-4 of it down to θ = 0.02 (measured), 5e-4 leaves room
    assert collision_probability(theta, [2])[0] == pytest.approx(1 - theta / math.pi, abs=5e-4)


@settings(max_examples=15, deadline=None)
@given(theta=st.floats(0.02, math.pi - 0.02))
def test_integral_at_four_buckets_matches_the_closed_form(theta):
    # b = 4 is two independent hyperplane hashes (the signs of u1 + u2 and u1 - u2), so
    # P_4 = (1 − θ/π)²; here the power G^1 is used, so this tests the grid for G too. The
    # 800-point grid is within 1e-4 of it down to θ = 0.02 (measured), 5e-4 leaves room
    assert collision_probability(theta, [4])[0] == pytest.approx((1 - theta / math.pi) ** 2, abs=5e-4)


def test_probability_is_one_at_zero_angle_and_zero_at_opposite_vectors():
    assert collision_probability(0.0, [2, 4, 8]) == [1.0, 1.0, 1.0]
    assert collision_probability(math.pi, [2, 4, 8]) == [0.0, 0.0, 0.0]


def test_probability_falls_with_angle_and_with_buckets():
    angles = [0.2, 0.6, 1.0, 1.5, 2.0, 2.6]
    table = [collision_probability(a, [2, 4, 8, 16]) for a in angles]
    for row, next_row in zip(table, table[1:]):
        assert all(p > q for p, q in zip(row, next_row))          # falls with the angle
    for row in table:
        assert all(p > q for p, q in zip(row, row[1:]))           # falls with more buckets


@pytest.mark.parametrize("num_buckets", [4, 8])
def test_integral_matches_the_hash_over_many_rotations(num_buckets):
    # 20000 rotations: binomial standard error <= 0.0036; 0.015 is four of them
    theta, dim = 1.0, 16
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(dim, dtype=torch.float64)
    x[0] = 1.0
    y = torch.zeros(dim, dtype=torch.float64)
    y[0], y[1] = math.cos(theta), math.sin(theta)
    buckets = lsh_hash(torch.stack([x, y])[None, None], num_buckets=num_buckets, generator=g,
                       num_rounds=20000)[0, 0]
    rate = (buckets[:, 0] == buckets[:, 1]).double().mean().item()
    assert rate == pytest.approx(collision_probability(theta, [num_buckets])[0], abs=0.015)


def test_odd_bucket_counts_and_bad_angles_are_refused():
    with pytest.raises(ValueError, match="even"):
        collision_probability(1.0, [3])
    with pytest.raises(ValueError, match="theta"):
        collision_probability(4.0, [2])
