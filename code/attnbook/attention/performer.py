"""Performer / FAVOR+ (Choromanski et al., 2021, arXiv:2009.14794): softmax from random features.

Vectors are rows, as in the book. The softmax kernel is an expectation over a Gaussian
row vector ω ~ N(0, I_d) (the paper's positive random features):

    exp(xyᵀ) = E_ω[ exp(xωᵀ − ‖x‖²/2) · exp(yωᵀ − ‖y‖²/2) ],

so with r draws ω_1..ω_r and φ(x) = [exp(xωᵢᵀ − ‖x‖²/2)]_i / √r, the dot product
φ(x)φ(y)ᵀ is an unbiased Monte Carlo estimate of exp(xyᵀ) made of *positive* terms.
Feeding q/d^¼ and k/d^¼ (so that xyᵀ = qkᵀ/√d) into the linear attention machinery of
``linear.py`` gives D⁻¹φ(Q)(φ(K)ᵀV) ≈ softmax(QKᵀ/√d)V in time linear in n.

Variance is reduced by drawing the ω's *orthogonal* to each other (in blocks of d
rows, from the QR decomposition of Gaussian matrices) and giving each row the length of
an independent Gaussian vector, so that every row is still marginally N(0, I_d).

For comparison the module also has the older trigonometric features
φ(x) = exp(‖x‖²/2)[sin(xωᵢᵀ), cos(xωᵢᵀ)] / √r (Rahimi & Recht), also unbiased for
exp(xyᵀ), but made of terms of both signs: the estimated "attention weights" and even
their row sums can be zero or negative, which is what FAVOR+ fixes.

Projections ``omega`` are (r, head_dim), shared by all heads, or (heads, r, head_dim), for
r random features (the paper's m; in the book m is the number of keys).
Tensors follow the book's layout (batch, heads, seq, head_dim);
``key_padding_mask`` is boolean (batch, k_len), **True = real key**.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ._checks import check_divisible, check_positive_int, check_qkv, check_rank, check_tensor
from .linear import (
    _check_key_padding_mask,
    causal_kernelized_attention,
    kernelized_attention,
)
from .multihead import merge_heads, split_heads

Tensor = torch.Tensor
FeatureKind = Literal["positive", "trigonometric"]


# --8<-- [start:random_matrix]
def gaussian_random_matrix(
    num_features: int,
    dim: int,
    *,
    generator: torch.Generator | None,
    orthogonal: bool = True,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw the projection ω ∈ ℝ^{r × dim}, r = num_features; each row is marginally N(0, I_dim).

    orthogonal=False: iid Gaussian rows. orthogonal=True: rows come in blocks of ``dim``
    mutually orthogonal unit vectors (a uniformly random rotation per block, from QR),
    and each row is then scaled by the norm of an independent N(0, I_dim) vector (a
    χ_dim length), so the marginal law of a row is unchanged but rows within a block
    are exactly orthogonal. The draw happens on the generator's device in float64 and
    is then moved to ``device``/``dtype``: the same seed gives the same ω everywhere.
    """
    check_positive_int("num_features", num_features)
    check_positive_int("dim", dim)
    draw = {"generator": generator, "dtype": torch.float64,
            "device": generator.device if generator is not None else "cpu"}
    if not orthogonal:
        omega = torch.randn(num_features, dim, **draw)
        return omega.to(device=device, dtype=dtype)
    num_blocks = -(-num_features // dim)                          # ceil(r / d)
    gaussian = torch.randn(num_blocks, dim, dim, **draw)
    q_factor, r_factor = torch.linalg.qr(gaussian)               # (blocks, d, d) each
    # QR is unique only up to column signs; fixing sign(diag R) > 0 makes Q uniformly
    # distributed over rotations (Haar), so each direction is uniform on the sphere.
    q_factor = q_factor * torch.sign(torch.diagonal(r_factor, dim1=-2, dim2=-1)).unsqueeze(-2)
    directions = q_factor.transpose(-2, -1).reshape(num_blocks * dim, dim)[:num_features]
    lengths = torch.randn(num_features, dim, **draw).norm(dim=-1)  # χ_d distributed
    return (directions * lengths.unsqueeze(-1)).to(device=device, dtype=dtype)
# --8<-- [end:random_matrix]


def _project(x: Tensor, omega: Tensor) -> Tensor:
    """xωᵀ for every row ω of ``omega``: (..., d) -> (..., r), or per head for 3-D omega."""
    check_tensor("omega", omega)
    if omega.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"omega has rows of size {omega.shape[-1]} but the inputs have {x.shape[-1]} features "
            f"(omega {tuple(omega.shape)}, input {tuple(x.shape)})"
        )
    if omega.dim() == 2:
        return x @ omega.transpose(-2, -1)                           # (..., r)
    if omega.dim() == 3:
        check_rank("x", x, 4, "(batch, heads, seq, head_dim) when omega is per head")
        if omega.shape[0] != x.shape[1]:
            raise ValueError(f"per-head omega {tuple(omega.shape)} needs {omega.shape[0]} heads, "
                             f"the input has {x.shape[1]} (shape {tuple(x.shape)})")
        return torch.einsum("bhnd,hrd->bhnr", x, omega)              # (batch, heads, seq, r)
    raise ValueError(
        f"omega must be (r, head_dim) or (heads, r, head_dim), got {tuple(omega.shape)}")


# --8<-- [start:positive]
def positive_features(x: Tensor, omega: Tensor) -> Tensor:
    """φ(x) = [exp(xωᵢᵀ − ‖x‖²/2)]_i / √r: (..., d) -> (..., r), every entry > 0.

    The raw FAVOR+ features: φ(x)φ(y)ᵀ is an unbiased estimate of exp(xyᵀ). The
    exponent is not bounded, so large inputs can overflow; see
    ``positive_features_stable`` for what attention uses.
    """
    projected = _project(x, omega)                        # xωᵢᵀ: (..., r)
    half_sq_norm = 0.5 * (x * x).sum(-1, keepdim=True)    # ‖x‖²/2: (..., 1)
    return torch.exp(projected - half_sq_norm) / math.sqrt(omega.shape[-2])
# --8<-- [end:positive]


# --8<-- [start:positive_stable]
def positive_features_stable(x: Tensor, omega: Tensor, *, role: Literal["query", "key"]) -> Tensor:
    """``positive_features`` times a positive constant that cancels in attention.

    Every exponent xωᵢᵀ − ‖x‖²/2 is shifted by its maximum so the largest feature is
    exactly 1/√r and nothing overflows. For queries the maximum is taken per query (over
    the r features): a per-row factor, cancelled by the row's own normaliser D. For keys
    it is taken over all keys and features of a (batch, head): one factor for the whole
    of φ(K), cancelled between φ(K)ᵀV and Σφ(k_j). The attention output is unchanged, but
    φ(x)φ(y)ᵀ is no longer an estimate of exp(xyᵀ): use ``positive_features`` for that.
    The shift is a constant as far as the output is concerned, so it is detached.
    (With a causal mask the key shift also sees future keys; it still cancels exactly,
    but a huge future key could underflow the features of earlier ones.)
    """
    if role not in ("query", "key"):
        raise ValueError(f"role must be 'query' or 'key', got {role!r}")
    exponent = _project(x, omega) - 0.5 * (x * x).sum(-1, keepdim=True)
    dims = (-1,) if role == "query" else (-2, -1)
    shift = exponent.detach().amax(dim=dims, keepdim=True)
    return torch.exp(exponent - shift) / math.sqrt(omega.shape[-2])
# --8<-- [end:positive_stable]


# --8<-- [start:trigonometric]
def trigonometric_features(x: Tensor, omega: Tensor) -> Tensor:
    """φ(x) = exp(‖x‖²/2)[sin(xωᵢᵀ), cos(xωᵢᵀ)]_i / √r: (..., d) -> (..., 2r).

    φ(x)φ(y)ᵀ = exp((‖x‖² + ‖y‖²)/2) · mean_i cos((x − y)ωᵢᵀ) is unbiased for exp(xyᵀ),
    but its terms have both signs, so an estimate can be ≤ 0.
    """
    projected = _project(x, omega)                                    # (..., r)
    scale = torch.exp(0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(omega.shape[-2])
    return scale * torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)
# --8<-- [end:trigonometric]


def softmax_kernel_estimate(x: Tensor, y: Tensor, omega: Tensor,
                            *, features: FeatureKind = "positive") -> Tensor:
    """φ(x)φ(y)ᵀ, the random-feature estimate of exp(xyᵀ); x, y: (..., d) -> (...)."""
    feature_map = _feature_map(features)
    return (feature_map(x, omega) * feature_map(y, omega)).sum(-1)


def _feature_map(features: str):
    if features == "positive":
        return positive_features
    if features == "trigonometric":
        return trigonometric_features
    raise ValueError(f"features must be 'positive' or 'trigonometric', got {features!r}")


# --8<-- [start:feature_maps]
def performer_feature_maps(
    q: Tensor, k: Tensor, omega: Tensor, *, features: FeatureKind = "positive",
    stable: bool = True,
) -> tuple[Tensor, Tensor]:
    """φ(q/d^¼) and φ(k/d^¼), so that φ(q)φ(k)ᵀ estimates exp(qkᵀ/√d).

    q: (batch, heads, q_len, d); k: (batch, kv_heads, k_len, d). Returns tensors of
    the same layout with r features (2r for trigonometric), r = omega's rows. For positive features
    ``stable`` selects ``positive_features_stable`` (the same attention output, no
    overflow or underflow); the trigonometric map has no stable variant.
    """
    scale = q.shape[-1] ** -0.25     # splits the 1/√d of softmax between q and k
    q, k = q * scale, k * scale
    if features == "positive" and stable:
        return (positive_features_stable(q, omega, role="query"),
                positive_features_stable(k, omega, role="key"))
    feature_map = _feature_map(features)
    return feature_map(q, omega), feature_map(k, omega)
# --8<-- [end:feature_maps]


# --8<-- [start:performer_attention]
def performer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    omega: Tensor,
    *,
    causal: bool = False,
    features: FeatureKind = "positive",
    stable: bool = True,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = 64,
    eps: float = 0.0,
) -> Tensor:
    """FAVOR+ attention: D⁻¹φ(Q)(φ(K)ᵀV) ≈ softmax(QKᵀ/√d)V, linear in n.

    q: (batch, heads, q_len, d); k: (batch, kv_heads, k_len, d); v: (batch, kv_heads,
    k_len, d_v); omega: (r, d) from ``gaussian_random_matrix`` for r random features,
    shared by the heads, or (heads, r, d), one per head (then kv_heads must equal heads).
    causal: query i sees keys j ≤ i (prefix sums, via ``causal_kernelized_attention``).
    key_padding_mask: (batch, k_len), True = real key. Returns (batch, heads, q_len, d_v).
    """
    check_qkv(q, k, v)
    keep = _check_key_padding_mask(key_padding_mask, k.shape[0], k.shape[2])
    if keep is not None:
        k = k * keep  # padded keys must not set the stable shift; their features are zeroed below
    phi_q, phi_k = performer_feature_maps(q, k, omega, features=features, stable=stable)
    if keep is not None:
        phi_k = phi_k * keep
    if causal:
        return causal_kernelized_attention(phi_q, phi_k, v, chunk_size=chunk_size, eps=eps)
    return kernelized_attention(phi_q, phi_k, v, eps=eps)
# --8<-- [end:performer_attention]


def default_num_features(head_dim: int) -> int:
    """r = ⌈d·ln d⌉ (at least d), following the paper's Θ(d log d) features (its m)."""
    return max(head_dim, math.ceil(head_dim * math.log(head_dim)))


# --8<-- [start:module]
class PerformerAttention(nn.Module):
    """Multi-head self-attention with FAVOR+ in place of softmax.

    The random projection ω (num_features, head_dim), shared by all heads, is a buffer:
    saved with the model, never trained, and redrawn only when ``redraw_features`` is
    called (the paper redraws periodically during training; when is the caller's choice).
    ``forward`` returns ``(output, None)``, the shape of ``MultiHeadAttention`` without
    weights, so the two are interchangeable.
    """

    def __init__(self, d_model: int, num_heads: int, num_features: int | None = None, *,
                 orthogonal: bool = True, features: FeatureKind = "positive", bias: bool = True,
                 chunk_size: int = 64, generator: torch.Generator | None = None,
                 device=None, dtype=None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("num_heads", num_heads)
        check_divisible("d_model", d_model, "num_heads", num_heads)
        _feature_map(features)  # validates the name
        self.d_model, self.num_heads = d_model, num_heads
        self.head_dim = d_model // num_heads
        self.num_features = (default_num_features(self.head_dim) if num_features is None
                             else check_positive_int("num_features", num_features))
        self.orthogonal, self.features, self.chunk_size = orthogonal, features, chunk_size
        factory = {"device": device, "dtype": dtype}
        self.in_proj = nn.Linear(d_model, 3 * d_model, bias=bias, **factory)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias, **factory)
        self.register_buffer("omega", torch.empty(self.num_features, self.head_dim, **factory))
        self.redraw_features(generator)

    @torch.no_grad()
    def redraw_features(self, generator: torch.Generator | None = None) -> None:
        """Draw a new ω in place (None uses torch's default generator, like nn.init)."""
        omega = gaussian_random_matrix(self.num_features, self.head_dim, generator=generator,
                                       orthogonal=self.orthogonal, dtype=self.omega.dtype,
                                       device=self.omega.device)
        self.omega.copy_(omega)

    def forward(self, x: Tensor, *, key_padding_mask: Tensor | None = None,
                causal: bool = False) -> tuple[Tensor, None]:
        """x: (batch, seq, d_model) -> ((batch, seq, d_model), None)."""
        check_rank("x", x, 3, "(batch, seq, d_model)")
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x has {x.shape[-1]} features, expected d_model={self.d_model} "
                             f"(shape {tuple(x.shape)})")
        q, k, v = (split_heads(t, self.num_heads)             # each (batch, heads, seq, head_dim)
                   for t in self.in_proj(x).chunk(3, dim=-1))
        out = performer_attention(q, k, v, self.omega, causal=causal, features=self.features,
                                  key_padding_mask=key_padding_mask, chunk_size=self.chunk_size)
        return self.out_proj(merge_heads(out)), None          # merge: (batch, seq, d_model)
# --8<-- [end:module]
