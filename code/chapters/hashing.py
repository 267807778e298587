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
# # Hashing attention
#
# This notebook produces every figure, table and number of the chapter "Hashing
# attention" (Reformer's LSH attention) of *The Attention Book*:
#
# ```
# python code/chapters/hashing.py --device cpu          # or --device cuda, --quick
# ```
#
# 1. the collision probability of the angular hash h(x) = argmax([xR; −xR]) against the
#    angle between two vectors, measured over many random rotations, beside the exact
#    curve (a closed form for 2 buckets, a two-dimensional integral for more);
# 2. the recall of each query's top key against the number of hash rounds;
# 3. the error of LSH attention against exact shared-QK attention on clustered inputs,
#    for several numbers of buckets and rounds;
# 4. shared against separate queries and keys: one attention layer trained on a small
#    retrieval task each way;
# 5. time against length at a fixed number of tokens per batch (the shape of the
#    Reformer's Fig. 5, right), LSH against PyTorch's SDPA, with fitted exponents.

# %%
from attnbook.chapter import Chapter

ch = Chapter("hashing")

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from attnbook.attention.reformer import (
    collision_probability,
    full_shared_qk_attention,
    lsh_attention,
    lsh_hash,
)
from attnbook.bench import clustered_inputs, fit_power_law, gaussian_inputs, relative_error, time_call
from attnbook.viz import colors

device = ch.device
on_gpu = device.type == "cuda"
ch.one_thread_on_cpu()   # small tensors; one thread also keeps the timings comparable


# %% [markdown]
# ## 1. Collision probability against angle
#
# For two unit vectors x, y at angle θ and a Gaussian R ∈ ℝ^{d×b/2}, the b/2 pairs
# (x r_c, y r_c) are independent standard bivariate normals with correlation cos θ. The
# hashes collide when the same signed coordinate wins for both. For b = 2 that is
# P(same sign) = 1 − θ/π; for b = 4 it is (1 − θ/π)² (two independent hyperplane hashes);
# for b > 2 it is the integral computed by the library's `collision_probability`
# (attnbook.attention.reformer), checked here against both closed forms.

# %%


BUCKETS = [2, 4, 8, 16]
FINE = np.linspace(0.0, math.pi, ch.pick(49, 25))      # where the exact curve is computed
ANGLES = FINE[::2]                                     # where it is measured
ROTATIONS = ch.pick(4000, 600)
DIM = 64

analytic = np.array([collision_probability(a, BUCKETS) for a in FINE]).T   # (buckets, angles)
# the integral must reproduce the closed forms 1 − θ/π (b = 2) and (1 − θ/π)² (b = 4, where the
# power G^{b/2−1} is actually used): a check of the grid
grid_error = max(float(np.abs(analytic[0] - (1 - FINE / math.pi)).max()),
                 float(np.abs(analytic[1] - (1 - FINE / math.pi) ** 2).max()))
assert grid_error < 5e-3, grid_error
analytic = {b: analytic[i] for i, b in enumerate(BUCKETS)}
analytic[2] = 1 - FINE / math.pi
analytic[4] = (1 - FINE / math.pi) ** 2

gen = ch.seed(1)
base = F.normalize(torch.randn(len(ANGLES), 2, DIM, generator=gen, dtype=torch.float64), dim=-1)
x = base[:, 0]
ortho = F.normalize(base[:, 1] - (base[:, 1] * x).sum(-1, keepdim=True) * x, dim=-1)
angles_t = torch.tensor(ANGLES, dtype=torch.float64)[:, None]
y = torch.cos(angles_t) * x + torch.sin(angles_t) * ortho           # exactly at angle θ from x
pairs = torch.cat([x, y])[None, None]                                 # (1, 1, 2·angles, d)

measured = {}
worst_z = 0.0
for b in BUCKETS:
    buckets = lsh_hash(pairs, num_buckets=b, generator=ch.seed(10 + b), num_rounds=ROTATIONS)[0, 0]
    same = (buckets[:, :len(ANGLES)] == buckets[:, len(ANGLES):]).double()   # (rotations, angles)
    measured[b] = same.mean(0).numpy()
    exact_at = analytic[b][::2]
    se = np.sqrt(exact_at * (1 - exact_at) / ROTATIONS)
    z = np.abs(measured[b] - exact_at) / np.maximum(se, 1 / ROTATIONS)
    worst_z = max(worst_z, float(z.max()))
half = {b: float(np.interp(0.5, analytic[b][::-1], FINE[::-1])) for b in BUCKETS}
ch.markdown("collision-summary", (
    f"Each measured point is the fraction of {ROTATIONS} random rotations $R$ under which the two "
    f"vectors ($d = {DIM}$) share a bucket. The largest gap between a measured point and the exact "
    f"curve is {worst_z:.1f} binomial standard errors "
    + ("(within sampling noise: a gap of 4 or more would be suspicious among "
       f"{len(ANGLES) * len(BUCKETS)} points)." if worst_z < 4 else
       "— more than sampling noise explains; treat the integral or the code as suspect.")
    + " The angle at which two vectors collide half the time shrinks as buckets are added: "
    + ", ".join(f"{math.degrees(half[b]):.0f}° for $b = {b}$" for b in BUCKETS) + "."))


def draw_collision(theme: str):
    c = colors(theme)
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    for i, b in enumerate(BUCKETS):
        colour = c["palette"][i]
        ax.plot(np.degrees(FINE), analytic[b], "-", color=colour, linewidth=1.2,
                label=f"b = {b}, exact" + {2: " (1 − θ/π)", 4: " (1 − θ/π)²"}.get(b, " (integral)"))
        ax.plot(np.degrees(ANGLES), measured[b], "o", color=colour, markersize=3.5,
                label=f"b = {b}, measured")
    ax.set_xlabel("angle θ between the two vectors (degrees)", fontsize=9)
    ax.set_ylabel("P(same bucket)", fontsize=9)
    ax.set_xticks([0, 30, 60, 90, 120, 150, 180])
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.5)
    ax.legend(fontsize=8, ncol=2, frameon=False)
    fig.tight_layout()
    return fig


ch.figure("collision", draw_collision)


# %% [markdown]
# ## 2. Recall of the top key against hash rounds
#
# With v = identity, LSH attention returns its effective n × n weight matrix. A query
# "finds" its top key (largest shared-QK score, itself excluded) when that key gets a
# nonzero weight: it shared a chunk, or the chunk before, in at least one round.

# %%
REC_N = ch.pick(1024, 256)
REC_HEADS = ch.pick(4, 2)
REC_BUCKETS = REC_N // 64
ROUNDS = [1, 2, 4, 8]
eye = torch.eye(REC_N, dtype=torch.float32).expand(1, REC_HEADS, REC_N, REC_N)


def top_key(qk: torch.Tensor) -> torch.Tensor:
    scores = qk @ F.normalize(qk, dim=-1).transpose(-1, -2)
    scores.diagonal(dim1=-2, dim2=-1).fill_(-math.inf)                 # itself excluded
    return scores.argmax(-1)                                            # (1, heads, n)


recall = {}
rec_inputs = {}
for name, make in (("gaussian", gaussian_inputs), ("clustered", clustered_inputs)):
    q, _, _ = make(1, REC_HEADS, REC_N, 64, generator=ch.seed(20), dtype=torch.float32)
    rec_inputs[name] = q
    best = top_key(q)
    recall[name] = []
    for r in ROUNDS:
        weights = lsh_attention(q, eye, num_buckets=REC_BUCKETS, chunk_size=64, num_rounds=r,
                                generator=ch.seed(30 + r))           # (1, heads, n, n)
        found = weights.gather(-1, best[..., None])[..., 0] > 0
        recall[name].append(found.double().mean().item())

ch.table("recall", ["inputs"] + [f"{r} round" + ("s" if r > 1 else "") for r in ROUNDS],
         [[name] + [f"{x:.3f}" for x in recall[name]] for name in recall])
ch.paper("kitaev2020", "more hash rounds make LSH attention closer to full attention",
         theirs="copy accuracy with full-attention training: 52.5% (LSH-1) to 94.8% (LSH-8) (Table 2)",
         ours=f"top key found for {100 * recall['gaussian'][0]:.0f}% of queries with 1 round, "
              f"{100 * recall['gaussian'][-1]:.0f}% with {ROUNDS[-1]} (Gaussian inputs)",
         section="the-paper-reproduced")
g1 = recall["gaussian"][0]
ch.markdown("recall-summary", (
    f"$n = {REC_N}$, $d = 64$, $b = {REC_BUCKETS}$ buckets, chunks of 64, {REC_HEADS} heads. "
    f"On Gaussian inputs one round finds the top key for {100 * g1:.0f}% of the queries and "
    f"{ROUNDS[-1]} rounds for {100 * recall['gaussian'][-1]:.0f}%; if every query had the same "
    f"chance and the rounds were independent, {ROUNDS[-1]} rounds would give "
    f"{100 * (1 - (1 - g1) ** ROUNDS[-1]):.0f}%. "
    + ("The measured recall is lower, as it must be when queries differ: $1 - (1 - p)^r$ is concave "
       "in a query's one-round chance $p$, so queries whose top key is at a large angle, missed round "
       "after round, pull the average below the curve computed from the average $p$."
       if recall["gaussian"][-1] < 1 - (1 - g1) ** ROUNDS[-1] - 0.01 else
       "The measured recall is close to that prediction.")
    + f" On clustered inputs the top key lies in the query's own tight cluster and one round "
    f"already finds it for {100 * recall['clustered'][0]:.0f}% of the queries."))


def draw_recall(theme: str):
    c = colors(theme)
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    for i, name in enumerate(recall):
        ax.plot(ROUNDS, recall[name], "o-", color=c["palette"][i], markersize=4, label=f"{name}, measured")
    ax.plot(ROUNDS, [1 - (1 - g1) ** r for r in ROUNDS], ":", color=c["palette"][0],
            label="gaussian, 1 − (1 − recall₁)^rounds")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ROUNDS, [str(r) for r in ROUNDS])
    ax.set_xlabel("hash rounds", fontsize=9)
    ax.set_ylabel("fraction of queries that\nsee their top key", fontsize=9)
    ax.set_ylim(0, 1.02)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.5)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    fig.tight_layout()
    return fig


ch.figure("recall", draw_recall)


# %% [markdown]
# ## 3. Error against exact shared-QK attention

# %%
ERR_N = ch.pick(1024, 256)
ERR_BUCKETS = ch.pick([2, 8, 16, 32, 64], [2, 8, 16])
ERR_CLUSTERS = 64
ERR_SEEDS = ch.pick(3, 1)
errors = {b: [] for b in ERR_BUCKETS}
qk, _, v = clustered_inputs(1, 4, ERR_N, 64, generator=ch.seed(40), num_clusters=ERR_CLUSTERS,
                           dtype=torch.float32)
exact = full_shared_qk_attention(qk, v)
for b in ERR_BUCKETS:
    for r in ROUNDS:
        errs = [relative_error(lsh_attention(qk, v, num_buckets=b, chunk_size=64, num_rounds=r,
                                             generator=ch.seed(100 * s + 10 * b + r)), exact)
                for s in range(ERR_SEEDS)]
        errors[b].append(float(np.mean(errs)))

ch.table("error", ["buckets b"] + [f"{r} round" + ("s" if r > 1 else "") for r in ROUNDS],
         [[b] + [f"{e:.3f}" for e in errors[b]] for b in ERR_BUCKETS])
best_b = min(ERR_BUCKETS, key=lambda b: errors[b][0])
ch.markdown("error-summary", (
    f"Relative error $\\lVert O_{{\\text{{LSH}}}} - O\\rVert_F / \\lVert O\\rVert_F$ against dense "
    f"shared-QK attention with the self rule, clustered inputs ($n = {ERR_N}$, $d = 64$, "
    f"{ERR_CLUSTERS} clusters, "
    f"4 heads, chunks of 64), mean over {ERR_SEEDS} hash seed{'s' if ERR_SEEDS > 1 else ''}. "
    f"With one round the smallest error is at $b = {best_b}$ ({errors[best_b][0]:.3f}); going from 1 to "
    f"{ROUNDS[-1]} rounds takes $b = {ERR_BUCKETS[-1]}$ from {errors[ERR_BUCKETS[-1]][0]:.3f} to "
    f"{errors[ERR_BUCKETS[-1]][-1]:.3f}. "
    + ("An error above 1 is worse than outputting zeros. The values are independent $\\mathcal{N}(0, 1)$, "
       "so the exact output, an average over a whole cluster of $m$ tokens, is short (length "
       "$\\propto 1/\\sqrt{m}$). LSH attention that finds $k$ of the $m$ members returns their average, "
       "of squared length about $m/k$ times larger, which has about the same inner product with the "
       "exact output. Then the relative error is about $\\sqrt{m/k - 1}$, above 1 when fewer than half "
       "the cluster is found. "
       if max(max(e) for e in errors.values()) > 1 else "")))


def draw_error(theme: str):
    c = colors(theme)
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    for i, b in enumerate(ERR_BUCKETS):
        ax.plot(ROUNDS, errors[b], "o-", color=c["palette"][i % len(c["palette"])], markersize=4,
                label=f"b = {b}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ROUNDS, [str(r) for r in ROUNDS])
    ax.axhline(1.0, color=c["fg"], linestyle=":", linewidth=0.8, label="outputting zeros")
    ticks = [0.1, 0.2, 0.5, 1, 2, 5]
    low, high = min(min(e) for e in errors.values()), max(max(e) for e in errors.values())
    ax.set_yticks([t for t in ticks if low / 1.5 <= t <= high * 1.5],
                  [str(t) for t in ticks if low / 1.5 <= t <= high * 1.5])
    ax.yaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("hash rounds", fontsize=9)
    ax.set_ylabel("relative error vs exact", fontsize=9)
    ax.tick_params(which="both", labelsize=8)
    ax.grid(True, alpha=0.5)
    ax.legend(fontsize=8, frameon=False, ncol=2)
    fig.tight_layout()
    return fig


ch.figure("error-vs-rounds", draw_error)


# %% [markdown]
# ## 4. Shared or separate queries and keys
#
# A small retrieval task: a sequence of random "key" tokens each followed by a "value"
# token; the last position repeats one of the key tokens and must attend to the value that
# followed it. One attention layer (no MLP), trained each way with the same seed and steps.

# %%
VOCAB, PAIRS, D = 16, 8, 32
STEPS = ch.pick(240, 60)
EVAL_EVERY = ch.pick(20, 20)
curves = {}


def retrieval_batch(gen: torch.Generator, batch: int):
    keys = torch.stack([torch.randperm(VOCAB, generator=gen)[:PAIRS] for _ in range(batch)])
    values = torch.randint(VOCAB, (batch, PAIRS), generator=gen) + VOCAB
    pick = torch.randint(PAIRS, (batch,), generator=gen)
    seq = torch.stack([keys, values], -1).reshape(batch, 2 * PAIRS)
    query = keys.gather(1, pick[:, None])
    target = values.gather(1, pick[:, None])[:, 0] - VOCAB
    return torch.cat([seq, query], 1), target


class OneLayer(torch.nn.Module):
    def __init__(self, shared: bool):
        super().__init__()
        self.shared = shared
        self.embed = torch.nn.Embedding(2 * VOCAB, D)
        self.pos = torch.nn.Parameter(0.1 * torch.randn(2 * PAIRS + 1, D))
        self.prev = torch.nn.Linear(D, D, bias=False)      # lets a token carry its predecessor
        self.q = torch.nn.Linear(D, D, bias=False)
        self.k = torch.nn.Linear(D, D, bias=False)
        self.v = torch.nn.Linear(D, D, bias=False)
        self.out = torch.nn.Linear(D, VOCAB)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos
        x = x + self.prev(F.pad(x, (0, 0, 1, 0))[:, :-1])  # each token adds a learned map of its predecessor
        q = self.q(x)[:, None]                              # (batch, 1, seq, D)
        v = self.v(x)[:, None]
        if self.shared:                                     # keys = unit queries, self rule
            out = full_shared_qk_attention(q, v, scale=1.0)
        else:
            k = self.k(x)[:, None]
            out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), -1) @ v
        return self.out(out[:, 0, -1])


qk_results = {}
for shared in (False, True):
    torch.manual_seed(5)
    model = OneLayer(shared)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = ch.seed(60)
    curve = []
    held_tokens, held_target = retrieval_batch(ch.seed(61), 2000)
    for step in range(STEPS):
        if step % EVAL_EVERY == 0:
            with torch.no_grad():
                curve.append((model(held_tokens).argmax(-1) == held_target).double().mean().item())
        tokens, target = retrieval_batch(gen, 64)
        loss = F.cross_entropy(model(tokens), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = model(held_tokens)
        qk_results[shared] = (F.cross_entropy(logits, held_target).item(),
                              (logits.argmax(-1) == held_target).double().mean().item())
    curves[shared] = curve + [qk_results[shared][1]]

ch.table("shared-qk", ["queries and keys", "held-out loss", "held-out accuracy"],
         [["separate ($W_Q$, $W_K$)", f"{qk_results[False][0]:.3f}", f"{qk_results[False][1]:.3f}"],
          ["shared ($k_j = q_j/\\lVert q_j\\rVert$, self rule)", f"{qk_results[True][0]:.3f}",
           f"{qk_results[True][1]:.3f}"]], align="lrr")
gap = qk_results[False][1] - qk_results[True][1]
ch.paper("kitaev2020", "sharing queries and keys costs little",
         theirs="shared QK no worse than separate on enwik8 and imagenet64 (Fig. 3 left)",
         ours=f"held-out accuracy {qk_results[True][1]:.3f} shared vs {qk_results[False][1]:.3f} separate (toy task)",
         section="the-paper-reproduced")


def steps_to(curve, level=0.9):
    hit = [i * EVAL_EVERY for i, acc in enumerate(curve[:-1]) if acc >= level]
    return hit[0] if hit else None


reach = {shared: steps_to(curves[shared]) for shared in curves}
reach_text = " ".join(
    f"{'Shared' if shared else 'Separate'} queries and keys first pass 90% held-out accuracy "
    + (f"at step {reach[shared]}." if reach[shared] is not None else f"within {STEPS} steps: never.")
    for shared in (False, True))
ch.markdown("shared-qk-summary", (
    f"After {STEPS} Adam steps on batches of 64 (chance accuracy {1 / VOCAB:.3f}), "
    + (f"sharing queries and keys costs {100 * gap:.0f} points of accuracy on this task."
       if gap > 0.02 else
       f"shared queries and keys do about as well as separate ones ({qk_results[True][1]:.3f} "
       f"against {qk_results[False][1]:.3f})."
       if abs(gap) <= 0.02 else
       f"shared queries and keys do better here ({qk_results[True][1]:.3f} against "
       f"{qk_results[False][1]:.3f}).") + " " + reach_text))


def draw_shared(theme: str):
    c = colors(theme)
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    for i, shared in enumerate((False, True)):
        steps = [j * EVAL_EVERY for j in range(len(curves[shared]) - 1)] + [STEPS]
        ax.plot(steps, curves[shared], "o-" if shared else "s-", color=c["palette"][i], markersize=3,
                label="shared QK (unit keys, self rule)" if shared else "separate Q and K")
    ax.axhline(1 / VOCAB, color=c["fg"], linestyle=":", linewidth=0.8, label="chance")
    ax.set_xlabel("training step", fontsize=9)
    ax.set_ylabel("held-out accuracy", fontsize=9)
    ax.set_ylim(0, 1.02)
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.5)
    ax.legend(fontsize=8, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 0.1))  # above chance
    fig.tight_layout()
    return fig


ch.figure("shared-qk", draw_shared)


# %% [markdown]
# ## 5. Time against length at a fixed number of tokens

# %%
TOKENS = ch.pick(16384, 2048)
LENGTHS = ch.pick([512, 1024, 2048, 4096, 8192, 16384], [256, 512, 1024, 2048])
HEADS, HEAD_DIM = 2, 64
times = {"SDPA (exact)": [], "LSH, 2 rounds": []}
for n in LENGTHS:
    batch = TOKENS // n
    g = ch.seed(70)
    q, k, v = (torch.randn(batch, HEADS, n, HEAD_DIM, generator=g, device=device) for _ in range(3))
    buckets = max(2, 2 * n // 64)                # b = 2n/c: a chunk is twice the mean bucket
    fns = {"SDPA (exact)": lambda: F.scaled_dot_product_attention(q, k, v),
           "LSH, 2 rounds": lambda: lsh_attention(q, v, num_buckets=buckets, chunk_size=64, num_rounds=2,
                                                  generator=torch.Generator(device=device).manual_seed(0))}
    with torch.no_grad():
        for name, fn in fns.items():
            times[name].append(time_call(fn, device=device, repeats=ch.pick(5, 2), min_repeats=2,
                                         budget_s=ch.pick(1.5, 0.3))["median_s"])

per_sequence = {name: [t / (TOKENS // n) for t, n in zip(ts, LENGTHS)] for name, ts in times.items()}
exponents = {name: fit_power_law(LENGTHS, ts)[0] for name, ts in per_sequence.items()}
ch.table("timing", ["length n", "sequences per batch"] + [f"{name}, ms per batch" for name in times],
         [[n, TOKENS // n] + [f"{1e3 * times[name][i]:.1f}" for name in times]
          for i, n in enumerate(LENGTHS)])
ch.markdown("timing-summary", (
    f"Each batch holds {TOKENS} tokens ({HEADS} heads, $d_k = {HEAD_DIM}$, float32, "
    f"{'GPU' if on_gpu else 'one CPU thread'}). Fitted over the lengths measured, time per sequence grows "
    f"as $n^{{{exponents['SDPA (exact)']:.2f}}}$ for SDPA and $n^{{{exponents['LSH, 2 rounds']:.2f}}}$ "
    f"for LSH attention (chunks of 64, $b = 2n/64$ buckets, so that a chunk holds twice the mean "
    f"bucket, the paper's setting). "
    + (f"At $n = {LENGTHS[-1]}$ LSH attention is {times['SDPA (exact)'][-1] / times['LSH, 2 rounds'][-1]:.1f}× "
       f"faster than SDPA." if times["LSH, 2 rounds"][-1] < times["SDPA (exact)"][-1] else
       f"Even at $n = {LENGTHS[-1]}$ SDPA is faster "
       f"({times['LSH, 2 rounds'][-1] / times['SDPA (exact)'][-1]:.1f}× less time): its exact kernel is "
       "fused and tuned, while our LSH code sorts, gathers and runs two rounds in plain PyTorch.")))


def draw_timing(theme: str):
    c = colors(theme)
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    for i, name in enumerate(times):
        ax.plot(LENGTHS, [1e3 * t for t in times[name]], "o-", color=c["palette"][i], markersize=4,
                label=f"{name}, fit n^{exponents[name]:.2f} per sequence")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"sequence length n ({TOKENS} tokens per batch)", fontsize=9)
    ax.set_ylabel("ms per batch", fontsize=9)
    ax.tick_params(which="both", labelsize=8)
    ax.yaxis.set_minor_formatter(plt.NullFormatter())
    ax.grid(True, alpha=0.5)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


ch.figure("timing", draw_timing, measured=True)

# %%
print("written:", ", ".join(sorted(ch.written)))
