"""The Transformer block and encoder-decoder (attnbook.models.transformer)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnbook.attention import causal_mask
from attnbook.models.transformer import (
    Decoder, DecoderLayer, Encoder, EncoderDecoder, EncoderLayer, FeedForward, Residual, RMSNorm, SwiGLU,
    greedy_decode,
)

D_MODEL, HEADS, D_FF = 12, 3, 20
# float64 everywhere: the two implementations add the same terms in different orders
# (fused QKV vs separate, SDPA kernel vs explicit softmax), so they differ by a few
# rounding errors of size ~1e-16 per operation through two layers of O(1) values. 1e-10
# is far above that and far below the O(1) error any wrong weight, mask or order gives.
TOL = {"atol": 1e-10, "rtol": 0.0}


def _randomise(module, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.5)
            if p.dim() == 1 and p.shape[0] == D_MODEL:  # make LayerNorm gains non-trivial too
                p.add_(1.0)
    return module


ENCODER_NAMES = {
    "self_attn.in_proj_weight": "self_attn.in_proj_weight", "self_attn.in_proj_bias": "self_attn.in_proj_bias",
    "self_attn.out_proj.weight": "self_attn.out_proj.weight", "self_attn.out_proj.bias": "self_attn.out_proj.bias",
    "linear1.weight": "feed_forward.linear1.weight", "linear1.bias": "feed_forward.linear1.bias",
    "linear2.weight": "feed_forward.linear2.weight", "linear2.bias": "feed_forward.linear2.bias",
    "norm1.weight": "attn_block.norm.weight", "norm1.bias": "attn_block.norm.bias",
    "norm2.weight": "ff_block.norm.weight", "norm2.bias": "ff_block.norm.bias",
}
DECODER_NAMES = {
    **{k: v for k, v in ENCODER_NAMES.items() if not k.startswith("norm")},
    **{k.replace("self_attn", "multihead_attn"): v.replace("self_attn", "cross_attn")
       for k, v in ENCODER_NAMES.items() if k.startswith("self_attn")},
    "norm1.weight": "self_block.norm.weight", "norm1.bias": "self_block.norm.bias",
    "norm2.weight": "cross_block.norm.weight", "norm2.bias": "cross_block.norm.bias",
    "norm3.weight": "ff_block.norm.weight", "norm3.bias": "ff_block.norm.bias",
}


def _copy(reference, ours, names):
    state = reference.state_dict()
    assert set(state) == set(names), set(state) ^ set(names)
    ours.load_state_dict({names[k]: v for k, v in state.items()})
    return ours


def _pair(reference_class, our_class, names, norm_first, seed):
    """A torch layer with random weights and our layer holding the same weights."""
    options = {"dropout": 0.0, "norm_first": norm_first, "dtype": torch.float64}
    reference = _randomise(reference_class(D_MODEL, HEADS, D_FF, batch_first=True, **options), seed)
    return reference, _copy(reference, our_class(D_MODEL, HEADS, D_FF, **options), names)


def _inputs(batch=3, seq=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, D_MODEL, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([seq, seq - 2, 3][:batch])
    keep = torch.arange(seq)[None, :] < lengths[:, None]  # (batch, seq), True = real token
    mask = torch.rand(seq, seq, generator=generator) < 0.7
    mask[:, 0] = True  # every query may attend the first (always real) key: no empty rows
    return x, keep, mask


# --- RMSNorm, feed-forward ----------------------------------------------------------

def test_rmsnorm_equals_torch():
    x = torch.randn(2, 5, D_MODEL, dtype=torch.float64)
    ours, reference = RMSNorm(D_MODEL, eps=1e-6, dtype=torch.float64), nn.RMSNorm(D_MODEL, eps=1e-6, dtype=torch.float64)
    with torch.no_grad():
        ours.weight.copy_(torch.linspace(0.5, 2.0, D_MODEL))
        reference.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), reference(x), **TOL)


def test_feedforward_and_swiglu_are_their_formulas():
    x = torch.randn(2, 5, D_MODEL, dtype=torch.float64)
    ff = FeedForward(D_MODEL, D_FF, dtype=torch.float64)
    expected = F.relu(x @ ff.linear1.weight.T + ff.linear1.bias) @ ff.linear2.weight.T + ff.linear2.bias
    torch.testing.assert_close(ff(x), expected, **TOL)
    glu = SwiGLU(D_MODEL, D_FF, dtype=torch.float64)
    a, b = x @ glu.gate.weight.T, x @ glu.up.weight.T
    torch.testing.assert_close(glu(x), (a * torch.sigmoid(a) * b) @ glu.down.weight.T, **TOL)


def test_feedforward_acts_on_each_position_separately():
    ff = FeedForward(D_MODEL, D_FF, dtype=torch.float64)
    x = torch.randn(1, 6, D_MODEL, dtype=torch.float64)
    whole = ff(x)
    for t in range(6):
        torch.testing.assert_close(ff(x[:, t:t + 1]), whole[:, t:t + 1], **TOL)


# --- layers against torch.nn ------------------------------------------------------------

@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_equals_torch(norm_first):
    reference, ours = _pair(nn.TransformerEncoderLayer, EncoderLayer, ENCODER_NAMES, norm_first, seed=1)
    x, keep, mask = _inputs()
    # torch's boolean masks mean True = *ignore*, ours True = *may attend*
    expected = reference(x, src_mask=~mask, src_key_padding_mask=~keep)
    torch.testing.assert_close(ours(x, key_padding_mask=keep, attn_mask=mask), expected, **TOL)
    torch.testing.assert_close(ours(x), reference(x), **TOL)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_equals_torch(norm_first):
    reference, ours = _pair(nn.TransformerDecoderLayer, DecoderLayer, DECODER_NAMES, norm_first, seed=2)
    x, keep, mask = _inputs(seq=6, seed=3)
    memory, memory_keep, _ = _inputs(seq=8, seed=4)
    allowed = mask & causal_mask(6)
    expected = reference(x, memory, tgt_mask=~allowed, tgt_key_padding_mask=~keep,
                         memory_key_padding_mask=~memory_keep)
    got = ours(x, memory, key_padding_mask=keep, memory_key_padding_mask=memory_keep,
               attn_mask=mask, causal=True)
    torch.testing.assert_close(got, expected, **TOL)
    plain = reference(x, memory, tgt_mask=~causal_mask(6))
    torch.testing.assert_close(ours(x, memory), plain, **TOL)


@pytest.mark.parametrize("norm_first", [False, True])
def test_stacks_equal_torch(norm_first):
    """Two layers deep, with torch's final LayerNorm exactly when the layers are pre-LN."""
    options = {"dropout": 0.0, "norm_first": norm_first, "dtype": torch.float64}
    final = {"norm": nn.LayerNorm(D_MODEL, dtype=torch.float64)} if norm_first else {}
    stacks = [
        (nn.TransformerEncoder(nn.TransformerEncoderLayer(D_MODEL, HEADS, D_FF, batch_first=True, **options),
                               2, enable_nested_tensor=False, **final), Encoder, ENCODER_NAMES),
        (nn.TransformerDecoder(nn.TransformerDecoderLayer(D_MODEL, HEADS, D_FF, batch_first=True, **options),
                               2, **final), Decoder, DECODER_NAMES),
    ]
    x, keep, _ = _inputs(seq=6, seed=6)
    memory, memory_keep, _ = _inputs(seq=5, seed=7)
    for seed, (reference, our_class, names) in enumerate(stacks):
        _randomise(reference, seed)
        stack_names = {f"layers.{i}.{k}": f"layers.{i}.{v}" for i in range(2) for k, v in names.items()}
        if norm_first:
            stack_names.update({"norm.weight": "norm.weight", "norm.bias": "norm.bias"})
        ours = _copy(reference, our_class(2, D_MODEL, HEADS, D_FF, **options), stack_names)
        if our_class is Encoder:
            got, expected = ours(x, keep), reference(x, src_key_padding_mask=~keep)
        else:
            got = ours(x, memory, key_padding_mask=keep, memory_key_padding_mask=memory_keep)
            expected = reference(x, memory, tgt_mask=~causal_mask(6), tgt_key_padding_mask=~keep,
                                 memory_key_padding_mask=~memory_keep)
        torch.testing.assert_close(got, expected, **TOL)


def test_pre_ln_encoder_layer_equals_the_formula():
    """x' = x + MHA(LN1(x)); y = x' + W2 relu(W1 LN2(x') + b1) + b2, written out."""
    layer = _randomise(EncoderLayer(D_MODEL, HEADS, D_FF, dropout=0.0, norm_first=True,
                                    dtype=torch.float64), seed=5)
    x, _, _ = _inputs(batch=2, seq=5)
    a = layer.self_attn
    n1, n2, ff = layer.attn_block.norm, layer.ff_block.norm, layer.feed_forward

    def layer_norm(h, norm):
        mean, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
        return (h - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias

    h = layer_norm(x, n1)
    q, k, v = (h @ w.T + b for w, b in zip(a.in_proj_weight.chunk(3), a.in_proj_bias.chunk(3)))
    heads = []
    for i in range(HEADS):
        cols = slice(i * a.head_dim, (i + 1) * a.head_dim)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(a.head_dim)
        heads.append(torch.softmax(scores, dim=-1) @ v[..., cols])
    x1 = x + torch.cat(heads, -1) @ a.out_proj.weight.T + a.out_proj.bias
    h = layer_norm(x1, n2)
    y = x1 + F.relu(h @ ff.linear1.weight.T + ff.linear1.bias) @ ff.linear2.weight.T + ff.linear2.bias
    torch.testing.assert_close(layer(x), y, **TOL)


def test_residual_dropout_is_applied_to_the_sublayer_output_only():
    block = Residual(D_MODEL, dropout=0.5, norm_first=True).train()
    x = torch.randn(2, 4, D_MODEL)
    out = block(x, torch.zeros_like)  # a sub-layer that outputs 0: dropout of 0 is 0
    torch.testing.assert_close(out, x, atol=0.0, rtol=0.0)


# --- the encoder-decoder ----------------------------------------------------------------

def _model(norm_first=False, tie_output=True, seed=0):
    torch.manual_seed(seed)
    return EncoderDecoder(11, 13, d_model=D_MODEL, num_heads=HEADS, num_layers=2, d_ff=D_FF,
                          dropout=0.0, norm_first=norm_first, tie_output=tie_output,
                          dtype=torch.float64).eval()


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_is_causal_bit_for_bit(norm_first):
    model = _model(norm_first)
    src = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(1))
    tgt = torch.randint(0, 13, (2, 7), generator=torch.Generator().manual_seed(2))
    changed = tgt.clone()
    changed[:, 4:] = (changed[:, 4:] + 5) % 13
    before, after = model(src, tgt), model(src, changed)
    assert torch.equal(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_tied_output_shares_the_target_embedding():
    tied, untied = _model(tie_output=True), _model(tie_output=False)
    assert tied.output.weight is tied.tgt_embed.table.weight
    n_tied = sum(p.numel() for p in tied.parameters())
    assert sum(p.numel() for p in untied.parameters()) - n_tied == 13 * D_MODEL


def test_embedding_is_scaled_table_plus_sinusoids():
    model = _model()
    tokens = torch.tensor([[3, 1, 4]])
    expected = model.src_embed.table.weight[tokens] * math.sqrt(D_MODEL)
    position = torch.arange(3, dtype=torch.float64)[:, None]
    freq = 10000.0 ** (-torch.arange(0, D_MODEL, 2, dtype=torch.float64) / D_MODEL)
    expected[..., 0::2] += torch.sin(position * freq)
    expected[..., 1::2] += torch.cos(position * freq)
    torch.testing.assert_close(model.src_embed(tokens), expected, **TOL)


def test_encoder_padding_does_not_leak_into_real_tokens():
    model = _model(norm_first=True)
    src = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]])
    keep = src != 0
    keep[1] = True
    memory = model.encode(src, keep)
    other = src.clone()
    other[0, 3:] = 9  # change only padded tokens
    torch.testing.assert_close(model.encode(other, keep)[0, :3], memory[0, :3], **TOL)


def test_greedy_decode_equals_step_by_step_argmax():
    model = _model(norm_first=True, seed=3)
    src = torch.randint(1, 11, (3, 5), generator=torch.Generator().manual_seed(4))
    tokens = greedy_decode(model, src, max_len=6, bos_id=1)
    expected = torch.ones(3, 1, dtype=torch.long)
    for _ in range(6):
        next_token = model(src, expected)[:, -1].argmax(-1, keepdim=True)
        expected = torch.cat([expected, next_token], dim=1)
    assert torch.equal(tokens, expected)


def test_greedy_decode_pads_after_eos_and_stops():
    model = _model(seed=3)
    src = torch.randint(1, 11, (3, 5), generator=torch.Generator().manual_seed(4))
    free = greedy_decode(model, src, max_len=6, bos_id=1)
    eos = int(free[0, 2])  # declare the token chosen at step 2 of the first sentence an <eos>
    out = greedy_decode(model, src, max_len=6, bos_id=1, eos_id=eos, pad_id=0)
    for row, free_row in zip(out, free):
        hits = (free_row[1:] == eos).nonzero()
        if len(hits):
            end = 1 + int(hits[0])
            assert torch.equal(row[:end + 1], free_row[:end + 1]) and (row[end + 1:] == 0).all()
        else:
            assert torch.equal(row, free_row[:len(row)])


# --- named errors --------------------------------------------------------------------

def test_bad_sizes_raise_named_errors():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by num_heads=3"):
        EncoderLayer(10, 3, D_FF)
    with pytest.raises(ValueError, match="d_ff must be a positive integer"):
        DecoderLayer(D_MODEL, HEADS, 0)
    with pytest.raises(ValueError, match="dropout must be in"):
        EncoderLayer(D_MODEL, HEADS, D_FF, dropout=1.0)
    with pytest.raises(ValueError, match="activation must be one of"):
        FeedForward(D_MODEL, D_FF, activation="tanh")
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        Encoder(0, D_MODEL, HEADS, D_FF)
    with pytest.raises(ValueError, match="d_model must be even"):
        EncoderDecoder(5, 5, d_model=9, num_heads=3, num_layers=1, d_ff=8)(
            torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    layer = EncoderLayer(D_MODEL, HEADS, D_FF)
    with pytest.raises(ValueError, match="x has 8 features, expected d_model=12"):
        layer(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        layer(torch.randn(2, 3, D_MODEL), key_padding_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="memory has 8 features"):
        DecoderLayer(D_MODEL, HEADS, D_FF)(torch.randn(1, 3, D_MODEL), torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="src must have 2 dimensions"):
        _model().encode(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len must be a positive integer"):
        greedy_decode(_model(), torch.zeros(1, 3, dtype=torch.long), max_len=0, bos_id=1)



def test_encoder_decoder_memorises_a_batch_under_the_noam_schedule():
    """Four fixed sentences to reverse: the whole model trains end to end (pre-LN, tiny)."""
    from attnbook.train import TrainConfig, train

    src = torch.randint(2, 9, (4, 5), generator=torch.Generator().manual_seed(0))
    tgt = src.flip(1)
    tgt_in = torch.cat([torch.ones(4, 1, dtype=torch.long), tgt[:, :-1]], dim=1)  # <bos> = 1
    torch.manual_seed(0)
    model = EncoderDecoder(9, 9, d_model=32, num_heads=4, num_layers=1, d_ff=64, dropout=0.0,
                           norm_first=True)
    config = TrainConfig(steps=40, lr=0.5, schedule="noam", d_model=32, warmup_steps=10,
                         weight_decay=0.0)
    history = train(model, lambda generator: ((src, tgt_in), tgt), config, device="cpu")
    assert history.loss[-1] < 0.05
    assert torch.equal(greedy_decode(model.eval(), src, max_len=5, bos_id=1)[:, 1:], tgt)
