# %% [markdown]
# # How a GPT attends to previous tokens
#
# We load SmolLM2-135M (30 layers, 9 query heads sharing 3 key/value heads, RoPE), shipped
# as a Python package, check that attnbook's RoPE and grouped-query attention reproduce its
# attention probabilities in every layer, then measure attention sinks, previous-token and
# induction heads, and run StreamingLLM's experiment at small scale.

# %%
from attnbook.chapter import Chapter

ch = Chapter("pretrained-gpt")

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from attnbook.data.text import load_text
from attnbook.heads import (
    first_token_share,
    heads_above,
    induction_scores,
    previous_token_scores,
    repeated_random_tokens,
)
from attnbook.models.pretrained import (
    load_smollm2,
    smollm2_attention_via_attnbook,
    smollm2_attentions,
    smollm2_cache_dir,
    smollm2_forward,
    smollm2_stream,
)
from attnbook.viz import attention_cmap, colors, heatmap
from attnbook.viz.explorer import explorer_json

torch.set_grad_enabled(False)
ch.one_thread_on_cpu()  # small matrices: a second thread costs more than it saves on a busy CPU
generator = ch.seed(0)

cold = not (smollm2_cache_dir() / "model.safetensors").is_file()
start = time.perf_counter()
model, tokenizer = load_smollm2(ch.device)
load_seconds = time.perf_counter() - start
config = model.config
NUM_LAYERS, NUM_HEADS, NUM_KV = config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads
print(f"{NUM_LAYERS} layers x {NUM_HEADS} query heads ({NUM_KV} kv heads); "
      f"{'cold' if cold else 'warm'} load in {load_seconds:.1f} s")

ALICE = load_text()
alice_ids = tokenizer(ALICE, return_tensors="pt").input_ids  # (1, tokens of the whole text)


def pieces(ids):
    """Display strings, one per token id (the raw text piece, spaces included)."""
    return [tokenizer.decode([int(i)]) for i in ids]


def head_name(layer, head):
    return f"{layer}-{head}"


# %% [markdown]
# ## attnbook reproduces SmolLM2's attention, every layer
#
# Two sequences in one batch, with their own positions: an excerpt of Alice at positions
# 0, 1, ... and another excerpt placed at positions 1000, 1001, ... (position_ids).

# %%
REPRO_LEN = ch.pick(64, 24)
repro_ids = torch.stack([alice_ids[0, :REPRO_LEN], alice_ids[0, 2000:2000 + REPRO_LEN]]).to(ch.device)
repro_pos = torch.stack([torch.arange(REPRO_LEN), torch.arange(1000, 1000 + REPRO_LEN)]).to(ch.device)
ours = smollm2_attention_via_attnbook(model, repro_ids, repro_pos)
theirs = smollm2_attentions(model, repro_ids, repro_pos)
layer_error = (ours - theirs).abs().amax(dim=(1, 2, 3, 4)).cpu()  # (layers,)
TOLERANCE = 1e-4
if layer_error.max() > TOLERANCE:
    raise RuntimeError(f"attnbook differs from SmolLM2 by {layer_error.max():.2e} > {TOLERANCE} "
                       f"(layer {int(layer_error.argmax())})")
wrong_layout = smollm2_attention_via_attnbook(model, repro_ids, repro_pos, layout="interleaved")
wrong_error = (wrong_layout - theirs).abs().max().item()
rows = []
third = NUM_LAYERS // 3
for r in range(third):
    row = []
    for c in range(3):
        layer = r + c * third
        row += [layer, f"{layer_error[layer].item():.1e}"]
    rows.append(row)
ch.table("reproduction-error", ["layer", "max. abs. error"] * 3, rows, align="rr" * 3)
ch.markdown("reproduction-summary", (
    f"Largest difference over all {NUM_LAYERS} layers, {NUM_HEADS} heads, both sequences "
    f"({REPRO_LEN} tokens each) and every query and key: {layer_error.max().item():.1e} "
    f"(the build stops above {TOLERANCE:.0e}). The same code with the *interleaved* RoPE "
    f"layout, which pairs channels (2i, 2i+1) instead of (i, i+32), misses by "
    f"{wrong_error:.2f}."))

# %% [markdown]
# ## Causal patterns by layer and head, and attention sinks

# %%
PATTERN_LEN = ch.pick(32, 16)
pattern_ids = alice_ids[:, 16:16 + PATTERN_LEN].to(ch.device)  # an excerpt that does not begin the text
pattern_tokens = pieces(pattern_ids[0])
pattern = smollm2_attention_via_attnbook(model, pattern_ids)[:, 0].cpu()  # (layers, heads, T, T)

SINK_LEN = ch.pick(256, 64)
# start mid-text, at the first token after position 300 that is a word (a space, then letters)
sink_start = next(i for i in range(300, alice_ids.shape[1])
                  if pieces(alice_ids[0, i:i + 1])[0][1:].isalpha() and pieces(alice_ids[0, i:i + 1])[0][0] == " ")
sink_ids = alice_ids[:, sink_start:sink_start + SINK_LEN].to(ch.device)
sink_attn = smollm2_attention_via_attnbook(model, sink_ids)[:, 0].cpu()
sink_share = first_token_share(sink_attn)  # (layers, heads)
uniform_share = float(np.mean([1 / (i + 1) for i in range(1, SINK_LEN)]))  # uniform causal rows
SHOW_LAYERS = [0, 1, NUM_LAYERS // 2, NUM_LAYERS - 1]


def short(tokens):
    return [t.replace("\n", "⏎") for t in tokens]


def draw_layer_means(theme):
    fig, axes = plt.subplots(2, 2, figsize=(6.8, 6.6), sharex=True, sharey=True)
    for i, (ax, layer) in enumerate(zip(axes.flat, SHOW_LAYERS)):
        heatmap(ax, pattern[layer].mean(0), short(pattern_tokens), short(pattern_tokens), theme=theme,
                title=f"layer {layer} (mean of {NUM_HEADS} heads)",
                xlabel="key" if i >= 2 else "", ylabel="query" if i % 2 == 0 else "")
        ax.tick_params(labelsize=8, labelbottom=i >= 2, labelleft=i % 2 == 0)
        ax.title.set_fontsize(10)
    fig.tight_layout(h_pad=0.5, w_pad=0.5)
    return fig


ch.figure("layer-means", draw_layer_means)


def draw_sinks(theme):
    c = colors(theme)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(6.8, 4.6), gridspec_kw={"width_ratios": [1.2, 1]})
    image = ax.imshow(sink_share.numpy(), cmap=attention_cmap(theme), vmin=0, vmax=1, aspect="auto",
                      interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(NUM_HEADS))
    ax.set_yticks(range(0, NUM_LAYERS, 3))
    ax.set_title("share of attention\non the first token", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.06, pad=0.03).ax.tick_params(labelsize=8)
    layers = np.arange(NUM_LAYERS)
    ax2.plot(sink_share.mean(1).numpy(), layers, marker="o", ms=3, color=c["palette"][0], label="mean of heads")
    ax2.plot(sink_share.max(1).values.numpy(), layers, ls="", marker="|", ms=6, color=c["palette"][1],
             label="strongest head")
    ax2.axvline(uniform_share, color=c["muted"], ls="--", lw=1, label="uniform attention")
    ax2.set_ylim(NUM_LAYERS - 0.5, -0.5)
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("share on the first token")
    ax2.set_yticks(range(0, NUM_LAYERS, 3))
    ax2.legend(fontsize=8, loc="upper right")
    ax2.grid(axis="x", alpha=0.4)
    fig.tight_layout()
    return fig


ch.figure("sink-share", draw_sinks)
layer_means = sink_share.mean(1)
above_half = int((sink_share > 0.5).sum())
top_sink_layer = int(layer_means.argmax())
ch.markdown("sink-findings", (
    f"On {SINK_LEN} tokens of Alice (starting mid-text, so the first token is an ordinary "
    f"word piece, “{pieces(sink_ids[0, :1])[0].strip()}”), {above_half} of the "
    f"{NUM_LAYERS * NUM_HEADS} heads give the first token more than half of their attention, "
    f"averaged over queries; uniform attention would give it {uniform_share:.3f}. Layers 0 and 1 "
    f"give it {layer_means[0].item():.2f} and {layer_means[1].item():.2f} on average over heads; "
    f"the layer that gives it most is layer {top_sink_layer} ({layer_means[top_sink_layer].item():.2f})."))

# %% [markdown]
# ## Previous-token and induction heads, by the standard protocol

# %%
PERIOD, BATCH = ch.pick(48, 20), ch.pick(4, 2)
THRESHOLD = 0.4
PREFIX = [tokenizer.convert_tokens_to_ids("<|endoftext|>")]
OFFSET = len(PREFIX)
repeat_ids = repeated_random_tokens(BATCH, PERIOD, config.vocab_size, generator=generator, low=1000,
                                    prefix=PREFIX).to(ch.device)
repeat_attn = smollm2_attention_via_attnbook(model, repeat_ids).cpu()   # (layers, batch, heads, T, T)
prev_scores = previous_token_scores(repeat_attn, offset=OFFSET).mean(1)  # (layers, heads)
ind_scores = induction_scores(repeat_attn, PERIOD, offset=OFFSET).mean(1)
prev_heads, ind_heads = heads_above(prev_scores, THRESHOLD), heads_above(ind_scores, THRESHOLD)

logits = smollm2_forward(model, repeat_ids)                             # (batch, T, vocab)
nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), repeat_ids[:, 1:].flatten(),
                      reduction="none").view(BATCH, -1).cpu()          # nll[:, i] predicts token i+1
first_copy = nll[:, OFFSET:OFFSET + PERIOD - 1].mean().item()      # tokens 2 .. P of copy 1
second_copy = nll[:, OFFSET + PERIOD:OFFSET + 2 * PERIOD - 1].mean().item()  # tokens 2 .. P of copy 2


def draw_head_scores(theme):
    c = colors(theme)
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 5.0), sharey=True)
    for ax, scores, found, title in ((axes[0], prev_scores, prev_heads, "previous-token score"),
                                     (axes[1], ind_scores, ind_heads, "induction score")):
        image = ax.imshow(scores.numpy(), cmap=attention_cmap(theme), vmin=0, vmax=1, aspect="auto",
                          interpolation="nearest")
        for layer, head in found:  # outline the heads above the threshold
            ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False,
                                       edgecolor=c["palette"][1], lw=1.5))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("head")
        ax.set_xticks(range(NUM_HEADS))
        ax.set_yticks(range(0, NUM_LAYERS, 3))
    axes[0].set_ylabel("layer")
    fig.colorbar(image, ax=axes, fraction=0.04, pad=0.03).ax.tick_params(labelsize=8)
    return fig


ch.figure("head-scores", draw_head_scores)


def head_list(found, scores):
    ranked = sorted(found, key=lambda lh: -scores[lh].item())
    return ", ".join(f"{head_name(l, h)} ({scores[l, h].item():.3f})" for l, h in ranked) or "none"


ch.table("heads-found", ["kind", f"heads with score > {THRESHOLD} (layer-head, score)", "count"], [
    ["previous token", head_list(prev_heads, prev_scores), len(prev_heads)],
    ["induction", head_list(ind_heads, ind_scores), len(ind_heads)],
], align="llr")
prev_layers = sorted({l for l, _ in prev_heads})
ind_layers = sorted({l for l, _ in ind_heads})
if prev_layers and ind_layers:
    below = [l for l in prev_layers if l < ind_layers[0]]
    ch.markdown("heads-order", (
        f"Here the previous-token heads sit in layers {', '.join(map(str, prev_layers))} and the "
        f"induction heads in layers {', '.join(map(str, ind_layers))}: "
        + (f"{len(below)} of the {len(prev_layers)} layers with a previous-token head lie below the "
           f"lowest induction head, as the mechanism needs."
           if below else "no previous-token head lies below the lowest induction head, so the "
                         "previous-token information must come from elsewhere (a head below the threshold).")))
else:
    ch.markdown("heads-order", "With this input, one of the two kinds has no head above the threshold.")
ch.table("in-context-loss", ["tokens predicted", "mean loss (nats)", "perplexity"], [
    ["first copy (random: nothing to recall)", f"{first_copy:.2f}", f"{math.exp(first_copy):,.0f}"],
    ["second copy (a repeat of the first)", f"{second_copy:.2f}", f"{math.exp(second_copy):,.2f}"],
])
ch.markdown("protocol-setup", (
    f"{BATCH} sequences of {PERIOD} token ids drawn uniformly from [1000, {config.vocab_size}), "
    f"each repeated twice after one `<|endoftext|>` token ({OFFSET + 2 * PERIOD} tokens in all); "
    f"scores averaged over the sequences. Uniform random ids make a text with nothing to "
    f"predict except the repeat (chance: {math.log(config.vocab_size - 1000):.2f} nats)."))

best_prev = max(((l, h) for l in range(NUM_LAYERS) for h in range(NUM_HEADS)), key=lambda lh: prev_scores[lh])
best_ind = max(((l, h) for l in range(NUM_LAYERS) for h in range(NUM_HEADS)), key=lambda lh: ind_scores[lh])


def draw_examples(theme):
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.9))
    boundary = OFFSET + PERIOD - 0.5  # between the two copies
    ticks = [0, OFFSET + PERIOD, OFFSET + 2 * PERIOD - 1]  # start, second copy, end
    for ax, (layer, head), kind, score in ((axes[0], best_prev, "previous token", prev_scores),
                                           (axes[1], best_ind, "induction", ind_scores)):
        heatmap(ax, repeat_attn[layer, 0, head], theme=theme, ylabel="query" if kind == "previous token" else "",
                title=f"{kind}: head {head_name(layer, head)}\n(score {score[layer, head].item():.2f})")
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks], fontsize=8)
        ax.set_yticklabels([str(t) for t in ticks], fontsize=8)
        for line in (ax.axhline, ax.axvline):
            line(boundary, color=colors(theme)["muted"], lw=0.8, ls="--")
        ax.title.set_fontsize(10)
    fig.tight_layout()
    return fig


ch.figure("head-examples", draw_examples)

# %% [markdown]
# ## Exercise 3: is the sink a position or a word?
# The solution on the page is this cell and its table.

# %%
# --8<-- [start:exercise-sink-position]
EX_LEN = ch.pick(128, 32)
probes = {f"Alice from token {start}": alice_ids[:, start:start + EX_LEN] for start in (300, 301, 4000)}
probes["random token ids"] = torch.randint(1000, config.vocab_size, (1, EX_LEN), generator=generator)
rows = []
for name, ids in probes.items():
    attn = smollm2_attention_via_attnbook(model, ids.to(ch.device))[:, 0].cpu()  # (layers, heads, T, T)
    share = first_token_share(attn)                                              # (layers, heads)
    first = tokenizer.decode([int(ids[0, 0])])
    rows.append([name, f"`{first!r}`", f"{share.mean().item():.2f}", int((share > 0.5).sum())])
uniform = float(np.mean([1 / (i + 1) for i in range(1, EX_LEN)]))
rows.append(["uniform attention", "", f"{uniform:.3f}", 0])
ch.table("exercise-sink-position", ["input", "first token", "mean share on it",
                                    "heads with share > 0.5"], rows, align="llrr")
# --8<-- [end:exercise-sink-position]

# %% [markdown]
# ## StreamingLLM at small scale (Xiao et al., 2023)

# %%
STREAM_LEN = ch.pick(1024, 256)
CACHE, SINKS = ch.pick(64, 32), 4
if ch.device.type == "cuda":
    STREAM_LEN, CACHE = 4096, 256
text_ids = alice_ids[:, :STREAM_LEN].to(ch.device)
settings = {
    "dense (whole prefix)": dict(),
    f"window of {CACHE}": dict(window=CACHE),
    f"{SINKS} sinks + window of {CACHE - SINKS}": dict(window=CACHE - SINKS, sinks=SINKS),
}
stream_nll = {}
for name, kwargs in settings.items():
    out = smollm2_forward(model, text_ids, **kwargs)
    stream_nll[name] = F.cross_entropy(out[0, :-1].float(), text_ids[0, 1:], reduction="none").cpu()

# The chunked computation against token-by-token decoding with a SinkWindowCache, on a prefix.
CHECK_LEN, CHECK_WINDOW = ch.pick(24, 12), ch.pick(12, 6)
check_ids = text_ids[:, :CHECK_LEN]
chunked = torch.log_softmax(smollm2_forward(model, check_ids, window=CHECK_WINDOW, sinks=SINKS), -1)
stepwise = torch.log_softmax(smollm2_stream(model, check_ids, window=CHECK_WINDOW, sinks=SINKS), -1)
stream_check = (chunked - stepwise).abs().max().item()
if stream_check > 1e-2:
    raise RuntimeError(f"chunked streaming differs from token-by-token decoding by {stream_check:.2e}")

BIN = ch.pick(64, 32)


def binned_ppl(nll):
    usable = (len(nll) // BIN) * BIN
    return nll[:usable].view(-1, BIN).mean(1).exp().numpy()


def draw_streaming(theme):
    c = colors(theme)
    fig, ax = plt.subplots(figsize=(6.8, 3.8))
    for i, (name, nll) in enumerate(stream_nll.items()):
        ppl = binned_ppl(nll)
        centres = (np.arange(len(ppl)) + 0.5) * BIN + 1
        ax.plot(centres, ppl, marker="o", ms=3, color=c["palette"][i], label=name,
                ls=["-", "--", "-"][i], lw=[2.2, 1.5, 1.5][i])
    ax.axvline(CACHE, color=c["muted"], ls=":", lw=1)
    ax.text(CACHE, 0.97, " cache full", transform=ax.get_xaxis_transform(), fontsize=8,
            color=c["muted"], va="top")
    ax.set_yscale("log")
    ax.set_xlabel("tokens processed")
    ax.set_ylabel(f"perplexity (bins of {BIN} tokens)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


ch.figure("streaming", draw_streaming)
names = list(settings)
rows = []
for name in names:
    nll = stream_nll[name]
    rows.append([name, f"{nll.mean().exp().item():.2f}", f"{nll[CACHE:].mean().exp().item():.2f}"])
ch.table("streaming-ppl", ["attention", f"perplexity, all {STREAM_LEN - 1} predictions",
                           f"after the first {CACHE} tokens"], rows)
dense_after, window_after, sink_after = (stream_nll[n][CACHE:].mean().exp().item() for n in names)
ch.markdown("streaming-setup", (
    f"The first {STREAM_LEN} tokens of Alice (chapters I to III), one sequence; a cache of {CACHE} "
    f"entries. The chunked computation was checked against token-by-token decoding with "
    f"`SinkWindowCache` on the first {CHECK_LEN} tokens (window {CHECK_WINDOW}, {SINKS} sinks): "
    f"their log-probabilities differ by at most {stream_check:.1e}."))
verdict = ("Keeping the sinks recovers most of what the window loses"
           if sink_after - dense_after < 0.5 * (window_after - dense_after)
           else "Keeping the sinks recovers less than half of what the window loses")
ch.markdown("streaming-findings", (
    f"Once the cache is full, the plain window's perplexity rises to {window_after:.1f}, against "
    f"{dense_after:.1f} with the whole prefix; with {SINKS} sinks in the same {CACHE} entries it is "
    f"{sink_after:.1f}. {verdict}: {SINKS} entries of {CACHE} hold the first tokens, and the "
    f"remaining gap to dense attention is the text beyond the window."))

# %% [markdown]
# ## Data for the interactive explorer

# %%
EXPLORER_TEXTS = ["Alice was beginning to get very tired of sitting by her sister.",
                  "The cat sat on the mat. The cat sat on the"]
examples = []
for text in EXPLORER_TEXTS:
    ids = tokenizer(text, return_tensors="pt").input_ids.to(ch.device)
    probs = smollm2_attention_via_attnbook(model, ids)[:, 0].cpu()       # (layers, heads, T, T)
    examples.append({"text": text, "tokens": pieces(ids[0]), "attention": probs.numpy(),
                     "next_token": {"logits": smollm2_forward(model, ids)[0].cpu().numpy(),
                                    "decode": lambda i: tokenizer.decode([int(i)])}})
explorer = explorer_json(
    "SmolLM2-135M-Instruct", examples, causal=True, top_k=5, decimals=3, max_kb=600,
    description="9 query heads per layer; heads 0-2, 3-5 and 6-8 share one key/value head each.")
path = ch.json("explorer", explorer)
print(f"explorer.json: {path.stat().st_size / 1024:.0f} KB")


def draw_grid(theme):
    probs = examples[0]["attention"]
    layers = list(range(0, NUM_LAYERS, 3))  # every third layer: 10 rows of 9 heads
    fig, axes = plt.subplots(len(layers), NUM_HEADS, figsize=(6.8, 7.8))
    cmap = attention_cmap(theme)
    for r, layer in enumerate(layers):
        for h in range(NUM_HEADS):
            ax = axes[r, h]
            ax.imshow(probs[layer, h], cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"head {h}" if h == 0 else str(h), fontsize=8)
            if h == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
    fig.tight_layout(pad=0.3, h_pad=0.2, w_pad=0.2)
    return fig


ch.figure("head-grid", draw_grid, fmt="png")

ch.markdown("run-info", (
    f"The dequantised model lives in `.cache/smollm2/` (git-ignored), keyed by the first 16 hex "
    f"digits of the GGUF file's SHA-256. This build found it "
    f"{'missing and created it (a cold run: dequantising takes about 20 s more)' if cold else 'there'}."))
print("written:", ", ".join(sorted(ch.written)))
