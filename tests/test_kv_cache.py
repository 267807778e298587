"""KV cache: cached decoding equals recomputation; cache size; the cache-size calculator."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention import MultiHeadAttention, split_heads
from attnbook.attention.cache_size import (
    LLAMA2_7B, cache_table, dtype_bytes, kv_bytes_per_token, kv_cache_bytes, kv_elements_per_token,
)
from attnbook.attention.kv_cache import (
    CausalSelfAttention, KVCache, TinyDecoder, causal_self_attention, greedy_generate,
)

VOCAB, D_MODEL, HEADS = 11, 16, 4


def make_decoder(dtype=torch.float64, num_kv_heads=None, seed=0, max_len=32):
    torch.manual_seed(seed)
    model = TinyDecoder(VOCAB, D_MODEL, HEADS, num_kv_heads, num_layers=2, max_len=max_len,
                        dtype=dtype)
    return model.eval()


def random_tokens(batch=2, seq=10, seed=1):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def step_by_step_logits(model, tokens):
    cache = model.new_cache()
    steps = [model.forward_step(tokens[:, t], cache) for t in range(tokens.shape[1])]
    return torch.cat(steps, dim=1)


# --- cached == recomputed -------------------------------------------------------------

@pytest.mark.parametrize("num_kv_heads", [HEADS, 2, 1])
def test_cached_decoding_reproduces_full_logits_float64(num_kv_heads):
    model, tokens = make_decoder(num_kv_heads=num_kv_heads), random_tokens()
    with torch.no_grad():
        full, cached = model(tokens), step_by_step_logits(model, tokens)
    # Same arithmetic in another order: float64 round-off is ~1e-15, so 1e-10 is strict.
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-10)


def test_cached_decoding_reproduces_full_logits_float32():
    model, tokens = make_decoder(dtype=torch.float32), random_tokens()
    with torch.no_grad():
        full, cached = model(tokens), step_by_step_logits(model, tokens)
    # float32 round-off (~1e-7 per op) accumulated over 2 layers stays far below 1e-5.
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)


def test_prefill_then_single_steps_equals_full_sequence():
    model, tokens = make_decoder(), random_tokens(seq=9)
    cache = model.new_cache()
    with torch.no_grad():
        prefill = model.forward_step(tokens[:, :5], cache)  # the prompt in one call
        steps = [model.forward_step(tokens[:, t], cache) for t in range(5, 9)]
        full = model(tokens)
    cached = torch.cat([prefill, *steps], dim=1)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-10)  # float64 round-off


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(1, 8), min_size=1, max_size=5).map(sorted))
def test_cached_layer_equals_full_layer_for_any_chunking(cuts):
    torch.manual_seed(0)
    layer = CausalSelfAttention(D_MODEL, HEADS, 2, dtype=torch.float64)
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    bounds = [0, *sorted(set(cuts)), 9]
    cache = KVCache(1)
    with torch.no_grad():
        pieces = [layer(x[:, a:b], cache) for a, b in zip(bounds, bounds[1:]) if b > a]
        full = layer(x)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-10)  # float64


def test_causal_self_attention_equals_multihead_attention_with_causal_mask():
    torch.manual_seed(0)
    layer = CausalSelfAttention(D_MODEL, HEADS, 2, dtype=torch.float64)
    x = torch.randn(3, 7, D_MODEL, dtype=torch.float64)
    expected, _ = layer.mha(x, causal=True)
    # Same weights, same kernel: only the q/k/v split differs, so only round-off remains.
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_top_left_causal_mask_breaks_cached_decoding():
    """Why the cache uses a bottom-right mask: torch's is_causal with one query and t keys
    lets the new token see only the first key."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 4, dtype=torch.float64) for n in (1, 5, 5))
    right = F.scaled_dot_product_attention(q, k, v)  # one new query may see every cached key
    wrong = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(wrong, v[:, :, :1])  # it attended key 0 only
    assert (right - wrong).abs().max() > 1e-3


def test_cached_greedy_generation_equals_uncached_greedy_generation():
    model, prompt = make_decoder(), random_tokens(seq=4)
    cached_tokens, cached_logits = greedy_generate(model, prompt, 12, use_cache=True)
    plain_tokens, plain_logits = greedy_generate(model, prompt, 12, use_cache=False)
    assert torch.equal(cached_tokens, plain_tokens)
    assert torch.equal(cached_tokens[:, :4], prompt)
    torch.testing.assert_close(cached_logits, plain_logits, rtol=0, atol=1e-10)  # float64 round-off


def test_forward_step_accepts_one_token_per_sequence():
    model, tokens = make_decoder(), random_tokens(seq=1)
    with torch.no_grad():
        assert model.forward_step(tokens[:, 0], model.new_cache()).shape == (2, 1, VOCAB)


def test_gradcheck_cached_attention_float64():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 4, dtype=torch.float64, requires_grad=True)
    w_in = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)  # 2 heads, 1 kv head, size 2
    w_out = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)

    def prefill_then_step(x, w_in, w_out):  # gradients flow through the cached keys and values
        cache = KVCache(1)
        first = causal_self_attention(x[:, :3], w_in, None, w_out, None, 2, 1, cache=cache)
        last = causal_self_attention(x[:, 3:], w_in, None, w_out, None, 2, 1, cache=cache)
        return torch.cat([first, last], dim=1)

    assert torch.autograd.gradcheck(prefill_then_step, (x, w_in, w_out))


# --- cache size --------------------------------------------------------------------------

def test_cache_length_grows_by_the_number_of_new_tokens():
    model, tokens = make_decoder(), random_tokens(seq=8)
    cache = model.new_cache()
    assert len(cache) == 0 and cache.nbytes == 0
    with torch.no_grad():
        model.forward_step(tokens[:, :5], cache)
        assert [cache.seq_len(layer) for layer in range(2)] == [5, 5]
        for expected in (6, 7, 8):
            model.forward_step(tokens[:, expected - 1], cache)
            assert len(cache) == expected
    assert cache.keys[0].shape == (2, HEADS, 8, D_MODEL // HEADS)  # (batch, kv_heads, seq, d_h)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cache_bytes_match_the_formula_and_the_calculator(dtype):
    model, tokens = make_decoder(dtype=dtype, num_kv_heads=2), random_tokens(batch=3, seq=7)
    cache = model.new_cache()
    with torch.no_grad():
        model.forward_step(tokens, cache)
    head_dim, item = D_MODEL // HEADS, dtype.itemsize
    # k and v · layers · batch · kv_heads · seq · head_dim · bytes
    assert cache.nbytes == 2 * 2 * 3 * 2 * 7 * head_dim * item
    assert cache.nbytes == kv_cache_bytes("gqa", num_layers=2, num_kv_heads=2, head_dim=head_dim,
                                          seq_len=7, batch=3, dtype=dtype)


def test_cache_bytes_scale_with_kv_heads():
    tokens = random_tokens(seq=6)
    sizes = {}
    for kv_heads in (1, 2, 4):
        model, cache = make_decoder(num_kv_heads=kv_heads), KVCache(2)
        with torch.no_grad():
            model.forward_step(tokens, cache)
        sizes[kv_heads] = cache.nbytes
    assert sizes[2] == 2 * sizes[1] and sizes[4] == 4 * sizes[1]


# --- the calculator ----------------------------------------------------------------------

def test_llama2_7b_needs_half_a_mebibyte_per_token():
    # 2 (k, v) · 32 layers · 32 kv heads · 128 dims · 2 bytes (fp16) = 524288 B = 0.5 MiB.
    assert kv_bytes_per_token("mha", dtype="float16", **LLAMA2_7B) == 2 * 32 * 32 * 128 * 2 == 2**19
    assert kv_cache_bytes("mha", dtype=torch.float16, seq_len=4096, **LLAMA2_7B) == 2 * 2**30


@settings(max_examples=25, deadline=None)
@given(layers=st.integers(1, 96), groups=st.integers(1, 16), per_group=st.integers(1, 8),
       head_dim=st.sampled_from([32, 64, 128]))
def test_calculator_follows_deepseek_table_1(layers, groups, per_group, head_dim):
    heads = groups * per_group
    dims = {"num_layers": layers, "num_heads": heads, "num_kv_heads": groups, "head_dim": head_dim}
    assert kv_elements_per_token("mha", **dims) == 2 * heads * head_dim * layers
    assert kv_elements_per_token("gqa", **dims) == 2 * groups * head_dim * layers
    assert kv_elements_per_token("mqa", **dims) == 2 * head_dim * layers
    assert kv_elements_per_token("mla", d_latent=4 * head_dim, d_rope=head_dim // 2, **dims) == \
        (4 * head_dim + head_dim // 2) * layers


def test_gqa_limits_in_the_calculator_are_mha_and_mqa():
    dims = {"num_layers": 4, "num_heads": 8, "head_dim": 64}
    elements = kv_elements_per_token
    assert elements("gqa", num_kv_heads=8, **dims) == elements("mha", **dims)
    assert elements("gqa", num_kv_heads=1, **dims) == elements("mqa", **dims)


def test_cache_table_has_one_row_per_attention_kind():
    rows = cache_table(num_layers=2, num_heads=8, head_dim=64, num_kv_heads=2, d_latent=256,
                       d_rope=32, dtype="bfloat16", seq_len=10, batch=3)
    assert [r["attention"] for r in rows] == ["mha", "gqa", "mqa", "mla"]
    assert [r["per_token_in_head_dim_layers"] for r in rows] == [16, 4, 2, 4.5]
    assert all(r["total_bytes"] == r["bytes_per_token"] * 30 for r in rows)


def test_dtype_bytes_accepts_names_dtypes_and_ints():
    assert dtype_bytes("bfloat16") == dtype_bytes(torch.bfloat16) == dtype_bytes(2) == 2
    assert dtype_bytes(torch.float32) == 4


# --- bad input -----------------------------------------------------------------------------

def test_calculator_rejects_bad_input():
    with pytest.raises(ValueError, match="attention='mhq'"):
        kv_elements_per_token("mhq", num_layers=2, num_heads=2, head_dim=4)
    with pytest.raises(ValueError, match="needs num_kv_heads"):
        kv_elements_per_token("gqa", num_layers=2, head_dim=4)
    with pytest.raises(ValueError, match="num_heads=6 is not divisible by num_kv_heads=4"):
        kv_elements_per_token("gqa", num_layers=2, num_heads=6, num_kv_heads=4, head_dim=4)
    with pytest.raises(ValueError, match="dtype='fp13'"):
        dtype_bytes("fp13")
    with pytest.raises(ValueError, match="seq_len"):
        kv_cache_bytes("mqa", num_layers=1, head_dim=4, seq_len=0)


def test_kv_cache_rejects_bad_updates():
    with pytest.raises(ValueError, match="num_layers"):
        KVCache(0)
    cache = KVCache(2)
    k = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="layer=2 is out of range"):
        cache.update(2, k, k)
    with pytest.raises(ValueError, match="k must have 4 dimensions"):
        cache.update(0, k[0], k)
    cache.update(0, k, k)
    with pytest.raises(ValueError, match=r"k has shape \(1, 1, 3, 4\)"):
        cache.update(0, k[:, :1], k[:, :1])  # kv_heads changed
    with pytest.raises(TypeError, match="k is torch.float64"):
        cache.update(0, k.double(), k.double())


def test_decoder_rejects_bad_tokens():
    model = make_decoder(max_len=8)
    with pytest.raises(TypeError, match="tokens must be integer ids"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="max_len=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(model, torch.zeros(1, 2, dtype=torch.long), 0)


def test_causal_self_attention_rejects_wrong_width():
    layer = CausalSelfAttention(D_MODEL, HEADS)
    with pytest.raises(ValueError, match="d_model=16"):
        layer(torch.zeros(1, 3, 8))
    with pytest.raises(ValueError, match="num_heads=4 is not divisible by num_kv_heads=3"):
        CausalSelfAttention(D_MODEL, HEADS, 3)


def test_split_heads_layout_used_by_the_cache():
    # Sanity check of the convention the cache relies on: (batch, heads, seq, head_dim).
    x = torch.arange(2 * 3 * 8.0).view(2, 3, 8)
    assert split_heads(x, 2).shape == (2, 2, 3, 4)
    assert isinstance(CausalSelfAttention(8, 2).mha, MultiHeadAttention)
