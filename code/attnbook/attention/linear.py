"""Linear attention (Katharopoulos et al., 2020, arXiv:2006.16236): softmax as a kernel.

Vectors are rows, as in the book. Replace the softmax similarity exp(qkᵀ/√d) by a kernel
written as a dot product of feature vectors, sim(q, k) = φ(q)φ(k)ᵀ with φ(x) ∈ ℝ^{1×r}
(r features) and φ > 0. Then, for query i,

    out_i = Σ_j φ(q_i)φ(k_j)ᵀ v_j / Σ_j φ(q_i)φ(k_j)ᵀ
          = φ(q_i) (Σ_j φ(k_j)ᵀv_j) / φ(q_i) (Σ_j φ(k_j)ᵀ)         (matrix products associate)

and the n × n matrix never exists: U = φ(K)ᵀV is (r, d_v) and z = Σ_j φ(k_j)ᵀ is (r,),
so time and memory are linear in the sequence length n. With a causal mask the sums run
over j ≤ i, which makes them prefix sums U_i = U_{i-1} + φ(k_i)ᵀv_i, z_i = z_{i-1} + φ(k_i)ᵀ:
a recurrent network whose state is (U, z) (hence the paper's title, "Transformers are RNNs";
the paper writes S for U, the book keeps S for the scores QKᵀ/√d).

The module has three layers:

* feature maps: ``elu_feature_map`` (φ = elu + 1, the paper's choice); any callable
  ``(..., head_dim) -> (..., r)`` with positive outputs may be plugged in;
* attention on features, shared with ``performer.py``: ``kernelized_attention``
  (non-causal), ``causal_kernelized_attention`` (chunked, carries the state),
  ``causal_kernelized_attention_prefix_sum`` (the prefix sums written out) and
  ``kernelized_attention_quadratic`` (the n × n form, for tests and pictures);
* attention on q, k, v: ``linear_attention``, ``linear_attention_quadratic``,
  ``linear_attention_step`` (one recurrent step) and ``causal_linear_attention_recurrent``.

Shapes: q is (batch, heads, q_len, head_dim); k, v are (batch, kv_heads, k_len, head_dim)
and (batch, kv_heads, k_len, d_v), kv_heads dividing heads. Feature tensors have the same
layout with r in the last axis. Only *key* masks make sense without the n × n matrix:
``key_padding_mask`` is boolean (batch, k_len), **True = real key (may be attended)**,
the book's convention; padded keys are removed from every sum by zeroing φ(k_j).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ._checks import check_key_padding_mask, check_positive_int, check_qkv, check_rank
from .dot_product import repeat_kv

Tensor = torch.Tensor
FeatureMap = Callable[[Tensor], Tensor]


# --8<-- [start:feature_map]
def elu_feature_map(x: Tensor) -> Tensor:
    """φ(x) = elu(x) + 1, applied elementwise: (..., d) -> (..., d), always > 0.

    elu(x) + 1 is exp(x) for x ≤ 0 and x + 1 for x > 0: positive like exp, so every
    "attention weight" φ(q)φ(k)ᵀ is positive, but it grows only linearly. Written
    literally, ``F.elu(x) + 1`` computes (exp(x) − 1) + 1, which rounds to exactly 0
    once exp(x) is below half an ulp of 1 (x < −17 in float32, x < −37 in float64);
    taking exp(x) directly stays positive down to exp's own underflow (about −103 in
    float32 and −745 in float64, counting subnormal numbers).
    """
    # clamp keeps the unused branch finite, so its (discarded) gradient is not NaN
    return torch.where(x > 0, x + 1.0, torch.exp(x.clamp(max=0.0)))
# --8<-- [end:feature_map]


def _check_key_padding_mask(mask: Tensor | None, batch: int, k_len: int) -> Tensor | None:
    """Return the mask as (batch, 1, k_len, 1), True = real key, to multiply k or φ(k) by."""
    mask = check_key_padding_mask(mask, batch, k_len)
    return None if mask is None else mask[:, None, :, None]


def _check_features(phi_q: Tensor, phi_k: Tensor, v: Tensor, causal: bool) -> tuple[Tensor, Tensor]:
    """Check feature tensors like q, k, v; repeat grouped kv heads. Returns (phi_k, v)."""
    num_heads, _ = check_qkv(phi_q, phi_k, v)
    if causal and phi_q.shape[2] != phi_k.shape[2]:
        raise ValueError(
            f"causal linear attention needs q_len == k_len, "
            f"got {phi_q.shape[2]} and {phi_k.shape[2]}; "
            "for one new token at a time use linear_attention_step"
        )
    return repeat_kv(phi_k, num_heads), repeat_kv(v, num_heads)


def _divide(numerator: Tensor, denominator: Tensor, eps: float) -> Tensor:
    """numerator / (denominator + eps), with 0/0 := 0 for a query that sees no key."""
    denominator = denominator + eps
    safe = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
    return numerator / safe.unsqueeze(-1)


# --8<-- [start:kernelized]
def kernelized_attention(phi_q: Tensor, phi_k: Tensor, v: Tensor, *, eps: float = 0.0) -> Tensor:
    """Non-causal attention with similarity φ(q)φ(k)ᵀ, in time and memory linear in n.

    phi_q: (batch, heads, q_len, r); phi_k: (batch, kv_heads, k_len, r), r features;
    v: (batch, kv_heads, k_len, d_v). Returns (batch, heads, q_len, d_v):
    D⁻¹ φ(Q)(φ(K)ᵀV) with D = diag(φ(Q) Σ_j φ(k_j)ᵀ). ``eps`` is added to D.
    """
    phi_k, v = _check_features(phi_q, phi_k, v, causal=False)
    kv_summary = phi_k.transpose(-2, -1) @ v      # U = φ(K)ᵀV: (batch, heads, r, d_v)
    key_sum = phi_k.sum(dim=-2)                   # z = Σ_j φ(k_j)ᵀ: (batch, heads, r)
    numerator = phi_q @ kv_summary                # (batch, heads, q_len, d_v)
    denominator = (phi_q * key_sum.unsqueeze(-2)).sum(-1)  # φ(q_i)z: (batch, heads, q_len)
    return _divide(numerator, denominator, eps)
# --8<-- [end:kernelized]


# --8<-- [start:quadratic]
def kernelized_attention_quadratic(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, *, causal: bool = False, eps: float = 0.0,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """The same attention through the n × n matrix: (φ(Q)φ(K)ᵀ ⊙ M) V / rowsum.

    M is the lower triangle when ``causal`` (query i sees keys j ≤ i), all ones otherwise.
    Quadratic in n: for tests and for drawing the implicit attention matrix. Returns the
    output (batch, heads, q_len, d_v), or ``(output, weights)`` with ``return_weights=True``,
    weights (batch, heads, q_len, k_len) with rows summing to 1.
    """
    phi_k, v = _check_features(phi_q, phi_k, v, causal)
    similarity = phi_q @ phi_k.transpose(-2, -1)  # (batch, heads, q_len, k_len)
    if causal:
        similarity = similarity.tril()  # zero, not -inf: there is no softmax here
    row_sums = similarity.sum(-1)
    weights = _divide(similarity, row_sums, eps)
    out = weights @ v
    return (out, weights) if return_weights else out
# --8<-- [end:quadratic]


# --8<-- [start:prefix_sum]
def causal_kernelized_attention_prefix_sum(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, *, chunk_size: int = 64, eps: float = 0.0
) -> Tensor:
    """Causal attention from the prefix sums U_i = Σ_{j≤i} φ(k_j)ᵀv_j and z_i = Σ_{j≤i} φ(k_j)ᵀ.

    Shapes as in ``kernelized_attention`` with q_len == k_len = n. Materialising every
    U_i at once would take n·r·d_v numbers, so the sequence is cut into chunks: inside
    a chunk the prefix sums are a ``cumsum``, and the last U and z of one chunk are
    carried into the next. Memory per chunk: chunk_size·r·d_v (in the forward pass;
    autograd keeps every chunk's U_i, see ``causal_kernelized_attention`` for the form
    that does not).
    """
    phi_k, v = _check_features(phi_q, phi_k, v, causal=True)
    check_positive_int("chunk_size", chunk_size)
    batch, heads, _, r = phi_q.shape
    state = phi_q.new_zeros(batch, heads, r, v.shape[-1])  # U carried in: (batch, heads, r, d_v)
    key_sum = phi_q.new_zeros(batch, heads, r)              # z carried in: (batch, heads, r)
    outputs = []
    for q_c, k_c, v_c in zip(*(t.split(chunk_size, dim=2) for t in (phi_q, phi_k, v))):
        outer = k_c.unsqueeze(-1) * v_c.unsqueeze(-2)           # φ(k_j)ᵀv_j: (b, h, c, r, d_v)
        states = state.unsqueeze(2) + outer.cumsum(dim=2)       # U_i for i in the chunk
        key_sums = key_sum.unsqueeze(2) + k_c.cumsum(dim=2)     # z_i: (b, h, c, r)
        numerator = torch.einsum("bhcr,bhcrd->bhcd", q_c, states)
        outputs.append(_divide(numerator, (q_c * key_sums).sum(-1), eps))
        state, key_sum = states[:, :, -1], key_sums[:, :, -1]   # carry into the next chunk
    return torch.cat(outputs, dim=2)
# --8<-- [end:prefix_sum]


# --8<-- [start:chunked]
def causal_kernelized_attention(
    phi_q: Tensor, phi_k: Tensor, v: Tensor, *, chunk_size: int = 64, eps: float = 0.0
) -> Tensor:
    """Causal attention, chunk by chunk: exact, linear in n, fast.

    Shapes as in ``kernelized_attention`` with q_len == k_len = n. For a query in chunk
    c the keys split into earlier chunks, summarised by the carried state (U, z), and
    keys of its own chunk, handled by the small masked quadratic form:

        out_i = (φ(q_i)U + Σ_{j in chunk, j≤i} φ(q_i)φ(k_j)ᵀ v_j)
                / (φ(q_i)z + Σ_{j in chunk, j≤i} φ(q_i)φ(k_j)ᵀ)

    Cost per chunk: chunk_size²·(r + d_v) + 2·chunk_size·r·d_v, all matrix products,
    for r features. Autograd keeps one (r, d_v) state per chunk, never n of them.
    """
    phi_k, v = _check_features(phi_q, phi_k, v, causal=True)
    check_positive_int("chunk_size", chunk_size)
    batch, heads, _, r = phi_q.shape
    state = phi_q.new_zeros(batch, heads, r, v.shape[-1])  # U of all earlier chunks
    key_sum = phi_q.new_zeros(batch, heads, r)              # z of all earlier chunks
    outputs = []
    for q_c, k_c, v_c in zip(*(t.split(chunk_size, dim=2) for t in (phi_q, phi_k, v))):
        local = (q_c @ k_c.transpose(-2, -1)).tril()        # within the chunk: (b, h, c, c)
        numerator = q_c @ state + local @ v_c               # (b, h, c, d_v)
        denominator = q_c @ key_sum.unsqueeze(-1) + local.sum(-1, keepdim=True)
        outputs.append(_divide(numerator, denominator.squeeze(-1), eps))
        state = state + k_c.transpose(-2, -1) @ v_c         # U += φ(K_c)ᵀV_c
        key_sum = key_sum + k_c.sum(dim=-2)                 # z += Σ φ(k_j)ᵀ
    return torch.cat(outputs, dim=2)
# --8<-- [end:chunked]


def _features(q: Tensor, k: Tensor, v: Tensor, feature_map: FeatureMap,
              key_padding_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    check_qkv(q, k, v)
    if not callable(feature_map):
        raise TypeError(f"feature_map must be callable, got {type(feature_map).__name__}")
    keep = _check_key_padding_mask(key_padding_mask, k.shape[0], k.shape[2])
    phi_q, phi_k = feature_map(q), feature_map(k)
    if keep is not None:
        phi_k = phi_k * keep  # a padded key adds nothing to any sum
    return phi_q, phi_k


# --8<-- [start:linear_attention]
def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    feature_map: FeatureMap = elu_feature_map,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = 64,
    eps: float = 0.0,
) -> Tensor:
    """Linear attention of Katharopoulos et al.: φ(Q)(φ(K)ᵀV) / φ(Q)Σ_jφ(k_j)ᵀ.

    q: (batch, heads, q_len, head_dim); k: (batch, kv_heads, k_len, head_dim);
    v: (batch, kv_heads, k_len, d_v). Returns (batch, heads, q_len, d_v).
    causal: query i sees keys j ≤ i (needs q_len == k_len). feature_map: φ, default
    elu + 1. key_padding_mask: (batch, k_len), True = real key. eps: added to the
    denominator (the reference code uses 1e-6; positive features need none).
    """
    phi_q, phi_k = _features(q, k, v, feature_map, key_padding_mask)
    if causal:
        return causal_kernelized_attention(phi_q, phi_k, v, chunk_size=chunk_size, eps=eps)
    return kernelized_attention(phi_q, phi_k, v, eps=eps)
# --8<-- [end:linear_attention]


def linear_attention_quadratic(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    feature_map: FeatureMap = elu_feature_map,
    key_padding_mask: Tensor | None = None,
    eps: float = 0.0,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``linear_attention`` through the explicit n × n matrix; returns the output, or
    ``(output, weights)`` with ``return_weights=True``.

    Same arguments as ``linear_attention``. weights: (batch, heads, q_len, k_len), the
    normalised similarities φ(q_i)φ(k_j)ᵀ / Σ_j' φ(q_i)φ(k_j')ᵀ, zero above the diagonal
    when causal. Quadratic in n: the reference that the linear forms are tested against.
    """
    phi_q, phi_k = _features(q, k, v, feature_map, key_padding_mask)
    return kernelized_attention_quadratic(phi_q, phi_k, v, causal=causal, eps=eps,
                                          return_weights=return_weights)


# --8<-- [start:step]
def linear_attention_step(
    q_t: Tensor,
    k_t: Tensor,
    v_t: Tensor,
    state: tuple[Tensor, Tensor] | None = None,
    *,
    feature_map: FeatureMap = elu_feature_map,
    eps: float = 0.0,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One step of causal linear attention as a recurrent network.

    q_t: (batch, heads, head_dim); k_t: (batch, kv_heads, head_dim); v_t: (batch,
    kv_heads, d_v): the new token. state: (U, z) with U (batch, heads, r, d_v) and
    z (batch, heads, r) for r features, or None before the first token. Returns
    (out_t, (U', z')):

        U' = U + φ(k_t)ᵀv_t,   z' = z + φ(k_t)ᵀ,   out_t = φ(q_t)U' / φ(q_t)z'.

    The state has a fixed size however long the sequence: decoding costs O(1) per token.
    """
    for name, x in (("q_t", q_t), ("k_t", k_t), ("v_t", v_t)):
        check_rank(name, x, 3, "(batch, heads, head_dim)")
    num_heads = q_t.shape[1]
    k_t, v_t = (repeat_kv(x.unsqueeze(2), num_heads).squeeze(2) for x in (k_t, v_t))
    phi_q, phi_k = feature_map(q_t), feature_map(k_t)       # (batch, heads, r)
    if state is None:
        state = (phi_q.new_zeros(*phi_q.shape, v_t.shape[-1]), phi_q.new_zeros(phi_q.shape))
    kv_state, key_sum = state
    kv_state = kv_state + phi_k.unsqueeze(-1) * v_t.unsqueeze(-2)  # U' = U + φ(k_t)ᵀv_t
    key_sum = key_sum + phi_k                                       # z' = z + φ(k_t)ᵀ
    numerator = (phi_q.unsqueeze(-1) * kv_state).sum(-2)            # φ(q_t)U': (batch, heads, d_v)
    out_t = _divide(numerator, (phi_q * key_sum).sum(-1), eps)
    return out_t, (kv_state, key_sum)
# --8<-- [end:step]


# --8<-- [start:recurrent]
def causal_linear_attention_recurrent(
    q: Tensor, k: Tensor, v: Tensor, *, feature_map: FeatureMap = elu_feature_map,
    eps: float = 0.0,
) -> Tensor:
    """Causal linear attention run as an RNN, one position at a time.

    The loop *is* the lesson: it feeds ``linear_attention_step`` token by token.
    Shapes as in ``linear_attention`` with q_len == k_len; returns (batch, heads, n, d_v).
    """
    check_qkv(q, k, v)
    if q.shape[2] != k.shape[2]:
        raise ValueError(
            f"causal attention needs q_len == k_len, got {q.shape[2]} and {k.shape[2]}")
    state, outputs = None, []
    for t in range(q.shape[2]):
        out_t, state = linear_attention_step(
            q[:, :, t], k[:, :, t], v[:, :, t], state, feature_map=feature_map, eps=eps
        )
        outputs.append(out_t)
    return torch.stack(outputs, dim=2)  # (batch, heads, n, d_v)
# --8<-- [end:recurrent]
