"""Tiled exact attention (FlashAttention): equal to naive attention, forward and backward."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from attnbook.attention.dot_product import scaled_dot_product_attention
from attnbook.attention.flash import (
    flash_attention,
    flash_block_sizes,
    hbm_accesses_flash,
    hbm_accesses_standard,
)
from attnbook.attention.masks import causal_mask

# float64 results of the same sums in a different order differ by a few ulps (~1e-16
# relative); 1e-12 leaves room for the rescaling steps and still catches any real error.
EXACT = dict(rtol=0, atol=1e-12)


def qkv(batch=2, heads=3, q_len=37, k_len=37, dim=8, v_dim=8, kv_heads=None, dtype=torch.float64,
        seed=0):
    g = torch.Generator().manual_seed(seed)
    kv_heads = heads if kv_heads is None else kv_heads
    q = torch.randn(batch, heads, q_len, dim, generator=g, dtype=dtype)
    k = torch.randn(batch, kv_heads, k_len, dim, generator=g, dtype=dtype)
    v = torch.randn(batch, kv_heads, k_len, v_dim, generator=g, dtype=dtype)
    return q, k, v


def scaled_scores(q, k, causal, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[2], k.shape[2]), -math.inf)
    return scores


BLOCKS = [(1, 1), (4, 7), (16, 16), (5, 64), (37, 37), (64, 128)]  # incl. non-dividing and > n


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_q,block_k", BLOCKS)
def test_tiled_attention_equals_naive_attention_for_any_block_size(causal, block_q, block_k):
    q, k, v = qkv()
    out = flash_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
    expected = scaled_dot_product_attention(q, k, v, causal=causal)
    torch.testing.assert_close(out, expected, **EXACT)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_q,block_k", BLOCKS)
def test_tiled_attention_equals_naive_attention_when_q_len_differs_from_k_len(causal, block_q,
                                                                              block_k):
    q, k, v = qkv(q_len=20, k_len=53, v_dim=5)   # fewer queries than keys, as with a KV cache
    out = flash_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
    expected = scaled_dot_product_attention(q, k, v, causal=causal)
    torch.testing.assert_close(out, expected, **EXACT)


def test_more_queries_than_keys_works_without_causal_mask():
    q, k, v = qkv(q_len=50, k_len=9)
    out = flash_attention(q, k, v, block_q=16, block_k=4)
    torch.testing.assert_close(out, scaled_dot_product_attention(q, k, v), **EXACT)


@settings(max_examples=25, deadline=None)
@given(q_len=st.integers(1, 40), extra_keys=st.integers(0, 30), block_q=st.integers(1, 50),
       block_k=st.integers(1, 50), causal=st.booleans(), seed=st.integers(0, 2**16))
def test_tiled_attention_equals_naive_attention_property(q_len, extra_keys, block_q, block_k, causal,
                                                         seed):
    q, k, v = qkv(batch=1, heads=2, q_len=q_len, k_len=q_len + extra_keys, dim=4, v_dim=3,
                  seed=seed)
    out = flash_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k)
    expected = scaled_dot_product_attention(q, k, v, causal=causal)
    torch.testing.assert_close(out, expected, **EXACT)


@pytest.mark.parametrize("causal", [False, True])
def test_logsumexp_equals_torch_logsumexp_of_the_scaled_scores(causal):
    q, k, v = qkv(q_len=29, k_len=41)
    _, lse = flash_attention(q, k, v, causal=causal, block_q=8, block_k=16, return_lse=True)
    assert lse.shape == (2, 3, 29)
    torch.testing.assert_close(lse, torch.logsumexp(scaled_scores(q, k, causal), dim=-1), **EXACT)


def test_explicit_scale_is_used_instead_of_one_over_sqrt_d():
    q, k, v = qkv()
    out, lse = flash_attention(q, k, v, scale=0.3, block_q=8, block_k=8, return_lse=True)
    torch.testing.assert_close(out, scaled_dot_product_attention(q, k, v, scale=0.3), **EXACT)
    expected_lse = torch.logsumexp(scaled_scores(q, k, False, 0.3), dim=-1)
    torch.testing.assert_close(lse, expected_lse, **EXACT)


def test_grouped_kv_heads_equal_repeated_kv_heads():
    q, k, v = qkv(heads=4, kv_heads=2)
    out = flash_attention(q, k, v, causal=True, block_q=8, block_k=8)
    expected = scaled_dot_product_attention(q, k, v, causal=True)  # repeats kv heads itself
    torch.testing.assert_close(out, expected, **EXACT)


@pytest.mark.parametrize("causal", [False, True])
def test_gradients_equal_autograd_through_the_naive_form(causal):
    q, k, v = qkv(q_len=23, k_len=31, v_dim=5)
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn(2, 3, 23, 5, generator=g, dtype=torch.float64)
    grad_lse = torch.randn(2, 3, 23, generator=g, dtype=torch.float64)

    def grads(fn):
        inputs = [x.clone().requires_grad_() for x in (q, k, v)]
        out, lse = fn(*inputs)
        ((out * grad_out).sum() + (lse * grad_lse).sum()).backward()   # a gradient on both outputs
        return [x.grad for x in inputs]

    def naive(q, k, v):
        scores = scaled_scores(q, k, causal)
        return torch.softmax(scores, dim=-1) @ v, torch.logsumexp(scores, dim=-1)

    tiled = grads(lambda q, k, v: flash_attention(q, k, v, causal=causal, block_q=6, block_k=9,
                                                  return_lse=True))
    for got, expected in zip(tiled, grads(naive)):
        torch.testing.assert_close(got, expected, **EXACT)


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_passes(causal):
    q, k, v = (x.requires_grad_() for x in qkv(batch=1, heads=2, q_len=7, k_len=10, dim=4, v_dim=3))
    assert torch.autograd.gradcheck(
        lambda q, k, v: flash_attention(q, k, v, causal=causal, block_q=3, block_k=4, return_lse=True),
        (q, k, v),
    )


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_q,block_k", [(64, 64), (100, 48), (256, 512)])
def test_float32_error_is_at_most_twice_that_of_float32_naive_attention(causal, block_q, block_k):
    # Upstream's criterion (Dao-AILab/flash-attention tests): the fast kernel may be at most
    # twice as far from a high-precision reference as the plain implementation at the same
    # precision. Here the reference is float64 and both contestants run in float32.
    q, k, v = qkv(batch=2, heads=4, q_len=200, k_len=200, dim=64, v_dim=64)
    g = torch.Generator().manual_seed(2)
    grad_out = torch.randn(2, 4, 200, 64, generator=g, dtype=torch.float64)

    def run(fn, dtype):
        inputs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
        out = fn(*inputs)
        out.backward(grad_out.to(dtype))
        return [out.double()] + [x.grad.double() for x in inputs]

    def naive(q, k, v):
        return scaled_dot_product_attention(q, k, v, causal=causal)

    def tiled_fn(q, k, v):
        return flash_attention(q, k, v, causal=causal, block_q=block_q, block_k=block_k)

    reference, plain = run(naive, torch.float64), run(naive, torch.float32)
    tiled = run(tiled_fn, torch.float32)
    for name, ref, pt, ours in zip(["out", "dq", "dk", "dv"], reference, plain, tiled):
        assert (ours - ref).abs().max() <= 2 * (pt - ref).abs().max(), name


class LargestTensor(TorchDispatchMode):
    """Records the number of elements of the largest tensor any operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in tree_flatten(out)[0]:
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel())
        return out


@pytest.mark.parametrize("causal", [False, True])
def test_forward_and_backward_never_create_a_tensor_as_large_as_the_score_matrix(causal):
    batch, heads, n, dim, block = 1, 2, 1024, 16, 64
    q, k, v = (x.requires_grad_() for x in qkv(batch, heads, n, n, dim, dim, dtype=torch.float32))
    with LargestTensor() as probe:
        out = flash_attention(q, k, v, causal=causal, block_q=block, block_k=block)
        out.sum().backward()
    # Linear memory: nothing bigger than one (block × block) tile or one (n × d) matrix per
    # head, while the naive scores alone hold batch·heads·n·n elements (64 times more here).
    assert probe.largest <= batch * heads * max(block * block, n * dim)
    assert probe.largest * 64 <= batch * heads * n * n


# ---------------------------------------------------------------- key padding
# Documents of different lengths in one batch: each is checked against dense attention
# with the same key padding mask. A sequence that is all padding (length 0) has queries
# that see no key: dense attention gives them zeros, and so must the tiles.


def padding(lengths, k_len, *, left=()):
    """(batch, k_len) boolean, True = real key; sequences listed in ``left`` padded on the left."""
    keep = torch.arange(k_len)[None, :] < torch.tensor(lengths)[:, None]
    for b in left:
        keep[b] = keep[b].flip(0)
    return keep


def dense_padded(q, k, v, keep, causal):
    return scaled_dot_product_attention(q, k, v, keep[:, None, None, :], causal=causal)


@settings(max_examples=25, deadline=None)
@given(q_len=st.integers(1, 24), extra_keys=st.integers(0, 12), block_q=st.integers(1, 9),
       block_k=st.integers(1, 9), causal=st.booleans(), data=st.data(), seed=st.integers(0, 999))
def test_key_padding_equals_dense_masked_attention_property(q_len, extra_keys, block_q, block_k,
                                                            causal, data, seed):
    k_len = q_len + extra_keys
    lengths = data.draw(st.lists(st.integers(0, k_len), min_size=2, max_size=2))
    left = data.draw(st.lists(st.integers(0, 1), max_size=2, unique=True))
    keep = padding(lengths, k_len, left=left)
    q, k, v = qkv(batch=2, heads=2, q_len=q_len, k_len=k_len, dim=4, v_dim=3, seed=seed)
    out, lse = flash_attention(q, k, v, causal=causal, key_padding_mask=keep, block_q=block_q,
                               block_k=block_k, return_lse=True)
    torch.testing.assert_close(out, dense_padded(q, k, v, keep, causal), **EXACT)
    scores = scaled_scores(q, k, causal).masked_fill(~keep[:, None, None, :], -math.inf)
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1), **EXACT)  # -inf where empty


@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_gradients_equal_dense_masked_gradients(causal):
    keep = padding([37, 20, 0], 37, left=[1])  # full, left-padded, all padding
    q, k, v = qkv(batch=3, q_len=29, k_len=37)
    grad_out = torch.randn(3, 3, 29, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def grads(fn):
        inputs = [x.clone().requires_grad_() for x in (q, k, v)]
        out = fn(*inputs)
        return [out, *torch.autograd.grad(out, inputs, grad_out)]

    tiled = grads(lambda q, k, v: flash_attention(q, k, v, causal=causal, key_padding_mask=keep,
                                                  block_q=6, block_k=5))
    dense = grads(lambda q, k, v: dense_padded(q, k, v, keep, causal))
    for name, ours, expected in zip(["out", "dq", "dk", "dv"], tiled, dense):
        torch.testing.assert_close(ours, expected, **EXACT, msg=name)
    assert torch.equal(tiled[0][2], torch.zeros_like(tiled[0][2]))  # all padding: zeros


@pytest.mark.parametrize("causal", [False, True])
def test_key_padding_passes_gradcheck(causal):
    # Left padding under the causal mask would leave query 0 of sequence 1 with no key (an
    # lse of -inf, which finite differences cannot handle), so the causal case pads right.
    keep = padding([10, 6], 10, left=[] if causal else [1])
    q, k, v = (x.requires_grad_() for x in qkv(batch=2, heads=1, q_len=7, k_len=10, dim=3, v_dim=2))
    assert torch.autograd.gradcheck(
        lambda q, k, v: flash_attention(q, k, v, causal=causal, key_padding_mask=keep, block_q=3,
                                        block_k=4, return_lse=True), (q, k, v))
    # A sequence of padding only: its logsumexp is -inf (no finite difference), its output 0.
    empty = padding([10, 0], 10)
    assert torch.autograd.gradcheck(
        lambda q, k, v: flash_attention(q, k, v, causal=causal, key_padding_mask=empty, block_q=3,
                                        block_k=4), (q, k, v))


@pytest.mark.parametrize("causal", [False, True])
def test_left_padding_with_very_negative_scores_keeps_the_running_maximum_at_minus_inf(causal):
    # Regression: a row whose first key block is all padding must keep its running maximum at
    # -inf, not 0. With 0, every later score (here 4·1·(-60)/√4 = -120 each) is measured against
    # 0, exp(-120) underflows to 0 in float32, and the row came out as zeros. The tolerance is
    # float32's (the expected output is an ordinary softmax average of values).
    keep = padding([8, 4], 8, left=[1])      # sequence 1: keys 0-3 padding, keys 4-7 visible
    q = torch.ones(2, 1, 8, 4)
    k = -60 * torch.ones(2, 1, 8, 4)
    v = torch.randn(2, 1, 8, 4, generator=torch.Generator().manual_seed(0))
    out = flash_attention(q, k, v, causal=causal, key_padding_mask=keep, block_q=4, block_k=4)
    expected = dense_padded(q, k, v, keep, causal)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)  # causal: 4 rows see no key, 0


def test_padded_keys_get_no_gradient_and_do_not_change_the_output():
    keep = padding([12, 30], 30)
    q, k, v = (x.requires_grad_() for x in qkv(batch=2, q_len=30, k_len=30))
    out = flash_attention(q, k, v, key_padding_mask=keep, block_q=8, block_k=8)
    out.sum().backward()
    assert torch.equal(k.grad[0, :, 12:], torch.zeros_like(k.grad[0, :, 12:]))
    assert torch.equal(v.grad[0, :, 12:], torch.zeros_like(v.grad[0, :, 12:]))
    short = flash_attention(q[:1], k[:1, :, :12], v[:1, :, :12], block_q=8, block_k=8)
    torch.testing.assert_close(out[:1], short, **EXACT)


def test_bad_key_padding_masks_are_rejected_by_name():
    q, k, v = qkv(q_len=5, k_len=9)
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        flash_attention(q, k, v, key_padding_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="key_padding_mask must be boolean"):
        flash_attention(q, k, v, key_padding_mask=torch.ones(2, 9))


def test_options_are_keyword_only():
    q, k, v = qkv()
    with pytest.raises(TypeError):
        flash_attention(q, k, v, True)


@pytest.mark.parametrize("block", [0, -3])
def test_block_sizes_must_be_positive(block):
    q, k, v = qkv()
    with pytest.raises(ValueError, match="block_q"):
        flash_attention(q, k, v, block_q=block)
    with pytest.raises(ValueError, match="block_k"):
        flash_attention(q, k, v, block_k=block)


def test_block_size_must_be_an_int():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="block_q"):
        flash_attention(q, k, v, block_q=16.0)


def test_inputs_must_have_four_dimensions():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"q must have 4 dimensions.*\(37, 8\)"):
        flash_attention(q[0, 0], k, v)
    with pytest.raises(ValueError, match="k must have 4 dimensions"):
        flash_attention(q, k[0], v)


def test_causal_attention_needs_at_least_as_many_keys_as_queries():
    q, k, v = qkv(q_len=10, k_len=4)
    with pytest.raises(ValueError, match="k_len >= q_len"):
        flash_attention(q, k, v, causal=True)


def test_integer_inputs_are_refused():
    q, k, v = (torch.ones(1, 1, 4, 2, dtype=torch.long) for _ in range(3))
    with pytest.raises(TypeError, match="floating point"):
        flash_attention(q, k, v)


def test_standard_attention_moves_four_nd_plus_four_n_squared_elements():
    # Algorithm 0: read Q, K, write S; read S, write P; read P, V, write O.
    n, d = 1000, 64
    assert hbm_accesses_standard(seq_len=n, head_dim=d)["total"] == 4 * n * d + 4 * n * n


def test_flash_block_sizes_follow_algorithm_1():
    # B_c = ceil(M/4d) = 391, B_r = min(B_c, d)
    assert flash_block_sizes(head_dim=64, sram_size=100_000) == (64, 391)
    assert flash_block_sizes(head_dim=64, sram_size=1024) == (4, 4)


def test_flash_hbm_accesses_fall_as_sram_grows_and_beat_standard_attention():
    n, d = 4096, 64
    totals = [hbm_accesses_flash(seq_len=n, head_dim=d, sram_size=m)["total"] for m in (4096, 16384, 65536,
                                                                                        262144)]
    assert totals == sorted(totals, reverse=True)
    assert totals[-1] < hbm_accesses_standard(seq_len=n, head_dim=d)["total"] / 5


def test_flash_hbm_accesses_grow_as_n_squared_d_squared_over_m():
    # Theorem 2: Θ(N²d²/M). Doubling N quadruples the count; doubling M halves it
    # (up to the linear terms, hence the 1% tolerance at these sizes).
    base = hbm_accesses_flash(seq_len=2**14, head_dim=64, sram_size=2**14)["total"]
    assert hbm_accesses_flash(seq_len=2**15, head_dim=64,
                              sram_size=2**14)["total"] / base == pytest.approx(4, rel=0.01)
    assert hbm_accesses_flash(seq_len=2**14, head_dim=64,
                              sram_size=2**15)["total"] / base == pytest.approx(0.5, rel=0.01)


def test_sram_must_hold_a_row():
    with pytest.raises(ValueError, match="sram_size"):
        hbm_accesses_flash(seq_len=1024, head_dim=64, sram_size=32)
