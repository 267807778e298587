"""Multi-head and cross-attention (attnbook.attention.multihead), the training loop
(attnbook.train) and the synthetic tasks (attnbook.data.synthetic).

Exact identities are checked in float64 with a tolerance of 1e-12: the two sides do the
same arithmetic in a different order, so they agree to a few ulps of values of order 1.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attnbook.attention import (
    MultiHeadAttention,
    causal_mask,
    merge_heads,
    multi_head_attention,
    multi_head_attention_loop,
    split_heads,
)
from attnbook.data import IGNORE_INDEX, partner_positions, partner_task, reversal_task
from attnbook.train import TrainConfig, accuracy, cross_entropy, train, warmup_cosine

F64 = torch.float64
EXACT = dict(rtol=0.0, atol=1e-12)  # float64, same maths in a different order


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


def _module(d_model=16, num_heads=4, num_kv_heads=None, seed=0, **kwargs) -> MultiHeadAttention:
    torch.manual_seed(seed)
    module = MultiHeadAttention(d_model, num_heads, num_kv_heads, dtype=F64, **kwargs)
    with torch.no_grad():  # non-zero biases, so that a bias mix-up would show
        if module.in_proj_bias is not None:
            module.in_proj_bias.normal_()
            module.out_proj.bias.normal_()
    return module


def _torch_copy(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    """nn.MultiheadAttention with the same weights: the packed layouts are identical."""
    theirs = nn.MultiheadAttention(ours.d_model, ours.num_heads, batch_first=True, dtype=F64)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(ours.in_proj_weight)
        theirs.in_proj_bias.copy_(ours.in_proj_bias)
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    return theirs


def _weights(module: MultiHeadAttention):
    return (module.in_proj_weight, module.in_proj_bias,
            module.out_proj.weight, module.out_proj.bias)


# ---------------------------------------------------------------------------------------
# Batched heads are the per-head definition
# ---------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(num_heads=st.integers(1, 4), head_dim=st.integers(1, 5), seq=st.integers(1, 6),
       batch=st.integers(1, 3), causal=st.booleans(), seed=st.integers(0, 1000))
def test_batched_heads_equal_the_per_head_loop(num_heads, head_dim, seq, batch, causal, seed):
    module = _module(num_heads * head_dim, num_heads, seed=seed)
    x = _randn(batch, seq, num_heads * head_dim, seed=seed + 1)
    batched, _ = module(x, causal=causal)
    looped = multi_head_attention_loop(x, None, *_weights(module), num_heads, causal=causal)
    torch.testing.assert_close(batched, looped, **EXACT)


def test_batched_cross_attention_equals_the_per_head_loop():
    module = _module(12, 3)
    x, memory = _randn(2, 4, 12, seed=1), _randn(2, 7, 12, seed=2)
    batched, _ = module(x, memory)
    looped = multi_head_attention_loop(x, memory, *_weights(module), 3)
    torch.testing.assert_close(batched, looped, **EXACT)


def test_split_then_merge_heads_is_the_identity():
    x = _randn(2, 5, 12)
    split = split_heads(x, 3)
    assert split.shape == (2, 3, 5, 4)
    torch.testing.assert_close(split[:, 1], x[..., 4:8], rtol=0, atol=0)  # head 1 = features 4..7
    torch.testing.assert_close(merge_heads(split), x, rtol=0, atol=0)


# --8<-- [start:merge-pitfall]
def test_wrong_merge_order_mixes_tokens():
    """Joining heads with transpose(0, 1) + reshape on (heads, batch, seq, head_dim) is wrong.

    (``.view`` in place of ``.reshape`` raises, because the transposed tensor is not
    contiguous; ``.contiguous().view`` runs and is exactly as wrong as ``.reshape``.)
    """
    num_heads, head_dim = 2, 3
    module = _module(num_heads * head_dim, num_heads)
    x = _randn(2, 4, num_heads * head_dim, seed=1)
    w_in, b_in, w_out, b_out = _weights(module)
    q, k, v = F.linear(x, w_in, b_in).chunk(3, dim=-1)
    q, k, v = (split_heads(t, num_heads) for t in (q, k, v))        # (batch, heads, seq, head_dim)
    per_head = [F.scaled_dot_product_attention(q[:, h], k[:, h], v[:, h]) for h in range(num_heads)]
    stacked = torch.stack(per_head)                                  # (heads, batch, seq, head_dim)
    wrong = stacked.transpose(0, 1).reshape(2, 4, -1)                # tokens and heads interleave
    right = merge_heads(stacked.transpose(0, 1))          # (batch, seq, heads * head_dim)
    reference = multi_head_attention_loop(x, None, *_weights(module), num_heads)
    torch.testing.assert_close(F.linear(right, w_out, b_out), reference, **EXACT)
    assert not torch.allclose(F.linear(wrong, w_out, b_out), reference, atol=1e-3)
# --8<-- [end:merge-pitfall]


def test_reshape_follows_logical_order_and_copies_when_strides_forbid_a_view():
    # The chapter's claim: reshape reads elements in logical row-major order, whatever the
    # memory layout, returning a view when it can and a copy when it cannot.
    x = torch.arange(12).reshape(3, 4)
    transposed = x.t()                                   # (4, 3), not contiguous
    flat = transposed.reshape(-1)
    assert flat.tolist() == [x[i, j].item() for j in range(4) for i in range(3)]
    assert flat.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()  # a copy
    with pytest.raises(RuntimeError):
        transposed.view(-1)                              # view cannot express this order
    assert x.reshape(4, 3).data_ptr() == x.data_ptr()    # contiguous: a view


def test_merge_without_transpose_keeps_only_the_first_and_last_entries_in_place():
    # Exercise 3 of the chapter: h = 2 heads (a, b), 3 tokens, head_dim 1, batch 1.
    heads = torch.tensor([[[[0.0], [1.0], [2.0]], [[10.0], [11.0], [12.0]]]])  # a_t = t, b_t = 10 + t
    right = merge_heads(heads)                            # (1, 3, 2): row t = (a_t, b_t)
    wrong = heads.reshape(1, 3, 2)
    assert right[0].tolist() == [[0, 10], [1, 11], [2, 12]]
    in_place = (wrong == right)[0]
    assert in_place.tolist() == [[True, False], [False, False], [False, True]]


def test_torch_multihead_attention_returns_weights_unless_told_not_to():
    # Pins the chapter's remark: attnbook defaults to need_weights=False, torch to True.
    layer = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(1, 3, 8, generator=_gen(0))
    assert layer(x, x, x)[1] is not None
    assert layer(x, x, x, need_weights=False)[1] is None
    assert MultiHeadAttention(8, 2)(x)[1] is None


# ---------------------------------------------------------------------------------------
# Same numbers as torch.nn.MultiheadAttention
# ---------------------------------------------------------------------------------------

def test_matches_torch_multihead_attention_on_self_attention():
    ours = _module(16, 4)
    x = _randn(3, 5, 16, seed=1)
    expected, _ = _torch_copy(ours)(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x)[0], expected, **EXACT)


def test_matches_torch_multihead_attention_on_cross_attention():
    ours = _module(16, 4)  # with kdim = vdim = d_model, torch keeps the packed in_proj_weight
    x, memory = _randn(2, 3, 16, seed=1), _randn(2, 7, 16, seed=2)
    expected, _ = _torch_copy(ours)(x, memory, memory, need_weights=False)
    torch.testing.assert_close(ours(x, memory)[0], expected, **EXACT)


# --8<-- [start:torch-parity]
def test_matches_torch_with_a_key_padding_mask_of_the_opposite_convention():
    ours = _module(16, 4)
    x, memory = _randn(2, 3, 16, seed=1), _randn(2, 6, 16, seed=2)
    keep = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])   # ours: True = real key
    expected, _ = _torch_copy(ours)(x, memory, memory, need_weights=False,
                                    key_padding_mask=~keep)        # torch: True = ignore
    torch.testing.assert_close(ours(x, memory, key_padding_mask=keep)[0], expected, **EXACT)
# --8<-- [end:torch-parity]


def test_matches_torch_with_a_causal_mask():
    ours = _module(16, 4)
    x = _randn(2, 6, 16, seed=1)
    hidden = ~causal_mask(6)                                          # torch: True = may not attend
    expected, _ = _torch_copy(ours)(x, x, x, attn_mask=hidden, need_weights=False)
    torch.testing.assert_close(ours(x, causal=True)[0], expected, **EXACT)


def test_per_head_weights_average_to_torchs_averaged_weights():
    ours = _module(16, 4)
    x = _randn(2, 5, 16, seed=1)
    _, expected = _torch_copy(ours)(x, x, x, need_weights=True)      # torch averages over heads
    _, weights = ours(x, need_weights=True)
    torch.testing.assert_close(weights.mean(dim=1), expected, **EXACT)


def test_one_head_equals_projected_scaled_dot_product_attention():
    module = _module(8, 1)
    x = _randn(2, 5, 8, seed=1)
    q, k, v = F.linear(x, module.in_proj_weight, module.in_proj_bias).chunk(3, dim=-1)
    expected = module.out_proj(F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(module(x)[0], expected, **EXACT)


def test_as_many_kv_heads_as_heads_is_plain_multi_head_attention():
    ours = _module(16, 4, num_kv_heads=4)
    x = _randn(2, 5, 16, seed=1)
    expected, _ = _torch_copy(ours)(x, x, x, need_weights=False)
    torch.testing.assert_close(ours(x)[0], expected, **EXACT)


def test_grouped_kv_heads_equal_mha_with_each_kv_head_repeated():
    num_heads, num_kv_heads, head_dim = 4, 2, 3
    gqa = _module(num_heads * head_dim, num_heads, num_kv_heads)
    w_q, w_k, w_v = gqa.in_proj_weight.split([num_heads * head_dim, num_kv_heads * head_dim,
                                              num_kv_heads * head_dim])
    b_q, b_k, b_v = gqa.in_proj_bias.split([num_heads * head_dim, num_kv_heads * head_dim,
                                            num_kv_heads * head_dim])

    def repeat(t):  # kv head g serves query heads g * group .. (g + 1) * group - 1
        blocks = t.unflatten(0, (num_kv_heads, head_dim))
        return blocks.repeat_interleave(num_heads // num_kv_heads, dim=0).flatten(0, 1)

    mha = _module(num_heads * head_dim, num_heads)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([w_q, repeat(w_k), repeat(w_v)]))
        mha.in_proj_bias.copy_(torch.cat([b_q, repeat(b_k), repeat(b_v)]))
        mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
    x = _randn(2, 5, num_heads * head_dim, seed=1)
    torch.testing.assert_close(gqa(x)[0], mha(x)[0], **EXACT)


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------

def test_need_weights_gives_per_head_rows_that_sum_to_one_and_the_fast_path_output():
    module = _module(16, 4)
    x, memory = _randn(2, 3, 16, seed=1), _randn(2, 5, 16, seed=2)
    out, weights = module(x, memory, need_weights=True)
    assert weights.shape == (2, 4, 3, 5)                        # (batch, heads, q_len, k_len)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 3, dtype=F64), **EXACT)
    torch.testing.assert_close(out, module(x, memory)[0], **EXACT)


def test_returned_weights_are_taken_before_dropout():
    module = _module(16, 4, dropout=0.5).train()
    x = _randn(2, 6, 16, seed=1)
    _, weights = module(x, need_weights=True)
    # After dropout, rows would sum to anything; the weights we return are the probabilities.
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 6, dtype=F64), **EXACT)


# ---------------------------------------------------------------------------------------
# Cross-attention
# ---------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(q_len=st.integers(1, 7), k_len=st.integers(1, 7))
def test_cross_attention_output_has_one_row_per_query(q_len, k_len):
    module = _module(8, 2)
    x, memory = _randn(2, q_len, 8, seed=1), _randn(2, k_len, 8, seed=2)
    out, weights = module(x, memory, need_weights=True)
    assert out.shape == (2, q_len, 8)
    assert weights.shape == (2, 2, q_len, k_len)


def test_jointly_permuting_the_memory_rows_changes_nothing():
    module = _module(16, 4)
    x, memory = _randn(2, 3, 16, seed=1), _randn(2, 6, 16, seed=2)
    keep = torch.tensor([[True, True, False, True, True, True],
                         [True, False, True, True, False, True]])
    order = torch.randperm(6, generator=_gen(3))
    out, _ = module(x, memory, key_padding_mask=keep)
    permuted, _ = module(x, memory[:, order], key_padding_mask=keep[:, order])
    torch.testing.assert_close(permuted, out, **EXACT)  # a sum over keys does not care about order


def test_padded_memory_with_a_key_mask_equals_the_unpadded_memory():
    module = _module(16, 4)
    x, memory = _randn(1, 3, 16, seed=1), _randn(1, 4, 16, seed=2)
    padded = torch.cat([memory, 1e3 * _randn(1, 3, 16, seed=3)], dim=1)   # junk that must not leak
    keep = torch.tensor([[True] * 4 + [False] * 3])
    expected, _ = module(x, memory)
    torch.testing.assert_close(module(x, padded, key_padding_mask=keep)[0], expected, **EXACT)


# ---------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("need_weights", [False, True], ids=["fused", "explicit"])
def test_gradients_match_finite_differences(need_weights):
    module = _module(6, 2)
    x = _randn(1, 3, 6, seed=1).requires_grad_()
    memory = _randn(1, 4, 6, seed=2).requires_grad_()
    keep = torch.tensor([[True, True, True, False]])
    weights = tuple(p.detach().clone().requires_grad_() for p in _weights(module))

    def f(x, memory, *weights):
        return multi_head_attention(x, memory, *weights, 2, key_padding_mask=keep,
                                    need_weights=need_weights)[0]

    assert torch.autograd.gradcheck(f, (x, memory, *weights))


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------

def test_rejects_d_model_not_divisible_by_num_heads():
    with pytest.raises(ValueError, match="d_model=510 is not divisible by num_heads=8"):
        MultiHeadAttention(510, 8)


def test_rejects_num_heads_not_divisible_by_num_kv_heads():
    with pytest.raises(ValueError, match="num_heads=6 is not divisible by num_kv_heads=4"):
        MultiHeadAttention(24, 6, num_kv_heads=4)


def test_rejects_x_of_the_wrong_rank():
    with pytest.raises(ValueError, match=r"x must have 3 dimensions"):
        _module(16, 4)(_randn(5, 16))


def test_rejects_x_of_the_wrong_width():
    with pytest.raises(ValueError, match=r"x has 12 features, expected d_model=16"):
        _module(16, 4)(_randn(2, 5, 12))


def test_rejects_a_key_padding_mask_of_the_wrong_shape():
    wrong = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(batch, k_len\)"):
        _module(16, 4)(_randn(2, 5, 16), key_padding_mask=wrong)


def test_rejects_a_key_padding_mask_that_is_not_boolean():
    with pytest.raises(TypeError, match="key_padding_mask must be boolean"):
        _module(16, 4)(_randn(2, 5, 16), key_padding_mask=torch.ones(2, 5))


# ---------------------------------------------------------------------------------------
# attnbook.train
# ---------------------------------------------------------------------------------------

def test_warmup_cosine_climbs_linearly_then_decays_to_the_floor():
    values = [warmup_cosine(s, warmup_steps=4, total_steps=12, min_ratio=0.1) for s in range(14)]
    assert values[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])            # linear warm-up
    assert values[4] == pytest.approx(1.0)                                 # top of the cosine
    assert values[8] == pytest.approx(0.55)                                # halfway: (1 + 0.1) / 2
    assert values[12] == pytest.approx(0.1) and values[13] == pytest.approx(0.1)  # floor, flat
    assert all(a >= b for a, b in zip(values[4:], values[5:]))            # never rises again


def _copy_task(generator):
    tokens = torch.randint(8, (16, 5), generator=generator)
    return tokens, tokens  # predict the token you are given


def _copy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(8, 16), nn.Linear(16, 8))


def test_train_reduces_the_loss_on_a_learnable_task():
    config = TrainConfig(steps=60, lr=1e-2, warmup_steps=5)
    history = train(_copy_model(), _copy_task, config, device="cpu")
    assert len(history.loss) == 60
    assert sum(history.loss[-5:]) / 5 < 0.25 * sum(history.loss[:5]) / 5


def test_train_is_reproducible_and_leaves_the_global_random_state_alone():
    config = TrainConfig(steps=10, lr=1e-2, seed=3)
    model_a, model_b = _copy_model(), _copy_model()
    state = torch.random.get_rng_state()
    first = train(model_a, _copy_task, config, device="cpu")
    assert torch.equal(state, torch.random.get_rng_state())   # seeded inside fork_rng only
    second = train(model_b, _copy_task, config, device="cpu")
    assert first.loss == second.loss


def test_train_follows_the_schedule_and_records_the_norm_before_clipping():
    config = TrainConfig(steps=8, lr=0.5, warmup_steps=2, clip_norm=1e-3)
    history = train(_copy_model(), _copy_task, config, device="cpu")
    expected = [0.5 * warmup_cosine(s, warmup_steps=2, total_steps=8) for s in range(8)]
    assert history.lr == pytest.approx(expected)
    assert history.grad_norm[0] > 100 * config.clip_norm  # measured before the clip, not after


def test_cross_entropy_skips_ignored_targets_and_smooths_labels():
    logits = _randn(2, 3, 4, dtype=torch.float32)
    targets = torch.tensor([[0, 1, IGNORE_INDEX], [3, IGNORE_INDEX, 2]])
    kept = targets != IGNORE_INDEX
    log_p = logits.log_softmax(-1)[kept]
    nll = -log_p.gather(-1, targets[kept][:, None]).squeeze(-1)
    assert cross_entropy(logits, targets).item() == pytest.approx(nll.mean().item(), rel=1e-6)
    eps = 0.1  # smoothed target: (1 - eps) on the label, eps / classes everywhere
    smoothed = (1 - eps) * nll - eps * log_p.mean(-1)
    smoothed_loss = cross_entropy(logits, targets, label_smoothing=eps).item()
    assert smoothed_loss == pytest.approx(smoothed.mean().item(), rel=1e-6)
    assert accuracy(logits, targets) == pytest.approx(
        (logits.argmax(-1)[kept] == targets[kept]).float().mean().item())


# ---------------------------------------------------------------------------------------
# attnbook.data.synthetic
# ---------------------------------------------------------------------------------------

def test_partner_task_is_reproducible_for_a_seed():
    a = partner_task(4, 5, 10, generator=_gen(1))
    b = partner_task(4, 5, 10, generator=_gen(1))
    c = partner_task(4, 5, 10, generator=_gen(2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_partner_task_targets_are_the_previous_and_the_partner_digits():
    inputs, targets = partner_task(8, 5, 10, generator=_gen(0))
    assert inputs.shape == (8, 10, 2) and targets.shape == (8, 10, 2)
    symbols, digits = inputs[..., 0], inputs[..., 1]
    assert torch.equal(symbols.sort(-1).values, torch.arange(10).expand(8, 10))  # each symbol once
    assert (targets[:, 0, 0] == IGNORE_INDEX).all()
    assert torch.equal(targets[:, 1:, 0], digits[:, :-1])
    partner = partner_positions(symbols, 5)
    assert torch.equal(symbols.gather(1, partner), (symbols + 5) % 10)            # 'A' <-> 'a'
    assert torch.equal(targets[..., 1], digits.gather(1, partner))


def test_reversal_task_targets_are_the_source_reversed():
    (source, decoder_input), target = reversal_task(3, 6, 7, generator=_gen(0))
    assert source.shape == decoder_input.shape == target.shape == (3, 6)
    assert torch.equal(target, source.flip(-1))
    assert (decoder_input[:, 0] == 7).all()                                      # BOS = vocab_size
    assert torch.equal(decoder_input[:, 1:], target[:, :-1])                     # teacher forcing


def test_task_generators_reject_bad_sizes():
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        partner_task(0, 4, 10, generator=_gen(0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        reversal_task(2, 4, 10, generator=0)
