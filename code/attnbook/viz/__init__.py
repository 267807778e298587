"""One plotting style for the whole book: themes, the attention colour map, and savers.

Every figure is drawn twice, once per theme (``light``, ``dark``), by a ``draw(theme)``
function, and saved deterministically (no dates or software tags in the files, fixed
SVG ids), so that unchanged inputs give byte-identical files.
"""
from .style import (
    COLUMN_INCHES,
    MIN_FONT_PT,
    PALETTE,
    THEMES,
    attention_cmap,
    check_legible,
    colors,
    save_figure,
    save_themed,
    theme_style,
)
from .explorer import explorer_json, explorer_size_kb  # noqa: F401  (the interactive explorer's data)
from .plots import animate_heatmaps, head_grid, heatmap, length_panels, token_links
from .views import attention_stages, head_view, model_view, neuron_view, score_contributions, stage_panels  # noqa: F401,E501

__all__ = [
    "COLUMN_INCHES", "MIN_FONT_PT", "PALETTE", "THEMES", "check_legible", "animate_heatmaps", "attention_cmap", "colors", "head_grid",
    "heatmap", "length_panels", "save_figure", "save_themed", "theme_style", "token_links",
]
