# %% [markdown]
# # Machine translation end to end
#
# The experiments of the chapter: chapter 7's encoder-decoder Transformer, trained on
# chapter 3's toy translation task, decoded greedily and with beam search (length
# normalisation of Wu et al., 2016); BLEU (sacrebleu) and exact match by source length
# beside chapter 3's recurrent models on the same test split; a sweep of the beam width
# (quality and time); and every cross-attention head's alignment scored against the
# task's true word alignment (alignment error rate), with how sharply each head attends.
#
# Run it with `python code/chapters/machine-translation.py --device {auto,cpu,cuda} [--quick]`
# after chapter 7 (`code/chapters/transformer.py`), which trains and saves the model.

# %%
from attnbook.chapter import Chapter

ch = Chapter("machine-translation")

# %%
import json
import time

import matplotlib.pyplot as plt
import numpy as np
import sacrebleu
import torch

from attnbook.data.translation import (TEST_BINS, TRAIN_MAX_LEN, benchmark_data, benchmark_task,
                                       bucketed_batches, corpus_alignment_error_rate, links_from_attention)
from attnbook.decoding import beam_search, encoder_decoder_step, length_penalty
from attnbook.models.transformer import EncoderDecoder, greedy_decode
from attnbook.train import TrainConfig, train
from attnbook.viz import attention_cmap, colors, heatmap, length_panels

# Tiny model: per-operation overhead dominates, and one thread is as fast as two.
ch.one_thread_on_cpu()

# %% [markdown]
# ## 1. Chapter 7's model, chapter 3's test split
#
# At the full (CPU) size the chapter loads the model chapter 7 trained and saved. At the large
# size (the default with --device cuda) it trains a larger one itself, with chapter 7's recipe,
# on more of chapter 3's training pairs, and tests it on more sentences per length bin.

# %%
# The sizes of chapters 3 and 7's own runs (neither has a large size), as they recorded them:
# the training pairs, steps and test sentences per bin. The comparisons below assume that the two
# chapters share them; if one of them changes, this chapter stops rather than print a false setup.
THEIRS = torch.load(ch.needs("transformer", "model.pt"), map_location="cpu")["sizes"]
# The large size: the Transformer this chapter trains, on a superset of those pairs (benchmark_data
# draws the first n of a seeded stream), tested on the same sentences; a per_bin above 80 tests on
# a superset of them. On the CPU its beam search costs about 5 times the full size's per sentence
# and beam slot (no key-value cache), which is what keeps the test set and the beam widths there.
LARGE = {"d_model": 128, "num_heads": 8, "num_layers": 3, "d_ff": 512,
         "pairs": 32_000, "steps": 1000, "lr": 3e-3, "warmup": 100, "per_bin": 80}
task = benchmark_task()
PAD, BOS, EOS = task.source_vocab.pad_id, task.target_vocab.bos_id, task.target_vocab.eos_id


# --8<-- [start:load]
def chapter7_model():
    """Chapter 7's trained Transformer, as chapter 7 saved it: (model, checkpoint)."""
    checkpoint = torch.load(ch.needs("transformer", "model.pt"), map_location="cpu")
    model = EncoderDecoder(**checkpoint["config"]).to(ch.device).eval()
    model.load_state_dict(checkpoint["state"])
    return model, checkpoint
# --8<-- [end:load]


# --8<-- [start:train-large]
class Translator(EncoderDecoder):
    """``EncoderDecoder`` that computes the key-padding mask from the source (True = real
    word) when none is given, so that ``train`` can call it as model(src, tgt_in)."""

    def forward(self, src, tgt_in, *, src_key_padding_mask=None):
        mask = src != PAD if src_key_padding_mask is None else src_key_padding_mask
        return super().forward(src, tgt_in, src_key_padding_mask=mask)


def larger_model():
    """The large size's Transformer: chapter 7's recipe (pre-LN, AdamW, warm-up + cosine,
    label smoothing 0.1, gradient clipping, no dropout), larger and on more pairs."""
    train_pairs, _ = benchmark_data(task, LARGE["pairs"], 1)   # chapter 7's 16,000 come first
    batches = bucketed_batches(task, train_pairs, 64)          # chapter 7's batch size

    def make_batch(generator):
        b = batches[int(torch.randint(len(batches), (1,), generator=generator))]
        return (b.src, b.tgt_in), b.tgt_out

    config = {"src_vocab": len(task.source_vocab), "tgt_vocab": len(task.target_vocab),
              "dropout": 0.0, "norm_first": True, "tie_output": False,
              **{key: LARGE[key] for key in ("d_model", "num_heads", "num_layers", "d_ff")}}
    ch.seed(0)
    model = Translator(**config)
    history = train(model, make_batch, TrainConfig(
        steps=LARGE["steps"], lr=LARGE["lr"], warmup_steps=LARGE["warmup"], weight_decay=0.01,
        betas=(0.9, 0.98), label_smoothing=0.1, clip_norm=1.0, amp=ch.device.type == "cuda",
        progress=None, seed=0), device=ch.device)
    print(f"trained {LARGE['steps']} steps in {history.seconds:.0f} s, final loss "
          f"{np.mean(history.loss[-20:]):.3f}")
    return model.eval(), {"config": config}
# --8<-- [end:train-large]


model, checkpoint = larger_model() if ch.large else chapter7_model()
PER_BIN = ch.pick(THEIRS["per_bin"], 4, large=LARGE["per_bin"])
_, test_pairs = benchmark_data(task, 1, PER_BIN)       # the test bins have their own seeds
NUM_TEST = sum(len(p) for p in test_pairs.values())
config = checkpoint["config"]
LAYERS, HEADS = config["num_layers"], config["num_heads"]
PARAMETERS = sum(p.numel() for p in model.parameters())
print(f"model: {PARAMETERS:,} parameters, {LAYERS} + {LAYERS} layers, "
      f"{HEADS} heads" + (" (saved by a --quick run of chapter 7)" if checkpoint.get("quick") else ""))

BEAM, ALPHA = 4, 0.6                  # Vaswani et al. §6.1: beam size 4, length penalty α = 0.6
SWEEPS = {"full": ([1, 2, 4, 8], [0.0, ALPHA, 1.0, 1.5]),            # beam widths, Wu's α at width 4
          "quick": ([1, 2], [0.0, ALPHA]),
          "large": ([1, 2, 4, 8], [0.0, ALPHA, 1.0, 2.0])}
WIDTHS, ALPHAS = ch.pick(SWEEPS["full"], SWEEPS["quick"], large=SWEEPS["large"])


def all_pairs(by_bin):
    return [p for pairs in by_bin.values() for p in pairs]


def bin_name(bin_):
    return f"{bin_[0]}–{bin_[1]}"


def cap(b):
    """Chapters 3 and 7's length cap: twice (the longest reference of the batch + 1) plus 10
    tokens. It uses the references' lengths, which a real decoder does not know."""
    return ch.pick(2 * b.tgt_in.shape[1] + 10, b.tgt_in.shape[1])


# %% [markdown]
# ## 2. Greedy and beam search, by source length

# %%
# --8<-- [start:decode]
def translate(pairs, beam_width=None, alpha=ALPHA, max_len=None, stop_early=True):
    """Token ids (batch, 1 + steps) for one bin: greedy_decode when beam_width is None."""
    b = task.batch(pairs)
    src = b.src.to(ch.device)
    mask = src != PAD                                      # True = real source word
    max_len = cap(b) if max_len is None else max_len
    if beam_width is None:
        return greedy_decode(model, src, max_len, bos_id=BOS, eos_id=EOS, pad_id=PAD,
                             src_key_padding_mask=mask).cpu()
    step = encoder_decoder_step(model, src, mask)
    return beam_search(step, len(pairs), beam_width=beam_width, max_len=max_len, bos_id=BOS,
                       eos_id=EOS, pad_id=PAD, alpha=alpha, kind="wu", device=ch.device,
                       stop_early=stop_early).cpu()
# --8<-- [end:decode]


def generated(row):
    """The generated ids of one output row: up to and including the first <eos>; a row
    without <eos> was cut by the cap and is all generated tokens."""
    tokens = row[1:].tolist()
    return tokens[:tokens.index(EOS) + 1] if EOS in tokens else tokens


# On the CPU, decoding is timed in CPU seconds of this process (one thread), which other
# programs sharing the machine do not inflate; on a GPU, in wall-clock seconds.
clock = time.perf_counter if ch.device.type == "cuda" else time.process_time
CLOCK = "seconds" if ch.device.type == "cuda" else "CPU seconds"


def evaluate(beam_width=None, alpha=ALPHA):
    """bin -> (BLEU, exact match, cut by the cap); BLEU over all (and sacreBLEU's whole result,
    with its brevity penalty and n-gram precisions); seconds; outputs."""
    by_bin, hyps, refs, seconds, outputs, bin_hyps = {}, [], [], 0.0, {}, {}
    for bin_, pairs in test_pairs.items():
        start = clock()
        tokens = translate(pairs, beam_width, alpha)
        if ch.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += clock() - start
        hypotheses = [" ".join(task.target_vocab.decode(row[1:])) for row in tokens]
        references = [" ".join(p.target) for p in pairs]
        ran_on = int((~(tokens == EOS).any(dim=1)).sum())
        by_bin[bin_] = (sacrebleu.corpus_bleu(hypotheses, [references]).score,
                        float(np.mean([h == r for h, r in zip(hypotheses, references)])), ran_on)
        hyps += hypotheses
        refs += references
        outputs[bin_] = tokens
        bin_hyps[bin_] = hypotheses
    corpus = sacrebleu.corpus_bleu(hyps, [refs])
    return {"bins": by_bin, "bleu": corpus.score, "sacrebleu": corpus, "seconds": seconds,
            "outputs": outputs, "hyps": hyps, "bin_hyps": bin_hyps,
            "length": np.mean([len(h.split()) for h in hyps])}


greedy = evaluate(None)
sweep = {k: evaluate(k) for k in WIDTHS}               # Wu et al.'s penalty, α = 0.6
beam = sweep[BEAM] if BEAM in sweep else evaluate(BEAM)
by_alpha = {a: beam if a == ALPHA else evaluate(BEAM, alpha=a) for a in ALPHAS}
beam_raw = by_alpha[0.0]                                 # the same beam, no length normalisation
reference_length = np.mean([len(p.target) for p in all_pairs(test_pairs)])
# beam width 1 is greedy decoding: the two must agree token for token
greedy_again = all(torch.equal(sweep[1]["outputs"][b], greedy["outputs"][b]) for b in TEST_BINS)
print(f"greedy {greedy['bleu']:.1f} BLEU in {greedy['seconds']:.1f} s; beam {BEAM}: {beam['bleu']:.1f}; "
      f"beam {BEAM} without normalisation: {beam_raw['bleu']:.1f}; width 1 == greedy: {greedy_again}")

# %% [markdown]
# ## 3. Chapter 3's recurrent models on the same split

# %%
# Chapter 3's numbers, read from its summary rather than retrained: the same task, the same
# test split (benchmark_data), the same cap, greedy decoding. At the large size they are still
# those of chapter 3's own run (THEIRS): fewer training pairs and steps than this chapter's
# Transformer, and only the first THEIRS["per_bin"] test sentences of each bin, which are
# the ones the head-to-head comparisons below use.
try:
    with open(ch.needs("bahdanau-luong", "summary.json"), encoding="utf-8") as f:
        chapter3 = json.load(f)
except FileNotFoundError:
    chapter3 = None
if chapter3 is not None and chapter3["sizes"] != THEIRS:
    raise RuntimeError(f"chapter 3 trained and tested with {chapter3['sizes']} and chapter 7 with {THEIRS}: "
                       "this chapter's comparison with chapter 3's models assumes the same pairs, steps and "
                       "test sentences")
CHAPTER3, CHAPTER7 = "[Chapter 3](../foundations/bahdanau-luong.md)", "[Chapter 7](../position/transformer.md)"
LIKE_FOR_LIKE = not ch.large        # chapter 7's model: chapter 3's pairs, steps and test sentences
SHARED = min(PER_BIN, THEIRS["per_bin"])   # the first SHARED sentences of each bin are chapter 3's
EXTRA_TEST = PER_BIN > SHARED              # more test sentences than chapter 3's (a larger per_bin)
THEIR_TEST = len(TEST_BINS) * THEIRS["per_bin"]
RNN_LABELS = {"dot": "GRU + Luong dot (ch. 3)", "bahdanau": "GRU + Bahdanau (ch. 3)"}
if EXTRA_TEST:
    RNN_LABELS = {kind: label[:-1] + f", its {THEIR_TEST})" for kind, label in RNN_LABELS.items()}
SCORE_NAMES = {"dot": "Luong's dot score", "general": "Luong's general score", "concat": "Luong's concat score",
               "local-p": "Luong's local-p attention", "bahdanau": "Bahdanau's additive score"}


def upto(values):
    return f"{values[0]:g} to {values[-1]:g}"


chapter3_link, chapter7_link = CHAPTER3.replace("C", "c", 1), CHAPTER7.replace("C", "c", 1)
shape = (f"{LAYERS} + {LAYERS} layers, {HEADS} heads, $d_{{\\text{{model}}}} = {config['d_model']}$ "
         f"({PARAMETERS:,} parameters)")
if LIKE_FOR_LIKE:
    setup = (f"The model is {chapter7_link}'s pre-LN Transformer, with its training run unchanged: {shape}, "
             f"trained for {THEIRS['steps']} steps on {THEIRS['pairs']:,} sentence pairs, the same pairs and "
             f"the same number of steps as {chapter3_link}'s recurrent models. The test set is theirs too: the "
             f"same {PER_BIN} sentences in each of four bins of source length ({NUM_TEST} in all). The recurrent "
             f"models are not retrained: their rows are read from {chapter3_link}'s generated results, decoded "
             "greedily with the same cap, so the comparison is like for like.")
else:
    setup = (f"The model is trained here with {chapter7_link}'s recipe, and is larger than {chapter7_link}'s: "
             f"{shape}, trained for {LARGE['steps']:,} steps on {LARGE['pairs']:,} sentence pairs, among them "
             f"the {THEIRS['pairs']:,} that chapters 3 and 7 train on. "
             + (f"The test set holds {PER_BIN} sentences in each of four bins of source length ({NUM_TEST} in "
                f"all); the first {SHARED} of each bin are {chapter3_link}'s test set. " if EXTRA_TEST else
                f"The test set is {chapter3_link}'s: the same {PER_BIN} sentences in each of four bins of source "
                f"length ({NUM_TEST} in all). ")
             + f"The recurrent models are not retrained: their rows are read from {chapter3_link}'s own run, "
             f"which trained them on {THEIRS['pairs']:,} pairs for {THEIRS['steps']} steps and tested them, "
             f"decoded greedily with the same cap, on {'its' if EXTRA_TEST else 'the same'} {THEIR_TEST} "
             "sentences. So the comparison is not like for like: this Transformer has had more data, more "
             "steps and more parameters"
             + (f"; the paragraph below the figure compares the two on {chapter3_link}'s sentences only."
                if EXTRA_TEST else "."))


def sizes(per_bin, widths, alphas):
    return (("the same test sentences" if per_bin == THEIRS["per_bin"] else f"{per_bin} test sentences per bin")
            + f", beam widths {upto(widths)} and α {upto(alphas)}")


where = "on a GPU" if ch.device.type == "cuda" else "on the CPU"
if ch.large:
    setup += (f" This page was built at the large size, {where}. At the full size, the default on a CPU, the "
              f"chapter decodes {chapter7_link}'s saved model, with " + sizes(THEIRS["per_bin"], *SWEEPS["full"])
              + ".")
else:
    setup += (f" This page was built at the {ch.size} size, {where}. With `--device cuda` the chapter runs at "
              f"its large size: it trains a {LARGE['num_layers']} + {LARGE['num_layers']}-layer, "
              f"{LARGE['num_heads']}-head Transformer with $d_{{\\text{{model}}}} = {LARGE['d_model']}$ for "
              f"{LARGE['steps']:,} steps on {LARGE['pairs']:,} pairs, with " + sizes(LARGE["per_bin"], *SWEEPS["large"])
              + f"; {chapter3_link}'s models keep their own size, so that comparison is then not like for like.")
ch.markdown("setup", setup)

rows = {"greedy": ("Transformer, greedy", greedy),
        "beam": (f"Transformer, beam {BEAM}, Wu α = {ALPHA}", beam),
        "beam-raw": (f"Transformer, beam {BEAM}, no normalisation", beam_raw)}
table = [[label] + [f"{r['bins'][b][0]:.1f}" for b in TEST_BINS] + [f"{r['bins'][b][1]:.0%}" for b in TEST_BINS]
         + [f"{r['bleu']:.1f}"] for label, r in rows.values()]
if chapter3 is not None:
    for kind, label in RNN_LABELS.items():
        q = chapter3["quality"][kind]
        table.append([label] + [f"{q[bin_name(b)][0]:.1f}" for b in TEST_BINS]
                     + [f"{q[bin_name(b)][1]:.0%}" for b in TEST_BINS] + [f"{chapter3['bleu_all'][kind]:.1f}"])
ch.table("quality-by-length", ["decoder"] + [f"BLEU {bin_name(b)}" for b in TEST_BINS]
         + [f"exact {bin_name(b)}" for b in TEST_BINS] + [f"BLEU, all {NUM_TEST}"], table)

LONG = TEST_BINS[-1]
MARGIN = 1.0    # BLEU: a smaller difference on 80 or more sentences per bin is not called a gain


def compare(a, b):
    gap = a - b
    return ("within 1 BLEU of" if abs(gap) < MARGIN else
            f"{gap:.1f} BLEU above" if gap > 0 else f"{-gap:.1f} BLEU below")


bins_gained = [bin_name(b) for b in TEST_BINS if beam["bins"][b][0] > greedy["bins"][b][0] + MARGIN]
bins_lost = [bin_name(b) for b in TEST_BINS if beam["bins"][b][0] < greedy["bins"][b][0] - MARGIN]
sentences = [
    f"Over all {NUM_TEST} test sentences, beam search of width {BEAM} with Wu et al.'s length "
    f"penalty (α = {ALPHA}) scores {beam['bleu']:.1f} BLEU, {compare(beam['bleu'], greedy['bleu'])} "
    f"greedy decoding's {greedy['bleu']:.1f}"
    + "".join(f"; it {verb} more than {MARGIN:.0f} BLEU on sources of {' and '.join(bins)} words"
              for verb, bins in (("gains", bins_gained), ("loses", bins_lost)) if bins)
    + ("" if bins_gained or bins_lost else f", and within {MARGIN:.0f} BLEU of it in every length bin")
    + ".",
    f"Without length normalisation the same beam scores {beam_raw['bleu']:.1f} and its translations "
    f"average {beam_raw['length']:.1f} words, against {beam['length']:.1f} with it, "
    f"{greedy['length']:.1f} for greedy decoding and {reference_length:.1f} for the references.",
    ("Beam width 1 reproduced greedy decoding token for token on every test sentence."
     if greedy_again else "Beam width 1 did NOT reproduce greedy decoding on every sentence: see the tests."),
]


def bleu_on_shared(run, bins=TEST_BINS):
    """Corpus BLEU of a run on the test sentences chapter 3 also translated."""
    hyps = [h for b in bins for h in run["bin_hyps"][b][:SHARED]]
    refs = [" ".join(p.target) for b in bins for p in test_pairs[b][:SHARED]]
    return sacrebleu.corpus_bleu(hyps, [refs]).score


if chapter3 is not None:
    # the best of chapter 3's attention models, picked from its numbers ("none" has no attention)
    best_rnn = max((k for k in chapter3["bleu_all"] if k != "none"), key=chapter3["bleu_all"].get)
    rnn_bleu, rnn_long = chapter3["bleu_all"][best_rnn], chapter3["quality"][best_rnn][bin_name(LONG)][0]
    if not EXTRA_TEST:
        sentences.append(
            f"{CHAPTER3}'s best recurrent model (GRU with {SCORE_NAMES.get(best_rnn, best_rnn)}) scored "
            f"{rnn_bleu:.1f}: the Transformer with beam search is {compare(beam['bleu'], rnn_bleu)} it overall, "
            f"and on sources of {bin_name(LONG)} words, longer than any training sentence, it scores "
            f"{beam['bins'][LONG][0]:.1f} against the GRU's {rnn_long:.1f}.")
    else:
        shared_bleu, shared_long = bleu_on_shared(beam), bleu_on_shared(beam, [LONG])
        sentences.append(
            f"{CHAPTER3}'s best recurrent model (GRU with {SCORE_NAMES.get(best_rnn, best_rnn)}) scored "
            f"{rnn_bleu:.1f} on its {THEIR_TEST} test sentences, the first {SHARED} of each bin here. On "
            f"those sentences the Transformer with beam search scores {shared_bleu:.1f}, "
            f"{compare(shared_bleu, rnn_bleu)} it, and on sources of {bin_name(LONG)} words, longer than any "
            f"training sentence, {shared_long:.1f} against the GRU's {rnn_long:.1f}.")
    if not LIKE_FOR_LIKE:
        sentences.append(
            f"The comparison is not like for like: the GRU was trained by {chapter3_link} on "
            f"{THEIRS['pairs']:,} pairs for {THEIRS['steps']} steps, this larger Transformer on "
            f"{LARGE['pairs']:,} pairs for {LARGE['steps']:,} steps; at the full size both are trained on the "
            "same pairs for the same number of steps.")
ch.markdown("comparison", " ".join(sentences))


def draw_quality(theme):
    c = colors(theme)
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.3), sharex=True)
    centres = [(lo + hi) / 2 for lo, hi in TEST_BINS]
    lines = [("Transformer, greedy", [greedy["bins"][b][:2] for b in TEST_BINS], c["palette"][0], "-o"),
             (f"Transformer, beam {BEAM}", [beam["bins"][b][:2] for b in TEST_BINS], c["palette"][1], "-s")]
    if chapter3 is not None:
        for (kind, label), color in zip(RNN_LABELS.items(), (c["palette"][2], c["palette"][4])):
            q = chapter3["quality"][kind]
            lines.append((label, [q[bin_name(b)] for b in TEST_BINS], color, "--^"))
    for label, values, color, style in lines:
        axes[0].plot(centres, [v[0] for v in values], style, color=color, lw=1.3, ms=4, label=label)
        axes[1].plot(centres, [100 * v[1] for v in values], style, color=color, lw=1.3, ms=4)
    length_panels(axes, TEST_BINS, TRAIN_MAX_LEN, theme=theme)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.15, 1, 1))
    return fig


ch.figure("quality-by-length", draw_quality)

# %% [markdown]
# ## 4. The beam width: quality against time

# %%
ch.table("beam-sweep", ["beam width", f"BLEU, all {NUM_TEST}", "exact match", "mean length (words)",
                        "translations cut by the cap", f"decoding {CLOCK}", "× width 1's time"],
         [[k, f"{sweep[k]['bleu']:.1f}",
           f"{np.mean([sweep[k]['bins'][b][1] for b in TEST_BINS]):.0%}", f"{sweep[k]['length']:.1f}",
           sum(sweep[k]["bins"][b][2] for b in TEST_BINS), f"{sweep[k]['seconds']:.1f}",
           f"{sweep[k]['seconds'] / sweep[1]['seconds']:.1f}"] for k in WIDTHS])
best_width = max(WIDTHS, key=lambda k: sweep[k]["bleu"])
ch.markdown("beam-sweep-summary", (
    f"The best width here is {best_width} ({sweep[best_width]['bleu']:.1f} BLEU); width "
    f"{WIDTHS[-1]} costs {sweep[WIDTHS[-1]]['seconds'] / sweep[1]['seconds']:.1f} times the time of width 1"
    + (" and scores no better than the best." if WIDTHS[-1] != best_width else ".")
    + f" {CHAPTER7}'s `greedy_decode` took {greedy['seconds']:.1f} s"
    + (" for the same translations as" if greedy_again else ", against") + f" width 1"
    f"'s {sweep[1]['seconds']:.1f} s ({CLOCK}): it keeps every sentence of a batch in the decoder until the last "
    "one ends, while `beam_search` drops sentences as they finish."))


def draw_sweep(theme):
    c = colors(theme)
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 2.9))
    axes[0].plot(WIDTHS, [sweep[k]["bleu"] for k in WIDTHS], "-o", color=c["palette"][1], ms=4)
    axes[0].set_ylabel(f"BLEU, all {NUM_TEST} sentences")
    axes[1].plot(WIDTHS, [sweep[k]["seconds"] for k in WIDTHS], "-o", color=c["palette"][0], ms=4)
    axes[1].set_ylabel(f"decoding time ({CLOCK})")
    axes[1].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(WIDTHS, [str(k) for k in WIDTHS])
        ax.minorticks_off()
        ax.set_xlabel("beam width")
    fig.tight_layout()
    return fig


ch.figure("beam-sweep", draw_sweep, measured=True)

ch.table("alpha-sweep", ["length penalty α (Wu)", f"BLEU, all {NUM_TEST}", f"BLEU {bin_name(LONG)}",
                         "mean length (words)", "translations cut by the cap"],
         [[f"{a:g}" + (" (no normalisation)" if a == 0 else ""), f"{by_alpha[a]['bleu']:.1f}",
           f"{by_alpha[a]['bins'][LONG][0]:.1f}", f"{by_alpha[a]['length']:.1f}",
           sum(by_alpha[a]["bins"][b][2] for b in TEST_BINS)] for a in ALPHAS]
         + [["greedy (width 1)", f"{greedy['bleu']:.1f}", f"{greedy['bins'][LONG][0]:.1f}",
             f"{greedy['length']:.1f}", sum(greedy["bins"][b][2] for b in TEST_BINS)],
            ["references", "–", "–", f"{reference_length:.1f}", "–"]])
best_alpha = max(ALPHAS, key=lambda a: by_alpha[a]["bleu"])
ch.markdown("alpha-sweep-summary", (
    f"At width {BEAM}, the best α of those tried is {best_alpha:g} ({by_alpha[best_alpha]['bleu']:.1f} BLEU)"
    + (f", still below greedy decoding's {greedy['bleu']:.1f}" if by_alpha[best_alpha]["bleu"] < greedy["bleu"] - MARGIN
       else f", {compare(by_alpha[best_alpha]['bleu'], greedy['bleu'])} greedy decoding's {greedy['bleu']:.1f}")
    + ". A larger α lengthens the translations"
    + (" (as it should: it divides long hypotheses' scores by more)"
       if by_alpha[ALPHAS[-1]]["length"] > by_alpha[0.0]["length"] else ", or should; here it did not")
    + "."))

# %% [markdown]
# ## 5. Search errors or model errors?
#
# Every translation is scored by the model itself, by teacher forcing: its normalised score
# s(y) / lp(|y|) (Eq. 21.2). Where beam 4 and greedy decoding disagree, which one does the
# model prefer? Where beam 4's translation is wrong, does the model score it above the
# reference (a model error) or below it (a search error: the search missed a better one)?
# And is beam 4's lower BLEU a matter of n-gram precision or of length (the brevity penalty)?

# %%
# --8<-- [start:score]
@torch.no_grad()
def normalised_scores(pairs, token_lists, alpha=ALPHA):
    """s(y) / lp(|y|) of each sentence's token list (generated ids, <eos> included when there
    is one) under the model, by teacher forcing: one decoder pass for the whole batch."""
    b = task.batch(pairs)
    src = b.src.to(ch.device)
    tgt_in = torch.full((len(pairs), max(map(len, token_lists))), PAD, dtype=torch.long)
    for i, tokens in enumerate(token_lists):
        tgt_in[i, :len(tokens)] = torch.tensor([BOS] + tokens[:-1])   # the causal mask hides the padding
    logits = model(src, tgt_in.to(ch.device), src_key_padding_mask=src != PAD)
    log_p = torch.log_softmax(logits.double(), dim=-1).cpu()          # (batch, steps, vocab)
    return [log_p[i, torch.arange(len(tokens)), torch.tensor(tokens)].sum().item()
            / length_penalty(len(tokens), alpha=alpha, kind="wu") for i, tokens in enumerate(token_lists)]
# --8<-- [end:score]


TOLERANCE = 1e-6   # two scores of the same tokens computed in different batches agree to ~1e-7
outputs_of = {name: {bin_: [generated(row) for row in run["outputs"][bin_]] for bin_ in TEST_BINS}
              for name, run in (("greedy", greedy), ("beam", beam))}
references_of = {bin_: [task.target_vocab.encode(p.target) + [EOS] for p in pairs]
                 for bin_, pairs in test_pairs.items()}
score = {name: {bin_: normalised_scores(test_pairs[bin_], lists[bin_]) for bin_ in TEST_BINS}
         for name, lists in (("greedy", outputs_of["greedy"]), ("beam", outputs_of["beam"]),
                             ("reference", references_of))}
changed = [(bin_, i) for bin_ in TEST_BINS for i in range(len(test_pairs[bin_]))
           if outputs_of["beam"][bin_][i] != outputs_of["greedy"][bin_][i]]
beam_up = [(bin_, i) for bin_, i in changed if score["beam"][bin_][i] > score["greedy"][bin_][i]]
beam_down = [(bin_, i) for bin_, i in changed if score["beam"][bin_][i] < score["greedy"][bin_][i] - TOLERANCE]


def error_kinds(name):
    """Of the outputs that differ from the reference: (model errors, search errors)."""
    wrong = [(bin_, i) for bin_ in TEST_BINS for i in range(len(test_pairs[bin_]))
             if outputs_of[name][bin_][i] != references_of[bin_][i]]
    model_errors = sum(score[name][bin_][i] >= score["reference"][bin_][i] - TOLERANCE for bin_, i in wrong)
    return model_errors, len(wrong) - model_errors


errors = {name: error_kinds(name) for name in ("greedy", "beam")}

# Where beam 4 ends below greedy decoding: is it the stopping rule (done once 4 hypotheses have
# finished) or pruning? Decode those sentences again, running every beam to the cap.
cured = 0
for bin_ in TEST_BINS:
    lost = [i for b, i in beam_down if b == bin_]
    if lost:
        pairs = [test_pairs[bin_][i] for i in lost]
        to_cap = translate(pairs, BEAM, max_len=cap(task.batch(test_pairs[bin_])), stop_early=False)
        again = normalised_scores(pairs, [generated(row) for row in to_cap])
        cured += sum(a >= score["greedy"][bin_][i] - TOLERANCE for a, i in zip(again, lost))
print(f"changed {len(changed)}: beam higher {len(beam_up)}, lower {len(beam_down)} "
      f"({cured} cured by running to the cap); model/search errors: {errors}")

ch.table("bleu-breakdown", ["decoder", "BLEU", "brevity penalty"] + [f"{n}-gram precision" for n in range(1, 5)]
         + ["words (system)", "words (references)"],
         [[label, f"{r['sacrebleu'].score:.1f}", f"{r['sacrebleu'].bp:.3f}"]
          + [f"{p:.1f}" for p in r["sacrebleu"].precisions] + [r["sacrebleu"].sys_len, r["sacrebleu"].ref_len]
          for label, r in rows.values()])


def plural(n, one, many):
    return f"{n} {one if n == 1 else many}"


g, b = greedy["sacrebleu"], beam["sacrebleu"]
higher = [n + 1 for n in range(4) if b.precisions[n] > g.precisions[n]]
text = (f"Where beam {BEAM} changed greedy decoding's translation ({plural(len(changed), 'sentence', 'sentences')}), "
        f"it found one the model scores higher after normalisation in {len(beam_up)} and lower in "
        f"{len(beam_down)}. Of its {sum(errors['beam'])} translations that differ from the reference, "
        f"the model scores {errors['beam'][0]} at least as high as the reference (model errors) and "
        f"{errors['beam'][1]} below it (search errors); for greedy decoding the counts are "
        f"{errors['greedy'][0]} and {errors['greedy'][1]} of {sum(errors['greedy'])}.")
if beam_down:
    text += (f" Of the {plural(len(beam_down), 'sentence', 'sentences')} where beam {BEAM} ends with a lower "
             f"normalised score than greedy decoding, running every beam to the cap, instead of stopping once "
             f"{BEAM} hypotheses have finished, gives {cured} at least greedy's score (the stopping rule "
             f"failed), and {len(beam_down) - cured} remain lower (greedy's prefix was pruned).")
else:
    text += f" Beam {BEAM} never ends with a lower normalised score than greedy decoding here."
if len(higher) == 4 and b.bp < g.bp and b.score < g.score:
    text += (f" In BLEU's own terms, beam {BEAM}'s n-gram precisions are higher than greedy decoding's at "
             f"every order, and its loss comes from the brevity penalty, {b.bp:.2f} against {g.bp:.2f}: its "
             f"translations total {b.sys_len} words, greedy decoding's {g.sys_len}, the references' {g.ref_len}.")
else:
    text += (f" In BLEU's own terms, beam {BEAM}'s n-gram precisions are higher than greedy decoding's at "
             + (f"orders {', '.join(map(str, higher))}" if higher else "no order")
             + f", and its brevity penalty is {b.bp:.2f} against {g.bp:.2f} ({b.sys_len} words against "
             f"{g.sys_len}; the references have {g.ref_len}).")
model_prefers = len(beam_up) > len(changed) / 2 and errors["beam"][0] > errors["beam"][1]
if b.score >= g.score:          # a better model (the large size's) gains from the wider search
    text += (" The wider search does its job, and BLEU rises with it"
             + (": the higher n-gram precisions outweigh the lower brevity penalty" if b.bp < g.bp and higher
                else "") + ".")
else:
    text += (" The wider search does its job; it is the model that prefers these"
             + (" shorter" if b.sys_len < g.sys_len else "") + " translations."
             if model_prefers else
             " Here the search, not only the model, is to blame for a good part of the loss.")
ch.markdown("search-vs-model", text)

# %% [markdown]
# ## 6. Which cross-attention heads align?
#
# Teacher forcing on the reference (as chapter 3 does): every decoder layer's cross-attention
# weights, per head; each target word is linked to the source word its row weights most,
# and the links are scored against the true alignment (AER, sure links only: 1 - F1).

# %%
# --8<-- [start:capture]
@torch.no_grad()
def cross_attention(pairs):
    """Cross-attention weights (batch, layers, heads, tgt_len + 1, src_len) on the references.

    Each decoder layer's cross-attention is asked for its weights (need_weights=True) for
    one forward pass; the last row of each sentence is the <eos> step."""
    b = task.batch(pairs)
    src, tgt_in = b.src.to(ch.device), b.tgt_in.to(ch.device)
    captured = []
    for layer in model.decoder.layers:
        def with_weights(x, memory=None, *, _forward=layer.cross_attn.forward, **options):
            out, weights = _forward(x, memory, **(options | {"need_weights": True}))
            captured.append(weights)                    # (batch, heads, tgt_len + 1, src_len)
            return out, weights
        layer.cross_attn.forward = with_weights         # an instance attribute hides the method
    try:
        model(src, tgt_in, src_key_padding_mask=src != PAD)
    finally:
        for layer in model.decoder.layers:
            del layer.cross_attn.forward
    return torch.stack(captured, dim=1).cpu()
# --8<-- [end:capture]


all_test = all_pairs(test_pairs)
weights = {bin_: cross_attention(pairs) for bin_, pairs in test_pairs.items()}


def rows_of(w, p, shift):
    """The rows of one sentence's (tgt_len + 1, src_len) map that stand for its target words:
    row i predicts word i (shift 0); row i + 1 reads word i as its input (shift 1)."""
    return w[shift:shift + len(p.target), :len(p.source)]


def head_scores(shift):
    """AER, mean max weight and mean entropy (bits) of every (layer, head)."""
    aer, peak, entropy = np.zeros((LAYERS, HEADS)), np.zeros((LAYERS, HEADS)), np.zeros((LAYERS, HEADS))
    for layer in range(LAYERS):
        for head in range(HEADS):
            links, maxima, entropies = [], [], []
            for bin_, pairs in test_pairs.items():
                for w, p in zip(weights[bin_][:, layer, head], pairs):
                    rows = rows_of(w, p, shift)
                    links.append(links_from_attention(rows))
                    maxima.append(rows.max(dim=-1).values)
                    entropies.append(-(rows * torch.log2(rows.clamp_min(1e-12))).sum(-1))
            aer[layer, head] = corpus_alignment_error_rate(links, [p.alignment for p in all_test])
            peak[layer, head] = torch.cat(maxima).mean().item()
            entropy[layer, head] = torch.cat(entropies).mean().item()
    return aer, peak, entropy


aer_next, peak_next, entropy_next = head_scores(0)      # attributed to the word the step predicts
aer_input, _, _ = head_scores(1)                        # attributed to the step's input word
best = np.unravel_index(np.argmin(aer_next), aer_next.shape)
best_layer, best_head = int(best[0]), int(best[1])
# the baseline of chapter 3: link target word j to source word round(j * S / T)
diagonal = [[(min(len(p.source) - 1, round(j * len(p.source) / len(p.target))), j)
             for j in range(len(p.target))] for p in all_test]
aer_diagonal = corpus_alignment_error_rate(diagonal, [p.alignment for p in all_test])
# a row spread evenly has log2 m bits; averaged over target rows, as the heads' entropies are
uniform_bits = (sum(len(p.target) * np.log2(len(p.source)) for p in all_test)
                / sum(len(p.target) for p in all_test))

ch.table("aer-heads", ["layer", "head", "AER (predicted word)", "AER (input word)", "mean max weight",
                       "mean entropy (bits)"],
         [[layer + 1, head + 1, f"{aer_next[layer, head]:.2f}", f"{aer_input[layer, head]:.2f}",
           f"{peak_next[layer, head]:.2f}", f"{entropy_next[layer, head]:.2f}"]
          for layer in range(LAYERS) for head in range(HEADS)]
         + [["–", "diagonal guess (no model)", f"{aer_diagonal:.2f}", "–", "–", "–"],
            ["–", "uniform rows (no model)", "–", "–", "–", f"{uniform_bits:.2f}"]])

aligning = [(layer, head) for layer in range(LAYERS) for head in range(HEADS)
            if aer_next[layer, head] < 0.5]
text = (f"The best-aligned head is head {best_head + 1} of decoder layer {best_layer + 1}: AER "
        f"{aer_next[best_layer, best_head]:.2f}, with a mean largest weight of "
        f"{peak_next[best_layer, best_head]:.2f} per row. "
        f"{len(aligning)} of the {LAYERS * HEADS} heads score an AER below 0.5"
        + ((" (in layer {})" if len(aligning) == 1 else " (both in layer {})" if len(aligning) == 2
            else " (all in layer {})").format(aligning[0][0] + 1)
           if aligning and len({l for l, _ in aligning}) == 1 else "")
        + f"; the diagonal guess scores {aer_diagonal:.2f}.")
if chapter3 is not None:
    rnn_aer = chapter3["aer"]["dot"]
    best_aer = aer_next[best_layer, best_head]
    if EXTRA_TEST:   # the best head on chapter 3's test sentences only
        shared = [(bin_, i) for bin_ in TEST_BINS for i in range(SHARED)]
        best_aer = corpus_alignment_error_rate(
            [links_from_attention(rows_of(weights[b][i, best_layer, best_head], test_pairs[b][i], 0))
             for b, i in shared], [test_pairs[b][i].alignment for b, i in shared])
    text += (f" {CHAPTER3}'s GRU with Luong's dot score, which has a single attention, scored "
             f"{rnn_aer:.2f}" + ("" if not EXTRA_TEST else
                                 f" on its {THEIR_TEST} test sentences, where this head scores {best_aer:.2f}")
             + ": the Transformer's best head is "
             + ("more accurate" if best_aer < rnn_aer - 0.02 else
                "less accurate" if best_aer > rnn_aer + 0.02 else "about as accurate")
             + ".")
best_input = np.unravel_index(np.argmin(aer_input), aer_input.shape)
if aer_input.min() < aer_next.min() - 0.02:
    text += (f" Read the other way, with row i + 1 credited to the target word it takes as input, "
             f"head {best_input[1] + 1} of layer {best_input[0] + 1} does better still, "
             f"{aer_input.min():.2f}: that head looks at the source of the word just written.")
sharpest = np.unravel_index(np.argmax(peak_next), peak_next.shape)
text += (f" The sharpest head (largest mean max weight, {peak_next[sharpest]:.2f}) is head "
         f"{sharpest[1] + 1} of layer {sharpest[0] + 1}"
         + (", the best-aligned one." if tuple(sharpest) == (best_layer, best_head) else ".")
         + f" Rows spread evenly over the source would have a mean entropy of {uniform_bits:.2f} bits.")
ch.markdown("aer-summary", text)


def draw_aer_map(theme):
    # side by side, more than four columns of printed numbers per panel would not fit: stack them
    stacked = HEADS > 4
    if stacked:
        fig, axes = plt.subplots(2, 1, figsize=(6.4, 2 * (0.9 + 0.45 * LAYERS)), sharex=True)
    else:
        fig, axes = plt.subplots(1, 2, figsize=(6.4, 1.2 + 0.55 * LAYERS), sharey=True)
    c = colors(theme)
    for ax, (title, aer) in zip(axes, (("credited to the predicted word", aer_next),
                                       ("credited to the input word", aer_input))):
        ax.imshow(1 - aer, cmap=attention_cmap(theme), vmin=0, vmax=1, aspect="auto")
        for layer in range(LAYERS):
            for head in range(HEADS):
                ax.text(head, layer, f"{aer[layer, head]:.2f}", ha="center", va="center", fontsize=9,
                        color=c["bg"] if aer[layer, head] < 0.5 else c["fg"])
        ax.set_xticks(range(HEADS), [str(h + 1) for h in range(HEADS)])
        ax.set_yticks(range(LAYERS), [str(layer + 1) for layer in range(LAYERS)])
        ax.set_xlabel("" if stacked and ax is axes[0] else "head")
        ax.set_title(title, fontsize=9)
        for spine in ax.spines.values():
            spine.set_visible(False)
        if stacked:
            ax.set_ylabel("decoder layer")
    axes[0].set_ylabel("decoder layer")
    fig.tight_layout()
    return fig


ch.figure("aer-map", draw_aer_map)

# %% [markdown]
# ## 7. The best head on one sentence

# %%
shown = task.sample(1, 11, min_len=12, max_len=13)[0]     # chapter 3's example sentence
shown_weights = cross_attention([shown])[0]                  # (layers, heads, tgt + 1, src)
truth = torch.zeros(len(shown.target), len(shown.source))
for i, j in shown.alignment:
    truth[j, i] = 1.0
best_map = rows_of(shown_weights[best_layer, best_head], shown, 0)
layer_mean = rows_of(shown_weights[best_layer].mean(0), shown, 0)
sentence_aer = corpus_alignment_error_rate([links_from_attention(best_map)], [shown.alignment])


def draw_example(theme):
    fig, axes = plt.subplots(1, 3, figsize=(6.8, 3.6), sharey=True)
    panels = [("true alignment", truth),
              (f"layer {best_layer + 1}, head {best_head + 1}", best_map),
              (f"layer {best_layer + 1}, mean of heads", layer_mean)]
    for ax, (title, w) in zip(axes, panels):
        heatmap(ax, w, shown.source, shown.target, theme=theme, xlabel="source", ylabel="")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("target (predicted word)")
    fig.tight_layout()
    return fig


ch.figure("best-head", draw_example, fmt="png")
ch.markdown("example", (
    f"Source: *{' '.join(shown.source)}*  \nReference: *{' '.join(shown.target)}*  \n"
    f"AER of layer {best_layer + 1}, head {best_head + 1} on this sentence: {sentence_aer:.2f}."))

# %% [markdown]
# ## 8. The paper's numbers beside ours

# %%
ch.table("paper-vaswani", ["", "Vaswani et al. (2017), Table 2 and §6.1", "this chapter"], [
    ["data", "WMT 2014 EN-DE and EN-FR (§5.1), newstest2014",
     "[chapter 3](../foundations/bahdanau-luong.md)'s toy language pair, "
     + ("[chapter 7](../position/transformer.md)'s training set" if not ch.large else
        f"{LARGE['pairs']:,} training pairs ([chapter 7](../position/transformer.md)'s {THEIRS['pairs']:,} "
        "and more)")],
    ["model", "base: 6 + 6 layers, 8 heads, d_model 512", f"{LAYERS} + {LAYERS} layers, {HEADS} heads, "
     f"d_model {config['d_model']}"],
    ["decoding", "beam 4, length penalty α = 0.6, cap: input length + 50",
     f"greedy; beam {BEAM}, Wu α = {ALPHA}, cap: 2 × (longest reference in the bin + 1) + 10 tokens "
     "(chapters 3 and 7's; uses the reference lengths)"],
    ["BLEU, base model", "27.3 (EN-DE), 38.1 (EN-FR)", f"{greedy['bleu']:.1f} greedy, {beam['bleu']:.1f} beam"],
    ["BLEU, big model", "28.4 (EN-DE), 41.8 (EN-FR)", "–"],
], align="lll")
ch.paper("vaswani2017", "BLEU of the base Transformer decoded with beam 4 and α = 0.6 (not comparable: "
         "real language pairs against the book's toy pair)",
         theirs="27.3 (EN-DE) and 38.1 (EN-FR) BLEU on newstest2014 (Table 2; decoding settings §6.1)",
         ours=f"{beam['bleu']:.1f} BLEU with beam {BEAM}, α = {ALPHA}; {greedy['bleu']:.1f} greedy, "
              f"{NUM_TEST} toy test sentences",
         section="the-paper-reproduced")
ch.paper("koehn2017", "wider beams can lower translation quality",
         theirs="beam search improves quality only for narrow beams and deteriorates with a larger search "
                "space (§1, challenge 6)",
         ours=", ".join(f"beam {k}: {sweep[k]['bleu']:.1f}" for k in WIDTHS) + " BLEU",
         section="search-errors-or-model-errors")
ch.paper("stahlberg2019", "the model, not the search, prefers short or empty translations",
         theirs="the empty translation has the global best score for more than 50% of the sentences "
                "(abstract; Transformer base, WMT15 En-De, exact search)",
         ours=f"{errors['beam'][0]} model errors and {errors['beam'][1]} search errors among beam {BEAM}'s "
              f"{sum(errors['beam'])} wrong translations (scored against the reference, not exact search)",
         section="search-errors-or-model-errors")

# %% [markdown]
# ## 9. Exercises

# %%
# --8<-- [start:exercise-1]
lengths = [1, 5, 10, 20, 40]
values = {kind_alpha: [length_penalty(n, alpha=kind_alpha[1], kind=kind_alpha[0]) for n in lengths]
          for kind_alpha in (("wu", 0.6), ("wu", 1.0), ("length", 1.0))}
ch.table("exercise-1", ["lp(L)"] + [f"L = {n}" for n in lengths],
         [[f"{kind}, α = {alpha}"] + [f"{v:.2f}" for v in vals] for (kind, alpha), vals in values.items()])
# --8<-- [end:exercise-1]

# %%
# --8<-- [start:exercise-2]
# How often does the normalised beam pick a translation that greedy decoding would not?
different = sum(h != g for h, g in zip(beam["hyps"], greedy["hyps"]))
b, g = beam["sacrebleu"], greedy["sacrebleu"]        # sacreBLEU's results: .bp, .precisions
ch.markdown("exercise-2", f"Beam {BEAM} changed `{different}` of the `{NUM_TEST}` translations; brevity "
            f"penalty {b.bp:.2f} against greedy's {g.bp:.2f}, 4-gram precision {b.precisions[3]:.1f} "
            f"against {g.precisions[3]:.1f}.")
# --8<-- [end:exercise-2]

# %%
ch.json("summary", {
    "bleu": {"greedy": greedy["bleu"], "beam": beam["bleu"], "beam_raw": beam_raw["bleu"]},
    "alpha": {f"{a:g}": by_alpha[a]["bleu"] for a in ALPHAS},
    "sweep": {str(k): {"bleu": sweep[k]["bleu"], "seconds": sweep[k]["seconds"]} for k in WIDTHS},
    "aer": {"best": [best_layer + 1, best_head + 1, float(aer_next.min())],
            "by_head": aer_next.round(4).tolist(), "diagonal": aer_diagonal},
    "width_one_is_greedy": greedy_again,
    "search_vs_model": {"changed": len(changed), "beam_higher": len(beam_up), "beam_lower": len(beam_down),
                        "cured_by_running_to_cap": int(cured),
                        "errors": {name: {"model": int(m), "search": int(e)} for name, (m, e) in errors.items()}},
    "brevity_penalty": {"greedy": greedy["sacrebleu"].bp, "beam": beam["sacrebleu"].bp},
})
print("wrote", ", ".join(sorted(ch.written)))
