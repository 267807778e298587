"""BigBird block-sparse attention (Zaheer et al. 2020, arXiv:2007.14062), ITC variant.

Layout ``(batch, heads, seq, head_dim)``; masks are boolean, **True = may attend**.

The sequence is cut into blocks of ``block_size`` tokens, and attention is decided per
pair of blocks. A query block attends:

- a **window** of ``num_window_blocks`` blocks centred on itself (an odd number: itself
  and ``(num_window_blocks - 1) / 2`` on each side, clipped at the ends);
- the **global** blocks: in the internal-transformer-construction (ITC) variant, the
  first ``num_global_blocks`` blocks of the sequence. Global blocks also attend to every
  block (their rows are full);
- ``num_random_blocks`` **random** blocks, drawn with a seeded ``torch.Generator`` from
  the blocks that are neither in its window nor global, so each row has exactly that many.

``bigbird_block_index`` draws the pattern once, as a padded list of key blocks per
ordinary query block; ``bigbird_layout`` and ``bigbird_mask`` expand the same draw to a
(num_blocks, num_blocks) and a (seq, seq) boolean matrix for figures and tests;
``bigbird_attention`` gathers only the listed key blocks, so its memory grows as
``seq * (window + global + random) * block_size``.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_divisible, check_positive_int, check_qkv
from .dot_product import repeat_kv, scaled_dot_product_attention, stable_softmax

Tensor = torch.Tensor


def _check_non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r} of type {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _check_pattern(num_blocks: int, num_window_blocks: int, num_global_blocks: int,
                   num_random_blocks: int) -> None:
    check_positive_int("num_blocks", num_blocks)
    check_positive_int("num_window_blocks", num_window_blocks)
    if num_window_blocks % 2 == 0:
        raise ValueError(
            f"num_window_blocks must be odd (the query block plus the same number on each "
            f"side), got {num_window_blocks}"
        )
    _check_non_negative_int("num_global_blocks", num_global_blocks)
    _check_non_negative_int("num_random_blocks", num_random_blocks)
    if num_global_blocks > num_blocks:
        raise ValueError(
            f"num_global_blocks={num_global_blocks} is more than the num_blocks={num_blocks} "
            f"blocks in the sequence"
        )


# --8<-- [start:block_index]
def bigbird_block_index(
    num_blocks: int,
    *,
    num_window_blocks: int = 3,
    num_global_blocks: int = 1,
    num_random_blocks: int = 1,
    seed: int = 0,
    device=None,
) -> tuple[Tensor, Tensor]:
    """The key blocks of every ordinary (non-global) query block, as a padded list.

    Returns ``(key_blocks, valid)``, both ``(num_blocks - g, g + w + r)``: row c is query
    block ``g + c``; its slots hold the g global blocks, then the w window blocks, then
    the r random blocks. Window slots that fall off the sequence or on a global block
    are padding (``valid`` False, index 0), so every key block is listed once.
    """
    _check_pattern(num_blocks, num_window_blocks, num_global_blocks, num_random_blocks)
    g, half = num_global_blocks, num_window_blocks // 2
    query_block = torch.arange(g, num_blocks)[:, None]  # (rows, 1): ordinary query blocks
    all_blocks = torch.arange(num_blocks)[None, :]  # (1, num_blocks)
    rows = num_blocks - g

    global_keys = all_blocks[:, :g].expand(rows, g)  # always valid
    window_keys = query_block + torch.arange(-half, half + 1)[None, :]  # (rows, w)
    window_valid = (window_keys >= g) & (window_keys < num_blocks)  # not global, inside

    # Random blocks: uniform without replacement among the blocks outside window and globals.
    candidate = ((all_blocks - query_block).abs() > half) & (all_blocks >= g)  # (rows, num_blocks)
    fewest = int(candidate.sum(dim=1).min()) if rows else num_random_blocks
    if fewest < num_random_blocks:
        raise ValueError(
            f"num_random_blocks={num_random_blocks} is more than the {fewest} blocks that some "
            f"query block has outside its window and the global blocks (num_blocks={num_blocks})"
        )
    generator = torch.Generator().manual_seed(seed)
    draw = torch.rand(rows, num_blocks, generator=generator, dtype=torch.float64)
    draw = torch.where(candidate, draw, torch.full_like(draw, 2.0))  # non-candidates sort last
    random_keys = draw.argsort(dim=1)[:, :num_random_blocks].sort(dim=1).values  # (rows, r)
    random_keys = random_keys.reshape(rows, num_random_blocks)  # keeps (0, r) when rows == 0

    key_blocks = torch.cat([global_keys, window_keys, random_keys], dim=1)
    valid = torch.cat([
        torch.ones(rows, g, dtype=torch.bool), window_valid,
        torch.ones(rows, num_random_blocks, dtype=torch.bool),
    ], dim=1)
    key_blocks = torch.where(valid, key_blocks, torch.zeros_like(key_blocks))
    return key_blocks.to(device), valid.to(device)
# --8<-- [end:block_index]


# --8<-- [start:layout]
def bigbird_layout(
    num_blocks: int,
    *,
    num_window_blocks: int = 3,
    num_global_blocks: int = 1,
    num_random_blocks: int = 1,
    seed: int = 0,
    device=None,
) -> Tensor:
    """``(num_blocks, num_blocks)`` boolean block layout: True = query block may attend key block.

    Ordinary rows come from ``bigbird_block_index`` (same arguments, same draw); the rows
    of the global blocks are all True.
    """
    key_blocks, valid = bigbird_block_index(
        num_blocks, num_window_blocks=num_window_blocks, num_global_blocks=num_global_blocks,
        num_random_blocks=num_random_blocks, seed=seed,
    )
    g = num_global_blocks
    counts = torch.zeros(num_blocks, num_blocks, dtype=torch.long)
    counts[g:].scatter_add_(1, key_blocks, valid.long())  # add, so padding slots add nothing
    layout = counts > 0
    layout[:g] = True  # global blocks attend to everything
    return layout.to(device)


def bigbird_mask(
    seq_len: int,
    *,
    block_size: int,
    num_window_blocks: int = 3,
    num_global_blocks: int = 1,
    num_random_blocks: int = 1,
    seed: int = 0,
    device=None,
) -> Tensor:
    """``(seq_len, seq_len)`` boolean token mask: each layout entry becomes a block_size square."""
    check_positive_int("seq_len", seq_len)
    check_positive_int("block_size", block_size)
    check_divisible("seq_len", seq_len, "block_size", block_size)
    layout = bigbird_layout(seq_len // block_size, num_window_blocks=num_window_blocks,
                            num_global_blocks=num_global_blocks, num_random_blocks=num_random_blocks,
                            seed=seed, device=device)
    return layout.repeat_interleave(block_size, dim=0).repeat_interleave(block_size, dim=1)
# --8<-- [end:layout]


# --8<-- [start:attention]
def bigbird_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    block_size: int,
    num_window_blocks: int = 3,
    num_global_blocks: int = 1,
    num_random_blocks: int = 1,
    seed: int = 0,
    scale: float | None = None,
) -> Tensor:
    """BigBird block-sparse self-attention; equals dense attention under ``bigbird_mask``.

    q: (batch, heads, seq, d_k); k, v: (batch, kv_heads, seq, d_k / d_v), with seq a
    multiple of block_size. Each ordinary query block gathers its g + w + r key blocks
    (one softmax over them); the global blocks' queries attend all keys. The random
    blocks come from ``seed``, the same draw as ``bigbird_layout``. Returns
    (batch, heads, seq, d_v).
    """
    num_heads, _ = check_qkv(q, k, v)
    seq = q.shape[2]
    if k.shape[2] != seq:
        raise ValueError(f"BigBird is self-attention: q has {seq} positions, k has {k.shape[2]}")
    check_positive_int("block_size", block_size)
    check_divisible("seq_len", seq, "block_size", block_size)
    k, v = repeat_kv(k, num_heads), repeat_kv(v, num_heads)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    num_blocks, g = seq // block_size, num_global_blocks
    key_blocks, valid = bigbird_block_index(num_blocks, num_window_blocks=num_window_blocks,
                                            num_global_blocks=g, num_random_blocks=num_random_blocks,
                                            seed=seed, device=q.device)  # (rows, slots)

    q_blocks = q.unflatten(2, (num_blocks, block_size))[:, :, g:]  # (b, h, rows, block, d_k)
    k_blocks = k.unflatten(2, (num_blocks, block_size))  # (b, h, num_blocks, block, d_k)
    v_blocks = v.unflatten(2, (num_blocks, block_size))
    keys = k_blocks[:, :, key_blocks].flatten(3, 4)  # (b, h, rows, slots * block, d_k)
    values = v_blocks[:, :, key_blocks].flatten(3, 4)  # (b, h, rows, slots * block, d_v)

    scores = (q_blocks * scale) @ keys.transpose(-2, -1)  # (b, h, rows, block, slots * block)
    key_valid = valid.repeat_interleave(block_size, dim=1)  # (rows, slots * block)
    scores = scores.masked_fill(~key_valid[:, None, :], -math.inf)
    weights = stable_softmax(scores, dim=-1)
    ordinary_out = (weights @ values).flatten(2, 3)  # (b, h, (num_blocks - g) * block, d_v)

    global_out = scaled_dot_product_attention(
        q[:, :, : g * block_size], k, v, scale=scale
    )  # (b, h, g * block, d_v): global rows see every key
    return torch.cat([global_out, ordinary_out], dim=2)
# --8<-- [end:attention]
