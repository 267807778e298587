"""Positional information for attention, which is otherwise blind to order.

* Absolute: sinusoidal encodings (Vaswani et al., 2017, arXiv:1706.03762, Section 3.5)
  and a learned table (as in BERT and GPT-2).
* Relative: Shaw et al. (2018, arXiv:1803.02155), clipped distances with embeddings added
  to keys and values; T5's bucketed scalar bias (Raffel et al., 2019, arXiv:1910.10683).
* Rotary: RoPE (Su et al., 2021, arXiv:2104.09864) in the half-split and the interleaved
  channel layouts, with an integer offset or per-sequence position ids, position
  interpolation (Chen et al., 2023, arXiv:2306.15595), and RoFormer's long-term decay bound.
* ALiBi: linear biases m_h·(j - i) (Press et al., 2021, arXiv:2108.12409).

Layout: ``(batch, heads, seq, head_dim)``; boolean masks, **True = may attend**. Biases
are additive *float* tensors added to the scores before the softmax, broadcastable to
``(batch, heads, q_len, k_len)``. When ``q_len != k_len`` (a KV cache) positions are
aligned bottom-right, like ``causal_mask``: query i sits at position ``k_len - q_len + i``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import check_positive_int, check_qkv, check_rank, check_tensor
from .dot_product import full_mask, repeat_kv, stable_softmax

Tensor = torch.Tensor


def _check_even(name: str, value: int) -> int:
    check_positive_int(name, value)
    if value % 2:
        raise ValueError(f"{name} must be even (channels are used in pairs), got {value}")
    return value


def _check_offset(offset: object) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int, got {offset!r} of type {type(offset).__name__}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    return offset


# --8<-- [start:frequencies]
def inverse_frequencies(dim: int, base: float = 10000.0, device=None) -> Tensor:
    """ω_i = base^(-2i/dim) for i = 0 .. dim/2 - 1, in float64: shape (dim/2,).

    The sinusoidal encoding and RoPE use the same geometric ladder of frequencies, from
    one radian per position (i = 0) down to about 1/base radians per position.
    """
    _check_even("dim", dim)
    if base <= 1:
        raise ValueError(f"base must be > 1, got {base}")
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)


def position_angles(seq_len: int, dim: int, *, base: float = 10000.0, offset: int = 0,
                    device=None) -> Tensor:
    """m·ω_i for positions m = offset .. offset + seq_len - 1: shape (seq_len, dim/2), float64.

    The sinusoidal encoding takes their sine and cosine; RoPE rotates by them. float64
    because positions times small frequencies lose digits in float32 at long offsets.
    ``offset`` > 0 continues a sequence (the tokens already in a KV cache).
    """
    check_positive_int("seq_len", seq_len)
    positions = torch.arange(_check_offset(offset), offset + seq_len, dtype=torch.float64,
                             device=device)
    return positions[:, None] * inverse_frequencies(dim, base, device)  # (seq_len, dim/2)
# --8<-- [end:frequencies]


# --8<-- [start:sinusoidal]
def sinusoidal_encoding(seq_len: int, d_model: int, *, base: float = 10000.0, offset: int = 0,
                        dtype=torch.float32, device=None) -> Tensor:
    """PE(pos, 2i) = sin(pos·ω_i), PE(pos, 2i+1) = cos(pos·ω_i): shape (seq_len, d_model).

    Positions run ``offset .. offset + seq_len - 1`` (``offset`` > 0 continues a sequence,
    e.g. when decoding with a KV cache).
    """
    _check_even("d_model", d_model)
    angles = position_angles(seq_len, d_model, base=base, offset=offset, device=device)
    encoding = torch.stack([angles.sin(), angles.cos()], dim=-1)  # (seq_len, d_model/2, 2)
    return encoding.flatten(-2).to(dtype)                         # sin, cos interleaved


def sinusoidal_shift_matrix(shift: int, d_model: int, *, base: float = 10000.0,
                            dtype=torch.float64) -> Tensor:
    """The (d_model, d_model) matrix M_k with PE(pos + k) = M_k PE(pos) for *every* pos.

    Here PE(pos) is a column; with rows as vectors (as in the book), PE(pos + k) = PE(pos) M_kᵀ,
    i.e. ``encoding @ M_k.T``.

    Each (sin, cos) pair is rotated by the angle k·ω_i (the angle-addition formulas), so M_k
    is block-diagonal with 2×2 rotations and does not depend on pos: the reason Vaswani et
    al. (Section 3.5) expected the model to "attend by relative positions".
    """
    angle = shift * inverse_frequencies(_check_even("d_model", d_model), base)   # (d_model/2,)
    cos, sin = angle.cos(), angle.sin()
    blocks = torch.stack([torch.stack([cos, sin], -1),  # sin(a+b) = sin a cos b + cos a sin b
                          torch.stack([-sin, cos], -1)], -2)  # cos(a+b) = cos a cos b - sin a sin b
    return torch.block_diag(*blocks).to(dtype)           # (d_model, d_model)
# --8<-- [end:sinusoidal]


# --8<-- [start:absolute_modules]
class SinusoidalPositionalEncoding(nn.Module):
    """Adds ``sinusoidal_encoding`` to x: (batch, seq, d_model). No parameters, any length."""

    def __init__(self, d_model: int, *, base: float = 10000.0):
        super().__init__()
        self.d_model, self.base = _check_even("d_model", d_model), base

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        check_rank("x", x, 3, "(batch, seq, d_model)")
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x has {x.shape[-1]} features, expected d_model={self.d_model}")
        return x + sinusoidal_encoding(x.shape[1], self.d_model, base=self.base, offset=offset,
                                       dtype=x.dtype, device=x.device)


class LearnedPositionalEmbedding(nn.Module):
    """Adds a learned vector per position (a (max_len, d_model) table) to x: (batch, seq, d_model).

    Unlike the sinusoidal encoding it has nothing to say about positions >= max_len,
    which is why it raises instead of extrapolating.
    """

    def __init__(self, max_len: int, d_model: int, *, device=None, dtype=None):
        super().__init__()
        check_positive_int("max_len", max_len)
        check_positive_int("d_model", d_model)
        self.table = nn.Embedding(max_len, d_model, device=device, dtype=dtype)
        nn.init.normal_(self.table.weight, std=0.02)  # small, as in GPT-2: tokens dominate at first

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        check_rank("x", x, 3, "(batch, seq, d_model)")
        max_len, d_model = self.table.weight.shape
        if x.shape[-1] != d_model:
            raise ValueError(f"x has {x.shape[-1]} features, expected d_model={d_model}")
        end = _check_offset(offset) + x.shape[1]
        if end > max_len:
            raise ValueError(f"positions up to {end - 1} requested (offset={offset}, "
                             f"seq={x.shape[1]}), but the table only has max_len={max_len} rows")
        return x + self.table.weight[offset:end]
# --8<-- [end:absolute_modules]


# --8<-- [start:bias_attention]
def attention_with_bias(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(Q Kᵀ·scale + bias) V with an additive float ``bias``. Returns the output
    (batch, heads, q_len, d_v), or (output, weights) with ``return_weights=True``.

    q: (batch, heads, q_len, d); k, v: (batch, kv_heads, k_len, d); bias: float, broadcastable
    to (batch, heads, q_len, k_len) (e.g. ``alibi_bias(...)`` or ``T5RelativePositionBias``);
    mask: boolean, True = may attend; causal: bottom-right aligned like ``causal_mask``.
    scale defaults to 1/√d (T5 uses ``scale=1.0``).
    """
    num_heads, _ = check_qkv(q, k, v)
    k, v = repeat_kv(k, num_heads), repeat_kv(v, num_heads)
    target = (q.shape[0], num_heads, q.shape[2], k.shape[2])
    mask = full_mask(q, k, mask, causal)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale

    scores = (q @ k.transpose(-2, -1)) * scale  # (batch, heads, q_len, k_len)
    if bias is not None:
        scores = scores + _check_bias(bias, target)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = stable_softmax(scores, dim=-1)
    out = weights @ v
    return (out, weights) if return_weights else out
# --8<-- [end:bias_attention]


def _check_bias(bias: Tensor, target: tuple[int, ...]) -> Tensor:
    check_tensor("bias", bias)
    if not bias.is_floating_point():
        raise TypeError(f"bias must be a float tensor added to the scores, got dtype {bias.dtype}; "
                        f"a boolean mask goes in `mask` instead")
    try:
        fits = torch.broadcast_shapes(tuple(bias.shape), target) == torch.Size(target)
    except RuntimeError:
        fits = False
    if not fits:  # it must broadcast *to* the scores, never enlarge them
        raise ValueError(f"bias has shape {tuple(bias.shape)}, which does not broadcast to "
                         f"(batch, heads, q_len, k_len) = {target}")
    return bias


# --8<-- [start:relative_positions]
def relative_positions(q_len: int, k_len: int | None = None, device=None) -> Tensor:
    """(q_len, k_len) long tensor of j - i: how far key j is from query i (negative = past).

    Bottom-right aligned like ``causal_mask``: query i is position ``k_len - q_len + i``.
    Every diagonal is constant, so anything computed from it is a Toeplitz matrix.
    """
    check_positive_int("q_len", q_len)
    k_len = q_len if k_len is None else check_positive_int("k_len", k_len)
    query_positions = torch.arange(k_len - q_len, k_len, device=device)
    key_positions = torch.arange(k_len, device=device)
    return key_positions[None, :] - query_positions[:, None]
# --8<-- [end:relative_positions]


# --8<-- [start:shaw]
def shaw_relative_embeddings(table: Tensor, q_len: int, k_len: int) -> Tensor:
    """a_ij = w_{clip(j - i, -K, K)}: gather a (2K + 1, d) table into (q_len, k_len, d).

    Row K of the table is distance 0; every distance beyond ±K shares the last row
    (Shaw et al., Section 3.2, Eqs. 5-7).
    """
    check_rank("table", table, 2, "(2 * max_distance + 1, head_dim)")
    if table.shape[0] % 2 == 0:
        raise ValueError(f"table must have 2 * max_distance + 1 rows (an odd number), "
                         f"got shape {tuple(table.shape)}")
    max_distance = table.shape[0] // 2
    clipped = relative_positions(q_len, k_len, table.device).clamp(-max_distance, max_distance)
    return table[clipped + max_distance]  # row K is distance 0: (q_len, k_len, head_dim)


def shaw_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel_key_table: Tensor | None,
    rel_value_table: Tensor | None,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Self-attention with relative position representations. Returns the output
    (batch, heads, q_len, d), or (output, weights) with ``return_weights=True``.

    e_ij = q_i·(k_j + a^K_ij)·scale,  z_i = Σ_j α_ij (v_j + a^V_ij)   (Shaw Eqs. 3-4).
    q: (batch, heads, q_len, d); k, v: (batch, kv_heads, k_len, d); tables: (2K + 1, d),
    shared by all heads as in the paper, or None to leave that term out. mask: boolean,
    True = may attend. The relative terms are einsums over (q_len, k_len, d), never a
    Python loop over positions.
    """
    num_heads, _ = check_qkv(q, k, v)
    k, v = repeat_kv(k, num_heads), repeat_kv(v, num_heads)
    q_len, k_len = q.shape[2], k.shape[2]
    mask = full_mask(q, k, mask, causal)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale

    scores = q @ k.transpose(-2, -1)                                  # (batch, heads, q_len, k_len)
    if rel_key_table is not None:
        a_key = shaw_relative_embeddings(rel_key_table, q_len, k_len)  # (q_len, k_len, d)
        scores = scores + torch.einsum("bhid,ijd->bhij", q, a_key)    # q_i · a^K_ij
    scores = scores * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = stable_softmax(scores, dim=-1)
    out = weights @ v                                                 # (batch, heads, q_len, d)
    if rel_value_table is not None:
        a_value = shaw_relative_embeddings(rel_value_table, q_len, k_len)
        out = out + torch.einsum("bhij,ijd->bhid", weights, a_value)  # Σ_j α_ij a^V_ij
    return (out, weights) if return_weights else out
# --8<-- [end:shaw]


class ShawRelativePosition(nn.Module):
    """Holds Shaw's two tables w^K, w^V of shape (2 * max_distance + 1, head_dim).

    ``forward(q, k, v, mask=None, *, causal=False, return_weights=False)`` runs
    ``shaw_attention`` and returns its output (or (output, weights)). ``values=False`` drops a^V (Shaw et al., Table 3, found it unneeded
    for translation).
    """

    def __init__(self, head_dim: int, max_distance: int, *, values: bool = True,
                 device=None, dtype=None):
        super().__init__()
        check_positive_int("head_dim", head_dim)
        check_positive_int("max_distance", max_distance)
        shape, factory = (2 * max_distance + 1, head_dim), {"device": device, "dtype": dtype}
        self.rel_key_table = nn.Parameter(torch.randn(shape, **factory) * head_dim**-0.5)
        self.rel_value_table = (nn.Parameter(torch.randn(shape, **factory) * head_dim**-0.5)
                                if values else None)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, *,
                causal: bool = False, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return shaw_attention(q, k, v, self.rel_key_table, self.rel_value_table, mask,
                              causal=causal, return_weights=return_weights)


# --8<-- [start:t5_bucket]
def t5_relative_position_bucket(relative_position: Tensor, *, bidirectional: bool = True,
                                num_buckets: int = 32, max_distance: int = 128) -> Tensor:
    """Map j - i to one of ``num_buckets`` buckets (T5; Raffel et al., Section 2.1).

    Bidirectional: half the buckets for keys before the query, half for keys after.
    Causal: all of them for the past (future keys fall in bucket 0, and the causal mask
    hides them anyway). Within a direction with n buckets, distances below n/2 get one
    bucket each; larger distances share the other n/2 buckets on a log scale, truncated to
    an integer and clamped to the last bucket. ``max_distance`` is where the log formula
    would reach one past the last bucket, so the last bucket starts *before* it: with 32
    buckets and max_distance 128 it holds every distance >= 91 (bidirectional) or >= 113
    (causal).
    """
    check_tensor("relative_position", relative_position)
    check_positive_int("num_buckets", num_buckets)
    check_positive_int("max_distance", max_distance)
    per_direction = num_buckets // 2 if bidirectional else num_buckets
    max_exact = per_direction // 2
    if max_exact < 1 or max_distance <= max_exact:
        raise ValueError(f"need num_buckets >= {4 if bidirectional else 2} and max_distance > "
                         f"{max_exact}, got num_buckets={num_buckets}, max_distance={max_distance}")
    if bidirectional:
        bucket = (relative_position > 0).long() * per_direction  # keys after the query: upper half
        distance = relative_position.abs()
    else:
        bucket = torch.zeros_like(relative_position, dtype=torch.long)
        distance = (-relative_position).clamp(min=0)             # how far back the key is
    # Log-spaced buckets. float32 and truncation as in the reference code, so that the
    # boundaries match published checkpoints exactly.
    ratio = distance.clamp(min=max_exact).float() / max_exact
    log_bucket = max_exact + (torch.log(ratio) / math.log(max_distance / max_exact)
                              * (per_direction - max_exact)).long()
    log_bucket = log_bucket.clamp(max=per_direction - 1)
    return bucket + torch.where(distance < max_exact, distance, log_bucket)
# --8<-- [end:t5_bucket]


# --8<-- [start:t5_bias]
class T5RelativePositionBias(nn.Module):
    """A learned scalar per (head, bucket); ``forward(q_len, k_len)`` gives the bias
    (1, heads, q_len, k_len) to pass to ``attention_with_bias`` (with ``scale=1.0`` as in T5).

    One instance is shared by all layers of a stack, as in T5. The table starts at zero,
    so an untrained model attends as if it had no positions, and learns them.
    """

    def __init__(self, num_heads: int, *, num_buckets: int = 32, max_distance: int = 128,
                 bidirectional: bool = True, device=None, dtype=None):
        super().__init__()
        check_positive_int("num_heads", num_heads)
        self.buckets = {"bidirectional": bidirectional, "num_buckets": num_buckets,
                        "max_distance": max_distance}
        t5_relative_position_bucket(torch.zeros(1, dtype=torch.long), **self.buckets)  # check early
        self.table = nn.Embedding(num_buckets, num_heads, device=device, dtype=dtype)
        nn.init.zeros_(self.table.weight)

    def forward(self, q_len: int, k_len: int | None = None) -> Tensor:
        relative = relative_positions(q_len, k_len, self.table.weight.device)  # (q_len, k_len)
        buckets = t5_relative_position_bucket(relative, **self.buckets)          # (q_len, k_len)
        return self.table(buckets).permute(2, 0, 1)[None]  # (q, k, heads) -> (1, heads, q, k)
# --8<-- [end:t5_bias]


def _check_rope_input(x: Tensor, angles: Tensor) -> None:
    check_tensor("x", x)
    if x.dim() < 2:
        raise ValueError(f"x must be (..., seq, head_dim), got shape {tuple(x.shape)}")
    _check_even("head_dim", x.shape[-1])
    expected = (x.shape[-2], x.shape[-1] // 2)
    if angles.dim() < 2 or tuple(angles.shape[-2:]) != expected:
        raise ValueError(f"angles must have shape (seq, head_dim/2) = {expected}, or (..., *that) "
                         f"with leading axes broadcastable to x's, got {tuple(angles.shape)}")


# --8<-- [start:rope_half_split]
def rotate_half(x: Tensor) -> Tensor:
    """(x_1, x_2) -> (-x_2, x_1) on the two halves of the last axis."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope_half_split(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate channel pairs (i, i + d/2) by angles[m, i]: the layout of HF Llama/GPT-NeoX.

    x: (..., seq, head_dim); angles: (seq, head_dim/2) from ``position_angles``, or
    (..., seq, head_dim/2) from ``rope_angles`` (one row of positions per sequence).
    """
    _check_rope_input(x, angles)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)  # [cos θ, cos θ]
    return x * cos + rotate_half(x) * sin
# --8<-- [end:rope_half_split]


# --8<-- [start:rope_interleaved]
def apply_rope_interleaved(x: Tensor, angles: Tensor) -> Tensor:
    """Rotate channel pairs (2i, 2i + 1) by angles[m, i]: the layout of Meta's Llama code.

    Meta writes it as complex multiplication, (x_2i + i·x_2i+1)·e^{i m θ_i}; this is the
    same product in real arithmetic.
    """
    _check_rope_input(x, angles)
    pairs = x.unflatten(-1, (-1, 2))             # (..., seq, head_dim/2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return rotated.flatten(-2)                   # (..., seq, head_dim)


def rope_layout_permutation(head_dim: int) -> Tensor:
    """Channel order that maps the interleaved layout onto the half-split one.

    ``x_half_split = x_interleaved[..., perm]`` with perm = [0, 2, 4, ..., 1, 3, 5, ...]: the
    pair (2i, 2i + 1) becomes (i, i + d/2). Then
    ``apply_rope_half_split(x[..., perm], a) == apply_rope_interleaved(x, a)[..., perm]``.
    Porting weights between layouts means permuting each head's query and key channels this
    way: the columns of W_Q and W_K in q = x W_Q (rows of ``nn.Linear.weight``, and the bias).
    Without it the scores stay relative, but channels that were never a trained pair are
    rotated into each other, at the wrong frequencies.
    """
    _check_even("head_dim", head_dim)
    return torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
# --8<-- [end:rope_interleaved]


# --8<-- [start:position_ids]
def rope_angles(position_ids: Tensor, dim: int, *, base: float = 10000.0,
                scale: float = 1.0) -> Tensor:
    """(scale·p)·ω_i for every position p in ``position_ids`` (..., seq): (..., seq, dim/2), float64.

    ``position_angles`` is the special case ``position_ids = arange(offset, offset + seq)``.
    ``scale`` < 1 squeezes positions: position interpolation (Chen et al., 2023)
    uses scale = L / L' to fit L' positions into the L the model was trained on.
    """
    check_tensor("position_ids", position_ids)
    if position_ids.is_floating_point() or position_ids.is_complex():
        raise TypeError(f"position_ids must be an integer tensor, got dtype {position_ids.dtype}")
    if position_ids.numel() and position_ids.min() < 0:
        raise ValueError(f"position_ids must be >= 0, got minimum {position_ids.min().item()}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    frequencies = inverse_frequencies(dim, base, position_ids.device)        # (dim/2,)
    return (position_ids.to(torch.float64) * scale)[..., None] * frequencies


def position_ids_from_padding(keep: Tensor) -> Tensor:
    """Positions that count only real tokens: (batch, seq) boolean, True = real -> (batch, seq) long.

    A left-padded row [pad, pad, a, b, c] gets [0, 0, 0, 1, 2]: its real tokens sit at the
    positions they would have alone (what Hugging Face passes as ``position_ids``). Padding
    slots get 0; the attention mask hides them anyway.
    """
    check_rank("keep", keep, 2, "(batch, seq)")
    if keep.dtype != torch.bool:
        raise TypeError(f"keep must be a boolean mask (True = real token), got dtype {keep.dtype}")
    return (keep.long().cumsum(dim=-1) - 1).clamp(min=0)
# --8<-- [end:position_ids]


# --8<-- [start:rope_decay]
def rope_decay_bound(head_dim: int, distances: Tensor, *, base: float = 10000.0) -> Tensor:
    """RoFormer's long-term decay curve: (1/(d/2))·Σ_{j=1}^{d/2} |S_j| at each relative distance.

    S_j = Σ_{i<j} e^{i·r·θ_i} is the partial sum of the rotations at distance r (Su et al.,
    long-term decay, Fig. 2). By Abel summation |Σ_i h_i e^{i r θ_i}| <= max_i |h_{i+1} - h_i| · Σ_j |S_j|
    for any complex h with h_{d/2} = 0, so the curve bounds how large a RoPE score can be at
    distance r, relative to how fast the channel products h vary. distances: any shape, float64 out.
    """
    frequencies = inverse_frequencies(_check_even("head_dim", head_dim), base)  # (d/2,)
    check_tensor("distances", distances)
    phase = distances.to(torch.float64)[..., None] * frequencies               # (..., d/2)
    partial_sums = torch.polar(torch.ones_like(phase), phase).cumsum(dim=-1)   # S_1 .. S_{d/2}
    return partial_sums.abs().mean(dim=-1)
# --8<-- [end:rope_decay]


ROPE_LAYOUTS = {"half_split": apply_rope_half_split, "interleaved": apply_rope_interleaved}


# --8<-- [start:rope]
def apply_rope(x: Tensor, *, layout: str = "half_split", base: float = 10000.0,
               offset: int = 0, position_ids: Tensor | None = None,
               position_scale: float = 1.0) -> Tensor:
    """RoPE on queries or keys x: (batch, heads, seq, head_dim).

    Positions are offset .. offset+seq-1 for every sequence, or ``position_ids`` (seq,) or
    (batch, seq) when sequences differ (left padding: see ``position_ids_from_padding``).
    ``position_scale`` < 1 is position interpolation (Chen et al., 2023): position m is
    rotated as if it were m·scale. Apply RoPE to q and k (never to v) before the scores:
    then, with rows as vectors, q_m k_nᵀ depends on the positions m and n only through m - n
    (Su et al., Eq. 16).
    """
    check_rank("x", x, 4, "(batch, heads, seq, head_dim)")
    if layout not in ROPE_LAYOUTS:
        raise ValueError(f"layout must be one of {tuple(ROPE_LAYOUTS)}, got {layout!r}")
    batch, _, seq, head_dim = x.shape
    _check_even("head_dim", head_dim)
    if position_ids is None:
        position_ids = torch.arange(_check_offset(offset), offset + seq, device=x.device)
    elif offset != 0:
        raise ValueError(f"give either offset or position_ids, not both (offset={offset})")
    check_tensor("position_ids", position_ids)
    if position_ids.shape not in ((seq,), (batch, seq)):
        raise ValueError(f"position_ids must have shape (seq,) = ({seq},) or (batch, seq) = "
                         f"({batch}, {seq}), got {tuple(position_ids.shape)}")
    angles = rope_angles(position_ids, head_dim, base=base, scale=position_scale)
    if angles.dim() == 3:
        angles = angles[:, None]  # (batch, 1, seq, head_dim/2): the same for every head
    return ROPE_LAYOUTS[layout](x, angles)
# --8<-- [end:rope]


# --8<-- [start:alibi]
def alibi_slopes(num_heads: int, *, dtype=torch.float32, device=None) -> Tensor:
    """The head slopes m_h of ALiBi, shape (num_heads,).

    For n a power of two: the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8) (for 8
    heads 1/2 .. 1/256). Otherwise, the rule of the paper's reference code: take the slopes
    of the closest power of two p below n, then the missing n - p from the sequence for 2p,
    every other one starting with the first. The first added slope, 2^(-4/p), is larger than
    every slope already taken; the others fall between them.
    """
    check_positive_int("num_heads", num_heads)
    closest = 1 << (num_heads.bit_length() - 1)                    # the largest power of two <= n
    exponents = [-8 * (h + 1) / closest for h in range(closest)]  # 2^(-8/p), 2^(-16/p), ...
    # The sequence for 2p has exponents -4(h + 1)/p; every other one, from the first: -4(2h + 1)/p.
    exponents += [-4 * (2 * h + 1) / closest for h in range(num_heads - closest)]
    return torch.tensor([2.0**e for e in exponents], dtype=dtype, device=device)


def alibi_bias(num_heads: int, q_len: int, k_len: int | None = None, *, dtype=torch.float32,
               device=None) -> Tensor:
    """m_h·(j - i) for every head, query i and key j: shape (num_heads, q_len, k_len).

    Bottom-right aligned like ``causal_mask`` (query i is position k_len - q_len + i). The
    past gets a penalty growing linearly with distance; keys after the query get a positive
    bias, so ALiBi is meant to be used with ``causal=True``.
    """
    slopes = alibi_slopes(num_heads, dtype=torch.float64, device=device)
    distance = relative_positions(q_len, k_len, device).to(torch.float64)  # (q_len, k_len): j - i
    return (slopes[:, None, None] * distance).to(dtype)                    # (heads, q_len, k_len)
# --8<-- [end:alibi]
