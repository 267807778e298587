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
    smollm2_qkv,
    smollm2_stream,
)
from attnbook.viz import attention_cmap, colors, heatmap
from attnbook.viz.explorer import explorer_json

torch.set_grad_enabled(False)
ch.one_thread_on_cpu()  # small matrices: a second thread costs more than it saves on a busy CPU
generator = ch.seed(0)

SIZES = {}  # name: (full, quick, large), for the note on the size that built the page


def sized(name, full, quick, large):
    """``ch.pick(full, quick, large=large)``, recorded for that note."""
    SIZES[name] = (full, quick, large)
    return ch.pick(full, quick, large=large)


cold = not (smollm2_cache_dir() / "model.safetensors").is_file()
start = time.perf_counter()
model, tokenizer = load_smollm2(ch.device)
if ch.device.type == "cuda":
    torch.cuda.synchronize()  # the copy to the GPU is part of the load
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
# 0, 1, ... and another at 1000, 1001, ... for its first half and 3000, 3001, ... for its
# second (position_ids). The jump inside the second sequence is what tests the positions:
# RoPE scores depend only on differences of positions, so a constant shift would not.

# %%
REPRO_LEN = sized("repro", 64, 24, 512)
repro_ids = torch.stack([alice_ids[0, :REPRO_LEN], alice_ids[0, 2000:2000 + REPRO_LEN]]).to(ch.device)
half = REPRO_LEN // 2
repro_pos = torch.stack([torch.arange(REPRO_LEN),
                         torch.cat([torch.arange(1000, 1000 + half),
                                    torch.arange(1500, 1500 + REPRO_LEN - half)])]).to(ch.device)
ours = smollm2_attention_via_attnbook(model, repro_ids, repro_pos)
theirs = smollm2_attentions(model, repro_ids, repro_pos)
layer_error = (ours - theirs).abs().amax(dim=(1, 2, 3, 4)).cpu()  # (layers,)
TOLERANCE = 1e-4
if layer_error.max() > TOLERANCE:
    raise RuntimeError(f"attnbook differs from SmolLM2 by {layer_error.max():.2e} > {TOLERANCE} "
                       f"(layer {int(layer_error.argmax())})")
wrong_layout = smollm2_attention_via_attnbook(model, repro_ids, repro_pos, layout="interleaved")
wrong_error = (wrong_layout - theirs).abs().max().item()
no_positions_error = (smollm2_attention_via_attnbook(model, repro_ids) - theirs).abs().max().item()
if no_positions_error < 0.1:  # the check must be able to fail
    raise RuntimeError(f"ignoring position_ids errs by only {no_positions_error:.2e}: the test input "
                       f"does not exercise the positions")
rows = []
third = NUM_LAYERS // 3
for r in range(third):
    row = []
    for c in range(3):
        layer = r + c * third
        row += [layer, f"{layer_error[layer].item():.1e}"]
    rows.append(row)
ch.table("reproduction-error", ["layer", "max. abs. error"] * 3, rows, align="rr" * 3)
ch.markdown("reproduction-setup", (
    f"Two excerpts of *Alice's Adventures in Wonderland* (the text shipped with the book), "
    f"{REPRO_LEN} tokens each, went through the model as one batch, the first at positions "
    f"$0, 1, \\dots$, the second at positions ${repro_pos[1, 0].item()}, {repro_pos[1, 1].item()}, "
    f"\\dots$ for its first half and ${repro_pos[1, half].item()}, {repro_pos[1, half + 1].item()}, "
    f"\\dots$ for its second."))
ch.markdown("reproduction-summary", (
    f"Largest difference over all {NUM_LAYERS} layers, {NUM_HEADS} heads, both sequences "
    f"({REPRO_LEN} tokens each) and every query and key: {layer_error.max().item():.1e} "
    f"(the build stops above {TOLERANCE:.0e}). The same code with the *interleaved* RoPE "
    f"layout, which pairs channels (2i, 2i+1) instead of (i, i+32), misses by "
    f"{wrong_error:.2f}; the right layout with the positions ignored (0, 1, ... for both "
    f"sequences) misses by {no_positions_error:.2f}."))

# %% [markdown]
# ## Causal patterns by layer and head, and attention sinks

# %%
PATTERN_LEN = ch.pick(32, 16)
pattern_ids = alice_ids[:, 16:16 + PATTERN_LEN].to(ch.device)  # an excerpt that does not begin the text
pattern_tokens = pieces(pattern_ids[0])
pattern = smollm2_attention_via_attnbook(model, pattern_ids)[:, 0].cpu()  # (layers, heads, T, T)

SINK_LEN = sized("sink", 256, 64, 1024)
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
# The value vectors in that layer: how much does the token the weight is parked on add?
sink_hidden = model.model(input_ids=sink_ids, output_hidden_states=True).hidden_states[top_sink_layer]
_, _, sink_values = smollm2_qkv(model.model.layers[top_sink_layer], sink_hidden)  # (1, kv, T, 64)
value_norms = sink_values[0].norm(dim=-1).cpu()                                  # (kv heads, T)
first_norms, other_norms = value_norms[:, 0], value_norms[:, 1:].median(dim=1).values
ch.markdown("sink-findings", (
    f"On {SINK_LEN} tokens of Alice (starting mid-text, so the first token is an ordinary "
    f"word piece, “{pieces(sink_ids[0, :1])[0].strip()}”), {above_half} of the "
    f"{NUM_LAYERS * NUM_HEADS} heads give the first token more than half of their attention, "
    f"averaged over queries; uniform attention would give it {uniform_share:.3f}. Layers 0 and 1 "
    f"give it {layer_means[0].item():.2f} and {layer_means[1].item():.2f} on average over heads; "
    f"the layer that gives it most is layer {top_sink_layer} ({layer_means[top_sink_layer].item():.2f}). "
    f"In that layer the first token's value vectors have norms "
    f"{', '.join(f'{x:.1f}' for x in first_norms.tolist())} (one per key/value head), against "
    f"medians of {', '.join(f'{x:.1f}' for x in other_norms.tolist())} over the other tokens"
    + ("; the weight parked on the first token therefore adds little to the heads' outputs."
       if bool((first_norms < 0.5 * other_norms).all()) else
       "; the value vectors alone do not make the first token a quiet place to park weight.")))

# %% [markdown]
# ## Previous-token and induction heads, on repeated random tokens

# %%
PERIOD, BATCH = sized("period", 48, 20, 100), sized("batch", 4, 2, 8)
THRESHOLD = 0.4
PREFIX = [tokenizer.convert_tokens_to_ids("<|endoftext|>")]
OFFSET = len(PREFIX)
repeat_ids = repeated_random_tokens(BATCH, PERIOD, config.vocab_size, generator=generator, low=1000,
                                    prefix=PREFIX).to(ch.device)
repeat_attn = smollm2_attention_via_attnbook(model, repeat_ids).cpu()   # (layers, batch, heads, T, T)
prev_scores = previous_token_scores(repeat_attn, offset=OFFSET).mean(1)  # (layers, heads)
ind_scores = induction_scores(repeat_attn, PERIOD, offset=OFFSET).mean(1)
prev_heads, ind_heads = heads_above(prev_scores, THRESHOLD), heads_above(ind_scores, THRESHOLD)



def copy_losses(**kwargs):
    """Mean loss (nats) on tokens 2 .. P of the first and of the second copy."""
    logits = smollm2_forward(model, repeat_ids, **kwargs)               # (batch, T, vocab)
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), repeat_ids[:, 1:].flatten(),
                          reduction="none").view(BATCH, -1).cpu()      # nll[:, i] predicts token i+1
    return (nll[:, OFFSET:OFFSET + PERIOD - 1].mean().item(),
            nll[:, OFFSET + PERIOD:OFFSET + 2 * PERIOD - 1].mean().item())


first_copy, second_copy = copy_losses()
chance = math.log(config.vocab_size - 1000)

# Ablation: zero the outputs of the induction heads, and of as many other heads of the same
# layers (neither induction nor previous-token heads), drawn at random, as a control.
ABLATION_DRAWS = sized("draws", 3, 1, 6)
ablation_rows, control_changes = [], []
if ind_heads:
    ablated_first, ablated_second = copy_losses(zero_heads=ind_heads)
    lo, hi = min(l for l, _ in ind_heads), max(l for l, _ in ind_heads)
    while True:  # the induction heads' layers, widened until there are enough other heads
        pool = [(l, h) for l in range(lo, hi + 1) for h in range(NUM_HEADS)
                if (l, h) not in ind_heads and (l, h) not in prev_heads]
        if len(pool) >= 2 * len(ind_heads) or (lo == 0 and hi == NUM_LAYERS - 1):
            break
        lo, hi = max(lo - 1, 0), min(hi + 1, NUM_LAYERS - 1)
    draws = torch.Generator().manual_seed(1)
    ablation_rows.append(["none", f"{first_copy:.2f}", f"{second_copy:.2f}"])
    ablation_rows.append([f"the {len(ind_heads)} induction heads", f"{ablated_first:.2f}",
                          f"{ablated_second:.2f}"])
    for _ in range(ABLATION_DRAWS):
        control = [pool[i] for i in torch.randperm(len(pool), generator=draws)[:len(ind_heads)].tolist()]
        control_first, control_second = copy_losses(zero_heads=control)
        control_changes.append(abs(control_second - second_copy))
        ablation_rows.append([", ".join(head_name(*lh) for lh in sorted(control)) + " (random)",
                              f"{control_first:.2f}", f"{control_second:.2f}"])


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
ranked_prev = sorted(prev_heads, key=lambda lh: -prev_scores[lh].item())
ranked_ind = sorted(ind_heads, key=lambda lh: -ind_scores[lh].item())
ch.paper("wang2022", "heads with the highest previous-token and induction scores on a random "
         "sequence repeated twice",
         theirs="GPT-2 small: previous-token 4.11 and 2.2 the two highest; induction 5.5 and 6.9 "
                "among the five highest (App. H, Fig. 18)",
         ours="SmolLM2-135M: previous-token " + (", ".join(head_name(*lh) for lh in ranked_prev[:2]) or "none")
              + "; induction " + (", ".join(head_name(*lh) for lh in ranked_ind[:5]) or "none")
              + f" (scores > {THRESHOLD})",
         section="induction-heads")
prev_layers = sorted({l for l, _ in prev_heads})
ind_layers = sorted({l for l, _ in ind_heads})
if prev_layers and ind_layers:
    below = [l for l in prev_layers if l < ind_layers[0]]
    ch.markdown("heads-order", (
        f"Here the previous-token heads sit in layers {', '.join(map(str, prev_layers))} and the "
        f"induction heads in layers {', '.join(map(str, ind_layers))}: "
        + (f"{len(below)} of the {len(prev_layers)} layers with a previous-token head "
           f"{'lies' if len(below) == 1 else 'lie'} below the lowest induction head, as the mechanism needs."
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
    f"predict except the repeat (chance: {chance:.2f} nats). The losses below average the "
    f"predictions of tokens 2 to {PERIOD} of each copy: the first token of a copy cannot be "
    f"predicted from what precedes it."))
if ind_heads:
    ch.table("ablation", ["heads zeroed", "loss, first copy (nats)", "loss, second copy (nats)"],
             ablation_rows, align="lrr")
    rise, worst_control = ablated_second - second_copy, max(control_changes)
    causal = rise > 0.5 * (chance - second_copy) and worst_control < 0.25 * rise
    ch.markdown("ablation-findings", (
        f"Zeroing the outputs of the {len(ind_heads)} induction heads moves the loss on the second "
        f"copy from {second_copy:.2f} to {ablated_second:.2f} nats (chance: {chance:.2f}), and on "
        f"the first copy from {first_copy:.2f} to {ablated_first:.2f}; zeroing "
        f"{len(ind_heads)} other heads of layers {lo} to {hi} "
        f"({ABLATION_DRAWS} random draw{'s' if ABLATION_DRAWS > 1 else ''}, none of them an "
        f"induction or previous-token head) changes the second-copy loss by at most "
        f"{worst_control:.2f}. "
        + ("So these few heads carry most of what makes the repeat easy: without them most of the "
           "second copy's advantage is gone, while zeroing as many other heads of the same layers "
           "costs far less."
           if causal else
           "The effect of these heads is not clearly larger than that of other heads: the repeat "
           "does not rest on them alone.")))
    ch.paper("olsson2022", "induction heads and in-context learning: later tokens of a context "
             "predicted better, and induction heads as a mechanism",
             theirs="preliminary and indirect evidence that induction heads might be the mechanism "
                    "for most in-context learning (abstract)",
             ours=f"loss {first_copy:.2f} nats on the first copy, {second_copy:.2f} on the second; "
                  f"{ablated_second:.2f} with the {len(ind_heads)} induction heads zeroed "
                  f"(other heads: change at most {worst_control:.2f})",
             section="induction-heads")
else:
    ch.markdown("ablation-findings", "No head passed the induction threshold, so there is nothing to ablate.")

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
EX_LEN = ch.pick(128, 32, large=256)
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
STREAM_LEN = sized("stream", 1024, 96, 3072)
CACHE, SINKS = sized("cache", 64, 24, 192), 4  # four sinks, as in Xiao et al. (2023, §3.2)
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
CHECK_LEN, CHECK_WINDOW = ch.pick(24, 10, large=96), ch.pick(12, 3, large=48)
check_ids = text_ids[:, :CHECK_LEN]
chunked = torch.log_softmax(smollm2_forward(model, check_ids, window=CHECK_WINDOW, sinks=SINKS), -1)
stepwise = torch.log_softmax(smollm2_stream(model, check_ids, window=CHECK_WINDOW, sinks=SINKS), -1)
stream_check = (chunked - stepwise).abs().max().item()
if stream_check > 2e-3:  # the bound of tests/test_smollm2.py; a wrong sink or window errs by ~1
    raise RuntimeError(f"chunked streaming differs from token-by-token decoding by {stream_check:.2e}")

BIN = ch.pick(64, 12)


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
words = len(tokenizer.decode(text_ids[0].cpu()).split())
ch.markdown("streaming-setup", (
    f"The first {STREAM_LEN} tokens of Alice (about {words} words from the start of chapter I), "
    f"one sequence; a cache of {CACHE} "
    f"entries. The chunked computation was checked against token-by-token decoding with "
    f"`SinkWindowCache` on the first {CHECK_LEN} tokens (window {CHECK_WINDOW}, {SINKS} sinks): "
    f"their log-probabilities differ by at most {stream_check:.1e}."))
recovers_most = sink_after - dense_after < 0.5 * (window_after - dense_after)
verdict = ("Keeping the sinks recovers most of what the window loses" if recovers_most
           else "Keeping the sinks recovers less than half of what the window loses")
conclusion = (
    " This is the paper's finding in miniature: the text the window drops is not what breaks the "
    "model, since the window keeps the recent tokens that matter most for the next word. What "
    "breaks it is the loss of the sink, to which the sink heads found above send much of their "
    "weight: without it, that weight is forced onto the recent tokens, and every such head's "
    "output changes." if recovers_most else
    " Here the paper's finding does not carry over at this scale: losing the sink is not the main "
    "part of what the window costs.")
ch.markdown("streaming-findings", (
    f"Once the cache is full, the plain window's perplexity rises to {window_after:.1f}, against "
    f"{dense_after:.1f} with the whole prefix; with {SINKS} sinks in the same {CACHE} entries it is "
    f"{sink_after:.1f}. {verdict}: {SINKS} entries of {CACHE} hold the first tokens; what remains "
    f"of the gap to dense attention is what the cache does not hold (the tokens between the sinks "
    f"and the window) and the sinks' positions, shifted into the cache.{conclusion}"))
# Xiao et al. (2023), Table 1: Llama-2-13B on the first book (65K tokens) of the PG19 test set
PAPER_WINDOW, PAPER_SINKS = "5158.07", "5.40"
ch.table("streaming-paper", ["", "model", "text", "cache", "window only", "4 sinks + window"], [
    ["Xiao et al. (Table 1)", "Llama-2-13B", "first book of PG19 (65K tokens)", "1024",
     PAPER_WINDOW, PAPER_SINKS],
    ["ours", "SmolLM2-135M", f"Alice, first {STREAM_LEN} tokens", str(CACHE),
     f"{window_after:.2f}", f"{sink_after:.2f}"],
], align="lllrrr")
ch.paper("xiao2023", "perplexity once the cache is full: window attention vs the same cache with 4 sinks",
         theirs=f"Llama-2-13B, PG19 book of 65K tokens, cache 1024: {PAPER_WINDOW} vs {PAPER_SINKS} (Table 1)",
         ours=f"SmolLM2-135M, {STREAM_LEN} tokens of Alice, cache {CACHE}: {window_after:.2f} vs "
              f"{sink_after:.2f} (dense {dense_after:.2f})",
         section="streamingllm-at-small-scale")
after_cache = slice(CACHE // BIN, None)  # the bins after the cache is full: for the figure's alt text
window_above = np.mean([w > max(d, k) for d, w, k in zip(*(binned_ppl(stream_nll[n])[after_cache] for n in names))])
print(f"bins after the cache is full where the plain window is above the other two: {window_above:.0%}")
HEAD_WIDTH = NUM_HEADS * (config.hidden_size // NUM_HEADS)  # h d_k = 576
REST = (2 * config.hidden_size * HEAD_WIDTH + 2 * config.hidden_size * NUM_KV * (config.hidden_size // NUM_HEADS)
        + 3 * config.hidden_size * config.intermediate_size)  # projections and SwiGLU, per layer and token
attention_last = 2 * HEAD_WIDTH * STREAM_LEN
ch.markdown("cost-length", (
    f"This chapter's longest text has {STREAM_LEN} tokens: at its last token, with dense attention, the "
    f"scores and weighted values cost ${2 * HEAD_WIDTH} \\cdot {STREAM_LEN} \\approx "
    f"{attention_last / 1e6:.1f}$ M multiply–adds per layer, "
    + ("less than the rest: the feed-forward and projections dominate." if attention_last < 0.9 * REST else
       "about as much as the rest: the text reaches the length where the two are equal."
       if attention_last <= 1.1 * REST else
       f"more than the rest: from token {math.ceil(REST / (2 * HEAD_WIDTH))} on, attention dominates.")))
BYTES_PER_TOKEN = NUM_LAYERS * 2 * NUM_KV * (config.hidden_size // NUM_HEADS) * 4  # float32
TEX_BYTES = f"{BYTES_PER_TOKEN:,}".replace(",", "{,}")  # 46{,}080: no space after the comma in TeX
ch.markdown("exercise-cache-memory", (
    f"Per token and layer the cache holds $2 h_{{kv}} d_k = {2 * NUM_KV * (config.hidden_size // NUM_HEADS)}$ "
    f"numbers, so ${NUM_LAYERS} \\cdot {2 * NUM_KV * (config.hidden_size // NUM_HEADS)} \\cdot 4$ bytes "
    f"= {BYTES_PER_TOKEN:,} bytes per token. The cache of {CACHE} entries used here needs "
    f"${CACHE} \\cdot {TEX_BYTES} \\approx {CACHE * BYTES_PER_TOKEN / 1e6:.1f}$ MB, whatever the "
    f"length; dense attention at the full context of {config.max_position_embeddings} tokens needs "
    f"${config.max_position_embeddings} \\cdot {TEX_BYTES} \\approx "
    f"{config.max_position_embeddings * BYTES_PER_TOKEN / 1e6:.0f}$ MB per sequence."))

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
    probs = examples[0]["attention"]                 # (layers, heads, T, T)
    layers = list(range(0, NUM_LAYERS, 3))           # every third layer: 10 rows of 9 heads
    T, step = probs.shape[-1], probs.shape[-1] + 1   # one blank row/column between tiles
    mosaic = np.full((len(layers) * step - 1, NUM_HEADS * step - 1), np.nan)
    for r, layer in enumerate(layers):               # one image: much faster than 90 axes
        for h in range(NUM_HEADS):
            mosaic[r * step:r * step + T, h * step:h * step + T] = probs[layer, h]
    cmap = attention_cmap(theme).copy()
    cmap.set_bad(colors(theme)["grid"])              # the separators
    fig, ax = plt.subplots(figsize=(6.8, 7.8))
    ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([h * step + (T - 1) / 2 for h in range(NUM_HEADS)], [str(h) for h in range(NUM_HEADS)],
                  fontsize=8)
    ax.set_yticks([r * step + (T - 1) / 2 for r in range(len(layers))], [f"layer {l}" for l in layers],
                  fontsize=8)
    ax.xaxis.set_ticks_position("top")
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("head", fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.tight_layout(pad=0.3)
    return fig


ch.figure("head-grid", draw_grid, fmt="png")



def size_list(i):
    s = {name: values[i] for name, values in SIZES.items()}
    return (f"two excerpts of {s['repro']} tokens for the reproduction, {s['sink']} tokens for the sinks, "
            f"{s['batch']} random sequences of {s['period']} tokens repeated twice with {s['draws']} "
            f"control draw{'s' if s['draws'] > 1 else ''} for the ablation, and {s['stream']} tokens "
            f"through a cache of {s['cache']} for StreamingLLM")


if ch.large:
    note = ("This page was built at the large size, the default with `--device cuda`"
            + ("" if ch.device.type == "cuda" else ", here run on the CPU with `--size large`")
            + f": {size_list(2)}. With `--device cpu` the chapter runs at its full size: {size_list(0)}.")
else:
    note = ("This page was built at the "
            + ("full size, the default with `--device cpu`" if ch.size == "full" else "quick size (`--quick`, for tests)")
            + f": {size_list(0 if ch.size == 'full' else 1)}. With `--device cuda` (or `--size large` on any "
            f"device) the chapter runs at its large size: {size_list(2)}.")
ch.markdown("sizes", note + " The model is SmolLM2-135M at every size.")
ch.markdown("run-info", (
    f"The dequantised model lives in `.cache/smollm2/` (git-ignored), keyed by the first 16 hex "
    f"digits of the GGUF file's SHA-256. This build found it "
    f"{'missing and created it (a cold run: dequantising takes about 20 s more)' if cold else 'there'}; "
    f"`load_smollm2` took {load_seconds:.1f} s of wall-clock time, importing transformers included, "
    f"on a machine shared with other jobs."))
print("written:", ", ".join(sorted(ch.written)))
