"""Multi-head latent attention (MLA), DeepSeek-V2 (arXiv:2405.04434, §2.1.2-2.1.3).

Keys and values are rebuilt from one small latent vector per token (the paper's column
convention: h_t is the layer's input, x_t on the book's pages, which use rows),

    c_t = W^{DKV} h_t                 (d_c)          the only content that is cached
    k^C_{t,i} = W^{UK}_i c_t,   v^C_{t,i} = W^{UV}_i c_t        per head i (d_h)

and position enters through a separate, decoupled part, so that it does not sit
between the query and W^{UK}:

    k^R_t = RoPE(W^{KR} h_t)          (d_h^R)  one key shared by all heads, also cached
    q^R_{t,i} = RoPE(W^{QR}_i c^Q_t)  (d_h^R)  per head, with c^Q_t = W^{DQ} h_t
    q^C_{t,i} = W^{UQ}_i c^Q_t        (d_h)    (c^Q_t = h_t without query compression)
    score_{t,j,i} = ([q^C_{t,i}; q^R_{t,i}] · [k^C_{j,i}; k^R_j]) / √(d_h + d_h^R)
    o_{t,i} = Σ_j softmax_j(score) v^C_{j,i},    u_t = W^O [o_{t,1}; …; o_{t,n_h}]

Two equivalent ways to compute it, both decoding incrementally from a cache of
``(latent (batch, 1, seq, d_c), rope_key (batch, 1, seq, d_h^R))``:

* naive: materialise every head's k^C and v^C from the cached latents;
* absorbed: q^C·(W^{UK}c) = (W^{UK}ᵀq^C)·c, so W^{UK} folds into the query projection,
  and W^O(W^{UV} Σ p c) = (W^O W^{UV}) Σ p c, so W^{UV} folds into the output. Attention
  then runs directly on the latents: multi-query attention with one kv head of size
  d_c + d_h^R whose values are the latents themselves.

Tensors use the book's layout ``(batch, heads, seq, dim)``; attention is causal
(bottom-right aligned mask, True = may attend). DeepSeek-V2 also normalises c_t with an
RMSNorm; it is left out here because it changes none of the identities below. RoPE is
the half-split layout from ``positional.py``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ._checks import check_positive_int, check_rank
from .dot_product import sdpa
from .kv_cache import KVCache
from .multihead import merge_heads, split_heads
from .positional import apply_rope, apply_rope_half_split, inverse_frequencies

Tensor = torch.Tensor


class LatentCache(KVCache):
    """MLA's cache: per layer, the latents c_t (batch, 1, seq, d_c) and the shared RoPE
    keys k^R_t (batch, 1, seq, d_h^R). ``update(layer, latent, rope_key)`` appends and
    returns the full tensors; ``nbytes`` counts (d_c + d_h^R) elements per token and layer."""

    entry_names = ("latent", "rope_key")


def _per_head(weight: Tensor, num_heads: int) -> Tensor:
    """An up-projection's Linear weight (heads * d_h, d_c) -> (heads, d_h, d_c)."""
    return rearrange(weight, "(h d) c -> h d c", h=num_heads)


# --8<-- [start:naive]
def latent_attention_naive(q_content: Tensor, q_rope: Tensor, latent: Tensor, rope_key: Tensor,
                           w_uk: Tensor, w_uv: Tensor, *, scale: float) -> Tensor:
    """MLA with per-head keys and values materialised from the latents.

    q_content (batch, heads, q_len, d_h), q_rope (batch, heads, q_len, d_R);
    latent (batch, 1, k_len, d_c), rope_key (batch, 1, k_len, d_R);
    w_uk, w_uv: (heads * d_h, d_c), the W^{UK} and W^{UV} Linear weights.
    Returns the per-head outputs (batch, heads, q_len, d_h); causal, bottom-right.
    """
    _check_latent_inputs(latent, rope_key)
    num_heads = q_content.shape[1]
    w_uk, w_uv = _per_head(w_uk, num_heads), _per_head(w_uv, num_heads)  # (h, d_h, d_c)
    k_content = torch.einsum("btc,hdc->bhtd", latent[:, 0], w_uk)  # (b, h, k_len, d_h) W^{UK}_i c
    values = torch.einsum("btc,hdc->bhtd", latent[:, 0], w_uv)     # (b, h, k_len, d_h) W^{UV}_i c
    rope_keys = rope_key.expand(-1, num_heads, -1, -1)             # one k^R_t for every head
    keys = torch.cat([k_content, rope_keys], dim=-1)               # (b, h, k_len, d_h + d_R)
    queries = torch.cat([q_content, q_rope], dim=-1)               # (b, h, q_len, d_h + d_R)
    return sdpa(queries, keys, values, causal=True, scale=scale)
# --8<-- [end:naive]


# --8<-- [start:absorbed]
def absorb_weights(w_uq: Tensor, w_uk: Tensor, w_uv: Tensor, w_o: Tensor,
                   num_heads: int) -> tuple[Tensor, Tensor]:
    """Fold W^{UK} into the query and W^{UV} into the output projection.

    w_uq: (heads * d_h, d_q) maps c^Q_t (or h_t) to q^C; w_uk, w_uv: (heads * d_h, d_c);
    w_o: (d_model, heads * d_h). Returns the latent query projection
    (heads * d_c, d_q), head i holding W^{UK}_iᵀ W^{UQ}_i, and the latent output
    projection (d_model, heads * d_c), head i holding W^O_i W^{UV}_i.
    """
    w_uq_heads = rearrange(w_uq, "(h d) q -> h d q", h=num_heads)
    w_q_latent = torch.einsum("hdc,hdq->hcq", _per_head(w_uk, num_heads), w_uq_heads)
    w_o_heads = rearrange(w_o, "m (h d) -> m h d", h=num_heads)
    w_o_latent = torch.einsum("mhd,hdc->mhc", w_o_heads, _per_head(w_uv, num_heads))
    return rearrange(w_q_latent, "h c q -> (h c) q"), rearrange(w_o_latent, "m h c -> m (h c)")


def latent_attention_absorbed(q_latent: Tensor, q_rope: Tensor, latent: Tensor, rope_key: Tensor,
                              *, scale: float) -> Tensor:
    """MLA computed on the latents: multi-query attention with one shared kv head.

    q_latent (batch, heads, q_len, d_c) = W^{UK}_iᵀ q^C; q_rope (batch, heads, q_len, d_R);
    latent (batch, 1, k_len, d_c); rope_key (batch, 1, k_len, d_R). Returns each head's
    weighted sum of latents (batch, heads, q_len, d_c), still to be mapped by W^O W^{UV}.
    """
    _check_latent_inputs(latent, rope_key)
    queries = torch.cat([q_latent, q_rope], dim=-1)  # (b, h, q_len, d_c + d_R)
    keys = torch.cat([latent, rope_key], dim=-1)      # (b, 1, k_len, d_c + d_R): one kv head
    return sdpa(queries, keys, latent, causal=True, scale=scale)  # the values are the latents
# --8<-- [end:absorbed]


def _check_latent_inputs(latent: Tensor, rope_key: Tensor) -> None:
    check_rank("latent", latent, 4, "(batch, 1, seq, d_c)")
    check_rank("rope_key", rope_key, 4, "(batch, 1, seq, d_rope)")
    if latent.shape[1] != 1 or rope_key.shape[1] != 1:
        raise ValueError(f"latent and rope_key have one shared head, got {tuple(latent.shape)} "
                         f"and {tuple(rope_key.shape)}")


# --8<-- [start:module]
class MultiHeadLatentAttention(nn.Module):
    """DeepSeek-V2's MLA layer: causal self-attention that caches only (c_t, k^R_t).

    forward(x, cache=None, layer=0, absorb=False): x (batch, new, d_model), the whole
    sequence without a cache or only the new tokens with one. ``absorb`` picks the
    computation; both give the same output. ``d_q_latent`` turns on the query's own
    low-rank compression c^Q_t = W^{DQ} h_t (None: queries come from h_t directly).
    """

    def __init__(self, d_model: int, num_heads: int, head_dim: int, d_latent: int, d_rope: int,
                 d_q_latent: int | None = None, *, rope_base: float = 10000.0,
                 device=None, dtype=None):
        super().__init__()
        for name, value in (("d_model", d_model), ("num_heads", num_heads), ("head_dim", head_dim),
                            ("d_latent", d_latent), ("d_rope", d_rope)):
            check_positive_int(name, value)
        if d_rope % 2:
            raise ValueError(f"d_rope={d_rope} must be even: RoPE rotates pairs of channels")
        d_q_in = d_model if d_q_latent is None else check_positive_int("d_q_latent", d_q_latent)
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, head_dim
        self.d_latent, self.d_rope = d_latent, d_rope
        self.rope_base = rope_base
        self.scale = 1.0 / math.sqrt(head_dim + d_rope)  # the score uses both parts of q and k

        def linear(n_in: int, n_out: int) -> nn.Linear:
            return nn.Linear(n_in, n_out, bias=False, device=device, dtype=dtype)

        self.kv_down = linear(d_model, d_latent)            # W^{DKV}: h_t -> c_t
        self.k_up = linear(d_latent, num_heads * head_dim)  # W^{UK}
        self.v_up = linear(d_latent, num_heads * head_dim)  # W^{UV}
        self.k_rope = linear(d_model, d_rope)               # W^{KR}: one RoPE key for all heads
        self.q_down = None if d_q_latent is None else linear(d_model, d_q_latent)  # W^{DQ}
        self.q_up = linear(d_q_in, num_heads * head_dim)    # W^{UQ}
        self.q_rope = linear(d_q_in, num_heads * d_rope)    # W^{QR}
        self.out_proj = linear(num_heads * head_dim, d_model)  # W^O

    def forward(self, x: Tensor, cache: LatentCache | None = None, layer: int = 0,
                *, absorb: bool = False) -> Tensor:
        check_rank("x", x, 3, "(batch, seq, d_model)")
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x has {x.shape[-1]} features, expected d_model={self.d_model}")
        past = 0 if cache is None else cache.seq_len(layer)  # new tokens sit at past, past + 1, ...
        q_in = x if self.q_down is None else self.q_down(x)                       # c^Q_t
        q_rope = self.rope(split_heads(self.q_rope(q_in), self.num_heads), past)  # (b, h, new, d_R)
        latent = self.kv_down(x)[:, None]                                        # (b, 1, new, d_c)
        rope_key = self.rope(self.k_rope(x)[:, None], past)                       # (b, 1, new, d_R)
        if cache is not None:
            latent, rope_key = cache.update(layer, latent, rope_key)  # (b, 1, past + new, ·)
        if absorb:
            w_q_latent, w_o_latent = self.absorbed_weights()
            q_latent = split_heads(F.linear(q_in, w_q_latent), self.num_heads)   # (b, h, new, d_c)
            out = latent_attention_absorbed(q_latent, q_rope, latent, rope_key, scale=self.scale)
            return F.linear(merge_heads(out), w_o_latent)
        q_content = split_heads(self.q_up(q_in), self.num_heads)                 # (b, h, new, d_h)
        out = latent_attention_naive(q_content, q_rope, latent, rope_key,
                                     self.k_up.weight, self.v_up.weight, scale=self.scale)
        return self.out_proj(merge_heads(out))
# --8<-- [end:module]

    def rope(self, x: Tensor, offset: int) -> Tensor:
        """Half-split RoPE on x (batch, heads, seq, d_rope) at positions offset, offset + 1, ..."""
        return apply_rope(x, layout="half_split", base=self.rope_base, offset=offset)

    def absorbed_weights(self) -> tuple[Tensor, Tensor]:
        """(W^{UK}ᵀW^{UQ} per head, W^O W^{UV} per head); a server computes them once."""
        return absorb_weights(self.q_up.weight, self.k_up.weight, self.v_up.weight,
                              self.out_proj.weight, self.num_heads)

    def new_cache(self, num_layers: int = 1) -> LatentCache:
        return LatentCache(num_layers)


# --8<-- [start:rope_breaks_absorption]
def rope_on_compressed_keys(mla: MultiHeadLatentAttention, x: Tensor,
                            positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The design MLA avoids: rotate the keys rebuilt from the latent, k^C_j = R_j W^{UK} c_j
    (and the queries R_t q^C_t), with no decoupled part. Returns (naive, absorbed) outputs.

    The naive form is still correct attention. Absorption fails: the score
    q^Cᵀ R_tᵀ R_j W^{UK} c_j = q^Cᵀ R_{j-t} W^{UK} c_j has a rotation that depends on
    both positions between the query and W^{UK}, so no fixed matrix can fold W^{UK}
    into the query. The best fixed attempt (fold W^{UK} into the rotated query) drops
    R_j, and the two outputs differ as soon as a key sits at a position other than 0.
    ``positions`` (seq,) defaults to 0, 1, ...; all zeros (no rotation) makes them agree.
    """
    check_rank("x", x, 3, "(batch, seq, d_model)")
    if positions is None:
        positions = torch.arange(x.shape[1], device=x.device)
    frequencies = inverse_frequencies(mla.head_dim, mla.rope_base, x.device)      # (d_h/2,)
    angles = positions.to(torch.float64)[:, None] * frequencies                   # (seq, d_h/2)
    q_in = x if mla.q_down is None else mla.q_down(x)
    w_uk = _per_head(mla.k_up.weight, mla.num_heads)                              # (h, d_h, d_c)
    w_uv = _per_head(mla.v_up.weight, mla.num_heads)
    latent = mla.kv_down(x)                                                      # (b, seq, d_c)
    q_content = split_heads(mla.q_up(q_in), mla.num_heads)                        # (b, h, seq, d_h)
    q_content = apply_rope_half_split(q_content, angles)                          # R_t q^C_t
    k_content = torch.einsum("btc,hdc->bhtd", latent, w_uk)                       # W^{UK} c_j
    k_content = apply_rope_half_split(k_content, angles)                          # R_j W^{UK} c_j
    values = torch.einsum("btc,hdc->bhtd", latent, w_uv)
    scale = 1.0 / math.sqrt(mla.head_dim)
    naive = mla.out_proj(merge_heads(sdpa(q_content, k_content, values, causal=True, scale=scale)))
    q_latent = torch.einsum("bhsd,hdc->bhsc", q_content, w_uk)  # W^{UK}ᵀ R_t q^C_t: no R_j
    mixed = sdpa(q_latent, latent[:, None], latent[:, None], causal=True, scale=scale)
    absorbed = F.linear(merge_heads(mixed), mla.absorbed_weights()[1])
    return naive, absorbed
# --8<-- [end:rope_breaks_absorption]
