# %% [markdown]
# # Inside a pretrained encoder
#
# We load all-MiniLM-L6-v2 (6 layers x 12 heads, shipped as a Python package), check
# that the book's own attention code reproduces its attention probabilities, then
# measure what each head does, in the manner of Clark et al. (2019).

# %%
from attnbook.chapter import Chapter

ch = Chapter("pretrained-encoder")

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Patch

from attnbook.models import (
    ROLES,
    classify_heads,
    head_statistics,
    load_minilm,
    minilm_attention_via_attnbook,
    minilm_attentions,
    minilm_forward_via_attnbook,
)
from attnbook.models.pretrained import (
    MINILM_WEIGHTS_FILE,
    MINILM_WEIGHTS_SHA256,
    minilm_path,
    minilm_weights_sha256,
)
from attnbook.viz import attention_cmap, colors, heatmap
from attnbook.viz.explorer import explorer_json

torch.set_grad_enabled(False)
ch.one_thread_on_cpu()
ch.seed(0)  # nothing here is random; seeded anyway so that nothing can drift

# The weights come from a third-party repackaging: check that they are the original ones.
weights_sha256 = minilm_weights_sha256()
if weights_sha256 != MINILM_WEIGHTS_SHA256:
    raise RuntimeError(f"{minilm_path() / MINILM_WEIGHTS_FILE} has SHA-256 {weights_sha256}, "
                       f"not the original all-MiniLM-L6-v2's {MINILM_WEIGHTS_SHA256}")
ch.markdown("weights-check", (
    f"This build computed the SHA-256 of the installed `{MINILM_WEIGHTS_FILE}`: "
    f"`{weights_sha256}`, identical to the original file's (sentence-transformers/"
    f"all-MiniLM-L6-v2 on the Hugging Face Hub, revision 1110a243), so the numbers on this "
    f"page come from the original weights."))
tokenizer, model = load_minilm(ch.device)
NUM_LAYERS, NUM_HEADS = model.config.num_hidden_layers, model.config.num_attention_heads
print(f"{NUM_LAYERS} layers x {NUM_HEADS} heads, d_model = {model.config.hidden_size}")

# %% [markdown]
# ## The sentences
#
# Six featured sentences (each at most 16 tokens with [CLS] and [SEP]) go into the
# figures and the explorer; the measurements use them plus more sentences of the same
# kind in full mode. All were written for this book.

# %%
FEATURED = [
    "The cat sat on the mat, and the cat slept.",
    "When the rain stopped, we walked to the old bridge.",
    "She read the letter twice; then she burned it.",
    "Is this the train to Paris, or the one to Rome?",
    "Attention lets every word look at every other word.",
    "My grandmother's recipe needs flour, eggs and honey.",
]
MORE = [
    "The committee, after a long debate, postponed the vote until Friday.",
    "Rivers carry sand to the sea, where waves spread it along the coast.",
    "He asked whether the museum was open on Mondays.",
    "Two trains left the station at noon: one went north, the other south.",
    "Bake the bread for forty minutes, then let it cool on a rack.",
    "Although the road was icy, the bus arrived on time.",
    "Which of these keys opens the small red door?",
    "The children laughed, the dog barked, and the baby finally fell asleep.",
    "Our neighbours planted tomatoes, beans and sunflowers this spring.",
    "A good map shows not only roads but also rivers, hills and forests.",
    "The old clock in the hall stopped at midnight, and nobody wound it again.",
    "Please close the window; the wind is blowing the papers off the desk.",
    "Light travels faster than sound, so we see lightning before we hear thunder.",
    "The recipe says two cups of sugar, but one cup is plenty.",
    "After the concert, the musicians packed their instruments and drove home.",
    "Why did the bridge, which had stood for a century, collapse so suddenly?",
    "The student wrote the answer, checked it twice, and handed in the paper.",
    "Every morning the baker opens the shop before the sun rises.",
]
CORPUS = FEATURED + ch.pick(MORE, MORE[:2])
MAX_TOKENS = 16  # keeps the explorer's JSON small


def corpus_attention(inputs):
    """Per input (a tuple of texts: one sentence or a pair): its tokens and probabilities.

    One padded batch for speed; each input's probabilities are then cut to its real
    tokens, (layers, heads, n, n). Rows of real queries over real keys are what the
    input alone would give (padded keys have weight exactly 0).
    """
    first, second = zip(*[(t[0], t[1] if len(t) > 1 else None) for t in inputs])
    enc = tokenizer(list(first), None if second[0] is None else list(second),
                    return_tensors="pt", padding=True).to(ch.device)
    assert tokenizer.padding_side == "right"  # real tokens first: slicing [:n] keeps them
    probs = minilm_attention_via_attnbook(model, enc.input_ids, enc.attention_mask,
                                          enc.token_type_ids).cpu()  # segment B has type 1
    out = []
    for b, n in enumerate(enc.attention_mask.sum(1).tolist()):
        tokens = tokenizer.convert_ids_to_tokens(enc.input_ids[b, :n].tolist())
        out.append((tokens, probs[:, b, :, :n, :n]))
    return out


featured = [{"text": text, "tokens": tokens, "probs": probs}
            for text, (tokens, probs) in zip(FEATURED, corpus_attention([(t,) for t in FEATURED]))]
assert all(len(s["tokens"]) <= MAX_TOKENS for s in featured)

ch.markdown("sentences", "\n".join(
    f"{i + 1}. “{s['text']}” ({len(s['tokens'])} tokens: "
    + " ".join(f"`{t}`" for t in s["tokens"]) + ")" for i, s in enumerate(featured)))

# %% [markdown]
# ## attnbook reproduces the model's attention
#
# The six featured sentences go through the model as one padded batch. We compare,
# layer by layer, (a) attnbook's recomputation from each layer's input, and (b) the
# whole encoder stack run through attnbook, against Hugging Face's own
# `output_attentions` (eager implementation).

# %%
batch = tokenizer(FEATURED, return_tensors="pt", padding=True).to(ch.device)
keep = batch.attention_mask.bool()
theirs = minilm_attentions(model, batch.input_ids, batch.attention_mask)           # HF eager
ours = minilm_attention_via_attnbook(model, batch.input_ids, batch.attention_mask)  # attnbook
stack_hidden, stack_probs = minilm_forward_via_attnbook(model, batch.input_ids,
                                                        batch.attention_mask)
hf_out = model(**batch, output_hidden_states=True)

padded_key = ~keep[None, :, None, None, :]  # (1, batch, 1, 1, seq): True at padded keys
rows = []
for layer in range(NUM_LAYERS):
    ours_err = (ours[layer] - theirs[layer]).abs().max().item()
    stack_err = (stack_probs[layer] - theirs[layer]).abs().max().item()
    rows.append([layer, f"{ours_err:.1e}", f"{stack_err:.1e}",
                 f"{(ours[layer].sum(-1) - 1).abs().max().item():.1e}"])
ch.table("reproduction-error",
         ["layer", "recomputed from the layer's input", "whole stack through attnbook",
          "largest deviation of a row sum from 1 (ours)"], rows)

worst = (ours - theirs).abs().max().item()
pad_ours = ours.masked_select(padded_key.expand_as(ours)).abs().max().item()
pad_theirs = theirs.masked_select(padded_key.expand_as(theirs)).abs().max().item()
hidden_err = (stack_hidden - hf_out.last_hidden_state).abs().max().item()
hidden_scale = hf_out.last_hidden_state.abs().max().item()
lengths = keep.sum(1).tolist()
ch.markdown("reproduction-summary", (
    f"The batch held {len(FEATURED)} sentences of {min(lengths)} to {max(lengths)} tokens, "
    f"padded to {keep.shape[1]}. Over all {NUM_LAYERS} layers and {NUM_HEADS} heads the largest "
    f"difference between attnbook's probabilities and the model's is {worst:.1e} (float32, "
    f"device `{ch.device.type}`). The largest weight on a padded key is {pad_ours:g} in ours and "
    f"{pad_theirs:g} in the model's"
    f"{': exactly zero in both' if pad_ours == pad_theirs == 0 else ''}. "
    f"Run through attnbook layer after layer, the encoder's final hidden states differ from "
    f"the model's by at most {hidden_err:.1e}, on "
    f"values as large as {hidden_scale:.1f}."))

# %% [markdown]
# ## Layer by layer, head by head

# %%
example = featured[0]
tokens0, probs0 = example["tokens"], example["probs"]


def draw_layer_means(theme):
    # Three rows of two panels: each heatmap is wide enough for 8-point token labels.
    fig, axes = plt.subplots(3, 2, figsize=(6.8, 10.2), sharex=True, sharey=True)
    for layer, ax in enumerate(axes.flat):
        left, bottom = layer % 2 == 0, layer >= NUM_LAYERS - 2
        heatmap(ax, probs0[layer].mean(0), tokens0, tokens0, theme=theme,
                title=f"layer {layer}", ylabel="query" if left else "",
                xlabel="key" if bottom else "")
        ax.tick_params(axis="both", labelsize=8, labelbottom=bottom, labelleft=left)
    fig.tight_layout(h_pad=0.6, w_pad=0.6)
    return fig


ch.figure("layer-means", draw_layer_means)


def draw_head_grid(theme):
    # 6 layers x 12 heads in the column's width: tiny panels without labels, so the only
    # text is the layer and head numbers around the grid (8 pt and larger).
    cmap = attention_cmap(theme)
    fig, axes = plt.subplots(NUM_LAYERS, NUM_HEADS, figsize=(6.8, 4.1),
                             gridspec_kw=dict(wspace=0.08, hspace=0.08))
    for layer in range(NUM_LAYERS):
        for head in range(NUM_HEADS):
            ax = axes[layer, head]
            ax.imshow(probs0[layer, head].numpy(), cmap=cmap, vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(colors(theme)["grid"])
            if layer == 0:
                ax.set_title(str(head), fontsize=9)
            if head == 0:
                ax.set_ylabel(str(layer), fontsize=9, rotation=0, labelpad=8, va="center")
    fig.supylabel("layer", fontsize=10)
    fig.suptitle("head", fontsize=10)
    return fig


ch.figure("head-grid", draw_head_grid, fmt="png")

# %% [markdown]
# ## Finding heads by measurement
#
# For every head: the average attention a query gives to the previous token, the next
# token, itself, [CLS], [SEP] and punctuation, and the entropy of its attention rows.
# Averaged over the sentences of the corpus (one sentence per input, no padding).

# %%
THRESHOLD = 0.5        # Clark et al. (2019, section 3.1) count heads with > 50% on a position;
                       # classify_heads applies "> THRESHOLD", and so does every count below
BROAD_THRESHOLD = 0.8  # our choice: mean row entropy at least 80% of uniform attention's


def corpus_statistics(attention):
    """``head_statistics`` averaged over inputs, each weighing the same."""
    per_input = [head_statistics(probs, tokens) for tokens, probs in attention]
    return {k: sum(s[k] for s in per_input) / len(per_input) for k in per_input[0]}


corpus = corpus_attention([(text,) for text in CORPUS])
stats = corpus_statistics(corpus)
roles = classify_heads(stats, threshold=THRESHOLD, broad_threshold=BROAD_THRESHOLD)
KINDS = list(ROLES) + ["broad"]


def score(kind):
    """(layers, heads) score that ranks heads of one kind."""
    return stats["broadness"] if kind == "broad" else stats[kind]


def head_name(layer, head):
    return f"{layer}-{head}"


def score_text(value, kind):
    """Three decimals, or more where three would round a score onto its threshold.

    A head labelled with a share of 0.500029 must not be printed as 0.500, which would read
    as "exactly one half is enough"; it is printed 0.50003.
    """
    threshold = BROAD_THRESHOLD if kind == "broad" else THRESHOLD
    for digits in range(3, 7):
        text = f"{value:.{digits}f}"
        if float(text) != threshold:
            break
    return text


def top_heads(kind, n=3):
    flat = score(kind).flatten()
    order = torch.argsort(flat, descending=True)[:n].tolist()
    return [(i // NUM_HEADS, i % NUM_HEADS, flat[i].item()) for i in order]


def count(kind):
    """How many heads got the label ``kind``."""
    return sum(row.count(kind) for row in roles)


def layers_of(kind):
    found = sorted({layer for layer, row in enumerate(roles) if kind in row})
    return ", ".join(map(str, found)) or "none"


table = []
for kind in KINDS:
    what = "mean entropy / uniform" if kind == "broad" else "mean attention"
    best = [f"{head_name(l, h)} ({score_text(v, kind)})" for l, h, v in top_heads(kind)]
    table.append([kind, count(kind), what] + best)
mixed = count("mixed")
ch.table("clear-cut-heads", ["kind", "heads labelled so", "score", "best head", "second", "third"],
         table, align="lrlrrr")
ch.markdown("role-counts", (
    f"Measured on {len(CORPUS)} sentences, {NUM_LAYERS * NUM_HEADS - mixed} of the "
    f"{NUM_LAYERS * NUM_HEADS} heads get a label; the other {mixed} are “mixed”: no single "
    f"position or token type takes more than half of their attention, and they are not broad either."))

def near_threshold_note(margin=0.01):
    """A sentence on heads whose largest share lies within ``margin`` of THRESHOLD."""
    shares = torch.stack([stats[role] for role in ROLES])  # (roles, layers, heads)
    best_share, best_role = shares.max(dim=0)
    near = [(l, h, ROLES[int(best_role[l, h])], best_share[l, h].item())
            for l in range(NUM_LAYERS) for h in range(NUM_HEADS)
            if abs(best_share[l, h].item() - THRESHOLD) < margin]
    if not near:
        return ""
    parts = [f"{head_name(l, h)} ({kind} share {v:.6f}: "
             f"{'labelled' if roles[l][h] == kind else 'not labelled'})" for l, h, kind, v in near]
    return (f" Close to the threshold (within {margin}), the rule “more than {THRESHOLD}” "
            f"decides: " + "; ".join(parts) + ".")


(prev_l, prev_h, prev_v) = top_heads("previous token", 1)[0]
(next_l, next_h, next_v) = top_heads("next token", 1)[0]
ch.markdown("role-findings", (
    f"The clearest previous-token head is {head_name(prev_l, prev_h)}: on average a query gives "
    f"{prev_v:.1%} of its attention to the token before it. The clearest next-token head is "
    f"{head_name(next_l, next_h)}, with {next_v:.0%} on the token after. "
    f"{count('[CLS]')} heads give more than half of their attention to [CLS], all in layers "
    f"{layers_of('[CLS]')}; no head gives [SEP] more than {stats['[SEP]'].max().item():.0%} "
    f"on average, nor punctuation more than "
    f"{stats['punctuation'].max().item():.0%}. The {count('broad')} broad heads are in layer(s) "
    f"{layers_of('broad')}." + near_threshold_note()))

# %%
# Palette positions per theme (the dark palette orders its colours differently), chosen so
# that a role has the same hue in both themes: blue, orange, green, vermillion, pink,
# yellow for broad, sky blue for self.
ROLE_COLORS = {"previous token": (0, 0), "next token": (1, 1), "[CLS]": (2, 2), "[SEP]": (3, 3),
               "punctuation": (4, 4), "broad": (6, 5), "self": (5, 6)}


def role_color(kind, theme):
    c = colors(theme)
    if kind == "mixed":
        return c["grid"]
    return c["palette"][ROLE_COLORS[kind][0 if theme == "light" else 1]]


def text_color_on(hex_color):
    r, g, b = (int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "#ffffff"


def draw_roles(theme):
    c = colors(theme)
    fig, ax = plt.subplots(figsize=(6.8, 4.0))
    for layer in range(NUM_LAYERS):
        for head in range(NUM_HEADS):
            kind = roles[layer][head]
            fill = role_color(kind, theme)
            ax.add_patch(plt.Rectangle((head - 0.46, layer - 0.46), 0.92, 0.92, color=fill, lw=0))
            if kind != "mixed":
                ax.text(head, layer, score_text(score(kind)[layer, head].item(), kind),
                        ha="center", va="center",
                        fontsize=8, color=text_color_on(fill))
    ax.set_xlim(-0.6, NUM_HEADS - 0.4)
    ax.set_ylim(NUM_LAYERS - 0.4, -0.6)
    ax.set_xticks(range(NUM_HEADS))
    ax.set_yticks(range(NUM_LAYERS))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(length=0)
    present = [k for k in KINDS + ["mixed"] if any(k in row for row in roles)]
    handles = [Patch(color=role_color(k, theme), label=k) for k in present]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14),
              ncol=min(4, len(handles)), frameon=False, fontsize=9, handlelength=1.2,
              columnspacing=1.0)
    ax.set_title("What each head does, measured\n(number: the share or broadness that decided)",
                 fontsize=10, color=c["fg"])
    fig.tight_layout()
    return fig


ch.figure("head-roles", draw_roles)

# %%
EXAMPLE_KINDS = ["previous token", "next token", "[CLS]", "punctuation", "[SEP]", "broad"]


def draw_examples(theme):
    fig, axes = plt.subplots(3, 2, figsize=(6.8, 10.4), sharex=True, sharey=True)
    for i, (ax, kind) in enumerate(zip(axes.flat, EXAMPLE_KINDS)):
        layer, head, value = top_heads(kind, 1)[0]
        label = "broadness" if kind == "broad" else "share"
        left, bottom = i % 2 == 0, i >= len(EXAMPLE_KINDS) - 2
        heatmap(ax, probs0[layer, head], tokens0, tokens0, theme=theme,
                title=f"{kind}: head {head_name(layer, head)}\n({label} {value:.2f})",
                ylabel="query" if left else "", xlabel="key" if bottom else "")
        ax.tick_params(axis="both", labelsize=8, labelbottom=bottom, labelleft=left)
        ax.title.set_fontsize(10)
    fig.tight_layout(h_pad=0.6, w_pad=0.6)
    return fig


ch.figure("role-examples", draw_examples)

# %% [markdown]
# The clearest next-token head, looked at closely: when it does not look at the next
# token, where does its attention go? (Clark et al. saw BERT's heads park it on [SEP].)

# %%
next_layer, next_head, _ = top_heads("next token", 1)[0]
next_share, cls_share = [], []
for tokens, probs in corpus:
    p = probs[next_layer, next_head]  # (seq, seq)
    seq = p.shape[-1]
    next_share.append(p.diagonal(offset=1)[1:])  # word queries i = 1 .. seq-2 -> key i+1
    cls_share.append(p[1: seq - 1, 0])           # the same queries -> [CLS]
next_share, cls_share = torch.cat(next_share), torch.cat(cls_share)
both = (next_share + cls_share).mean().item()
low = next_share <= THRESHOLD  # the complement of the labelling rule "> THRESHOLD"
ch.markdown("no-op", (
    f"In head {head_name(next_layer, next_head)}, the next token and [CLS] together receive "
    f"{both:.0%} of a query's attention on average. For the {int(low.sum())} of "
    f"{len(next_share)} queries that give the next token at most half of their attention, "
    f"[CLS] receives {cls_share[low].mean().item():.0%} on average."))

# %% [markdown]
# ## The paper, reproduced: Clark et al. (2019), Figures 2 and 4 and section 3.1
#
# Their inputs were 128-token pairs of segments, `[CLS] A [SEP] B [SEP]`; so are ours
# here. Each segment joins five of our sentences (taken with a stride of 5 through the
# corpus, starting at a different place for each input), and each input is truncated to
# 128 tokens.

# %%
SEGMENT_SENTENCES, MAX_LENGTH = 5, 128


def paper_inputs(num_inputs):
    n = len(CORPUS)
    inputs = []
    for r in range(num_inputs):
        order = [CORPUS[(3 * r + 5 * k) % n] for k in range(2 * SEGMENT_SENTENCES)]
        inputs.append((" ".join(order[:SEGMENT_SENTENCES]), " ".join(order[SEGMENT_SENTENCES:])))
    return inputs


def truncated_attention(inputs):
    """Like ``corpus_attention`` for pairs, each truncated to MAX_LENGTH tokens."""
    enc = tokenizer([a for a, _ in inputs], [b for _, b in inputs], return_tensors="pt",
                    padding=True, truncation=True, max_length=MAX_LENGTH).to(ch.device)
    probs = minilm_attention_via_attnbook(model, enc.input_ids, enc.attention_mask,
                                          enc.token_type_ids).cpu()
    return [(tokenizer.convert_ids_to_tokens(enc.input_ids[b, :n].tolist()), probs[:, b, :, :n, :n])
            for b, n in enumerate(enc.attention_mask.sum(1).tolist())]


pair_attention = truncated_attention(paper_inputs(ch.pick(8, 2)))
pair_stats = corpus_statistics(pair_attention)
pair_tokens = [len(tokens) for tokens, _ in pair_attention]
uniform_entropy = float(np.mean([math.log(n) for n in pair_tokens]))


def draw_paper(theme):
    c = colors(theme)
    panels = [("[CLS]", "avg. attention to [CLS]"), ("[SEP]", "avg. attention to [SEP]"),
              ("punctuation", "avg. attention to punctuation"), ("entropy", "avg. entropy (nats)")]
    fig, grid = plt.subplots(2, 2, figsize=(6.8, 5.8))
    axes = grid.flat
    layers = np.arange(NUM_LAYERS)
    for ax, (key, ylabel) in zip(axes, panels):
        values = pair_stats[key].numpy()  # (layers, heads)
        ax.scatter(np.repeat(layers, NUM_HEADS), values.flatten(), s=12, alpha=0.6,
                   color=c["palette"][0], linewidths=0, label="one head")
        ax.plot(layers, values.mean(1), color=c["palette"][1], marker="o", ms=4, label="layer mean")
        if key == "entropy":
            ax.axhline(uniform_entropy, color=c["muted"], ls="--", lw=1, label="uniform attention")
        else:
            ax.set_ylim(-0.02, 1.0)
        ax.set_xticks(layers)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(axis="y", alpha=0.4)
    grid[0, 0].legend(fontsize=8, loc="upper right")
    grid[1, 1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


ch.figure("paper-special-tokens", draw_paper)


pair_roles = classify_heads(pair_stats, threshold=THRESHOLD, broad_threshold=BROAD_THRESHOLD)


def heads_over(kind):
    """Heads that classify_heads labels ``kind`` on the paper's inputs (share > THRESHOLD)."""
    found = [(l, h) for l, row in enumerate(pair_roles) for h, label in enumerate(row)
             if label == kind]
    return f"{len(found)} ({', '.join(head_name(l, h) for l, h in found) or 'none'})"


def layers_by(kind, data):
    """Layers sorted by their mean over heads of ``kind``, highest first: [(layer, value)]."""
    means = data[kind].mean(1)
    return [(int(l), means[l].item()) for l in torch.argsort(means, descending=True)]


sep_over_half = [l for l, v in layers_by("[SEP]", pair_stats) if v > THRESHOLD]  # the same rule
(sep_l, sep_v) = layers_by("[SEP]", pair_stats)[0]
(cls_l, cls_v), (cls_l2, cls_v2) = layers_by("[CLS]", pair_stats)[:2]
punct = layers_by("punctuation", pair_stats)
(punct_l, punct_v), punct_low = punct[0], punct[-1][1]
(ent_l, ent_v), (ent_l2, ent_v2) = layers_by("entropy", pair_stats)[:2]
ch.table("paper-comparison",
         ["finding", "BERT-base (Clark et al., 2019; layers counted from 1)",
          "all-MiniLM-L6-v2 (ours; layers and heads counted from 0)"], [
    ["heads with > 50% of their attention on the previous token",
     "4, in layers 2, 4, 7, 8 of 12 (§3.1)", heads_over("previous token")],
    ["heads with > 50% of their attention on the next token",
     "5, in layers 1, 2, 2, 3, 6 (§3.1)", heads_over("next token")],
    ["layers giving over half of their attention to [SEP]", "6–10 (§3.2, Fig. 2)",
     ", ".join(map(str, sorted(sep_over_half))) or f"none (highest: layer {sep_l}, {sep_v:.3f})"],
    ["where attention to [CLS] is highest", "early layers (Fig. 2)",
     f"layer {cls_l} ({cls_v:.3f}), then layer {cls_l2} ({cls_v2:.3f})"],
    ["where attention to punctuation is highest", "deep layers: periods and commas (Fig. 2)",
     f"{punct_low:.3f} to {punct_v:.3f} in every layer; highest in layer {punct_l}"],
    ["where heads are broadest (highest mean entropy)", "lower layers (§3.3, Fig. 4)",
     f"layer {ent_l} ({ent_v:.3f} nats), then layer {ent_l2} ({ent_v2:.3f}); uniform: "
     f"{uniform_entropy:.3f}"],
], align="lll")
ch.paper("clark2019", "heads that put more than half their attention on the previous token",
         theirs="4 of BERT-base's 144 heads (§3.1)",
         ours=f"MiniLM: {heads_over('previous token')} (of {sum(len(row) for row in pair_roles)} heads)",
         section="the-paper-reproduced")
ch.paper("clark2019", "middle layers park attention on a special token",
         theirs="BERT-base: over half on [SEP] in layers 6-10 of 12 (§3.2, Fig. 2)",
         ours=f"MiniLM: [SEP] at most {sep_v:.3f}; [CLS] up to {cls_v:.3f} (layer {cls_l})",
         section="the-paper-reproduced")
ch.table("paper-layer-means",
         ["layer (from 0)", "[CLS]", "[SEP]", "punctuation", "entropy (nats)",
          "[CLS], single sentences"],
         [[l] + [f"{pair_stats[k][l].mean().item():.3f}" for k in ("[CLS]", "[SEP]", "punctuation",
                                                                      "entropy")]
          + [f"{stats['[CLS]'][l].mean().item():.3f}"] for l in range(NUM_LAYERS)])
lengths_text = (f"all {min(pair_tokens)} tokens long" if min(pair_tokens) == max(pair_tokens)
                else f"{min(pair_tokens)} to {max(pair_tokens)} tokens long")
ch.markdown("paper-setup", (
    f"{len(pair_tokens)} inputs of two segments of up to {SEGMENT_SENTENCES} of our sentences "
    f"each, {lengths_text} after truncation to {MAX_LENGTH} "
    f"(Clark et al.: 1000 Wikipedia segments of up to 128 tokens)."))

# %% [markdown]
# ## Pitfalls, measured: a missing padding mask, and the `sdpa` implementation

# %%
short, long = "Hi there!", FEATURED[0]
pad_batch = tokenizer([long, short], return_tensors="pt", padding=True).to(ch.device)
short_len = int(pad_batch.attention_mask[1].sum())
masked = minilm_attentions(model, pad_batch.input_ids, pad_batch.attention_mask)
unmasked = minilm_attentions(model, pad_batch.input_ids, torch.ones_like(pad_batch.attention_mask))
# the short sentence's real queries -> its [PAD] keys, averaged over layers, heads and queries
on_padding = unmasked[:, 1, :, :short_len, short_len:].sum(-1).mean().item()


def mean_pooled(mask):
    hidden = model(input_ids=pad_batch.input_ids, attention_mask=mask).last_hidden_state[1]
    return hidden[:short_len].mean(0)  # average over the short sentence's real tokens


alone = model(**tokenizer([short], return_tensors="pt").to(ch.device)).last_hidden_state[0].mean(0)
cos_masked = torch.cosine_similarity(mean_pooled(pad_batch.attention_mask), alone, dim=0).item()
no_mask = torch.ones_like(pad_batch.attention_mask)
cos_unmasked = torch.cosine_similarity(mean_pooled(no_mask), alone, dim=0).item()
ch.markdown("padding-pitfall", (
    f"Batched with a {pad_batch.input_ids.shape[1]}-token sentence, “{short}” ({short_len} "
    f"tokens) is followed by {pad_batch.input_ids.shape[1] - short_len} `[PAD]` tokens. Without "
    f"the mask, its real tokens put {on_padding:.0%} of their attention on padding (average "
    f"over layers and "
    f"heads), and the cosine similarity between its mean-pooled embedding and the one computed "
    f"alone falls to {cos_unmasked:.3f}; with the mask it is {cos_masked:.6f}."))

model.set_attn_implementation("sdpa")
sdpa_attentions = model(**pad_batch, output_attentions=True).attentions
model.set_attn_implementation("eager")
ch.markdown("sdpa-pitfall", (
    f"Loaded with the default `attn_implementation=\"sdpa\"`, the same call with "
    f"`output_attentions=True` returned `{sdpa_attentions!r}` (a "
    f"{type(sdpa_attentions).__name__} of length {len(sdpa_attentions or ())}) and a warning."))

# %% [markdown]
# ## Exercise 3: is the previous-token head positional?
# The solution on the page is this cell and its table.

# %%
# --8<-- [start:exercise-positional-head]
def previous_token_share(ids):  # (layers, heads): average attention to the previous token
    probs = minilm_attention_via_attnbook(model, ids.to(ch.device))[:, 0].cpu()
    return head_statistics(probs, tokenizer.convert_ids_to_tokens(ids[0].tolist()))["previous token"]


sentence_ids = tokenizer("The cat sat on the mat.", return_tensors="pt").input_ids
layer, head = divmod(int(previous_token_share(sentence_ids).argmax()), model.config.num_attention_heads)

generator = torch.Generator().manual_seed(0)
probes = {  # the first and last ids are replaced by [CLS] and [SEP] below: 18 tokens between
    "the sentence itself": sentence_ids,
    "18 random token ids": torch.randint(1000, 30000, (1, 20), generator=generator),
    "one word repeated 18 times": torch.full((1, 20), tokenizer.convert_tokens_to_ids("cat")),
}
rows = []
for name, ids in probes.items():
    ids = ids.clone()
    ids[0, 0], ids[0, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    rows.append([name, f"{layer}-{head}", f"{float(previous_token_share(ids)[layer, head]):.3f}"])
ch.table("exercise-positional-head", ["input", "head (layer-head)", "attention to the previous token"],
         rows, align="lcr")
# --8<-- [end:exercise-positional-head]

# %% [markdown]
# ## Data for the interactive explorer

# %%
explorer = explorer_json(  # the book's explorer format; raises if the file would pass 600 KB
    "all-MiniLM-L6-v2",
    [{"text": s["text"], "tokens": s["tokens"], "attention": s["probs"]} for s in featured],
    head_roles=roles, max_kb=600)
path = ch.json("explorer", explorer)
size_kb = path.stat().st_size / 1024
print(f"explorer.json: {size_kb:.0f} KB")
print("written:", ", ".join(sorted(ch.written)))
