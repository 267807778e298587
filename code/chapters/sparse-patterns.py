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
# # Sparse attention patterns
#
# This notebook produces every figure, table and number of the chapter "Sparse attention
# patterns" of *The Attention Book*. It runs on a laptop CPU in about a minute:
#
# ```
# python code/chapters/sparse-patterns.py --device cpu          # or --device cuda, --quick
# ```
#
# 1. the patterns of the Sparse Transformer, Longformer and BigBird drawn at small n;
# 2. who can reach whom in one and two layers, for each pattern at a similar budget of keys;
# 3. the chunked implementations against dense masked attention (largest difference);
# 4. time and memory against length, with fitted exponents;
# 5. one small model trained per pattern on a task that needs a token 100+ positions back,
#    and a control that trains the Longformer model on the last position only.

# %%
from attnbook.chapter import Chapter

ch = Chapter("sparse-patterns")

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from attnbook import bench
from attnbook.attention.bigbird import bigbird_attention, bigbird_mask
from attnbook.attention.graph import reachability
from attnbook.attention.local import (longformer_attention, longformer_mask, sliding_window_attention,
                                      sliding_window_mask)
from attnbook.attention.sparse import (fixed_attention, fixed_key_index, fixed_mask, gather_attention,
                                       strided_attention, strided_key_index, strided_mask)
from attnbook.models.sparse_lm import PatternClassifier, needle_reach, needle_targets, needle_task
from attnbook.train import TrainConfig, cross_entropy, train
from attnbook.viz import attention_cmap, colors

device = ch.device
ch.one_thread_on_cpu()


def global_mask(n, positions):
    """Boolean (n,) mask, True = global token, for ``longformer_attention``."""
    is_global = torch.zeros(n, dtype=torch.bool)
    is_global[list(positions)] = True
    return is_global


def output_of(result):
    """The output tensor of an attention call (the library returns it alone, or first)."""
    return result[0] if isinstance(result, tuple) else result


# %% [markdown]
# ## 1. The patterns at small n
#
# Sparse Transformer (Child et al. 2019, Fig. 3): n = 16, stride l = 4, one summary position
# per block. Longformer (Beltagy et al. 2020, Fig. 2): a window, the same window dilated, a
# window with global tokens. BigBird (Zaheer et al. 2020, Fig. 1): random (r = 2), window
# (w = 3), global (g = 2), and their union, at one token per block.

# %%
SMALL = 16
small = {
    "full causal": torch.ones(SMALL, SMALL, dtype=torch.bool).tril(),
    "strided (l = 4)": strided_mask(SMALL, stride=4),
    "fixed (l = 4, c = 1)": fixed_mask(SMALL, stride=4, num_summary=1),
    "full": torch.ones(SMALL, SMALL, dtype=torch.bool),
    "sliding window (2 each side)": sliding_window_mask(SMALL, window=2),
    "dilated window (d = 2)": sliding_window_mask(SMALL, window=2, dilation=2),
    "window + global {0, 8}": longformer_mask(SMALL, window=2, global_indices=[0, 8]),
}
bigbird_small = bigbird_mask(SMALL, block_size=1, num_window_blocks=3, num_global_blocks=2,
                             num_random_blocks=2, seed=0)
bb_window = sliding_window_mask(SMALL, window=1)
bb_global = torch.zeros(SMALL, SMALL, dtype=torch.bool)
bb_global[:2], bb_global[:, :2] = True, True
small.update({
    "random (r = 2)": bigbird_small & ~bb_window & ~bb_global,
    "window (w = 3)": bb_window,
    "global (g = 2)": bb_global,
    "BigBird (union)": bigbird_small,
})


def draw_masks(names, rows, cols):
    def draw(theme):
        fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows + 0.2), squeeze=False)
        for ax, name in zip(axes.flat, names):
            ax.imshow(small[name].float().numpy(), cmap=attention_cmap(theme), vmin=0, vmax=1.25,
                      interpolation="nearest")
            ax.set_title(f"{name}\nat most {int(small[name].sum(1).max())} keys per query", fontsize=9)
            ax.set_xticks([0, SMALL - 1])
            ax.set_yticks([0, SMALL - 1])
            ax.tick_params(labelsize=8)
            ax.set_xlabel("key j", fontsize=8, labelpad=0)
            ax.set_ylabel("query i", fontsize=8, labelpad=0)
        for ax in axes.flat[len(names):]:
            ax.axis("off")
        fig.tight_layout()
        return fig
    return draw


ch.figure("sparse-transformer", draw_masks(["full causal", "strided (l = 4)", "fixed (l = 4, c = 1)"], 1, 3))
ch.figure("longformer", draw_masks(["full", "sliding window (2 each side)", "dilated window (d = 2)",
                                    "window + global {0, 8}"], 2, 2))
ch.figure("bigbird", draw_masks(["random (r = 2)", "window (w = 3)", "global (g = 2)", "BigBird (union)"], 2, 2))

# %% [markdown]
# ## 2. Reachability in one and two layers, at a similar budget
#
# The patterns the model of section 5 uses, at its length n = 128: each query gets about
# 22 keys (the causal window and its dilated twin exactly 22, strided and fixed with
# l = 11 at most 22, Longformer 21 + the global token, BigBird 3 window + 1 global + 1
# random blocks of 4). Pairs counted: (i, j) with j <= i for causal patterns, all pairs for
# the two-sided ones (Longformer, BigBird). The residual stream adds the self-loop.

# %%
N = ch.pick(128, 64)
MIN_DISTANCE = ch.pick(100, 40)
STRIDE = round(math.sqrt(N)) if N != 128 else 11
WINDOW = 2 * STRIDE - 1  # causal window: itself + WINDOW earlier keys ~ strided's budget
DILATION = 3
BB_BLOCK = 4


def model_patterns(n):
    return {
        "dense causal": torch.ones(n, n, dtype=torch.bool).tril(),
        "sliding window": sliding_window_mask(n, window=WINDOW, causal=True),
        f"dilated window (d = {DILATION})": sliding_window_mask(n, window=WINDOW, causal=True,
                                                               dilation=DILATION),
        "strided": strided_mask(n, stride=STRIDE),
        "fixed": fixed_mask(n, stride=STRIDE, num_summary=1),
        "Longformer (global = query)": longformer_mask(n, window=STRIDE - 1, global_indices=[n - 1]),
        "BigBird": bigbird_mask(n, block_size=BB_BLOCK, num_window_blocks=3, num_global_blocks=1,
                                num_random_blocks=1, seed=0),
    }


patterns = model_patterns(N)
causal_pattern = {name: not bool(mask.triu(1).any()) for name, mask in patterns.items()}
reach_rows, reach_data = [], {}
for name, mask in patterns.items():
    counted = torch.ones(N, N, dtype=torch.bool).tril() if causal_pattern[name] else torch.ones(N, N, dtype=torch.bool)
    one, two = reachability(mask), reachability(mask, mask)
    frac1 = (one & counted).sum().item() / counted.sum().item()
    frac2 = (two & counted).sum().item() / counted.sum().item()
    share1 = needle_reach(one, min_distance=MIN_DISTANCE)
    share = needle_reach(two, min_distance=MIN_DISTANCE)
    keys = mask.sum(1).float()
    reach_data[name] = {"one": frac1, "two": frac2, "needle1": share1, "needle": share,
                        "mean_keys": keys.mean().item(), "max_keys": int(keys.max())}
    reach_rows.append([name, "causal" if causal_pattern[name] else "two-sided", f"{keys.mean():.1f}",
                       int(keys.max()), f"{100 * frac1:.1f}%", f"{100 * frac2:.1f}%", f"{100 * share1:.0f}%",
                       f"{100 * share:.0f}%"])
ch.table("reach", ["pattern", "pairs counted", "mean keys", "max keys", "pairs reachable, 1 layer",
                   "pairs reachable, 2 layers", "needles reachable, 1 layer", "needles reachable, 2 layers"],
         reach_rows, align="llrrrrrr")
ch.paper("child2019", "two layers of strided or fixed attention connect every pair of positions",
         theirs="with p = 2 factorized heads, a path of at most p + 1 positions, p steps (§4.2)",
         ours=f"causal pairs reachable in 2 layers: strided {100 * reach_data['strided']['two']:.1f}%, "
              f"fixed {100 * reach_data['fixed']['two']:.1f}% (n = {N})",
         section="the-paper-reproduced")
ch.markdown("reach-setup", f"n = {N}; stride l = {STRIDE}; causal window {WINDOW} earlier keys; "
                           f"dilation {DILATION}; BigBird blocks of {BB_BLOCK}; needles at least "
                           f"{MIN_DISTANCE} positions before the last position.")


def pattern_bars(names, xlabel, xmax, draw_bars):
    """A horizontal-bar figure with one row per pattern; ``draw_bars(ax, y, c)`` adds the marks."""
    def draw(theme):
        c = colors(theme)
        fig, ax = plt.subplots(figsize=(6.6, 3.6))
        y = np.arange(len(names))
        draw_bars(ax, y, c)
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, xmax)
        ax.set_xlabel(xlabel)
        fig.legend(*ax.get_legend_handles_labels(), loc="upper center", ncol=2, fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.92))
        return fig
    return draw


def reach_bars(ax, y, c):
    names = list(reach_data)
    ax.barh(y - 0.2, [100 * reach_data[n]["one"] for n in names], height=0.4, color=c["palette"][0],
            label="1 layer")
    ax.barh(y + 0.2, [100 * reach_data[n]["two"] for n in names], height=0.4, color=c["palette"][1],
            label="2 layers")


draw_reach = pattern_bars(list(reach_data), "pairs (i, j) connected, % of those counted", 100, reach_bars)


ch.figure("reach", draw_reach)

# %% [markdown]
# ## 3. The chunked implementations equal dense masking
#
# Each efficient function against `F.scaled_dot_product_attention` with the pattern's
# boolean mask, in float64 and in float32, random inputs (seeded).

# %%
EQ_N = ch.pick(256, 64)
gen = ch.seed(11)
eq_stride = math.isqrt(EQ_N)
eq_window, eq_block = 8, 8
eq_cases = [
    ("strided_attention", lambda q, k, v: strided_attention(q, k, v, stride=eq_stride),
     strided_mask(EQ_N, stride=eq_stride)),
    ("fixed_attention", lambda q, k, v: fixed_attention(q, k, v, stride=eq_stride, num_summary=2),
     fixed_mask(EQ_N, stride=eq_stride, num_summary=2)),
    ("gather_attention (strided list)",
     lambda q, k, v: gather_attention(q, k, v, *strided_key_index(EQ_N, stride=eq_stride)),
     strided_mask(EQ_N, stride=eq_stride)),
    ("gather_attention (fixed list)",
     lambda q, k, v: gather_attention(q, k, v, *fixed_key_index(EQ_N, stride=eq_stride, num_summary=2)),
     fixed_mask(EQ_N, stride=eq_stride, num_summary=2)),
    ("sliding_window_attention (causal)",
     lambda q, k, v: sliding_window_attention(q, k, v, window=eq_window, causal=True),
     sliding_window_mask(EQ_N, window=eq_window, causal=True)),
    ("sliding_window_attention (dilation 3)",
     lambda q, k, v: sliding_window_attention(q, k, v, window=eq_window, dilation=3),
     sliding_window_mask(EQ_N, window=eq_window, dilation=3)),
    ("longformer_attention",
     lambda q, k, v: longformer_attention(q, k, v, window=eq_window, global_mask=global_mask(EQ_N, [0, EQ_N // 2])),
     longformer_mask(EQ_N, window=eq_window, global_indices=[0, EQ_N // 2])),
    ("bigbird_attention",
     lambda q, k, v: bigbird_attention(q, k, v, block_size=eq_block, num_window_blocks=3,
                                       num_global_blocks=1, num_random_blocks=2, seed=3),
     bigbird_mask(EQ_N, block_size=eq_block, num_window_blocks=3, num_global_blocks=1,
                  num_random_blocks=2, seed=3)),
]
eq_rows, eq_worst = [], {}
for name, fn, mask in eq_cases:
    cells = [f"`{name}`", int(mask.sum(1).max())]
    for dtype in (torch.float64, torch.float32):
        q, k, v = (torch.randn(2, 2, EQ_N, 16, generator=gen, dtype=dtype) for _ in range(3))
        reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        diff = (output_of(fn(q, k, v)) - reference).abs().max().item()
        eq_worst[(name, str(dtype))] = diff
        cells.append(f"{diff:.1e}")
    eq_rows.append(cells)
ch.table("equal", ["function", "max keys per query", "max abs. difference, float64",
                   "max abs. difference, float32"], eq_rows, align="lrrr")
worst64 = max(v for (n, d), v in eq_worst.items() if d == "torch.float64")
worst32 = max(v for (n, d), v in eq_worst.items() if d == "torch.float32")
ch.markdown("equal-verdict",
            f"Over n = {EQ_N}, batch 2, 2 heads, head size 16, the largest difference is "
            f"{worst64:.1e} in float64 and {worst32:.1e} in float32: "
            + ("rounding only, far below anything a model would notice."
               if worst64 < 1e-10 and worst32 < 1e-4 else
               "larger than rounding alone explains; see the tests."))

# %% [markdown]
# ## 4. Time and memory against length
#
# One head group (batch 1, 4 heads, head size 64), float32. Dense: PyTorch's
# `scaled_dot_product_attention` with `is_causal=True` (causal patterns) and without (the
# two-sided ones). Strided and fixed take l = ⌊√n⌋, so their cost should grow as n^1.5;
# the windows (64 keys on a side), Longformer (2 global tokens) and BigBird (blocks of
# n/16 up to 64; 3 window, 2 global, 3 random blocks) keep a fixed budget per query.

# %%
on_gpu = device.type == "cuda"
LENGTHS = ch.pick([512, 1024, 2048, 4096], [256, 512], large=[4096, 8192, 16384, 32768])
HEADS, HEAD_DIM, BW = 4, 64, 64


def cost_functions(n):
    stride = bench.sparse_stride(n)
    return {
        "dense causal (SDPA)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "dense two-sided (SDPA)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        "strided, l = √n": lambda q, k, v: strided_attention(q, k, v, stride=stride),
        "fixed, l = √n": lambda q, k, v: fixed_attention(q, k, v, stride=stride,
                                                         num_summary=bench.sparse_num_summary(n)),
        "causal window": lambda q, k, v: sliding_window_attention(q, k, v, window=BW, causal=True),
        "dilated window (d = 4)": lambda q, k, v: sliding_window_attention(q, k, v, window=BW, dilation=4),
        "Longformer": lambda q, k, v: longformer_attention(q, k, v, window=BW,
                                                            global_mask=global_mask(n, [0, 1]).to(device)),
        "BigBird": lambda q, k, v: bigbird_attention(q, k, v, block_size=bench.bigbird_block_size(n),
                                                     **bench.BIGBIRD_BLOCKS),
    }


timings = {name: [] for name in cost_functions(LENGTHS[0])}
memory = {name: [] for name in timings}
gen = ch.seed(12)
# Chapter 10: by default glibc maps and unmaps every large tensor, and the page faults make
# linear work look superlinear; reusing freed memory (as a caching allocator does) removes that.
heap_reuse = bench.set_heap_reuse(True)
for n in LENGTHS:
    q, k, v = (torch.randn(1, HEADS, n, HEAD_DIM, generator=gen).to(device) for _ in range(3))
    for name, fn in cost_functions(n).items():
        timed = bench.time_call(lambda: fn(q, k, v), device=device, warmup=1, repeats=5, budget_s=1.0)
        timings[name].append(min(timed["times_s"]))  # the fastest call: least disturbed by other work
        memory[name].append(bench.peak_extra_memory(lambda: fn(q, k, v), device=device))
bench.set_heap_reuse(False)

cost_rows, fits = [], {}
for name in timings:
    p_time, _ = bench.fit_power_law(LENGTHS, timings[name])
    p_mem, _ = bench.fit_power_law(LENGTHS, [max(m, 1) for m in memory[name]])
    fits[name] = (p_time, p_mem)
    cost_rows.append([name, f"{1e3 * timings[name][-1]:.1f}", f"{p_time:.2f}",
                      f"{memory[name][-1] / 2**20:.1f}", f"{p_mem:.2f}"])
ch.table("cost", ["attention", f"time at n = {LENGTHS[-1]} (ms)", "time exponent",
                  f"peak extra memory at n = {LENGTHS[-1]} (MiB)", "memory exponent"], cost_rows,
         align="lrrrr")
ch.markdown("cost-setup", f"Lengths {', '.join(map(str, LENGTHS))}; batch 1, {HEADS} heads, head size "
                          f"{HEAD_DIM}, float32, on {bench.machine_tag(bench.machine_info(device))}; "
                          f"fastest of up to 5 calls after one warm-up; memory from torch's profiler "
                          f"(CPU) or the CUDA allocator (GPU); freed memory reused between calls: "
                          f"{'yes' if heap_reuse or on_gpu else 'no'}. Exponents: least-squares slope "
                          f"of log cost against log n.")
p_strided, p_dense = fits["strided, l = √n"][0], fits["dense causal (SDPA)"][0]
p_window = fits["causal window"][0]
ch.markdown("cost-verdict",
            f"The fitted time exponents: {p_dense:.2f} for dense causal SDPA, {p_strided:.2f} for "
            f"strided with l = √n, {p_window:.2f} for the causal window. "
            + ("The ordering is the one the analysis predicts (window < strided < dense)."
               if p_window < p_strided < p_dense else
               "They do not come out in the order the analysis predicts (window < strided < dense) "
               "over these lengths: fixed per-call costs at small n, and other work on a shared "
               "machine, bend short curves, so read the times themselves too."))

dense_names = ["dense causal (SDPA)", "dense two-sided (SDPA)"]
sparse_memory = [memory[name][-1] / 2**20 for name in memory if name not in dense_names]
dense_memory = max(memory[name][-1] for name in dense_names) / 2**20
ch.markdown("cost-memory",
            f"At n = {LENGTHS[-1]} our chunked forms take {min(sparse_memory):.1f} to "
            f"{max(sparse_memory):.1f} MiB of extra memory, the fused dense kernel {dense_memory:.1f} MiB"
            + (": at these lengths a sparse pattern written this way saves arithmetic, not memory."
               if min(sparse_memory) > dense_memory else
               "."))


def draw_cost(theme):
    c = colors(theme)
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.6))
    styles = ["-", "--", "-", "-", "-", "-.", "-", "-"]
    for (name, style, colour) in zip(timings, styles, c["palette"]):
        axes[0].loglog(LENGTHS, [1e3 * t for t in timings[name]], style, marker="o", ms=3, color=colour,
                       label=name)
        axes[1].loglog(LENGTHS, [max(m, 1) / 2**20 for m in memory[name]], style, marker="o", ms=3,
                       color=colour)
    axes[0].set_ylabel("time per call (ms)")
    axes[1].set_ylabel("peak extra memory (MiB)")
    for ax in axes:
        ax.set_xlabel("length n")
        ax.set_xticks(LENGTHS, [str(n) for n in LENGTHS])
        ax.minorticks_off()
        ax.tick_params(labelsize=8)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    return fig


ch.figure("cost", draw_cost, measured=True)  # drawn from timings

# %% [markdown]
# ## 5. One small model per pattern, on a task that needs the far past
#
# `needle_task`: filler tokens, one needle symbol (8 possible) at least 100 positions before
# the last position, which must name it. Same model, seed and batches for every pattern;
# only the mask changes. Two layers: a pattern must connect the needle to the last position
# in at most two hops. Every position from the needle on is trained to name it; only the
# last is scored. The control trains the Longformer model (whose global token is the last
# position) on the last position alone.

# %%
NUM_SYMBOLS, NUM_FILLER = 8, 4
STEPS = ch.pick(300, 40)
BATCH = 32
EVAL = ch.pick(1000, 200)


def train_pattern(name, targets="all"):
    """Train the model with one pattern; ``targets="last"`` is the control that trains the last
    position only (the default trains every position from the needle on)."""
    mask = model_patterns(N)[name].to(device)
    torch.manual_seed(0)
    model = PatternClassifier(NUM_FILLER + NUM_SYMBOLS + 1, NUM_SYMBOLS, mask, d_model=32, num_heads=2,
                              num_layers=2)

    def make_batch(generator):
        ids, labels, needle_pos = needle_task(BATCH, seq_len=N, num_symbols=NUM_SYMBOLS,
                                              num_filler=NUM_FILLER, min_distance=MIN_DISTANCE,
                                              generator=generator)
        return ids, needle_targets(labels, needle_pos, N, last_only=targets == "last")

    history = train(model, make_batch, TrainConfig(steps=STEPS, lr=3e-3, warmup_steps=20, seed=5),
                    device=device, loss_fn=cross_entropy)
    ids, labels, _ = needle_task(EVAL, seq_len=N, num_symbols=NUM_SYMBOLS, num_filler=NUM_FILLER,
                                 min_distance=MIN_DISTANCE, generator=torch.Generator().manual_seed(999))
    model.eval()
    with torch.no_grad():
        predicted = model(ids.to(device))[:, -1].argmax(-1).cpu()
    return {"accuracy": (predicted == labels).float().mean().item(),
            "final_loss": float(np.mean(history.loss[-20:]))}


names = list(patterns)
LONGFORMER = "Longformer (global = query)"
# half the runs in a second process when a spare core exists (same results either way); the
# control trains Longformer again with the loss on the last position only
later = ch.in_background(lambda: ({n: train_pattern(n) for n in names[1::2]},
                                  train_pattern(LONGFORMER, targets="last")))
quality = {n: train_pattern(n) for n in names[::2]}
quality_later, control = later()
quality.update(quality_later)

quality_rows = []
for name in names:
    share = reach_data[name]["needle"]
    ceiling = share + (1 - share) / NUM_SYMBOLS
    quality[name]["ceiling"] = ceiling
    quality_rows.append([name, f"{reach_data[name]['mean_keys']:.1f}", f"{100 * share:.0f}%",
                         f"{100 * ceiling:.0f}%", f"{100 * quality[name]['accuracy']:.1f}%"])
ch.table("quality", ["pattern", "mean keys", "needles reachable in 2 layers", "accuracy ceiling",
                     "accuracy"], quality_rows, align="lrrrr")
ch.markdown("quality-setup", f"n = {N}, needle at least {MIN_DISTANCE} back, {NUM_SYMBOLS} symbols "
                             f"(chance {100 / NUM_SYMBOLS:.1f}%), {NUM_FILLER} filler tokens; 2 layers, "
                             f"2 heads, d_model 32; {STEPS} steps of {BATCH} sequences, AdamW, lr 3e-3; "
                             f"accuracy on {EVAL} fresh sequences; trained with the needle's label as the "
                             f"target at every position from the needle on, scored at the last "
                             f"position only.")
# A fresh test set of EVAL sequences: accuracy has a standard error sqrt(p (1 - p) / EVAL);
# three of them is the slack a pattern at its ceiling needs not to be flagged by chance.
within = all(q["accuracy"] <= q["ceiling"] + 3 * math.sqrt(q["ceiling"] * (1 - q["ceiling"]) / EVAL) + 1e-9
             for q in quality.values())
near = [n for n in names if quality[n]["accuracy"] >= quality[n]["ceiling"] - 0.1]
ch.markdown("quality-verdict",
            ("Every pattern stays at or under the ceiling that its two-hop reachability sets "
             "(within sampling noise)" if within else
             "Some pattern beats the ceiling its reachability sets, which should be impossible: "
             "a sign of a bug")
            + f"; {len(near)} of {len(names)} end within 10 points of it"
            + ("." if len(near) == len(names) else
               f"; more than 10 points below it after {STEPS} steps: "
               f"{', '.join(n for n in names if n not in near)}."))


# The control. The sampling noise of an accuracy on EVAL sequences is a few points at most, so
# "learns" and "near chance" are read with a 10-point margin.
chance = 1 / NUM_SYMBOLS
lf_before, lf_after = quality[LONGFORMER]["accuracy"], control["accuracy"]
ch.markdown("quality-control",
            f"Control: the same {LONGFORMER} model (same seed, batches and {STEPS} steps) trained with "
            f"the loss on the last position only reaches {100 * lf_after:.1f}%, against "
            f"{100 * lf_before:.1f}% with the loss at every position from the needle on"
            + (": once the targets that need the relay are gone, it learns the task."
               if lf_after >= lf_before + 0.1 and lf_after >= chance + 0.1 else
               ": dropping the other targets does not help it in this budget."))


def quality_bars(ax, y, c):
    ax.barh(y, [100 * quality[n]["accuracy"] for n in names], height=0.6, color=c["palette"][0],
            label="accuracy")
    ax.scatter([100 * quality[n]["ceiling"] for n in names], y, marker="|", s=300, color=c["palette"][3],
               label="ceiling from reachability", zorder=3)
    ax.axvline(100 * chance, color=c["muted"], linestyle=":", linewidth=1)
    ax.text(100 * chance + 1, len(names) - 0.5, "chance", fontsize=8, color=c["muted"], va="bottom")


ch.figure("quality", pattern_bars(names, "accuracy naming the needle (%)", 105, quality_bars))

# %% [markdown]
# ## Exercises

# %%
# --8<-- [start:exercise-1]
# Exercise 1: the most keys any query of the strided pattern attends, for each stride l
# at n = 1024, read from the key lists (no n x n matrix). Which l is cheapest?
n_ex = 1024
max_keys = {l: int(strided_key_index(n_ex, stride=l)[1].sum(1).max()) for l in range(2, 257)}
best = min(max_keys, key=max_keys.get)  # the first of any ties
# --8<-- [end:exercise-1]
ch.markdown("exercise-1", f"Cheapest stride l = {best}: at most {max_keys[best]} keys per query "
                          f"(2√n = {2 * math.sqrt(n_ex):.0f}); l = 4 needs {max_keys[4]}, "
                          f"l = 256 needs {max_keys[256]}.")

# %%
# --8<-- [start:exercise-2]
# Exercise 2: the "every second column" mask is not the strided pattern. What share of
# causal pairs does it connect in two layers, against strided with l = 2?
n_ex = 64
every_second = torch.zeros(n_ex, n_ex, dtype=torch.bool)
every_second[:, ::2] = True
every_second &= torch.ones(n_ex, n_ex, dtype=torch.bool).tril()
causal_pairs = torch.ones(n_ex, n_ex, dtype=torch.bool).tril()
share_wrong = (reachability(every_second, every_second) & causal_pairs).sum() / causal_pairs.sum()
strided_2 = strided_mask(n_ex, stride=2)
share_right = (reachability(strided_2, strided_2) & causal_pairs).sum() / causal_pairs.sum()
# --8<-- [end:exercise-2]
ch.markdown("exercise-2", f"Every second column: {100 * share_wrong:.1f}% of causal pairs in two layers; "
                          f"strided (l = 2): {100 * share_right:.1f}%.")
