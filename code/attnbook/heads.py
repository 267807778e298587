"""Scores that find heads by what they do: previous-token, induction and first-token heads.

The protocol is the standard one (Olsson et al. 2022, "In-context learning and induction
heads"; Elhage et al. 2021): feed a random token sequence repeated twice and read the
attention weights.

- A **previous-token** head puts its weight on the key just before the query:
  ``attn[i, i - 1]``.
- An **induction** head, at a token of the second copy, looks back at the *token after*
  the earlier occurrence of the current token: for the query at position ``i`` of the
  second copy the first occurrence is at ``i - period``, so the key is ``i - period + 1``.
  Copying that token is how the model predicts the repeat.
- An **attention sink** puts weight on the first token whatever it is (Xiao et al. 2023).

Every score is a mean of attention weights, so it lies in [0, 1], and a head "counts"
when its score exceeds a threshold (0.4 in the book). Attention tensors are
``(..., heads, T, T)`` with rows = queries; leading axes (layers, batch) are kept, so a
stack ``(layers, batch, heads, T, T)`` gives scores ``(layers, batch, heads)``; average
over the batch yourself.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .attention._checks import check_tensor

Tensor = torch.Tensor

__all__ = [
    "repeated_random_tokens",
    "previous_token_scores",
    "induction_scores",
    "first_token_share",
    "heads_above",
]


def _check_attention(attn: Tensor) -> int:
    check_tensor("attn", attn)
    if attn.dim() < 3 or attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attn must have shape (..., heads, T, T) with square (T, T) weights, "
                         f"got {tuple(attn.shape)}")
    return attn.shape[-1]


def repeated_random_tokens(batch: int, period: int, vocab_size: int, *, generator: torch.Generator,
                           low: int = 0, prefix: Sequence[int] | None = None) -> Tensor:
    """``(batch, P + 2 * period)`` ids: ``prefix`` (length P), then ``period`` ids drawn
    uniformly from ``[low, vocab_size)``, then the same ``period`` ids again."""
    for name, value in (("batch", batch), ("period", period)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0 <= low < vocab_size:
        raise ValueError(f"need 0 <= low < vocab_size, got low={low}, vocab_size={vocab_size}")
    first = torch.randint(low, vocab_size, (batch, period), generator=generator)
    parts = [first, first]
    if prefix:
        parts.insert(0, torch.tensor(list(prefix), dtype=torch.long).expand(batch, -1))
    return torch.cat(parts, dim=1)


def previous_token_scores(attn: Tensor, *, offset: int = 0) -> Tensor:
    """Mean weight on key ``i - 1`` over queries ``i >= offset + 1``: shape ``attn.shape[:-2]``.

    ``offset`` skips a prefix (for example a beginning-of-sequence token at position 0)."""
    T = _check_attention(attn)
    if not 0 <= offset < T - 1:
        raise ValueError(f"offset must be in [0, T - 2] = [0, {T - 2}], got {offset}")
    rows = torch.arange(offset + 1, T, device=attn.device)
    return attn[..., rows, rows - 1].mean(dim=-1)


def induction_scores(attn: Tensor, period: int, *, offset: int = 0) -> Tensor:
    """Mean weight from each query of the second copy to the token after its first occurrence.

    The sequence is ``prefix (offset tokens), x, x`` with ``len(x) == period``; for queries
    ``i`` in ``[offset + period, offset + 2 * period)`` the key is ``i - period + 1``.
    Returns shape ``attn.shape[:-2]``."""
    T = _check_attention(attn)
    if period < 1 or offset < 0 or offset + 2 * period > T:
        raise ValueError(f"need period >= 1, offset >= 0 and offset + 2*period <= T={T}, "
                         f"got period={period}, offset={offset}")
    rows = torch.arange(offset + period, offset + 2 * period, device=attn.device)
    return attn[..., rows, rows - period + 1].mean(dim=-1)


def first_token_share(attn: Tensor) -> Tensor:
    """Mean weight on key 0 over queries ``i >= 1`` (query 0 of a causal model can only
    attend to itself, so it is left out): shape ``attn.shape[:-2]``."""
    T = _check_attention(attn)
    if T < 2:
        raise ValueError(f"first_token_share needs T >= 2 tokens, got T={T}")
    return attn[..., 1:, 0].mean(dim=-1)


def heads_above(scores: Tensor, threshold: float = 0.4) -> list[tuple[int, int]]:
    """``(layer, head)`` pairs whose score is strictly above ``threshold``; ``scores`` is
    ``(layers, heads)``."""
    check_tensor("scores", scores)
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (layers, heads), got {tuple(scores.shape)}")
    return [(int(layer), int(head)) for layer, head in (scores > threshold).nonzero().tolist()]
