"""FlexAttention wrapper: its masks and score changes equal dense masked / biased attention."""
import functools

import pytest
import torch

from attnbook.attention import flex
from attnbook.attention.dot_product import scaled_dot_product_attention
from attnbook.attention.flex import (
    FlexAttentionUnavailable,
    alibi_score_mod,
    causal_mask_mod,
    dense_mask,
    dense_reference,
    flex_attention,
    make_block_mask,
    sliding_window_mask_mod,
)
from attnbook.attention.masks import causal_mask
from attnbook.attention.positional import alibi_bias, attention_with_bias, relative_positions

# float64: FlexAttention's eager path and the dense references sum the same terms in a
# different order, so they agree to a few ulps; 1e-12 is far below any masking error.
EXACT = dict(rtol=0, atol=1e-12)


@functools.cache
def flex_runs_here() -> tuple[bool, str]:
    """Availability, then one tiny call: some failures (no TorchDynamo) only show when called."""
    available, reason = flex.flex_attention_available()
    if not available:
        return False, reason
    try:
        x = torch.zeros(1, 1, 4, 2)
        flex_attention(x, x, x)
    except Exception as error:  # noqa: BLE001 -- the reason is what the skip reports
        return False, f"FlexAttention failed on this CPU: {type(error).__name__}: {error}"
    return True, ""


needs_flex = pytest.mark.skipif(not flex_runs_here()[0], reason=flex_runs_here()[1] or "available")


def qkv(batch=2, heads=4, q_len=48, k_len=48, dim=8, kv_heads=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    kv_heads = heads if kv_heads is None else kv_heads
    return (torch.randn(batch, heads, q_len, dim, generator=g, dtype=torch.float64),
            torch.randn(batch, kv_heads, k_len, dim, generator=g, dtype=torch.float64),
            torch.randn(batch, kv_heads, k_len, dim, generator=g, dtype=torch.float64))


def band_mask(q_len, k_len, window, causal):
    """The sliding window written directly on j - i (bottom-right aligned)."""
    distance = relative_positions(q_len, k_len)
    return (distance >= -window) & (distance <= (0 if causal else window))


@needs_flex
def test_no_mods_equal_plain_attention():
    q, k, v = qkv()
    expected = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(flex_attention(q, k, v), expected, **EXACT)


@needs_flex
@pytest.mark.parametrize("q_len,k_len", [(48, 48), (20, 48)])
def test_causal_block_mask_equals_dense_causal_attention(q_len, k_len):
    q, k, v = qkv(q_len=q_len, k_len=k_len)
    block_mask = make_block_mask(causal_mask_mod(q_len, k_len), q_len, k_len, block_size=16)
    expected = scaled_dot_product_attention(q, k, v, causal=True)
    torch.testing.assert_close(flex_attention(q, k, v, block_mask=block_mask), expected, **EXACT)


@needs_flex
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [0, 3, 20])
def test_sliding_window_block_mask_equals_dense_band_masked_attention(window, causal):
    q, k, v = qkv()
    mask_mod = sliding_window_mask_mod(window, 48, 48, causal=causal)
    block_mask = make_block_mask(mask_mod, 48, 48, block_size=16)
    expected = scaled_dot_product_attention(q, k, v, band_mask(48, 48, window, causal))
    torch.testing.assert_close(flex_attention(q, k, v, block_mask=block_mask), expected, **EXACT)


@needs_flex
@pytest.mark.parametrize("q_len", [48, 17])
def test_alibi_score_mod_equals_dense_alibi_bias(q_len):
    q, k, v = qkv(q_len=q_len)
    score_mod = alibi_score_mod(4, q_len, 48, dtype=torch.float64)
    block_mask = make_block_mask(causal_mask_mod(q_len, 48), q_len, 48, block_size=16)
    bias = alibi_bias(4, q_len, 48, dtype=torch.float64)                 # (heads, q_len, k_len)
    expected = attention_with_bias(q, k, v, bias, causal=True)
    got = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
    torch.testing.assert_close(got, expected, **EXACT)


@needs_flex
def test_dense_reference_equals_flex_attention_for_combined_mods():
    q, k, v = qkv(kv_heads=2)                                           # grouped kv heads too
    score_mod = alibi_score_mod(4, 48, 48, dtype=torch.float64)
    mask_mod = sliding_window_mask_mod(5, 48, 48)
    block_mask = make_block_mask(mask_mod, 48, 48, block_size=16)
    got = flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
    torch.testing.assert_close(got, dense_reference(q, k, v, score_mod, mask_mod), **EXACT)


@needs_flex
def test_block_mask_of_a_causal_pattern_skips_the_tiles_above_the_diagonal():
    block_mask = make_block_mask(causal_mask_mod(64, 64), 64, 64, block_size=16)
    # Query block i needs key blocks 0..i: 1, 2, 3, 4 of the 4 (partial and full together).
    visible = block_mask.kv_num_blocks + block_mask.full_kv_num_blocks
    assert visible.flatten().tolist() == [1, 2, 3, 4]
    # Only the diagonal tiles are partial (need the mask_mod); the others are full.
    assert block_mask.full_kv_num_blocks.flatten().tolist() == [0, 1, 2, 3]


def test_dense_mask_of_the_causal_mask_mod_is_the_causal_mask():
    for q_len, k_len in [(6, 6), (3, 7)]:
        got = dense_mask(causal_mask_mod(q_len, k_len), q_len, k_len)[0, 0]
        assert torch.equal(got, causal_mask(q_len, k_len))


def test_dense_mask_of_the_sliding_window_is_a_band():
    got = dense_mask(sliding_window_mask_mod(2, 9, 9, causal=True), 9, 9)[0, 0]
    assert torch.equal(got, band_mask(9, 9, 2, True))
    assert got.sum(-1).max() == 3                       # the query and two keys before it


@needs_flex
def test_inputs_that_require_grad_are_refused_on_the_cpu():
    q, k, v = qkv()
    with pytest.raises(NotImplementedError, match="no backward pass on the CPU"):
        flex_attention(q.requires_grad_(), k, v)


def test_missing_flex_attention_raises_a_clear_error(monkeypatch):
    monkeypatch.setattr(flex, "_flex", None)
    monkeypatch.setattr(flex, "_IMPORT_ERROR", ImportError("no module named flex_attention"))
    q, k, v = qkv()
    message = "FlexAttention is not available.*torch >= 2.5"
    with pytest.raises(FlexAttentionUnavailable, match=message):
        flex_attention(q, k, v)
    assert flex.flex_attention_available()[0] is False


def test_window_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="window must be >= 0"):
        sliding_window_mask_mod(-1, 8, 8)
    with pytest.raises(TypeError, match="window must be an int"):
        sliding_window_mask_mod(2.0, 8, 8)


def test_inputs_must_have_four_dimensions():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        flex_attention(q[0], k, v)
