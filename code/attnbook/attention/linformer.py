"""Linformer (Wang et al., 2020, arXiv:2006.04768): attention through a rank-k bottleneck.

The n keys and n values are compressed along the *sequence* axis by learned matrices
E, F ∈ ℝ^{k×n} before attention:

    head = softmax( Q (E K)ᵀ / √d ) (F V),      Q: n×d,  E K: k×d,  F V: k×d,

so the score matrix is n × k instead of n × n: time and memory linear in n for fixed k.
The paper motivates it by the low rank of trained attention matrices (its Fig. 1) and
a Johnson-Lindenstrauss argument with random projections.

E and F mix all positions, so a causal mask cannot be expressed: the Linformer is an
encoder mechanism (the paper's setting). A padded key is zeroed before the projection,
so it contributes nothing to E K or F V. E and F are built for a maximum length
``seq_len``; a shorter sequence uses their first n columns, which is exactly what
zero-padding it to ``seq_len`` would do.

Shapes follow the book: q is (batch, heads, n, head_dim); k, v are (batch, kv_heads, n,
head_dim); E and F are (k, seq_len) shared by all heads, or (kv_heads, k, seq_len) one
per head. ``key_padding_mask`` is boolean (batch, n), **True = real key**.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ._checks import check_divisible, check_positive_int, check_qkv, check_rank, check_tensor
from .dot_product import repeat_kv, scaled_dot_product_attention, stable_softmax
from .linear import _check_key_padding_mask
from .multihead import merge_heads, split_heads

Tensor = torch.Tensor
Sharing = Literal["none", "headwise", "kv", "layerwise"]


def _check_projection(name: str, proj: Tensor, kv_heads: int, seq: int) -> Tensor:
    """Check a (k, seq_len) or (kv_heads, k, seq_len) projection; return its first seq columns."""
    check_tensor(name, proj)
    if proj.dim() not in (2, 3):
        raise ValueError(
            f"{name} must be (k, seq_len) or (heads, k, seq_len), got shape {tuple(proj.shape)}")
    if proj.dim() == 3 and proj.shape[0] != kv_heads:
        raise ValueError(f"{name} has {proj.shape[0]} heads but k and v have {kv_heads} "
                         f"({name} shape {tuple(proj.shape)})")
    if proj.shape[-1] < seq:
        raise ValueError(f"the sequence has {seq} positions but {name} was built for seq_len="
                         f"{proj.shape[-1]} (shape {tuple(proj.shape)}); "
                         "build it for a longer seq_len")
    return proj[..., :seq]  # the first columns == zero-padding the sequence to seq_len


# --8<-- [start:project]
def project_sequence(x: Tensor, proj: Tensor) -> Tensor:
    """Compress the sequence axis: x (batch, heads, n, d) -> (batch, heads, k, d).

    proj is (k, n), shared by the heads, or (heads, k, n). Row r of the result is
    Σ_j proj[r, j] x_j, a learned mixture of all n positions.
    """
    if proj.dim() == 2:
        return torch.einsum("kn,bhnd->bhkd", proj, x)   # one E shared by every head
    return torch.einsum("hkn,bhnd->bhkd", proj, x)      # E_h for head h
# --8<-- [end:project]


# --8<-- [start:functional]
def linformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    e_proj: Tensor,
    f_proj: Tensor,
    *,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(Q(EK)ᵀ/√d)(FV). Returns the output, or ``(output, weights)`` with
    ``return_weights=True``.

    q: (batch, heads, n, d); k, v: (batch, kv_heads, n, d) and (batch, kv_heads, n, d_v);
    e_proj, f_proj: (k, seq_len) or (kv_heads, k, seq_len) with seq_len ≥ n (the first n
    columns are used). key_padding_mask: (batch, n), True = real key. The output is
    (batch, heads, n, d_v); the weights are (batch, heads, n, k): n × k, never n × n.
    """
    check_qkv(q, k, v)
    kv_heads, n = k.shape[1], k.shape[2]
    e_proj = _check_projection("e_proj", e_proj, kv_heads, n)
    f_proj = _check_projection("f_proj", f_proj, kv_heads, n)
    keep = _check_key_padding_mask(key_padding_mask, k.shape[0], n)
    if keep is not None:  # zero padded keys and values *before* they are mixed
        k, v = k * keep, v * keep
    k_proj = project_sequence(k, e_proj)   # E K: (batch, kv_heads, k, d)
    v_proj = project_sequence(v, f_proj)   # F V: (batch, kv_heads, k, d_v)
    return scaled_dot_product_attention(q, k_proj, v_proj, scale=scale, return_weights=return_weights)
# --8<-- [end:functional]


def make_linformer_projection(seq_len: int, k: int, num_heads: int | None = None, *,
                              generator: torch.Generator | None = None,
                              device=None, dtype=None) -> nn.Parameter:
    """A trainable (k, seq_len) projection, or (num_heads, k, seq_len), entries N(0, 1/k).

    1/k is the entry variance of a Johnson-Lindenstrauss random projection, the kind
    of E and F the paper's analysis uses. Pass one to several layers for layerwise sharing.
    """
    check_positive_int("seq_len", seq_len)
    check_positive_int("k", k)
    if num_heads is None:
        shape = (k, seq_len)
    else:
        shape = (check_positive_int("num_heads", num_heads), k, seq_len)
    draw_on = generator.device if generator is not None else device  # a generator draws on its device
    weight = torch.randn(shape, generator=generator, device=draw_on, dtype=dtype) / math.sqrt(k)
    return nn.Parameter(weight.to(device))


# --8<-- [start:module]
class LinformerSelfAttention(nn.Module):
    """Multi-head self-attention with Linformer's sequence projections E and F.

    sharing (the paper's "parameter sharing" options): ``"none"``, every head its own E_h
    and F_h; ``"headwise"``, one E and one F for all heads; ``"kv"``, one matrix for
    keys and values of all heads (E = F); ``"layerwise"``, the (k, seq_len) matrix
    ``shared_projection`` made by ``make_linformer_projection`` and passed to every
    layer that shares it. Inputs may be shorter than ``seq_len``, never longer.
    ``forward`` returns ``(output, weights or None)`` like ``MultiHeadAttention``.
    """

    def __init__(self, d_model: int, num_heads: int, seq_len: int, k: int, *,
                 sharing: Sharing = "none", shared_projection: nn.Parameter | None = None,
                 bias: bool = True, generator: torch.Generator | None = None,
                 device=None, dtype=None):
        super().__init__()
        for name, value in (("d_model", d_model), ("num_heads", num_heads),
                            ("seq_len", seq_len), ("k", k)):
            check_positive_int(name, value)
        check_divisible("d_model", d_model, "num_heads", num_heads)
        if sharing not in ("none", "headwise", "kv", "layerwise"):
            raise ValueError(
                f"sharing must be 'none', 'headwise', 'kv' or 'layerwise', got {sharing!r}")
        if (sharing == "layerwise") != (shared_projection is not None):
            raise ValueError("shared_projection must be given exactly when sharing='layerwise' "
                             f"(got sharing={sharing!r})")
        if shared_projection is not None and tuple(shared_projection.shape) != (k, seq_len):
            raise ValueError(f"shared_projection must have shape (k, seq_len) = {(k, seq_len)}, "
                             f"got {tuple(shared_projection.shape)}")
        self.d_model, self.num_heads, self.seq_len, self.k = d_model, num_heads, seq_len, k
        self.sharing = sharing
        factory = {"device": device, "dtype": dtype}
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias, **factory)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **factory)
        heads = num_heads if sharing == "none" else None  # per-head E_h, F_h only without sharing

        def new_projection() -> nn.Parameter:
            return make_linformer_projection(seq_len, k, heads, generator=generator, **factory)

        self.e_proj = shared_projection if sharing == "layerwise" else new_projection()
        self.f_proj = self.e_proj if sharing in ("kv", "layerwise") else new_projection()

    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """x: (batch, n, d_model) with n ≤ seq_len.

        Returns the output (batch, n, d_model) and, if ``need_weights``, the weights
        (batch, heads, n, k); otherwise None.
        """
        check_rank("x", x, 3, "(batch, seq, d_model)")
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x has {x.shape[-1]} features, expected d_model={self.d_model} "
                             f"(shape {tuple(x.shape)})")
        if x.shape[1] > self.seq_len:
            raise ValueError(f"the sequence has {x.shape[1]} tokens but this layer's E and F "
                             f"were built for seq_len={self.seq_len}; "
                             "make the layer with a larger seq_len")
        q, k, v = (split_heads(t, self.num_heads)         # each (batch, heads, n, head_dim)
                   for t in self.in_proj(x).chunk(3, dim=-1))
        out, weights = linformer_attention(q, k, v, self.e_proj, self.f_proj,
                                           key_padding_mask=key_padding_mask, return_weights=True)
        return self.out_proj(merge_heads(out)), (weights if need_weights else None)
# --8<-- [end:module]


# --------------------------------------------------------------------------------------
# Low-rank analysis (chapter 12): the matrix Linformer applies to V, and how far any
# rank-k matrix can be from an attention matrix (Eckart-Young).
# --------------------------------------------------------------------------------------


# --8<-- [start:effective]
def linformer_effective_matrix(q: Tensor, k: Tensor, e_proj: Tensor, f_proj: Tensor, *,
                               key_padding_mask: Tensor | None = None,
                               scale: float | None = None) -> Tensor:
    """The n × n matrix that Linformer applies to the values: softmax(Q(EK)ᵀ/√d) F.

    ``linformer_attention(q, k, v, E, F)`` equals ``linformer_effective_matrix(q, k, E, F) @ v``
    (with the same key_padding_mask, which zeroes padded columns), so this matrix can be
    compared with the exact attention matrix P. Its rank is at most k: it is an (n × k)
    matrix times a (k × n) one. Shapes as in ``linformer_attention``: q (batch, heads, n, d),
    k (batch, kv_heads, n, d); returns (batch, heads, n, n).
    """
    check_qkv(q, k, k)
    num_heads, kv_heads, n = q.shape[1], k.shape[1], k.shape[2]
    e_proj = _check_projection("e_proj", e_proj, kv_heads, n)
    f_proj = _check_projection("f_proj", f_proj, kv_heads, n)
    keep = _check_key_padding_mask(key_padding_mask, k.shape[0], n)
    if keep is not None:
        k = k * keep
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    k_proj = repeat_kv(project_sequence(k, e_proj), num_heads)      # E K: (batch, heads, k, d)
    weights = stable_softmax(q @ k_proj.transpose(-2, -1) * scale)  # P̄: (batch, heads, n, k)
    if f_proj.dim() == 3:                                           # F_h per kv head
        f_proj = repeat_kv(f_proj[None], num_heads)[0]              # (heads, k, n)
    mixed = weights @ f_proj                                        # P̄ F: (batch, heads, n, n)
    if keep is not None:  # F V sees v * keep: a padded value column contributes nothing
        mixed = mixed * keep.transpose(-2, -1)
    return mixed
# --8<-- [end:effective]


# --8<-- [start:spectrum]
def cumulative_singular_value_share(sigma: Tensor, *, squared: bool = False) -> Tensor:
    """c_r = (σ_1 + … + σ_r) / (σ_1 + … + σ_n) from singular values sigma (..., n), sorted
    in decreasing order as ``torch.linalg.svdvals`` returns them. With ``squared=True`` the
    shares of σ_i² instead: the fraction of ‖P‖_F² that the best rank-r matrix keeps (Eq. 8).
    Returns (..., n), non-decreasing, ending at 1 (all zeros stay zeros).
    """
    check_tensor("sigma", sigma)
    if sigma.dim() < 1:
        raise ValueError("sigma must hold at least one vector of singular values, got a scalar")
    if (sigma < 0).any():
        raise ValueError("sigma must be non-negative: singular values are never negative")
    if (sigma[..., 1:] > sigma[..., :-1]).any():
        raise ValueError("sigma must be sorted in decreasing order, as torch.linalg.svdvals returns it")
    terms = sigma.square() if squared else sigma
    total = terms.sum(-1, keepdim=True)
    return terms.cumsum(-1) / torch.where(total > 0, total, torch.ones_like(total))


def normalized_cumulative_singular_values(p: Tensor, *, squared: bool = False) -> Tensor:
    """c_r = (σ_1 + … + σ_r) / (σ_1 + … + σ_n) for each matrix in p (..., n_rows, n_cols).

    The y-axis of Linformer's Fig. 1 (Wang et al., 2020) as we read it: the paper names the
    quantity but gives no formula. ``squared=True`` uses σ_i² (the share of ‖P‖_F²) instead.
    Returns (..., min(n_rows, n_cols)), non-decreasing, ending at 1. Computed in float64
    (SVD of nearly singular matrices).
    """
    check_tensor("p", p)
    if p.dim() < 2:
        raise ValueError(f"p must be a matrix or a batch of matrices, got shape {tuple(p.shape)}")
    sigma = torch.linalg.svdvals(p.double())   # descending, (..., min(n_rows, n_cols))
    return cumulative_singular_value_share(sigma, squared=squared)


def best_rank_approximation(p: Tensor, rank: int) -> Tensor:
    """The rank-``rank`` matrix closest to p in Frobenius and spectral norm: truncated SVD
    (Frobenius: Eckart-Young 1936; spectral norm: Mirsky 1960).

    Eckart-Young: P_r = Σ_{i≤r} σ_i u_i v_iᵀ, and ‖P − P_r‖_F² = Σ_{i>r} σ_i² is the
    smallest error of any matrix of rank ≤ r, Linformer's P̄F included.
    p: (..., n_rows, n_cols); returns the same shape and dtype.
    """
    check_tensor("p", p)
    if p.dim() < 2:
        raise ValueError(f"p must be a matrix or a batch of matrices, got shape {tuple(p.shape)}")
    check_positive_int("rank", rank)
    if rank > min(p.shape[-2:]):
        raise ValueError(f"rank={rank} exceeds the smaller side of p, shape {tuple(p.shape)}")
    u, sigma, vh = torch.linalg.svd(p, full_matrices=False)
    return (u[..., :rank] * sigma[..., None, :rank]) @ vh[..., :rank, :]
# --8<-- [end:spectrum]
