"""The book's attention plots: heatmap, head grid, token links, animation."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.animation import FuncAnimation, PillowWriter

from .style import COLUMN_INCHES, MIN_FONT_PT, attention_cmap, colors, theme_style


def _as_numpy(weights) -> np.ndarray:
    if hasattr(weights, "detach"):
        weights = weights.detach().cpu().float().numpy()
    return np.asarray(weights, dtype=float)


# --8<-- [start:heatmap]
def heatmap(ax, weights, x_labels: Sequence[str] | None = None, y_labels: Sequence[str] | None = None,
            *, theme: str = "light", vmax: float | None = 1.0, title: str | None = None,
            xlabel: str = "key", ylabel: str = "query"):
    """Draw a (q_len, k_len) weight matrix: rows are queries, columns keys, 0 = background."""
    w = _as_numpy(weights)
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D (q_len, k_len), got shape {w.shape}")
    image = ax.imshow(w, cmap=attention_cmap(theme), vmin=0.0, vmax=vmax, aspect="auto",
                      interpolation="nearest")
    for labels, setter, ticks, n in ((x_labels, ax.set_xticklabels, ax.set_xticks, w.shape[1]),
                                     (y_labels, ax.set_yticklabels, ax.set_yticks, w.shape[0])):
        if labels is not None:
            if len(labels) != n:
                raise ValueError(f"got {len(labels)} labels for an axis of length {n}")
            ticks(range(n))
            setter(labels, fontsize=8)
    if x_labels is not None:
        plt.setp(ax.get_xticklabels(), rotation=60, ha="right", rotation_mode="anchor")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return image
# --8<-- [end:heatmap]


def head_grid(weights, tokens: Sequence[str] | None = None, *, theme: str = "light",
              row_label: str = "layer", col_label: str = "head", cell: float = 1.3,
              show_labels: bool = False):
    """A grid of small heatmaps: ``weights`` is (rows, cols, q, k) or (cols, q, k)."""
    w = _as_numpy(weights)
    if w.ndim == 3:
        w = w[None]
    if w.ndim != 4:
        raise ValueError(f"weights must be (rows, cols, q_len, k_len) or (cols, q_len, k_len), got {w.shape}")
    rows, cols = w.shape[:2]
    cell = min(cell, (COLUMN_INCHES - 0.6) / cols)  # the whole grid fits the text column
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 0.6, cell * rows + 0.4), squeeze=False)
    cmap = attention_cmap(theme)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(w[r, c], cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(colors(theme)["grid"])
            if r == 0:  # narrow cells (many heads) get the number only, the word once above
                ax.set_title(f"{col_label} {c}" if cols <= 6 else str(c), fontsize=MIN_FONT_PT)
            if c == 0 and rows > 1:
                ax.set_ylabel(f"{row_label} {r}", fontsize=8)
            if show_labels and tokens is not None and r == rows - 1:
                ax.set_xticks(range(len(tokens)))
                ax.set_xticklabels(tokens, rotation=90, fontsize=MIN_FONT_PT)
    if cols > 6:
        fig.suptitle(col_label, fontsize=MIN_FONT_PT + 1)
    fig.tight_layout(pad=0.3)
    return fig


def length_panels(axes, bins, longest_trained: int, *, theme: str = "light",
                  titles: Sequence[str] = ("BLEU", "exact match (%)")) -> None:
    """Dress panels of a score (0-100) against source length, one panel per title.

    ``bins`` are ``(shortest, longest)`` source lengths; the panels' x ticks sit at the
    bin centres, and lengths beyond ``longest_trained`` (longer than any training
    sentence) are shaded. Chapters 3 and 7 draw their translation quality this way.
    """
    c = colors(theme)
    centres = [(lo + hi) / 2 for lo, hi in bins]
    for ax, title in zip(axes, titles):
        ax.axvspan(longest_trained + 0.5, bins[-1][1], color=c["grid"], alpha=0.5, lw=0)
        ax.set_xlabel("source length (words)")
        ax.set_title(title)
        ax.set_ylim(0, 100)
        ax.set_xticks(centres, [f"{lo}–{hi}" for lo, hi in bins])


# --8<-- [start:links]
def token_links(ax, weights, tokens: Sequence[str], *, theme: str = "light",
                threshold: float = 0.02, title: str | None = None):
    """Token-to-token view: queries on the left, keys on the right, a line per weight.

    Line opacity and width grow with the weight; weights below ``threshold`` are not drawn.
    """
    w = _as_numpy(weights)
    n = len(tokens)
    if w.shape != (n, n):
        raise ValueError(f"weights must be ({n}, {n}) for {n} tokens, got {w.shape}")
    c = colors(theme)
    ys = np.arange(n)[::-1]
    for i in range(n):
        for j in range(n):
            if w[i, j] >= threshold:
                ax.plot([0.1, 0.9], [ys[i], ys[j]], color=c["palette"][0],
                        alpha=float(min(1.0, 0.15 + 0.85 * w[i, j])), linewidth=0.5 + 2.5 * w[i, j])
    for y, token in zip(ys, tokens):
        ax.text(0.08, y, token, ha="right", va="center", fontsize=8, color=c["fg"])
        ax.text(0.92, y, token, ha="left", va="center", fontsize=8, color=c["fg"])
    ax.set_xlim(-0.35, 1.35)
    ax.set_ylim(-1, n)
    ax.axis("off")
    if title:
        ax.set_title(title)
# --8<-- [end:links]


def animate_heatmaps(frames, path: str | Path, *, theme: str = "light", titles: Sequence[str] | None = None,
                     x_labels=None, y_labels=None, fps: int = 4, size: tuple[float, float] = (4.2, 3.8)) -> Path:
    """Write a GIF with one heatmap per frame (e.g. across layers or training steps)."""
    frames = [_as_numpy(f) for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with theme_style(theme):
        fig, ax = plt.subplots(figsize=size)
        image = heatmap(ax, frames[0], x_labels, y_labels, theme=theme,
                        title=titles[0] if titles else None)
        fig.tight_layout()

        def update(i):
            image.set_data(frames[i])
            if titles:
                ax.set_title(titles[i])
            return (image,)

        anim = FuncAnimation(fig, update, frames=len(frames), blit=False)
        anim.save(path, writer=PillowWriter(fps=fps))
        plt.close(fig)
    return path
