# %% [markdown]
# # Visualising attention
#
# Pictures of attention from trained and pretrained weights: a small attention-only
# transformer trained until an induction head appears (Elhage et al., 2021; Olsson et
# al., 2022), and all-MiniLM-L6-v2 (chapter 17). Heatmaps, head grids, the head view and
# model view (Vig, 2019), the neuron view, the stages of one head, animations across
# layers, heads and training steps, and the pitfalls of attention pictures.

# %%
from attnbook.chapter import Chapter

ch = Chapter("visualising")

# %%
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.animation import FuncAnimation, PillowWriter
from matplotlib.colors import LogNorm

from attnbook.heads import first_token_share, induction_scores, previous_token_scores, repeated_random_tokens
from attnbook.models.attn_only import AttnOnlyConfig, AttnOnlyTransformer
from attnbook.viz import animate_heatmaps, attention_cmap, colors, head_grid, heatmap, theme_style
from attnbook.viz.views import (
    attention_stages,
    head_view,
    model_view,
    neuron_view,
    score_contributions,
    stage_panels,
)

ch.one_thread_on_cpu()

# %% [markdown]
# ## The data: random tokens with a repeated segment
#
# Token 0 is a beginning-of-sequence marker; tokens 1..63 are drawn uniformly. Each training
# row repeats a random segment of random length, so the only way to predict a repeated token
# is by content: look up the current token earlier in the sequence and copy the token that
# followed it. The evaluation sequences
# follow the standard protocol: BOS, then `PERIOD` random tokens, then the same tokens again.

# %%
# --8<-- [start:data]
VOCAB, BOS = 64, 0
PERIOD = 16                  # evaluation: BOS + 16 random tokens + the same 16 again
TRAIN_LEN = 40


def training_batch(batch: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, TRAIN_LEN) ids: BOS, then p random tokens (p from 4 to 20, drawn per row)
    repeated until the row is full. The period differs from row to row, so no fixed offset
    finds the earlier copy: the model must find it by content."""
    tokens = torch.randint(1, VOCAB, (batch, TRAIN_LEN), generator=generator)
    tokens[:, 0] = BOS
    p = torch.randint(4, PERIOD + 5, (batch, 1), generator=generator)
    pos = torch.arange(TRAIN_LEN).expand(batch, TRAIN_LEN)
    source = torch.where(pos > p, (pos - 1) % p + 1, pos)     # position i > p copies position i - p (mod p)
    return tokens.gather(1, source)
# --8<-- [end:data]


# %%
# --8<-- [start:train]
STEPS = ch.pick(1200, 60)
EVAL_EVERY = ch.pick(20, 30)
BATCH, LR = 32, 2e-3


def train_attn_only(seed: int = 0) -> dict:
    """Train the 2-layer, 4-head attention-only model; every EVAL_EVERY steps record the
    loss on the first and the repeated half of fixed evaluation sequences, the induction and
    previous-token scores of every head, and the attention of sequence 0 (for the GIF)."""
    torch.manual_seed(seed)
    model = AttnOnlyTransformer(AttnOnlyConfig(VOCAB, max_len=TRAIN_LEN, d_model=64, num_heads=4, num_layers=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    data = torch.Generator().manual_seed(seed + 1)
    evaluation = repeated_random_tokens(64, PERIOD, VOCAB, low=1, prefix=[BOS],
                                        generator=torch.Generator().manual_seed(seed + 2))  # (64, 33)
    log = {"step": [], "loss_first": [], "loss_repeat": [], "induction": [], "previous": [], "attention": []}
    for step in range(STEPS + 1):
        if step % EVAL_EVERY == 0:
            with torch.no_grad():
                logits, full = model(evaluation, return_weights=True)            # full: (2, 64, 4, 33, 33)
                # causal: the logits at positions 0..31 are those of the input without its last token
                losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), evaluation[:, 1:], reduction="none")
                # targets 2..P are the first copy (after its first token); targets P+2..2P the
                # repeated copy after its first token (which cannot be predicted)
                log["step"].append(step)
                log["loss_first"].append(losses[:, 1:PERIOD].mean().item())
                log["loss_repeat"].append(losses[:, PERIOD + 1:].mean().item())
                log["induction"].append(induction_scores(full, PERIOD, offset=1).mean(1).numpy())
                log["previous"].append(previous_token_scores(full, offset=1).mean(1).numpy())
                log["attention"].append(full[:, 0].numpy().astype(np.float32))   # (2, 4, 33, 33)
        if step == STEPS:
            break
        tokens = training_batch(BATCH, data)
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    log["state"] = {k: v.numpy() for k, v in model.state_dict().items()}
    log["evaluation"] = evaluation.numpy()
    return {k: (np.stack(v) if k in ("induction", "previous", "attention") else v) for k, v in log.items()}
# --8<-- [end:train]


wait_for_training = ch.in_background(train_attn_only)

# %% [markdown]
# ## A pretrained model: all-MiniLM-L6-v2
#
# While the small model trains (in a second process when a core is free), we draw the
# pretrained encoder of chapter 17 on one sentence.

# %%
from attnbook.models.pretrained import load_minilm, minilm_attentions  # noqa: E402

torch.set_grad_enabled(False)
tokenizer, minilm = load_minilm(ch.device)
SENTENCE = "The cat sat on the mat, and the cat slept."
encoded = tokenizer(SENTENCE, return_tensors="pt").to(ch.device)
words = tokenizer.convert_ids_to_tokens(encoded.input_ids[0].tolist())
probs = minilm_attentions(minilm, encoded.input_ids, encoded.attention_mask)[:, 0].cpu()  # (6, 12, n, n)
M_LAYERS, M_HEADS = probs.shape[:2]
print(f"MiniLM: {M_LAYERS} layers x {M_HEADS} heads on {len(words)} tokens")


def best_head(score):
    """(layer, head) with the largest value of a (layers, heads) score."""
    flat = int(torch.as_tensor(score).argmax())
    return divmod(flat, score.shape[1])


sep_share = probs[..., :, -1].mean(-1)                       # (6, 12): mean weight on [SEP]
cls_share = probs[..., :, 0].mean(-1)
prev_share = probs.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)
prev_layer, prev_head = best_head(prev_share)


def draw_minilm_head_view(theme):
    # the head view of one layer: three heads, one colour each
    fig, ax = plt.subplots(figsize=(4.2, 4.6))
    heads = sorted(torch.topk(prev_share[prev_layer], 3).indices.tolist())
    head_view(ax, probs[prev_layer], words, heads=heads, theme=theme, threshold=0.1,
              title=f"layer {prev_layer}, heads {', '.join(map(str, heads))}")
    c = colors(theme)
    for rank, head in enumerate(heads):
        ax.plot([], [], color=c["palette"][head % len(c["palette"])], linewidth=2, label=f"head {head}")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)
    return fig


ch.figure("minilm-head-view", draw_minilm_head_view)


def draw_minilm_model_view(theme):
    return model_view(probs[:, :6], theme=theme, threshold=0.1, cell=1.0)


ch.figure("minilm-model-view", draw_minilm_model_view, fmt="png")


# --8<-- [start:gif-layers]
def layers_gif(path, theme):
    """One frame per layer (the first two only with --quick): the layer's 12 heads as a 3 x 4 grid."""
    with theme_style(theme):
        fig, axes = plt.subplots(3, 4, figsize=(6.4, 5.2))
        images = []
        for head, ax in enumerate(axes.flat):
            images.append(ax.imshow(probs[0, head].numpy(), cmap=attention_cmap(theme), vmin=0, vmax=1,
                                    interpolation="nearest"))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"head {head}", fontsize=8)
        title = fig.suptitle("", fontsize=11)
        fig.tight_layout(pad=0.4, rect=(0, 0, 1, 0.94))   # room for the title above the grid

        def show(layer):
            for head, image in enumerate(images):
                image.set_data(probs[layer, head].numpy())
            title.set_text(f"MiniLM layer {layer}: query = row, key = column")
            return images

        FuncAnimation(fig, show, frames=ch.pick(M_LAYERS, 2)).save(path, writer=PillowWriter(fps=1))
        plt.close(fig)
# --8<-- [end:gif-layers]


for theme in ("light", "dark"):
    layers_gif(ch.path(f"minilm-layers-{theme}.gif"), theme)

# %% [markdown]
# ## Pitfalls of attention pictures, each shown

# %%
# 1. Averaging heads: the mean of a layer's heads hides what each head does.
mean_prev = probs[prev_layer].mean(0).diagonal(offset=-1).mean().item()
head_prev = prev_share[prev_layer, prev_head].item()
sink_head_in_layer = int((sep_share[prev_layer] + cls_share[prev_layer]).argmax())


def draw_pitfall_average(theme):
    fig, axes = plt.subplots(1, 3, figsize=(6.8, 2.9), sharey=True)
    panels = [(probs[prev_layer].mean(0), f"layer {prev_layer}, mean of {M_HEADS}"),
              (probs[prev_layer, prev_head], f"head {prev_layer}-{prev_head}"),
              (probs[prev_layer, sink_head_in_layer], f"head {prev_layer}-{sink_head_in_layer}")]
    for i, (ax, (w, title)) in enumerate(zip(axes, panels)):
        heatmap(ax, w, words, words, theme=theme, title=title, ylabel="query" if i == 0 else "")
        ax.title.set_fontsize(9)
    fig.tight_layout(pad=0.3)
    return fig


ch.figure("pitfall-average", draw_pitfall_average)
ch.markdown("pitfall-average", (
    f"Head {prev_layer}-{prev_head} puts on average {head_prev:.2f} of each query's weight on the "
    f"previous token; in the mean over the {M_HEADS} heads of layer {prev_layer} that share is "
    f"{mean_prev:.2f}: the average shows the previous-token pattern at {mean_prev / head_prev:.0%} of its "
    f"strength in the head that has it, mixed with whatever the other heads do."))

# 2. Renormalising after dropping [CLS] and [SEP]. Among the heads that give more than half
# of their weight to [CLS] and [SEP], the one whose renormalised rows look most decisive
# (largest mean of each row's largest weight after renormalising).
inner_all = probs[..., 1:-1, 1:-1]                            # (6, 12, n - 2, n - 2): real words only
kept_all = inner_all.sum(-1)                                  # (6, 12, n - 2): weight left on real words
decisive = (inner_all / kept_all[..., None]).amax(-1).mean(-1)    # (6, 12)
sink_all = 1 - kept_all.mean(-1)                              # (6, 12): mean share of [CLS] and [SEP]
sink_layer, sink_head = best_head(torch.where(sink_all > 0.5, decisive, torch.zeros_like(decisive)))
sink_w = probs[sink_layer, sink_head]                         # (n, n)
inner = sink_w[1:-1, 1:-1]                                    # real words only
kept = inner.sum(-1)                                          # weight left on real words, per row
renormalised = inner / kept[:, None]
worst = int(kept.argmin())


def draw_pitfall_renormalise(theme):
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.4))
    heatmap(axes[0], sink_w, words, words, theme=theme, title=f"head {sink_layer}-{sink_head}, all tokens")
    heatmap(axes[1], renormalised, words[1:-1], words[1:-1], theme=theme,
            title="[CLS], [SEP] dropped, rows renormalised", ylabel="")
    for ax in axes:
        ax.title.set_fontsize(9)
    fig.tight_layout(pad=0.3)
    return fig


ch.figure("pitfall-renormalise", draw_pitfall_renormalise)
ch.markdown("pitfall-renormalise", (
    f"In head {sink_layer}-{sink_head}, [CLS] and [SEP] receive on average "
    f"{1 - kept.mean().item():.2f} of each word's attention. The word `{words[1 + worst]}` keeps only "
    f"{kept[worst].item():.3f} of its weight on other words; renormalising its row multiplies every one "
    f"of those weights by {1 / kept[worst].item():.0f}, and its largest weight goes from "
    f"{inner[worst].max().item():.3f} to {renormalised[worst].max().item():.2f}. After renormalising, the "
    f"largest weight of a row is on average {decisive[sink_layer, sink_head].item():.2f}, on the same scale "
    f"as a row that really put its weight on a word."))

# 3. A linear colour scale hides small weights; a log scale (clipped at 1e-3) shows them.
# The head whose weights below 0.05 carry the most attention in total:
small_mass = (probs * (probs < 0.05)).sum(-1).mean(-1)          # (6, 12)
scale_layer, scale_head = best_head(small_mass)
scale_w = probs[scale_layer, scale_head]
small = (scale_w > 0) & (scale_w < 0.05)


def draw_pitfall_scale(theme):
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.4))
    heatmap(axes[0], scale_w, words, words, theme=theme, title=f"head {scale_layer}-{scale_head}, linear, 0 to 1")
    image = axes[1].imshow(scale_w.clamp(min=1e-3).numpy(), cmap=attention_cmap(theme),
                           norm=LogNorm(1e-3, 1.0), interpolation="nearest", aspect="auto")
    heatmap(axes[1], scale_w, words, words, theme=theme, title="log, clipped at 0.001", ylabel="")
    axes[1].images[-1].remove()
    bar = fig.colorbar(image, ax=axes[1], fraction=0.05, pad=0.02)
    bar.ax.tick_params(labelsize=8)
    for ax in axes:
        ax.title.set_fontsize(9)
    fig.tight_layout(pad=0.3)
    return fig


ch.figure("pitfall-scale", draw_pitfall_scale)
ch.markdown("pitfall-scale", (
    f"In head {scale_layer}-{scale_head}, {int(small.sum())} of the {scale_w.numel()} weights lie between 0 and "
    f"0.05: almost invisible on the linear scale, yet together they carry "
    f"{scale_w[small].sum().item() / scale_w.shape[0]:.2f} of an average row's attention."))

# 4. The first-token sink dominates the colour map.
cls_layer, cls_head = best_head(cls_share)
cls_w = probs[cls_layer, cls_head]
rest_max = cls_w[:, 1:].max().item()


def draw_pitfall_sink(theme):
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.4))
    heatmap(axes[0], cls_w, words, words, theme=theme, vmax=float(cls_w.max()),
            title="scaled to the largest weight")
    heatmap(axes[1], cls_w[:, 1:], words[1:], words, theme=theme, vmax=rest_max,
            title=f"[CLS] column left out (scale 0 to {rest_max:.2f})", ylabel="")
    for ax in axes:
        ax.title.set_fontsize(9)
    fig.tight_layout(pad=0.3)
    return fig


ch.figure("pitfall-sink", draw_pitfall_sink)
ch.markdown("pitfall-sink", (
    f"Head {cls_layer}-{cls_head} sends on average {cls_share[cls_layer, cls_head].item():.2f} of each "
    f"query's weight to the first token, [CLS], and its largest weight is {cls_w.max().item():.2f}. "
    f"The largest weight on any other key is {rest_max:.2f}: on a colour scale set by the sink, "
    f"everything else gets at most {rest_max / cls_w.max().item():.0%} of the colour range."))

# %% [markdown]
# ## The attention-only model: the phase change

# %%
log = wait_for_training()
model = AttnOnlyTransformer(AttnOnlyConfig(VOCAB, max_len=TRAIN_LEN, d_model=64, num_heads=4, num_layers=2))
model.load_state_dict({k: torch.as_tensor(v) for k, v in log["state"].items()})
model.eval()
# Why the first-half loss can end above the uniform guess: the probability the trained model
# gives, at the last 8 positions of the first copy, to the token after <s> (a segment restart,
# which the training rows make and the evaluation sequences do not).
eval_ids = torch.as_tensor(log["evaluation"])                                  # (64, 33)
eval_probs = model(eval_ids).softmax(-1)                                        # (64, 33, vocab)
restart_prob = eval_probs[:, PERIOD - 8:PERIOD].gather(
    -1, eval_ids[:, 1, None, None].expand(-1, 8, 1)).mean().item()
steps = np.array(log["step"])
loss_repeat, loss_first = np.array(log["loss_repeat"]), np.array(log["loss_first"])
induction = log["induction"]          # (evals, layers, heads)
previous = log["previous"]
final_induction = torch.as_tensor(induction[-1])
ind_layer, ind_head = best_head(final_induction)
prev_scores_final = torch.as_tensor(previous[-1])
pt_layer, pt_head = best_head(prev_scores_final)
best_induction = float(final_induction.max())


# --8<-- [start:abrupt]
def drop_window(values, steps, low=0.1, high=0.9):
    """The steps at which ``values`` (a falling curve) first completes ``low`` and ``high`` of
    its total fall from the first value to the last: (step_low, step_high)."""
    start, end = values[0], values[-1]
    fallen = (start - values) / (start - end)         # 0 at the start, 1 at the end
    return steps[np.argmax(fallen >= low)], steps[np.argmax(fallen >= high)]
# --8<-- [end:abrupt]


ABRUPT_FRACTION = 0.2
step_10, step_90 = drop_window(loss_repeat, steps)
window_fraction = (step_90 - step_10) / STEPS
total_drop = loss_repeat[0] - loss_repeat[-1]
abrupt = total_drop > 0.5 * loss_repeat[0] and window_fraction <= ABRUPT_FRACTION
crossing = steps[np.argmax(induction[:, ind_layer, ind_head] > 0.4)] if best_induction > 0.4 else None
print(f"loss on the repeated half {loss_repeat[0]:.2f} -> {loss_repeat[-1]:.2f}; 10%..90% of the drop "
      f"between steps {step_10} and {step_90} ({window_fraction:.0%} of training); "
      f"best induction score {best_induction:.2f} (head {ind_layer}-{ind_head})")
if not ch.quick:
    if not abrupt:
        raise RuntimeError(f"no abrupt phase change: 80% of the drop took {window_fraction:.0%} of training "
                           f"(limit {ABRUPT_FRACTION:.0%}), total drop {total_drop:.2f}")
    if best_induction <= 0.4:
        raise RuntimeError(f"no induction head: the best induction score is {best_induction:.2f} (need > 0.4)")

ch.markdown("phase-change", (
    f"Over {STEPS} steps the loss on the repeated half fell from {loss_repeat[0]:.2f} to "
    f"{loss_repeat[-1]:.2f} nats, while the loss on the first half, which nothing earlier in the sequence "
    f"can predict, ended at {loss_first[-1]:.2f} (a uniform guess over the {VOCAB - 1} tokens scores "
    f"ln {VOCAB - 1} = {math.log(VOCAB - 1):.2f}). Ten to ninety per cent of that drop "
    f"happened between steps {step_10} and {step_90}, that is within {window_fraction:.0%} of training: "
    + (f"**abrupt** by this page's measure (at most {ABRUPT_FRACTION:.0%}). "
       if abrupt else f"**not abrupt** by this page's measure (at most {ABRUPT_FRACTION:.0%}). ")
    + f"At the end, head {ind_layer}-{ind_head} has an induction score of {best_induction:.2f}"
    + (f" (above 0.4 from step {crossing} on)" if crossing is not None else " (below 0.4)")
    + f", and head {pt_layer}-{pt_head} gives {float(prev_scores_final.max()):.2f} of its weight "
    f"to the previous token."
    + (f" The loss on the first half is not flat: it peaks at {loss_first.max():.2f} at step "
       f"{steps[loss_first.argmax()]}, {'inside' if step_10 <= steps[loss_first.argmax()] <= step_90 else 'outside'} "
       f"the window, as the model starts to copy confidently and is wrong wherever nothing repeats."
       if loss_first.max() > loss_first[0] + 0.1 else "")
    + (f" The first-half loss ends above the uniform guess because the training rows restart their segment "
       f"after 4 to 20 tokens: at the last 8 positions of the first copy the model still gives on average "
       f"{restart_prob:.2f} of its probability to a restart (the token after `<s>`; a uniform guess gives it "
       f"1/{VOCAB - 1} = {1 / (VOCAB - 1):.3f}), which the evaluation sequences never make."
       if loss_first[-1] > math.log(VOCAB - 1) and restart_prob > 2 / (VOCAB - 1) else "")
    + (" (This is a `--quick` run: it trains too briefly for the phase change, and the checks are skipped.)"
       if ch.quick else "")))

ch.table("heads", ["head (layer-head)", "induction score", "previous-token score", "weight on BOS"],
         [[f"{layer}-{head}", f"{final_induction[layer, head]:.2f}", f"{prev_scores_final[layer, head]:.2f}",
           f"{float(first_token_share(torch.as_tensor(log['attention'][-1]))[layer, head]):.2f}"]
          for layer in range(2) for head in range(4)], align="lrrr")

ch.paper("olsson2022", "induction heads appear at the same point in training as a sharp rise in in-context learning",
         theirs="induction heads develop at precisely the same point in training as a sudden, sharp increase in "
                "in-context learning, visible as a bump in the training loss (abstract)",
         ours=f"10 % to 90 % of the repeated-half loss fall between steps {step_10} and {step_90} of {STEPS}; "
              f"best induction score (head {ind_layer}-{ind_head}) "
              + (f"above 0.4 from step {crossing}" if crossing is not None else "never above 0.4")
              + " (2-layer attention-only model, repeated random tokens)",
         section="the-paper-reproduced")
ch.paper("elhage2021", "induction heads need a previous-token head in an earlier layer",
         theirs="induction heads in two-layer attention-only models, formed by K-composition with a "
                "previous-token head of the first layer; none in one-layer models",
         ours=f"layer 0: head {pt_layer}-{pt_head}, previous-token score {float(prev_scores_final.max()):.2f}; "
              f"layer 1: induction scores {float(final_induction[1].min()):.2f} to "
              f"{float(final_induction[1].max()):.2f} (one layer not run here: exercise 2)",
         section="the-paper-reproduced")


def draw_phase_change(theme):
    c = colors(theme)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.2), sharex=True)
    for ax in (top, bottom):
        ax.axvspan(step_10, step_90, color=c["grid"], alpha=0.6, lw=0)
    top.plot(steps, loss_first, label="first half (unpredictable)", color=c["palette"][1])
    top.plot(steps, loss_repeat, label="repeated half", color=c["palette"][0])
    top.set_ylabel("loss (nats)")
    top.legend(fontsize=8, frameon=False)
    for head in range(4):
        bottom.plot(steps, induction[:, 1, head], color=c["palette"][head],
                    linewidth=2.2 if (1, head) == (ind_layer, ind_head) else 1.0, label=f"head 1-{head}")
    bottom.axhline(0.4, color=c["muted"], linestyle="--", linewidth=0.8)
    bottom.set_ylabel("induction score")
    bottom.set_xlabel("training step")
    bottom.set_ylim(0, 1)
    bottom.legend(fontsize=8, frameon=False, ncol=4, loc="upper left")
    fig.tight_layout(pad=0.3)
    return fig


ch.figure("phase-change", draw_phase_change)

# The induction head's attention on evaluation sequence 0 across training: the GIF.
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789#"  # 63 letters for ids 1..63
evaluation = torch.as_tensor(log["evaluation"])
letters = ["<s>"] + [ALPHABET[t - 1] for t in evaluation[0, 1:].tolist()]
# frames: 10 spread over training plus 14 packed into the window where the loss fell
in_window = np.flatnonzero((steps >= step_10 - 2 * EVAL_EVERY) & (steps <= step_90 + 2 * EVAL_EVERY))
frames = np.unique(np.concatenate([np.linspace(0, len(steps) - 1, ch.pick(10, 2)).round(),
                                   np.linspace(in_window[0], in_window[-1], ch.pick(14, 0)).round()]).astype(int))
for theme in ("light", "dark"):
    animate_heatmaps([log["attention"][f, ind_layer, ind_head] for f in frames],
                     ch.path(f"induction-training-{theme}.gif"), theme=theme,
                     titles=[f"head {ind_layer}-{ind_head}, step {steps[f]}" for f in frames],
                     x_labels=letters, y_labels=letters, fps=4, size=(5.2, 4.8))

# %% [markdown]
# ## The trained model, seen every way

# %%

# A short sequence for the pictures with token labels: BOS + 7 letters + the same 7 again.
SHORT = 7
short = repeated_random_tokens(1, SHORT, VOCAB, low=1, prefix=[BOS], generator=torch.Generator().manual_seed(7))
short_letters = ["<s>"] + [ALPHABET[t - 1] for t in short[0, 1:].tolist()]
_, short_weights = model(short, return_weights=True)          # (2, 1, 4, 15, 15)
short_weights = short_weights[:, 0]


def draw_attn_only_grid(theme):
    return head_grid(log["attention"][-1], theme=theme, cell=1.5)


ch.figure("attn-only-grid", draw_attn_only_grid, fmt="png")


def draw_attn_only_model_view(theme):
    return model_view(short_weights, theme=theme, threshold=0.1, cell=1.4)


ch.figure("attn-only-model-view", draw_attn_only_model_view)


def draw_attn_only_head_view(theme):
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 4.4))
    head_view(axes[0], short_weights[pt_layer], short_letters, heads=[pt_head], theme=theme, threshold=0.1,
              title=f"head {pt_layer}-{pt_head} (previous token)")
    head_view(axes[1], short_weights[ind_layer], short_letters, heads=[ind_head], theme=theme, threshold=0.1,
              title=f"head {ind_layer}-{ind_head} (induction)")
    fig.tight_layout(pad=0.3)
    return fig


ch.figure("attn-only-head-view", draw_attn_only_head_view)

# The neuron view: the induction head's score for one query in the second copy, split by dimension.
q, k = model.queries_keys(short, ind_layer)                       # (1, 4, 15, 16) each
parts = score_contributions(q[0, ind_head], k[0, ind_head])       # (15, 15, 16)
QUERY = 1 + SHORT + 3                                             # the 4th token of the second copy
TARGET_KEY = QUERY - SHORT + 1                                    # the token after its first occurrence


def draw_neuron_view(theme):
    return neuron_view(parts[:, :QUERY + 1], short_letters[:QUERY + 1], QUERY, theme=theme)


ch.figure("neuron-view", draw_neuron_view)
scores_q = parts[QUERY, :QUERY + 1].sum(-1)
magnitudes = parts[QUERY, TARGET_KEY].abs()
top_dims = magnitudes.argsort(descending=True)[:3]
share_top = (magnitudes[top_dims].sum() / magnitudes.sum()).item()
ch.markdown("neuron-view", (
    f"The query is the second `{short_letters[QUERY]}` (position {QUERY}); the induction key is "
    f"`{short_letters[TARGET_KEY]}` at position {TARGET_KEY}, the token after the first `{short_letters[QUERY]}`. "
    f"Its score is {scores_q[TARGET_KEY].item():.2f}, against at most "
    f"{torch.cat([scores_q[:TARGET_KEY], scores_q[TARGET_KEY + 1:]]).max().item():.2f} for every other key; the three "
    f"largest of its {parts.shape[-1]} products (dimensions {', '.join(str(int(d)) for d in top_dims)}) make up "
    f"{share_top:.0%} of the total size of the products (the sum of their absolute values)."))

# The stages of the same head on the same input.
DROPOUT_P = 0.1
stages = attention_stages(q[0, ind_head], k[0, ind_head], causal=True, dropout_p=DROPOUT_P,
                          generator=torch.Generator().manual_seed(0))


def draw_stages(theme):
    return stage_panels(stages, short_letters, theme=theme, ncols=2)


ch.figure("stages", draw_stages, fmt="png")
ok = torch.allclose(stages["softmax"], short_weights[ind_layer, ind_head], atol=1e-6)
ch.markdown("stages", (
    f"The softmax panel {'equals' if ok else 'DIFFERS FROM'} the weights the model itself returns for head "
    f"{ind_layer}-{ind_head} (float32, largest difference "
    f"{(stages['softmax'] - short_weights[ind_layer, ind_head]).abs().max().item():.1e}). The raw scores range from "
    f"{stages['raw'].min().item():.1f} to {stages['raw'].max().item():.1f}; dividing by √d_k = "
    f"{math.sqrt(q.shape[-1]):.0f} shrinks them to {stages['scaled'].min().item():.1f} to "
    f"{stages['scaled'].max().item():.1f}. With dropout p = {DROPOUT_P}, "
    f"{int((stages['dropout'] == 0).sum() - (stages['softmax'] == 0).sum())} "
    f"of the {int((stages['softmax'] > 0).sum())} visible weights were dropped in this draw, and no row sums to 1 "
    f"any more: every surviving weight is divided by 1 − p, so a row that lost nothing sums to "
    f"1/(1 − p) = {1 / (1 - DROPOUT_P):.2f}, and the row sums range from "
    f"{stages['dropout'].sum(-1).min().item():.2f} to {stages['dropout'].sum(-1).max().item():.2f}."))

# %% [markdown]
# ## Data for the interactive explorer

# %%
# The three inputs: the short sequence and two evaluation sequences; every head's scaled
# scores go along for the widget's stage view, and the model's next-token logits.
from attnbook.viz.explorer import explorer_json  # noqa: E402


def scaled_scores(ids):
    """Every head's q k^T / sqrt(d_k) before the mask: (layers, heads, T, T)."""
    rows = []
    for layer in range(model.config.num_layers):
        q, k = model.queries_keys(ids[None], layer)                    # (1, heads, T, head_dim)
        rows.append(q[0] @ k[0].transpose(-2, -1) / math.sqrt(q.shape[-1]))
    return torch.stack(rows)


examples = []
for ids in [short[0]] + [torch.as_tensor(log["evaluation"][i]) for i in range(2)]:
    logits, w = model(ids[None], return_weights=True)                 # w: (2, 1, 4, T, T)
    scaled = scaled_scores(ids)
    tokens = ["<s>"] + [ALPHABET[t - 1] for t in ids[1:].tolist()]
    examples.append({"tokens": tokens, "attention": w[:, 0], "scores": scaled,
                     "next_token": {"logits": logits[0], "decode": lambda t: "<s>" if t == BOS else ALPHABET[t - 1]}})
explorer = explorer_json("attention-only transformer, 2 layers x 4 heads (this chapter)", examples=examples,
                         causal=True, scale=1 / math.sqrt(model.config.d_model // model.config.num_heads), top_k=5,
                         description="Trained on random tokens with repeated segments; each input repeats "
                                     "its first half.")
path = ch.json("explorer", explorer)
print(f"explorer.json: {path.stat().st_size / 1024:.0f} KB")
print("written:", ", ".join(sorted(ch.written)))
