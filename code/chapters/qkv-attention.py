# %% [markdown]
# # Queries, keys, values and scaled dot-product attention
#
# The experiments of the chapter, in the order the page shows them: a hand-built soft
# dictionary lookup with masks, the variance of q·k (Vaswani et al. 2017, footnote 4),
# softmax saturation with and without the 1/√d_k scale, the numerically stable softmax,
# agreement and speed of our written-out attention against `torch`'s fused kernel, and a
# small-scale reproduction of the paper's Table 1 (self-attention vs a recurrent layer).
#
# Run it with `python code/chapters/qkv-attention.py --device {auto,cpu,cuda} [--quick]`.

# %%
from attnbook.chapter import Chapter

ch = Chapter("qkv-attention")

# %%
import math
import time
from collections import deque

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from attnbook.attention import (
    causal_mask,
    key_padding_to_attn_mask,
    padding_mask,
    scaled_dot_product_attention,
    sdpa,
    stable_softmax,
)
from attnbook.viz import colors, heatmap


def sci(x: float) -> str:
    """1.2e-07 style, and a plain 0 for an exact zero."""
    return "0" if x == 0 else f"{x:.1e}"


# %% [markdown]
# ## 1. A soft dictionary lookup you can read
#
# Hand-built queries and keys (no training, no randomness): every word has a class
# (its key) and looks for one class (its query). Scores are q·k/√d_k, so a query
# that finds its class scores 3 and everything else scores 0.

# %%
CLASSES = ["DET", "NOUN", "VERB", "PREP"]  # one key dimension per word class: d_k = 4
LEXICON = {  # token: (its class = what its key says, the class its query looks for)
    "the": ("DET", "PREP"), "a": ("DET", "PREP"),
    "cat": ("NOUN", "DET"), "dog": ("NOUN", "DET"), "mat": ("NOUN", "DET"),
    "sat": ("VERB", "NOUN"), "ran": ("VERB", "NOUN"),
    "on": ("PREP", "VERB"),
}
MATCH = 6.0  # query strength: a match scores 6 * 1 / sqrt(4) = 3 after scaling
PAD = "<pad>"


def embed(tokens: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys, each (seq, d_k=4); a padding token gets all-zero vectors."""
    queries = torch.zeros(len(tokens), len(CLASSES))
    keys = torch.zeros(len(tokens), len(CLASSES))
    for i, token in enumerate(tokens):
        if token == PAD:
            continue
        own_class, wanted_class = LEXICON[token]
        keys[i, CLASSES.index(own_class)] = 1.0
        queries[i, CLASSES.index(wanted_class)] = MATCH
    return queries, keys


sentences = [["the", "cat", "sat", "on", "the", "mat"], ["a", "dog", "ran", PAD, PAD, PAD]]
lengths = torch.tensor([sum(t != PAD for t in s) for s in sentences])  # (batch,)
q_toy, k_toy = (torch.stack(x)[:, None] for x in zip(*(embed(s) for s in sentences)))
# q_toy, k_toy: (batch=2, heads=1, seq=6, d_k=4); values are the keys (not shown)

weights_full = scaled_dot_product_attention(q_toy, k_toy, k_toy, return_weights=True)[1][:, 0]
weights_causal = scaled_dot_product_attention(q_toy, k_toy, k_toy, causal=True, return_weights=True)[1][:, 0]
keep = key_padding_to_attn_mask(padding_mask(lengths, max_len=6))  # (batch, 1, 1, k_len)
weights_padded = scaled_dot_product_attention(q_toy, k_toy, k_toy, keep, return_weights=True)[1][:, 0]

ch.table("lexicon", ["token", "class (its key)", "looks for (its query)"],
         [(t, c, w) for t, (c, w) in LEXICON.items()], align="lll")
row_mat = weights_full[0, 5]
ch.markdown("lookup-numbers",
            f"The query of *sat* looks for a noun. Its scores are 3 for *cat* and *mat* and 0 "
            f"elsewhere, so after the softmax it puts {weights_full[0, 2, 1]:.2f} on *cat*, "
            f"{weights_full[0, 2, 5]:.2f} on *mat* and {weights_full[0, 2, 0]:.3f} on each of "
            f"the other four words. *mat* looks for a determiner and splits its weight "
            f"{row_mat[0]:.2f} / {row_mat[4]:.2f} between the two copies of *the*: "
            f"the two are the same vector, and nothing in q·k says which one is nearer.")
ch.markdown("padding-numbers",
            f"Without the padding mask, the query of *a* (which finds no preposition) spreads "
            f"its weight evenly over all six keys, so {weights_full[1, 0, 3:].sum():.2f} of it "
            f"lands on padding; with the mask, padding gets exactly "
            f"{weights_padded[1, :, 3:].abs().max():.0f} and *a* spreads over the three real words.")


def annotated_heatmap(ax, weights, tokens, allowed, theme, title):
    """Heatmap with each allowed weight printed in its cell; forbidden cells are hatched."""
    c = colors(theme)
    image = heatmap(ax, weights, tokens, tokens, theme=theme, title=title)
    for i in range(weights.shape[0]):
        for j in range(weights.shape[1]):
            if not allowed[i, j]:  # the mask forbids this (query, key) pair
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                                           edgecolor=c["grid"], linewidth=0))
            else:
                ax.text(j, i, f"{weights[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color=c["bg"] if weights[i, j] > 0.55 else c["fg"])
    return image


no_mask = torch.ones(6, 6, dtype=torch.bool)


def draw_lookup(theme: str):
    fig, ax = plt.subplots(figsize=(4.6, 4.0), layout="constrained")
    image = annotated_heatmap(ax, weights_full[0], sentences[0], no_mask, theme,
                              "attention weights, no mask")
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention weight")
    return fig


ch.figure("lookup", draw_lookup)


def draw_masked(theme: str):
    # two panels per row at most, so that the numbers in the cells stay readable in the column
    fig, axes = plt.subplots(2, 2, figsize=(6.7, 6.7), layout="constrained")
    panels = [  # (axes, weights, tokens, mask: True = may attend, title)
        (axes[0, 0], weights_causal[0], sentences[0], causal_mask(6), "causal mask"),
        (axes[1, 0], weights_full[1], sentences[1], no_mask, "padded, no mask"),
        (axes[1, 1], weights_padded[1], sentences[1], keep[1, 0].expand(6, 6),
         "padded, key padding mask"),
    ]
    for ax, w, tokens, allowed, title in panels:
        image = annotated_heatmap(ax, w, tokens, allowed, theme, title)
    legend_ax = axes[0, 1]  # the free slot holds the colour bar and a key to the hatching
    legend_ax.axis("off")
    fig.colorbar(image, ax=legend_ax, location="left", shrink=0.8, label="attention weight")
    legend_ax.add_patch(plt.Rectangle((0.25, 0.45), 0.16, 0.16, fill=False, hatch="///",
                                      edgecolor=colors(theme)["grid"], transform=legend_ax.transAxes))
    legend_ax.text(0.47, 0.53, "forbidden\nby the mask", va="center", fontsize=9,
                   transform=legend_ax.transAxes)
    return fig


ch.figure("masked-attention", draw_masked)

# %% [markdown]
# ## 2. Footnote 4: Var(q·k) = d_k for independent zero-mean, unit-variance components

# %%
gen = ch.seed(4)
d_ks = [4, 8, 16, 32, 64, 128, 256, 512, 1024]
num_pairs = ch.pick(10_000, 2_000)
variance_rows, var_raw, var_scaled, z_scores = [], [], [], []
for d_k in d_ks:
    q = torch.randn(num_pairs, d_k, generator=gen)
    k = torch.randn(num_pairs, d_k, generator=gen)
    dots = (q.double() * k.double()).sum(-1)  # (num_pairs,) independent samples of q·k
    var_raw.append(dots.var().item())
    var_scaled.append((dots / math.sqrt(d_k)).var().item())
    rel_se = math.sqrt((2 + 6 / d_k) / num_pairs)  # standard error of s²/d_k (see the tests)
    z_scores.append((var_scaled[-1] - 1) / rel_se)
    variance_rows.append((d_k, d_k, f"{var_raw[-1]:.1f}", 1, f"{var_scaled[-1]:.3f} ± {rel_se:.3f}"))
ch.table("variance", ["$d_k$", "paper: $\\operatorname{Var}(q \\cdot k) = d_k$",
                      "ours: $\\operatorname{Var}(q \\cdot k)$",
                      "paper: $\\operatorname{Var}(q \\cdot k/\\sqrt{d_k}) = 1$",
                      "ours: $\\operatorname{Var}(q \\cdot k/\\sqrt{d_k})$ ± 1 s.e."],
         variance_rows, align="rrrrr")
ch.markdown("variance-setup", f"Each row uses {num_pairs:,} independent pairs of vectors with "
            f"N(0, 1) components, computed in float64. The largest deviation from the paper's value "
            f"is {max(abs(z) for z in z_scores):.1f} standard errors.")
ch.paper("vaswani2017", "Var(q·k) = d_k for unit-variance components, hence the 1/sqrt(d_k) scale",
         theirs="Var(q·k) = d_k (footnote 4)",
         ours=f"Var(q·k) = {var_raw[d_ks.index(64)]:.1f} at d_k = 64 (Var(q·k)/d_k within "
              f"{max(abs(z) for z in z_scores):.1f} s.e. of 1 for d_k = 4..1024)",
         section="the-paper-reproduced")


def draw_variance(theme: str):
    c = colors(theme)
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    ax.plot(d_ks, d_ks, color=c["muted"], linestyle="--", label="$y = d_k$ (footnote 4)")
    ax.plot(d_ks, var_raw, "o-", color=c["palette"][0], label="Var(q·k), measured")
    ax.plot(d_ks, var_scaled, "s-", color=c["palette"][1], label="Var(q·k / $\\sqrt{d_k}$), measured")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("$d_k$")
    ax.set_ylabel("variance of the score")
    ax.legend(frameon=False)
    ax.grid(True, which="major", alpha=0.5)
    return fig


ch.figure("variance", draw_variance)

# %% [markdown]
# ## 3. What an unscaled softmax does at large d_k
#
# For random queries and keys we measure, per softmax row: its entropy (log m for a uniform
# row over m keys, 0 for a one-hot row), its largest weight, and the Frobenius norm of its
# Jacobian J = diag(p) − p pᵀ, which multiplies every gradient that flows back into the scores.

# %%
def softmax_jacobian_norm(p: torch.Tensor) -> torch.Tensor:
    """‖diag(p) − p pᵀ‖_F for each row of p, without building the matrices.

    ‖J‖²_F = Σ_i p_i² − 2 Σ_i p_i³ + (Σ_i p_i²)²  (expand (δ_ij p_i − p_i p_j)² and sum).
    """
    s2, s3 = (p**2).sum(-1), (p**3).sum(-1)
    return (s2 - 2 * s3 + s2**2).clamp_min(0).sqrt()


# check the closed form against autograd on one row
p_check = torch.softmax(torch.randn(7, generator=ch.seed(1), dtype=torch.float64), -1)
jac = torch.autograd.functional.jacobian(lambda s: torch.softmax(s, -1), p_check.log())
assert torch.allclose(jac.norm(), softmax_jacobian_norm(p_check), atol=1e-12)

gen = ch.seed(5)
num_keys, num_queries = 64, ch.pick(512, 128)
# per d_k: (mean entropy, mean largest weight, median ‖J‖_F, share of rows with a weight > 0.99)
saturation = {"raw": [], "scaled": []}
for d_k in d_ks:
    q = torch.randn(num_queries, d_k, generator=gen, dtype=torch.float64)
    k = torch.randn(num_keys, d_k, generator=gen, dtype=torch.float64)
    for name, scale in (("raw", 1.0), ("scaled", 1 / math.sqrt(d_k))):
        p = stable_softmax(q @ k.T * scale)  # (num_queries, num_keys)
        entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)  # 0·log 0 = 0
        top = p.amax(-1)
        saturation[name].append((entropy.mean().item(), top.mean().item(),
                                 softmax_jacobian_norm(p).median().item(),
                                 (top > 0.99).double().mean().item()))

ch.table("saturation", ["$d_k$", "entropy, unscaled", "entropy, scaled", "max weight, unscaled",
                        "max weight, scaled", "median $\\lVert J \\rVert_F$, unscaled",
                        "median $\\lVert J \\rVert_F$, scaled",
                        "rows > 0.99, unscaled"],
         [(d_k, f"{r[0]:.2f}", f"{s[0]:.2f}", f"{r[1]:.2f}", f"{s[1]:.2f}", sci(r[2]), sci(s[2]),
           f"{100 * r[3]:.0f}%")
          for d_k, r, s in zip(d_ks, saturation["raw"], saturation["scaled"])],
         align="rrrrrrrr")
ch.markdown("saturation-setup",
            f"{num_queries} random queries against {num_keys} random keys per $d_k$, "
            f"$\\mathcal{{N}}(0, 1)$ components; means (medians for $\\lVert J \\rVert_F$) over "
            f"the rows. A uniform row has entropy $\\log {num_keys} = {math.log(num_keys):.2f}$ "
            f"nats, largest weight $1/{num_keys} = {1 / num_keys:.3f}$ and "
            f"$\\lVert J \\rVert_F = {math.sqrt(num_keys - 1) / num_keys:.3f}$.")


def draw_saturation(theme: str):
    c = colors(theme)
    fig, grid = plt.subplots(2, 2, figsize=(6.8, 5.6))
    axes = [grid[0, 0], grid[0, 1], grid[1, 0]]  # the fourth slot holds the legend
    titles = ["mean row entropy (nats)", "mean largest weight", "median ‖softmax Jacobian‖$_F$"]
    uniform = [math.log(num_keys), 1 / num_keys, math.sqrt(num_keys - 1) / num_keys]
    for i, ax in enumerate(axes):
        ax.axhline(uniform[i], color=c["muted"], linestyle=":", label="uniform row")
        ax.plot(d_ks, [r[i] for r in saturation["raw"]], "o-", color=c["palette"][3],
                label="q·k (unscaled)")
        ax.plot(d_ks, [r[i] for r in saturation["scaled"]], "s-", color=c["palette"][0],
                label="q·k / $\\sqrt{d_k}$")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("$d_k$")
        ax.set_title(titles[i], fontsize=10)
        ax.grid(True, alpha=0.5)
    axes[2].set_yscale("log")
    grid[1, 1].axis("off")
    grid[1, 1].legend(*axes[0].get_legend_handles_labels(), frameon=False, fontsize=10,
                      loc="center")
    fig.tight_layout()
    return fig


ch.figure("saturation", draw_saturation)

# %% [markdown]
# ## 4. The stable softmax on a score row that overflows in float32
#
# Six keys that are noisy copies of one random vector b ∈ R^128 (think: six mentions of
# the same word), and the query is b itself. Every unscaled score is near ‖b‖² ≈ 128, and
# exp(128) is larger than float32's largest number.

# %%
gen = ch.seed(6)
base = torch.randn(128, generator=gen)
keys_128 = base + 0.1 * torch.randn(6, 128, generator=gen)  # (6, d_k=128)
scores_row = keys_128 @ base  # (6,) float32 unscaled scores of the query b against every key


def naive_softmax(s: torch.Tensor) -> torch.Tensor:
    return torch.exp(s) / torch.exp(s).sum(-1, keepdim=True)


def show(x: torch.Tensor) -> str:
    """Numbers to 4 decimals, with nan and inf spelled out."""
    return " ".join("nan" if math.isnan(v) else "inf" if math.isinf(v) else f"{v:.4f}"
                    for v in x.tolist())


shift = 300.0
reference = torch.softmax(scores_row.double(), -1)
stable = stable_softmax(scores_row)
stable_shifted = stable_softmax(scores_row - shift)
ch.table("overflow", ["computation (float32 unless stated)", "result"], [
    ("scores s = q·k (unscaled)", " ".join(f"{v:.1f}" for v in scores_row.tolist())),
    ("exp(s)", " ".join(f"{v:.2g}" for v in torch.exp(scores_row).tolist())),
    ("naive softmax exp(s) / Σ exp(s)", show(naive_softmax(scores_row))),
    ("stable softmax (subtract max s first)", show(stable)),
    ("reference: torch.softmax in float64", show(reference)),
    (f"naive softmax of s − {shift:.0f} (every exp underflows: 0 / 0)",
     show(naive_softmax(scores_row - shift))),
    (f"stable softmax of s − {shift:.0f}", show(stable_shifted)),
], align="ll")
ch.markdown("overflow-numbers",
            f"float32's largest finite number is {torch.finfo(torch.float32).max:.2e} = "
            f"e^{math.log(torch.finfo(torch.float32).max):.2f}; the top score here is "
            f"{scores_row.max():.1f}. The stable result differs from the float64 reference by at "
            f"most {sci((stable.double() - reference).abs().max().item())}, and shifting every "
            f"score by {shift:.0f} changes it by at most "
            f"{sci((stable_shifted - stable).abs().max().item())}, "
            f"the rounding error of computing s − {shift:.0f} in float32.")

# %% [markdown]
# ## 5. A query that may attend nothing, and the top-left `is_causal` pitfall

# %%
gen = ch.seed(7)
q5, k5, v5 = (torch.randn(1, 1, n, 4, generator=gen) for n in (3, 5, 5))
dead = torch.ones(3, 5, dtype=torch.bool)
dead[1] = False  # query 1 may attend nothing (e.g. a padding query with query-side masking)
scores5 = (q5 @ k5.transpose(-2, -1)) / 2.0
out_ours, w_ours = scaled_dot_product_attention(q5, k5, v5, dead, return_weights=True)
w_torch_softmax = torch.softmax(scores5.masked_fill(~dead, float("-inf")), -1)
w_big_negative = torch.softmax(scores5.masked_fill(~dead, -1e9), -1)
out_sdpa = F.scaled_dot_product_attention(q5, k5, v5, attn_mask=dead)
ch.table("fully-masked", ["how the masked row is computed", "its weights", "its output"], [
    ("ours: −inf, then stable_softmax", show(w_ours[0, 0, 1]), show(out_ours[0, 0, 1])),
    ("−inf, then torch.softmax", show(w_torch_softmax[0, 0, 1]),
     show((w_torch_softmax @ v5)[0, 0, 1])),
    ("−1e9 instead of −inf, then softmax", show(w_big_negative[0, 0, 1]),
     show((w_big_negative @ v5)[0, 0, 1])),
    (f"torch SDPA (torch {torch.__version__.split('+')[0]}, CPU)", "not returned",
     show(out_sdpa[0, 0, 1])),
], align="lll")

q_len, k_len = 3, 7
top_left = torch.ones(q_len, k_len, dtype=torch.bool).tril()  # what is_causal=True builds
bottom_right = causal_mask(q_len, k_len)  # the book's causal_mask
qc, kc, vc = (torch.randn(1, 2, n, 8, generator=gen) for n in (q_len, k_len, k_len))
ours_causal = sdpa(qc, kc, vc, causal=True)
torch_is_causal = F.scaled_dot_product_attention(qc, kc, vc, is_causal=True)
torch_top_left = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=top_left)
ch.markdown("is-causal-numbers",
            f"With {q_len} queries and {k_len} keys, `F.scaled_dot_product_attention(..., "
            f"is_causal=True)` differs from the bottom-right causal attention by up to "
            f"{(ours_causal - torch_is_causal).abs().max():.2f} (max abs), and equals attention with "
            f"the top-left triangle to {sci((torch_is_causal - torch_top_left).abs().max().item())}.")


def draw_alignment(theme: str):
    c = colors(theme)
    fig, axes = plt.subplots(2, 1, figsize=(6.8, 4.4))  # stacked: wide masks, short rows
    key_labels = [f"key {j}" for j in range(k_len)]
    query_labels = [f"query at {k_len - q_len + i}" for i in range(q_len)]
    for ax, mask, title in ((axes[0], top_left, "is_causal=True: top-left (wrong here)"),
                            (axes[1], bottom_right, f"causal_mask({q_len}, {k_len}): bottom-right")):
        heatmap(ax, mask.float(), key_labels, query_labels, theme=theme, title=title)
        ax.set_xticks(np.arange(-0.5, k_len), minor=True)  # cell borders
        ax.set_yticks(np.arange(-0.5, q_len), minor=True)
        ax.grid(True, which="minor", color=c["grid"], linewidth=1)
        ax.tick_params(which="minor", length=0)
    fig.tight_layout()
    return fig


ch.figure("causal-alignment", draw_alignment)

# %% [markdown]
# ## 6. From scratch vs `torch`'s fused kernel: agreement

# %%
def agreement_case(name: str, dtype: torch.dtype, seed: int = 8):
    gen = torch.Generator().manual_seed(seed)
    heads, kv_heads, q_len, k_len = 4, 4, 64, 64
    mask, causal = None, False
    if name == "grouped kv heads (8 q, 2 kv), causal":
        heads, kv_heads, causal = 8, 2, True
    if name == "q_len 16 < k_len 64, causal":
        q_len, causal = 16, True
    if name == "causal":
        causal = True
    q = torch.randn(2, heads, q_len, 32, generator=gen, dtype=torch.float64)
    k = torch.randn(2, kv_heads, k_len, 32, generator=gen, dtype=torch.float64)
    v = torch.randn(2, kv_heads, k_len, 32, generator=gen, dtype=torch.float64)
    if name == "key padding mask":
        mask = key_padding_to_attn_mask(padding_mask(torch.tensor([64, 40])))
    reference = scaled_dot_product_attention(q, k, v, mask, causal=causal)  # float64, CPU
    q, k, v = (t.to(ch.device, dtype) for t in (q, k, v))
    mask = None if mask is None else mask.to(ch.device)
    ours = scaled_dot_product_attention(q, k, v, mask, causal=causal)
    fused = sdpa(q, k, v, mask, causal=causal)
    err = lambda a, b: (a.double().cpu() - b.double().cpu()).abs().max().item()  # noqa: E731
    return err(ours, fused), err(ours, reference), err(fused, reference)


cases = ["no mask", "key padding mask", "causal", "grouped kv heads (8 q, 2 kv), causal",
         "q_len 16 < k_len 64, causal"]
rows = []
for case in cases:
    e64 = agreement_case(case, torch.float64)
    e32 = agreement_case(case, torch.float32)
    label = {"q_len 16 < k_len 64, causal": "$n = 16$ queries, $m = 64$ keys, causal",
             "grouped kv heads (8 q, 2 kv), causal": "grouped kv heads ($h = 8$, $h_{kv} = 2$), causal",
             }.get(case, case)
    rows.append((label, sci(e64[0]), sci(e32[0]), sci(e32[1]), sci(e32[2])))
ch.table("agreement", ["case (batch 2, $d_k = 32$)", "ours vs torch, float64", "ours vs torch, float32",
                       "ours float32 vs float64 truth", "torch float32 vs float64 truth"], rows,
         align="lrrrr")
ch.markdown("agreement-setup", f"Max abs difference of the outputs on {ch.device.type}; "
            f"float32 machine epsilon is {torch.finfo(torch.float32).eps:.1e} and float64's "
            f"{torch.finfo(torch.float64).eps:.1e}.")

# %% [markdown]
# ## 7. From scratch vs `torch`'s fused kernel: speed
#
# Same-run ratios only (absolute times depend on the machine). The ratio changes
# from run to run, so no figure is drawn from it.

# %%
def _seconds(fn, number: int) -> float:
    """Seconds per call: GPU wall-clock after synchronising, or CPU time of this thread."""
    if ch.device.type == "cuda":
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(number):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / number
    start = time.thread_time()  # CPU time: time spent waiting for a busy machine is not counted
    for _ in range(number):
        fn()
    return (time.thread_time() - start) / number


def time_ratio(fn_a, fn_b, rounds: int | None = None) -> float:
    """time(fn_a) / time(fn_b): medians over rounds in which the two are timed alternately.

    On the CPU both run on one thread and we count that thread's CPU time, so that other
    programs on a shared machine do not distort the ratio (and neither side profits from
    more cores than the other). On a GPU this is wall-clock time.
    """
    rounds = rounds or ch.pick(9, 3)
    threads = torch.get_num_threads()
    if ch.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        for fn in (fn_a, fn_b):  # warm-up (first calls allocate and pick kernels)
            fn()
        # each timed block runs long enough (~5 ms) for the clock to be accurate
        number = {fn: max(1, int(0.005 / max(_seconds(fn, 1), 1e-7))) for fn in (fn_a, fn_b)}
        times_a, times_b = [], []
        for _ in range(rounds):
            times_a.append(_seconds(fn_a, number[fn_a]))
            times_b.append(_seconds(fn_b, number[fn_b]))
    finally:
        torch.set_num_threads(threads)
    return float(np.median(times_a) / np.median(times_b))


speed_rows = []
gen = ch.seed(9)
for n in ch.pick([128, 256, 512], [64, 128]):
    q, k, v = (torch.randn(1, 8, n, 64, generator=gen).to(ch.device) for _ in range(3))
    ratios = [time_ratio(lambda: scaled_dot_product_attention(q, k, v, causal=causal),
                         lambda: sdpa(q, k, v, causal=causal)) for causal in (False, True)]
    weights_mib = 8 * n * n * 4 / 2**20  # one float32 (heads, n, n) tensor
    speed_rows.append((n, f"{ratios[0]:.1f}×", f"{ratios[1]:.1f}×", f"{weights_mib:.1f}"))
ch.table("speed", ["$n = m$", "ours ÷ torch SDPA, no mask", "ours ÷ torch SDPA, causal",
                   "one float32 $(h, n, m)$ weight tensor, MiB"], speed_rows, align="rrrr")
# Which fused kernel did torch pick for this device and dtype? Its backward node says so.
kernel = sdpa(q.detach().requires_grad_(), k, v).grad_fn.name().removesuffix("Backward0")
ch.markdown("speed-kernel", f"On this machine `torch` ran its `{kernel}` kernel.")
CLOCK = {"cpu": "CPU time on one thread", "cuda": "GPU wall-clock time"}[ch.device.type]
ch.markdown("speed-setup", f"batch 1, 8 heads, $d_k = 64$, float32, on {ch.device.type}; "
            f"{CLOCK}, the median of several rounds, the two versions timed alternately in "
            f"the same run after a warm-up.")

# %% [markdown]
# ## 8. The paper, reproduced: Table 1 at small scale
#
# A self-attention layer and an Elman RNN layer (h_t = tanh(x_t W_x + h_{t−1} W_h)) on the
# same input X ∈ R^{n×d}. We count (i) floating-point operations with
# `torch.utils.flop_counter`, (ii) the number of matrix products that must run one after
# another (the longest chain of products in the autograd graph), and (iii) how many products
# separate the first input x_0 from the last output y_{n−1} (the shortest chain).

# %%
def self_attention_layer(xs: list[torch.Tensor], w_q, w_k, w_v) -> torch.Tensor:
    x = torch.stack(xs)  # (n, d)
    q, k, v = x @ w_q, x @ w_k, x @ w_v
    return scaled_dot_product_attention(q[None, None], k[None, None], v[None, None])[0, 0]


def rnn_steps(xs: list[torch.Tensor], w_x, w_h) -> list[torch.Tensor]:
    h = torch.zeros(1, w_h.shape[0], dtype=w_h.dtype, device=w_h.device)
    outputs = []
    for x_t in xs:  # the loop is the point: step t needs step t-1
        h = torch.tanh(x_t[None] @ w_x + h @ w_h)  # (1, d)
        outputs.append(h[0])
    return outputs  # n tensors of shape (d,)


def rnn_layer(xs: list[torch.Tensor], w_x, w_h) -> torch.Tensor:
    return torch.stack(rnn_steps(xs, w_x, w_h))  # (n, d)


def layer_inputs(n: int, d: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    xs = [torch.randn(d, generator=gen, requires_grad=True) for _ in range(n)]
    weights = [torch.randn(d, d, generator=gen) / math.sqrt(d) for _ in range(3)]
    return xs, weights


def count_flops(fn, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def attention_core_flops(n: int, d: int) -> int:
    """FLOPs of softmax(QKᵀ/√d)V alone, without the three projections."""
    x = torch.zeros(1, 1, n, d)
    return count_flops(lambda: scaled_dot_product_attention(x, x, x))


IS_PRODUCT = ("MmBackward", "BmmBackward", "AddmmBackward", "MvBackward", "DotBackward")


def product_chains(output: torch.Tensor, first_input: torch.Tensor) -> tuple[int, int]:
    """(longest chain of matrix products in the graph, shortest chain from first_input to output)."""
    cost = lambda node: int(node.name().startswith(IS_PRODUCT))  # noqa: E731
    children = lambda node: [c for c, _ in node.next_functions if c is not None]  # noqa: E731
    # longest path: iterative post-order DFS with memo (an RNN graph is too deep to recurse)
    longest, stack = {}, [(output.grad_fn, False)]
    while stack:
        node, expanded = stack.pop()
        if node in longest:
            continue
        if expanded:
            longest[node] = cost(node) + max((longest[c] for c in children(node)), default=0)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children(node) if c not in longest)
    # shortest path to x_0's leaf: 0-1 breadth-first search (products cost 1, other nodes 0)
    best, queue, target = {output.grad_fn: 0}, deque([output.grad_fn]), None
    while queue:
        node = queue.popleft()
        if getattr(node, "variable", None) is first_input:
            target = node
        for child in children(node):
            d = best[node] + cost(child)
            if d < best.get(child, 1 << 30):
                best[child] = d
                (queue.appendleft if cost(child) == 0 else queue.append)(child)
    return longest[output.grad_fn], best[target]


d_fixed, n_fixed = 64, 64
ns_flops = ch.pick([16, 32, 64, 128, 256, 512], [16, 64, 128])
ds_flops = ch.pick([16, 32, 64, 128, 256], [16, 32, 64])
flops_n = {"core": [], "layer": [], "rnn": []}
for n in ns_flops:
    xs, (w_q, w_k, w_v) = layer_inputs(n, d_fixed, seed=10)
    flops_n["core"].append(attention_core_flops(n, d_fixed))
    flops_n["layer"].append(count_flops(self_attention_layer, xs, w_q, w_k, w_v))
    flops_n["rnn"].append(count_flops(rnn_layer, xs, w_q, w_k))
flops_d = {"core": [], "rnn": []}
for d in ds_flops:
    xs, (w_q, w_k, _) = layer_inputs(n_fixed, d, seed=11)
    flops_d["core"].append(attention_core_flops(n_fixed, d))
    flops_d["rnn"].append(count_flops(rnn_layer, xs, w_q, w_k))


def slope(xs, ys) -> float:
    """Least-squares exponent p in y ∝ x^p."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


ns_graph = ch.pick([4, 16, 64, 256], [4, 16, 64])
chains = {"attention": [], "rnn": []}
for n in ns_graph:
    xs, (w_q, w_k, w_v) = layer_inputs(n, 16, seed=12)
    chains["attention"].append(product_chains(self_attention_layer(xs, w_q, w_k, w_v)[-1], xs[0]))
    xs, (w_q, w_k, w_v) = layer_inputs(n, 16, seed=12)
    # y_{n-1} itself, not a row of the stacked output: stack's graph node touches every step
    chains["rnn"].append(product_chains(rnn_steps(xs, w_q, w_k)[-1], xs[0]))

n_list = ", ".join(str(n) for n in ns_graph)
ch.table("table1", ["layer type", "paper: complexity per layer", r"ours: FLOPs $\propto n^a d^b$",
                    "paper: sequential operations", f"ours: sequential products, n = {n_list}",
                    "paper: maximum path length", f"ours: path x₀ → y₍ₙ₋₁₎, n = {n_list}"], [
    ("self-attention", "O(n²·d)",
     f"a = {slope(ns_flops, flops_n['core']):.2f}, b = {slope(ds_flops, flops_d['core']):.2f}",
     "O(1)", ", ".join(str(c[0]) for c in chains["attention"]),
     "O(1)", ", ".join(str(c[1]) for c in chains["attention"])),
    ("recurrent", "O(n·d²)",
     f"a = {slope(ns_flops, flops_n['rnn']):.2f}, b = {slope(ds_flops, flops_d['rnn']):.2f}",
     "O(n)", ", ".join(str(c[0]) for c in chains["rnn"]),
     "O(n)", ", ".join(str(c[1]) for c in chains["rnn"])),
], align="lcccccc")
ch.paper("vaswani2017", "self-attention costs O(n^2 d) per layer, a recurrent layer O(n d^2)",
         theirs="O(n²·d) and O(n·d²) (Table 1)",
         ours=f"FLOPs measured: n^{slope(ns_flops, flops_n['core']):.2f} d^{slope(ds_flops, flops_d['core']):.2f}"
              f" and n^{slope(ns_flops, flops_n['rnn']):.2f} d^{slope(ds_flops, flops_d['rnn']):.2f}",
         section="the-paper-reproduced")
ch.paper("vaswani2017", "sequential operations and path length: O(1) for self-attention, O(n) recurrent",
         theirs="O(1) vs O(n) (Table 1)",
         ours=f"path x0 -> y(n-1): {chains['attention'][-1][1]} products for attention, "
              f"{chains['rnn'][-1][1]} for the RNN at n = {ns_graph[-1]}",
         section="the-paper-reproduced")
ch.markdown("table1-setup",
            f"FLOP exponents fitted over n = {ns_flops[0]}…{ns_flops[-1]} at d = {d_fixed} and over "
            f"d = {ds_flops[0]}…{ds_flops[-1]} at n = {n_fixed}; the self-attention FLOPs are those of "
            f"softmax(QKᵀ/√d)V, the part Table 1 counts. With the three projections, the layer at "
            f"n = d = {d_fixed} costs {flops_n['layer'][ns_flops.index(64)] / 1e6:.2f} MFLOP against "
            f"{flops_n['core'][ns_flops.index(64)] / 1e6:.2f} for the core and "
            f"{flops_n['rnn'][ns_flops.index(64)] / 1e6:.2f} for the RNN. "
            f"Chains are counted at d = 16.")

# wall-clock: attention (fused) vs torch's own RNN (a C++ loop, no Python overhead), same run
gen = ch.seed(13)
rnn = torch.nn.RNN(d_fixed, d_fixed, bias=False, batch_first=True).to(ch.device)
w_q, w_k, w_v = (torch.randn(d_fixed, d_fixed, generator=gen).to(ch.device) / 8 for _ in range(3))
xs_check, _ = layer_inputs(5, d_fixed, seed=14)
with torch.no_grad():  # our loop is the same function as nn.RNN with W_x = W_ihᵀ, W_h = W_hhᵀ
    ours_rnn = rnn_layer([x.to(ch.device) for x in xs_check],
                         rnn.weight_ih_l0.T, rnn.weight_hh_l0.T)
    torch_rnn = rnn(torch.stack(xs_check).to(ch.device)[None])[0][0]
    assert torch.allclose(ours_rnn, torch_rnn, atol=1e-5)


def attention_layer_fast(x):  # (1, n, d) -> (1, n, d), one head
    q, k, v = ((x @ w)[:, None] for w in (w_q, w_k, w_v))  # (1, heads=1, n, d)
    return sdpa(q, k, v)


time_raw = []  # (n, FLOPs ratio, time ratio), attention layer ÷ RNN layer
with torch.no_grad():
    for n in ch.pick([64, 128, 512], [64, 128]):
        x = torch.randn(1, n, d_fixed, generator=gen).to(ch.device)
        ratio = time_ratio(lambda: attention_layer_fast(x), lambda: rnn(x))
        i = ns_flops.index(n)  # FLOPs counted above, projections included
        time_raw.append((n, flops_n["layer"][i] / flops_n["rnn"][i], ratio))
time_rows = [(n, f"{f:.1f}", f"{t:.2f}") for n, f, t in time_raw]
ch.table("table1-time", ["$n$ ($d = 64$)", "FLOPs: attention layer ÷ RNN layer",
                         "time: attention layer ÷ RNN layer"], time_rows, align="rrr")
(n_first, flops_first, time_first), (n_last, flops_last, time_last) = time_raw[0], time_raw[-1]
flops_growth, time_growth = flops_last / flops_first, time_last / time_first
faster = [n for n, _, t in time_raw if t < 1]  # lengths at which attention wins
if len(faster) == len(time_raw):
    who = "the attention layer was faster at every length measured"
elif not faster:
    who = "the RNN layer was faster at every length measured"
else:
    who = (f"the attention layer was faster at n = {', '.join(map(str, faster))}, "
           f"the RNN layer at the others")
ch.markdown("table1-time-summary",
            f"From n = {n_first} to n = {n_last}, the attention layer's FLOPs relative to the RNN's "
            f"grow {flops_growth:.1f}-fold, while its time relative to the RNN's changes by a factor "
            f"of {time_growth:.2f}: relative to the RNN, attention gets through its FLOPs "
            f"{flops_growth / time_growth:.1f} times faster at the longer length. "
            f"On this machine, {who}.")
ch.markdown("table1-time-setup", f"One sequence, d = {d_fixed}, float32, on {ch.device.type}; the "
            f"attention layer is three projections and `torch`'s fused SDPA, the RNN is `torch.nn.RNN` "
            f"(its loop runs in C++). {CLOCK}, the median of several rounds, the "
            f"two timed alternately in the same run; the ratio varies from run to run.")


def draw_table1(theme: str):
    c = colors(theme)
    fig, axes = plt.subplots(2, 1, figsize=(6.8, 7.4))  # stacked for the text column
    ax = axes[0]
    ax.plot(ns_flops, flops_n["core"], "o-", color=c["palette"][0],
            label="self-attention: softmax(QKᵀ/√d)V")
    ax.plot(ns_flops, flops_n["layer"], "^--", color=c["palette"][2],
            label="self-attention + Q, K, V projections")
    ax.plot(ns_flops, flops_n["rnn"], "s-", color=c["palette"][3], label="recurrent (Elman) layer")
    ax.axvline(d_fixed, color=c["muted"], linestyle=":")
    ax.text(d_fixed * 1.08, min(flops_n["rnn"]), "n = d",
            color=c["muted"], fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel(f"sequence length n (d = {d_fixed})")
    ax.set_ylabel("FLOPs (counted)")
    ax.set_title("complexity per layer")
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.5)
    ax = axes[1]
    ax.plot(ns_graph, [x[0] for x in chains["rnn"]], "s-", color=c["palette"][3],
            label="recurrent: sequential products")
    ax.plot(ns_graph, [x[1] for x in chains["rnn"]], "x:", color=c["palette"][1],
            markersize=10, zorder=3,
            label="recurrent: path x₀ → y₍ₙ₋₁₎ (same values)")
    ax.plot(ns_graph, [x[0] for x in chains["attention"]], "o-", color=c["palette"][0],
            label="self-attention: sequential products")
    ax.plot(ns_graph, [x[1] for x in chains["attention"]], "+--", color=c["palette"][2],
            label="self-attention: path x₀ → y₍ₙ₋₁₎")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("sequence length n")
    ax.set_ylabel("matrix products in a chain")
    ax.set_title("sequential operations and path length")
    ax.legend(frameon=False, fontsize=8)
    ax.grid(True, alpha=0.5)
    fig.tight_layout()
    return fig


ch.figure("table1", draw_table1)

# %%
print("written:", ", ".join(sorted(ch.written)))
