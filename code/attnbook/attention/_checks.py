"""Argument checks shared by every mechanism.

Each helper raises a ``ValueError`` or ``TypeError`` whose message names the argument,
the value or shape it saw, and what was expected, so that a reader who passes a wrong
tensor learns what to fix instead of meeting a broadcast error three calls deeper.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def check_tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_rank(name: str, x: Tensor, rank: int, layout: str = "") -> Tensor:
    """Require ``x.dim() == rank``; ``layout`` names the axes for the message."""
    check_tensor(name, x)
    if x.dim() != rank:
        what = f" {layout}" if layout else ""
        raise ValueError(f"{name} must have {rank} dimensions{what}, got shape {tuple(x.shape)}")
    return x


def check_qkv(q: Tensor, k: Tensor, v: Tensor) -> tuple[int, int]:
    """Check the book's layout ``(batch, heads, seq, head_dim)`` for q, k and v.

    Keys and values may have fewer heads than queries (grouped-query attention) as long
    as the query heads are a multiple of them. Returns ``(num_heads, num_kv_heads)``.
    """
    layout = "(batch, heads, seq, head_dim)"
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_rank(name, x, 4, layout)
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"k and v must agree in (batch, heads, seq), got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have the same batch size, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same head_dim, got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    num_heads, num_kv_heads = q.shape[1], k.shape[1]
    if num_heads % num_kv_heads != 0:
        raise ValueError(
            f"q has {num_heads} heads, which is not a multiple of the {num_kv_heads} heads of k and v "
            f"(q {tuple(q.shape)}, k {tuple(k.shape)})"
        )
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    return num_heads, num_kv_heads


def check_mask(name: str, mask: Tensor | None, target: tuple[int, ...]) -> Tensor | None:
    """Require a boolean mask (True = may attend) that broadcasts to ``target``."""
    if mask is None:
        return None
    check_tensor(name, mask)
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a boolean tensor (True = may attend), got dtype {mask.dtype}; "
            f"convert an additive float mask with `mask == 0` or a 0/1 mask with `.bool()`"
        )
    if mask.dim() > len(target):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}, which has more dimensions than {target}")
    try:
        torch.broadcast_shapes(tuple(mask.shape), target)
    except RuntimeError:
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)}, which does not broadcast to "
            f"(batch, heads, q_len, k_len) = {target}"
        ) from None
    return mask


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    if value % divisor != 0:
        raise ValueError(f"{name}={value} is not divisible by {divisor_name}={divisor}")


def check_key_padding_mask(mask: Tensor | None, batch: int, k_len: int) -> Tensor | None:
    """Require a boolean ``(batch, k_len)`` key padding mask (True = real key), or None."""
    if mask is None:
        return None
    check_tensor("key_padding_mask", mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be boolean (True = real key), got dtype {mask.dtype}")
    if tuple(mask.shape) != (batch, k_len):
        raise ValueError(
            f"key_padding_mask must have shape (batch, k_len) = {(batch, k_len)}, got {tuple(mask.shape)}"
        )
    return mask


def check_self_attention(q: Tensor, k: Tensor, v: Tensor, mechanism: str) -> int:
    """``check_qkv`` plus equal query and key lengths; returns the number of query heads."""
    num_heads, _ = check_qkv(q, k, v)
    if q.shape[2] != k.shape[2]:
        raise ValueError(
            f"{mechanism} is self-attention and needs q and k of the same length, "
            f"got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    return num_heads
