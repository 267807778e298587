"""Chapter 9's library code: GQA in the book's GPT (config, conversion from a multi-head
checkpoint) and the sliding-window ring-buffer cache."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention.cache_size import kv_bytes_per_token
import attnbook.attention.kv_cache as kv_cache_module
import attnbook.models.gpt as gpt_module
from attnbook.attention.dot_product import sdpa
from attnbook.attention.kv_cache import KVCache, SlidingWindowCache, causal_self_attention, causal_window_mask
from attnbook.attention.local import sliding_window_mask
from attnbook.attention.multihead import MultiHeadAttention, merge_heads, project_heads
from attnbook.models.gpt import GPT, GPTConfig, gpt_to_gqa

VOCAB, HEADS = 13, 4


def _model(positions="learned", num_kv_heads=None, seed=0, dtype=torch.float64, max_len=40):
    torch.manual_seed(seed)
    config = GPTConfig(VOCAB, max_len=max_len, d_model=16, num_heads=HEADS, num_layers=2,
                       positions=positions, num_kv_heads=num_kv_heads)
    return GPT(config, dtype=dtype).eval()


def _tokens(batch=2, seq=30, seed=1):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _stepwise(model, tokens, cache, chunk=1):
    with torch.no_grad():
        return torch.cat([model(tokens[:, t:t + chunk], cache)
                          for t in range(0, tokens.shape[1], chunk)], dim=1)


# --- GQA in the GPT ---------------------------------------------------------------------

def test_num_kv_heads_defaults_to_num_heads():
    assert GPTConfig(VOCAB, num_heads=4, d_model=16).num_kv_heads == 4


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_converting_to_as_many_kv_heads_as_heads_gives_identical_logits(positions):
    model, tokens = _model(positions), _tokens()
    converted = gpt_to_gqa(model, HEADS)
    with torch.no_grad():
        # the mean of one head is that head: same weights, same arithmetic, so exactly equal
        torch.testing.assert_close(converted(tokens), model(tokens), rtol=0, atol=0)


@pytest.mark.parametrize("positions", ["learned", "rope"])
@pytest.mark.parametrize("num_kv_heads", [2, 1])
def test_cached_equals_recomputed_with_gqa(positions, num_kv_heads):
    model, tokens = _model(positions, num_kv_heads=num_kv_heads), _tokens()
    with torch.no_grad():
        full = model(tokens)
    cached = _stepwise(model, tokens, model.new_cache())
    # float64, same products in another blocking: round-off ~1e-16, 1e-12 is a wide margin
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-12)


def test_converted_model_is_exact_when_heads_in_a_group_are_identical():
    model = _model()
    with torch.no_grad():
        for block in model.blocks:  # make heads 0,1 and 2,3 share their K and V rows
            w = block.attn.mha.in_proj_weight
            d = 16 // HEADS
            for part in (1, 2):  # K then V rows
                base = part * 16
                w[base + d:base + 2 * d] = w[base:base + d]
                w[base + 3 * d:base + 4 * d] = w[base + 2 * d:base + 3 * d]
                b = block.attn.mha.in_proj_bias
                b[base + d:base + 2 * d] = b[base:base + d]
                b[base + 3 * d:base + 4 * d] = b[base + 2 * d:base + 3 * d]
    tokens = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(gpt_to_gqa(model, 2)(tokens), model(tokens), rtol=0, atol=1e-12)


def test_converted_model_has_a_smaller_cache_and_a_new_config():
    model, tokens = _model(), _tokens()
    grouped = gpt_to_gqa(model, 1)
    assert grouped.config.num_kv_heads == 1 and model.config.num_kv_heads == HEADS
    assert grouped.lm_head.weight is grouped.token_embedding.weight  # still tied
    full, small = model.new_cache(), grouped.new_cache()
    with torch.no_grad():
        model(tokens, full)
        grouped(tokens, small)
    assert full.nbytes == HEADS * small.nbytes
    per_token = kv_bytes_per_token("gqa", num_layers=2, num_heads=HEADS, num_kv_heads=1, head_dim=4,
                                   dtype=torch.float64)
    assert small.nbytes == per_token * tokens.numel()


@pytest.mark.parametrize("bad", [3, 8])
def test_bad_num_kv_heads_is_a_named_value_error(bad):
    with pytest.raises(ValueError, match=f"num_kv_heads={bad}"):
        GPTConfig(VOCAB, d_model=16, num_heads=HEADS, num_kv_heads=bad)
    with pytest.raises(ValueError, match=f"num_kv_heads={bad}"):
        gpt_to_gqa(_model(), bad)


def test_conversion_rejects_zero_and_already_grouped_models():
    with pytest.raises(ValueError, match="num_kv_heads"):
        gpt_to_gqa(_model(), 0)
    with pytest.raises(ValueError, match="multi-head"):
        gpt_to_gqa(_model(num_kv_heads=2), 1)
    with pytest.raises(TypeError, match="GPT"):
        gpt_to_gqa(torch.nn.Linear(2, 2), 1)


# --- the sliding-window cache -----------------------------------------------------------

def test_window_mask_equals_the_local_sliding_window_mask():
    for window in (1, 3, 7):
        assert torch.equal(causal_window_mask(12, 12, window), sliding_window_mask(12, window, causal=True))
    # bottom-right: the queries are positions 4 and 5 of 6; each sees itself and 2 before it
    assert causal_window_mask(2, 6, 2).tolist() == [[False, False, True, True, True, False],
                                                    [False, False, False, True, True, True]]


@pytest.mark.parametrize("num_kv_heads", [HEADS, 2, 1])
@pytest.mark.parametrize("chunk", [1, 3, 11])
def test_ring_buffer_layer_equals_full_attention_with_a_sliding_window_mask(num_kv_heads, chunk):
    window, seq = 5, 30  # the sequence is 6 windows long: the ring wraps many times
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, HEADS, num_kv_heads, dtype=torch.float64)
    x = torch.randn(2, seq, 16, dtype=torch.float64)
    weights = (mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias)
    # reference: all queries at once, dense (seq, seq) mask from attention.local, no cache
    q, k, v = project_heads(x, None, weights[0], weights[1], HEADS, num_kv_heads)
    out = sdpa(q, k, v, sliding_window_mask(seq, window, causal=True))
    reference = F.linear(merge_heads(out), weights[2], weights[3])
    cache = SlidingWindowCache(1, window)
    with torch.no_grad():
        cached = torch.cat([causal_self_attention(x[:, t:t + chunk], *weights, HEADS, num_kv_heads,
                                                  cache=cache) for t in range(0, seq, chunk)], dim=1)
    # float64, the same products blocked differently: round-off ~1e-16, 1e-12 is a wide margin
    torch.testing.assert_close(cached, reference.detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("positions", ["learned", "rope"])
@pytest.mark.parametrize("num_kv_heads", [HEADS, 1])
def test_ring_buffer_decoding_equals_the_gpt_with_a_window_mask(positions, num_kv_heads, monkeypatch):
    window = 5
    model, tokens = _model(positions, num_kv_heads=num_kv_heads), _tokens()
    cached = _stepwise(model, tokens, model.new_cache(window=window))
    # reference: the same GPT without a cache, its attention given the dense window mask
    mask = sliding_window_mask(tokens.shape[1], window, causal=True)

    def masked_sdpa(q, k, v, _mask=None, *, causal=False, **options):
        return sdpa(q, k, v, mask, causal=True, **options)
    monkeypatch.setattr(kv_cache_module, "sdpa", masked_sdpa)  # the learned-position path
    monkeypatch.setattr(gpt_module, "sdpa", masked_sdpa)       # the RoPE path
    with torch.no_grad():
        reference = model(tokens)
    torch.testing.assert_close(cached, reference, rtol=0, atol=1e-12)


def test_a_window_as_long_as_the_sequence_is_full_attention():
    model, tokens = _model(), _tokens()
    with torch.no_grad():
        full = model(tokens)
    windowed = _stepwise(model, tokens, model.new_cache(window=tokens.shape[1]))
    torch.testing.assert_close(windowed, full, rtol=0, atol=1e-12)


def test_a_window_changes_the_output_once_the_sequence_is_longer():
    model, tokens = _model(), _tokens()
    with torch.no_grad():
        full = model(tokens)
    windowed = _stepwise(model, tokens, model.new_cache(window=4))
    torch.testing.assert_close(windowed[:, :5], full[:, :5], rtol=0, atol=1e-12)  # nothing cut yet
    assert (windowed[:, 5:] - full[:, 5:]).abs().max() > 1e-3


def test_ring_buffer_memory_is_constant_in_length():
    model = _model(max_len=200)
    cache = model.new_cache(window=6)
    sizes = []
    with torch.no_grad():
        for t in range(120):
            model(torch.tensor([[t % VOCAB]]), cache)
            sizes.append(cache.nbytes)
    assert len(set(sizes)) == 1  # allocated once at the first token, never grown
    assert sizes[0] == 2 * 2 * HEADS * 6 * 4 * 8  # k and v, 2 layers, heads, window, d_h, float64
    assert len(cache) == 120


@settings(max_examples=25, deadline=None)
@given(window=st.integers(1, 9), cuts=st.lists(st.integers(1, 7), min_size=1, max_size=6))
def test_ring_buffer_keeps_exactly_the_last_window_tokens(window, cuts):
    cache = SlidingWindowCache(1, window)
    seen = 0
    for new in cuts:
        k = torch.arange(seen, seen + new, dtype=torch.float64).view(1, 1, new, 1)
        keys, _ = cache.update(0, k, k.clone())
        kept_before = min(seen, window)
        assert keys.flatten().tolist() == list(range(seen - kept_before, seen + new))
        seen += new
        kept_keys, _ = cache.kept(0)
        assert kept_keys.flatten().tolist() == list(range(max(0, seen - window), seen))
    assert cache.seq_len(0) == seen


def test_plain_cache_adds_no_mask_and_window_cache_rejects_bad_windows():
    assert KVCache(1).mask(1, 5) is None
    with pytest.raises(ValueError, match="window"):
        SlidingWindowCache(1, 0)
    with pytest.raises(ValueError, match="k_len >= q_len"):
        causal_window_mask(5, 3, 2)
