"""Specification of what chapter 4 (self-attention and masks) relies on.

Covers the additions to ``attnbook.attention.masks`` (``padding_mask(side=...)``,
``additive_mask``), ``attnbook.attention.graph`` (``attention_edges``, ``reachability``,
``window_mask``), ``attnbook.data.text`` and ``attnbook.models.char_lm``, and pins the
behaviours of plain ``torch`` that the chapter warns about (NaN rows, the dtype minimum,
``is_causal`` aligned top-left). Masks are boolean, True = may attend.

Tolerances: float64 identities use 1e-12 (same sums in a different order differ by a few
units in the last place of values of order 1; any real mistake gives errors of order 0.1).
Equalities that hold exactly because masked weights are exactly 0 are tested bit for bit.
"""
from __future__ import annotations

import hashlib
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention import MultiHeadAttention, causal_mask, padding_mask, scaled_dot_product_attention, sdpa
from attnbook.attention.graph import attention_edges, reachability, window_mask
from attnbook.attention.masks import additive_mask
from attnbook.data.text import ALICE, TEXTS, CharVocab, load_text, text_windows
from attnbook.models.char_lm import TinyLM, generate

F64 = torch.float64
TOL64 = 1e-12


def qkv(batch=2, heads=2, q_len=5, k_len=5, head_dim=4, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, q_len, head_dim, generator=g, dtype=dtype),
            torch.randn(batch, heads, k_len, head_dim, generator=g, dtype=dtype),
            torch.randn(batch, heads, k_len, head_dim, generator=g, dtype=dtype))


def naive_attention(q, k, v, mask):
    """The textbook formula with torch.softmax: a fully masked row is NaN."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


# -- the shipped text ---------------------------------------------------------------------

def test_shipped_text_matches_the_sha256_in_its_readme():
    data = (TEXTS / ALICE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert digest in (TEXTS / "README.md").read_text(encoding="utf-8")
    assert data.isascii()


def test_char_vocab_round_trips_the_text():
    text = load_text()
    vocab = CharVocab(text)
    assert vocab.decode(vocab.encode(text)) == text


def test_char_vocab_rejects_unknown_characters():
    with pytest.raises(ValueError, match="not in the vocabulary"):
        CharVocab("abc").encode("abd")


def test_text_windows_targets_are_the_next_characters():
    ids = torch.arange(100)
    inputs, targets = text_windows(ids, 8, 10, torch.Generator().manual_seed(0))
    assert inputs.shape == targets.shape == (8, 10)
    assert torch.equal(targets, inputs + 1)


def test_load_text_names_the_available_texts_on_a_wrong_name():
    with pytest.raises(ValueError, match=ALICE):
        load_text("no-such-text.txt")


# -- padding on either side ---------------------------------------------------------------

def test_left_padding_mask_puts_the_padding_first():
    mask = padding_mask(torch.tensor([3, 1]), 4, side="left")
    assert mask.tolist() == [[False, True, True, True], [False, False, False, True]]


def test_left_and_right_padding_masks_are_mirror_images():
    lengths = torch.tensor([0, 2, 5])
    assert torch.equal(padding_mask(lengths, 5, side="left"), padding_mask(lengths, 5).flip(-1))


def test_padding_mask_rejects_an_unknown_side():
    with pytest.raises(ValueError, match="side must be"):
        padding_mask(torch.tensor([1]), 2, side="middle")


def test_right_padded_batch_equals_each_sequence_alone():
    # Pitfall: padding that leaks into real tokens. With the key padding mask, the real
    # positions of a padded batch equal the unpadded computation (up to float64 rounding).
    torch.manual_seed(0)
    layer = MultiHeadAttention(8, 2).double().eval()
    g = torch.Generator().manual_seed(1)
    lengths = [5, 3]
    sequences = [torch.randn(1, n, 8, generator=g, dtype=F64) for n in lengths]
    batch = torch.zeros(2, 5, 8, dtype=F64)
    for row, seq in enumerate(sequences):
        batch[row, : seq.shape[1]] = seq[0]
    batch[1, 3:] = 100.0  # padding content must not matter
    keep = padding_mask(torch.tensor(lengths), 5)
    out, _ = layer(batch, key_padding_mask=keep)
    for row, seq in enumerate(sequences):
        alone, _ = layer(seq)
        torch.testing.assert_close(out[row, : lengths[row]], alone[0], rtol=0, atol=TOL64)


def test_causal_with_right_padding_needs_no_key_mask_for_real_tokens():
    # Right padding lies in every real token's future, so the causal mask already hides it.
    q, k, v = qkv(batch=1, heads=1, q_len=6, k_len=6)
    out_full = sdpa(q, k, v, causal=True)
    out_short = sdpa(q[:, :, :4], k[:, :, :4], v[:, :, :4], causal=True)
    torch.testing.assert_close(out_full[:, :, :4], out_short, rtol=0, atol=TOL64)


# -- fully masked rows ----------------------------------------------------------------------

def _left_padded_causal_mask():
    keep = padding_mask(torch.tensor([6, 3]), 6, side="left")
    return keep, keep[:, None, None, :] & causal_mask(6)


def test_left_padding_with_a_causal_mask_leaves_padding_queries_with_no_key():
    keep, mask = _left_padded_causal_mask()
    rows_with_no_key = ~mask.any(dim=-1)[:, 0]            # (batch, q_len)
    assert torch.equal(rows_with_no_key, ~keep)


def test_nan_from_a_fully_masked_row_spreads_to_real_tokens_in_the_next_layer():
    # Pins the pitfall the chapter measures: 0 * NaN = NaN in the next layer's weighted sum.
    keep, mask = _left_padded_causal_mask()
    x = qkv(batch=2, heads=2, q_len=6, k_len=6)[0]
    layer1 = naive_attention(x, x, x, mask)
    real = keep[:, None, :, None].expand_as(layer1)
    assert torch.isnan(layer1[~real]).all() and not torch.isnan(layer1[real]).any()
    layer2 = naive_attention(layer1, layer1, layer1, mask)
    assert torch.isnan(layer2[real]).any()


def test_zero_rows_keep_real_tokens_finite_through_two_layers():
    keep, mask = _left_padded_causal_mask()
    x = qkv(batch=2, heads=2, q_len=6, k_len=6)[0]
    for _ in range(2):
        x, weights = scaled_dot_product_attention(x, x, x, mask, return_weights=True)
        assert torch.isfinite(x).all()
    padded = ~keep[:, None, :, None].expand_as(x)
    assert torch.all(x[padded] == 0)


# -- additive masks ---------------------------------------------------------------------------

def _keep_with_an_empty_row():
    keep = torch.ones(3, 5, dtype=torch.bool)
    keep[0] = False
    keep[1, 2:] = False
    return keep


@pytest.mark.parametrize("fill", ["-inf", "min"])
def test_additive_mask_matches_the_boolean_mask_on_rows_with_a_key(fill):
    keep = _keep_with_an_empty_row()
    q, k, v = qkv(batch=1, heads=1, q_len=3, k_len=5)
    scores = (q @ k.transpose(-2, -1))[0, 0] / 2.0
    weights = torch.softmax(scores + additive_mask(keep, F64, fill=fill), dim=-1)
    _, expected = scaled_dot_product_attention(q, k, v, keep, return_weights=True)
    torch.testing.assert_close(weights[1:], expected[0, 0, 1:], rtol=0, atol=TOL64)


def test_minus_inf_additive_mask_makes_a_fully_masked_row_nan_in_softmax():
    keep = _keep_with_an_empty_row()
    weights = torch.softmax(torch.zeros(3, 5) + additive_mask(keep, fill="-inf"), dim=-1)
    assert torch.isnan(weights[0]).all()


def test_dtype_min_additive_mask_makes_a_fully_masked_row_uniform():
    keep = _keep_with_an_empty_row()
    scores = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    weights = torch.softmax(scores + additive_mask(keep, fill="min"), dim=-1)
    # every score is absorbed by finfo.min (its spacing there is ~2e31): exactly uniform
    assert torch.equal(weights[0], torch.full((5,), 0.2))


def test_the_same_dtype_min_mask_added_to_itself_overflows_and_brings_the_nan_back():
    # Every masked entry is hidden twice: 2 * finfo.min overflows to -inf, so an empty row is NaN.
    keep = _keep_with_an_empty_row()
    twice = additive_mask(keep, fill="min") + additive_mask(keep, fill="min")
    assert torch.isinf(twice[~keep]).all() and torch.all(twice[keep] == 0)
    assert torch.isnan(torch.softmax(twice, dim=-1)[0]).all()


def test_padding_plus_causal_dtype_min_masks_let_a_padding_query_read_future_tokens():
    # A real padding mask and a real causal mask overlap only in part. Left padding, 3 of 6 tokens:
    # padding query 0 has keys 1, 2 hidden by both (-inf) and keys 0, 3, 4, 5 hidden once (min),
    # so its softmax is uniform over those four, three of which are future real tokens. No NaN.
    n, pad = 6, 3
    keep_pad = padding_mask(torch.tensor([n - pad]), n, side="left")[0]
    pad_keep, causal_keep = keep_pad[None, :].expand(n, n), causal_mask(n)
    both = additive_mask(pad_keep, fill="min") + additive_mask(causal_keep, fill="min")
    assert torch.equal(torch.isinf(both), ~pad_keep & ~causal_keep)
    scores = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
    weights = torch.softmax(scores + both, dim=-1)
    assert not torch.isnan(weights).any()
    assert torch.equal(weights[0], torch.tensor([0.25, 0.0, 0.0, 0.25, 0.25, 0.25]))
    # real queries (3..5) hide each key at most once, so they match the boolean mask exactly
    expected = torch.softmax(scores.masked_fill(~(pad_keep & causal_keep), float("-inf")), dim=-1)
    assert torch.equal(weights[pad:], expected[pad:])


def test_float16_min_plus_a_negative_score_overflows_to_minus_inf():
    minimum = torch.tensor(torch.finfo(torch.float16).min, dtype=torch.float16)
    assert torch.isinf(minimum + torch.tensor(-17.0, dtype=torch.float16))
    assert torch.isfinite(minimum + torch.tensor(-15.0, dtype=torch.float16))


def test_additive_mask_rejects_bad_input():
    with pytest.raises(TypeError, match="boolean"):
        additive_mask(torch.ones(2, 2))
    with pytest.raises(TypeError, match="floating-point"):
        additive_mask(torch.ones(2, 2, dtype=torch.bool), torch.int32)
    with pytest.raises(ValueError, match="fill must be"):
        additive_mask(torch.ones(2, 2, dtype=torch.bool), fill="-1e9")


# -- is_causal with a KV cache ------------------------------------------------------------------

def _chunked(attend, q, k, v, chunk):
    total = q.shape[2]
    return torch.cat([attend(q[:, :, s:s + chunk], k[:, :, :s + chunk], v[:, :, :s + chunk])
                      for s in range(0, total, chunk)], dim=2)


def test_chunked_prefill_with_the_bottom_right_mask_equals_full_causal_attention():
    q, k, v = qkv(q_len=12, k_len=12)
    reference = sdpa(q, k, v, causal=True)
    chunked = _chunked(lambda q, k, v: sdpa(q, k, v, causal=True), q, k, v, chunk=4)
    torch.testing.assert_close(chunked, reference, rtol=0, atol=TOL64)


def test_chunked_prefill_with_torch_is_causal_is_wrong_after_the_first_chunk():
    # Pins torch's top-left alignment: the first chunk is right, every later one is not.
    q, k, v = qkv(q_len=12, k_len=12)
    reference = sdpa(q, k, v, causal=True)
    chunked = _chunked(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v, 4)
    torch.testing.assert_close(chunked[:, :, :4], reference[:, :, :4], rtol=0, atol=TOL64)
    assert (chunked[:, :, 4:] - reference[:, :, 4:]).abs().max() > 0.1


# -- permutation equivariance of a self-attention layer -------------------------------------------

@settings(max_examples=20, deadline=None)
@given(perm=st.permutations(list(range(6))))
def test_multi_head_self_attention_layer_is_permutation_equivariant(perm):
    torch.manual_seed(0)
    layer = MultiHeadAttention(8, 2).double().eval()
    x = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    p = torch.tensor(perm)
    out, _ = layer(x)
    out_of_permuted, _ = layer(x[:, p])
    torch.testing.assert_close(out_of_permuted, out[:, p], rtol=0, atol=TOL64)


def test_positions_added_to_the_input_break_permutation_equivariance():
    torch.manual_seed(0)
    layer = MultiHeadAttention(8, 2).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 6, 8, generator=g, dtype=F64)
    positions = torch.randn(1, 6, 8, generator=g, dtype=F64)
    p = torch.tensor([5, 4, 3, 2, 1, 0])
    out, _ = layer(x + positions)
    out_of_permuted, _ = layer(x[:, p] + positions)  # positions stay with the slots
    assert (out_of_permuted - out[:, p]).abs().max() > 1e-3


def test_causal_self_attention_is_not_permutation_equivariant():
    torch.manual_seed(0)
    layer = MultiHeadAttention(8, 2).double().eval()
    x = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    p = torch.tensor([5, 4, 3, 2, 1, 0])
    out, _ = layer(x, causal=True)
    out_of_permuted, _ = layer(x[:, p], causal=True)
    assert (out_of_permuted - out[:, p]).abs().max() > 1e-3


def test_identical_tokens_without_positions_get_identical_attention_rows():
    torch.manual_seed(0)
    layer = MultiHeadAttention(8, 2).double().eval()
    x = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    x[:, 3] = x[:, 1]
    _, weights = layer(x, need_weights=True)
    torch.testing.assert_close(weights[:, :, 3], weights[:, :, 1], rtol=0, atol=TOL64)


# -- the tiny language model: no leakage ---------------------------------------------------------

def _tiny(causal):
    torch.manual_seed(0)
    return TinyLM(11, d_model=16, num_heads=2, num_layers=2, max_len=10, causal=causal).double().eval()


def test_causal_lm_logits_do_not_depend_on_future_inputs():
    model = _tiny(causal=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (2, 10), generator=g)
    logits = model(ids)
    for t in range(9):
        changed = ids.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1 + torch.randint(0, 10, changed[:, t + 1:].shape, generator=g)) % 11
        new_logits = model(changed)
        assert torch.equal(new_logits[:, : t + 1], logits[:, : t + 1])   # bit-identical


def test_causal_lm_gradients_from_future_embeddings_are_zero():
    model = _tiny(causal=True)
    ids = torch.randint(0, 11, (1, 8), generator=torch.Generator().manual_seed(0))
    x = (model.embed(ids) + model.position(torch.arange(8))).detach().requires_grad_()
    h = x
    for block in model.blocks:
        h, _ = block(h)
    logits = model.head(model.norm(h))
    t = 3
    (grad,) = torch.autograd.grad(logits[0, t].sum(), x)
    assert torch.all(grad[0, t + 1:] == 0) and grad[0, : t + 1].abs().sum() > 0


def test_unmasked_lm_logits_depend_on_future_inputs():
    model = _tiny(causal=False)
    ids = torch.randint(0, 11, (1, 10), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % 11
    assert (model(changed)[:, 0] - model(ids)[:, 0]).abs().max() > 0


def test_lm_returns_one_weight_tensor_per_layer_with_rows_summing_to_one():
    model = _tiny(causal=True)
    ids = torch.randint(0, 11, (2, 7), generator=torch.Generator().manual_seed(0))
    logits, weights = model(ids, need_weights=True)
    assert logits.shape == (2, 7, 11) and len(weights) == 2
    for w in weights:
        assert w.shape == (2, 2, 7, 7)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 7, dtype=F64), rtol=0, atol=TOL64)
        assert torch.all(w[..., ~causal_mask(7)] == 0)


def test_lm_rejects_inputs_longer_than_max_len():
    with pytest.raises(ValueError, match="max_len=10"):
        _tiny(causal=True)(torch.zeros(1, 11, dtype=torch.long))


def test_generate_appends_the_requested_number_of_ids_deterministically():
    model = _tiny(causal=True).float()
    prompt = torch.tensor([1, 2, 3])
    a = generate(model, prompt, 15, torch.Generator().manual_seed(5))
    b = generate(model, prompt, 15, torch.Generator().manual_seed(5))
    assert a.shape == (18,) and torch.equal(a[:3], prompt) and torch.equal(a, b)


# -- attention as a graph -------------------------------------------------------------------------

def test_one_causal_layer_already_reaches_every_earlier_token():
    assert torch.equal(reachability(causal_mask(7)), causal_mask(7))
    assert torch.equal(reachability(causal_mask(7), causal_mask(7)), causal_mask(7))


@pytest.mark.parametrize("window, layers", [(2, 2), (3, 2), (3, 3), (4, 2)])
def test_stacked_windows_of_w_reach_layers_times_w_minus_1_back(window, layers):
    n = 20
    reach = reachability(*[window_mask(n, window)] * layers)
    assert torch.equal(reach, window_mask(n, layers * (window - 1) + 1))


def test_reachability_without_the_residual_is_the_plain_boolean_product():
    a = window_mask(6, 2)
    b = torch.eye(6, dtype=torch.bool).roll(-1, dims=1)  # i reads i+1 (wraps): no self-loops
    product = (b.long() @ a.long()) > 0
    assert torch.equal(reachability(a, b, residual=False), product)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 5), layers=st.integers(1, 3))
def test_reachability_matches_enumerating_every_path(seed, n, layers):
    g = torch.Generator().manual_seed(seed)
    adjacency = [torch.rand(n, n, generator=g) < 0.3 for _ in range(layers)]
    reach = reachability(*adjacency)
    with_loops = [a | torch.eye(n, dtype=torch.bool) for a in adjacency]
    for i, j in itertools.product(range(n), repeat=2):
        # a path j = p0 -> p1 -> ... -> p_L = i, layer l reading p_{l-1} into p_l
        found = any(all(with_loops[step][path[step + 1], path[step]] for step in range(layers))
                    for middle in itertools.product(range(n), repeat=layers - 1)
                    for path in [(j, *middle, i)])
        assert bool(reach[i, j]) == found


def test_attention_edges_at_threshold_zero_are_the_mask():
    q, k, v = qkv(batch=1, heads=1, q_len=6, k_len=6)
    _, weights = scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)
    assert torch.equal(attention_edges(weights[0, 0], 0.0), causal_mask(6))


def test_graph_functions_reject_bad_input():
    with pytest.raises(ValueError, match="square"):
        attention_edges(torch.ones(2, 3), 0.1)
    with pytest.raises(ValueError, match="threshold"):
        attention_edges(torch.ones(2, 2), 1.5)
    with pytest.raises(ValueError, match="boolean"):
        reachability(torch.ones(3, 3))
    with pytest.raises(ValueError, match="at least one layer"):
        reachability()
    with pytest.raises(ValueError, match="window"):
        window_mask(4, 0)
