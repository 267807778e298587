"""Sparse Transformer attention patterns (Child et al. 2019, arXiv:1904.10509), both causal.

Layout ``(batch, heads, seq, head_dim)``; masks are boolean, **True = may attend**.

With stride ``l`` (the paper takes ``l`` close to ``sqrt(seq)``), query ``i`` attends:

- **strided**: ``A1 = {j : 0 <= i - j < l}`` (the previous ``l`` positions) and
  ``A2 = {j <= i : (i - j) mod l = 0}`` (every ``l``-th position back);
- **fixed**: ``A1 = {j <= i : floor(j / l) = floor(i / l)}`` (its own block of ``l``) and
  ``A2 = {j <= i : j mod l in {l - c, ..., l - 1}}`` (the last ``c`` "summary" positions of
  every block).

The paper splits A1 and A2 across heads or layers, or merges them in one head; the masks
below give either part (``component``) or their union. Each row of either union holds
``O(l + seq / l)`` keys, ``O(sqrt(seq))`` for ``l ~ sqrt(seq)``, and any earlier position
is reachable in two hops.

A pitfall seen in earlier notebooks: a mask that keeps every second key column for every
query is *not* the strided pattern; it never lets anyone attend an odd position.

Three forms of each pattern:

- a dense ``(seq, seq)`` mask (``strided_mask``, ``fixed_mask``), for figures and tests;
- a padded key list ``(seq, max_keys)`` (``strided_key_index``, ``fixed_key_index``):
  ``gather_attention`` computes only the listed scores, for this or any other pattern;
- ``strided_attention`` and ``fixed_attention``, which write the sequence as a grid of
  rows of ``stride`` positions, where both patterns become a few dense matmuls (rows,
  columns, summary columns) joined in one softmax per query. Same result as the other
  two forms; on the CPUs we measured, several times faster than gathering, because a
  matmul reuses each key it loads while a gather copies it once per query.

None of the efficient forms builds a ``seq x seq`` matrix.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import check_positive_int, check_qkv, check_rank, check_self_attention, check_tensor
from .dot_product import repeat_kv, stable_softmax

Tensor = torch.Tensor

_STRIDED_PARTS = ("both", "local", "stride")
_FIXED_PARTS = ("both", "block", "summary")


def _check_component(component: str, allowed: tuple[str, ...]) -> str:
    if component not in allowed:
        raise ValueError(f"component must be one of {allowed}, got {component!r}")
    return component


def _check_num_summary(num_summary: int, stride: int) -> int:
    check_positive_int("num_summary", num_summary)
    if num_summary > stride:
        raise ValueError(
            f"num_summary={num_summary} must be <= stride={stride} "
            f"(the summary positions are the last num_summary of each block of stride)"
        )
    return num_summary


# --8<-- [start:strided_mask]
def strided_mask(seq_len: int, *, stride: int, component: str = "both", device=None) -> Tensor:
    """``(seq_len, seq_len)`` boolean mask of the strided pattern, True = may attend.

    component: "local" (A1: the previous ``stride`` positions, itself included),
    "stride" (A2: positions an exact multiple of ``stride`` back), or "both" (A1 ∪ A2).
    """
    check_positive_int("seq_len", seq_len)
    check_positive_int("stride", stride)
    _check_component(component, _STRIDED_PARTS)
    positions = torch.arange(seq_len, device=device)
    distance = positions[:, None] - positions[None, :]  # (seq, seq): i - j
    causal = distance >= 0
    local = causal & (distance < stride)  # A1
    strided = causal & (distance % stride == 0)  # A2
    return {"local": local, "stride": strided, "both": local | strided}[component]
# --8<-- [end:strided_mask]


# --8<-- [start:fixed_mask]
def fixed_mask(
    seq_len: int, *, stride: int, num_summary: int = 1, component: str = "both", device=None
) -> Tensor:
    """``(seq_len, seq_len)`` boolean mask of the fixed pattern, True = may attend.

    component: "block" (A1: earlier positions in the query's own block of ``stride``),
    "summary" (A2: earlier positions among the last ``num_summary`` of any block), or
    "both" (A1 ∪ A2).
    """
    check_positive_int("seq_len", seq_len)
    check_positive_int("stride", stride)
    _check_num_summary(num_summary, stride)
    _check_component(component, _FIXED_PARTS)
    positions = torch.arange(seq_len, device=device)
    causal = positions[:, None] >= positions[None, :]  # (seq, seq): j <= i
    same_block = (positions[:, None] // stride) == (positions[None, :] // stride)
    is_summary = (positions % stride) >= stride - num_summary  # (seq,) per key
    block = causal & same_block  # A1
    summary = causal & is_summary[None, :]  # A2
    return {"block": block, "summary": summary, "both": block | summary}[component]
# --8<-- [end:fixed_mask]


# --8<-- [start:strided_index]
def strided_key_index(
    seq_len: int, *, stride: int, component: str = "both", device=None
) -> tuple[Tensor, Tensor]:
    """The strided pattern as a padded key list, built without a seq x seq matrix.

    Returns ``(key_index, key_valid)``, both ``(seq_len, max_keys)``: row i lists the keys
    query i attends (slots with ``key_valid`` False are padding; their index is 0). Each
    key appears once, so ``max_keys`` is ``min(stride, seq) + (seq - 1) // stride``.
    """
    check_positive_int("seq_len", seq_len)
    check_positive_int("stride", stride)
    _check_component(component, _STRIDED_PARTS)
    query = torch.arange(seq_len, device=device)[:, None]  # (seq, 1)
    back_local = torch.arange(min(stride, seq_len), device=device)  # A1: i - t, t < stride
    first = 0 if component == "stride" else 1  # t = 0 (j = i) is already in A1
    back_strided = stride * torch.arange(first, (seq_len - 1) // stride + 1, device=device)
    back = {"local": back_local, "stride": back_strided,
            "both": torch.cat([back_local, back_strided])}[component]
    keys = query - back[None, :]  # (seq, max_keys)
    valid = keys >= 0  # keys before the start do not exist
    return keys.clamp(min=0), valid
# --8<-- [end:strided_index]


# --8<-- [start:fixed_index]
def fixed_key_index(
    seq_len: int, *, stride: int, num_summary: int = 1, component: str = "both", device=None
) -> tuple[Tensor, Tensor]:
    """The fixed pattern as a padded key list ``(key_index, key_valid)``, each (seq_len, max_keys).

    Row i lists its own block's earlier keys (A1) and the summary keys (A2); with
    component "both" the summary keys of i's own block are listed once, in A1.
    """
    check_positive_int("seq_len", seq_len)
    check_positive_int("stride", stride)
    _check_num_summary(num_summary, stride)
    _check_component(component, _FIXED_PARTS)
    query = torch.arange(seq_len, device=device)[:, None]  # (seq, 1)
    query_block = query // stride

    block_keys = query_block * stride + torch.arange(min(stride, seq_len), device=device)
    block_valid = block_keys <= query  # (seq, min(stride, seq))

    # Blocks whose summaries are listed; with "both" the last block's are only ever in A1.
    listed_blocks = math.ceil(seq_len / stride) - (1 if component == "both" else 0)
    summary_offsets = torch.arange(stride - num_summary, stride, device=device)  # (c,)
    key_block = torch.arange(listed_blocks, device=device)
    summary = (key_block[:, None] * stride + summary_offsets).flatten()  # (listed_blocks * c,)
    summary_keys = summary[None, :].expand(seq_len, -1)
    summary_valid = summary_keys <= query
    if component == "both":  # list each key once: own-block summaries are already in A1
        summary_valid = summary_valid & (summary_keys // stride < query_block)

    if component == "block":
        keys, valid = block_keys, block_valid
    elif component == "summary":
        keys, valid = summary_keys, summary_valid
    else:
        keys = torch.cat([block_keys, summary_keys], dim=1)
        valid = torch.cat([block_valid, summary_valid], dim=1)
    return torch.where(valid, keys, torch.zeros_like(keys)), valid
# --8<-- [end:fixed_index]


def key_index_from_mask(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Any ``(q_len, k_len)`` boolean mask as a padded key list ``(key_index, key_valid)``.

    ``max_keys`` is the largest number of True entries in a row. Meant for tests and
    small examples: it reads the dense mask, so it saves nothing.
    """
    check_rank("mask", mask, 2, "(q_len, k_len)")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}"
        )
    counts = mask.sum(dim=1)
    max_keys = int(counts.max()) if mask.numel() else 0
    # Sorting puts the allowed keys (True) first; a stable sort keeps them in order.
    order = torch.sort(mask.to(torch.uint8), dim=1, descending=True, stable=True).indices
    key_index = order[:, :max_keys]
    key_valid = torch.arange(max_keys, device=mask.device)[None, :] < counts[:, None]
    return torch.where(key_valid, key_index, torch.zeros_like(key_index)), key_valid


def _check_key_index(key_index: Tensor, key_valid: Tensor, q_len: int, k_len: int) -> None:
    check_rank("key_index", key_index, 2, "(q_len, max_keys)")
    check_tensor("key_valid", key_valid)
    if key_index.dtype != torch.long:
        raise TypeError(f"key_index must be an int64 tensor, got dtype {key_index.dtype}")
    if key_valid.dtype != torch.bool:
        raise TypeError(
            f"key_valid must be a boolean tensor (True = real key), got {key_valid.dtype}"
        )
    if key_valid.shape != key_index.shape:
        raise ValueError(
            f"key_valid must have the shape of key_index {tuple(key_index.shape)}, "
            f"got {tuple(key_valid.shape)}"
        )
    if key_index.shape[0] != q_len:
        raise ValueError(
            f"key_index must have one row per query ({q_len}), got {tuple(key_index.shape)}"
        )
    if key_index.numel() and (int(key_index.min()) < 0 or int(key_index.max()) >= k_len):
        raise ValueError(f"key_index must lie in [0, {k_len - 1}] (k_len={k_len})")


# --8<-- [start:gather]
def gather_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_index: Tensor,
    key_valid: Tensor,
    *,
    scale: float | None = None,
    query_chunk: int | None = None,
) -> Tensor:
    """Attention over a padded key list: only the listed scores are ever computed.

    q: (batch, heads, q_len, d_k); k, v: (batch, kv_heads, k_len, d_k / d_v);
    key_index: int64 (q_len, max_keys), the keys each query attends (shared by batch and
    heads); key_valid: bool (q_len, max_keys), False marks padding slots. A query with
    no valid key gets a zero output. Queries are processed ``query_chunk`` at a time to
    bound memory at about ``query_chunk * max_keys * head_dim`` per (batch, head).
    Returns (batch, heads, q_len, d_v).
    """
    num_heads, _ = check_qkv(q, k, v)
    _check_key_index(key_index, key_valid, q.shape[2], k.shape[2])
    k, v = repeat_kv(k, num_heads), repeat_kv(v, num_heads)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q_len, max_keys = key_index.shape
    if max_keys == 0:  # no query attends anything
        return q.new_zeros(*q.shape[:3], v.shape[-1])
    if query_chunk is None:  # about 2**22 gathered numbers per (batch, head)
        query_chunk = max(1, 2**22 // max(1, max_keys * q.shape[-1]))
    check_positive_int("query_chunk", query_chunk)

    outputs = []
    for start in range(0, q_len, query_chunk):  # chunks bound memory; each is vectorised
        rows = slice(start, start + query_chunk)
        index = key_index[rows]  # (chunk, max_keys)
        keys = k[:, :, index]  # (batch, heads, chunk, max_keys, d_k)
        scores = torch.einsum("bhqd,bhqmd->bhqm", q[:, :, rows] * scale, keys)
        scores = scores.masked_fill(~key_valid[rows], -math.inf)  # padding slots
        weights = stable_softmax(scores, dim=-1)  # (batch, heads, chunk, max_keys)
        outputs.append(torch.einsum("bhqm,bhqmd->bhqd", weights, v[:, :, index]))
    return torch.cat(outputs, dim=2)  # (batch, heads, q_len, d_v)
# --8<-- [end:gather]


def _check_self_attention(q: Tensor, k: Tensor, v: Tensor) -> int:
    return check_self_attention(q, k, v, "sparse attention")


# --8<-- [start:grid]
def _to_grid(x: Tensor, stride: int) -> Tensor:
    """(batch, heads, seq, d) -> (batch, heads, rows, stride, d), rows = ceil(seq / stride).

    Position i sits at row i // stride, column i % stride; the last row is zero-padded.
    In this grid both patterns are simple: strided = the previous ``stride`` positions
    (own row up to the query, previous row after its column) + the query's column above
    it; fixed = own row up to the query + the last ``c`` columns of the rows above.
    Padding positions come after every real query, so causality already hides them.
    """
    seq = x.shape[2]
    rows = math.ceil(seq / stride)
    return F.pad(x, (0, 0, 0, rows * stride - seq)).unflatten(2, (rows, stride))


def _previous_row(grid: Tensor) -> Tensor:
    """Shift a (batch, heads, rows, stride, d) grid down a row: row a gets row a-1, row 0 zeros."""
    return F.pad(grid, (0, 0, 0, 0, 1, 0))[:, :, :-1]
# --8<-- [end:grid]


# --8<-- [start:strided]
def strided_attention(
    q: Tensor, k: Tensor, v: Tensor, *, stride: int, scale: float | None = None
) -> Tensor:
    """Causal strided attention (merged head, A1 ∪ A2) by matmuls on the grid, no seq x seq.

    q: (batch, heads, seq, d_k); k, v: (batch, kv_heads, seq, d_k / d_v). Equals dense
    attention under ``strided_mask(seq, stride=stride)``; memory O(seq * (stride + seq/stride)).
    Returns (batch, heads, seq, d_v).
    """
    num_heads = _check_self_attention(q, k, v)
    check_positive_int("stride", stride)
    k, v = repeat_kv(k, num_heads), repeat_kv(v, num_heads)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q_grid, k_grid, v_grid = (_to_grid(x, stride) for x in (q * scale, k, v))
    rows, device = q_grid.shape[2], q.device

    # A1, the previous `stride` positions: keys of the previous row and of the own row.
    k_pair = torch.cat([_previous_row(k_grid), k_grid], dim=3)  # (b, h, rows, 2*stride, d)
    v_pair = torch.cat([_previous_row(v_grid), v_grid], dim=3)
    local_scores = q_grid @ k_pair.transpose(-2, -1)  # (b, h, rows, stride, 2*stride)
    column, slot = torch.arange(stride, device=device), torch.arange(2 * stride, device=device)
    distance = stride + column[:, None] - slot[None, :]  # i - j, the same in every row
    local_keep = (distance >= 0) & (distance < stride)  # (stride, 2*stride)
    has_previous = (torch.arange(rows, device=device) > 0)[:, None, None] | (slot >= stride)
    local_scores = local_scores.masked_fill(~(local_keep & has_previous), -math.inf)

    # A2 without the query itself (already in A1): the same column, rows above.
    q_cols, k_cols, v_cols = (x.transpose(2, 3) for x in (q_grid, k_grid, v_grid))
    column_scores = q_cols @ k_cols.transpose(-2, -1)  # (b, h, stride, rows, rows)
    above = torch.ones(rows, rows, dtype=torch.bool, device=device).tril(diagonal=-1)
    column_scores = column_scores.masked_fill(~above, -math.inf).transpose(2, 3)

    # One softmax per query over both parts; never empty, since A1 holds the query itself.
    weights = torch.softmax(torch.cat([local_scores, column_scores], dim=-1), dim=-1)
    local_weights, column_weights = weights.split([2 * stride, rows], dim=-1)
    out = local_weights @ v_pair + (column_weights.transpose(2, 3) @ v_cols).transpose(2, 3)
    return out.flatten(2, 3)[:, :, : q.shape[2]]  # (b, h, seq, d_v)
# --8<-- [end:strided]


# --8<-- [start:fixed]
def fixed_attention(
    q: Tensor, k: Tensor, v: Tensor, *, stride: int, num_summary: int = 1,
    scale: float | None = None,
) -> Tensor:
    """Causal fixed attention (merged head, A1 ∪ A2) by matmuls on the grid, no seq x seq.

    q: (batch, heads, seq, d_k); k, v: (batch, kv_heads, seq, d_k / d_v). Equals dense
    attention under ``fixed_mask(seq, stride=stride, num_summary=num_summary)``; memory
    O(seq * (stride + num_summary * seq / stride)). Returns (batch, heads, seq, d_v).
    """
    num_heads = _check_self_attention(q, k, v)
    check_positive_int("stride", stride)
    _check_num_summary(num_summary, stride)
    k, v = repeat_kv(k, num_heads), repeat_kv(v, num_heads)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q_grid, k_grid, v_grid = (_to_grid(x, stride) for x in (q * scale, k, v))
    rows, device = q_grid.shape[2], q.device

    # A1: the own block (grid row), causally.
    block_scores = q_grid @ k_grid.transpose(-2, -1)  # (b, h, rows, stride, stride)
    causal = torch.ones(stride, stride, dtype=torch.bool, device=device).tril()
    block_scores = block_scores.masked_fill(~causal, -math.inf)

    # A2 outside the own block: the last num_summary columns of earlier rows, shared keys.
    k_summary = k_grid[:, :, :, stride - num_summary:].flatten(2, 3)  # (b, h, rows*c, d_k)
    v_summary = v_grid[:, :, :, stride - num_summary:].flatten(2, 3)  # (b, h, rows*c, d_v)
    summary_scores = q_grid @ k_summary.transpose(-2, -1)[:, :, None]  # (b,h,rows,stride,rows*c)
    key_row = torch.arange(rows, device=device).repeat_interleave(num_summary)  # (rows*c,)
    earlier = key_row[None, :] < torch.arange(rows, device=device)[:, None]  # (rows, rows*c)
    summary_scores = summary_scores.masked_fill(~earlier[:, None, :], -math.inf)

    weights = torch.softmax(torch.cat([block_scores, summary_scores], dim=-1), dim=-1)
    block_weights, summary_weights = weights.split([stride, rows * num_summary], dim=-1)
    out = block_weights @ v_grid + summary_weights @ v_summary[:, :, None]
    return out.flatten(2, 3)[:, :, : q.shape[2]]  # (b, h, seq, d_v)
# --8<-- [end:fixed]
