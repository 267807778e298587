"""Attention as a graph: edges from weights or masks, and who can reach whom in L layers.

A layer's attention matrix ``A`` (``(seq, seq)``, rows = queries) is the adjacency matrix
of a weighted directed graph: an edge j -> i carries weight ``A[i, j]``, the share of key
j's value that flows into query i's output. Token i's output after a stack of layers can
depend on input j only if there is a path j -> ... -> i with one edge per layer; the
residual connection adds a self-loop i -> i in every layer, because a token keeps its own
stream. Masks are boolean, **True = may attend**, so a mask is the edge set it allows.
"""
from __future__ import annotations

import torch

from ._checks import check_tensor

Tensor = torch.Tensor


def _check_square(name: str, x: Tensor) -> Tensor:
    check_tensor(name, x)
    if x.dim() != 2 or x.shape[0] != x.shape[1]:
        raise ValueError(f"{name} must be a square (seq, seq) matrix, got shape {tuple(x.shape)}")
    return x


# --8<-- [start:edges]
def attention_edges(weights: Tensor, threshold: float) -> Tensor:
    """Boolean adjacency ``(seq, seq)``: True where query i gives key j at least ``threshold``.

    ``threshold=0`` keeps every edge with positive weight (for a softmax row with a mask,
    exactly the allowed keys); a larger one keeps the edges that carry real weight.
    """
    _check_square("weights", weights)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    return weights > threshold if threshold == 0.0 else weights >= threshold
# --8<-- [end:edges]


# --8<-- [start:reach]
def reachability(*layers: Tensor, residual: bool = True) -> Tensor:
    """Which inputs each output can depend on after the given layers, first layer first.

    Each layer is a boolean ``(seq, seq)`` adjacency (True = query i reads key j). Returns
    ``R`` with ``R[i, j]`` True when a path j -> ... -> i uses one edge per layer:
    ``R = A_L ∘ ... ∘ A_1``, the Boolean matrix product. ``residual=True`` adds the self-loop
    of the residual stream to every layer (``A | I``).
    """
    if not layers:
        raise ValueError("reachability needs at least one layer")
    seq = _check_square("layers[0]", layers[0]).shape[0]
    reach = torch.eye(seq, dtype=torch.bool, device=layers[0].device)
    for index, adjacency in enumerate(layers):
        _check_square(f"layers[{index}]", adjacency)
        if adjacency.dtype != torch.bool or adjacency.shape[0] != seq:
            raise ValueError(f"layers[{index}] must be a boolean ({seq}, {seq}) matrix, "
                             f"got {adjacency.dtype} {tuple(adjacency.shape)}")
        if residual:
            adjacency = adjacency | torch.eye(seq, dtype=torch.bool, device=adjacency.device)
        # (A @ R)[i, j] > 0  <=>  some k with i reads k in this layer and k reached j before
        reach = (adjacency.to(torch.int64) @ reach.to(torch.int64)) > 0
    return reach
# --8<-- [end:reach]


def window_mask(seq_len: int, window: int, device=None) -> Tensor:
    """Causal sliding window: query i may attend keys ``i - window + 1 .. i`` (True = may attend)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return (j <= i) & (j > i - window)
