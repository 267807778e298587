"""Bahdanau (additive) attention, the score of "Neural Machine Translation by Jointly
Learning to Align and Translate" (Bahdanau, Cho & Bengio, 2014, arXiv:1409.0473).

For decoder state s_{i-1} and encoder annotations h_1 .. h_S (Appendix A.1.2):

    e_ij = v_aᵀ tanh(W_a s_{i-1} + U_a h_j)      α_i = softmax(e_i)      c_i = Σ_j α_ij h_j

Shapes (the RNN encoder-decoder layout, one head, no head axis):
``query`` is ``(batch, q_len, query_dim)`` (or ``(batch, query_dim)`` for one decoder
step), ``keys`` are ``(batch, src_len, key_dim)``, ``W_q`` (= W_a) is
``(attn_dim, query_dim)``, ``W_k`` (= U_a) is ``(attn_dim, key_dim)``, ``v`` (= v_a) is
``(attn_dim,)``. ``source_mask`` is ``(batch, src_len)`` boolean, **True = real token**
(may be attended), False = padding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_positive_int, check_rank, check_tensor
from .dot_product import stable_softmax

Tensor = torch.Tensor


def _as_steps(query: Tensor) -> tuple[Tensor, bool]:
    """Accept one decoder step (batch, dim) or many (batch, q_len, dim); return 3-d and a flag."""
    check_tensor("query", query)
    if query.dim() == 2:
        return query[:, None, :], True  # (batch, 1, query_dim)
    check_rank("query", query, 3, "(batch, q_len, query_dim) or (batch, query_dim)")
    return query, False


def _check_source_mask(source_mask: Tensor | None, batch: int, src_len: int) -> Tensor | None:
    if source_mask is None:
        return None
    check_tensor("source_mask", source_mask)
    if source_mask.dtype != torch.bool:
        raise TypeError(
            f"source_mask must be boolean (True = real token), got dtype {source_mask.dtype}"
        )
    if tuple(source_mask.shape) != (batch, src_len):
        raise ValueError(
            f"source_mask must have shape (batch, src_len) = {(batch, src_len)}, "
            f"got {tuple(source_mask.shape)}"
        )
    return source_mask


def small_random_vector(dim: int, *, device=None, dtype=None) -> nn.Parameter:
    """A (dim,) parameter drawn from U(-1/√dim, 1/√dim), like ``nn.Linear``'s default.

    A vector such as v_a must not start at zero: every score would be 0 and the
    attention uniform, whatever the input.
    """
    bound = dim**-0.5
    return nn.Parameter(torch.empty(dim, device=device, dtype=dtype).uniform_(-bound, bound))


# --8<-- [start:project]
def project_keys(keys: Tensor, W_k: Tensor) -> Tensor:
    """U_a h_j for every source position, computed once per source sentence.

    keys: (batch, src_len, key_dim); W_k: (attn_dim, key_dim) -> (batch, src_len, attn_dim).
    The term does not depend on the decoder step i, so a decoder that emits T words
    should pay for it once, not T times (Bahdanau et al., Appendix A.1.2, make the same remark).
    """
    check_rank("keys", keys, 3, "(batch, src_len, key_dim)")
    check_rank("W_k", W_k, 2, "(attn_dim, key_dim)")
    if W_k.shape[1] != keys.shape[-1]:
        raise ValueError(
            f"W_k has shape {tuple(W_k.shape)}, expected (attn_dim, key_dim={keys.shape[-1]})"
        )
    return F.linear(keys, W_k)
# --8<-- [end:project]


# --8<-- [start:scores]
def additive_scores_projected(
    query: Tensor, projected_keys: Tensor, W_q: Tensor, v: Tensor
) -> Tensor:
    """e_ij = vᵀ tanh(W_q s_i + (U_a h_j)) with U_a h_j already computed by ``project_keys``.

    query: (batch, q_len, query_dim); projected_keys: (batch, src_len, attn_dim);
    W_q: (attn_dim, query_dim); v: (attn_dim,). Returns scores (batch, q_len, src_len).
    """
    check_rank("query", query, 3, "(batch, q_len, query_dim)")
    check_rank("projected_keys", projected_keys, 3, "(batch, src_len, attn_dim)")
    check_rank("W_q", W_q, 2, "(attn_dim, query_dim)")
    check_rank("v", v, 1, "(attn_dim,)")
    if W_q.shape != (projected_keys.shape[-1], query.shape[-1]) or v.shape[0] != W_q.shape[0]:
        raise ValueError(
            f"shapes disagree: query {tuple(query.shape)}, "
            f"projected_keys {tuple(projected_keys.shape)}, "
            f"W_q {tuple(W_q.shape)} (expected (attn_dim, query_dim)), "
            f"v {tuple(v.shape)} (expected (attn_dim,))"
        )
    if query.shape[0] != projected_keys.shape[0]:
        raise ValueError(
            f"query {tuple(query.shape)} and keys {tuple(projected_keys.shape)} "
            "differ in batch size"
        )
    projected_query = F.linear(query, W_q)  # (batch, q_len, attn_dim)
    # Broadcast every query step against every source position: (batch, q_len, src_len, attn_dim).
    hidden = torch.tanh(projected_query[:, :, None, :] + projected_keys[:, None, :, :])
    return hidden @ v  # (batch, q_len, src_len)


def additive_scores(query: Tensor, keys: Tensor, W_q: Tensor, W_k: Tensor, v: Tensor) -> Tensor:
    """e_ij = v_aᵀ tanh(W_a s_{i-1} + U_a h_j) for all steps i and source positions j.

    query: (batch, q_len, query_dim) or (batch, query_dim); keys: (batch, src_len, key_dim).
    Returns (batch, q_len, src_len), or (batch, src_len) for a 2-d query.
    """
    steps, one_step = _as_steps(query)
    scores = additive_scores_projected(steps, project_keys(keys, W_k), W_q, v)
    return scores[:, 0] if one_step else scores
# --8<-- [end:scores]


# --8<-- [start:attend]
def source_attention(
    scores: Tensor, values: Tensor, source_mask: Tensor | None = None, *,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Softmax over source positions, then the weighted sum c_i = Σ_j α_ij h_j.

    scores: (batch, q_len, src_len); values: (batch, src_len, value_dim);
    source_mask: (batch, src_len) boolean, True = real token. Padding gets a score of
    -inf, hence a weight of exactly 0. Returns the context (batch, q_len, value_dim), or
    ``(context, weights (batch, q_len, src_len))`` with ``return_weights=True``.
    """
    check_rank("scores", scores, 3, "(batch, q_len, src_len)")
    check_rank("values", values, 3, "(batch, src_len, value_dim)")
    batch, _, src_len = scores.shape
    if values.shape[:2] != (batch, src_len):
        raise ValueError(
            f"values {tuple(values.shape)} must be (batch={batch}, src_len={src_len}, value_dim)"
        )
    source_mask = _check_source_mask(source_mask, batch, src_len)
    if source_mask is not None:
        # The same padding for every query step: (batch, 1, src_len).
        scores = scores.masked_fill(~source_mask[:, None, :], float("-inf"))
    weights = stable_softmax(scores, dim=-1)
    context = weights @ values
    return (context, weights) if return_weights else context
# --8<-- [end:attend]


# --8<-- [start:functional]
def additive_attention(
    query: Tensor,
    keys: Tensor,
    W_q: Tensor,
    W_k: Tensor,
    v: Tensor,
    source_mask: Tensor | None = None,
    *,
    values: Tensor | None = None,
    projected_keys: Tensor | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Bahdanau attention: returns the context, or (context, weights) with ``return_weights``.

    query: (batch, q_len, query_dim) or (batch, query_dim) for one decoder step;
    keys: the annotations h_j, (batch, src_len, key_dim); values default to the keys
    (Bahdanau attends over the annotations themselves); projected_keys: U_a h_j from
    ``project_keys`` to skip recomputing it; source_mask: (batch, src_len), True = real token.
    context: (batch, q_len, value_dim); weights: (batch, q_len, src_len)
    (the q_len axis is dropped for a 2-d query).
    """
    steps, one_step = _as_steps(query)
    check_rank("keys", keys, 3, "(batch, src_len, key_dim)")
    if projected_keys is None:
        projected_keys = project_keys(keys, W_k)
    scores = additive_scores_projected(steps, projected_keys, W_q, v)
    context, weights = source_attention(scores, keys if values is None else values, source_mask,
                                        return_weights=True)
    if one_step:  # drop the q_len axis of a single decoder step
        context, weights = context[:, 0], weights[:, 0]
    return (context, weights) if return_weights else context
# --8<-- [end:functional]


# --8<-- [start:module]
class AdditiveAttention(nn.Module):
    """Bahdanau attention as a layer: owns W_a (``query_proj``), U_a (``key_proj``) and v_a.

    ``forward(query, keys, source_mask=None, *, projected_keys=None, return_weights=False)``
    returns the context, or ``(context, weights)`` with ``return_weights=True``; call ``project_keys(keys)`` once per source sentence and pass
    the result to every decoder step.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, *, device=None, dtype=None):
        super().__init__()
        for name, value in (("query_dim", query_dim), ("key_dim", key_dim), ("attn_dim", attn_dim)):
            check_positive_int(name, value)
        factory = {"device": device, "dtype": dtype}
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=False, **factory)  # W_a
        self.key_proj = nn.Linear(key_dim, attn_dim, bias=False, **factory)      # U_a
        self.v = small_random_vector(attn_dim, **factory)                          # v_a

    def project_keys(self, keys: Tensor) -> Tensor:
        """U_a h_j, (batch, src_len, attn_dim): compute once per source sentence."""
        return project_keys(keys, self.key_proj.weight)

    def forward(self, query: Tensor, keys: Tensor, source_mask: Tensor | None = None, *,
                projected_keys: Tensor | None = None,
                return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return additive_attention(
            query, keys, self.query_proj.weight, self.key_proj.weight, self.v, source_mask,
            projected_keys=projected_keys, return_weights=return_weights,
        )
# --8<-- [end:module]
