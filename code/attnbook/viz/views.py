"""Views of attention beyond the heatmap: head view, model view, neuron view, stage panels.

The head view and model view draw token-to-token lines, the view that bertviz (Vig,
2019) made popular, with the book's own code. The neuron view splits one score
q_i k_j^T / sqrt(d_k) into its d_k products q_i[d] k_j[d] / sqrt(d_k); the stage panels show
one head's scores on their way to weights: raw, scaled, masked, softmax, dropout.
Weights are (heads, q_len, k_len) or (layers, heads, q_len, k_len); masks True = may attend.
"""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import LinearSegmentedColormap, TwoSlopeNorm, to_rgba

from ..attention.dot_product import attention_dropout, stable_softmax
from ..attention.masks import causal_mask
from .style import COLUMN_INCHES, MIN_FONT_PT, attention_cmap, colors

Tensor = torch.Tensor


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def diverging_cmap(theme: str) -> LinearSegmentedColormap:
    """Signed values: 0 is the page background, negative one hue, positive another."""
    c = colors(theme)
    return LinearSegmentedColormap.from_list(f"signed-{theme}", [c["palette"][3], c["bg"], c["palette"][0]])


# --8<-- [start:neuron]
def score_contributions(q: Tensor, k: Tensor, *, scale: float | None = None) -> Tensor:
    """Split each score into the products that make it: the neuron view.

    q: (..., q_len, d_k); k: (..., k_len, d_k). Returns (..., q_len, k_len, d_k) with
    entry [i, j, d] = q[i, d] * k[j, d] * scale (scale defaults to 1/sqrt(d_k)); summed
    over the last axis it gives the score q_i k_j^T * scale exactly (up to the order of
    floating-point additions).
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share d_k, got {q.shape[-1]} and {k.shape[-1]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return q.unsqueeze(-2) * k.unsqueeze(-3) * scale   # (..., q_len, 1, d) * (..., 1, k_len, d)
# --8<-- [end:neuron]


# --8<-- [start:stages]
def attention_stages(q: Tensor, k: Tensor, mask: Tensor | None = None, *, causal: bool = False,
                     scale: float | None = None, dropout_p: float = 0.0,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """One head's scores on their way to weights, every stage kept.

    q: (..., n, d_k); k: (..., m, d_k); mask: boolean (True = may attend), broadcastable
    to (..., n, m); ``causal`` also hides keys after each query (bottom-right aligned).
    Returns a dict of (..., n, m) tensors: ``raw`` = q k^T, ``scaled`` = raw * scale,
    ``masked`` (hidden entries -inf), ``softmax`` (rows sum to 1), and ``dropout``
    (each weight zeroed with probability ``dropout_p``, survivors divided by 1 - p: what
    multiplies V in training; rows no longer sum to 1).
    """
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    raw = q @ k.transpose(-2, -1)                          # (..., n, m)
    scaled = raw * scale
    keep = torch.ones_like(scaled, dtype=torch.bool)
    if mask is not None:
        keep = keep & mask
    if causal:
        keep = keep & causal_mask(q.shape[-2], k.shape[-2], device=q.device)
    masked = scaled.masked_fill(~keep, float("-inf"))
    weights = stable_softmax(masked, dim=-1)
    dropped = attention_dropout(weights, dropout_p, generator)
    return {"raw": raw, "scaled": scaled, "masked": masked, "softmax": weights, "dropout": dropped}
# --8<-- [end:stages]


def stage_panels(stages: dict[str, Tensor], tokens: Sequence[str], *, theme: str = "light",
                 names: Sequence[str] = ("raw", "scaled", "masked", "softmax", "dropout"), ncols: int = 3):
    """A figure with one panel per stage, ``ncols`` per row: scores on a two-sided scale
    centred on 0 (hidden entries drawn in the grid colour), weights on the attention scale;
    each panel has its own colour bar."""
    c = colors(theme)
    if not 1 <= ncols <= 3:
        raise ValueError(f"ncols must be 1, 2 or 3 (the column fits at most three panels), got {ncols}")
    rows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(rows, ncols, figsize=(COLUMN_INCHES, (COLUMN_INCHES / ncols) * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        w = _np(stages[name])
        if name in ("raw", "scaled", "masked"):
            lim = float(np.abs(w[np.isfinite(w)]).max()) or 1.0   # each panel its own symmetric range
            cmap = diverging_cmap(theme)
            cmap.set_bad(c["grid"])
            image = ax.imshow(np.where(np.isfinite(w), w, np.nan), cmap=cmap,
                              norm=TwoSlopeNorm(0.0, -lim, lim), interpolation="nearest")
        else:
            image = ax.imshow(w, cmap=attention_cmap(theme), vmin=0, vmax=max(1.0, float(w.max())),
                              interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=MIN_FONT_PT)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=MIN_FONT_PT)
        cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03)
        cbar.ax.tick_params(labelsize=MIN_FONT_PT)
        for spine in ax.spines.values():
            spine.set_visible(False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    fig.tight_layout(pad=0.3)
    return fig


# --8<-- [start:head-view]
def head_view(ax, weights, tokens: Sequence[str], *, heads: Sequence[int] | None = None,
              theme: str = "light", threshold: float = 0.05, title: str | None = None) -> None:
    """Token-to-token lines for several heads of one layer, one colour per head.

    weights: (heads, n, n). Queries on the left, keys on the right; a line's opacity
    and width grow with its weight; weights below ``threshold`` are not drawn. Each
    head's lines are shifted a little vertically so that overlapping heads stay visible.
    """
    w = _np(weights)
    n = len(tokens)
    if w.ndim != 3 or w.shape[1:] != (n, n):
        raise ValueError(f"weights must be (heads, {n}, {n}) for {n} tokens, got {w.shape}")
    heads = list(range(w.shape[0])) if heads is None else list(heads)
    c = colors(theme)
    ys = np.arange(n)[::-1].astype(float)
    for rank, head in enumerate(heads):
        shift = 0.12 * (rank - (len(heads) - 1) / 2) / max(1, len(heads) - 1)
        colour = c["palette"][head % len(c["palette"])]
        rows, cols = np.nonzero(w[head] >= threshold)
        strength = w[head, rows, cols]
        segments = [[(0.1, ys[i] + shift), (0.9, ys[j] + shift)] for i, j in zip(rows, cols)]
        ax.add_collection(LineCollection(segments, colors=[to_rgba(colour, min(1.0, 0.2 + 0.8 * a)) for a in strength],
                                         linewidths=0.4 + 2.2 * strength, capstyle="butt"))
    for y, token in zip(ys, tokens):
        ax.text(0.07, y, token, ha="right", va="center", fontsize=MIN_FONT_PT, color=c["fg"])
        ax.text(0.93, y, token, ha="left", va="center", fontsize=MIN_FONT_PT, color=c["fg"])
    ax.set_xlim(-0.45, 1.45)
    ax.set_ylim(-0.8, n - 0.2)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
# --8<-- [end:head-view]


def model_view(weights, *, theme: str = "light", threshold: float = 0.05, cell: float = 0.8,
               row_label: str = "layer", col_label: str = "head"):
    """The model view: a (layers x heads) grid of small line views without token labels.

    weights: (layers, heads, n, n). Each cell draws query i (left) to key j (right) with
    opacity growing with the weight, so a head's pattern (diagonal, previous token,
    one column) is recognisable at a glance.
    """
    w = _np(weights)
    if w.ndim != 4:
        raise ValueError(f"weights must be (layers, heads, n, n), got shape {w.shape}")
    layers, heads, n, _ = w.shape
    cell = min(cell, (COLUMN_INCHES - 0.5) / heads)
    fig, axes = plt.subplots(layers, heads, figsize=(cell * heads + 0.5, 1.3 * cell * layers + 0.4),
                             squeeze=False)
    c = colors(theme)
    ys = np.arange(n)[::-1]
    for r in range(layers):
        for h in range(heads):
            ax = axes[r, h]
            rows, cols = np.nonzero(w[r, h] >= threshold)
            strength = w[r, h, rows, cols]
            ax.add_collection(LineCollection(
                [[(0, ys[i]), (1, ys[j])] for i, j in zip(rows, cols)], linewidths=0.3 + 1.2 * strength,
                colors=[to_rgba(c["palette"][0], min(1.0, 0.15 + 0.85 * a)) for a in strength]))
            ax.set_xlim(-0.1, 1.1)
            ax.set_ylim(-1, n)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(c["grid"])
            if r == 0:
                ax.set_title(f"{col_label} {h}" if heads <= 6 else str(h), fontsize=MIN_FONT_PT)
            if h == 0:
                ax.set_ylabel(f"{row_label} {r}", fontsize=MIN_FONT_PT)
    fig.tight_layout(pad=0.3)
    return fig


def neuron_view(contributions, tokens: Sequence[str], query: int, *, theme: str = "light"):
    """Where one query's scores come from: a (k_len x d_k) map of q_i[d] k_j[d] / sqrt(d_k)
    (two-sided colours, 0 = background) beside the scores they sum to, one bar per key.

    contributions: (q_len, k_len, d_k) from ``score_contributions`` for one head.
    """
    con = _np(contributions)[query]               # (k_len, d_k)
    k_len, d_k = con.shape
    if len(tokens) != k_len:
        raise ValueError(f"got {len(tokens)} tokens for {k_len} keys")
    fig, (left, right) = plt.subplots(1, 2, figsize=(COLUMN_INCHES, 0.22 * k_len + 1.3),
                                      gridspec_kw=dict(width_ratios=[3, 1]), sharey=True)
    lim = float(np.abs(con).max()) or 1.0
    cmap = diverging_cmap(theme)
    image = left.imshow(con, cmap=cmap, norm=TwoSlopeNorm(0.0, -lim, lim), aspect="auto",
                        interpolation="nearest")
    left.set_yticks(range(k_len), tokens, fontsize=MIN_FONT_PT)
    left.set_xlabel("dimension d of the head")
    left.set_ylabel("key")
    cbar = fig.colorbar(image, ax=left, fraction=0.04, pad=0.02)
    cbar.ax.tick_params(labelsize=MIN_FONT_PT)
    cbar.set_label("q[d] k[d] / √d_k", fontsize=MIN_FONT_PT)
    scores = con.sum(-1)
    c = colors(theme)
    right.barh(range(k_len), scores, color=[c["palette"][0] if s >= 0 else c["palette"][3] for s in scores])
    right.axvline(0, color=c["muted"], linewidth=0.8)
    right.set_xlabel("score (sum)")
    right.tick_params(labelsize=MIN_FONT_PT)
    fig.tight_layout(pad=0.3)
    return fig
