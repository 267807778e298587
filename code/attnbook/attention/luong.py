"""Luong (multiplicative) attention: "Effective Approaches to Attention-based Neural
Machine Translation" (Luong, Pham & Manning, 2015, arXiv:1508.04025).

For the current target state h_t and source states h̄_1 .. h̄_S (Section 3.1, the three scores defined just after Eq. 7):

    score(h_t, h̄_s) = h_tᵀ h̄_s                      dot
                    = h_tᵀ W_a h̄_s                   general
                    = v_aᵀ tanh(W_a [h_t; h̄_s])      concat
    a_t = softmax(W_a h_t)                           location (no source states at all)
    c_t = Σ_s a_t(s) h̄_s           h̃_t = tanh(W_c [c_t; h_t])   (Eq. 5)

Local-p attention (Section 3.2, Eqs. 9-10) predicts a centre p_t = S·sigmoid(v_pᵀ tanh(W_p h_t))
and keeps only the window [p_t - D, p_t + D], with a Gaussian of σ = D/2 around p_t.

Shapes follow ``additive.py``: ``query`` (batch, q_len, query_dim) or (batch, query_dim) for one
step, ``keys`` (batch, src_len, key_dim), ``source_mask`` (batch, src_len) boolean,
**True = real token**. Source positions are counted from 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_positive_int, check_rank
from .additive import (
    _as_steps,
    _check_source_mask,
    additive_scores,
    small_random_vector,
    source_attention,
)
from .dot_product import stable_softmax

Tensor = torch.Tensor

SCORES = ("dot", "general", "concat", "location")


# --8<-- [start:scores]
def dot_scores(query: Tensor, keys: Tensor) -> Tensor:
    """h_tᵀ h̄_s. query: (batch, q_len, dim); keys: (batch, src_len, dim).

    Returns (batch, q_len, src_len).
    """
    if query.shape[-1] != keys.shape[-1]:
        raise ValueError(
            f"dot scores need query and keys of the same width, got query {tuple(query.shape)} "
            f"and keys {tuple(keys.shape)}; use score='general' to map between widths"
        )
    return query @ keys.transpose(-2, -1)


def general_scores(query: Tensor, keys: Tensor, W_a: Tensor) -> Tensor:
    """h_tᵀ W_a h̄_s with W_a: (query_dim, key_dim). Returns (batch, q_len, src_len)."""
    check_rank("W_a", W_a, 2, "(query_dim, key_dim)")
    if W_a.shape != (query.shape[-1], keys.shape[-1]):
        raise ValueError(f"W_a has shape {tuple(W_a.shape)}, expected (query_dim, key_dim) = "
                         f"{(query.shape[-1], keys.shape[-1])}")
    return dot_scores(query, F.linear(keys, W_a))  # W_a h̄_s lives in the query's space


def concat_scores(query: Tensor, keys: Tensor, W_a: Tensor, v: Tensor) -> Tensor:
    """v_aᵀ tanh(W_a [h_t; h̄_s]) with W_a: (attn_dim, query_dim + key_dim), v: (attn_dim,).

    Splitting W_a by columns, W_a [h_t; h̄_s] = W_a[:, :q] h_t + W_a[:, q:] h̄_s: the
    concat score *is* Bahdanau's additive score, so it never builds the
    (batch, q_len, src_len, query_dim + key_dim) concatenation.
    """
    check_rank("W_a", W_a, 2, "(attn_dim, query_dim + key_dim)")
    query_dim = query.shape[-1]
    if W_a.shape[1] != query_dim + keys.shape[-1]:
        raise ValueError(f"W_a has shape {tuple(W_a.shape)}, expected "
                         f"(attn_dim, query_dim + key_dim = {query_dim + keys.shape[-1]})")
    return additive_scores(query, keys, W_a[:, :query_dim], W_a[:, query_dim:], v)


def location_scores(query: Tensor, W_a: Tensor, src_len: int) -> Tensor:
    """W_a h_t, one score per source *position*, from the target state alone.

    W_a: (max_src_len, query_dim); the first ``src_len`` rows are used. Returns
    (batch, q_len, src_len).
    """
    check_rank("W_a", W_a, 2, "(max_src_len, query_dim)")
    if src_len > W_a.shape[0]:
        raise ValueError(f"location scores were built for at most {W_a.shape[0]} source positions "
                         f"(W_a {tuple(W_a.shape)}), got src_len={src_len}")
    return F.linear(query, W_a[:src_len])
# --8<-- [end:scores]


# --8<-- [start:local_p]
def predictive_positions(query: Tensor, W_p: Tensor, v_p: Tensor, source_lengths: Tensor) -> Tensor:
    """p_t = S · sigmoid(v_pᵀ tanh(W_p h_t)) (Luong Eq. 9), a real number in (0, S).

    query: (batch, q_len, query_dim); W_p: (position_dim, query_dim); v_p: (position_dim,);
    source_lengths: (batch,) the true length S of each source. Returns (batch, q_len).
    """
    check_rank("source_lengths", source_lengths, 1, "(batch,)")
    gate = torch.sigmoid(torch.tanh(F.linear(query, W_p)) @ v_p)  # (batch, q_len) in (0, 1)
    return source_lengths.to(gate.dtype)[:, None] * gate


def local_p_weights(scores: Tensor, positions: Tensor, half_window: int,
                    source_mask: Tensor | None = None) -> Tensor:
    """a_t(s) = align(h_t, h̄_s) · exp(-(s - p_t)² / 2σ²), σ = D/2 (Luong Eq. 10).

    scores: (batch, q_len, src_len); positions p_t: (batch, q_len); half_window D >= 1.
    ``align`` is a softmax over the window [p_t - D, p_t + D] only, so the weight of
    every source position outside it is exactly 0. As in the paper, the Gaussian is
    applied after the softmax, so a row sums to at most 1, not to 1.
    """
    check_positive_int("half_window", half_window)
    batch, q_len, src_len = scores.shape
    if positions.shape != (batch, q_len):
        raise ValueError(f"positions must have shape (batch, q_len) = {(batch, q_len)}, "
                         f"got {tuple(positions.shape)}")
    source_mask = _check_source_mask(source_mask, batch, src_len)
    source = torch.arange(src_len, device=scores.device, dtype=positions.dtype)
    distance = source - positions[..., None]               # (batch, q_len, src_len): s - p_t
    keep = distance.abs() <= half_window                   # the window around p_t
    if source_mask is not None:
        keep = keep & source_mask[:, None, :]
    align = stable_softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
    sigma = half_window / 2
    # The Gaussian is what makes the weights differentiable in p_t (the window is not).
    return align * torch.exp(-distance**2 / (2 * sigma**2))
# --8<-- [end:local_p]


def local_p_attention(query: Tensor, keys: Tensor, scores: Tensor, W_p: Tensor, v_p: Tensor, *,
                      half_window: int, source_mask: Tensor | None = None,
                      return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Local-p attention from precomputed scores: returns the context (batch, q_len, key_dim),
    or (context, weights (batch, q_len, src_len)) with ``return_weights=True``.

    S in p_t = S·sigmoid(...) is each source's true length, the number of True entries in
    ``source_mask`` (padding is assumed to sit at the end), or src_len without a mask.
    """
    batch, src_len = keys.shape[:2]
    source_mask = _check_source_mask(source_mask, batch, src_len)
    lengths = (source_mask.sum(-1) if source_mask is not None
               else torch.full((batch,), src_len, device=keys.device))
    positions = predictive_positions(query, W_p, v_p, lengths)       # (batch, q_len)
    weights = local_p_weights(scores, positions, half_window, source_mask)
    context = weights @ keys                                          # (batch, q_len, key_dim)
    return (context, weights) if return_weights else context


def luong_output(context: Tensor, query: Tensor, W_c: Tensor) -> Tensor:
    """The attentional hidden state h̃_t = tanh(W_c [c_t; h_t]) (Luong Eq. 5).

    context: (batch, q_len, key_dim); query: (batch, q_len, query_dim);
    W_c: (out_dim, key_dim + query_dim). Returns (batch, q_len, out_dim).
    """
    return torch.tanh(F.linear(torch.cat([context, query], dim=-1), W_c))


# --8<-- [start:module]
class LuongAttention(nn.Module):
    """Luong global attention with score ``dot | general | concat | location``, or local-p
    attention when ``half_window`` (D) is given.

    ``forward(query, keys, source_mask=None, *, return_weights=False)`` returns ``out``, or
    ``(out, weights)`` with ``return_weights=True``: ``out`` is the context c_t, or
    h̃_t = tanh(W_c [c_t; h_t]) when ``output_layer=True``; weights are (batch, q_len, src_len). ``location`` needs ``max_src_len``.
    """

    def __init__(self, query_dim: int, key_dim: int | None = None, *, score: str = "general",
                 attn_dim: int | None = None, max_src_len: int | None = None,
                 half_window: int | None = None, output_layer: bool = False,
                 device=None, dtype=None):
        super().__init__()
        key_dim = query_dim if key_dim is None else key_dim
        attn_dim = query_dim if attn_dim is None else attn_dim
        for name, value in (("query_dim", query_dim), ("key_dim", key_dim), ("attn_dim", attn_dim)):
            check_positive_int(name, value)
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if score == "dot" and key_dim != query_dim:
            raise ValueError(f"score='dot' needs key_dim == query_dim, "
                             f"got key_dim={key_dim}, query_dim={query_dim}")
        if score == "location" and max_src_len is None:
            raise ValueError("score='location' needs max_src_len (one row per source position)")
        factory = {"device": device, "dtype": dtype}
        self.score, self.half_window = score, half_window
        if score == "general":    # weight: (query_dim, key_dim)
            self.W_a = nn.Linear(key_dim, query_dim, bias=False, **factory)
        elif score == "concat":   # weight: (attn_dim, query_dim + key_dim)
            self.W_a = nn.Linear(query_dim + key_dim, attn_dim, bias=False, **factory)
            self.v_a = small_random_vector(attn_dim, **factory)
        elif score == "location":  # weight: (max_src_len, query_dim)
            max_src_len = check_positive_int("max_src_len", max_src_len)
            self.W_a = nn.Linear(query_dim, max_src_len, bias=False, **factory)
        if half_window is not None:
            check_positive_int("half_window", half_window)
            self.W_p = nn.Linear(query_dim, attn_dim, bias=False, **factory)
            self.v_p = small_random_vector(attn_dim, **factory)
        self.W_c = (nn.Linear(key_dim + query_dim, query_dim, bias=False, **factory)
                    if output_layer else None)

    def scores(self, query: Tensor, keys: Tensor) -> Tensor:
        """(batch, q_len, src_len) scores for a 3-d query."""
        if self.score == "dot":
            return dot_scores(query, keys)
        if self.score == "general":
            return general_scores(query, keys, self.W_a.weight)
        if self.score == "concat":
            return concat_scores(query, keys, self.W_a.weight, self.v_a)
        return location_scores(query, self.W_a.weight, keys.shape[1])

    def forward(self, query: Tensor, keys: Tensor, source_mask: Tensor | None = None, *,
                return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        steps, one_step = _as_steps(query)                  # (batch, q_len, query_dim)
        check_rank("keys", keys, 3, "(batch, src_len, key_dim)")
        scores = self.scores(steps, keys)
        if self.half_window is None:                        # global attention
            context, weights = source_attention(scores, keys, source_mask, return_weights=True)
        else:                                               # local-p attention
            context, weights = local_p_attention(steps, keys, scores, self.W_p.weight, self.v_p,
                                                 half_window=self.half_window,
                                                 source_mask=source_mask, return_weights=True)
        out = context if self.W_c is None else luong_output(context, steps, self.W_c.weight)
        if one_step:  # drop the q_len axis of a single decoder step
            out, weights = out[:, 0], weights[:, 0]
        return (out, weights) if return_weights else out
# --8<-- [end:module]
