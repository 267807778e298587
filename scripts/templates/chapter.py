# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # {number}. {title}
#
# This notebook produces every figure, table and number of the chapter "{title}" of
# *The Attention Book*. It runs on a laptop CPU in about a minute:
#
# ```
# python code/chapters/{slug}.py --device cpu          # or --device cuda, --quick
# ```

# %%
from attnbook.chapter import Chapter

ch = Chapter("{slug}")

# %%
import matplotlib.pyplot as plt
import torch

from attnbook.attention import scaled_dot_product_attention
from attnbook.viz import heatmap

device = ch.device
generator = ch.seed(0)

# %% [markdown]
# ## 1. A first experiment
#
# Replace this section with the chapter's experiments. Everything the page shows is written
# through `ch`: figures with `ch.figure`, tables and sentences with `ch.table` and
# `ch.markdown`. Sizes come from `ch.pick(full, quick)`.

# %%
# Three tokens whose keys are made by hand, so that the weights have a story: the query
# is closest to the second key.
tokens = ["cat", "sat", "mat"]
keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]], device=device)
queries = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]], device=device)
values = torch.eye(3, device=device)
size = ch.pick(full=3, quick=3)
output, weights = scaled_dot_product_attention(queries[None, None, :size], keys[None, None, :size],
                                               values[None, None, :size], return_weights=True)


def draw_weights(theme):
    fig, ax = plt.subplots(figsize=(3.2, 2.8))
    heatmap(ax, weights[0, 0], tokens, tokens, theme=theme)
    return fig


ch.figure("weights", draw_weights)
ch.table("weights", ["query", *tokens], [[t, *(f"{w:.3f}" for w in row)] for t, row in zip(tokens, weights[0, 0].tolist())])

# %%
print("written:", ", ".join(sorted(ch.written)))
