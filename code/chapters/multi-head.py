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
# # Multi-head and cross-attention
#
# This notebook produces every figure, table and number of the chapter "Multi-head and
# cross-attention" of *The Attention Book*. It runs on a laptop CPU in about a minute:
#
# ```
# python code/chapters/multi-head.py --device cpu          # or --device cuda, --quick
# ```
#
# 1. the merge-order pitfall, shown on labelled tensors;
# 2. a same-run speed comparison: per-head loop, batched heads, the fused SDPA kernel and
#    `torch.nn.MultiheadAttention`;
# 3. a one-layer, attention-only model trained on a task with two jobs, and what its heads learn;
# 4. a head-count sweep at fixed width, next to Table 3 (A) of Vaswani et al. (2017);
# 5. a tiny encoder–decoder that reverses sequences, and its cross-attention alignment.

# %%
from attnbook.chapter import Chapter

ch = Chapter("multi-head")

# %%
import math
import statistics
import string
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from attnbook.attention import MultiHeadAttention, merge_heads, multi_head_attention_loop
from attnbook.data import partner_labels, partner_positions, partner_task, reversal_task
from attnbook.device import describe
from attnbook.train import TrainConfig, accuracy, cross_entropy, train
from attnbook.viz import colors, heatmap, token_links

device = ch.device

# %% [markdown]
# ## 1. Merging heads: the right order and the wrong one
#
# We label every entry of a `(heads, batch, seq, head_dim)` tensor with the head and token it
# belongs to, merge the heads both ways, and read off which entries end up in each token's row.

# %%
NUM_HEADS_DEMO, SEQ_DEMO = 2, 3
# Entry value = 10 * head + token, with head_dim = 1 so each head contributes one feature.
labelled = torch.tensor([[10 * h + t for t in range(SEQ_DEMO)] for h in range(NUM_HEADS_DEMO)])
labelled = labelled[:, None, :, None]                        # (heads, batch=1, seq, head_dim=1)

right = merge_heads(labelled.transpose(0, 1))                 # (batch, seq, heads * head_dim)
wrong = labelled.transpose(0, 1).reshape(1, SEQ_DEMO, -1)     # the bug: heads and tokens interleave


def describe_row(row):
    return ", ".join(f"head {int(v) // 10} of token {int(v) % 10}" for v in row)


ch.table(
    "merge-order",
    ["token row", "merge_heads (heads next to head_dim)",
     "reshape of (batch, heads, seq, head_dim)"],
    [[f"token {t}", describe_row(right[0, t]), describe_row(wrong[0, t])] for t in range(SEQ_DEMO)],
    align="lll",
)

# %% [markdown]
# ## 2. Speed: loop vs batched vs fused kernel vs `nn.MultiheadAttention`
#
# Same weights in all four. Times are medians of repeated calls, measured round-robin (each
# repeat runs every implementation once), so that a burst of load on a shared machine hits all
# of them alike; we report ratios to `nn.MultiheadAttention` measured in the same run.
# (These numbers change from run to run; nothing else in this chapter does.)

# %%
IMPLEMENTATIONS = {
    "loop": "per-head loop (`multi_head_attention_loop`)",
    "batched": "batched heads, weights materialised (`need_weights=True`)",
    "fused": "batched heads, fused SDPA kernel (`MultiHeadAttention`)",
    "torch": "`torch.nn.MultiheadAttention` (`need_weights=False`)",
}


def time_ratios(candidates, repeats, baseline="torch", min_sample=ch.pick(0.02, 0.005)):
    """Time each zero-argument callable round-robin; return ratios to ``baseline`` and seconds.

    Each candidate is warmed up once (the first call allocates buffers and picks kernels);
    fast ones are then timed over several calls per sample, so that one sample lasts at least
    ``min_sample`` seconds. Every round times all candidates back to back, and the ratio to the
    baseline is taken within the round: a burst of load from other programs then slows both
    sides of a ratio alike. We report the median over rounds.
    """
    def timed(fn, number):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(number):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / number

    numbers = {}
    for name, fn in candidates.items():
        once = timed(fn, 1)                                    # warm-up
        if once < min_sample:
            once = timed(fn, 1)                                # a warm call, to calibrate
        numbers[name] = max(1, math.ceil(min_sample / once))
    rounds = [{name: timed(fn, numbers[name]) for name, fn in candidates.items()}
              for _ in range(repeats)]
    ratios = {name: statistics.median(r[name] / r[baseline] for r in rounds) for name in candidates}
    seconds = {name: statistics.median(r[name] for r in rounds) for name in candidates}
    return ratios, seconds


def speed_candidates(batch, length, d_model, num_heads, *, backward, names):
    """Callables that run one forward (or forward + backward) pass of each implementation."""
    ch.seed(0)
    ours = MultiHeadAttention(d_model, num_heads, device=device)
    theirs = nn.MultiheadAttention(d_model, num_heads, batch_first=True, device=device)
    with torch.no_grad():  # identical weights: same layout, (3 * d_model, d_model) packed QKV
        theirs.in_proj_weight.copy_(ours.in_proj_weight)
        theirs.in_proj_bias.copy_(ours.in_proj_bias)
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(batch, length, d_model, device=device)
    params = (ours.in_proj_weight, ours.in_proj_bias, ours.out_proj.weight, ours.out_proj.bias)
    forward = {
        "loop": lambda: multi_head_attention_loop(x, None, *params, num_heads),
        "batched": lambda: ours(x, need_weights=True)[0],
        "fused": lambda: ours(x)[0],
        "torch": lambda: theirs(x, x, x, need_weights=False)[0],
    }
    if not backward:
        ours.eval()
        theirs.eval()  # inference: nn.MultiheadAttention may take its native fast path

        def no_grad(fn):
            def run():
                with torch.no_grad():
                    fn()
            return run
        return {name: no_grad(forward[name]) for name in names}

    x.requires_grad_(True)
    grad_out = torch.randn(batch, length, d_model, device=device)
    all_params = [x, *ours.parameters(), *theirs.parameters()]

    def forward_backward(fn):
        def run():
            fn().backward(grad_out)
            for p in all_params:
                p.grad = None
        return run
    return {name: forward_backward(forward[name]) for name in names}


# The chapter's target configuration (batch 8, length 512, d_model 512, 8 heads) and a smaller
# one. The per-head loop's backward pass at the target size is left out to keep the build short.
SPEED_CONFIGS = ch.pick(
    full=[dict(batch=8, length=64, d_model=128, num_heads=8, repeats=15, loop_backward=True),
          dict(batch=8, length=512, d_model=512, num_heads=8, repeats=3, loop_backward=False)],
    quick=[dict(batch=2, length=32, d_model=64, num_heads=4, repeats=5, loop_backward=True),
           dict(batch=4, length=64, d_model=128, num_heads=8, repeats=3, loop_backward=False)],
)
speed_rows, speed_data = [], []
for cfg in SPEED_CONFIGS:
    size = (cfg["batch"], cfg["length"], cfg["d_model"], cfg["num_heads"])
    label = f"batch {size[0]}, $n = {size[1]}$, $d_{{\\text{{model}}}} = {size[2]}$, $h = {size[3]}$"
    inference, inference_s = time_ratios(
        speed_candidates(*size, backward=False, names=list(IMPLEMENTATIONS)), cfg["repeats"])
    names = [n for n in IMPLEMENTATIONS if cfg["loop_backward"] or n != "loop"]
    training, training_s = time_ratios(
        speed_candidates(*size, backward=True, names=names), cfg["repeats"])
    for name, text in IMPLEMENTATIONS.items():
        both = f"{training[name]:.2f}×" if name in training else "not run"
        speed_rows.append([label, text, f"{inference[name]:.2f}×", both])
    speed_data.append({"config": label, "inference_ratio": inference, "inference_s": inference_s,
                       "forward_backward_ratio": training, "forward_backward_s": training_s})

ch.table("speed", ["configuration", "implementation", "inference (no_grad)", "forward + backward"],
         speed_rows, align="llrr")

target = speed_data[-1]
fwd_ratio = target["inference_ratio"]["fused"]
bwd_ratio = target["forward_backward_ratio"]["fused"]


def verdict(ratio):
    if ratio <= 1.0:
        return "no slower than"
    if ratio <= 1.1:
        return "within 10% of"
    return "slower than"


def weights_mib(cfg, heads=None):
    """Size of the float32 weight tensor (batch, heads, n, n) of one layer, in MiB."""
    heads = cfg["num_heads"] if heads is None else heads
    return cfg["batch"] * heads * cfg["length"] ** 2 * 4 / 2**20


# The prose about loop vs batched is picked from the numbers: which effect wins depends on
# the sizes and on the machine (per-call overhead against memory traffic).
small, large = speed_data[0], speed_data[-1]
small_cfg, large_cfg = SPEED_CONFIGS[0], SPEED_CONFIGS[-1]
loop_s, batched_s = small["inference_ratio"]["loop"], small["inference_ratio"]["batched"]
loop_l, batched_l = large["inference_ratio"]["loop"], large["inference_ratio"]["batched"]
findings = [
    f"Measured on this build's device, {describe(device)}, for inference: at {small['config']} "
    f"the per-head loop took **{loop_s:.2f}×** the time of `nn.MultiheadAttention` and the "
    f"batched heads with materialised weights **{batched_s:.2f}×**; at {large['config']}, "
    f"**{loop_l:.2f}×** and **{batched_l:.2f}×**."
]
if loop_l < batched_l:
    findings.append(
        f"So at the larger size the loop was *faster* than batching the heads with weights. "
        f"There each call does a lot of work, so the overhead that batching saves is small, "
        f"while the batched version writes and rereads a {weights_mib(large_cfg):.0f} MiB weight "
        f"tensor at every step of its softmax; the loop handles "
        f"{weights_mib(large_cfg, 1):.0f} MiB at a time, one head's share.")
else:
    findings.append(
        "So batching the heads paid off at the larger size too: the per-call overhead it "
        "saves outweighed the cost of materialising every head's weights at once.")
if loop_s > batched_s:
    findings.append(
        f"At the smaller size, where each call does little work, the loop was the slower of "
        f"the two: its {3 * small_cfg['num_heads']} projections and {small_cfg['num_heads']} "
        f"attentions each pay the per-call overhead.")
else:
    findings.append("At the smaller size the loop was no slower than the batched version either.")
if abs(loop_l - 1.0) <= 0.1:
    findings.append(
        "At the larger size the loop came within 10% of `nn.MultiheadAttention` itself, "
        "even though it materialises each head's weights.")
findings.append(
    f"attnbook's `MultiHeadAttention` (batched heads, fused kernel) took **{fwd_ratio:.2f}×** "
    f"the time of `nn.MultiheadAttention` for inference at the larger size "
    f"({verdict(fwd_ratio)} it) and **{bwd_ratio:.2f}×** for a forward and backward pass "
    f"({verdict(bwd_ratio)} it).")
ch.markdown("speed-summary", " ".join(findings))
ch.json("speed", speed_data)

# %% [markdown]
# ## 3. What heads learn: the partner task
#
# Every letter occurs twice in a sequence, once in upper and once in lower case, and each token
# carries a digit. At every position the model must output two digits: the one of the *previous*
# token (a job for position) and the one of the token's *partner*, the same letter in the other
# case (a job for content).

# %%
NUM_LETTERS, NUM_DIGITS = 8, 10                 # sequences of 16 tokens
D_MODEL, MAIN_HEADS = 64, 4
BATCH = ch.pick(64, 32)
STEPS = ch.pick(300, 30)
HEAD_COUNTS = ch.pick([1, 2, 4, 8, 16, 32], [1, 4, 32])   # head_dim = 64 / h at fixed d_model

example_inputs, example_targets = partner_task(1, NUM_LETTERS, NUM_DIGITS, generator=ch.seed(7))
example_tokens = partner_labels(example_inputs[0], NUM_LETTERS)
example_partner = partner_positions(example_inputs[..., 0], NUM_LETTERS)[0].tolist()
print("tokens: ", " ".join(example_tokens))
print("targets:", example_targets[0].tolist())

where = 3  # explain one position of the example in words
previous_answer, partner_answer = example_targets[0, where].tolist()
ch.markdown("partner-example", (
    f"`{' '.join(example_tokens)}`\n\n"
    f"At position {where} (counting from 0) the token is `{example_tokens[where]}`. The token "
    f"before it is `{example_tokens[where - 1]}`, so its first answer is **{previous_answer}**; "
    f"its partner is `{example_tokens[example_partner[where]]}` at position "
    f"{example_partner[where]}, so its second answer is **{partner_answer}**."
))

# %%
# --8<-- [start:partner-model]
class PartnerModel(nn.Module):
    """Embeddings -> one multi-head self-attention layer -> a linear read-out of two digits.

    Attention-only (no feed-forward block): whatever a position learns about the other
    positions has to come through the heads. Input (batch, seq, 2) holds (symbol, digit).
    """

    def __init__(self, num_letters: int, num_digits: int, d_model: int, num_heads: int):
        super().__init__()
        seq_len = 2 * num_letters
        self.num_digits = num_digits
        self.symbol = nn.Embedding(seq_len, d_model)       # A, B, ..., a, b, ...
        self.digit = nn.Embedding(num_digits, d_model)
        self.position = nn.Embedding(seq_len, d_model)     # learned absolute positions
        self.attn = MultiHeadAttention(d_model, num_heads)
        self.norm = nn.LayerNorm(d_model)
        self.readout = nn.Linear(d_model, 2 * num_digits)  # two answers per position

    def embed(self, inputs):                # (batch, seq, 2) -> (batch, seq, d_model)
        symbols, digits = inputs[..., 0], inputs[..., 1]
        return self.symbol(symbols) + self.digit(digits) + self.position.weight

    def forward(self, inputs):
        x = self.embed(inputs)
        attended, _ = self.attn(x)                          # fused kernel, no weights
        logits = self.readout(self.norm(x + attended))      # residual, then read out
        return logits.unflatten(-1, (2, self.num_digits))   # (batch, seq, 2 jobs, digits)

    def attention_weights(self, inputs):    # (batch, heads, seq, seq)
        return self.attn(self.embed(inputs), need_weights=True)[1]
# --8<-- [end:partner-model]


# --8<-- [start:partner-training]
def train_partner_model(num_heads: int, seed: int = 0):
    ch.seed(seed)                                         # model initialisation
    model = PartnerModel(NUM_LETTERS, NUM_DIGITS, D_MODEL, num_heads)
    config = TrainConfig(steps=STEPS, lr=3e-3, warmup_steps=STEPS // 10,
                         weight_decay=0.01, seed=seed)    # seed: the data stream
    history = train(model, lambda g: partner_task(BATCH, NUM_LETTERS, NUM_DIGITS, generator=g),
                    config, device=device)
    return model.eval(), history
# --8<-- [end:partner-training]


# %% [markdown]
# Small models run faster on one CPU thread (no synchronisation between threads for tiny
# matrices), so we train with one thread and restore the setting afterwards.

# %%
threads = torch.get_num_threads()
if device.type == "cpu":
    torch.set_num_threads(1)

eval_inputs, eval_targets = partner_task(ch.pick(2000, 200), NUM_LETTERS, NUM_DIGITS,
                                         generator=ch.seed(1234))
eval_inputs, eval_targets = eval_inputs.to(device), eval_targets.to(device)


@torch.no_grad()
def evaluate(model):
    logits = model(eval_inputs)
    return {
        "loss": cross_entropy(logits, eval_targets).item(),
        "accuracy": accuracy(logits, eval_targets),
        "accuracy_previous": accuracy(logits[..., 0, :], eval_targets[..., 0]),
        "accuracy_partner": accuracy(logits[..., 1, :], eval_targets[..., 1]),
    }


sweep = {}
for num_heads in HEAD_COUNTS:
    model, history = train_partner_model(num_heads)
    sweep[num_heads] = {"model": model, "history": history, **evaluate(model)}
    print(f"h={num_heads:>2}: loss {sweep[num_heads]['loss']:.4f}  "
          f"accuracy {sweep[num_heads]['accuracy']:.3f}  ({history.seconds:.1f} s)")

main = sweep[MAIN_HEADS]
ch.markdown("partner-accuracy", (
    f"After {STEPS} steps of {BATCH} sequences ({main['history'].seconds:.0f} s on "
    f"{'one CPU thread' if device.type == 'cpu' else describe(device)}), the {MAIN_HEADS}-head "
    f"model gets **{100 * main['accuracy_previous']:.1f}%** of the previous-token digits and "
    f"**{100 * main['accuracy_partner']:.1f}%** of the partner digits right on "
    f"{len(eval_inputs)} held-out sequences (held-out loss {main['loss']:.4f})."
))

# %% [markdown]
# ### Which head does which job?
#
# For every head we average, over held-out queries, the weight it puts on the previous position
# and on the partner's position (leaving out the queries where the two coincide).

# %%
# --8<-- [start:specialisation]
@torch.no_grad()
def head_specialisation(model, inputs):
    """Mean weight each head puts on the previous token and on the partner: two (heads,)."""
    weights = model.attention_weights(inputs)                  # (batch, heads, seq, seq)
    heads, seq_len = weights.shape[1], weights.shape[-1]
    partner = partner_positions(inputs[..., 0], NUM_LETTERS)    # (batch, seq)
    query = torch.arange(1, seq_len, device=inputs.device)      # 0 has no previous token
    on_previous = weights[:, :, query, query - 1]               # (batch, heads, seq - 1)
    index = partner[:, None, 1:, None].expand(-1, heads, -1, 1)
    on_partner = weights[:, :, 1:, :].gather(-1, index)[..., 0] # (batch, heads, seq - 1)
    distinct = (partner[:, None, 1:] != query - 1).float()      # skip queries where both coincide
    count = distinct.sum()                                      # (sequence, query) pairs kept
    return ((on_previous * distinct).sum((0, 2)) / count,
            (on_partner * distinct).sum((0, 2)) / count)
# --8<-- [end:specialisation]


def role(previous, partner):
    if previous > 0.5:
        return "previous token"
    if partner > 0.5:
        return "partner"
    return "mixed"


on_previous, on_partner = head_specialisation(main["model"], eval_inputs)
roles = [role(p, q) for p, q in zip(on_previous.tolist(), on_partner.tolist())]
ch.table(
    "specialisation",
    ["head", "weight on previous token", "weight on partner", "weight elsewhere", "role"],
    [[f"head {h}", f"{p:.3f}", f"{q:.3f}", f"{1 - p - q:.3f}", roles[h]]
     for h, (p, q) in enumerate(zip(on_previous.tolist(), on_partner.tolist()))],
    align="lrrrl",
)
ch.json("specialisation", {"on_previous": on_previous.tolist(), "on_partner": on_partner.tolist(),
                           "roles": roles})

# %%
example = example_inputs.to(device)
with torch.no_grad():
    example_weights = main["model"].attention_weights(example)[0].cpu()   # (heads, seq, seq)


def draw_head_grid(theme):
    cols = 2
    rows = (MAIN_HEADS + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.8, 3.4 * rows), squeeze=False)
    for h, ax in enumerate(axes.flat):
        if h >= MAIN_HEADS:
            ax.axis("off")
            continue
        heatmap(ax, example_weights[h], example_tokens, example_tokens, theme=theme,
                title=f"head {h}: {roles[h]}")
    fig.tight_layout()
    return fig


ch.figure("head-grid", draw_head_grid)

# The two heads that best embody each job, as token-to-token links (for the Intuition section).
previous_head = int(on_previous.argmax())
partner_head = int(on_partner.argmax())


def draw_links(theme):
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 4.6))
    token_links(axes[0], example_weights[previous_head], example_tokens, theme=theme,
                threshold=0.05, title=f"head {previous_head}: previous token")
    token_links(axes[1], example_weights[partner_head], example_tokens, theme=theme,
                threshold=0.05, title=f"head {partner_head}: partner")
    muted = colors(theme)["muted"]
    for ax in axes:  # queries on the left, the keys they attend to on the right
        ax.text(0.08, len(example_tokens) - 0.3, "query", ha="right", fontsize=8, color=muted)
        ax.text(0.92, len(example_tokens) - 0.3, "key", ha="left", fontsize=8, color=muted)
    fig.tight_layout()
    return fig


ch.figure("head-links", draw_links)

# %%
def smooth(values, window=10):
    values = np.asarray(values)
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def draw_learning_curves(theme):
    palette = colors(theme)["palette"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, num_heads in enumerate(HEAD_COUNTS):
        curve = smooth(sweep[num_heads]["history"].loss)
        steps = np.arange(len(curve)) + 10
        main_run = num_heads == MAIN_HEADS
        color = palette[[0, 1, 2, 3, 4, 7][i % 6]]  # skip the palette's light blue and yellow
        ax.plot(steps, curve, color=color, linewidth=2.4 if main_run else 1.2,
                label=f"h = {num_heads}" + (" (main model)" if main_run else ""))
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (10-step mean)")
    ax.legend(frameon=False, fontsize=8, ncol=2)
    ax.grid(True, which="major", alpha=0.5)
    fig.tight_layout()
    return fig


ch.figure("learning-curves", draw_learning_curves)

# %% [markdown]
# ## 4. The paper, reproduced: number of heads at fixed width
#
# Vaswani et al. (2017), Table 3 rows (A): the base model (d_model = 512) with h heads of
# d_k = d_v = 512 / h, development set newstest2013 (per-wordpiece perplexity, BLEU).

# %%
# h: (d_k, dev PPL, dev BLEU), Vaswani et al. (2017), Table 3 rows (A); h = 8 is the base row.
PAPER_TABLE_3A = {1: (512, 5.29, 24.9), 4: (128, 5.00, 25.5), 8: (64, 4.92, 25.8),
                  16: (32, 4.91, 25.8), 32: (16, 5.01, 25.4)}
sweep_rows = []
for num_heads in HEAD_COUNTS:
    paper = PAPER_TABLE_3A.get(num_heads)
    run = sweep[num_heads]
    sweep_rows.append([
        str(num_heads),
        *(("—",) * 3 if paper is None else (str(paper[0]), f"{paper[1]:.2f}", f"{paper[2]:.1f}")),
        str(D_MODEL // num_heads), f"{run['loss']:.4f}", f"{100 * run['accuracy']:.1f}%",
        f"{100 * run['accuracy_previous']:.1f}% / {100 * run['accuracy_partner']:.1f}%",
    ])
ch.table("heads-sweep",
         ["heads $h$", "paper $d_k$", "paper PPL", "paper BLEU", "our $d_k$", "our loss", "our accuracy",
          "ours: previous / partner"],
         sweep_rows, align="rrrrrrrr")
# The sentence about the middle of the sweep is picked from the numbers, not typed.
best_h = min(HEAD_COUNTS, key=lambda h: sweep[h]["loss"])
ch.paper("vaswani2017", "one head is worst at fixed width, very many narrow heads worse again",
         theirs="dev PPL 5.29 at h = 1, 4.91 at h = 16, 5.01 at h = 32 (Table 3 (A))",
         ours=", ".join(f"{sweep[h]['loss']:.3f} at h = {h}"
                        for h in dict.fromkeys((min(HEAD_COUNTS), best_h, max(HEAD_COUNTS))))
              + " (held-out loss, partner task)",
         section="the-paper-reproduced")
middle = [h for h in HEAD_COUNTS if min(HEAD_COUNTS) < h < max(HEAD_COUNTS)]
lo_h, hi_h = middle[0], middle[-1]
lo_loss, hi_loss = sweep[lo_h]["loss"], sweep[hi_h]["loss"]
change = hi_loss / lo_loss
trend = (f"rises {change:.1f}-fold" if change >= 1.05 else
         f"falls {1 / change:.1f}-fold" if change <= 1 / 1.05 else "stays within 5%")
accuracies = [100 * min(sweep[h]["accuracy_previous"], sweep[h]["accuracy_partner"])
              for h in middle]
paper_middle = [PAPER_TABLE_3A[h][1] for h in PAPER_TABLE_3A if lo_h <= h <= hi_h]
paper_text = (f" Over the same range the paper's perplexity stays between {min(paper_middle):.2f} "
              f"and {max(paper_middle):.2f} (Table 3 (A) has no row for every $h$)."
              if paper_middle else "")
apart = ("Accuracy only asks whether the right digit scores highest; the loss also measures "
         "how confidently, and it keeps telling these models apart." if trend[0] != "s" else "")
ch.markdown("heads-sweep-summary", (
    f"Our held-out loss is lowest at $h = {best_h}$ ({sweep[best_h]['loss']:.4f}). From "
    f"$h = {lo_h}$ to $h = {hi_h}$ it {trend} ({lo_loss:.4f} to {hi_loss:.4f}), while the "
    f"accuracy on the harder of the two jobs "
    + (f"stays at {min(accuracies):.1f}%" if f"{min(accuracies):.1f}" == f"{max(accuracies):.1f}"
       else f"stays between {min(accuracies):.1f}% and {max(accuracies):.1f}%")
    + f". {apart}{paper_text}"))
ch.json("heads-sweep", {str(h): {k: v for k, v in sweep[h].items() if k not in ("model", "history")}
                        for h in HEAD_COUNTS})


def draw_sweep(theme):
    palette = colors(theme)["palette"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.8, 3.4))
    paper_h = sorted(PAPER_TABLE_3A)
    left.plot(paper_h, [PAPER_TABLE_3A[h][1] for h in paper_h], "o-", color=palette[0])
    left.set_title("Vaswani et al. (2017), Table 3 (A)", fontsize=10)
    left.set_ylabel("dev perplexity (lower is better)")
    right.plot(HEAD_COUNTS, [sweep[h]["loss"] for h in HEAD_COUNTS], "o-", color=palette[1])
    right.set_yscale("log")
    right.set_title("ours: partner task, $d_{\\mathrm{model}} = 64$", fontsize=10)
    right.set_ylabel("held-out loss (lower is better)")
    for ax, hs in ((left, paper_h), (right, HEAD_COUNTS)):
        ax.set_xscale("log", base=2)
        ax.set_xticks(hs)
        ax.set_xticklabels([str(h) for h in hs])
        ax.set_xlabel("heads $h$ ($d_k = d_{\\mathrm{model}} / h$)")
        ax.grid(True, alpha=0.5)
    fig.tight_layout()
    return fig


ch.figure("heads-sweep", draw_sweep)

# %% [markdown]
# ## 5. Cross-attention: a tiny encoder–decoder that reverses sequences
#
# The decoder's queries come from the output it has produced so far; its keys and values come
# from the encoder's states of the source. To reverse a sequence, output position t has to read
# source position n-1-t: the cross-attention should become an anti-diagonal.

# %%
# --8<-- [start:encoder-decoder]
class TinyEncoderDecoder(nn.Module):
    """Encoder: one self-attention layer. Decoder: causal self-attention, then cross-attention."""

    def __init__(self, vocab_size: int, length: int, d_model: int, num_heads: int):
        super().__init__()
        self.source_embed = nn.Embedding(vocab_size, d_model)
        self.target_embed = nn.Embedding(vocab_size + 1, d_model)   # + begin-of-sequence
        self.source_position = nn.Embedding(length, d_model)
        self.target_position = nn.Embedding(length, d_model)
        self.encoder_attn = MultiHeadAttention(d_model, num_heads)
        self.decoder_attn = MultiHeadAttention(d_model, num_heads)
        self.cross_attn = MultiHeadAttention(d_model, num_heads)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(4))
        self.readout = nn.Linear(d_model, vocab_size)

    def encode(self, source, source_keep=None):                 # (batch, n) -> (batch, n, d_model)
        x = self.source_embed(source) + self.source_position.weight[: source.shape[1]]
        return self.norms[0](x + self.encoder_attn(x, key_padding_mask=source_keep)[0])

    def decode(self, decoder_input, memory, source_keep=None, need_weights=False):
        y = self.target_embed(decoder_input) + self.target_position.weight[: decoder_input.shape[1]]
        y = y + self.decoder_attn(self.norms[1](y), causal=True)[0]      # earlier outputs only
        read, weights = self.cross_attn(self.norms[2](y), memory,        # queries: decoder;
                                        key_padding_mask=source_keep,    # keys, values: encoder
                                        need_weights=need_weights)
        logits = self.readout(self.norms[3](y + read))           # (batch, m, vocab)
        return logits, weights                                   # weights: (batch, heads, m, n)

    def forward(self, source, decoder_input):
        return self.decode(decoder_input, self.encode(source))[0]
# --8<-- [end:encoder-decoder]


@torch.no_grad()
def greedy_decode(model, source):
    """Generate len(source) tokens one at a time, each step feeding back the arg-max."""
    memory = model.encode(source)
    bos = torch.full((source.shape[0], 1), VOCAB, dtype=torch.long, device=source.device)
    decoder_input = bos
    for _ in range(source.shape[1]):
        logits, _ = model.decode(decoder_input, memory)
        decoder_input = torch.cat([decoder_input, logits[:, -1:].argmax(-1)], dim=1)
    return decoder_input[:, 1:]


LENGTH, VOCAB, ED_HEADS = 8, 10, 2
ch.seed(0)
seq2seq = TinyEncoderDecoder(VOCAB, LENGTH, d_model=32, num_heads=ED_HEADS)
ED_STEPS = ch.pick(300, 30)
seq2seq_history = train(
    seq2seq, lambda g: reversal_task(64, LENGTH, VOCAB, generator=g),
    TrainConfig(steps=ED_STEPS, lr=3e-3, warmup_steps=ED_STEPS // 10, seed=0), device=device)
seq2seq.eval()

(test_source, _), test_target = reversal_task(ch.pick(1000, 100), LENGTH, VOCAB,
                                              generator=ch.seed(99))
test_source, test_target = test_source.to(device), test_target.to(device)
generated = greedy_decode(seq2seq, test_source)
token_accuracy = (generated == test_target).float().mean().item()
sequence_accuracy = (generated == test_target).all(dim=1).float().mean().item()
with torch.no_grad():   # cross-attention weights when the decoder is fed its own greedy output
    decoder_input = torch.cat([torch.full_like(generated[:, :1], VOCAB), generated[:, :-1]], dim=1)
    _, cross_weights = seq2seq.decode(decoder_input, seq2seq.encode(test_source), need_weights=True)
cross_weights = cross_weights.cpu()                                   # (batch, heads, m, n)
anti_diagonal = cross_weights[:, :, torch.arange(LENGTH), torch.arange(LENGTH).flip(0)].mean((0, 2))

ch.markdown("reversal-accuracy", (
    f"After {ED_STEPS} steps ({seq2seq_history.seconds:.0f} s), greedy decoding reverses "
    f"**{100 * sequence_accuracy:.1f}%** of {len(test_source)} held-out sequences exactly "
    f"({100 * token_accuracy:.1f}% of tokens). On average the cross-attention puts "
    + " and ".join(f"**{w:.3f}** (head {h})" for h, w in enumerate(anti_diagonal.tolist()))
    + " of each output position's weight on the mirrored source position."
))

letters = string.ascii_lowercase


def draw_cross_attention(theme):
    source_labels = [letters[t] for t in test_source[0].tolist()]
    output_labels = [letters[t] for t in generated[0].tolist()]
    fig, axes = plt.subplots(1, ED_HEADS, figsize=(6.8, 3.4), squeeze=False)
    for h, ax in enumerate(axes[0]):
        heatmap(ax, cross_weights[0, h], source_labels, output_labels, theme=theme,
                xlabel="source (keys, values)", ylabel="output (queries)",
                title=f"cross-attention, head {h}")
        plt.setp(ax.get_xticklabels(), rotation=0, ha="center")   # single letters read upright
    fig.tight_layout()
    return fig


ch.figure("cross-attention", draw_cross_attention)

# %%
if device.type == "cpu":
    torch.set_num_threads(threads)
ch.json("summary", {
    "partner": {"steps": STEPS, "batch": BATCH, "heads": MAIN_HEADS, "d_model": D_MODEL,
                **{k: v for k, v in main.items() if k not in ("model", "history")}},
    "reversal": {"steps": ED_STEPS, "sequence_accuracy": sequence_accuracy,
                 "token_accuracy": token_accuracy, "anti_diagonal": anti_diagonal.tolist()},
})
print("wrote:", ", ".join(sorted(ch.written)))
