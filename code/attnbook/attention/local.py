"""Local attention: sliding windows, dilated windows and Longformer's local + global attention.

Layout ``(batch, heads, seq, head_dim)``; every mask is boolean, **True = may attend**.

A sliding window of radius ``window`` lets query ``i`` see key ``j`` when
``-window <= j - i <= window`` (two-sided) or ``-window <= j - i <= 0`` (``causal=True``).
With dilation ``d`` the same number of keys are spread ``d`` apart: key ``j`` is seen when
``j - i`` is a multiple of ``d`` and ``|j - i| <= window * d`` (Longformer, Beltagy et al.
2020, Sec. 3.1). Note that the Longformer paper calls the *total* width ``w`` (``w / 2`` on
each side); here ``window`` is the reach on one side.

The dense mask builders (``sliding_window_mask``, ``longformer_mask``) are for figures and
tests. The attention functions never build the ``seq x seq`` matrix: queries are cut into
blocks, each block meets only the keys its window can reach, and memory grows as
``O(seq * window)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import (
    check_key_padding_mask,
    check_positive_int,
    check_rank,
    check_self_attention,
    check_tensor,
)
from .dot_product import repeat_kv, scaled_dot_product_attention

Tensor = torch.Tensor


def _check_window(window: object) -> int:
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int, got {window!r} of type {type(window).__name__}")
    if window <= 0:
        raise ValueError(f"window must be a positive number of keys on each side of the query, got {window}")
    return window


def _check_self_attention(q: Tensor, k: Tensor, v: Tensor) -> int:
    return check_self_attention(q, k, v, "local attention")


# --8<-- [start:window_mask]
def sliding_window_mask(
    seq_len: int, window: int, *, causal: bool = False, dilation: int = 1, device=None
) -> Tensor:
    """``(seq_len, seq_len)`` boolean mask, True where query i may attend key j.

    Allowed: ``j - i`` is a multiple of ``dilation`` and ``-window*dilation <= j - i <=
    window*dilation`` (upper bound 0 when ``causal``). Each row has at most
    ``2*window + 1`` True entries (``window + 1`` when causal), whatever ``seq_len`` is.
    """
    check_positive_int("seq_len", seq_len)
    _check_window(window)
    check_positive_int("dilation", dilation)
    positions = torch.arange(seq_len, device=device)
    offset = positions[None, :] - positions[:, None]  # (seq, seq): j - i
    reach = window * dilation
    upper = 0 if causal else reach
    return (offset >= -reach) & (offset <= upper) & (offset % dilation == 0)
# --8<-- [end:window_mask]


# --8<-- [start:blocked]
def _band_attention(
    q: Tensor, k: Tensor, v: Tensor, before: int, after: int, scale: float,
    key_keep: Tensor | None = None, extra_scores: Tensor | None = None,
    extra_values: Tensor | None = None, extra_keep: Tensor | None = None,
    zero_empty_rows: bool = False,
) -> Tensor:
    """Attention of query i to keys i-before ... i+after, without a seq x seq matrix.

    q, k, v: (..., seq, dim). key_keep: optional boolean broadcasting to (..., seq), False
    hides a key from every window (padding, or a global key counted as an extra column).
    extra_scores (..., seq, g) and extra_values (..., g, dim_v) are more key columns
    (Longformer's global keys) that join the same softmax per query; extra_keep, boolean
    broadcasting to (..., 1, g), hides some of them. zero_empty_rows: a query that may
    attend no key at all gets an output of zeros (needed once keys can be padding).
    """
    seq = q.shape[-2]
    before, after = min(before, seq - 1), min(after, seq - 1)  # no key lies further away
    # Queries per block. Each block computes block * span scores for the ~before+after+1
    # it needs: smaller blocks waste less, larger blocks make better matmuls.
    block = max(math.ceil(max(before, after) / 2), 1)
    span = block + before + after  # keys a block of queries can reach
    num_blocks = math.ceil(seq / block)
    padded = num_blocks * block

    # Queries in blocks: (..., num_blocks, block, dim); the tail is zero padding.
    q_blocks = F.pad(q, (0, 0, 0, padded - seq)).unflatten(-2, (num_blocks, block))
    # Overlapping key blocks; unfold makes them a view of the padded keys, no copy.
    # Block c holds keys c*block - before ... c*block - before + span - 1.
    k_pad = F.pad(k, (0, 0, before, padded - seq + after))
    v_pad = F.pad(v, (0, 0, before, padded - seq + after))
    k_blocks = k_pad.unfold(-2, span, block)  # (..., num_blocks, dim, span)
    v_blocks = v_pad.unfold(-2, span, block).transpose(-1, -2)  # (..., num_blocks, span, dim_v)

    scores = (q_blocks * scale) @ k_blocks  # (..., num_blocks, block, span)
    keep = _band_keep(seq, block, before, after, key_keep, q.device)  # (..., blocks, block, span)
    # The most negative finite number rather than -inf: exp of it is exactly 0 in any row
    # with a real key (every real query sees itself), and padding rows stay NaN-free, so
    # torch's fused softmax can run in place of a slower masked one.
    lowest = torch.finfo(scores.dtype).min
    scores = scores.masked_fill_(~keep, lowest)
    scores = scores.flatten(-3, -2)  # (..., padded, span): one row per query
    if extra_scores is not None:  # one softmax over window keys and extra keys together
        extra_scores = F.pad(extra_scores, (0, 0, 0, padded - seq))
        if extra_keep is not None:
            extra_scores = extra_scores.masked_fill(~extra_keep, lowest)
        scores = torch.cat([scores, extra_scores], dim=-1)
    weights = torch.softmax(scores, dim=-1)
    if zero_empty_rows:
        # A row whose keys are all hidden holds only `lowest`: the softmax spreads it
        # evenly. Multiplying by the allowed pattern zeroes such rows and changes nothing
        # elsewhere (a hidden key's weight there is already exactly 0).
        allowed = keep.flatten(-3, -2)  # (..., padded, span)
        if extra_scores is not None:
            extra = (torch.ones((), dtype=torch.bool, device=q.device) if extra_keep is None
                     else extra_keep)
            lead = torch.broadcast_shapes(allowed.shape[:-1], extra.shape[:-1])
            allowed = torch.cat([allowed.expand(*lead, span),
                                 extra.expand(*lead, extra_scores.shape[-1])], dim=-1)
        weights = weights * allowed

    band_weights = weights[..., :span].unflatten(-2, (num_blocks, block))
    out = (band_weights @ v_blocks).flatten(-3, -2)  # (..., padded, dim_v)
    if extra_values is not None:
        out = out + weights[..., span:] @ extra_values
    return out[..., :seq, :]
# --8<-- [end:blocked]


def _band_keep(
    seq: int, block: int, before: int, after: int, key_keep: Tensor | None, device
) -> Tensor:
    """Boolean (..., num_blocks, block, span): which (query, key slot) pairs are allowed.

    Query r of a block and key slot l of the same block are ``l - before - r`` apart, in
    every block alike, so the band is one small (block, span) pattern; only the ends of
    the sequence (slots holding padding) and ``key_keep`` differ from block to block.
    """
    num_blocks = math.ceil(seq / block)
    span = block + before + after
    slot = torch.arange(span, device=device)
    offset = slot[None, :] - before - torch.arange(block, device=device)[:, None]  # j - i
    in_band = (offset >= -before) & (offset <= after)  # (block, span)
    key_pos = torch.arange(num_blocks, device=device)[:, None] * block - before + slot
    key_real = (key_pos >= 0) & (key_pos < seq)  # (num_blocks, span): False on padding
    if key_keep is not None:
        key_real = key_real & key_keep[..., key_pos.clamp(0, seq - 1)]  # (..., num_blocks, span)
    return in_band & key_real[..., None, :]


# --8<-- [start:dilation]
def _to_residue_classes(x: Tensor, dilation: int) -> Tensor:
    """(batch, heads, seq, f) -> (batch, heads, dilation, ceil(seq/dilation), f).

    Position i = a*dilation + r goes to class r, slot a. A dilated window over the
    sequence is a plain window inside each class: offsets t*dilation become offsets t.
    """
    seq = x.shape[2]
    padded = math.ceil(seq / dilation) * dilation
    x = F.pad(x, (0, 0, 0, padded - seq))
    return x.unflatten(2, (padded // dilation, dilation)).transpose(2, 3)


def _from_residue_classes(x: Tensor, seq: int) -> Tensor:
    """Inverse of ``_to_residue_classes``: (batch, heads, dilation, m, f) -> (batch, heads, seq, f).

    Padding slots (positions >= seq) are dropped.
    """
    return x.transpose(2, 3).flatten(2, 3)[:, :, :seq]
# --8<-- [end:dilation]


def _residue_positions(seq: int, dilation: int, device) -> Tensor:
    """(dilation, ceil(seq/dilation)): the sequence position held by each residue-layout slot.

    Positions >= seq are padding added to fill the last row of the layout.
    """
    padded = math.ceil(seq / dilation) * dilation
    return torch.arange(padded, device=device).view(padded // dilation, dilation).T


# --8<-- [start:sliding]
def sliding_window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int,
    causal: bool = False,
    dilation: int = 1,
    key_padding_mask: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Sliding-window (optionally dilated) self-attention in O(seq * window) memory.

    q: (batch, heads, seq, d_k); k: (batch, kv_heads, seq, d_k); v: (batch, kv_heads,
    seq, d_v). Query i attends keys i + t*dilation for t in [-window, window]
    (t in [-window, 0] when ``causal``) that lie inside the sequence, exactly the True
    entries of ``sliding_window_mask``. key_padding_mask: (batch, seq) boolean, True = real
    token; padded keys are hidden from every window, and a query whose window holds no
    real key gets zeros (as ``scaled_dot_product_attention`` gives a fully masked row).
    Returns the output (batch, heads, seq, d_v).
    """
    num_heads = _check_self_attention(q, k, v)
    _check_window(window)
    check_positive_int("dilation", dilation)
    seq = q.shape[2]
    real = check_key_padding_mask(key_padding_mask, q.shape[0], seq)  # (batch, seq) or None
    k, v = repeat_kv(k, num_heads), repeat_kv(v, num_heads)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    before, after = window, (0 if causal else window)
    padded = real is not None
    if dilation == 1:
        key_keep = None if real is None else real[:, None, :]  # (batch, 1, seq): every head
        return _band_attention(q, k, v, before, after, scale, key_keep=key_keep,
                               zero_empty_rows=padded)

    q, k, v = (_to_residue_classes(x, dilation) for x in (q, k, v))
    key_keep = _residue_keep(seq, dilation, real, q.device)  # padding slots are not keys
    out = _band_attention(q, k, v, before, after, scale, key_keep=key_keep, zero_empty_rows=padded)
    return _from_residue_classes(out, seq)


def _residue_keep(seq: int, dilation: int, real: Tensor | None, device) -> Tensor:
    """Which residue-layout slots hold a real key: (dilation, m), or (batch, 1, dilation, m)
    with a key padding mask ``real`` (batch, seq). Slots past the sequence are never keys."""
    positions = _residue_positions(seq, dilation, device)  # (dilation, m)
    inside = positions < seq
    if real is None:
        return inside
    return inside & real[:, None, positions.clamp(max=seq - 1)]  # (batch, 1, dilation, m)
# --8<-- [end:sliding]


def _check_global_indices(global_indices: object, seq_len: int, device) -> Tensor:
    """Return the global positions as a sorted int64 tensor on ``device``.

    ``global_indices``: ints, an integer tensor of positions, or a boolean (seq_len,) mask.
    """
    if isinstance(global_indices, torch.Tensor):
        if global_indices.dtype == torch.bool:
            if tuple(global_indices.shape) != (seq_len,):
                raise ValueError(f"a boolean global_indices must be a (seq_len,) = ({seq_len},) mask, "
                                 f"got shape {tuple(global_indices.shape)}")
            return global_indices.to(device).nonzero().flatten()
        check_rank("global_indices", global_indices, 1, "(num_global,)")
        if global_indices.is_floating_point() or global_indices.is_complex():
            raise TypeError(f"global_indices must be integers, got dtype {global_indices.dtype}")
        indices = global_indices.to(device=device, dtype=torch.long)
    else:
        values = list(global_indices)  # type: ignore[arg-type]
        if any(isinstance(i, bool) or not isinstance(i, int) for i in values):
            raise TypeError(f"global_indices must be a sequence of ints, got {values!r}")
        indices = torch.tensor(values, dtype=torch.long, device=device)
    if indices.numel():
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= seq_len:
            raise ValueError(
                f"global_indices must lie in [0, {seq_len - 1}] for seq_len={seq_len}, "
                f"got {indices.tolist()}"
            )
    indices = indices.sort().values
    if indices.unique().numel() != indices.numel():
        raise ValueError(f"global_indices must not repeat a position, got {indices.tolist()}")
    return indices


# --8<-- [start:longformer_mask]
def longformer_mask(
    seq_len: int, window: int, global_indices, *, dilation: int = 1, device=None
) -> Tensor:
    """``(seq_len, seq_len)`` boolean mask of Longformer attention, True = may attend.

    global_indices: the global positions (ints or an integer tensor) or a boolean
    (seq_len,) mask, True = global token. For a batch whose sequences have different
    global tokens, build one mask per sequence (``global_mask[b]``).

    A two-sided (dilated) sliding window, plus: global tokens attend to every token
    (their rows are all True) and every token attends to them (their columns are True).
    """
    band = sliding_window_mask(seq_len, window, dilation=dilation, device=device)
    is_global = torch.zeros(seq_len, dtype=torch.bool, device=device)
    is_global[_check_global_indices(global_indices, seq_len, device)] = True
    return band | is_global[:, None] | is_global[None, :]
# --8<-- [end:longformer_mask]


def _check_global_projection(name: str, x: Tensor | None, what: Tensor) -> Tensor:
    """``x`` if given (it must match ``what``, the local tensor it stands in for), else ``what``."""
    if x is None:
        return what
    check_tensor(name, x)
    if x.shape != what.shape or x.dtype != what.dtype:
        raise ValueError(
            f"{name} must match the shape and dtype of the tensor it replaces, "
            f"{tuple(what.shape)} {what.dtype}, got {tuple(x.shape)} {x.dtype}"
        )
    return x


# --8<-- [start:longformer]
def longformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    window: int,
    global_mask: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    dilation: int = 1,
    global_q: Tensor | None = None,
    global_k: Tensor | None = None,
    global_v: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """Longformer self-attention: a sliding window plus global tokens, O(seq * (window + g)).

    q, k, v: (batch, heads, seq, head_dim) (k, v may have fewer heads, as in GQA).
    global_mask: boolean, True = global token, either (seq,) (the same tokens in every
    sequence) or (batch, seq) (each sequence its own, e.g. its [CLS] and question tokens);
    None = no global token. key_padding_mask: (batch, seq) boolean, True = real token;
    padded keys are hidden from every query. Every ordinary token attends its two-sided
    window (radius ``window``, ``dilation`` apart) and the global tokens of its sequence,
    in one softmax; a global token attends every (real) token. global_q/k/v (same shapes
    as q/k/v) are the separate global projections Q_g, K_g, V_g: used, as in the reference
    implementation, for the rows of global tokens only; ordinary rows see global keys
    through k and v. Without them, sequence b equals dense attention under
    ``longformer_mask(seq, window, global_mask[b])`` ANDed with its padding mask; a query
    with no real key to attend gets zeros. Returns (batch, heads, seq, d_v).
    """
    num_heads = _check_self_attention(q, k, v)
    _check_window(window)
    check_positive_int("dilation", dilation)
    batch, seq = q.shape[0], q.shape[2]
    real = check_key_padding_mask(key_padding_mask, batch, seq)     # (batch, seq) or None
    is_global = _check_global_mask(global_mask, batch, seq, q.device)  # (batch, seq)
    global_q = _check_global_projection("global_q", global_q, q)
    global_k = _check_global_projection("global_k", global_k, k)
    global_v = _check_global_projection("global_v", global_v, v)
    k, v = repeat_kv(k, num_heads), repeat_kv(v, num_heads)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale

    # Slot s of sequence b holds the position of its s-th global token; sequences with
    # fewer global tokens than the most fill their last slots with other positions,
    # marked unused. (batch, g), g = the largest number of global tokens in the batch.
    g = int(is_global.sum(dim=-1).max())
    slots = torch.argsort((~is_global).to(torch.uint8), dim=-1, stable=True)[:, :g]
    slot_used = is_global.gather(1, slots)
    slot_real = slot_used if real is None else slot_used & real.gather(1, slots)

    # 1) Ordinary rows: window keys + global columns, one softmax per query.
    global_keys, global_values = _gather_positions(k, slots), _gather_positions(v, slots)
    global_scores = (q @ global_keys.transpose(-2, -1)) * scale  # (batch, heads, seq, g)
    # A global key is counted once, as a column, not again inside the window.
    band_keys = ~is_global if real is None else real & ~is_global  # (batch, seq)
    out = _windowed_with_extra(q, k, v, window, dilation, scale, band_keys[:, None, :],
                               global_scores, global_values, slot_real[:, None, None, :],
                               zero_empty_rows=real is not None)

    # 2) Global rows: a full softmax over all (real) keys with the global projections.
    padding = None if real is None else real[:, None, None, :]  # (batch, 1, 1, seq)
    global_out = scaled_dot_product_attention(
        _gather_positions(global_q, slots), global_k, global_v, padding, scale=scale
    )  # (batch, heads, g, d_v)
    index = slots[:, None, :, None].expand(*global_out.shape)
    # Unused slots point at ordinary positions; `where` keeps those rows from step 1.
    return torch.where(is_global[:, None, :, None], out.scatter(2, index, global_out), out)
# --8<-- [end:longformer]


def _check_global_mask(global_mask: object, batch: int, seq: int, device) -> Tensor:
    """A (batch, seq) boolean tensor of global tokens from a (seq,) or (batch, seq) mask."""
    if global_mask is None:
        return torch.zeros(batch, seq, dtype=torch.bool, device=device)
    check_tensor("global_mask", global_mask)
    if global_mask.dtype != torch.bool:
        raise TypeError(
            f"global_mask must be boolean (True = global token), got dtype {global_mask.dtype}; "
            "turn positions into a mask with torch.zeros(seq, dtype=torch.bool) and mask[positions] = True"
        )
    if tuple(global_mask.shape) == (seq,):
        return global_mask.to(device).expand(batch, seq)
    if tuple(global_mask.shape) != (batch, seq):
        raise ValueError(
            f"global_mask must have shape (seq,) = ({seq},) or (batch, seq) = {(batch, seq)}, "
            f"got {tuple(global_mask.shape)}"
        )
    return global_mask.to(device)


def _gather_positions(x: Tensor, positions: Tensor) -> Tensor:
    """Rows ``positions`` (batch, g) of x (batch, heads, seq, f), per sequence: (batch, heads, g, f)."""
    index = positions[:, None, :, None].expand(x.shape[0], x.shape[1], positions.shape[1], x.shape[3])
    return x.gather(2, index)


def _windowed_with_extra(q, k, v, window, dilation, scale, key_keep, extra_scores, extra_values,
                         extra_keep, *, zero_empty_rows):
    """Two-sided band attention with extra columns, in the residue layout when dilated.

    key_keep (batch, 1, seq) hides window keys; extra_keep (batch, 1, 1, g) hides extra columns.
    """
    if dilation == 1:
        return _band_attention(q, k, v, window, window, scale, key_keep=key_keep,
                               extra_scores=extra_scores, extra_values=extra_values,
                               extra_keep=extra_keep, zero_empty_rows=zero_empty_rows)
    seq = q.shape[2]
    positions = _residue_positions(seq, dilation, q.device)  # (dilation, m)
    keep = (positions < seq) & key_keep[..., positions.clamp(max=seq - 1)]  # (batch, 1, dilation, m)
    q, k, v, extra_scores = (_to_residue_classes(x, dilation) for x in (q, k, v, extra_scores))
    out = _band_attention(q, k, v, window, window, scale, key_keep=keep,
                          extra_scores=extra_scores, extra_values=extra_values[:, :, None],
                          extra_keep=extra_keep[:, :, None], zero_empty_rows=zero_empty_rows)
    return _from_residue_classes(out, seq)
