"""Linformer (Wang et al. 2020): exact limits of the projections, linear shapes, padding."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook.attention.dot_product import scaled_dot_product_attention
from attnbook.attention.linformer import (
    LinformerSelfAttention,
    linformer_attention,
    make_linformer_projection,
)

# Exact identities in float64: the two sides differ by rounding in sums of a few dozen
# O(1) terms (~1e-15), so 1e-12 is tight and still far from any real error.
TIGHT = {"atol": 1e-12, "rtol": 1e-12}


def random_qkv(batch=2, heads=3, n=12, d=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, n, d, generator=g, dtype=dtype) for _ in range(3))


def test_identity_projections_give_full_attention():
    q, k, v = random_qkv()
    identity = torch.eye(12, dtype=torch.float64)  # k = n, E = F = I
    full, full_weights = scaled_dot_product_attention(q, k, v, return_weights=True)
    out, weights = linformer_attention(q, k, v, identity, identity, return_weights=True)
    torch.testing.assert_close(out, full, **TIGHT)
    torch.testing.assert_close(weights, full_weights, **TIGHT)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 16))
def test_mean_projection_gives_the_mean_of_the_values(seed, n):
    # E = F = (1/n)·1ᵀ (k = 1): one projected key and value, FV = mean(V). A softmax
    # over a single score is 1, so every query returns mean(V) whatever q and k are.
    q, k, v = random_qkv(n=n, seed=seed)
    averaging = torch.full((1, n), 1.0 / n, dtype=torch.float64)
    out = linformer_attention(q, k, v, averaging, averaging)
    torch.testing.assert_close(out, v.mean(dim=2, keepdim=True).expand_as(v), **TIGHT)


@pytest.mark.parametrize("n", [16, 64, 256])
def test_scores_are_n_by_k(n):
    q, k, v = random_qkv(batch=1, heads=2, n=n)
    e_proj = make_linformer_projection(n, 8).detach().double()
    _, weights = linformer_attention(q, k, v, e_proj, e_proj, return_weights=True)
    assert weights.shape == (1, 2, n, 8)  # (batch, heads, n, k): grows linearly in n


def test_no_n_by_n_tensor_is_saved_for_backward():
    # Memory linear in n, checked without timing: with n = 256, k = 16 and d = 4 the
    # largest tensor autograd keeps is the n × k score matrix (4,096 numbers), never
    # an n × n one (65,536).
    q, k, v = (t.requires_grad_() for t in random_qkv(batch=1, heads=1, n=256))
    e_proj = make_linformer_projection(256, 16).double()
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        linformer_attention(q, k, v, e_proj, e_proj).sum().backward()
    assert max(sizes) < 256 * 256 // 8


def test_per_head_projections_equal_a_loop_over_heads():
    q, k, v = random_qkv()
    g = torch.Generator().manual_seed(1)
    e_proj, f_proj = (torch.randn(3, 5, 12, generator=g, dtype=torch.float64) for _ in range(2))
    batched = linformer_attention(q, k, v, e_proj, f_proj)
    for h in range(3):
        one = slice(h, h + 1)
        single = linformer_attention(q[:, one], k[:, one], v[:, one], e_proj[h], f_proj[h])
        torch.testing.assert_close(batched[:, one], single, **TIGHT)


def test_padded_keys_and_values_change_nothing():
    q, k, v = random_qkv(batch=1, n=12)
    e_proj, f_proj = (make_linformer_projection(12, 5, generator=torch.Generator().manual_seed(s))
                      .detach().double() for s in (1, 2))
    keep = torch.tensor([[True] * 9 + [False] * 3])
    garbage_k, garbage_v = k.clone(), v.clone()
    garbage_k[:, :, 9:], garbage_v[:, :, 9:] = 50.0, -50.0
    padded = linformer_attention(q, garbage_k, garbage_v, e_proj, f_proj, key_padding_mask=keep)
    # the same queries over the 9 real keys only, with the projections' first 9 columns
    short = linformer_attention(q, k[:, :, :9], v[:, :, :9], e_proj[:, :9], f_proj[:, :9])
    torch.testing.assert_close(padded, short, **TIGHT)


def test_layer_on_a_short_sequence_equals_the_padded_sequence():
    torch.manual_seed(0)
    layer = LinformerSelfAttention(8, 2, seq_len=16, k=4).double()
    x = torch.randn(2, 10, 8, dtype=torch.float64)
    padded = torch.cat([x, torch.randn(2, 6, 8, dtype=torch.float64)], dim=1)
    keep = torch.arange(16)[None, :].expand(2, 16) < 10
    short_out, _ = layer(x)
    padded_out, _ = layer(padded, key_padding_mask=keep)
    torch.testing.assert_close(padded_out[:, :10], short_out, **TIGHT)


def test_layer_rejects_a_sequence_longer_than_seq_len():
    layer = LinformerSelfAttention(8, 2, seq_len=16, k=4)
    with pytest.raises(ValueError, match="seq_len=16"):
        layer(torch.randn(1, 17, 8))


def test_functional_rejects_projection_shorter_than_the_sequence():
    q, k, v = random_qkv(n=12)
    short = torch.ones(4, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match="e_proj"):
        linformer_attention(q, k, v, short, short)


@pytest.mark.parametrize(("sharing", "expected"), [
    ("none", 2 * 2 * 4 * 16),   # E_h and F_h for each of the 2 heads
    ("headwise", 2 * 4 * 16),   # one E and one F
    ("kv", 4 * 16),             # E = F
])
def test_sharing_sets_the_number_of_projection_parameters(sharing, expected):
    layer = LinformerSelfAttention(8, 2, seq_len=16, k=4, sharing=sharing)
    projections = {id(p): p.numel() for name, p in layer.named_parameters(remove_duplicate=False)
                   if name in ("e_proj", "f_proj")}
    assert sum(projections.values()) == expected


def test_layerwise_sharing_uses_one_matrix_in_every_layer():
    shared = make_linformer_projection(16, 4)
    layers = torch.nn.ModuleList(
        LinformerSelfAttention(8, 2, seq_len=16, k=4, sharing="layerwise", shared_projection=shared)
        for _ in range(3))
    assert all(layer.e_proj is shared and layer.f_proj is shared for layer in layers)
    assert sum(p.numel() for p in layers.parameters()) == 3 * (8 * 24 + 24 + 8 * 8 + 8) + 4 * 16


def test_layer_weights_are_n_by_k_and_rows_sum_to_one():
    layer = LinformerSelfAttention(8, 2, seq_len=16, k=4)
    out, weights = layer(torch.randn(3, 11, 8), need_weights=True)
    assert out.shape == (3, 11, 8) and weights.shape == (3, 2, 11, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 11))  # float32 default: 1e-5


def test_linformer_attention_gradcheck():
    q, k, v = (t.requires_grad_() for t in random_qkv(batch=1, heads=2, n=5, d=3))
    g = torch.Generator().manual_seed(3)
    e_proj = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    f_proj = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([[True, True, True, True, False]])
    assert torch.autograd.gradcheck(
        lambda *args: linformer_attention(*args, key_padding_mask=keep),
        (q, k, v, e_proj, f_proj))


def test_bad_sharing_options_are_rejected():
    with pytest.raises(ValueError, match="sharing"):
        LinformerSelfAttention(8, 2, seq_len=16, k=4, sharing="all")
    with pytest.raises(ValueError, match="shared_projection"):
        LinformerSelfAttention(8, 2, seq_len=16, k=4, sharing="layerwise")
    with pytest.raises(ValueError, match="shared_projection"):
        LinformerSelfAttention(8, 2, seq_len=16, k=4, sharing="layerwise",
                               shared_projection=make_linformer_projection(15, 4))


def test_per_head_projection_with_the_wrong_head_count_is_rejected():
    q, k, v = random_qkv(heads=3)
    wrong = torch.ones(2, 4, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match="e_proj has 2 heads"):
        linformer_attention(q, k, v, wrong, wrong)
