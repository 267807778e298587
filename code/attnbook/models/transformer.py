"""The Transformer of Vaswani et al. (2017, arXiv:1706.03762), one idea per class.

Built on the book's ``MultiHeadAttention`` (``attnbook.attention.multihead``) and
sinusoidal positions (``attnbook.attention.positional``):

* ``RMSNorm`` (Zhang & Sennrich, 2019), the normalisation of most recent decoders;
* ``FeedForward``, the position-wise network FFN(x) = act(x W_1 + b_1) W_2 + b_2 (§3.3),
  and ``SwiGLU``, its gated variant (Shazeer, 2020);
* ``Residual``: one sub-layer with its residual connection, dropout and LayerNorm, either
  post-LN as in the paper, LN(x + Dropout(F(x))), or pre-LN, x + Dropout(F(LN(x)));
* ``EncoderLayer``, ``DecoderLayer``, the stacks ``Encoder`` and ``Decoder``, and
  ``EncoderDecoder`` with scaled embeddings, sinusoidal positions, an optionally tied
  output projection and greedy decoding.

Layout: batch first, tokens ``(batch, seq)``, activations ``(batch, seq, d_model)``.
Masks are boolean with **True = may attend** (key padding: True = real token), the
opposite of ``torch.nn.Transformer``'s boolean masks.

Dropout sits where §5.4 of the paper puts it: on the output of every sub-layer before it
is added to the residual stream, and on the sum of embeddings and positions. Dropout
inside the feed-forward network and on the attention weights, which
``torch.nn.TransformerEncoderLayer`` also applies, is not described in the paper; here
``attention_dropout`` turns the latter on and the former does not exist.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..attention._checks import check_positive_int, check_rank, check_tensor
from ..attention.multihead import MultiHeadAttention
from ..attention.positional import sinusoidal_encoding

Tensor = torch.Tensor

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def _check_dropout(name: str, p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return p


def _check_features(name: str, x: Tensor, d_model: int) -> Tensor:
    check_rank(name, x, 3, "(batch, seq, d_model)")
    if x.shape[-1] != d_model:
        raise ValueError(f"{name} has {x.shape[-1]} features, expected d_model={d_model} "
                         f"(shape {tuple(x.shape)})")
    return x


# --8<-- [start:rmsnorm]
class RMSNorm(nn.Module):
    """RMSNorm(x) = x / sqrt(mean(x²) + eps) · g, over the last axis (Zhang & Sennrich, 2019).

    LayerNorm without the mean subtraction and without the bias: it rescales each token's
    vector to unit root-mean-square and lets a learned gain g (init 1) set the scale.
    """

    def __init__(self, d_model: int, eps: float = 1e-6, *, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(check_positive_int("d_model", d_model),
                                              device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., 1)
        return x / rms * self.weight
# --8<-- [end:rmsnorm]


# --8<-- [start:feedforward]
class FeedForward(nn.Module):
    """FFN(x) = act(x W_1 + b_1) W_2 + b_2, applied to every position separately (§3.3).

    (batch, seq, d_model) -> (batch, seq, d_model) through a wider hidden layer of d_ff
    units (2048 = 4 · 512 in the paper). ``activation`` is ``"relu"`` (the paper) or
    ``"gelu"`` (BERT, GPT).
    """

    def __init__(self, d_model: int, d_ff: int, *, activation: str = "relu", bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_ff", d_ff)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        self.activation = ACTIVATIONS[activation]
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias, device=device, dtype=dtype)
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.activation(self.linear1(x)))
# --8<-- [end:feedforward]


# --8<-- [start:swiglu]
class SwiGLU(nn.Module):
    """SwiGLU(x) = (SiLU(x W_gate) ⊙ x W_up) W_down (Shazeer, 2020), no biases, as in Llama.

    A gate computed from x decides, unit by unit, how much of a second projection passes.
    With three matrices instead of two, d_ff is usually taken as about 2/3 of the
    ReLU network's to keep the parameter count.
    """

    def __init__(self, d_model: int, d_ff: int, *, device=None, dtype=None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("d_ff", d_ff)
        factory = {"bias": False, "device": device, "dtype": dtype}
        self.gate = nn.Linear(d_model, d_ff, **factory)
        self.up = nn.Linear(d_model, d_ff, **factory)
        self.down = nn.Linear(d_ff, d_model, **factory)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))
# --8<-- [end:swiglu]


# --8<-- [start:residual]
class Residual(nn.Module):
    """One sub-layer F with its residual connection, dropout and normalisation.

    post-LN (``norm_first=False``, the paper, §3.1 and §5.4): LN(x + Dropout(F(x))).
    pre-LN  (``norm_first=True``, GPT-2 and most models since): x + Dropout(F(LN(x))).
    Pre-LN leaves the residual stream untouched by any normalisation, so gradients reach
    early layers unscaled and training needs little or no warm-up (Xiong et al., 2020);
    the stack then needs one final LN (see ``Encoder``).
    """

    def __init__(self, d_model: int, dropout: float, norm_first: bool, *, device=None, dtype=None):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, device=device, dtype=dtype)
        self.dropout = nn.Dropout(_check_dropout("dropout", dropout))
        self.norm_first = norm_first

    def forward(self, x: Tensor, sublayer) -> Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))
# --8<-- [end:residual]


# --8<-- [start:encoder_layer]
class EncoderLayer(nn.Module):
    """Self-attention over the whole source, then the feed-forward network (§3.1).

    forward(x (batch, src_len, d_model), key_padding_mask (batch, src_len), True = real
    token; attn_mask boolean, True = may attend) -> (batch, src_len, d_model).
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, *, dropout: float = 0.1,
                 attention_dropout: float = 0.0, norm_first: bool = False,
                 activation: str = "relu", device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model = d_model
        self.self_attn = MultiHeadAttention(
            d_model, num_heads, dropout=_check_dropout("attention_dropout", attention_dropout),
            **factory)
        self.feed_forward = FeedForward(d_model, d_ff, activation=activation, **factory)
        self.attn_block = Residual(d_model, dropout, norm_first, **factory)
        self.ff_block = Residual(d_model, dropout, norm_first, **factory)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None) -> Tensor:
        _check_features("x", x, self.d_model)
        x = self.attn_block(x, lambda h: self.self_attn(
            h, key_padding_mask=key_padding_mask, attn_mask=attn_mask)[0])
        return self.ff_block(x, self.feed_forward)
# --8<-- [end:encoder_layer]


# --8<-- [start:decoder_layer]
class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder's output, feed-forward (§3.1).

    The queries of the cross-attention come from the decoder, the keys and values from
    ``memory`` (batch, src_len, d_model). ``causal=True`` hides later target positions
    (the "masking" of §3.1); ``attn_mask`` (True = may attend) is ANDed with it.
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, *, dropout: float = 0.1,
                 attention_dropout: float = 0.0, norm_first: bool = False,
                 activation: str = "relu", device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        _check_dropout("attention_dropout", attention_dropout)
        self.d_model = d_model
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=attention_dropout, **factory)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout=attention_dropout, **factory)
        self.feed_forward = FeedForward(d_model, d_ff, activation=activation, **factory)
        self.self_block = Residual(d_model, dropout, norm_first, **factory)
        self.cross_block = Residual(d_model, dropout, norm_first, **factory)
        self.ff_block = Residual(d_model, dropout, norm_first, **factory)

    def forward(self, x: Tensor, memory: Tensor, *, key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None, attn_mask: Tensor | None = None,
                causal: bool = True) -> Tensor:
        _check_features("x", x, self.d_model)
        _check_features("memory", memory, self.d_model)
        x = self.self_block(x, lambda h: self.self_attn(
            h, key_padding_mask=key_padding_mask, attn_mask=attn_mask, causal=causal)[0])
        x = self.cross_block(x, lambda h: self.cross_attn(
            h, memory, key_padding_mask=memory_key_padding_mask)[0])
        return self.ff_block(x, self.feed_forward)
# --8<-- [end:decoder_layer]


# --8<-- [start:stacks]
class _Stack(nn.Module):
    """``num_layers`` copies of ``layer_class``; pre-LN stacks end with one more LayerNorm."""

    layer_class: type[nn.Module]

    def __init__(self, num_layers: int, d_model: int, num_heads: int, d_ff: int, *,
                 norm_first: bool = False, device=None, dtype=None, **layer_options):
        super().__init__()
        check_positive_int("num_layers", num_layers)
        self.layers = nn.ModuleList(
            self.layer_class(d_model, num_heads, d_ff, norm_first=norm_first, device=device,
                             dtype=dtype, **layer_options) for _ in range(num_layers))
        # Post-LN layers already end in a LayerNorm; pre-LN ones leave the stream unnormalised.
        self.norm = nn.LayerNorm(d_model, device=device, dtype=dtype) if norm_first else nn.Identity()


class Encoder(_Stack):
    """The encoder: a stack of ``EncoderLayer``s over the embedded source."""

    layer_class = EncoderLayer

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, key_padding_mask)
        return self.norm(x)


class Decoder(_Stack):
    """The decoder: a stack of ``DecoderLayer``s, each attending to the same ``memory``."""

    layer_class = DecoderLayer

    def forward(self, x: Tensor, memory: Tensor, *, key_padding_mask: Tensor | None = None,
                memory_key_padding_mask: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            x = layer(x, memory, key_padding_mask=key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask)
        return self.norm(x)
# --8<-- [end:stacks]


# --8<-- [start:embedding]
class ScaledEmbedding(nn.Module):
    """Token embedding times sqrt(d_model) plus sinusoidal positions, then dropout (§3.4, §3.5).

    The table is initialised with standard deviation d_model^-1/2, so that after the
    sqrt(d_model) factor each coordinate has unit scale, like the sines and cosines it is
    added to; shared with the output projection, the same table gives small initial logits.
    """

    def __init__(self, vocab_size: int, d_model: int, *, dropout: float = 0.1, device=None, dtype=None):
        super().__init__()
        check_positive_int("vocab_size", vocab_size)
        self.d_model = check_positive_int("d_model", d_model)
        self.table = nn.Embedding(vocab_size, d_model, device=device, dtype=dtype)
        nn.init.normal_(self.table.weight, std=d_model ** -0.5)
        self.dropout = nn.Dropout(_check_dropout("dropout", dropout))

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.table(tokens) * math.sqrt(self.d_model)  # (batch, seq, d_model)
        positions = sinusoidal_encoding(tokens.shape[1], self.d_model, dtype=x.dtype, device=x.device)
        return self.dropout(x + positions)
# --8<-- [end:embedding]


# --8<-- [start:encoder_decoder]
class EncoderDecoder(nn.Module):
    """The whole translation model: source and target embeddings, encoder, decoder, output.

    forward(src (batch, src_len), tgt_in (batch, tgt_len) = <bos> y_1 ... y_T (padded)) ->
    logits (batch, tgt_len, tgt_vocab) for y_1 ... y_T <eos>. ``tie_output=True`` uses the target
    embedding table as the output projection (§3.4; the paper also shares it with the source
    embedding when both languages use one vocabulary).
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, *, d_model: int = 512, num_heads: int = 8,
                 num_layers: int = 6, d_ff: int = 2048, dropout: float = 0.1,
                 norm_first: bool = False, tie_output: bool = True, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.src_embed = ScaledEmbedding(src_vocab, d_model, dropout=dropout, **factory)
        self.tgt_embed = ScaledEmbedding(tgt_vocab, d_model, dropout=dropout, **factory)
        self.encoder = Encoder(num_layers, d_model, num_heads, d_ff, dropout=dropout,
                               norm_first=norm_first, **factory)
        self.decoder = Decoder(num_layers, d_model, num_heads, d_ff, dropout=dropout,
                               norm_first=norm_first, **factory)
        self.output = nn.Linear(d_model, tgt_vocab, bias=False, **factory)
        if tie_output:
            self.output.weight = self.tgt_embed.table.weight

    def encode(self, src: Tensor, src_key_padding_mask: Tensor | None = None) -> Tensor:
        """src (batch, src_len) -> memory (batch, src_len, d_model)."""
        _check_tokens("src", src)
        return self.encoder(self.src_embed(src), src_key_padding_mask)

    def decode(self, tgt_in: Tensor, memory: Tensor, *, src_key_padding_mask: Tensor | None = None,
               tgt_key_padding_mask: Tensor | None = None) -> Tensor:
        """tgt_in (batch, tgt_len) and memory -> logits (batch, tgt_len, tgt_vocab)."""
        _check_tokens("tgt_in", tgt_in)
        x = self.decoder(self.tgt_embed(tgt_in), memory, key_padding_mask=tgt_key_padding_mask,
                         memory_key_padding_mask=src_key_padding_mask)
        return self.output(x)

    def forward(self, src: Tensor, tgt_in: Tensor, *, src_key_padding_mask: Tensor | None = None,
                tgt_key_padding_mask: Tensor | None = None) -> Tensor:
        memory = self.encode(src, src_key_padding_mask)
        return self.decode(tgt_in, memory, src_key_padding_mask=src_key_padding_mask,
                           tgt_key_padding_mask=tgt_key_padding_mask)
# --8<-- [end:encoder_decoder]


def _check_tokens(name: str, tokens: Tensor) -> Tensor:
    check_rank(name, tokens, 2, "(batch, seq)")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.shape[1] == 0:
        raise ValueError(f"{name} must hold at least one token per sequence, got shape {tuple(tokens.shape)}")
    return tokens


# --8<-- [start:greedy]
@torch.no_grad()
def greedy_decode(model: EncoderDecoder, src: Tensor, max_len: int, *, bos_id: int,
                  eos_id: int | None = None, pad_id: int = 0,
                  src_key_padding_mask: Tensor | None = None) -> Tensor:
    """Translate ``src`` (batch, src_len) by taking the most likely token at every step.

    The source is encoded once; each step reruns the decoder on the prefix chosen so far
    and appends the arg-max of the last position. A sequence that has produced ``eos_id``
    gets ``pad_id`` afterwards. Returns (batch, 1 + steps), starting with ``bos_id``, where
    steps = max_len, or fewer when every sequence has produced ``eos_id``.
    """
    check_positive_int("max_len", max_len)
    check_tensor("src", src)
    memory = model.encode(src, src_key_padding_mask)
    tokens = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
    finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        logits = model.decode(tokens, memory, src_key_padding_mask=src_key_padding_mask)[:, -1]
        next_token = logits.argmax(dim=-1).masked_fill(finished, pad_id)  # (batch,)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        if eos_id is not None:
            finished |= next_token == eos_id
            if finished.all():
                break
    return tokens
# --8<-- [end:greedy]
