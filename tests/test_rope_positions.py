"""RoPE with per-sequence position ids, position interpolation, and RoFormer's decay bound."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention.positional import (
    apply_rope,
    position_angles,
    position_ids_from_padding,
    rope_angles,
    rope_decay_bound,
)

F64 = torch.float64
# float64 rotations of O(1) numbers: the only error is rounding in cos/sin and a few products.
EXACT = {"rtol": 0.0, "atol": 1e-12}


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ---------------------------------------------------------------- position ids

@pytest.mark.parametrize("layout", ["half_split", "interleaved"])
@pytest.mark.parametrize("offset", [0, 5])
def test_position_ids_arange_plus_offset_equal_the_offset_form(layout, offset):
    x = randn(2, 3, 7, 8)
    ids = torch.arange(offset, offset + 7)
    expected = apply_rope(x, layout=layout, offset=offset)
    torch.testing.assert_close(apply_rope(x, layout=layout, position_ids=ids), expected, rtol=0, atol=0)
    batched = ids.expand(2, 7)  # (batch, seq): the same row for every sequence
    torch.testing.assert_close(apply_rope(x, layout=layout, position_ids=batched), expected, rtol=0, atol=0)


def test_rope_angles_generalise_position_angles():
    torch.testing.assert_close(rope_angles(torch.arange(3, 9), 8), position_angles(6, 8, offset=3),
                               rtol=0, atol=0)


def test_position_ids_from_padding_count_real_tokens_only():
    keep = torch.tensor([[True, True, True, True], [False, False, True, True]])
    assert position_ids_from_padding(keep).tolist() == [[0, 1, 2, 3], [0, 0, 0, 1]]


@pytest.mark.parametrize("layout", ["half_split", "interleaved"])
def test_left_padded_batch_rotates_real_tokens_as_each_sequence_alone(layout):
    lengths, seq = [6, 2, 4], 6
    rows = [randn(1, 2, n, 8, seed=i) for i, n in enumerate(lengths)]
    padded = torch.zeros(len(lengths), 2, seq, 8, dtype=F64)
    keep = torch.zeros(len(lengths), seq, dtype=torch.bool)
    for b, (row, n) in enumerate(zip(rows, lengths)):
        padded[b, :, seq - n:] = row[0]   # left padding, as in batched decoding
        keep[b, seq - n:] = True
    rotated = apply_rope(padded, layout=layout, position_ids=position_ids_from_padding(keep))
    for b, (row, n) in enumerate(zip(rows, lengths)):
        alone = apply_rope(row, layout=layout)
        torch.testing.assert_close(rotated[b:b + 1, :, seq - n:], alone, **EXACT)
    # The offset form cannot do this: it gives the short rows' tokens the wrong positions.
    shared = apply_rope(padded, layout=layout)
    assert not torch.allclose(shared[1:2, :, seq - 2:], apply_rope(rows[1], layout=layout))


def test_position_scale_equals_rotating_scaled_positions():
    # Interpolating 2x: position 2p is rotated exactly like position p without scaling.
    x = randn(1, 2, 8, 8)
    interpolated = apply_rope(x, position_ids=torch.arange(0, 16, 2), position_scale=0.5)
    torch.testing.assert_close(interpolated, apply_rope(x), **EXACT)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(0, 300), n=st.integers(0, 300), shift=st.integers(0, 300),
       scale=st.sampled_from([1.0, 0.5, 0.125]), seed=st.integers(0, 10**6))
def test_scores_with_position_ids_depend_only_on_the_offset(m, n, shift, scale, seed):
    q, k = randn(1, 1, 1, 8, seed=seed), randn(1, 1, 1, 8, seed=seed + 1)

    def score(i, j):
        rq = apply_rope(q, position_ids=torch.tensor([i]), position_scale=scale)
        rk = apply_rope(k, position_ids=torch.tensor([j]), position_scale=scale)
        return (rq * rk).sum()

    torch.testing.assert_close(score(m + shift, n + shift), score(m, n), rtol=0, atol=1e-10)


def test_position_ids_bad_input_is_named():
    x = randn(2, 1, 3, 4)
    with pytest.raises(ValueError, match="position_ids must have shape"):
        apply_rope(x, position_ids=torch.arange(4))
    with pytest.raises(ValueError, match="either offset or position_ids"):
        apply_rope(x, offset=1, position_ids=torch.arange(3))
    with pytest.raises(TypeError, match="integer tensor"):
        apply_rope(x, position_ids=torch.arange(3.0))
    with pytest.raises(ValueError, match="position_ids must be >= 0"):
        apply_rope(x, position_ids=torch.tensor([-1, 0, 1]))
    with pytest.raises(ValueError, match="scale must be > 0"):
        apply_rope(x, position_scale=0.0)
    with pytest.raises(TypeError, match="keep must be a boolean mask"):
        position_ids_from_padding(torch.ones(2, 3))


# ---------------------------------------------------------------- RoFormer's decay bound

def test_decay_bound_at_distance_zero_is_the_mean_of_one_to_half_d():
    # At r = 0 every rotation is 1, so S_j = j and the mean of |S_j| over j = 1..d/2 is (d/2 + 1)/2.
    for head_dim in (2, 8, 128):
        value = rope_decay_bound(head_dim, torch.tensor(0.0)).item()
        assert value == pytest.approx((head_dim // 2 + 1) / 2, rel=1e-15)


def test_decay_bound_matches_a_direct_double_sum():
    head_dim, r = 16, 37.0
    theta = [10000 ** (-2 * i / head_dim) for i in range(head_dim // 2)]
    direct = sum(abs(sum(complex(math.cos(r * t), math.sin(r * t)) for t in theta[:j]))
                 for j in range(1, head_dim // 2 + 1)) / (head_dim // 2)
    assert rope_decay_bound(head_dim, torch.tensor(r)).item() == pytest.approx(direct, rel=1e-12)


@settings(max_examples=25, deadline=None)
@given(r=st.integers(0, 500), seed=st.integers(0, 10**6))
def test_decay_bound_bounds_every_rope_score(r, seed):
    # Abel summation: |Σ_i h_i e^{i r θ_i}| <= max_i |h_{i+1} - h_i| · Σ_j |S_j|, with h_{d/2} = 0.
    head_dim = 16
    h = torch.complex(randn(head_dim // 2, seed=seed), randn(head_dim // 2, seed=seed + 1))
    theta = 10000 ** (-torch.arange(0, head_dim, 2, dtype=F64) / head_dim)
    score = (h * torch.polar(torch.ones_like(theta), r * theta)).sum().abs()
    steps = torch.diff(torch.cat([h, h.new_zeros(1)])).abs().max()
    bound = steps * rope_decay_bound(head_dim, torch.tensor(float(r))) * (head_dim // 2)
    assert score <= bound * (1 + 1e-12)


def test_decay_bound_falls_with_distance_on_average():
    curve = rope_decay_bound(128, torch.arange(0, 257, dtype=F64))
    assert curve[0] > 4 * curve[200:].mean()            # far keys: a much smaller bound
    assert curve[:64].mean() > curve[64:128].mean() > curve[128:].mean()
