# %% [markdown]
# # 12. Low-rank attention
#
# The experiments of chapter 12, in the order the page shows them: the singular-value
# spectrum of MiniLM's real attention matrices on the shipped Alice text (Linformer's
# Fig. 1 at small scale); then Linformer attention on MiniLM's real queries, keys and
# values, recomputed with attnbook, with four choices of the k × n projections (random,
# mean pooling, fitted to one text and tested on another, and the truncated SVD of the
# attention matrix as the rank-k optimum); and the checks and pitfalls of the page.
#
# Run it with `python code/chapters/low-rank.py --device {auto,cpu,cuda} [--quick]`.

# %%
from attnbook.chapter import Chapter

ch = Chapter("low-rank")
ch.one_thread_on_cpu()  # small matrices: one thread each, the fit below runs on a second core

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from attnbook.attention import split_heads, stable_softmax
from attnbook.attention.linformer import (
    linformer_attention,
    cumulative_singular_value_share,
    linformer_effective_matrix,
)
from attnbook.bench import mean_pooling_projection
from attnbook.data.text import load_text
from attnbook.models import load_minilm, minilm_attentions
from attnbook.viz import attention_cmap, colors

ON_GPU = ch.device.type == "cuda"
seeded = ch.seed(0)   # seeds Python, NumPy and torch (the returned generator is not used)


# %% [markdown]
# ## The text and the model
#
# The shipped text (chapters 1-3 of *Alice's Adventures in Wonderland*) is tokenized once
# and cut into windows of n tokens: [CLS], n - 2 word pieces, [SEP]. n = 512 is the
# length of Linformer's Fig. 1 and MiniLM's longest input.

# %%
tokenizer, model = load_minilm(ch.device)
NUM_LAYERS, NUM_HEADS = model.config.num_hidden_layers, model.config.num_attention_heads
HEAD_DIM = model.config.hidden_size // NUM_HEADS
N = ch.pick(512, 128)                   # tokens per window
RANK = N // 4                           # the rank of the layers x heads map: 128 of 512, as in the paper
text_ids = tokenizer(load_text(), add_special_tokens=False, verbose=False).input_ids
BODY = N - 2
NUM_WINDOWS = len(text_ids) // BODY
windows = [[tokenizer.cls_token_id] + text_ids[w * BODY:(w + 1) * BODY] + [tokenizer.sep_token_id]
           for w in range(NUM_WINDOWS)]
# Windows for the spectrum, spread over the text; training windows from its start, test
# windows from its end (the story's third chapter): the fitted projection never sees them.
SPECTRUM_WINDOWS = np.linspace(0, NUM_WINDOWS - 1, ch.pick(15 if ON_GPU else 6, 2)).round().astype(int).tolist()
TRAIN_WINDOWS = list(range(ch.pick(8 if ON_GPU else 2, 1)))
TEST_WINDOWS = list(range(NUM_WINDOWS - ch.pick(4 if ON_GPU else 2, 1), NUM_WINDOWS))
print(f"{len(text_ids)} word pieces -> {NUM_WINDOWS} windows of {N} tokens")


# %% [markdown]
# ## Queries, keys and values of every layer, recomputed with attnbook

# %%
# --8<-- [start:qkv]
@torch.no_grad()
def minilm_qkv(model, input_ids):
    """Every layer's q, k, v, each (layers, batch, heads, n, head_dim), recomputed from
    the layer's input with its own weights (no padding: every token is real)."""
    hidden_states = model(input_ids=input_ids, output_hidden_states=True).hidden_states
    per_layer = []
    for layer, hidden in zip(model.encoder.layer, hidden_states[:-1]):  # hidden_states[i] enters layer i
        attn = layer.attention.self
        per_layer.append([split_heads(F.linear(hidden, lin.weight, lin.bias), NUM_HEADS)
                          for lin in (attn.query, attn.key, attn.value)])
    return [torch.stack(t) for t in zip(*per_layer)]
# --8<-- [end:qkv]


def batch_of(indices):
    return torch.tensor([windows[w] for w in indices], device=ch.device)


def as_heads(x):
    """(layers, batch, heads, n, d) -> (batch, layers * heads, n, d): every head of every layer
    side by side, so that one call of an attention function handles the whole model."""
    return x.transpose(0, 1).flatten(1, 2)


def exact_attention(q, k, v):
    """softmax(QKᵀ/√d) V and the weights P, (batch, heads, n, n): chapter 2's Eq. (4)."""
    weights = stable_softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]))
    return weights @ v, weights


def relative_error(approx, exact):
    """‖approx − exact‖_F / ‖exact‖_F for each (batch, head): (batch, heads)."""
    return (approx - exact).flatten(-2).norm(dim=-1) / exact.flatten(-2).norm(dim=-1)


train_q, train_k, train_v = (as_heads(t) for t in minilm_qkv(model, batch_of(TRAIN_WINDOWS)))
test_q, test_k, test_v = (as_heads(t) for t in minilm_qkv(model, batch_of(TEST_WINDOWS)))
train_out, _ = exact_attention(train_q, train_k, train_v)
test_out, test_p = exact_attention(test_q, test_k, test_v)

# Our recomputed P is the model's own (Hugging Face, eager): the largest difference.
theirs = minilm_attentions(model, batch_of(TEST_WINDOWS[:1]))            # (layers, 1, heads, n, n)
agreement = (as_heads(theirs)[0] - test_p[0]).abs().max().item()
print(f"recomputed P vs the model's own: max |difference| = {agreement:.1e}")

# %% [markdown]
# ## Fitting a projection to the data (on a second core while the spectra are computed)
#
# One E and one F per layer, shared by its 12 heads (the paper's "headwise sharing"),
# started from mean pooling and trained with Adam to minimise the mean squared relative
# output error over every head of every layer on the training windows.

# %%
KS = ch.pick([16, 32, 64, 128, 256], [8, 16, 32, 64])      # projected lengths k
FIT_KS = KS if ON_GPU else ch.pick([16, 32, 64], [8, 16])  # the fit costs ∝ k: small k on a CPU
FIT_STEPS = ch.pick(400 if ON_GPU else 120, 20)
FIT_LR = 2e-3


# --8<-- [start:fit]
def fit_projections(q, k, v, exact_out, rank, *, steps, lr):
    """Fit one (E, F) pair per layer, shared by the layer's heads, to minimise the mean
    squared relative error of Linformer's output. q, k, v: (batch, layers * heads, n, d).
    Starts from mean pooling. Returns E, F as (layers, rank, n) and the loss per step."""
    pool = mean_pooling_projection(q.shape[2], rank).to(q)
    e_proj = pool.repeat(NUM_LAYERS, 1, 1).requires_grad_()  # (layers, rank, n)
    f_proj = pool.repeat(NUM_LAYERS, 1, 1).requires_grad_()
    optimizer = torch.optim.Adam([e_proj, f_proj], lr=lr)
    losses = []
    for _ in range(steps):
        # one projection per layer, repeated for its heads: (layers * heads, rank, n)
        out = linformer_attention(q, k, v, e_proj.repeat_interleave(NUM_HEADS, 0),
                                  f_proj.repeat_interleave(NUM_HEADS, 0))
        loss = relative_error(out, exact_out).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return e_proj.detach(), f_proj.detach(), losses
# --8<-- [end:fit]


def fit_all():
    torch.manual_seed(0)
    fitted = {}
    for rank in FIT_KS:
        e_proj, f_proj, losses = fit_projections(train_q, train_k, train_v, train_out, rank,
                                                 steps=FIT_STEPS, lr=FIT_LR)
        fitted[rank] = (e_proj.cpu().numpy(), f_proj.cpu().numpy(), losses)
    return fitted


wait_for_fit = ch.in_background(fit_all)

# %% [markdown]
# ## The spectrum of MiniLM's attention matrices (Linformer's Fig. 1)

# %%
cumulative, squared_at_rank = [], []  # per window: (layers, heads, n) and (layers, heads)
for w in SPECTRUM_WINDOWS:
    q, k, v = minilm_qkv(model, batch_of([w]))
    _, p = exact_attention(q[:, 0], k[:, 0], v[:, 0])                       # (layers, heads, n, n)
    sigma_w = torch.linalg.svdvals(p.double())                              # (layers, heads, n), descending
    cumulative.append(cumulative_singular_value_share(sigma_w).cpu())       # Eq. (9)
    # the other reading of the paper's y-axis: shares of σ², i.e. of ‖P‖_F² (Eq. 8)
    squared_at_rank.append(cumulative_singular_value_share(sigma_w, squared=True)[..., RANK - 1].cpu())
cumulative = torch.stack(cumulative).mean(0).numpy()                         # (layers, heads, n)
at_rank = cumulative[:, :, RANK - 1]                                         # c at the RANK-th value
at_rank_squared = torch.stack(squared_at_rank).mean(0).numpy()               # (layers, heads)
layer_curves = cumulative.mean(1)                                            # (layers, n)
ch.json("spectrum", {"n": N, "rank": RANK, "windows": SPECTRUM_WINDOWS,
                     "at_rank": np.round(at_rank, 4).tolist()})


def draw_spectrum(theme):
    c = colors(theme)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.8, 6.6), height_ratios=[1.0, 1.05])
    index = np.arange(1, N + 1)
    for layer in range(NUM_LAYERS):
        top.plot(index, layer_curves[layer], color=c["palette"][layer % len(c["palette"])],
                 lw=1.6, label=f"layer {layer}")
    top.axvline(RANK, color=c["muted"], ls="--", lw=1)
    top.annotate(f"rank {RANK}", (RANK, 0.05), xytext=(4, 0), textcoords="offset points",
                 color=c["muted"], fontsize=9)
    top.set_xlim(1, N)
    top.set_ylim(0, 1.02)
    top.set_xlabel("index of the singular value (largest first)")
    top.set_ylabel("normalised cumulative\nsingular value")
    top.set_title(f"Mean over the 12 heads of each layer, {len(SPECTRUM_WINDOWS)} windows of {N} tokens")
    top.legend(ncols=2, fontsize=9, frameon=False, loc="lower right")
    low = math.floor(at_rank.min() * 20) / 20
    image = bottom.imshow(at_rank, cmap=attention_cmap(theme), vmin=low, vmax=1.0, aspect="auto",
                          interpolation="nearest")
    for layer in range(NUM_LAYERS):
        for head in range(NUM_HEADS):
            value = at_rank[layer, head]
            strong = (value - low) / (1.0 - low) > 0.6
            bottom.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color=c["bg"] if strong else c["fg"])
    bottom.set_xticks(range(NUM_HEADS), [str(h) for h in range(NUM_HEADS)])
    bottom.set_yticks(range(NUM_LAYERS), [str(layer) for layer in range(NUM_LAYERS)])
    bottom.set_xlabel("head")
    bottom.set_ylabel("layer")
    bottom.set_title(f"Normalised cumulative singular value at rank {RANK} of {N}")
    for spine in bottom.spines.values():
        spine.set_visible(False)
    bar = fig.colorbar(image, ax=bottom, fraction=0.04, pad=0.02)
    bar.ax.tick_params(labelsize=8)
    fig.tight_layout()
    return fig


ch.figure("spectrum", draw_spectrum)

lower = at_rank[: NUM_LAYERS // 2].mean()
upper = at_rank[NUM_LAYERS // 2:].mean()
layer_means = at_rank.mean(1)
most, least = np.unravel_index(at_rank.argmax(), at_rank.shape), np.unravel_index(at_rank.argmin(), at_rank.shape)
increasing = bool(np.all(np.diff(layer_means) > 0))
if upper > lower:
    trend = (f"higher layers are more low-rank, as the paper found for RoBERTa: layers "
             f"{NUM_LAYERS // 2}–{NUM_LAYERS - 1} keep on average {upper:.2f} of the sum of the "
             f"singular values in the top {RANK}, layers 0–{NUM_LAYERS // 2 - 1} keep {lower:.2f}"
             + (", and the layer mean rises at every layer" if increasing else
                " (the layer means do not rise at every layer)"))
else:
    trend = (f"the trend the paper found in RoBERTa does not hold here: layers "
             f"{NUM_LAYERS // 2}–{NUM_LAYERS - 1} keep on average {upper:.2f} of the sum of the "
             f"singular values in the top {RANK}, layers 0–{NUM_LAYERS // 2 - 1} keep {lower:.2f}")
ch.markdown("spectrum-summary", (
    f"Over all {NUM_LAYERS * NUM_HEADS} heads, the top {RANK} of the {N} singular values hold between "
    f"{at_rank.min():.2f} (layer {least[0]}, head {least[1]}) and {at_rank.max():.2f} "
    f"(layer {most[0]}, head {most[1]}) of their sum, {at_rank.mean():.2f} on average. "
    f"In MiniLM {trend}."))

# The two readings of the paper's y-axis side by side (the paper gives no formula).
squared_means = at_rank_squared.mean(1)
both_rise = bool(at_rank_squared[NUM_LAYERS // 2:].mean() > at_rank_squared[: NUM_LAYERS // 2].mean()) == (upper > lower)
ch.markdown("spectrum-readings", (
    f"On the {len(SPECTRUM_WINDOWS)} windows used for the spectrum in the experiment below, the mean over the "
    f"{NUM_LAYERS * NUM_HEADS} heads at rank {RANK} of {N} is {at_rank.mean():.2f} with Eq. (9) and "
    f"{at_rank_squared.mean():.2f} with squared singular values; the least concentrated heads hold "
    f"{at_rank.min():.2f} and {at_rank_squared.min():.2f}, and the layer means are "
    f"{'/'.join(f'{x:.2f}' for x in layer_means)} and {'/'.join(f'{x:.2f}' for x in squared_means)}. "
    + ("The comparison of upper and lower layers comes out the same way under both readings."
       if both_rise else "The two readings disagree on whether upper layers are more concentrated than lower ones.")))

mean_curve = cumulative.mean((0, 1))                                           # over all heads
reach_half, reach_most = (int(np.argmax(mean_curve >= level)) + 1 for level in (0.5, 0.9))
below_half = int((at_rank < 0.5).sum())
if below_half:
    long_tail = (f"on average the largest {RANK} singular values hold {at_rank.mean():.2f} of the sum (a flat "
                 f"spectrum would give {RANK / N:.2f}), but the heads differ: the least concentrated, layer "
                 f"{least[0]} head {least[1]}, holds {at_rank.min():.2f}, and {below_half} of the "
                 f"{NUM_LAYERS * NUM_HEADS} heads hold less than half")
else:
    long_tail = (f"in every one of the {NUM_LAYERS * NUM_HEADS} heads the largest {RANK} singular values hold "
                 f"at least {at_rank.min():.2f} of the sum (a flat spectrum would give {RANK / N:.2f}; the "
                 f"least concentrated is layer {least[0]} head {least[1]}), {at_rank.mean():.2f} on average")
ch.table("paper-comparison", ["Wang et al. (2020), Fig. 1 and §3, RoBERTa", f"ours, MiniLM, n = {N}"], [
    ["a long-tail spectrum in every layer, head and task",
     f"{long_tail}; the mean curve over all heads reaches 0.5 at index {reach_half} and 0.9 at index {reach_most}"],
    ["higher layers more skewed (lower rank) than lower layers", trend[0].upper() + trend[1:]],
], align="ll")
ch.paper("wang2020linformer", "attention matrices are low rank: a long-tail singular-value spectrum",
         theirs="long tail in every layer and head of RoBERTa (Fig. 1, §3)",
         ours=f"MiniLM, n = {N}: the top {RANK} singular values hold {at_rank.mean():.2f} of the sum on "
              f"average (flat: {RANK / N:.2f})",
         section="the-paper-reproduced")

# %% [markdown]
# ## The four projections on held-out text
#
# For each k: random Gaussian E = F = R (entries N(0, 1/k), the random matrix of the
# paper's proofs, unscaled), mean pooling, the fitted projection, and the truncated SVD
# of each head's exact P.

# %%
u, sigma, vh = torch.linalg.svd(test_p)        # every head's P, once: (batch, layers * heads, ...)
p_norm = sigma.square().sum(-1).sqrt()         # ‖P‖_F
generator = torch.Generator().manual_seed(12)
random_projection = {rank: (torch.randn(rank, N, generator=generator) / math.sqrt(rank)).to(test_q)
                     for rank in KS}


def linformer_errors(q, k, v, exact_out, exact_p, e_proj, f_proj):
    """Mean relative output error and mean relative matrix error over windows and heads,
    and the output error per layer, for projections (k, n) or (layers * heads, k, n)."""
    out = linformer_attention(q, k, v, e_proj, f_proj)
    out_err = relative_error(out, exact_out)                       # (batch, layers * heads)
    by_layer = out_err.mean(0).reshape(NUM_LAYERS, NUM_HEADS).mean(1)
    mat_err = None
    if exact_p is not None:
        mat_err = relative_error(linformer_effective_matrix(q, k, e_proj, f_proj), exact_p).mean().item()
    return out_err.mean().item(), mat_err, by_layer.cpu().numpy()


results = {name: {} for name in ("random", "pooling", "fitted (train)", "fitted (held-out)", "SVD")}
floor = {}  # per layer
for rank in KS:
    results["random"][rank] = linformer_errors(test_q, test_k, test_v, test_out, test_p,
                                               random_projection[rank], random_projection[rank])
    pool = mean_pooling_projection(N, rank).to(test_q)
    results["pooling"][rank] = linformer_errors(test_q, test_k, test_v, test_out, test_p, pool, pool)
    # --8<-- [start:svd-floor]
    # rank-k truncated SVD of each head's P (Eckart-Young), applied to the values
    approx_out = (u[..., :rank] * sigma[..., None, :rank]) @ (vh[..., :rank, :] @ test_v)
    svd_out_err = relative_error(approx_out, test_out)
    # ‖P − P_k‖_F = sqrt(σ_{k+1}² + … + σ_n²): no rank-k matrix is closer to P
    floor_heads = sigma[..., rank:].square().sum(-1).sqrt() / p_norm   # (batch, layers * heads)
    # --8<-- [end:svd-floor]
    floor[rank] = floor_heads.mean(0).reshape(NUM_LAYERS, NUM_HEADS).mean(1).cpu().numpy()
    results["SVD"][rank] = (svd_out_err.mean().item(), floor_heads.mean().item(),
                            svd_out_err.mean(0).reshape(NUM_LAYERS, NUM_HEADS).mean(1).cpu().numpy())

fitted = wait_for_fit()
for rank, (e_proj, f_proj, losses) in fitted.items():
    e_heads, f_heads = (torch.from_numpy(x).to(test_q).repeat_interleave(NUM_HEADS, 0) for x in (e_proj, f_proj))
    results["fitted (held-out)"][rank] = linformer_errors(test_q, test_k, test_v, test_out, test_p,
                                                          e_heads, f_heads)
    results["fitted (train)"][rank] = linformer_errors(train_q, train_k, train_v, train_out, None,
                                                       e_heads, f_heads)
# The control: mean pooling on the training windows, so that the fitted projection is
# compared with pooling on the same text (and the two texts' difficulty can be compared).
pool_train = {}
for rank in fitted:
    pool_r = mean_pooling_projection(N, rank).to(train_q)
    pool_train[rank] = linformer_errors(train_q, train_k, train_v, train_out, None, pool_r, pool_r)[0]

NAMES = {"random": "random E = F", "pooling": "mean pooling", "fitted (train)": "fitted, training text",
         "fitted (held-out)": "fitted, held-out text", "SVD": "truncated SVD of P"}


def draw_errors(theme):
    c = colors(theme)
    style = {"random": (c["palette"][3], "-", "o"), "pooling": (c["palette"][0], "-", "s"),
             "fitted (held-out)": (c["palette"][1], "-", "^"), "fitted (train)": (c["palette"][1], "--", "^"),
             "SVD": (c["palette"][2], ":", "D")}
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.8, 3.9))
    for column, ax in ((0, left), (1, right)):
        for name, by_rank in results.items():
            if column == 1 and name == "fitted (train)":
                continue  # the matrix error is measured on the held-out text only
            ranks = sorted(by_rank)
            color, line, marker = style[name]
            label = NAMES[name] if column == 0 else None
            if column == 1 and name == "SVD":
                label = None
            ax.plot(ranks, [by_rank[r][column] for r in ranks], color=color, ls=line, marker=marker,
                    ms=4, lw=1.5, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(KS, [str(r) for r in KS])
        ax.minorticks_off()
        ax.set_xlabel("projected length k")
        ax.grid(True, which="major", lw=0.5)
    left.set_ylabel("relative error")
    left.set_title("output  ‖P̃V − PV‖ / ‖PV‖", fontsize=10)
    right.set_title("matrix  ‖P̃ − P‖ / ‖P‖", fontsize=10)
    right.annotate("Eckart–Young floor", (KS[0], results["SVD"][KS[0]][1]), xytext=(0, 9),
                   textcoords="offset points", ha="left", color=style["SVD"][0], fontsize=9)
    fig.legend(loc="lower center", ncols=3, fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.01))
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


ch.figure("errors", draw_errors)


def fmt(x):
    return "—" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


held_out_columns = ["random", "pooling", "fitted (held-out)", "SVD"]
ch.table("output-errors",
         ["k"] + [NAMES[name] for name in held_out_columns] + ["mean pooling, training text", NAMES["fitted (train)"]],
         [[rank] + [fmt(results[name][rank][0]) if rank in results[name] else "—" for name in held_out_columns]
          + [fmt(pool_train[rank]) if rank in pool_train else "—",
             fmt(results["fitted (train)"][rank][0]) if rank in results["fitted (train)"] else "—"]
          for rank in KS])
matrix_columns = ["random", "pooling", "fitted (held-out)", "SVD"]
ch.table("matrix-errors", ["k", "random E = F", "mean pooling", "fitted", "Eckart–Young floor"],
         [[rank] + [fmt(results[name][rank][1]) if rank in results[name] else "—" for name in matrix_columns]
          for rank in KS])

K_SHOWN = RANK
# the spectrum on the same held-out windows as the errors (σ of every head's P, computed above)
test_share = cumulative_singular_value_share(sigma.double())[..., K_SHOWN - 1]   # (batch, layers * heads)
layer_share = test_share.mean(0).reshape(NUM_LAYERS, NUM_HEADS).mean(1).cpu().numpy()
rows = []
for layer in range(NUM_LAYERS):
    rows.append([layer, f"{layer_share[layer]:.3f}", f"{floor[K_SHOWN][layer]:.3f}",
                 f"{results['SVD'][K_SHOWN][2][layer]:.3f}", f"{results['pooling'][K_SHOWN][2][layer]:.3f}"])
ch.table("by-layer", ["layer", f"cumulative singular value at rank {K_SHOWN}",
                      f"Eckart–Young floor, k = {K_SHOWN}", f"output error, truncated SVD, k = {K_SHOWN}",
                      f"output error, mean pooling, k = {K_SHOWN}"], rows)
pool_layers = results["pooling"][K_SHOWN][2]
svd_layers = results["SVD"][K_SHOWN][2]
corr = float(np.corrcoef(layer_share, pool_layers)[0, 1])
top = int(np.argmax(layer_share))                               # the most concentrated layer
place = int(np.flatnonzero(np.argsort(-pool_layers) == top)[0])  # 0 = pooling's largest error
ORDINALS = ["", "second ", "third ", "fourth ", "fifth ", "sixth ", "seventh ", "eighth "]
place_words = ("the smallest" if place == NUM_LAYERS - 1 else f"the {ORDINALS[place]}largest") + f" of the {NUM_LAYERS} layers"
if corr < -0.5:
    layer_text = "layers whose attention is more low-rank are also the layers where pooling errs less."
elif place < NUM_LAYERS // 2:
    layer_text = (f"the spectrum of P does not predict where pooling errs. Layer {top} has the most concentrated "
                  f"spectrum (Eckart–Young floor {floor[K_SHOWN][top]:.3f}, truncated-SVD output error "
                  f"{svd_layers[top]:.3f}), yet pooling's output error there is {pool_layers[top]:.2f}, "
                  f"{place_words}: a matrix can be close to some rank-{K_SHOWN} matrix without being close to "
                  f"any that averages contiguous stretches.")
else:
    layer_text = (f"the spectrum of P does not predict well where pooling errs. Layer {top} has the most "
                  f"concentrated spectrum (Eckart–Young floor {floor[K_SHOWN][top]:.3f}), and pooling's output "
                  f"error there is {pool_layers[top]:.2f}, {place_words}.")
ch.markdown("by-layer-summary", (
    f"Across the {NUM_LAYERS} layers, the correlation between the spectrum's concentration at rank "
    f"{K_SHOWN} and mean pooling's output error at k = {K_SHOWN} is {corr:+.2f}: " + layer_text))

# Generated comparisons: every claim below is chosen from the numbers.
rnd, pool_k, svd_k = (results[name][K_SHOWN][0] for name in ("random", "pooling", "SVD"))
random_worse = all(results["random"][r][0] > results["pooling"][r][0] for r in KS)
sentences = [
    f"At k = {K_SHOWN} (a quarter of n = {N}), the relative output error on the held-out text is "
    f"{rnd:.2f} with random E = F, {pool_k:.2f} with mean pooling and {svd_k:.2f} with the truncated SVD of P.",
    ("Random projections are worse than pooling at every k measured"
     if random_worse else "Random projections are not worse than pooling at every k")
    + (", and their error is larger than the output itself (above 1) at every k: each row of FV sums "
       "all n values with random weights of size about 1/√k, so it is about √(n/k) times as long as one "
       "value, where exact attention returns averages."
       if all(results["random"][r][0] > 1 for r in KS) else "."),
]
fit_ranks = sorted(results["fitted (held-out)"])
train_better = sum(results["fitted (train)"][r][0] < pool_train[r] for r in fit_ranks)
held_better = sum(results["fitted (held-out)"][r][0] < results["pooling"][r][0] for r in fit_ranks)
pairs = "; ".join(f"k = {r}: {results['fitted (train)'][r][0]:.2f} against pooling's {pool_train[r]:.2f} on "
                  f"the training text, {results['fitted (held-out)'][r][0]:.2f} against "
                  f"{results['pooling'][r][0]:.2f} held out" for r in fit_ranks)
pool_gap = max(abs(pool_train[r] - results["pooling"][r][0]) for r in fit_ranks)
sentences.append(
    (f"Mean pooling's error on the training text is within {pool_gap:.2f} of its error on the held-out text "
     f"at every fitted k, so the two texts are about equally hard for it. "
     if pool_gap < 0.05 else
     f"Mean pooling's error differs by up to {pool_gap:.2f} between the two texts, so each fitted number "
     f"must be compared with pooling on the same text. ")
    + f"The fitted projection ({FIT_STEPS} Adam steps from pooling) beats pooling on its training text at "
    f"{train_better} of {len(fit_ranks)} values of k and on the held-out text at {held_better} of "
    f"{len(fit_ranks)} ({pairs}).")
windows_word = f"{len(TRAIN_WINDOWS)} window{'s' if len(TRAIN_WINDOWS) > 1 else ''}"
parameters = " to ".join(f"{2 * r * N:,} at k = {r}" for r in (fit_ranks[0], fit_ranks[-1]))
overfit = (f"The simplest reading is overfitting: E and F hold 2·k·n numbers per layer (from {parameters}), "
           f"fitted to {windows_word} of text; whether more text, or training E and F with the model as the "
           f"paper does, would change this is not tested here.")
if held_better == 0 and train_better > 0:
    sentences.append(f"Fitted on {windows_word}, the gain does not carry over to new text. " + overfit)
elif 0 < held_better < len(fit_ranks):
    sentences.append(f"The gain carries over to new text at only {held_better} of {len(fit_ranks)} values of k."
                     + (" " + overfit if train_better > held_better else ""))
elif held_better == 0:
    sentences.append(f"Fitted on {windows_word}, it does not beat pooling even on its training text.")
elif held_better == len(fit_ranks):
    sentences.append("Fitting helps on new text too, so part of what it learned does not depend on "
                     "the training text.")
below_floor = all(results[name][r][1] >= results["SVD"][r][1] - 1e-6
                  for name in ("random", "pooling", "fitted (held-out)") for r in results[name])
sentences.append(
    "No projection comes below the Eckart–Young floor in the matrix error, as the theorem requires."
    if below_floor else "ERROR: a Linformer matrix came below the Eckart–Young floor; this contradicts "
                        "the theorem and means a bug.")
ch.markdown("errors-summary", " ".join(sentences))

# %% [markdown]
# ## Exact limits and padding, on the real queries, keys and values

# %%
q1, k1, v1, out1 = test_q[:1], test_k[:1], test_v[:1], test_out[:1]          # one window, every head
identity = torch.eye(N, device=ch.device, dtype=q1.dtype)                     # k = n, E = F = I
identity_gap = (linformer_attention(q1, k1, v1, identity, identity) - out1).abs().max().item()

short = 3 * N // 4                                                             # 3/4 of the window is text
pool = mean_pooling_projection(N, N // 8).to(q1)
garbage = torch.Generator().manual_seed(1)
padded_k, padded_v = k1.clone(), v1.clone()
padded_k[:, :, short:] = 30 * torch.randn(padded_k[:, :, short:].shape, generator=garbage).to(q1)
padded_v[:, :, short:] = 30 * torch.randn(padded_v[:, :, short:].shape, generator=garbage).to(q1)
keep = (torch.arange(N, device=ch.device) < short)[None, :]                   # (batch, n): True = real key
with_mask = linformer_attention(q1, padded_k, padded_v, pool, pool, key_padding_mask=keep)
only_real = linformer_attention(q1[:, :, :short], k1[:, :, :short], v1[:, :, :short], pool, pool)
padding_gap = (with_mask[:, :, :short] - only_real).abs().max().item()
without_mask = linformer_attention(q1, padded_k, padded_v, pool, pool)
unmasked_error = relative_error(without_mask[:, :, :short], only_real).mean().item()
ch.markdown("checks", (
    f"- Our recomputed attention matrices equal the model's own (Hugging Face, eager) to "
    f"{agreement:.0e} (largest difference over one window's {NUM_LAYERS * NUM_HEADS} heads).\n"
    f"- With k = n and E = F = I, Linformer's output on a real window differs from exact attention by "
    f"at most {identity_gap:.0e} over all {NUM_LAYERS * NUM_HEADS} heads (float32 rounding).\n"
    f"- A window whose last {N - short} of {N} positions are padding filled with large random keys and "
    f"values: with `key_padding_mask`, the {short} real queries get the output of the {short}-token "
    f"sequence alone ({'exactly' if padding_gap == 0 else f'to {padding_gap:.0e}'}); without the mask their relative error is {unmasked_error:.2f} "
    f"(mean pooling, k = {N // 8}). That shorter sequence still meets the empty-slot problem of the "
    f"fixed-length pitfall below: the mask removes the padded tokens, not their slots."))

# %% [markdown]
# ## A pitfall: a projection built for a longer sequence

# %%
rank = N // 8
q_s, k_s, v_s = test_q[:, :, :short], test_k[:, :, :short], test_v[:, :, :short]
built_for_n = mean_pooling_projection(N, rank).to(q_s)        # its first `short` columns are used
empty_rows = int((built_for_n[:, :short].sum(-1) == 0).sum())          # segments wholly beyond `short`
weights = stable_softmax(q_s @ (built_for_n[:, :short] @ k_s).transpose(-2, -1) / math.sqrt(HEAD_DIM))
empty_mass = weights[..., rank - empty_rows:].sum(-1)                    # (batch, heads, short)
ch.markdown("fixed-n", (
    f"Mean pooling built for n = {N} with k = {rank}, applied to the first {short} tokens of the held-out "
    f"windows: {empty_rows} of its {rank} segments lie entirely beyond the sequence, so their projected "
    f"keys and values are zero vectors. Each zero key still scores 0, and together these keys take "
    f"{empty_mass.mean().item():.0%} of a query's weight on average (between {empty_mass.min().item():.0%} "
    f"and {empty_mass.max().item():.0%}), weight that returns zeros: every output is multiplied by one minus that share (exercise 4)."))

# %% [markdown]
# ## The paper beside ours, and what ran

# %%
ch.table("paper-setup", ["", "Wang et al. (2020), Fig. 1", "this page"], [
    ["model", "RoBERTa-base (12 layers) and RoBERTa-large (24 layers)",
     f"all-MiniLM-L6-v2 ({NUM_LAYERS} layers × {NUM_HEADS} heads, head size {HEAD_DIM})"],
    ["text", "Wiki103 (masked language modelling) and IMDB (classification)",
     "chapters 1–3 of *Alice's Adventures in Wonderland*"],
    ["length n", "512", str(N)],
    ["averaged over", "10k sentences", f"{len(SPECTRUM_WINDOWS)} windows of {N} tokens × 12 heads (left)"],
    ["right panel", "cumulative value at the 128th of 512 singular values, every layer and head (Wiki103)",
     f"the same at rank {RANK} of {N}"],
], align="lll")

ch.markdown("setup", (
    f"The text has {len(text_ids):,} word pieces, cut into {NUM_WINDOWS} windows of n = {N} tokens "
    f"([CLS], {BODY} word pieces, [SEP]), counted from 0 like layers and heads. Spectra: windows "
    f"{', '.join(str(w) for w in SPECTRUM_WINDOWS)}. "
    f"Projections are fitted on window{'s' if len(TRAIN_WINDOWS) > 1 else ''} "
    f"{', '.join(str(w) for w in TRAIN_WINDOWS)} (the opening of the story) and every error is measured on "
    f"window{'s' if len(TEST_WINDOWS) > 1 else ''} {', '.join(str(w) for w in TEST_WINDOWS)} "
    f"(the end of the text), averaged over windows and over all {NUM_LAYERS * NUM_HEADS} heads. "
    f"Fitting: one E and one F per layer shared by its heads, started from mean pooling, {FIT_STEPS} "
    f"Adam steps with learning rate {FIT_LR:g}, for k in {{{', '.join(map(str, FIT_KS))}}}"
    + ("" if FIT_KS == KS else " (its cost grows with k; on a GPU the script fits every k)")
    + f"; random projections, pooling and the truncated SVD for k in {{{', '.join(map(str, KS))}}}."))
