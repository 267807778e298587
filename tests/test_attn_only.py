"""The attention-only transformer (attnbook.models.attn_only): shapes, causality, errors."""
import pytest
import torch

from attnbook.models.attn_only import AttnOnlyConfig, AttnOnlyTransformer, causal_self_attention_layer


def _model(seed=0):
    torch.manual_seed(seed)
    return AttnOnlyTransformer(AttnOnlyConfig(11, max_len=12, d_model=16, num_heads=4, num_layers=2)).double()


def _tokens(batch=2, seq=9, seed=1):
    return torch.randint(0, 11, (batch, seq), generator=torch.Generator().manual_seed(seed))


def test_shapes_of_logits_and_weights():
    logits, weights = _model()(_tokens(), return_weights=True)
    assert logits.shape == (2, 9, 11)
    assert weights.shape == (2, 2, 4, 9, 9)  # (layers, batch, heads, seq, seq)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 4, 9, dtype=torch.float64), atol=1e-12, rtol=0)


def test_future_tokens_do_not_change_past_outputs():
    model, tokens = _model(), _tokens()
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    before, after = model(tokens), model(changed)
    # causal: positions 0..4 see only positions 0..4, identical in both inputs; the same
    # float64 operations run on them, so the logits agree exactly up to summation order
    torch.testing.assert_close(before[:, :5], after[:, :5], atol=1e-12, rtol=0)
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_weights_above_the_diagonal_are_zero():
    _, weights = _model()(_tokens(), return_weights=True)
    future = ~torch.ones(9, 9, dtype=torch.bool).tril()
    assert torch.all(weights[..., future] == 0)


def test_layer_matches_torch_multihead_attention():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, bias=False, batch_first=True).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    future = ~torch.ones(7, 7, dtype=torch.bool).tril()   # torch: True = may NOT attend
    expected, _ = mha(x, x, x, attn_mask=future, need_weights=False)
    ours = causal_self_attention_layer(x, mha.in_proj_weight, mha.out_proj.weight, 4)
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=0)  # float64, different kernels


def test_queries_keys_reproduce_the_layer_weights():
    model, tokens = _model(), _tokens()
    _, weights = model(tokens, return_weights=True)
    q, k = model.queries_keys(tokens, 1)
    scores = q @ k.transpose(-2, -1) / 2.0  # head_dim 4: sqrt = 2
    scores = scores.masked_fill(~torch.ones(9, 9, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(scores.softmax(-1), weights[1], atol=1e-12, rtol=0)


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by num_heads=4"):
        AttnOnlyConfig(5, d_model=10, num_heads=4)
    with pytest.raises(ValueError, match="max_len=12"):
        _model()(_tokens(seq=13))
