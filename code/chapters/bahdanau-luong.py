# %% [markdown]
# # Additive and multiplicative attention
#
# The experiments of the chapter: a GRU encoder-decoder trained on a toy translation task
# (a seeded synthetic language pair with reordering and a known word alignment) with no
# attention, Bahdanau's additive score, Luong's dot, general and concat scores, and
# Luong's local-p attention; then BLEU and exact match by source length (the shape of
# Bahdanau et al. 2015, Fig. 2), the alignment error rate of every score against the true
# alignment, and alignment heatmaps next to the truth.
#
# Run it with `python code/chapters/bahdanau-luong.py --device {auto,cpu,cuda} [--quick]`.

# %%
from attnbook.chapter import Chapter

ch = Chapter("bahdanau-luong")

# %%
import math
import time

import matplotlib.pyplot as plt
import numpy as np
import sacrebleu
import torch

from attnbook.attention.additive import additive_attention, project_keys
from attnbook.data.translation import (
    TEST_BINS,
    TRAIN_MAX_LEN,
    benchmark_data,
    benchmark_task,
    bucketed_batches,
    corpus_alignment_error_rate,
    links_from_attention,
)
from attnbook.models.seq2seq import Seq2Seq
from attnbook.train import TrainConfig, cross_entropy, train
from attnbook.viz import colors, heatmap, length_panels

# Small recurrent steps are dominated by per-operation overhead: one thread is as fast as
# two here, and leaves the other core to the rest of the build.
ch.one_thread_on_cpu()

# %% [markdown]
# ## 1. The task: a made-up language pair with a known alignment
#
# The source language is subject-verb-object with adjectives before nouns; the target is
# subject-object-verb with adjectives and articles after nouns, postpositions, and plural
# and past tense written as separate particles. Every target word comes from one source
# word, so the true alignment is known.

# %%
# The task and its split live in the library (attnbook.data.translation): chapter 7 uses
# the same ones. Training sentences have at most TRAIN_MAX_LEN = 25 words, like
# RNNsearch-30 trained on short sentences; the test bins reach 40.
task = benchmark_task()
STEPS = ch.pick(400, 10)                 # updates for each attention model
NONE_STEPS = ch.pick(800, 20)            # the model without attention is cheaper per step
BATCH = 64
PER_BIN = ch.pick(80, 4)
HIDDEN, EMBED = ch.pick((64, 32), (16, 8))
HALF_WINDOW = 10                         # local-p's D, the value Luong et al. use
NARROW_WINDOW = 4                        # exercise 6: local-p with a narrower window

train_pairs, test_pairs = benchmark_data(task, ch.pick(16_000, 200), PER_BIN)
train_lengths = np.array([len(p.source) for p in train_pairs])

example = task.sample(1, 7, min_len=9, max_len=11)[0]
gloss = {t: s for s, t in example.alignment}
ch.markdown("example", "\n".join([
    "| | |", "|:--|:--|",
    f"| source | `{' '.join(example.source)}` |",
    f"| target | `{' '.join(example.target)}` |",
    "| target word ← source word | " + ", ".join(
        f"`{w}`←`{example.source[gloss[j]]}`" for j, w in enumerate(example.target)) + " |",
]))
ch.markdown("task-setup", (
    f"The source vocabulary has {len(task.source_vocab)} entries and the target vocabulary "
    f"{len(task.target_vocab)} (four of each are `<pad>`, `<bos>`, `<eos>`, `<unk>`). "
    f"Training draws {len(train_pairs):,} sentence pairs with sources of 3 to {TRAIN_MAX_LEN} words "
    f"(median {int(np.median(train_lengths))}; {np.mean(train_lengths > 20):.0%} are longer than 20 words); "
    f"the test set holds {PER_BIN} fresh pairs in each source-length bin "
    + ", ".join(f"{lo}–{hi}" for lo, hi in TEST_BINS) + "."))

# %% [markdown]
# ## 2. Six models, one training recipe
#
# Batches are built from sentences of similar length (less padding, shorter decoder loops),
# drawn at random by the seeded generator of `attnbook.train.train`.

# %%
train_batches = bucketed_batches(task, train_pairs, BATCH)


def make_batch(generator):
    b = train_batches[int(torch.randint(len(train_batches), (1,), generator=generator))]
    return (b.src, b.src_lengths, b.tgt_in), b.tgt_out


def loss_fn(output, targets):
    logits, _ = output                     # the model also returns its attention weights
    return cross_entropy(logits, targets)


KINDS = ["none", "bahdanau", "dot", "general", "concat", "local-p"]
LABELS = {"none": "no attention", "bahdanau": "Bahdanau (additive)", "dot": "Luong dot",
          "general": "Luong general", "concat": "Luong concat", "local-p": "Luong local-p"}


def make_model(kind, half_window=HALF_WINDOW):
    return Seq2Seq(len(task.source_vocab), len(task.target_vocab), attention=kind,
                   embed_dim=EMBED, hidden_dim=HIDDEN, half_window=half_window,
                   pad_id=task.source_vocab.pad_id)


def report(kind, half_window, history, cpu_seconds):
    label = f"{kind} (D={half_window})" if kind == "local-p" else kind
    print(f"{label:>14}: {len(history.loss)} steps in {history.seconds:.1f} s "
          f"({cpu_seconds:.1f} s of CPU), final loss {np.mean(history.loss[-20:]):.3f}")


def train_model(kind, half_window=HALF_WINDOW, verbose=True):
    """One model of the chapter, from seed 0, on the same stream of batches as the others."""
    ch.seed(0)
    model = make_model(kind, half_window)
    steps = NONE_STEPS if kind == "none" else STEPS
    # AdamW with weight_decay=0 is plain Adam.
    config = TrainConfig(steps=steps, lr=1e-2, warmup_steps=steps // 20, weight_decay=0.0,
                         clip_norm=1.0, seed=0)
    cpu_start = time.process_time()
    history = train(model, make_batch, config, device=ch.device, loss_fn=loss_fn)
    if verbose:
        report(kind, half_window, history, time.process_time() - cpu_start)
    return model.eval(), history


def start_training(kind, half_window):
    """Train one more model (exercise 6) while the main loop runs; returns a function that
    waits for (model, history). With a spare core it trains in a forked process beside this
    one-thread process, adding little wall-clock time; the result is the same as training it
    here (same seed, same batches)."""
    def work():
        cpu_start = time.process_time()
        model, history = train_model(kind, half_window, verbose=False)
        state = {name: value.cpu().numpy() for name, value in model.state_dict().items()}  # plain arrays
        return state, history, time.process_time() - cpu_start

    pending = ch.in_background(work)

    def wait():
        state, history, cpu_seconds = pending()
        model = make_model(kind, half_window)
        model.load_state_dict({name: torch.from_numpy(value) for name, value in state.items()})
        report(kind, half_window, history, cpu_seconds)
        return model.to(ch.device).eval(), history
    return wait


# Exercise 6: local-p with a narrower window, trained alongside the chapter's six models.
wait_for_narrow = start_training("local-p", NARROW_WINDOW)
models, histories = {}, {}
for kind in KINDS:
    models[kind], histories[kind] = train_model(kind)

# %% [markdown]
# ## 3. Translation quality by source length (Bahdanau et al. 2015, Fig. 2)
#
# Greedy decoding; BLEU is sacreBLEU's corpus BLEU (default 13a tokenisation) over the
# sentences of each bin, and over all test sentences at once; exact match = the whole
# sentence right.

# %%
def translate(model, pairs):
    b = task.batch(pairs)
    tokens, _ = model.greedy_decode(b.src.to(ch.device), b.src_lengths.to(ch.device),
                                    max_len=ch.pick(2 * b.tgt_in.shape[1] + 10, b.tgt_in.shape[1]),
                                    bos_id=task.target_vocab.bos_id, eos_id=task.target_vocab.eos_id)
    return [" ".join(task.target_vocab.decode(row)) for row in tokens.cpu()]


def evaluate(model):
    """(bin -> (corpus BLEU, exact match), corpus BLEU over all test sentences)."""
    by_bin, all_hypotheses, all_references = {}, [], []
    for bin_, pairs in test_pairs.items():
        hypotheses = translate(model, pairs)
        references = [" ".join(p.target) for p in pairs]
        bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
        exact = np.mean([h == r for h, r in zip(hypotheses, references)])
        by_bin[bin_] = (bleu, exact)
        all_hypotheses += hypotheses
        all_references += references
    return by_bin, sacrebleu.corpus_bleu(all_hypotheses, [all_references]).score


quality, bleu_all = {}, {}          # kind -> bin -> (bleu, exact match); kind -> corpus BLEU
for kind, model in models.items():
    quality[kind], bleu_all[kind] = evaluate(model)
NUM_TEST = sum(len(pairs) for pairs in test_pairs.values())


def bin_name(bin_):
    return f"{bin_[0]}–{bin_[1]}"


ch.table("quality-by-length", ["model"] + [f"BLEU {bin_name(b)}" for b in TEST_BINS]
         + [f"exact {bin_name(b)}" for b in TEST_BINS],
         [[LABELS[k]] + [f"{quality[k][b][0]:.1f}" for b in TEST_BINS]
          + [f"{quality[k][b][1]:.0%}" for b in TEST_BINS] for k in KINDS])

LONG = TEST_BINS[-1]
best_long = max(KINDS[1:], key=lambda k: quality[k][LONG][0])
worst_long = min(KINDS[1:], key=lambda k: quality[k][LONG][0])
margin = quality[worst_long][LONG][0] - quality["none"][LONG][0]
SHORT = TEST_BINS[0]
none_short, none_long = quality["none"][SHORT][0], quality["none"][LONG][0]
ch.markdown("long-sentences", (
    f"On sources of {bin_name(LONG)} words, longer than any sentence seen in training, the "
    f"best attention model ({LABELS[best_long]}) scores {quality[best_long][LONG][0]:.1f} BLEU "
    f"and the weakest ({LABELS[worst_long]}) {quality[worst_long][LONG][0]:.1f}, against "
    f"{none_long:.1f} for the model without attention"
    # A lower bound is rounded down, so that "at least" stays true.
    + (f": every attention model is ahead by at least {math.floor(margin)} BLEU points."
       if margin >= 1 else ": on this run not every attention model is clearly ahead there.")
    + f" On the shortest sources ({bin_name(SHORT)} words) the model without attention "
    f"reaches {none_short:.1f} BLEU"
    + (", far behind every attention model there"
       if none_short < min(quality[k][SHORT][0] for k in KINDS[1:]) - 10 else "")
    + (": the fixed vector copes better with short sentences than with long ones, but attention "
       "does much better at every length." if none_short > 2 * none_long else ".")))

# How our curves compare with Bahdanau et al.'s Fig. 2, decided from the numbers.
ahead_everywhere = all(quality[k][b][0] > quality["none"][b][0] for k in KINDS[1:] for b in TEST_BINS)
attention_falls = [k for k in KINDS[1:] if quality[k][LONG][0] < quality[k][SHORT][0] - 10]
ratio_short = min(quality[k][SHORT][0] for k in KINDS[1:]) / max(none_short, 1e-9)
ratio_long = min(quality[k][LONG][0] for k in KINDS[1:]) / max(none_long, 1e-9)
ch.markdown("paper-shape", (
    ("In our figure every attention model is above the model without attention in every "
     "length bin" if ahead_everywhere else
     "In our figure the attention models are not above the model without attention in every bin")
    + (f", and relative to it the gap grows with length (the weakest attention model scores "
       f"{ratio_short:.0f} times its BLEU on the shortest sources and {ratio_long:.0f} times on "
       f"the longest)" if ahead_everywhere and ratio_long > ratio_short else "")
    + ". "
    + (("Unlike RNNsearch-50, though, "
        + ("every one of our attention models loses" if len(attention_falls) == len(KINDS) - 1
           else f"{len(attention_falls)} of our {len(KINDS) - 1} attention models lose")
        + " more than 10 BLEU points from the shortest to the longest bin: our models were trained on sources of at most "
        f"{TRAIN_MAX_LEN} words and tested on up to {TEST_BINS[-1][1]}, so the closer analogue "
        "is RNNsearch-30, trained on sentences of at most 30 words, which Bahdanau et al. call "
        "only more robust to length than the models without attention, keeping \"no "
        "deterioration\" for RNNsearch-50.")
       if attention_falls else
       "Like RNNsearch-50, our attention models lose little BLEU on the longest sources.")))


def draw_quality(theme):
    c = colors(theme)
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.4), sharex=True)
    centres = [(lo + hi) / 2 for lo, hi in TEST_BINS]
    styles = {"none": (c["fg"], "--", "s")}
    for i, kind in enumerate(KINDS):
        color, line, marker = styles.get(kind, (c["palette"][i % len(c["palette"])], "-", "o"))
        for ax, k, scale in ((axes[0], 0, 1), (axes[1], 1, 100)):
            ax.plot(centres, [quality[kind][b][k] * scale for b in TEST_BINS], line, marker=marker,
                    color=color, label=LABELS[kind], markersize=4)
    length_panels(axes, TEST_BINS, TRAIN_MAX_LEN, theme=theme)
    axes[0].text(TRAIN_MAX_LEN + 1, 95, "longer than\nany training\nsentence", fontsize=8,
                 va="top", color=c["muted"])
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=3, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


ch.figure("quality-by-length", draw_quality)

# %% [markdown]
# ## 4. Alignment error rate of every score
#
# Teacher forcing on the reference translation (as Luong et al. do with "forced"
# decoding), then each target word is linked to its highest-weight source word and the
# links are scored with AER (sure links only: 1 - F1).

# %%
all_test = [p for pairs in test_pairs.values() for p in pairs]


@torch.no_grad()
def attention_on_reference(model, pairs):
    b = task.batch(pairs)
    _, weights = model(b.src.to(ch.device), b.src_lengths.to(ch.device), b.tgt_in.to(ch.device))
    return weights.cpu()


aer, aer_by_bin = {}, {}
for kind in KINDS[1:]:
    predicted, true = [], []
    for bin_, pairs in test_pairs.items():
        weights = attention_on_reference(models[kind], pairs)
        links = [links_from_attention(w, src_len=len(p.source), tgt_len=len(p.target))
                 for w, p in zip(weights, pairs)]
        aer_by_bin[kind, bin_] = corpus_alignment_error_rate(links, [p.alignment for p in pairs])
        predicted += links
        true += [p.alignment for p in pairs]
    aer[kind] = corpus_alignment_error_rate(predicted, true)

# A baseline that needs no model: link target word j to source word round(j * S / T).
diagonal = [[(min(len(p.source) - 1, round(j * len(p.source) / len(p.target))), j)
             for j in range(len(p.target))] for p in all_test]
aer_diagonal = corpus_alignment_error_rate(diagonal, [p.alignment for p in all_test])

ch.table("aer", ["model", "AER (all)"] + [f"AER {bin_name(b)}" for b in TEST_BINS]
         + ["BLEU (all)", "parameters", "training steps"],
         [[LABELS[k], f"{aer[k]:.2f}"] + [f"{aer_by_bin[k, b]:.2f}" for b in TEST_BINS]
          + [f"{bleu_all[k]:.1f}",
             f"{sum(p.numel() for p in models[k].parameters()):,}", STEPS] for k in KINDS[1:]]
         + [["diagonal guess (no model)", f"{aer_diagonal:.2f}"] + ["–"] * len(TEST_BINS)
            + ["–", "–", "–"]])
best_aer = min(aer, key=aer.get)
ch.markdown("aer-summary", (
    f"The lowest alignment error rate is {LABELS[best_aer]}'s, {aer[best_aer]:.2f}; the highest is "
    f"{LABELS[max(aer, key=aer.get)]}'s, {max(aer.values()):.2f}. A guess that ignores the words "
    f"and follows the diagonal scores {aer_diagonal:.2f}, so every score "
    + ("learned" if max(aer.values()) < aer_diagonal else "except the worst learned")
    + " an alignment that the word order alone does not give."))

# %% [markdown]
# ## 5. Alignment heatmaps next to the truth

# %%
shown = task.sample(1, 11, min_len=12, max_len=13)[0]
shown_weights = {k: attention_on_reference(models[k], [shown])[0, :len(shown.target)]
                 for k in KINDS[1:]}
truth = torch.zeros(len(shown.target), len(shown.source))
for i, j in shown.alignment:
    truth[j, i] = 1.0


def draw_alignments(theme):
    fig, axes = plt.subplots(2, 3, figsize=(6.8, 6.4), sharex=True, sharey=True)
    panels = [("true alignment", truth)] + [(LABELS[k], shown_weights[k]) for k in KINDS[1:]]
    for ax, (title, w) in zip(axes.flat, panels):
        heatmap(ax, w, shown.source, shown.target, theme=theme, xlabel="", ylabel="")
        ax.set_title(title, fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel("target")
    for ax in axes[-1]:
        ax.set_xlabel("source")
    fig.tight_layout()
    return fig


ch.figure("alignments", draw_alignments, fmt="png")

# %% [markdown]
# ## 6. Learning curves

# %%
def draw_curves(theme):
    c = colors(theme)
    fig, ax = plt.subplots(figsize=(6.0, 2.8))
    window = ch.pick(20, 5)
    for i, kind in enumerate(KINDS):
        loss = np.convolve(histories[kind].loss, np.ones(window) / window, mode="valid")
        style = {"color": c["fg"], "linestyle": "--"} if kind == "none" else \
                {"color": c["palette"][i % len(c["palette"])]}
        ax.plot(np.arange(len(loss)) + window, loss, label=LABELS[kind], lw=1.2, **style)
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (nats/word)")
    ax.set_yscale("log")
    ax.set_yticks([0.2, 0.5, 1, 2, 4], ["0.2", "0.5", "1", "2", "4"])
    ax.yaxis.set_minor_formatter(plt.NullFormatter())
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    fig.tight_layout()
    return fig


ch.figure("learning-curves", draw_curves)
ch.table("training-time", ["model", "steps", "seconds", "ms per step", "final loss"],
         [[LABELS[k], len(histories[k].loss), f"{histories[k].seconds:.1f}",
           f"{1000 * histories[k].seconds / len(histories[k].loss):.0f}",
           f"{np.mean(histories[k].loss[-20:]):.3f}"] for k in KINDS])

# %% [markdown]
# ## 7. Precomputing U_a h_j changes nothing but the cost
#
# The additive score splits into a part that depends on the decoder step and a part that
# does not; the second can be computed once per sentence.

# %%
gen = torch.Generator().manual_seed(0)
src_len, tgt_len, key_dim, query_dim, attn_dim = 30, 30, 64, 64, 64
keys = torch.randn(8, src_len, key_dim, generator=gen, dtype=torch.float64)
queries = torch.randn(8, tgt_len, query_dim, generator=gen, dtype=torch.float64)
W_q, W_k = (torch.randn(attn_dim, d, generator=gen, dtype=torch.float64) / d**0.5
            for d in (query_dim, key_dim))
v = torch.randn(attn_dim, generator=gen, dtype=torch.float64) / attn_dim**0.5
recomputed = torch.stack([additive_attention(queries[:, t], keys, W_q, W_k, v)
                          for t in range(tgt_len)], 1)
projected = project_keys(keys, W_k)
precomputed = torch.stack([additive_attention(queries[:, t], keys, W_q, W_k, v,
                                              projected_keys=projected)
                           for t in range(tgt_len)], 1)
difference = (recomputed - precomputed).abs().max().item()
ch.markdown("precompute", (
    f"In the chapter's script, for {tgt_len} decoder steps over a {src_len}-word source (float64), "
    "the contexts computed with the $h_j U_a$ projected once "
    + ("are identical to those recomputed at every step, bit for bit: the same operations on the "
       "same numbers." if difference == 0 else
       f"differ from those recomputed at every step by at most {difference:.1e} (rounding).")
    + f" The projection is a ({src_len} × {key_dim}) by ({key_dim} × {attn_dim}) product per "
    f"sentence that the recomputing version pays {tgt_len} times instead of once."))

# %% [markdown]
# ## 8. The papers' numbers beside ours

# %%
ch.table("paper-bahdanau", ["model", "task", "BLEU, all test sentences", "BLEU, no unknown words"], [
    ["RNNencdec-30 (no attention)", "WMT'14 En→Fr (Bahdanau et al., Table 1)", "13.93", "24.19"],
    ["RNNsearch-30 (additive attention)", "WMT'14 En→Fr (Bahdanau et al., Table 1)", "21.50", "31.44"],
    ["RNNencdec-50 (no attention)", "WMT'14 En→Fr (Bahdanau et al., Table 1)", "17.82", "26.71"],
    ["RNNsearch-50 (additive attention)", "WMT'14 En→Fr (Bahdanau et al., Table 1)", "26.75", "34.16"],
    ["no attention (ours)", f"toy task, all {NUM_TEST} test sentences",
     f"{bleu_all['none']:.1f}", "–"],
    ["Bahdanau (ours)", f"toy task, all {NUM_TEST} test sentences",
     f"{bleu_all['bahdanau']:.1f}", "–"],
], align="llrr")
ch.table("paper-luong", ["attention", "Luong et al., Table 4: BLEU (before unk replacement)",
                         f"ours: BLEU, all {NUM_TEST} test sentences", "ours: AER"], [
    ["global, dot", "18.6", f"{bleu_all['dot']:.1f}", f"{aer['dot']:.2f}"],
    ["global, general", "17.3", f"{bleu_all['general']:.1f}", f"{aer['general']:.2f}"],
    ["global, concat", "– (not reported: footnote 15 gives only perplexities)",
     f"{bleu_all['concat']:.1f}", f"{aer['concat']:.2f}"],
    ["local-p, general", "19", f"{bleu_all['local-p']:.1f}", f"{aer['local-p']:.2f}"],
], align="llrr")
ch.paper("bahdanau2015", "additive attention beats the plain encoder-decoder (test BLEU)",
         theirs="26.75 vs 17.82 BLEU, WMT'14 En-Fr (Table 1, RNNsearch-50 vs RNNencdec-50)",
         ours=f"{bleu_all['bahdanau']:.1f} vs {bleu_all['none']:.1f} BLEU on the toy task",
         section="the-paper-reproduced")
ch.paper("luong2015", "global dot-product attention vs the general score (BLEU)",
         theirs="18.6 (dot) vs 17.3 (general) BLEU, WMT'14 En-De (Table 4)",
         ours=f"{bleu_all['dot']:.1f} vs {bleu_all['general']:.1f} BLEU on the toy task",
         section="the-paper-reproduced")
ch.paper("luong2015", "local-p attention with the general score",
         theirs="19 BLEU, WMT'14 En-De (Table 4)",
         ours=f"{bleu_all['local-p']:.1f} BLEU, AER {aer['local-p']:.2f} on the toy task",
         section="the-paper-reproduced")
# %% [markdown]
# ## 9. Exercises
#
# The code of exercises 1, 3 and 5 (the page includes it from here), and exercise 6:
# local-p with a narrower window, trained with the same recipe as the chapter's models.

# %%
# --8<-- [start:exercise-1]
from attnbook.attention.luong import dot_scores, general_scores

gen = torch.Generator().manual_seed(1)
q = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
k = torch.randn(2, 4, 5, generator=gen, dtype=torch.float64)
identity_gap = (general_scores(q, k, torch.eye(5, dtype=torch.float64)) - dot_scores(q, k)).abs().max()
ch.markdown("exercise-1", f"Largest difference between general with $W_a = I$ and dot: "
            f"`{identity_gap.item()}`.")
# --8<-- [end:exercise-1]

# %%
# --8<-- [start:exercise-3]
from attnbook.data.translation import alignment_error_rate

# Links are (source position, target position); target word 2 is linked to the wrong word.
one_wrong = alignment_error_rate([(0, 0), (1, 1), (0, 2)], [(0, 0), (1, 1), (1, 2)])
ch.markdown("exercise-3", f"AER with one wrong link out of three: `{one_wrong:.4f}`.")
# --8<-- [end:exercise-3]

# %%
# --8<-- [start:exercise-5]
from attnbook.attention.additive import additive_scores
from attnbook.attention.luong import concat_scores

gen = torch.Generator().manual_seed(5)
q = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)    # d_q = 5
k = torch.randn(2, 4, 6, generator=gen, dtype=torch.float64)    # d_k = 6
W = torch.randn(7, 11, generator=gen, dtype=torch.float64)      # (d_a, d_q + d_k)
v = torch.randn(7, generator=gen, dtype=torch.float64)
concat_gap = (concat_scores(q, k, W, v) - additive_scores(q, k, W[:, :5], W[:, 5:], v)).abs().max()
ch.markdown("exercise-5", "Largest difference between concat and additive with the column blocks: "
            f"`{concat_gap.item()}`.")
# --8<-- [end:exercise-5]

# %%
# Exercise 6: the same local-p model and recipe with D = NARROW_WINDOW instead of HALF_WINDOW
# (started in section 2).
narrow_model, narrow_history = wait_for_narrow()
narrow_quality, narrow_bleu_all = evaluate(narrow_model)


def window_shares(D):
    """Shares of training sources (positions 0 .. L-1) that the window [p_t - D, p_t + D]
    holds whole: for every centre p_t in (0, L) when L <= D, and for a centre at the
    middle, p_t = (L - 1) / 2, when L <= 2D + 1."""
    return np.mean(train_lengths <= D), np.mean(train_lengths <= 2 * D + 1)


wide_any, wide_middle = window_shares(HALF_WINDOW)
narrow_any, narrow_middle = window_shares(NARROW_WINDOW)
final_loss = {HALF_WINDOW: np.mean(histories["local-p"].loss[-20:]),
              NARROW_WINDOW: np.mean(narrow_history.loss[-20:])}
narrow_rows = [
    (f"local-p, D = {NARROW_WINDOW}", final_loss[NARROW_WINDOW], narrow_quality, narrow_bleu_all),
    (f"local-p, D = {HALF_WINDOW} (above)", final_loss[HALF_WINDOW], quality["local-p"],
     bleu_all["local-p"]),
    ("no attention (above)", np.mean(histories["none"].loss[-20:]), quality["none"], bleu_all["none"]),
]
ch.table("exercise-6", ["model", "final loss"] + [f"BLEU {bin_name(b)}" for b in TEST_BINS]
         + [f"BLEU, all {NUM_TEST}"],
         [[name, f"{loss:.3f}"] + [f"{by_bin[b][0]:.1f}" for b in TEST_BINS] + [f"{bleu:.1f}"]
          for name, loss, by_bin, bleu in narrow_rows])
narrow_vs_none = min(narrow_quality[b][0] - quality["none"][b][0] for b in TEST_BINS)
narrow_cost = bleu_all["local-p"] - narrow_bleu_all
ch.markdown("exercise-6-summary", (
    f"After the same {STEPS} steps, local-p with $D = {NARROW_WINDOW}$ ends at a training loss of "
    f"{final_loss[NARROW_WINDOW]:.3f}, against {final_loss[HALF_WINDOW]:.3f} with $D = {HALF_WINDOW}$, "
    f"and scores {narrow_bleu_all:.1f} BLEU on all test sentences, against {bleu_all['local-p']:.1f}"
    + (f": the narrow window costs {narrow_cost:.1f} points." if narrow_cost > 0 else
       ": the narrow window costs nothing here.")
    + (f" It is still far ahead of the model without attention, by at least "
       f"{math.floor(narrow_vs_none)} BLEU points in every length bin." if narrow_vs_none >= 1 else
       " It is not ahead of the model without attention in every length bin.")
    + f" Of the training sources, {wide_any:.0%} have at most {HALF_WINDOW} words and fit whole in a "
    f"$D = {HALF_WINDOW}$ window wherever its centre is, and {wide_middle:.0%} have at most "
    f"{2 * HALF_WINDOW + 1} and fit whole when the centre is near their middle; for $D = {NARROW_WINDOW}$ "
    f"the two shares are {narrow_any:.0%} and {narrow_middle:.0%}."))

ch.json("summary", {
    "sizes": {"pairs": len(train_pairs), "steps": STEPS, "per_bin": PER_BIN},   # read by chapter 21
    "quality": {k: {bin_name(b): list(quality[k][b]) for b in TEST_BINS} for k in KINDS},
    "bleu_all": bleu_all, "aer": aer, "aer_diagonal": aer_diagonal,
    "seconds": {k: histories[k].seconds for k in KINDS},
    "exercise_6": {"half_window": NARROW_WINDOW, "final_loss": final_loss[NARROW_WINDOW],
                   "bleu_all": narrow_bleu_all, "seconds": narrow_history.seconds,
                   "quality": {bin_name(b): list(narrow_quality[b]) for b in TEST_BINS}},
})
print("wrote", ", ".join(sorted(ch.written)))

