"""Multi-head latent attention (DeepSeek-V2): naive == absorbed, the latent cache, and why
the RoPE key is decoupled."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention.cache_size import (
    DEEPSEEK_V2, kv_bytes_per_token, kv_elements_per_token, mla_equivalent_groups,
)
from attnbook.attention.latent import (
    LatentCache, MultiHeadLatentAttention, absorb_weights, latent_attention_absorbed,
    latent_attention_naive, rope_on_compressed_keys,
)

D_MODEL, HEADS, HEAD_DIM, D_LATENT, D_ROPE = 16, 4, 6, 10, 4


def make_mla(d_q_latent=None, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return MultiHeadLatentAttention(D_MODEL, HEADS, HEAD_DIM, D_LATENT, D_ROPE, d_q_latent,
                                    dtype=dtype)


def inputs(batch=2, seq=7, dtype=torch.float64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, D_MODEL, dtype=dtype, generator=generator)


def decode_step_by_step(mla, x, absorb):
    cache = mla.new_cache()
    steps = [mla(x[:, t:t + 1], cache, absorb=absorb) for t in range(x.shape[1])]
    return torch.cat(steps, dim=1), cache


# --- naive == absorbed ---------------------------------------------------------------------

@pytest.mark.parametrize("d_q_latent", [None, 8])
def test_naive_equals_absorbed_on_full_sequences(d_q_latent):
    mla, x = make_mla(d_q_latent), inputs()
    # Absorption only reassociates matrix products: float64 round-off ~1e-15, so 1e-10 is strict.
    torch.testing.assert_close(mla(x, absorb=True), mla(x, absorb=False), rtol=0, atol=1e-10)


@pytest.mark.parametrize("absorb", [False, True])
def test_cached_decoding_equals_the_full_naive_sequence(absorb):
    mla, x = make_mla(d_q_latent=8), inputs()
    stepped, _ = decode_step_by_step(mla, x, absorb)
    torch.testing.assert_close(stepped, mla(x), rtol=0, atol=1e-10)  # float64 round-off


def test_prefill_then_steps_mix_naive_and_absorbed():
    """A prompt run the naive way, then absorbed decoding on the same latent cache."""
    mla, x = make_mla(), inputs(seq=8)
    cache = mla.new_cache()
    prefill = mla(x[:, :5], cache, absorb=False)
    steps = [mla(x[:, t:t + 1], cache, absorb=True) for t in range(5, 8)]
    decoded = torch.cat([prefill, *steps], dim=1)
    torch.testing.assert_close(decoded, mla(x), rtol=0, atol=1e-10)  # float64 round-off


def test_naive_equals_absorbed_in_float32():
    mla, x = make_mla(dtype=torch.float32), inputs(dtype=torch.float32)
    # float32 round-off of products of up to d_c + d_h terms: far below 1e-5.
    torch.testing.assert_close(mla(x, absorb=True), mla(x), rtol=0, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(q_len=st.integers(1, 4), past=st.integers(0, 4), seed=st.integers(0, 2**16))
def test_functional_naive_equals_absorbed_for_any_lengths(q_len, past, seed):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=g)

    k_len = q_len + past  # q_len new tokens after `past` cached ones
    q_rope = rand(2, HEADS, q_len, D_ROPE)
    latent, rope_key = rand(2, 1, k_len, D_LATENT), rand(2, 1, k_len, D_ROPE)
    w_uq = rand(HEADS * HEAD_DIM, D_MODEL)
    w_uk, w_uv = rand(HEADS * HEAD_DIM, D_LATENT), rand(HEADS * HEAD_DIM, D_LATENT)
    w_o = rand(D_MODEL, HEADS * HEAD_DIM)
    # With q_content = W^{UQ} h, the absorbed query W^{UK}ᵀ W^{UQ} h gives the same scores.
    h = rand(2, q_len, D_MODEL)
    q_content = (h @ w_uq.T).view(2, q_len, HEADS, HEAD_DIM).transpose(1, 2)
    naive = latent_attention_naive(q_content, q_rope, latent, rope_key, w_uk, w_uv, scale=0.3)
    naive = naive.transpose(1, 2).flatten(2) @ w_o.T
    w_q_latent, w_o_latent = absorb_weights(w_uq, w_uk, w_uv, w_o, HEADS)
    q_latent = (h @ w_q_latent.T).view(2, q_len, HEADS, D_LATENT).transpose(1, 2)
    absorbed = latent_attention_absorbed(q_latent, q_rope, latent, rope_key, scale=0.3)
    absorbed = absorbed.transpose(1, 2).flatten(2) @ w_o_latent.T
    torch.testing.assert_close(absorbed, naive, rtol=0, atol=1e-10)  # float64, reassociated


def test_mla_is_causal():
    mla, x = make_mla(), inputs()
    changed = x.clone()
    changed[:, 4:] += 1.0  # perturb the future of position 3
    for absorb in (False, True):
        before, after = mla(x, absorb=absorb), mla(changed, absorb=absorb)
        # No leak: the first 4 outputs agree to round-off (a leak of the +1.0 would be ~1e-1).
        torch.testing.assert_close(after[:, :4], before[:, :4], rtol=0, atol=1e-12)
        assert (after[:, 4:] - before[:, 4:]).abs().max() > 1e-3


# --- the cache -----------------------------------------------------------------------------

def test_latent_cache_holds_d_latent_plus_d_rope_per_token_per_layer():
    mla, x = make_mla(), inputs(batch=3, seq=5)
    _, cache = decode_step_by_step(mla, x, absorb=True)
    assert cache.keys[0].shape == (3, 1, 5, D_LATENT)   # c_t, one shared "head"
    assert cache.values[0].shape == (3, 1, 5, D_ROPE)   # k^R_t
    assert cache.nbytes == 3 * 5 * (D_LATENT + D_ROPE) * 8  # batch · seq · (d_c + d_R) · float64
    per_token = kv_bytes_per_token("mla", num_layers=1, d_latent=D_LATENT, d_rope=D_ROPE,
                                   dtype=torch.float64)
    assert cache.nbytes == per_token * 3 * 5


def test_two_layers_share_one_latent_cache():
    torch.manual_seed(0)
    layers = [make_mla(seed=s) for s in (0, 1)]
    x = inputs(seq=4)
    cache = LatentCache(2)
    for t in range(4):
        h = x[:, t:t + 1]
        for i, layer in enumerate(layers):
            h = h + layer(h, cache, i, absorb=True)
    assert [cache.seq_len(i) for i in (0, 1)] == [4, 4]
    # layers · batch · seq · (d_c + d_R) · 8 bytes
    assert cache.nbytes == 2 * 2 * 4 * (D_LATENT + D_ROPE) * 8


def test_mla_cache_is_smaller_than_mha_with_the_same_heads():
    mha = kv_elements_per_token("mha", num_layers=1, num_heads=HEADS, head_dim=HEAD_DIM)
    mla = kv_elements_per_token("mla", num_layers=1, d_latent=D_LATENT, d_rope=D_ROPE)
    assert (mha, mla) == (2 * HEADS * HEAD_DIM, D_LATENT + D_ROPE)


def test_deepseek_v2_ratio_is_four_and_a_half_head_dims_per_layer():
    head_dim, layers = 128, 60
    shapes = {"d_latent": 4 * head_dim, "d_rope": head_dim // 2}
    elements = kv_elements_per_token("mla", num_layers=layers, **shapes)
    assert elements == 4.5 * head_dim * layers  # DeepSeek-V2, Table 1: (d_c + d_h^R) l = 4.5 d_h l
    assert mla_equivalent_groups(head_dim=head_dim, **shapes) == 2.25
    # With DeepSeek-V2's own shapes: 576 elements per layer against 2 · 128 · 128 for MHA.
    assert kv_elements_per_token("mla", **DEEPSEEK_V2) == 576 * 60
    assert kv_elements_per_token("mha", **DEEPSEEK_V2) == 2 * 128 * 128 * 60


# --- why the RoPE key is decoupled ----------------------------------------------------------

def test_rope_on_compressed_keys_breaks_absorption():
    mla, x = make_mla(), inputs()
    naive, absorbed = rope_on_compressed_keys(mla, x)
    assert (naive - absorbed).abs().max() > 1e-3  # the folded query misses the key's rotation R_j
    # Control: with every position at 0 the rotations are the identity: absorption is exact again.
    naive0, absorbed0 = rope_on_compressed_keys(mla, x, positions=torch.zeros(x.shape[1]))
    torch.testing.assert_close(absorbed0, naive0, rtol=0, atol=1e-10)  # float64 round-off


# --- gradients -----------------------------------------------------------------------------

@pytest.mark.parametrize("absorb", [False, True])
def test_gradcheck_mla_layer_float64(absorb):
    torch.manual_seed(0)
    mla = MultiHeadLatentAttention(4, 2, 2, 3, 2, d_q_latent=3, dtype=torch.float64)
    x = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)

    def prefill_then_step(x):  # gradients flow through the cached latents and RoPE keys too
        cache = mla.new_cache()
        first, last = mla(x[:, :2], cache, absorb=absorb), mla(x[:, 2:], cache, absorb=absorb)
        return torch.cat([first, last], dim=1)

    assert torch.autograd.gradcheck(prefill_then_step, (x,))


def test_gradcheck_latent_attention_functions_float64():
    g = torch.Generator().manual_seed(0)
    def rand(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=g, requires_grad=True)

    q_c, q_r = rand(1, 2, 2, 2), rand(1, 2, 2, 2)      # 2 heads, 2 queries, d_h = d_R = 2
    latent, rope_key = rand(1, 1, 3, 3), rand(1, 1, 3, 2)  # 3 keys, d_c = 3
    w_uk, w_uv = rand(4, 3), rand(4, 3)
    assert torch.autograd.gradcheck(
        lambda *a: latent_attention_naive(*a, scale=0.5), (q_c, q_r, latent, rope_key, w_uk, w_uv))
    q_latent = rand(1, 2, 2, 3)
    assert torch.autograd.gradcheck(
        lambda *a: latent_attention_absorbed(*a, scale=0.5), (q_latent, q_r, latent, rope_key))


# --- bad input -----------------------------------------------------------------------------

def test_mla_rejects_bad_sizes():
    with pytest.raises(ValueError, match="d_rope=3 must be even"):
        MultiHeadLatentAttention(8, 2, 4, 6, 3)
    with pytest.raises(ValueError, match="d_latent must be a positive integer"):
        MultiHeadLatentAttention(8, 2, 4, 0, 2)
    with pytest.raises(TypeError, match="head_dim must be an int"):
        MultiHeadLatentAttention(8, 2, 4.0, 6, 2)


def test_mla_rejects_bad_inputs():
    mla = make_mla()
    with pytest.raises(ValueError, match="d_model=16"):
        mla(torch.zeros(1, 3, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        mla(torch.zeros(3, 16, dtype=torch.float64))
    q = torch.zeros(1, HEADS, 2, HEAD_DIM)
    with pytest.raises(ValueError, match="latent and rope_key have one shared head"):
        two_headed_latent = torch.zeros(1, 2, 2, D_LATENT)  # latents have a single head
        w_up = torch.zeros(HEADS * HEAD_DIM, D_LATENT)
        latent_attention_naive(q, q[..., :D_ROPE], two_headed_latent, torch.zeros(1, 2, 2, D_ROPE),
                               w_up, w_up, scale=1.0)


def test_latent_cache_names_its_entries_in_errors():
    cache = LatentCache(1)
    cache.update(0, torch.zeros(1, 1, 2, D_LATENT), torch.zeros(1, 1, 2, D_ROPE))
    with pytest.raises(ValueError, match=r"latent has shape \(1, 1, 1, 7\)"):
        cache.update(0, torch.zeros(1, 1, 1, 7), torch.zeros(1, 1, 1, D_ROPE))
