"""Chapter 12's low-rank tools: Linformer's effective matrix, spectra, Eckart-Young."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention.dot_product import repeat_kv, scaled_dot_product_attention
from attnbook.attention.linformer import (
    best_rank_approximation,
    cumulative_singular_value_share,
    linformer_attention,
    linformer_effective_matrix,
    normalized_cumulative_singular_values,
)
from attnbook.bench import mean_pooling_projection

# Exact identities in float64: both sides are sums of a few dozen O(1) products, so they
# differ by ~1e-15; 1e-12 is tight and still far from any real error.
TIGHT = {"atol": 1e-12, "rtol": 1e-12}
# Identities that go through an SVD (LAPACK, float64, matrices up to 16 × 16): backward
# errors ~1e-15 times the largest singular value (≤ 16 here); 1e-10 leaves a margin.
SVD_TOL = {"atol": 1e-10, "rtol": 1e-10}


def random_qkv(batch=2, heads=3, n=12, d=4, seed=0, kv_heads=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, n, d, generator=g, dtype=torch.float64)
    k, v = (torch.randn(batch, kv_heads or heads, n, d, generator=g, dtype=torch.float64)
            for _ in range(2))
    return q, k, v


def projections(k, n, heads=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (k, n) if heads is None else (heads, k, n)
    return (torch.randn(shape, generator=g, dtype=torch.float64) / math.sqrt(k) for _ in range(2))


@pytest.mark.parametrize("heads", [None, 3])
def test_effective_matrix_times_v_is_the_linformer_output(heads):
    q, k, v = random_qkv()
    e_proj, f_proj = projections(5, 12, heads)
    mixed = linformer_effective_matrix(q, k, e_proj, f_proj)
    assert mixed.shape == (2, 3, 12, 12)
    torch.testing.assert_close(mixed @ v, linformer_attention(q, k, v, e_proj, f_proj),
                               **TIGHT)


def test_effective_matrix_with_grouped_kv_heads_and_padding():
    q, k, v = random_qkv(heads=4, kv_heads=2)
    e_proj, f_proj = projections(5, 12, heads=2)
    keep = torch.tensor([[True] * 12, [True] * 8 + [False] * 4])
    mixed = linformer_effective_matrix(q, k, e_proj, f_proj, key_padding_mask=keep)
    out = linformer_attention(q, k, v, e_proj, f_proj, key_padding_mask=keep)
    torch.testing.assert_close(mixed @ repeat_kv(v, 4), out, **TIGHT)  # query head h reads kv head h // 2
    assert torch.all(mixed[1, :, :, 8:] == 0)  # a padded value is never read


def test_identity_projections_give_the_exact_attention_matrix():
    q, k, v = random_qkv()
    identity = torch.eye(12, dtype=torch.float64)  # k = n, E = F = I
    exact = scaled_dot_product_attention(q, k, v)
    scores = q @ k.transpose(-2, -1) / math.sqrt(4)
    torch.testing.assert_close(linformer_effective_matrix(q, k, identity, identity),
                               scores.softmax(-1), **TIGHT)
    torch.testing.assert_close(linformer_effective_matrix(q, k, identity, identity) @ v, exact,
                               **TIGHT)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.sampled_from([1, 2, 3, 4, 6, 12]))
def test_mean_pooling_gives_a_stochastic_effective_matrix(seed, k):
    # Each row of the pooling F averages its segment, so its entries sum to 1; P̄'s rows
    # sum to 1, hence so do the rows of P̄F, and every entry is ≥ 0: still an average of values.
    q, k_, _ = random_qkv(seed=seed)
    pool = mean_pooling_projection(12, k)
    mixed = linformer_effective_matrix(q, k_, pool, pool)
    torch.testing.assert_close(mixed.sum(-1), torch.ones(2, 3, 12, dtype=torch.float64), **TIGHT)
    assert mixed.min() >= 0


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_effective_matrix_has_rank_at_most_k(rank):
    q, k, _ = random_qkv(batch=1, heads=1, n=12)
    e_proj, f_proj = projections(rank, 12)
    mixed = linformer_effective_matrix(q, k, e_proj, f_proj)[0, 0]
    assert torch.linalg.matrix_rank(mixed) <= rank


def test_cumulative_singular_values_of_the_identity_grow_linearly():
    c = normalized_cumulative_singular_values(torch.eye(8))
    torch.testing.assert_close(c, torch.arange(1, 9, dtype=torch.float64) / 8, **SVD_TOL)


def test_cumulative_singular_values_of_a_rank_one_matrix_are_all_one():
    # Uniform attention (every row 1/n) has rank 1: one singular value holds everything.
    c = normalized_cumulative_singular_values(torch.full((3, 6, 6), 1 / 6, dtype=torch.float64))
    torch.testing.assert_close(c, torch.ones(3, 6, dtype=torch.float64), **SVD_TOL)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 16))
def test_cumulative_singular_values_rise_to_one(seed, n):
    scores = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    c = normalized_cumulative_singular_values(scores.softmax(-1))
    assert c.shape == (n,)
    assert torch.all(c[1:] >= c[:-1] - 1e-12)
    torch.testing.assert_close(c[-1], torch.tensor(1.0, dtype=torch.float64), **SVD_TOL)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 16), rank=st.integers(1, 15))
def test_squared_share_is_what_the_truncated_svd_keeps(seed, n, rank):
    # With squared=True, c_r = 1 − ‖P − P_r‖_F² / ‖P‖_F² (Eq. 8); and the plain share is the
    # same function of the singular values as normalized_cumulative_singular_values.
    rank = min(rank, n)
    p = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).softmax(-1)
    sigma = torch.linalg.svdvals(p)
    kept = 1 - torch.linalg.matrix_norm(p - best_rank_approximation(p, rank)).square() / p.square().sum()
    torch.testing.assert_close(cumulative_singular_value_share(sigma, squared=True)[rank - 1], kept, **SVD_TOL)
    torch.testing.assert_close(normalized_cumulative_singular_values(p, squared=True)[rank - 1], kept, **SVD_TOL)
    torch.testing.assert_close(cumulative_singular_value_share(sigma), normalized_cumulative_singular_values(p),
                               **TIGHT)


def test_share_of_known_singular_values():
    # σ = (3, 1): plain shares 3/4, 1; squared 9/10, 1; all zeros stay zero.
    sigma = torch.tensor([[3.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(cumulative_singular_value_share(sigma),
                               torch.tensor([[0.75, 1.0], [0.0, 0.0]], dtype=torch.float64), **TIGHT)
    torch.testing.assert_close(cumulative_singular_value_share(sigma, squared=True),
                               torch.tensor([[0.9, 1.0], [0.0, 0.0]], dtype=torch.float64), **TIGHT)
    with pytest.raises(ValueError, match="decreasing"):
        cumulative_singular_value_share(torch.tensor([1.0, 3.0]))
    with pytest.raises(ValueError, match="non-negative"):
        cumulative_singular_value_share(torch.tensor([1.0, -1.0]))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rank=st.integers(1, 12))
def test_truncated_svd_error_is_the_tail_of_the_spectrum(seed, rank):
    # Eckart-Young: ‖P − P_r‖_F² = Σ_{i>r} σ_i², and P_r has rank ≤ r.
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(12, 12, generator=g, dtype=torch.float64).softmax(-1)
    approx = best_rank_approximation(p, rank)
    sigma = torch.linalg.svdvals(p)
    torch.testing.assert_close(torch.linalg.matrix_norm(p - approx), sigma[rank:].square().sum().sqrt(),
                               **SVD_TOL)
    assert torch.linalg.matrix_rank(approx) <= rank


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), rank=st.integers(1, 11))
def test_no_linformer_matrix_beats_the_truncated_svd(seed, rank):
    # The floor of the chapter's figure: P̄F has rank ≤ k, so its distance to P is at least
    # the rank-k truncated SVD's, whatever E and F are.
    q, k, _ = random_qkv(batch=1, heads=1, n=12, seed=seed)
    e_proj, f_proj = projections(rank, 12, seed=seed + 1)
    exact = (q @ k.transpose(-2, -1) / 2).softmax(-1)  # d = 4, scale 1/√4
    linformer_error = torch.linalg.matrix_norm(linformer_effective_matrix(q, k, e_proj, f_proj) - exact)
    floor = torch.linalg.matrix_norm(best_rank_approximation(exact, rank) - exact)
    assert linformer_error >= floor - 1e-12


def test_full_rank_approximation_returns_the_matrix():
    p = torch.randn(7, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(best_rank_approximation(p, 7), p, **SVD_TOL)


def test_bad_inputs_are_named():
    p = torch.eye(4)
    with pytest.raises(ValueError, match="rank=5"):
        best_rank_approximation(p, 5)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        best_rank_approximation(p, 0)
    with pytest.raises(ValueError, match="p must be a matrix"):
        normalized_cumulative_singular_values(torch.ones(4))
    q, k, _ = random_qkv(n=12)
    with pytest.raises(ValueError, match="f_proj"):
        linformer_effective_matrix(q, k, torch.ones(4, 12, dtype=torch.float64),
                                   torch.ones(4, 10, dtype=torch.float64))
