"""Boolean attention masks. Convention everywhere in the book: **True = may attend**.

This is the convention of ``torch.nn.functional.scaled_dot_product_attention``; note that
``nn.MultiheadAttention``'s ``key_padding_mask`` uses the opposite (True = ignore).
"""
from __future__ import annotations

import torch

from ._checks import check_positive_int, check_rank

Tensor = torch.Tensor


# --8<-- [start:causal]
def causal_mask(q_len: int, k_len: int | None = None, device=None) -> Tensor:
    """``(q_len, k_len)`` boolean mask, True where query i may attend key j.

    The mask is aligned bottom-right: the last query sits at the last key, so query i is
    position ``k_len - q_len + i`` and sees keys ``j <= k_len - q_len + i``. With
    ``q_len == k_len`` this is the lower triangle; with a KV cache (few new queries,
    many keys) it lets the new tokens see the whole past. (``torch``'s ``is_causal``
    aligns top-left instead, which is wrong for cached decoding.)
    """
    check_positive_int("q_len", q_len)
    k_len = q_len if k_len is None else check_positive_int("k_len", k_len)
    if k_len < q_len:
        raise ValueError(f"causal_mask needs k_len >= q_len, got q_len={q_len}, k_len={k_len}")
    offset = k_len - q_len
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=offset)
# --8<-- [end:causal]


# --8<-- [start:padding]
def padding_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """``(batch, max_len)`` boolean mask, True at real tokens, False at padding.

    ``lengths`` holds each sequence's true length, shape ``(batch,)``.
    """
    check_rank("lengths", lengths, 1, "(batch,)")
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got {lengths.tolist()}")
    max_len = int(lengths.max()) if max_len is None else max_len
    if lengths.numel() and int(lengths.max()) > max_len:
        raise ValueError(f"max_len={max_len} is shorter than the longest sequence ({int(lengths.max())})")
    positions = torch.arange(max_len, device=lengths.device)
    return positions[None, :] < lengths[:, None]


def key_padding_to_attn_mask(keep: Tensor) -> Tensor:
    """Turn a ``(batch, k_len)`` keep-mask into ``(batch, 1, 1, k_len)``.

    The singleton axes broadcast over heads and queries: every query of every head
    ignores the same padded keys.
    """
    check_rank("keep", keep, 2, "(batch, k_len)")
    return keep[:, None, None, :]
# --8<-- [end:padding]


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """Logical AND of the masks that are not None (None when all are None)."""
    out = None
    for mask in masks:
        if mask is None:
            continue
        out = mask if out is None else (out & mask)
    return out
