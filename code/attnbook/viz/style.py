"""Themes, colours and deterministic saving."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402
from matplotlib.text import Text  # noqa: E402

THEMES = ("light", "dark")

# --8<-- [start:legibility]
# Figures are drawn for the column they live in: about 690 px on a desktop, 360 px on a
# phone (where a reader can enlarge them). A figure wider than the column is shrunk to fit
# it, and its text with it, so the size is capped here and text has a floor.
COLUMN_INCHES = 6.8   # widest figure, in inches (at 100 dpi, about the column's width)
MIN_FONT_PT = 8.0     # smallest text, tick labels included
# --8<-- [end:legibility]

# Okabe–Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]

_COLORS = {
    "light": {"bg": "#ffffff", "fg": "#1f2328", "grid": "#d0d7de", "muted": "#57606a",
              "attn": ["#ffffff", "#c6dbef", "#4292c6", "#08306b"]},
    "dark": {"bg": "#1e2129", "fg": "#e3e6ea", "grid": "#3a3f4b", "muted": "#9aa4b2",
             "attn": ["#1e2129", "#1f4e79", "#3d8fd1", "#c7e6ff"]},
}


def colors(theme: str) -> dict:
    """Background, foreground, grid and muted colours for ``theme``; PALETTE for lines."""
    if theme not in _COLORS:
        raise ValueError(f"theme must be one of {THEMES}, got {theme!r}")
    palette = PALETTE if theme == "light" else ["#56B4E9", "#E69F00", "#009E73", "#FF7F50",
                                                  "#CC79A7", "#F0E442", "#0072B2", "#ffffff"]
    return {**_COLORS[theme], "palette": palette}


def attention_cmap(theme: str) -> LinearSegmentedColormap:
    """The one colour map for attention weights: 0 is the page background, 1 is strongest."""
    return LinearSegmentedColormap.from_list(f"attn-{theme}", colors(theme)["attn"])


@contextlib.contextmanager
def theme_style(theme: str):
    """Matplotlib settings for one theme (used inside every ``draw(theme)``)."""
    c = colors(theme)
    rc = {
        "figure.facecolor": c["bg"], "axes.facecolor": c["bg"], "savefig.facecolor": c["bg"],
        "text.color": c["fg"], "axes.labelcolor": c["fg"], "axes.edgecolor": c["muted"],
        "xtick.color": c["fg"], "ytick.color": c["fg"], "grid.color": c["grid"],
        "axes.prop_cycle": matplotlib.cycler(color=c["palette"]),
        "legend.facecolor": c["bg"], "legend.edgecolor": c["grid"], "legend.labelcolor": c["fg"],
        "font.family": "sans-serif", "font.size": 10, "axes.titlesize": 11,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": False,
        "svg.fonttype": "none", "svg.hashsalt": "attnbook", "figure.dpi": 100,
        "image.cmap": "viridis",
    }
    with plt.rc_context(rc):
        yield c


def check_legible(fig, name: str = "figure") -> None:
    """Raise ``ValueError`` if ``fig`` is wider than the column or has text under the floor.

    Call it on a drawn figure (after ``savefig``), so that tick labels have their text.
    """
    width = float(fig.get_size_inches()[0])
    if width > COLUMN_INCHES + 1e-6:
        raise ValueError(f"{name}: the figure is {width:.2f} in wide, wider than the text column "
                         f"({COLUMN_INCHES} in): stack its panels in rows (at most 2-3 per row)")
    small = sorted({(round(t.get_fontsize(), 1), t.get_text()[:20]) for t in fig.findobj(Text)
                    if t.get_visible() and t.get_text().strip() and t.get_fontsize() < MIN_FONT_PT - 1e-6})
    if small:
        raise ValueError(f"{name}: text smaller than {MIN_FONT_PT} pt cannot be read in the column: "
                         f"{small[:5]} (size, text)")


def save_figure(fig, path: str | Path) -> Path:
    """Save ``fig`` without timestamps or software tags, check it is legible, then close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    metadata = None
    if suffix == ".png":
        metadata = {"Software": None}
    elif suffix == ".svg":
        metadata = {"Date": None, "Creator": None}
    try:
        fig.savefig(path, metadata=metadata, bbox_inches="tight", pad_inches=0.05)
        check_legible(fig, path.name)
    except ValueError:
        path.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


def save_themed(draw: Callable[[str], "plt.Figure"], out_dir: str | Path, name: str,
                fmt: str = "svg") -> list[Path]:
    """Call ``draw(theme)`` for each theme and save ``<name>-<theme>.<fmt>``."""
    paths = []
    for theme in THEMES:
        with theme_style(theme):
            fig = draw(theme)
            paths.append(save_figure(fig, Path(out_dir) / f"{name}-{theme}.{fmt}"))
    return paths
