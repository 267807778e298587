"""Reformer's LSH self-attention (Kitaev, Kaiser & Levskaya, 2020, arXiv:2001.04451).

Queries and keys are shared (``qk``); key j is the unit vector q_j / ‖q_j‖. An angular
locality-sensitive hash h(x) = argmax([xR; −xR]) with a random R ∈ ℝ^{d×b/2} puts
vectors that point the same way into the same bucket with high probability. Tokens are
sorted by (bucket, position), cut into chunks of ``chunk_size``, and each chunk attends to
itself and the chunk before it, so the cost is O(n · chunk_size) instead of O(n²).
Several independent hash rounds are combined by weighting each round's output with the
softmax of its log-sum-exp, and the sort is undone at the end.

Shapes: ``qk`` ``(batch, heads, seq, head_dim)``; ``v`` ``(batch, heads, seq, v_dim)``;
buckets ``(batch, heads, num_rounds, seq)``. The only mask is ``causal`` (a token may
attend positions <= its own; True = may attend in ``full_shared_qk_attention``'s weights).
A token never attends to itself unless nothing else is available (§2 of the paper, "Causal
masking for shared-QK attention"): its own score is replaced by ``SELF_SCORE``, a large
negative number, not by −∞.

Two choices made here, stated so that a reader comparing with trax or Hugging Face's
``modeling_reformer.py`` is not surprised: each round is sorted and chunked on its own
(they sort all rounds as one long sequence), and chunk 0 has no previous chunk (they wrap
around to the last one).
Weighting the rounds by softmax(lse) is the same as one softmax over all the keys the
rounds found, a key counted once per round that found it (no de-duplication; the paper's
Appendix A divides by the number of rounds N_ij that found the key).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_divisible, check_positive_int, check_rank, check_tensor
from .dot_product import stable_softmax
from .masks import causal_mask
from .multihead import merge_heads, split_heads

Tensor = torch.Tensor

SELF_SCORE = -1e5  # a token's score for its own key: loses to any real key, beats a masked one


def _check_num_buckets(num_buckets: int) -> int:
    check_positive_int("num_buckets", num_buckets)
    if num_buckets != 1 and num_buckets % 2 != 0:
        raise ValueError(f"num_buckets must be 1 or even (the hash picks one of ±b/2 directions), "
                         f"got {num_buckets}")
    return num_buckets


def _check_generator(generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator (seeded by the caller), "
            f"got {type(generator).__name__}"
        )
    return generator


def random_rotations(head_dim: int, *, num_buckets: int, num_rounds: int, generator: torch.Generator,
                     dtype=torch.float32, device=None) -> Tensor:
    """One Gaussian R ∈ ℝ^{d×b/2} per round: shape (num_rounds, head_dim, num_buckets // 2)."""
    shape = (num_rounds, head_dim, num_buckets // 2)
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


# --8<-- [start:hash]
def lsh_hash(x: Tensor, *, num_buckets: int, generator: torch.Generator,
             num_rounds: int = 1) -> Tensor:
    """Angular LSH: h(x) = argmax([xR; −xR]), one random R per round.

    x: (batch, heads, seq, head_dim). Returns integer buckets in [0, num_buckets), shape
    (batch, heads, num_rounds, seq). Every batch element and head shares the rounds'
    rotations. The chance that two vectors share a bucket grows with their cosine
    similarity. With ``num_buckets == 1`` every token lands in bucket 0.
    """
    check_rank("x", x, 4, "(batch, heads, seq, head_dim)")
    _check_num_buckets(num_buckets)
    check_positive_int("num_rounds", num_rounds)
    _check_generator(generator)
    batch, heads, seq, head_dim = x.shape
    if num_buckets == 1:
        return torch.zeros(batch, heads, num_rounds, seq, dtype=torch.long, device=x.device)
    rotations = random_rotations(head_dim, num_buckets=num_buckets, num_rounds=num_rounds,
                                 generator=generator, dtype=x.dtype, device=x.device)  # (rounds, d, b/2)
    projected = torch.einsum("bhsd,rdk->bhrsk", x, rotations)     # (batch, heads, rounds, seq, b/2)
    return torch.cat([projected, -projected], dim=-1).argmax(dim=-1)  # (batch, heads, rounds, seq)
# --8<-- [end:hash]


# --8<-- [start:sort]
def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x[..., index[..., i], :] for every i; x (..., seq, dim) broadcast to index's leading axes."""
    x = x.expand(*index.shape, x.shape[-1])
    return x.gather(-2, index[..., None].expand(*index.shape, x.shape[-1]))


def sort_by_bucket(x: Tensor, buckets: Tensor) -> tuple[Tensor, Tensor]:
    """Reorder the rows of x by (bucket, position). Returns ``(x_sorted, order)``.

    x: (..., seq, dim), broadcastable to buckets' leading axes; buckets: (..., seq).
    ``order[..., i]`` is the original position of the i-th sorted token. A *stable* sort
    on the bucket alone keeps positions increasing inside each bucket.
    """
    order = torch.sort(buckets, dim=-1, stable=True).indices   # (..., seq)
    return _gather_rows(x, order), order


def unsort(x_sorted: Tensor, order: Tensor) -> Tensor:
    """Undo ``sort_by_bucket``: gather with the inverse permutation of ``order``."""
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    inverse = torch.empty_like(order).scatter_(-1, order, positions)  # inverse[order[i]] = i
    return _gather_rows(x_sorted, inverse)
# --8<-- [end:sort]


def _look_one_back(x: Tensor) -> Tensor:
    """(..., chunks, chunk, dim) -> (..., chunks, 2·chunk, dim): the previous chunk, then this one.

    Chunk 0 gets a copy of itself in the "previous" slot; its caller masks that slot out.
    """
    previous = torch.cat([x[..., :1, :, :], x[..., :-1, :, :]], dim=-3)   # chunk c-1 beside chunk c
    return torch.cat([previous, x], dim=-2)


# --8<-- [start:chunks]
def attend_within_chunks(queries: Tensor, values: Tensor, positions: Tensor, *, causal: bool,
                         scale: float) -> tuple[Tensor, Tensor]:
    """Each chunk of sorted tokens attends to itself and to the chunk before it.

    queries: (..., chunks, chunk, d); values: (..., chunks, chunk, v_dim); positions:
    (..., chunks, chunk), every sorted token's original position (for the causal and
    self masks). Returns out (..., chunks, chunk, v_dim) and the log-sum-exp of each
    query's scores (..., chunks, chunk), which the rounds are weighted by.
    """
    chunks, chunk_size = positions.shape[-2:]
    keys = _look_one_back(F.normalize(queries, dim=-1))   # k = q/‖q‖, (..., chunks, 2·chunk, d)
    values = _look_one_back(values)                       # (..., chunks, 2·chunk, v_dim)
    key_pos = _look_one_back(positions[..., None])[..., 0]  # (..., chunks, 2·chunk)

    scores = queries @ keys.transpose(-1, -2) * scale              # (..., chunks, chunk, 2·chunk)
    scores = scores.masked_fill(key_pos[..., None, :] == positions[..., :, None], SELF_SCORE)
    hidden = torch.zeros(chunks, 1, 2 * chunk_size, dtype=torch.bool, device=queries.device)
    hidden[0, :, :chunk_size] = True                               # chunk 0 has no previous chunk
    if causal:
        hidden = hidden | (key_pos[..., None, :] > positions[..., :, None])  # by original position
    scores = scores.masked_fill(hidden, -math.inf)                 # the self score is never hidden
    lse = scores.logsumexp(dim=-1)                                 # (..., chunks, chunk)
    return torch.exp(scores - lse[..., None]) @ values, lse
# --8<-- [end:chunks]


# --8<-- [start:lsh_attention]
def lsh_attention(qk: Tensor, v: Tensor, *, num_buckets: int, chunk_size: int, num_rounds: int,
                  generator: torch.Generator, causal: bool = False, scale: float = 1.0,
                  return_buckets: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Shared-QK attention restricted to LSH chunks, combined over hash rounds.

    qk: (batch, heads, seq, d) (queries; keys are their unit vectors); v: (batch, heads,
    seq, v_dim); seq must be a multiple of chunk_size. Scores are q_i·k_j·scale (unit
    keys already keep them O(‖q‖)). Every argument after v is keyword-only (three
    integers that are easy to swap). Returns out (batch, heads, seq, v_dim), or
    ``(out, buckets (batch, heads, num_rounds, seq))`` with ``return_buckets=True``. With v = identity, out is the
    effective (seq × seq) attention matrix.
    """
    check_rank("qk", qk, 4, "(batch, heads, seq, head_dim)")
    check_rank("v", v, 4, "(batch, heads, seq, v_dim)")
    if v.shape[:3] != qk.shape[:3]:
        raise ValueError(f"qk and v must agree in (batch, heads, seq), "
                         f"got qk {tuple(qk.shape)} and v {tuple(v.shape)}")
    check_positive_int("chunk_size", chunk_size)
    batch, heads, seq, _ = qk.shape
    check_divisible("seq", seq, "chunk_size", chunk_size)

    buckets = lsh_hash(qk, num_buckets=num_buckets, generator=generator, num_rounds=num_rounds)
    qk_sorted, order = sort_by_bucket(qk[:, :, None], buckets)     # (b, h, rounds, seq, d)
    v_sorted = _gather_rows(v[:, :, None], order)                  # (b, h, rounds, seq, v_dim)
    split = (batch, heads, num_rounds, seq // chunk_size, chunk_size)
    # (b, h, r, chunks, chunk, v_dim) and (b, h, r, chunks, chunk)
    out, lse = attend_within_chunks(qk_sorted.view(*split, -1), v_sorted.view(*split, -1),
                                    order.view(*split), causal=causal, scale=scale)
    out = unsort(out.view(batch, heads, num_rounds, seq, -1), order)     # (b, h, r, seq, v_dim)
    lse = unsort(lse.view(batch, heads, num_rounds, seq, 1), order)      # (b, h, r, seq, 1)
    out = (torch.softmax(lse, dim=2) * out).sum(dim=2)   # round r weighs e^{lse_r} / Σ e^{lse}
    return (out, buckets) if return_buckets else out
# --8<-- [end:lsh_attention]


# --8<-- [start:full]
def full_shared_qk_attention(qk: Tensor, v: Tensor, *, causal: bool = False, scale: float = 1.0,
                             return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Dense shared-QK attention with the self-mask rule: what LSH attention approximates.

    qk: (batch, heads, seq, d); v: (batch, heads, seq, v_dim). Keys are qk's unit
    vectors; each token's own score is ``SELF_SCORE``; causal hides later positions.
    Returns ``out`` (batch, heads, seq, v_dim), or ``(out, weights)`` with
    ``return_weights=True``, weights (batch, heads, seq, seq) with rows summing to 1.
    """
    check_rank("qk", qk, 4, "(batch, heads, seq, head_dim)")
    check_rank("v", v, 4, "(batch, heads, seq, v_dim)")
    seq = qk.shape[2]
    scores = qk @ F.normalize(qk, dim=-1).transpose(-1, -2) * scale     # (batch, heads, seq, seq)
    is_self = torch.eye(seq, dtype=torch.bool, device=qk.device)
    scores = scores.masked_fill(is_self, SELF_SCORE)
    if causal:
        scores = scores.masked_fill(~causal_mask(seq, device=qk.device), -math.inf)
    weights = stable_softmax(scores, dim=-1)
    out = weights @ v
    return (out, weights) if return_weights else out
# --8<-- [end:full]


class LSHSelfAttention(nn.Module):
    """A thin layer: shared QK projection, value projection, LSH attention, output projection.

    The hash rotations are drawn from the ``generator`` given to ``forward``: pass a
    freshly seeded one to make a call reproducible.
    """

    def __init__(self, d_model: int, num_heads: int, *, num_buckets: int, chunk_size: int,
                 num_rounds: int = 1, causal: bool = False, device=None, dtype=None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("num_heads", num_heads)
        check_divisible("d_model", d_model, "num_heads", num_heads)
        self.num_heads, self.num_buckets = num_heads, _check_num_buckets(num_buckets)
        self.chunk_size = check_positive_int("chunk_size", chunk_size)
        self.num_rounds, self.causal = check_positive_int("num_rounds", num_rounds), causal
        factory = {"device": device, "dtype": dtype}
        self.qk_proj = nn.Linear(d_model, d_model, bias=False, **factory)
        self.v_proj = nn.Linear(d_model, d_model, bias=False, **factory)
        self.out_proj = nn.Linear(d_model, d_model, **factory)

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """x: (batch, seq, d_model) -> (batch, seq, d_model)."""
        check_rank("x", check_tensor("x", x), 3, "(batch, seq, d_model)")
        qk = split_heads(self.qk_proj(x), self.num_heads)     # (batch, heads, seq, head_dim)
        v = split_heads(self.v_proj(x), self.num_heads)
        out = lsh_attention(qk, v, num_buckets=self.num_buckets, chunk_size=self.chunk_size,
                            num_rounds=self.num_rounds, generator=generator, causal=self.causal)
        return self.out_proj(merge_heads(out))                 # (batch, seq, d_model)


# --------------------------------------------------------------------------------------
# Chapter 14: the exact collision probability of the hash (used by code/chapters/hashing.py)
# --------------------------------------------------------------------------------------

# --8<-- [start:collision]
def collision_probability(theta: float, buckets: list[int], *, grid: int = 800,
                          span: float = 6.5) -> list[float]:
    """P[h(x) = h(y)] for each b in ``buckets``: x, y at angle theta, h(x) = argmax([xR; −xR]).

    R is Gaussian d × b/2. Each signed coordinate wins with probability 1/b, so
    P = b · P(u₁ > 0, w₁ > 0, |u_c| < u₁ and |w_c| < w₁ for c = 2..b/2), where (u_c, w_c)
    are independent bivariate normals with correlation ρ = cos θ. Conditioning on
    (u₁, w₁) = (a, a′): P = b ∫∫_{a,a′>0} φ_ρ(a, a′) G(a, a′)^{b/2−1} da da′, with
    G(a, a′) = P(|u| < a, |w| < a′). Computed on a grid of midpoints. Two closed forms check
    it: b = 2 is 1 − θ/π, and b = 4 is (1 − θ/π)² (the winner among ±u₁, ±u₂ is fixed by the
    signs of u₁ + u₂ and u₁ − u₂, two independent Gaussian projections). The answer does not
    depend on head_dim. ``buckets``: even numbers of buckets, each >= 2.
    """
    for b in buckets:
        if b < 2 or b % 2:
            raise ValueError(f"every number of buckets must be even and >= 2, got {b}")
    if not 0 <= theta <= math.pi:
        raise ValueError(f"theta must be an angle in [0, pi], got {theta}")
    if theta <= 0 or theta >= math.pi:
        return [1.0 if theta <= 0 else 0.0 for _ in buckets]
    rho, sigma = math.cos(theta), math.sin(theta)
    dt = span / grid
    t = (torch.arange(grid, dtype=torch.float64) + 0.5) * dt              # midpoints in (0, span)
    s = torch.cat([-t.flip(0), t])                                         # u over (−span, span)
    # P(u ∈ ds, |w| < a′) = φ(s) [Φ((a′ − ρs)/σ) − Φ((−a′ − ρs)/σ)] ds; rows s, columns a′
    inner = (torch.special.ndtr((t[None] - rho * s[:, None]) / sigma)
             - torch.special.ndtr((-t[None] - rho * s[:, None]) / sigma))
    inner = inner * (torch.exp(-s**2 / 2) / math.sqrt(2 * math.pi))[:, None] * dt
    folded = inner[grid:] + inner[:grid].flip(0)                            # |s| in cell a
    G = (folded.cumsum(0) - folded / 2).clamp(0, 1)                         # G(a, a′), a at midpoints
    density = torch.exp(-(t[:, None]**2 - 2 * rho * t[:, None] * t[None] + t[None]**2)
                        / (2 * sigma**2)) / (2 * math.pi * sigma)           # φ_ρ(a, a′)
    return [float(b * (density * G ** (b // 2 - 1)).sum() * dt * dt) for b in buckets]
# --8<-- [end:collision]
