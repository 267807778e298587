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
# # Positional information
#
# This notebook produces every figure, table and number of the chapter "Positional
# information" of *The Attention Book*. It runs on a laptop CPU in about a minute:
#
# ```
# python code/chapters/positional-encoding.py --device cpu          # or --device cuda, --quick
# ```
#
# 1. the sinusoidal encoding's shift matrix, measured;
# 2. T5's bucket function, plotted;
# 3. RoPE's long-term decay bound (RoFormer Fig. 2) and ALiBi's slopes;
# 4. the extrapolation experiment: one small causal character model trained at one context
#    length with six position methods, evaluated at up to 8 times that length, plus RoPE
#    position interpolation;
# 5. the RoPE layout porting bug and per-sequence position ids, on the trained RoPE model.

# %%
from attnbook.chapter import Chapter

ch = Chapter("positional-encoding")

# %%
import copy
import math

import matplotlib.pyplot as plt
import torch
from torch import nn

from attnbook.attention.positional import (
    alibi_slopes,
    apply_rope,
    position_ids_from_padding,
    rope_decay_bound,
    rope_layout_permutation,
    sinusoidal_encoding,
    sinusoidal_shift_matrix,
    t5_relative_position_bucket,
)
from attnbook.data.text import ALICE, CharVocab, load_text, text_windows
from attnbook.models.position_lm import METHODS, PositionLM
from attnbook.train import TrainConfig, cross_entropy, train
from attnbook.viz import colors

device = ch.device
ch.one_thread_on_cpu()

# %% [markdown]
# ## 1. Sinusoidal: a shift is one fixed rotation
#
# For every shift k there is one matrix $M_k$ with $PE(p + k) = PE(p)\,M_k^\top$ for *all*
# positions p (rows are vectors). We check it on 1,000 positions, and check that $PE(p)\cdot PE(p+k)$
# depends on k only.

# %%
D_PE, POSITIONS = 64, 1000
encoding = sinusoidal_encoding(POSITIONS + 50, D_PE, dtype=torch.float64)   # (positions, d)
shift_errors, dot_spreads = [], []
for shift in (1, 7, 50):
    moved = encoding[:POSITIONS] @ sinusoidal_shift_matrix(shift, D_PE).T  # rows are vectors
    shift_errors.append((moved - encoding[shift:shift + POSITIONS]).abs().max().item())
    dots = (encoding[:POSITIONS] * encoding[shift:shift + POSITIONS]).sum(-1)
    dot_spreads.append((dots.max() - dots.min()).item())
ch.markdown("sinusoidal-check", (
    f"Measured in float64 with $d_{{\\text{{model}}}} = {D_PE}$ over positions 0 to {POSITIONS - 1}, "
    f"for shifts $k = 1, 7, 50$: the largest entry of $PE(p)\\,M_k^\\top - PE(p+k)$ is "
    f"{max(shift_errors):.1e}, and $PE(p)\\cdot PE(p+k)$ varies with $p$ by at most "
    f"{max(dot_spreads):.1e}: rounding, not position."
))

# %% [markdown]
# ## 2. T5's buckets
#
# Bidirectional (an encoder) with 32 buckets and causal (a decoder) with 32 buckets, both with
# `max_distance` 128, as in T5.

# %%
distances = torch.arange(-160, 161)
buckets_bi = t5_relative_position_bucket(distances, bidirectional=True, num_buckets=32, max_distance=128)
buckets_causal = t5_relative_position_bucket(distances, bidirectional=False, num_buckets=32,
                                             max_distance=128)


def draw_buckets(theme):
    pal = colors(theme)["palette"]
    fig, ax = plt.subplots(figsize=(6.8, 3.0))
    ax.step(distances, buckets_bi, where="mid", color=pal[0], label="bidirectional (encoder)")
    ax.step(distances, buckets_causal, where="mid", color=pal[1], linestyle="--", label="causal (decoder)")
    for x in (-128, 128):
        ax.axvline(x, color=colors(theme)["muted"], linewidth=0.8, linestyle=":")
    ax.set_xlabel("relative position j − i (negative: key before the query)")
    ax.set_ylabel("bucket")
    ax.legend(fontsize=8, loc="center right")
    ax.grid(True, linewidth=0.4)
    fig.tight_layout()
    return fig


ch.figure("t5-buckets", draw_buckets)


def last_bucket_start(num_buckets: int, max_distance: int, bidirectional: bool) -> tuple[int, int]:
    """(the last bucket backwards, the smallest distance back that lands in it)."""
    back = -torch.arange(0, 4 * max_distance)             # distances 0, 1, 2, ... backwards
    buckets = t5_relative_position_bucket(back, bidirectional=bidirectional, num_buckets=num_buckets,
                                          max_distance=max_distance)
    last = int(buckets.max())
    return last, int(torch.nonzero(buckets == last)[0])


last_bi, start_bi = last_bucket_start(32, 128, bidirectional=True)
last_causal, start_causal = last_bucket_start(32, 128, bidirectional=False)
ch.markdown("t5-buckets-numbers", (
    f"Bidirectional: {len(torch.unique(buckets_bi))} distinct buckets over distances −160 to 160; "
    f"distances 0 to 7 on each side have a bucket each; the last bucket backwards ({last_bi}) already "
    f"holds every distance of {start_bi} or more, not only those of 128 or more (forwards, bucket "
    f"{int(buckets_bi[-1])} likewise). Causal: every key after the query falls in bucket "
    f"{int(buckets_causal[-1])} (the mask hides them), distances 0 to 15 backwards get a bucket each, "
    f"and the last bucket ({last_causal}) holds every distance of {start_causal} or more. The last bucket "
    f"starts before `max_distance` because the log formula's result is truncated to an integer and "
    f"clamped to the last bucket: `max_distance` is where the formula would reach one past the last "
    f"bucket."
))

# %% [markdown]
# ## 3. RoPE's long-term decay, and ALiBi's slopes

# %%
HEAD_DIM_DECAY = 128
decay_distances = torch.arange(0, 513, dtype=torch.float64)
decay = rope_decay_bound(HEAD_DIM_DECAY, decay_distances)


def draw_decay(theme):
    pal = colors(theme)["palette"]
    fig, ax = plt.subplots(figsize=(6.8, 3.0))
    ax.plot(decay_distances, decay, color=pal[0], linewidth=1.2)
    ax.set_xlabel("relative distance m − n")
    ax.set_ylabel(r"mean of $|S_j|$ over $j$")
    ax.set_title(f"RoPE long-term decay bound, $d_k$ = {HEAD_DIM_DECAY}, base 10000", fontsize=10)
    ax.grid(True, linewidth=0.4)
    fig.tight_layout()
    return fig


ch.figure("rope-decay", draw_decay)
ch.markdown("rope-decay-numbers", (
    f"For $d_k = {HEAD_DIM_DECAY}$: the bound is {decay[0]:.1f} at distance 0 (exactly $(d_k/2 + 1)/2$), "
    f"averages {decay[1:33].mean():.1f} over distances 1–32, {decay[97:129].mean():.1f} over 97–128 "
    f"and {decay[481:513].mean():.1f} over 481–512. It falls quickly, then levels off and wobbles: "
    f"it is a bound that decays on average, not a monotone curve."
))
ch.paper("su2021", "RoPE's relative upper bound decays with distance",
         theirs="long-term decay of the bound (Figure 2)",
         ours=f"bound {decay[0]:.1f} at distance 0, mean {decay[1:33].mean():.1f} over 1-32, "
              f"{decay[481:513].mean():.1f} over 481-512 (d_k = {HEAD_DIM_DECAY})",
         section="the-paper-reproduced")

slope_rows = []
for heads in (8, 6, 12):
    slopes = alibi_slopes(heads, dtype=torch.float64)
    exponents = (-torch.log2(slopes)).tolist()
    slope_rows.append([str(heads), ", ".join(f"$2^{{-{e:g}}}$" for e in exponents)])
ch.table("alibi-slopes", ["heads $H$", "slopes $m_1, \\dots, m_H$"], slope_rows, align="rl")

# %% [markdown]
# ## 4. Train short, test long
#
# One model (`PositionLM`), six position methods, identical everything else: the same seed
# for the weights where the shapes agree, the same batches, the same steps. Trained on
# windows of `TRAIN_LEN` characters of *Alice*, evaluated on the held-out 10% cut into
# windows of up to 8 × `TRAIN_LEN` characters (the same characters at every length).

# %%
text = load_text(ALICE)
vocab = CharVocab(text)
ids = vocab.encode(text)
split = int(0.9 * len(ids))
train_ids, held_ids = ids[:split], ids[split:]

TRAIN_LEN = 32
FACTORS = ch.pick([1, 2, 3, 4, 6, 8], [1, 2, 8])
D_MODEL, HEADS, LAYERS = 64, 4, 2
# No large size: the text has 29k training characters, and a GPU's budget spent on more steps
# overfits them. With batch 64 and 1500 steps (`--size large` of an earlier version) every method's
# held-out perplexity at the training length got worse (RoPE 7.1 -> 13.6), which is not the lesson.
BATCH = ch.pick(32, 16)
STEPS = ch.pick(400, 40)
config = TrainConfig(steps=STEPS, lr=3e-3, warmup_steps=ch.pick(40, 4), min_lr_ratio=0.1, seed=1)
T5_BUCKETS = 16  # PositionLM's default t5_buckets
t5_start = last_bucket_start(T5_BUCKETS, TRAIN_LEN, bidirectional=False)[1]
LABELS = {"sinusoidal": "sinusoidal", "learned": "learned", "rope": "RoPE", "t5": "T5 bias",
          "alibi": "ALiBi", "none": "NoPE"}

models, seconds = {}, {}
for method in METHODS:
    torch.manual_seed(0)
    models[method] = PositionLM(len(vocab), method, train_len=TRAIN_LEN, d_model=D_MODEL,
                                num_heads=HEADS, num_layers=LAYERS, t5_buckets=T5_BUCKETS)
    history = train(models[method], lambda g: text_windows(train_ids, BATCH, TRAIN_LEN, g), config,
                    device=device)
    seconds[method] = history.seconds
    models[method].eval()
    print(f"{method}: final training loss {history.loss[-1]:.3f} ({history.seconds:.1f} s)")

# %%
span = (len(held_ids) // (max(FACTORS) * TRAIN_LEN)) * max(FACTORS) * TRAIN_LEN  # same chars for all
held = held_ids[:span + 1]


@torch.no_grad()
def perplexity(model: PositionLM, length: int, **options) -> float:
    """exp(mean cross-entropy) over non-overlapping windows of ``length`` held-out characters."""
    inputs = held[:span].view(-1, length).to(device)          # (windows, length)
    targets = held[1:span + 1].view(-1, length).to(device)
    return math.exp(cross_entropy(model(inputs, **options), targets).item())


lengths = [f * TRAIN_LEN for f in FACTORS]
curves = {m: [perplexity(models[m], L) if (m != "learned" or L <= TRAIN_LEN) else math.nan
              for L in lengths] for m in METHODS}
curves["learned, clamped"] = [perplexity(models["learned"], L, clamp_positions=True) for L in lengths]
curves["RoPE + interpolation"] = [perplexity(models["rope"], L, rope_scale=min(1.0, TRAIN_LEN / L))
                                  for L in lengths]


def draw_extrapolation(theme):
    pal = colors(theme)["palette"]
    styles = {"sinusoidal": (pal[0], "-", "o"), "learned": (pal[4], "-", "s"), "rope": (pal[1], "-", "^"),
              "t5": (pal[2], "-", "D"), "alibi": (pal[3], "-", "v"), "none": (colors(theme)["fg"], "-", "x"),
              "learned, clamped": (pal[4], ":", "s"), "RoPE + interpolation": (pal[1], "--", "^")}
    fig, ax = plt.subplots(figsize=(6.8, 3.8))
    for name, values in curves.items():
        color, linestyle, marker = styles[name]
        ax.plot(lengths, values, color=color, linestyle=linestyle, marker=marker, markersize=4,
                label=LABELS.get(name, name))
    ax.axvline(TRAIN_LEN, color=colors(theme)["muted"], linewidth=0.8, linestyle=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(L) for L in lengths])
    ax.set_yscale("log")
    finite = [v for values in curves.values() for v in values if not math.isnan(v)]
    low, high = min(finite) / 1.05, max(finite) * 1.05
    for candidates in ((2, 3, 4, 5, 6, 7, 8, 10, 15, 20, 30, 40, 60, 100, 200, 500, 1000),
                       range(2, 1000)):  # a sparse ladder, or every integer if the range is narrow
        ticks = [t for t in candidates if low <= t <= high]
        if len(ticks) >= 4:
            break
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.yaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("evaluation length (characters)")
    ax.set_ylabel("held-out perplexity")
    ax.legend(fontsize=8, ncols=2, loc="upper left")
    ax.grid(True, which="both", linewidth=0.4)
    fig.tight_layout()
    return fig


ch.figure("extrapolation", draw_extrapolation)


def cell(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


ch.table("extrapolation", ["method"] + [f"$L = {L}$" for L in lengths],
         [[LABELS.get(name, name)] + [cell(v) for v in values] for name, values in curves.items()])
ch.json("extrapolation", {"lengths": lengths, "curves": {k: [None if math.isnan(v) else v for v in vals]
                                                          for k, vals in curves.items()}})
ch.markdown("extrapolation-setup", (
    f"Setup: {len(text):,} characters of *Alice* ({len(vocab)} distinct), {split:,} for training; "
    f"{LAYERS} layers, {HEADS} heads, $d_{{\\text{{model}}}} = {D_MODEL}$, trained on windows of "
    f"{TRAIN_LEN} characters, batch {BATCH}, {STEPS} AdamW steps (learning rate $3 \\times 10^{{-3}}$, "
    f"warm-up then cosine), the same batches for every method. Evaluation: the first {span:,} held-out "
    f"characters, cut into non-overlapping windows of each length, every position counted. T5 here: "
    f"{T5_BUCKETS} causal buckets with `max_distance` equal to the training length (its last bucket "
    f"holds every distance of {t5_start} or more). Training took "
    f"{min(seconds.values()):.0f}–{max(seconds.values()):.0f} s per model on {device.type}."
))

# %%
# Generated prose: what the measured curves say, whatever they turn out to be.
at_train = {m: curves[m][0] for m in METHODS}
longest = lengths[-1]
at_long = {m: curves[m][-1] for m in METHODS if m != "learned"}
ratio = {m: at_long[m] / at_train[m] for m in at_long}
best_train = min(at_train, key=at_train.get)
best_long = min(at_long, key=at_long.get)
worst_long = max(at_long, key=at_long.get)
flat = [LABELS[m] for m in at_long if ratio[m] < 1.05]
sentences = [
    f"At the training length ({TRAIN_LEN}) the methods "
    f"{'are close' if max(at_train.values()) < 1.1 * min(at_train.values()) else 'already differ'}: "
    f"from {min(at_train.values()):.2f} "
    f"({LABELS[best_train]}) to {max(at_train.values()):.2f} ({LABELS[max(at_train, key=at_train.get)]}).",
    f"At {longest} characters ({max(FACTORS)}× the training length) the best is {LABELS[best_long]} at "
    f"{at_long[best_long]:.2f} and the worst {LABELS[worst_long]} at {at_long[worst_long]:.2f}.",
]
if flat:
    sentences.append("Within 5% of their own training-length perplexity at that length: "
                     + ", ".join(flat) + ".")
else:
    sentences.append("No method stays within 5% of its training-length perplexity at that length.")
clamped = curves["learned, clamped"][-1]
sentences.append(f"The learned table has no row beyond position {TRAIN_LEN - 1}; reusing its last row "
                 f"for every later position gives {clamped:.2f} at {longest}.")
pi, plain = curves["RoPE + interpolation"], curves["rope"]
helped = [L for L, a, b in zip(lengths[1:], pi[1:], plain[1:]) if a < 0.98 * b]  # by 2% or more
if helped:
    sentences.append(f"Position interpolation, with no training at all, lowers RoPE's perplexity at "
                     f"{', '.join(map(str, helped))} characters (at {longest}: {pi[-1]:.2f} against "
                     f"{plain[-1]:.2f} without it).")
else:
    sentences.append(f"Position interpolation without any training does not help (by 2% or more) at any "
                     f"longer length "
                     f"here (at {longest}: {pi[-1]:.2f} against {plain[-1]:.2f} without it).")
# Why RoPE, though relative, can extrapolate badly: the slow channel pairs never complete a turn
# within the training window, so longer distances rotate them to angles training never produced.
head_dim = D_MODEL // HEADS
max_trained_angle = (TRAIN_LEN - 1) * torch.tensor(
    [10000.0 ** (-2 * i / head_dim) for i in range(head_dim // 2)], dtype=torch.float64)
unturned = int((max_trained_angle < 2 * math.pi).sum())
rope_note = (f"RoPE is relative, yet {'it is the worst' if worst_long == 'rope' else 'it is not the best'} "
             f"at {longest}: its scores depend only on distances, but distances beyond {TRAIN_LEN - 1} rotate "
             f"the channel pairs to angles training never produced. With $d_k = {head_dim}$, {unturned} of "
             f"its {head_dim // 2} pairs do not complete one turn within {TRAIN_LEN - 1} positions, so at "
             f"longer distances they take angles, and the scores they make, that the model has not seen.")
if worst_long == "rope" or best_long != "rope":
    sentences.append(rope_note)
ch.markdown("extrapolation-summary", " ".join(sentences))
ch.paper("press2022", "ALiBi keeps its perplexity on inputs longer than training; others degrade",
         theirs="ALiBi flat, sinusoidal, rotary and T5 rise with length (Figure 1)",
         ours=f"perplexity at {max(FACTORS)}x the training length: ALiBi {at_long['alibi']:.2f} "
              f"({ratio['alibi']:.2f}x its own at {TRAIN_LEN}), RoPE {at_long['rope']:.2f}, "
              f"sinusoidal {at_long['sinusoidal']:.2f}",
         section="the-paper-reproduced")

# %% [markdown]
# ### Position interpolation with a little training
#
# Chen et al. fine-tune after interpolating. Here: copies of the RoPE model trained for a few
# more steps on windows of 4 × `TRAIN_LEN`, once with plain RoPE (positions beyond the trained
# range) and once with interpolation (positions scaled by 1/4 into the trained range).

# %%
class WithRopeScale(nn.Module):
    """A PositionLM that always runs with one ``rope_scale`` (so ``train`` can call it plainly)."""

    def __init__(self, model: PositionLM, rope_scale: float):
        super().__init__()
        self.model, self.rope_scale = model, rope_scale

    def forward(self, ids):
        return self.model(ids, rope_scale=self.rope_scale)


TARGET = 4 * TRAIN_LEN
FT_STEPS = ch.pick(60, 6)
ft_config = TrainConfig(steps=FT_STEPS, lr=1e-3, warmup_steps=ch.pick(5, 1), min_lr_ratio=0.1, seed=2)
finetuned = {}
for name, scale in (("plain", 1.0), ("interpolated", TRAIN_LEN / TARGET)):
    wrapped = WithRopeScale(copy.deepcopy(models["rope"]), scale)
    before = perplexity(models["rope"], TARGET, rope_scale=scale)
    train(wrapped, lambda g: text_windows(train_ids, BATCH // 2, TARGET, g), ft_config, device=device)
    wrapped.eval()
    finetuned[name] = (before, perplexity(wrapped.model, TARGET, rope_scale=scale))
ch.table("pi-finetune", ["RoPE model at $L' = " + str(TARGET) + "$", "no further training",
                         f"after {FT_STEPS} steps at $L'$"], [
    ["positions $0 \dots L'-1$ (extrapolation)", *(f"{v:.2f}" for v in finetuned["plain"])],
    [f"positions scaled by $L/L' = 1/{TARGET // TRAIN_LEN}$ (interpolation)",
     *(f"{v:.2f}" for v in finetuned["interpolated"])],
    [f"for scale: the model at its own length $L = {TRAIN_LEN}$", f"{curves['rope'][0]:.2f}", ""],
], align="lrr")
(plain_before, plain_after), (pi_before, pi_after) = finetuned["plain"], finetuned["interpolated"]
# Differences under 2% are within what a different seed could give: call them a tie.
verdict = ("faster" if pi_after < 0.98 * plain_after else
           "slower" if pi_after > 1.02 * plain_after else "tie")
ch.markdown("pi-finetune-summary", (
    f"After the same {FT_STEPS} steps on windows of {TARGET} characters, the interpolated model reaches "
    f"{pi_after:.2f} and the extrapolating one {plain_after:.2f}: "
    + {"faster": "interpolation adapts faster, in line with the paper's claim that interpolated "
                 "models need only minimal fine-tuning. ",
       "slower": "here interpolation adapts more slowly than plain extrapolation. ",
       "tie": "within 2% of each other, so no advantage either way at this scale. "}[verdict]
    + f"Before those steps: {pi_before:.2f} interpolated, {plain_before:.2f} extrapolated."
))
ch.paper("chen2023", "position interpolation needs only minimal fine-tuning to extend the window",
         theirs="LLaMA 7B-65B to 32768 tokens within 1000 steps (abstract)",
         ours=f"after {FT_STEPS} steps at {TARGET}: {pi_after:.2f} interpolated, {plain_after:.2f} extrapolated "
              f"(perplexity)",
         section="the-paper-reproduced")

# %% [markdown]
# ## 5. The RoPE layout bug and per-sequence positions, on the trained model
#
# The RoPE model was trained with the half-split layout. Running it with the interleaved
# layout (the porting bug) and with the interleaved layout *after* permuting each head's query
# and key channels: the columns of W_Q and W_K, which are rows of the `nn.Linear` weight
# (and entries of its bias). That is the correct port.

# %%
rope_model = models["rope"]
perm = rope_layout_permutation(D_MODEL // HEADS)


def set_layout(model: PositionLM, layout: str) -> None:
    for block in model.blocks:
        block.attn.rope_layout = layout


@torch.no_grad()
def permute_qk_channels(model: PositionLM, order: torch.Tensor) -> None:
    """Reorder each head's query and key channels: columns of W_Q, W_K (rows of nn.Linear.weight), biases."""
    head_dim = D_MODEL // HEADS
    for block in model.blocks:
        rows = torch.arange(3 * D_MODEL).view(3, HEADS, head_dim)
        rows[0], rows[1] = rows[0][:, order], rows[1][:, order]  # q and k heads; v untouched
        block.attn.qkv.weight.copy_(block.attn.qkv.weight[rows.flatten()])
        block.attn.qkv.bias.copy_(block.attn.qkv.bias[rows.flatten()])


native = perplexity(rope_model, TRAIN_LEN)
set_layout(rope_model, "interleaved")
mixed = perplexity(rope_model, TRAIN_LEN)
inverse = torch.argsort(perm)      # half-split channel (i, i + d/2) -> interleaved (2i, 2i + 1)
permute_qk_channels(rope_model, inverse)
ported = perplexity(rope_model, TRAIN_LEN)
permute_qk_channels(rope_model, perm)  # undo: back to the trained model
set_layout(rope_model, "half_split")
assert perplexity(rope_model, TRAIN_LEN) == native
ch.table("rope-layouts", ["RoPE model (trained half-split), run with", f"perplexity at $L = {TRAIN_LEN}$"], [
    ["half-split (as trained)", f"{native:.3f}"],
    ["interleaved, weights unchanged (the porting bug)", f"{mixed:.3f}"],
    ["interleaved, each head's columns of $W_Q$, $W_K$ permuted (rows of the `nn.Linear` weight, and "
     "the bias entries)", f"{ported:.3f}"],
], align="lr")

# %%
# Per-sequence positions: a left-padded batch through layer 0's projections.
lines = ["Alice was beginning to get very", "tired of", "sitting by her sister"]
seq = max(len(s) for s in lines)
block0 = rope_model.blocks[0]
padded = torch.zeros(len(lines), seq, dtype=torch.long)
keep = torch.zeros(len(lines), seq, dtype=torch.bool)
for b, line in enumerate(lines):
    padded[b, seq - len(line):] = vocab.encode(line)
    keep[b, seq - len(line):] = True


@torch.no_grad()
def rotated_qk(token_ids: torch.Tensor, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 0's queries and keys after RoPE: each (batch, heads, seq, head_dim)."""
    x = block0.norm1(rope_model.embed(token_ids.to(device)))
    q, k, _ = block0.attn.qkv(x).unflatten(-1, (3, HEADS, -1)).permute(2, 0, 3, 1, 4)
    return apply_rope(q, **options), apply_rope(k, **options)


with_ids = rotated_qk(padded, position_ids=position_ids_from_padding(keep).to(device))
shared = rotated_qk(padded)
errors = {"ids": [], "shared": [], "scores": []}
for b, line in enumerate(lines):
    q_alone, k_alone = (t[0] for t in rotated_qk(vocab.encode(line)[None]))
    real = slice(seq - len(line), seq)
    errors["ids"].append((with_ids[0][b, :, real] - q_alone).abs().max().item())
    errors["shared"].append((shared[0][b, :, real] - q_alone).abs().max().item())
    scores_shared = shared[0][b, :, real] @ shared[1][b, :, real].transpose(-2, -1)
    scores_alone = q_alone @ k_alone.transpose(-2, -1)
    errors["scores"].append(((scores_shared - scores_alone).abs().max() / scores_alone.abs().max()).item())
ch.markdown("position-ids", (
    f"Three lines of *Alice* ({', '.join(str(len(s)) for s in lines)} characters) left-padded to {seq}, "
    f"through the trained RoPE model's first layer. Largest difference between a real token's rotated "
    f"query in the batch and the same query with the line alone: {max(errors['ids']):.1e} with "
    f"per-sequence `position_ids`; {max(errors['shared']):.2f} when the whole batch uses positions 0 to "
    f"{seq - 1} (the longest line, which has no padding, is unaffected). Yet the *scores* between real "
    f"tokens differ by at most {max(errors['scores']):.1e} of their largest value even then: shifting "
    f"all of a line's positions by the same amount is invisible to RoPE's scores."
))
