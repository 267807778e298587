"""Exact attention computed tile by tile, after FlashAttention (Dao et al., 2022, arXiv:2205.14135).

The n×n score matrix is never stored. Queries are cut into blocks of ``block_q`` rows and
keys/values into blocks of ``block_k`` rows; for each query block we sweep the key
blocks once and keep, per query row, a running maximum ``m``, a running sum of
exponentials ``l`` and an accumulator ``O`` that is rescaled whenever the maximum grows
(the *online softmax*). The backward pass stores only ``(q, k, v, out, logsumexp)`` and
recomputes each tile of probabilities from the log-sum-exp (Dao et al., Algorithm 4, which
keeps m and l separately; one log-sum-exp per row as in FlashAttention-2).

Shapes: q ``(batch, heads, q_len, head_dim)``; k ``(batch, kv_heads, k_len, head_dim)``;
v ``(batch, kv_heads, k_len, v_dim)``. Two masks: ``causal``, bottom-right aligned like
``masks.causal_mask`` (query i is position ``k_len - q_len + i``; True = may attend), and a
key padding mask ``(batch, k_len)``, True = real key. A query that may attend no key gets
an output of zeros and a logsumexp of -inf, as ``scaled_dot_product_attention`` gives zeros.

The tile loop is a Python loop because the loop *is* the lesson; every tile is batched
over batch and heads, so the loop runs ``ceil(q_len / block_q) * ceil(k_len / block_k)``
times whatever the number of heads. ``hbm_accesses_standard`` / ``hbm_accesses_flash``
count the memory traffic of the two algorithms for the chapter's figure (Theorem 2).
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from ._checks import check_key_padding_mask, check_positive_int, check_qkv
from .dot_product import repeat_kv

Tensor = torch.Tensor

DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 256


def _causal_tile(causal: bool, q0: int, q1: int, k0: int, k1: int, offset: int,
                 device) -> tuple[bool, Tensor | None]:
    """Classify the tile (queries q0..q1-1, keys k0..k1-1) under the causal mask.

    Query i sits at position ``offset + i``. Returns ``(skip, future)``: ``skip`` when
    every key is after every query (the tile lies above the diagonal), otherwise a
    boolean ``future`` (q1-q0, k1-k0), True where the key is after the query, or None
    when the whole tile is visible. Only tiles that the diagonal crosses pay for a mask.
    """
    if not causal or k1 - 1 <= offset + q0:     # the last key is not after the first query
        return False, None
    if k0 > offset + q1 - 1:                    # the first key is after the last query
        return True, None
    query_pos = torch.arange(offset + q0, offset + q1, device=device)
    key_pos = torch.arange(k0, k1, device=device)
    return False, key_pos[None, :] > query_pos[:, None]


# --8<-- [start:forward]
def flash_attention_forward(q: Tensor, k: Tensor, v: Tensor, *, causal: bool, scale: float,
                            block_q: int, block_k: int,
                            key_keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Tiled forward pass on flattened heads. Returns ``(out, logsumexp)``.

    q: (batch·heads, q_len, d); k: (batch·heads, k_len, d); v: (batch·heads, k_len, d_v);
    key_keep: None or boolean (batch·heads, k_len), True = real key.
    out: (batch·heads, q_len, d_v); logsumexp: (batch·heads, q_len), the log of each
    softmax denominator, log Σ_j exp(s_ij): all the backward pass needs to rebuild P.
    """
    rows, q_len, _ = q.shape
    k_len, v_dim = k.shape[1], v.shape[2]
    offset = k_len - q_len                      # bottom-right causal alignment
    live = _live_key_blocks(key_keep, k_len, block_k)
    q = q * scale                               # fold the 1/√d into Q once, not into every tile
    out, lse = q.new_empty(rows, q_len, v_dim), q.new_empty(rows, q_len)
    for q0 in range(0, q_len, block_q):
        q1 = min(q0 + block_q, q_len)
        q_tile = q[:, q0:q1]                                    # (rows, bq, d)
        row_max = q.new_full((rows, q1 - q0, 1), -math.inf)     # m
        row_sum = q.new_zeros(rows, q1 - q0, 1)                 # l
        acc = q.new_zeros(rows, q1 - q0, v_dim)                 # O, not yet divided by l
        for k0 in range(0, k_len, block_k):
            k1 = min(k0 + block_k, k_len)
            skip, future = _causal_tile(causal, q0, q1, k0, k1, offset, q.device)
            if skip:
                break                       # every later key block is above the diagonal too
            if not live[k0 // block_k]:
                continue                    # every key of this block is padding, in every row
            scores = torch.bmm(q_tile, k[:, k0:k1].transpose(1, 2))      # S, (rows, bq, bk)
            if future is not None:
                scores.masked_fill_(future, -math.inf)
            if key_keep is not None:
                scores.masked_fill_(~key_keep[:, None, k0:k1], -math.inf)
            new_max = torch.maximum(row_max, scores.amax(dim=-1, keepdim=True))  # m' = max(m, m̃)
            # A row that has seen no visible key yet has m' = -inf; subtracting 0 there instead
            # keeps its P̃ = exp(-inf) = 0 rather than exp(-inf + inf) = NaN. Only the
            # subtraction uses 0: the running maximum stays -inf.
            shift = torch.where(new_max > -math.inf, new_max, torch.zeros_like(new_max))
            probs = scores.sub_(shift).exp_()           # P̃ = exp(S - m'), in place: no 2nd tile
            correction = torch.exp(row_max - shift)     # e^{m - m'} rescales what came before
            row_sum.mul_(correction).add_(probs.sum(dim=-1, keepdim=True))  # l' = e^{m-m'}l + ΣP̃
            acc.mul_(correction).baddbmm_(probs, v[:, k0:k1])               # O' = e^{m-m'}O + P̃V
            row_max = new_max
        # Divide once at the end (FlashAttention-2's order). l = 0 only in a row that saw
        # no key: its output is 0 (O is still 0) and its logsumexp log 0 = -inf.
        out[:, q0:q1] = acc / torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))
        lse[:, q0:q1] = (row_max + row_sum.log()).squeeze(-1)
    return out, lse
# --8<-- [end:forward]


# --8<-- [start:backward]
def flash_attention_backward(grad_out: Tensor, grad_lse: Tensor | None, q: Tensor, k: Tensor,
                             v: Tensor, out: Tensor, lse: Tensor, *, causal: bool, scale: float,
                             block_q: int, block_k: int,
                             key_keep: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of the tiled attention, recomputing P tile by tile from the logsumexp.

    With P = exp(S - lse) and D_i = Σ_c dO_ic O_ic: dV = Pᵀ dO, dP = dO Vᵀ,
    dS = P ∘ (dP - D), dQ = dS K·scale, dK = dSᵀ Q·scale. A gradient arriving on the
    logsumexp adds P ∘ dlse to dS (∂lse_i/∂S_ij = P_ij), i.e. it shifts D by -dlse.
    Masked keys (causal, ``key_keep``) get S = -inf, so P = 0 and no gradient.
    """
    q_len, k_len = q.shape[1], k.shape[1]
    offset = k_len - q_len
    live = _live_key_blocks(key_keep, k_len, block_k)
    # A row that saw no key has lse = -inf and P = 0 everywhere: +inf gives exp(-inf - inf) = 0.
    lse = torch.where(lse > -math.inf, lse, torch.full_like(lse, math.inf))
    delta = (grad_out * out).sum(dim=-1)                # D = rowsum(dO ∘ O), (rows, q_len)
    if grad_lse is not None:
        delta = delta - grad_lse
    grad_q, grad_k, grad_v = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    for k0 in range(0, k_len, block_k):
        if not live[k0 // block_k]:
            continue                                    # padding only: P = 0, no gradient
        k1 = min(k0 + block_k, k_len)
        k_tile, v_tile = k[:, k0:k1], v[:, k0:k1]       # (rows, bk, d), (rows, bk, d_v)
        for q0 in range(0, q_len, block_q):
            q1 = min(q0 + block_q, q_len)
            skip, future = _causal_tile(causal, q0, q1, k0, k1, offset, q.device)
            if skip:
                continue                    # this query block sees none of these keys
            q_tile, grad_out_tile = q[:, q0:q1], grad_out[:, q0:q1]
            scores = torch.bmm(q_tile, k_tile.transpose(1, 2)).mul_(scale)  # S, (rows, bq, bk)
            if future is not None:
                scores.masked_fill_(future, -math.inf)
            if key_keep is not None:
                scores.masked_fill_(~key_keep[:, None, k0:k1], -math.inf)
            probs = scores.sub_(lse[:, q0:q1, None]).exp_()                 # P = exp(S - lse)
            grad_v[:, k0:k1].baddbmm_(probs.transpose(1, 2), grad_out_tile)  # dV += Pᵀ dO
            grad_probs = torch.bmm(grad_out_tile, v_tile.transpose(1, 2))    # dP = dO Vᵀ
            grad_scores = probs.mul_(grad_probs.sub_(delta[:, q0:q1, None]))  # dS = P ∘ (dP - D)
            grad_q[:, q0:q1].baddbmm_(grad_scores, k_tile, alpha=scale)      # dQ += dS K·scale
            # dK += dSᵀ Q·scale
            grad_k[:, k0:k1].baddbmm_(grad_scores.transpose(1, 2), q_tile, alpha=scale)
    return grad_q, grad_k, grad_v
# --8<-- [end:backward]


def _live_key_blocks(key_keep: Tensor | None, k_len: int, block_k: int) -> list[bool]:
    """For each key block, whether any row has a real key in it (one host sync, not one per tile)."""
    num_blocks = math.ceil(k_len / block_k)
    if key_keep is None:
        return [True] * num_blocks
    padded = torch.nn.functional.pad(key_keep, (0, num_blocks * block_k - k_len))
    return padded.view(-1, num_blocks, block_k).any(dim=-1).any(dim=0).tolist()


class _FlashAttention(torch.autograd.Function):
    """Autograd glue: saves (q, k, v, out, lse), never the n×n probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, key_keep, causal, scale, block_q, block_k):
        config = {"causal": causal, "scale": scale, "block_q": block_q, "block_k": block_k}
        out, lse = flash_attention_forward(q, k, v, key_keep=key_keep, **config)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.key_keep, ctx.config = key_keep, config
        return out, lse

    @staticmethod
    @once_differentiable  # the recomputed backward is not itself differentiable
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        grad_q, grad_k, grad_v = flash_attention_backward(
            grad_out.contiguous(), grad_lse, q, k, v, out, lse, key_keep=ctx.key_keep, **ctx.config
        )
        return grad_q, grad_k, grad_v, None, None, None, None, None


# --8<-- [start:public]
def flash_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False,
                    key_padding_mask: Tensor | None = None,
                    scale: float | None = None, block_q: int = DEFAULT_BLOCK_Q,
                    block_k: int = DEFAULT_BLOCK_K,
                    return_lse: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Exact softmax(Q Kᵀ·scale) V with memory linear in length. Returns ``out``, or
    ``(out, logsumexp)`` with ``return_lse=True``.

    q: (batch, heads, q_len, d); k: (batch, kv_heads, k_len, d); v: (batch, kv_heads,
    k_len, d_v), with heads a multiple of kv_heads (grouped kv heads are repeated).
    causal: hide keys after each query, bottom-right aligned (True = may attend below
    the diagonal; needs k_len >= q_len). key_padding_mask: (batch, k_len) boolean, True =
    real key; padded keys get no weight, and a query left with no key gets zeros (and a
    logsumexp of -inf). Key blocks that are padding in every sequence are skipped.
    scale defaults to 1/√d. Blocks of any size work,
    including ones that do not divide the length or exceed it. out: (batch, heads,
    q_len, d_v); logsumexp: (batch, heads, q_len). Both are differentiable.
    """
    num_heads, _ = check_qkv(q, k, v)
    real = check_key_padding_mask(key_padding_mask, q.shape[0], k.shape[2])
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)
    if not q.dtype.is_floating_point:
        raise TypeError(f"q, k and v must be floating point, got {q.dtype}")
    if causal and k.shape[2] < q.shape[2]:
        raise ValueError(f"causal attention needs k_len >= q_len, "
                         f"got q_len={q.shape[2]}, k_len={k.shape[2]}")
    k, v = repeat_kv(k, num_heads), repeat_kv(v, num_heads)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    batch, heads, q_len, _ = q.shape
    # (batch, heads, seq, dim) -> (batch·heads, seq, dim): one bmm per tile serves every head
    flat = [x.reshape(batch * heads, x.shape[2], x.shape[3]).contiguous() for x in (q, k, v)]
    key_keep = None if real is None else real.to(q.device).repeat_interleave(heads, dim=0)  # (b·h, k_len)
    out, lse = _FlashAttention.apply(*flat, key_keep, causal, scale, block_q, block_k)
    out = out.view(batch, heads, q_len, -1)
    return (out, lse.view(batch, heads, q_len)) if return_lse else out
# --8<-- [end:public]


# --8<-- [start:hbm]
def flash_block_sizes(*, head_dim: int, sram_size: int) -> tuple[int, int]:
    """Algorithm 1, line 1: B_c = ⌈M/4d⌉ key rows and B_r = min(⌈M/4d⌉, d) query rows."""
    block_cols = math.ceil(sram_size / (4 * head_dim))
    return min(block_cols, head_dim), block_cols


def hbm_accesses_standard(*, seq_len: int, head_dim: int) -> dict[str, int]:
    """Elements read and written by standard attention (Algorithm 0): Θ(Nd + N²).

    Write S = QKᵀ, read it back for the softmax, write P, read P again for PV.
    """
    n, d = check_positive_int("seq_len", seq_len), check_positive_int("head_dim", head_dim)
    reads = 2 * n * d + n * n + (n * n + n * d)     # Q, K; then S; then P, V
    writes = n * n + n * n + n * d                  # S; P; O
    return {"reads": reads, "writes": writes, "total": reads + writes}


def hbm_accesses_flash(*, seq_len: int, head_dim: int, sram_size: int) -> dict[str, int]:
    """Elements read and written by FlashAttention's forward (Algorithm 1): Θ(N²d²/M).

    M = sram_size in elements. Each of the T_c = ⌈N/B_c⌉ outer steps loads one K/V
    block and then streams all of Q, O, ℓ, m through SRAM once, reading and writing O, ℓ, m.
    """
    n, d = check_positive_int("seq_len", seq_len), check_positive_int("head_dim", head_dim)
    check_positive_int("sram_size", sram_size)
    if sram_size < d:
        raise ValueError(f"sram_size={sram_size} must hold at least one row of head_dim={d} "
                         f"(Theorem 2 needs d <= M)")
    _, block_cols = flash_block_sizes(head_dim=d, sram_size=sram_size)
    outer_steps = math.ceil(n / block_cols)                          # T_c
    reads = 2 * n * d + outer_steps * (2 * n * d + 2 * n)     # K, V once; Q, O, ℓ, m per step
    writes = (n * d + 2 * n) + outer_steps * (n * d + 2 * n)  # initialise O, ℓ, m; then per step
    return {"reads": reads, "writes": writes, "total": reads + writes}
# --8<-- [end:hbm]
