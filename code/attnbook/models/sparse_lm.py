"""A small Transformer with a pluggable attention pattern, and a long-range retrieval task.

Chapter 11 trains the same model once per sparse pattern and asks whether the pattern lets
the last position see a token planted far back. The pattern is a boolean ``(seq, seq)``
mask, **True = may attend** (any of ``attnbook.attention.sparse``/``local``/``bigbird``'s
masks); every layer and head uses it. The diagonal is always added, so no row is empty.

The task (``needle_task``): a sequence of ``seq_len`` filler tokens hides one *needle*, a
token from a separate alphabet of ``num_symbols`` symbols, at least ``min_distance``
positions before the last position, which holds a query token. The model must name the
needle at the last position. A pattern whose graph cannot carry the needle to the last
position within ``num_layers`` hops can do no better than chance, ``1 / num_symbols``.

Training signal: every position from the needle on is asked to name it
(``needle_targets``); only the last position is scored. That trains the relay positions of
strided and fixed patterns directly, but asks most positions of a window + one global token
pattern to relay through the hub; the chapter's control, ``needle_targets(...,
last_only=True)``, trains the last position alone.

Layout: ids ``(batch, seq)`` -> logits ``(batch, seq, num_symbols)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..attention._checks import check_positive_int, check_rank, check_tensor
from ..data.synthetic import IGNORE_INDEX

Tensor = torch.Tensor


# --8<-- [start:task]
def needle_task(
    batch: int, *, seq_len: int, num_symbols: int, num_filler: int, min_distance: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draw a batch of the needle task. Returns ``(ids, labels, needle_pos)``.

    ids (batch, seq_len): filler ids in [0, num_filler), one needle id
    ``num_filler + label`` at ``needle_pos``, and the query id ``num_filler + num_symbols``
    at the last position; labels (batch,) in [0, num_symbols); needle_pos (batch,) is
    uniform in [0, seq_len - 1 - min_distance], so the needle lies at least
    ``min_distance`` positions before the query.
    """
    for name, value in (("batch", batch), ("seq_len", seq_len), ("num_symbols", num_symbols),
                        ("num_filler", num_filler), ("min_distance", min_distance)):
        check_positive_int(name, value)
    if min_distance > seq_len - 1:
        raise ValueError(f"min_distance={min_distance} leaves no room for the needle in "
                         f"seq_len={seq_len} (at most seq_len - 1)")
    ids = torch.randint(num_filler, (batch, seq_len), generator=generator)
    labels = torch.randint(num_symbols, (batch,), generator=generator)
    needle_pos = torch.randint(seq_len - min_distance, (batch,), generator=generator)
    ids[torch.arange(batch), needle_pos] = num_filler + labels
    ids[:, -1] = num_filler + num_symbols  # the query token
    return ids, labels, needle_pos


def needle_targets(labels: Tensor, needle_pos: Tensor, seq_len: int, *,
                   last_only: bool = False) -> Tensor:
    """(batch, seq_len) targets: the needle's label from its position on, ``IGNORE_INDEX`` before.

    A causal pattern cannot know the needle before it appears, so those positions do not count.
    With ``last_only=True`` only the last position (the scored one) gets the label; every
    other position is ``IGNORE_INDEX``.
    """
    check_rank("labels", labels, 1, "(batch,)")
    check_rank("needle_pos", needle_pos, 1, "(batch,)")
    check_positive_int("seq_len", seq_len)
    positions = torch.arange(seq_len, device=labels.device)[None, :]
    targets = labels[:, None].expand(-1, seq_len)
    keep = positions == seq_len - 1 if last_only else positions >= needle_pos[:, None]
    return torch.where(keep, targets, torch.full_like(targets, IGNORE_INDEX))
# --8<-- [end:task]


# --8<-- [start:model]
class PatternBlock(nn.Module):
    """Pre-norm block whose self-attention may only use the edges of a fixed boolean mask."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(),
                                 nn.Linear(4 * d_model, d_model))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        # (batch, seq, 3 * d_model) -> three of (batch, heads, seq, head_dim)
        q, k, v = self.qkv(self.norm1(x)).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # True = may attend
        x = x + self.proj(attended.transpose(1, 2).flatten(2))  # residual: the self-loop
        return x + self.mlp(self.norm2(x))


class PatternClassifier(nn.Module):
    """Embeddings + learned positions + blocks sharing one attention mask; read out at the end.

    mask: boolean (seq_len, seq_len), True = query i may attend key j; the diagonal is
    added so every query has a key. Returns logits ``(batch, seq, num_classes)`` at every
    position; the task scores the last one.
    """

    def __init__(self, vocab_size: int, num_classes: int, mask: Tensor, *, d_model: int = 32,
                 num_heads: int = 2, num_layers: int = 2):
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("num_classes", num_classes),
                            ("d_model", d_model), ("num_heads", num_heads), ("num_layers", num_layers)):
            check_positive_int(name, value)
        check_tensor("mask", mask)
        if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
            raise ValueError(f"mask must be a boolean (seq, seq) matrix (True = may attend), "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        seq_len = mask.shape[0]
        self.register_buffer("mask", mask | torch.eye(seq_len, dtype=torch.bool, device=mask.device))
        self.embed = nn.Embedding(vocab_size, d_model)
        self.position = nn.Embedding(seq_len, d_model)
        self.blocks = nn.ModuleList(PatternBlock(d_model, num_heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, ids: Tensor) -> Tensor:
        check_rank("ids", ids, 2, "(batch, seq)")
        if ids.shape[1] != self.mask.shape[0]:
            raise ValueError(f"ids has {ids.shape[1]} positions; the mask is for "
                             f"{self.mask.shape[0]}")
        x = self.embed(ids) + self.position(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x, self.mask)
        return self.head(self.norm(x))  # (batch, seq, num_classes)
# --8<-- [end:model]


# --8<-- [start:ceiling]
def needle_reach(reach: Tensor, *, min_distance: int) -> float:
    """Share of the needle positions the last position can reach, given a reachability matrix.

    reach: boolean (seq, seq) from ``attnbook.attention.graph.reachability`` (row i = what
    output i can depend on). Needle positions are 0 .. seq - 1 - min_distance, as in
    ``needle_task``. A model can only name the needles it can reach: its accuracy is at
    most ``share + (1 - share) / num_symbols``.
    """
    check_tensor("reach", reach)
    if reach.dtype != torch.bool or reach.dim() != 2 or reach.shape[0] != reach.shape[1]:
        raise ValueError(f"reach must be a boolean (seq, seq) matrix, got {reach.dtype} "
                         f"{tuple(reach.shape)}")
    seq = reach.shape[0]
    check_positive_int("min_distance", min_distance)
    if min_distance > seq - 1:
        raise ValueError(f"min_distance={min_distance} is more than seq - 1 = {seq - 1}")
    return reach[-1, : seq - min_distance].float().mean().item()
# --8<-- [end:ceiling]
