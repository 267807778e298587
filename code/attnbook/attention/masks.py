"""Boolean attention masks. Convention everywhere in the book: **True = may attend**.

This is the convention of ``torch.nn.functional.scaled_dot_product_attention``; note that
``nn.MultiheadAttention``'s ``key_padding_mask`` uses the opposite (True = ignore).
"""
from __future__ import annotations

import torch

from ._checks import check_positive_int, check_rank, check_tensor

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
def padding_mask(lengths: Tensor, max_len: int | None = None, *, side: str = "right") -> Tensor:
    """``(batch, max_len)`` boolean mask, True at real tokens, False at padding.

    ``lengths`` holds each sequence's true length, shape ``(batch,)``. ``side="right"``
    (the default) puts the padding after the tokens, ``side="left"`` before them, as
    batched generation does so that every sequence ends at the last position.
    """
    check_rank("lengths", lengths, 1, "(batch,)")
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got {lengths.tolist()}")
    max_len = int(lengths.max()) if max_len is None else max_len
    if lengths.numel() and int(lengths.max()) > max_len:
        raise ValueError(f"max_len={max_len} is shorter than the longest sequence ({int(lengths.max())})")
    positions = torch.arange(max_len, device=lengths.device)
    if side == "left":
        return positions[None, :] >= (max_len - lengths)[:, None]
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


# --8<-- [start:additive]
def additive_mask(keep: Tensor, dtype: torch.dtype = torch.float32, *, fill: str = "-inf") -> Tensor:
    """Turn a boolean keep-mask (True = may attend) into an additive float mask.

    The result is 0 where ``keep`` is True and ``fill`` elsewhere, to be *added* to the
    scores before the softmax. ``fill="-inf"`` gives exactly zero weight to hidden keys, but
    a row with no allowed key becomes NaN in a plain softmax; ``fill="min"`` uses
    ``torch.finfo(dtype).min``, which on its own never makes NaN but turns such a row into
    a uniform average. Where two such masks are added, an entry hidden by both overflows to
    ``-inf`` and an entry hidden by one stays at the minimum. The book passes boolean masks
    instead; this converter exists to show (and test) those behaviours.
    """
    check_tensor("keep", keep)
    if keep.dtype != torch.bool:
        raise TypeError(f"keep must be a boolean tensor (True = may attend), got dtype {keep.dtype}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    if fill == "-inf":
        value = float("-inf")
    elif fill == "min":
        value = torch.finfo(dtype).min
    else:
        raise ValueError(f"fill must be '-inf' or 'min', got {fill!r}")
    zeros = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    return zeros.masked_fill(~keep, value)
# --8<-- [end:additive]
