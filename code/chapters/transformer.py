# %% [markdown]
# # The Transformer
#
# The experiments of the chapter: a small encoder-decoder Transformer trained on chapter 3's
# toy translation task with the book's training pipeline (AdamW, warm-up + cosine, label
# smoothing, gradient clipping, mixed precision on a GPU, a checkpoint, a progress bar);
# post-LN against pre-LN with and without warm-up (Xiong et al., 2020); and the Transformer
# against chapter 3's GRU with Luong's dot attention, trained with chapter 3's recipe:
# BLEU and exact match by source length, training time to a target accuracy, decoding speed.
#
# Run it with `python code/chapters/transformer.py --device {auto,cpu,cuda} [--quick]`.

# %%
from attnbook.chapter import Chapter

ch = Chapter("transformer")

# %%
import json
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
import sacrebleu
import torch

from attnbook.data.translation import TEST_BINS, TRAIN_MAX_LEN, benchmark_data, benchmark_task, bucketed_batches
from attnbook.models.seq2seq import Seq2Seq
from attnbook.models.transformer import EncoderDecoder, greedy_decode
from attnbook.train import TrainConfig, cross_entropy, noam, train, warmup_cosine
from attnbook.viz import colors, length_panels

# Tiny models: per-operation overhead dominates, one thread is as fast as two and leaves the
# other core to the post-LN / pre-LN runs (started in a child process below).
ch.one_thread_on_cpu()

# %% [markdown]
# ## 1. Chapter 3's task, chapter 3's data

# %%
# The task and its split are chapter 3's, from attnbook.data.translation; the GRU recipe
# below is chapter 3's too (code/chapters/bahdanau-luong.py).
task = benchmark_task()
BATCH = 64
PER_BIN = ch.pick(80, 4)
GRU_KIND = "dot"                          # Luong's dot score
GRU_HIDDEN, GRU_EMBED = ch.pick((64, 32), (16, 8))
GRU_STEPS = ch.pick(400, 10)

# The Transformer of this chapter.
D_MODEL, HEADS, LAYERS, D_FF = ch.pick((64, 4, 2, 256), (16, 2, 1, 32))
STEPS = ch.pick(400, 10)
LR, WARMUP = 5e-3, ch.pick(40, 2)
# Under two epochs of training, dropout only slows learning, and separate input and output
# tables learned faster than tied ones in our trials on this task (exercise 7: try either).
LABEL_SMOOTHING, DROPOUT, TIE_OUTPUT = 0.1, 0.0, False
LN_LR = 3e-3                              # the post-LN / pre-LN runs
EVAL_EVERY = ch.pick(25, 5)               # validation accuracy every this many steps
TARGET_ACCURACY = 0.90                    # "time to target quality"

PAD = task.source_vocab.pad_id
train_pairs, test_pairs = benchmark_data(task, ch.pick(16_000, 200), PER_BIN)
valid = task.batch(task.sample(ch.pick(256, 16), 50, max_len=TRAIN_MAX_LEN))


train_batches = bucketed_batches(task, train_pairs, BATCH)


def draw_batch(generator):
    return train_batches[int(torch.randint(len(train_batches), (1,), generator=generator))]


# %% [markdown]
# ## 2. The model and the training pipeline

# %%
class Translator(EncoderDecoder):
    """``EncoderDecoder`` whose key-padding mask is computed from the source (True = real token)."""

    def forward(self, src, tgt_in):
        return super().forward(src, tgt_in, src_key_padding_mask=src != PAD)


def make_transformer(norm_first=True, num_layers=LAYERS):
    return Translator(len(task.source_vocab), len(task.target_vocab), d_model=D_MODEL,
                      num_heads=HEADS, num_layers=num_layers, d_ff=D_FF, dropout=DROPOUT,
                      norm_first=norm_first, tie_output=TIE_OUTPUT)


def make_gru():
    return Seq2Seq(len(task.source_vocab), len(task.target_vocab), attention=GRU_KIND,
                   embed_dim=GRU_EMBED, hidden_dim=GRU_HIDDEN, pad_id=PAD)


@torch.no_grad()
def valid_accuracy(model, is_gru):
    """Teacher-forced next-word accuracy on the validation pairs (<eos> included)."""
    was_training = model.training
    model.eval()
    b = valid
    if is_gru:
        logits, _ = model(b.src.to(ch.device), b.src_lengths.to(ch.device), b.tgt_in.to(ch.device))
    else:
        logits = model(b.src.to(ch.device), b.tgt_in.to(ch.device))
    target = b.tgt_out.to(ch.device)
    counted = target != -100
    accuracy = ((logits.argmax(-1) == target) & counted).sum().item() / counted.sum().item()
    model.train(was_training)
    return accuracy


class Monitor:
    """Wraps ``make_batch``: every ``EVAL_EVERY`` steps it measures the validation accuracy
    and how many seconds training has taken so far, evaluation excluded. It uses no random
    numbers, so the training run is the same with or without it."""

    def __init__(self, model, is_gru, batch_fn):
        self.model, self.is_gru, self.batch_fn = model, is_gru, batch_fn
        self.step, self.eval_seconds, self.start = 0, 0.0, time.perf_counter()
        self.points = []  # (step, training seconds, accuracy)

    def __call__(self, generator):
        if self.step % EVAL_EVERY == 0 and self.step > 0:
            self.record()
        self.step += 1
        return self.batch_fn(generator)

    def record(self):
        t0 = time.perf_counter()
        training_seconds = t0 - self.start - self.eval_seconds
        accuracy = valid_accuracy(self.model, self.is_gru)
        self.eval_seconds += time.perf_counter() - t0
        self.points.append((self.step, training_seconds, accuracy))

    def finish(self):
        self.eval_during_training = self.eval_seconds  # history.seconds includes these
        self.record()
        return self.points


def transformer_batch(generator):
    b = draw_batch(generator)
    return (b.src, b.tgt_in), b.tgt_out


def gru_batch(generator):
    b = draw_batch(generator)
    return (b.src, b.src_lengths, b.tgt_in), b.tgt_out


# %% [markdown]
# ## 3. Post-LN and pre-LN, with and without warm-up
#
# Four short runs of a deeper (4+4-layer) model at a learning rate of LN_LR, without
# gradient clipping, so that nothing hides the instability: post-LN or pre-LN, no warm-up or
# a linear warm-up. With a spare CPU core they run in a child process on the core this one
# leaves free, started here, before the two timed trainings below, so that both are timed
# beside the same busy neighbour; without one they run here, at once, outside the timings.

# %%
LN_LAYERS = ch.pick(4, 1)
LN_STEPS = ch.pick(250, 8)
LN_WARMUP = ch.pick(50, 2)
LN_BATCH, LN_PAIRS = 32, ch.pick(4000, 200)
LN_BATCHES = bucketed_batches(task, train_pairs[:LN_PAIRS], LN_BATCH)
LN_RUNS = [("post-LN", False, 0), ("post-LN", False, LN_WARMUP),
           ("pre-LN", True, 0), ("pre-LN", True, LN_WARMUP)]


def ln_batch(generator):
    b = LN_BATCHES[int(torch.randint(len(LN_BATCHES), (1,), generator=generator))]
    return (b.src, b.tgt_in), b.tgt_out


def ln_runs():
    start, results = time.perf_counter(), []
    for name, norm_first, warmup in LN_RUNS:
        ch.seed(0)
        model = make_transformer(norm_first, LN_LAYERS)
        h = train(model, ln_batch, TrainConfig(steps=LN_STEPS, lr=LN_LR, warmup_steps=warmup,
                                              label_smoothing=LABEL_SMOOTHING, clip_norm=None,
                                              progress=False, seed=0), device=ch.device)
        results.append((h.loss, h.grad_norm, valid_accuracy(model, False)))
    return results, time.perf_counter() - start


# On a spare core, while both the Transformer and the GRU below train; or here, before either.
wait_for_ln = ch.in_background(ln_runs)
ln_started = time.perf_counter()

# %% [markdown]
# ## 4. Training the Transformer

# %%
# --8<-- [start:recipe]
config = TrainConfig(
    steps=STEPS, lr=LR, warmup_steps=WARMUP,   # linear warm-up, then a cosine to 0
    weight_decay=0.01, betas=(0.9, 0.98),      # AdamW; no decay on biases and norm gains
    label_smoothing=LABEL_SMOOTHING,           # ε_ls of Vaswani et al. §5.4
    clip_norm=1.0,                             # gradient-norm clipping
    amp=ch.device.type == "cuda",              # float16 autocast on a GPU, ignored on the CPU
    progress=None,                             # a tqdm bar when run in a terminal
    seed=0)
ch.seed(0)
transformer = make_transformer()
monitor = Monitor(transformer, False, transformer_batch)
# the checkpoint is saved at the end; keep the file to resume with resume=True
with tempfile.TemporaryDirectory() as folder:
    history = train(transformer, monitor, config, device=ch.device,
                    checkpoint=Path(folder) / "transformer.pt")
transformer_points = monitor.finish()
# --8<-- [end:recipe]
transformer.eval()
# Saved for chapter 21 (machine translation), which loads it with ch.needs("transformer", "model.pt").
torch.save({"state": transformer.state_dict(),
            "config": {"src_vocab": len(task.source_vocab), "tgt_vocab": len(task.target_vocab),
                       "d_model": D_MODEL, "num_heads": HEADS, "num_layers": LAYERS, "d_ff": D_FF,
                       "dropout": DROPOUT, "norm_first": True, "tie_output": TIE_OUTPUT},
            "sizes": {"pairs": len(train_pairs), "steps": STEPS, "per_bin": PER_BIN},
            "quick": ch.quick}, ch.path("model.pt"))
print(f"transformer: {STEPS} steps in {history.seconds:.1f} s, final loss "
      f"{np.mean(history.loss[-20:]):.3f}")

# %% [markdown]
# ## 5. Chapter 3's GRU with the same data, trained with chapter 3's recipe

# %%
ch.seed(0)
gru = make_gru()
gru_monitor = Monitor(gru, True, gru_batch)
# chapter 3's recipe: AdamW with weight_decay=0 (plain Adam), lr 1e-2, 5 % warm-up, clip at 1
gru_config = TrainConfig(steps=GRU_STEPS, lr=1e-2, warmup_steps=GRU_STEPS // 20, weight_decay=0.0,
                         clip_norm=1.0, seed=0, progress=None)
gru_history = train(gru, gru_monitor, gru_config, device=ch.device,
                    loss_fn=lambda output, y: cross_entropy(output[0], y))
gru_points = gru_monitor.finish()
gru.eval()
trainings_done = time.perf_counter() - ln_started
print(f"GRU ({GRU_KIND}): {GRU_STEPS} steps in {gru_history.seconds:.1f} s, final loss "
      f"{np.mean(gru_history.loss[-20:]):.3f}")

# %% [markdown]
# ## 6. Quality by length and decoding speed

# %%
def translate(model, pairs, is_gru):
    """Greedy translations of ``pairs`` (one batch), and how many ran on to the length cap."""
    b = task.batch(pairs)
    src = b.src.to(ch.device)
    # chapter 3's cap, for both models: twice the longest reference of the batch (+ <bos>) plus 10
    max_len = ch.pick(2 * b.tgt_in.shape[1] + 10, b.tgt_in.shape[1])
    bos, eos = task.target_vocab.bos_id, task.target_vocab.eos_id
    if is_gru:
        tokens, _ = model.greedy_decode(src, b.src_lengths.to(ch.device), max_len=max_len,
                                        bos_id=bos, eos_id=eos)
    else:
        tokens = greedy_decode(model, src, max_len, bos_id=bos, eos_id=eos, pad_id=PAD,
                               src_key_padding_mask=src != PAD)[:, 1:]
    tokens = tokens.cpu()
    ran_on = int((~(tokens == eos).any(dim=1)).sum())     # no <eos> within the cap
    return [" ".join(task.target_vocab.decode(row)) for row in tokens], ran_on


def evaluate(model, is_gru):
    """bin -> (BLEU, exact match, translations cut by the cap), BLEU over all, seconds spent
    decoding, words produced."""
    by_bin, hyps, refs, seconds = {}, [], [], 0.0
    for bin_, pairs in test_pairs.items():
        start = time.perf_counter()
        hypotheses, ran_on = translate(model, pairs, is_gru)
        if ch.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        references = [" ".join(p.target) for p in pairs]
        by_bin[bin_] = (sacrebleu.corpus_bleu(hypotheses, [references]).score,
                        float(np.mean([h == r for h, r in zip(hypotheses, references)])), ran_on)
        hyps += hypotheses
        refs += references
    words = sum(len(h.split()) for h in hyps)
    return by_bin, sacrebleu.corpus_bleu(hyps, [refs]).score, seconds, words


NAMES = {"transformer": "Transformer (pre-LN)", "gru": f"GRU + Luong {GRU_KIND} (chapter 3)"}
models = {"transformer": (transformer, False), "gru": (gru, True)}
# Collect the post-LN / pre-LN runs first, so that both models decode on an otherwise idle core.
ln_results, ln_seconds = wait_for_ln()
results = {key: evaluate(model, is_gru) for key, (model, is_gru) in models.items()}
histories = {"transformer": history, "gru": gru_history}
points = {"transformer": transformer_points, "gru": gru_points}
train_seconds = {"transformer": history.seconds - monitor.eval_during_training,
                 "gru": gru_history.seconds - gru_monitor.eval_during_training}
NUM_TEST = sum(len(p) for p in test_pairs.values())


def bin_name(bin_):
    return f"{bin_[0]}–{bin_[1]}"


def params(model):
    return sum(p.numel() for p in model.parameters())


def time_to_target(key):
    for step, seconds, accuracy in points[key]:
        if accuracy >= TARGET_ACCURACY:
            return step, seconds
    return None


ch.table("quality-by-length", ["model"] + [f"BLEU {bin_name(b)}" for b in TEST_BINS]
         + [f"exact {bin_name(b)}" for b in TEST_BINS] + [f"BLEU, all {NUM_TEST}"],
         [[NAMES[k]] + [f"{results[k][0][b][0]:.1f}" for b in TEST_BINS]
          + [f"{results[k][0][b][1]:.0%}" for b in TEST_BINS] + [f"{results[k][1]:.1f}"]
          for k in models])


def target_cell(key):
    reached = time_to_target(key)
    return "not reached" if reached is None else f"{reached[1]:.1f} s (step {reached[0]})"


ch.table("cost", ["model", "parameters", "training steps", "training seconds",
                  f"time to {TARGET_ACCURACY:.0%} valid. accuracy", "final valid. accuracy",
                  "decoding: sentences/s", "decoding: words/s"],
         [[NAMES[k], f"{params(models[k][0]):,}", len(histories[k].loss),
           f"{train_seconds[k]:.1f}", target_cell(k), f"{points[k][-1][2]:.1%}",
           f"{NUM_TEST / results[k][2]:.0f}", f"{results[k][3] / results[k][2]:.0f}"]
          for k in models])

t_bleu, g_bleu = results["transformer"][1], results["gru"][1]
LONG = TEST_BINS[-1]
in_range = [b for b in TEST_BINS if b[1] <= TRAIN_MAX_LEN + 5]   # up to 30 words
MARGIN = 2.0                  # BLEU: a smaller gap on 80 sentences is not called a lead
bleu = {k: {b: results[k][0][b][0] for b in TEST_BINS} for k in models}
t_long, g_long = bleu["transformer"][LONG], bleu["gru"][LONG]
speed = {k: NUM_TEST / results[k][2] for k in models}
t_target, g_target = time_to_target("transformer"), time_to_target("gru")


def words_list(items):
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def in_range_verdict():
    """Who is ahead by more than MARGIN BLEU in the bins up to 30 words."""
    ahead = [b for b in in_range if bleu["transformer"][b] > bleu["gru"][b] + MARGIN]
    behind = [b for b in in_range if bleu["gru"][b] > bleu["transformer"][b] + MARGIN]
    close = [b for b in in_range if b not in ahead and b not in behind]
    every = f"in every bin up to {in_range[-1][1]} words"
    if len(ahead) == len(in_range):
        return f"The Transformer is more than {MARGIN:.0f} BLEU ahead {every}"
    if len(behind) == len(in_range):
        return f"The GRU is more than {MARGIN:.0f} BLEU ahead {every}"
    if len(close) == len(in_range):
        return f"The two are within {MARGIN:.0f} BLEU of each other {every}"
    parts = []
    for bins, who in ((ahead, f"the Transformer is more than {MARGIN:.0f} BLEU ahead"),
                      (behind, "the GRU" if ahead else f"the GRU is more than {MARGIN:.0f} BLEU ahead"),
                      (close, f"the two are within {MARGIN:.0f} BLEU of each other")):
        if bins:
            where = words_list(bin_name(b) for b in bins)
            parts.append(f"{who} on " + (where if parts else f"sources of {where} words"))
    return f"Up to {in_range[-1][1]} words, " + words_list(parts)


if t_target and g_target:
    target_sentence = (f"The Transformer reached {TARGET_ACCURACY:.0%} next-word accuracy on the "
                       f"validation pairs after {t_target[1]:.1f} s of training, the GRU after "
                       f"{g_target[1]:.1f} s.")
elif t_target or g_target:
    first = "The Transformer" if t_target else "The GRU"
    other = "the GRU" if t_target else "the Transformer"
    target_sentence = (f"{first} reached {TARGET_ACCURACY:.0%} next-word accuracy on the validation "
                       f"pairs after {(t_target or g_target)[1]:.1f} s of training; {other} never did.")
else:
    target_sentence = f"Neither reached {TARGET_ACCURACY:.0%} next-word accuracy on the validation pairs."
if g_long > t_long + 5:
    long_clause = ": the recurrent model holds up better on lengths it has not seen."
elif t_long > g_long + 5:
    long_clause = ": the Transformer holds up better on lengths it has not seen."
else:
    long_clause = "."
ch.markdown("comparison", (
    f"Over all {NUM_TEST} test sentences the Transformer scores {t_bleu:.1f} BLEU and the GRU "
    f"{g_bleu:.1f}. {in_range_verdict()}; on sources of {bin_name(LONG)} words, longer than any "
    f"training sentence, the Transformer scores {t_long:.1f} against the GRU's {g_long:.1f}"
    + long_clause
    + f" {target_sentence} Greedy decoding translated {speed['transformer']:.0f} sentences per "
    f"second with the Transformer and {speed['gru']:.0f} with the GRU"
    + (", although the Transformer re-runs its decoder over the whole prefix at every step (no "
       "cache)." if speed["transformer"] > speed["gru"] else
       ": the Transformer re-runs its decoder over the whole prefix at every step (no cache), "
       "a waste that the key-value cache of [chapter 8](gpt.md#the-kv-cache) and "
       "[chapter 9](inference.md) removes.")))

# The GRU is chapter 3's model, trained as there on the same batches and decoded with the same
# cap: say whether its row repeats chapter 3's "Luong dot" row (when chapter 3 has been run).
try:
    with open(ch.needs("bahdanau-luong", "summary.json"), encoding="utf-8") as f:
        chapter3 = json.load(f)["quality"][GRU_KIND]
except FileNotFoundError:
    chapter3 = None
CHAPTER3 = "[chapter 3](../foundations/bahdanau-luong.md)"
if chapter3 is None:
    repeat_sentence = f"The GRU row can be set beside {CHAPTER3}'s table (run it to compare)."
else:
    gaps = [abs(results["gru"][0][b][0] - chapter3[bin_name(b)][0]) for b in TEST_BINS]
    same = all(f"{results['gru'][0][b][0]:.1f}" == f"{chapter3[bin_name(b)][0]:.1f}" and
               f"{results['gru'][0][b][1]:.0%}" == f"{chapter3[bin_name(b)][1]:.0%}" for b in TEST_BINS)
    repeat_sentence = (f"The GRU's row repeats the \"Luong {GRU_KIND}\" row of {CHAPTER3}'s table."
                       if same else
                       f"The GRU's row differs from the \"Luong {GRU_KIND}\" row of {CHAPTER3}'s "
                       f"table by at most {max(gaps):.1f} BLEU in a bin.")
ran_on = {k: {b: results[k][0][b][2] for b in TEST_BINS} for k in models}
ran_on_bins = [b for b in TEST_BINS if ran_on["transformer"][b] or ran_on["gru"][b]]
if ran_on_bins:
    cap_sentence = (
        f" {sum(ran_on['transformer'].values())} of the Transformer's {NUM_TEST} translations and "
        f"{sum(ran_on['gru'].values())} of the GRU's ran on until the cap without producing "
        f"⟨eos⟩, on sources of {words_list(bin_name(b) for b in ran_on_bins)} words; a tighter "
        "cap would cut these runaway tails, and with them many wrong words.")
else:
    cap_sentence = " No translation ran on until the cap."
ch.markdown("decoding-cap", repeat_sentence + cap_sentence)

# How the times were taken, for the sentence under the tables.
if ch.device.type == "cuda":
    timing_note = (
        f"Times are wall-clock seconds on the GPU that built this page "
        f"({torch.cuda.get_device_name(ch.device)}) and depend on it; the ratios are the point. "
        "A GPU is where the Transformer's main advantage counts — all target positions of a "
        "teacher-forced step computed at once, where the GRU must loop over them — but with "
        "models this small per-operation overhead can still take much of each step.")
else:
    threads = torch.get_num_threads()
    if not ch.spare_core():
        beside = ""
    elif ln_seconds >= trainings_done:
        beside = ("; both trainings ran while the post-LN and pre-LN runs below kept a second "
                  "core busy throughout")
    else:
        beside = (f"; both trainings ran beside the post-LN and pre-LN runs below, which kept a "
                  f"second core busy for the first {ln_seconds:.0f} of their {trainings_done:.0f} s")
    timing_note = (
        f"Times are wall-clock seconds on the machine that built this page (a CPU, with "
        f"{threads} thread{'s' if threads > 1 else ''}{beside}) and depend on it; the ratios "
        "are the point. On a CPU with tiny models every step is dominated by per-operation "
        "overhead, so the Transformer's main advantage — all target positions of a "
        "teacher-forced step computed at once, where the GRU must loop over them — shows only "
        "partly; on a GPU, where one big matrix product costs little more than a small one, "
        "we would expect it to grow with the sentence length.")
ch.markdown("timing", timing_note)
print(f"post-LN / pre-LN runs: {ln_seconds:.1f} s; both timed trainings done after "
      f"{trainings_done:.1f} s")


def draw_quality(theme):
    c = colors(theme)
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.0), sharex=True)
    centres = [(lo + hi) / 2 for lo, hi in TEST_BINS]
    for i, key in enumerate(models):
        for ax, k, scale in ((axes[0], 0, 1), (axes[1], 1, 100)):
            ax.plot(centres, [results[key][0][b][k] * scale for b in TEST_BINS], "-o",
                    color=c["palette"][i], label=NAMES[key], markersize=4)
    length_panels(axes, TEST_BINS, TRAIN_MAX_LEN, theme=theme)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig


ch.figure("quality-by-length", draw_quality)

# %% [markdown]
# ## 7. Learning curves

# %%
def draw_curves(theme):
    c = colors(theme)
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 2.9))
    window = ch.pick(20, 3)
    for i, key in enumerate(models):
        loss = np.convolve(histories[key].loss, np.ones(window) / window, mode="valid")
        axes[0].plot(np.arange(len(loss)) + window, loss, color=c["palette"][i], lw=1.2,
                     label=NAMES[key])
        step, _, accuracy = zip(*points[key])
        axes[1].plot(step, 100 * np.array(accuracy), "-o", color=c["palette"][i],
                     markersize=3, lw=1.2)
    axes[1].axhline(100 * TARGET_ACCURACY, color=c["muted"], lw=0.8, ls="--")
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel("training loss (nats/word)")
    axes[0].set_title("loss (Transformer: smoothed labels)", fontsize=9)
    axes[1].set_xlabel("training step")
    axes[1].set_ylabel("validation accuracy (%)")
    axes[1].set_title("next-word accuracy", fontsize=9)
    axes[1].set_ylim(0, 100)
    axes[0].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


ch.figure("learning-curves", draw_curves)

# %% [markdown]
# ## 8. The learning-rate schedules

# %%
def draw_schedules(theme):
    c = colors(theme)
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 2.7))
    axes[0].plot(np.arange(1, STEPS + 1), history.lr, color=c["palette"][0], lw=1.5)
    axes[0].set_title(f"ours: warm-up {WARMUP} + cosine", fontsize=9)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("learning rate")
    steps = np.arange(1, 100_001, 50)
    for i, (d_model, warmup) in enumerate([(512, 4000), (1024, 4000), (512, 8000)]):
        axes[1].plot(steps, [noam(int(s), d_model=d_model, warmup_steps=warmup) for s in steps],
                     color=c["palette"][i], lw=1.3, label=f"$d_{{model}}$={d_model}, warm-up {warmup}")
    axes[1].set_title("Noam (Vaswani et al. §5.3)", fontsize=9)
    axes[1].set_xticks([0, 25_000, 50_000, 75_000, 100_000], ["0", "25k", "50k", "75k", "100k"])
    axes[1].set_xlabel("step")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    axes[1].legend(fontsize=8, frameon=False)
    for ax in axes:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    fig.tight_layout()
    return fig


ch.figure("schedules", draw_schedules)
ch.markdown("schedule-check", (
    f"Our schedule starts at {history.lr[0]:.1e}, peaks at {max(history.lr):.1e} at step "
    f"{int(np.argmax(history.lr)) + 1} and ends at {history.lr[-1]:.1e}; it matches "
    "`warmup_cosine` step for step: "
    + ("yes" if all(abs(lr - LR * warmup_cosine(s, warmup_steps=WARMUP, total_steps=STEPS)) < 1e-12
                    for s, lr in enumerate(history.lr)) else "no")
    + f". The paper's Noam schedule peaks at step 4000 with "
    f"{noam(4000, d_model=512, warmup_steps=4000):.2e} for $d_{{\\text{{model}}}} = 512$."))

# %% [markdown]
# ## 9. Post-LN against pre-LN (Xiong et al., 2020)

# %%
def latex_number(x):
    """3e-3 -> '3 \\cdot 10^{-3}'."""
    mantissa, exponent = f"{x:.0e}".split("e")
    return f"{mantissa} \\cdot 10^{{{int(exponent)}}}"


ln_labels = [f"{name}, " + ("no warm-up" if w == 0 else f"warm-up {w}") for name, _, w in LN_RUNS]
tail = ch.pick(25, 2)
ch.markdown("post-pre-ln-setup", (
    f"Four short runs of a deeper model ({LN_LAYERS} encoder and {LN_LAYERS} decoder layers, the "
    "same widths and the same label smoothing and weight decay as above): "
    f"{LN_STEPS} steps of batches of {LN_BATCH} sentences drawn from the first "
    f"{LN_PAIRS:,} training pairs, at a learning rate of ${latex_number(LN_LR)}$, "
    "*without* gradient clipping so that nothing hides the instability, on the same batches "
    f"from the same seed: post-LN or pre-LN, each without warm-up and with a {LN_WARMUP}-step "
    "linear warm-up (then a cosine decay)."))
ch.table("post-pre-ln", ["run", f"loss, first {tail} steps", f"loss, last {tail} steps",
                         "gradient norm at step 1", "largest gradient norm", "validation accuracy"],
         [[label, f"{np.mean(loss[:tail]):.2f}", f"{np.mean(loss[-tail:]):.2f}",
           f"{grads[0]:.1f}", f"{max(grads):.1f}", f"{acc:.1%}"]
          for label, (loss, grads, acc) in zip(ln_labels, ln_results)])
final = {label: np.mean(loss[-tail:]) for label, (loss, _, _) in zip(ln_labels, ln_results)}
accs = {label: acc for label, (_, _, acc) in zip(ln_labels, ln_results)}
first_grad = {label: grads[0] for label, (_, grads, _) in zip(ln_labels, ln_results)}
post0, post_w, pre0 = ln_labels[0], ln_labels[1], ln_labels[2]
gap = accs[pre0] - accs[post0]             # does post-LN need the warm-up?
drop_gap = accs[pre0] - accs[post_w]       # can pre-LN drop it?
ch.markdown("post-pre-ln-summary", (
    f"Without warm-up, the post-LN model ends at a training loss of {final[post0]:.2f} and "
    f"{accs[post0]:.1%} validation accuracy; the pre-LN model, same learning rate, same batches, "
    f"ends at {final[pre0]:.2f} and {accs[pre0]:.1%}"
    + (f", {100 * gap:.0f} points ahead." if gap > 0.02 else
       ": on this run the gap is small.")
    + f" With {LN_WARMUP} warm-up steps the post-LN model reaches {accs[post_w]:.1%}"
    + (", so warm-up helps it" if accs[post_w] > accs[post0] + 0.02 else ", so warm-up alone does "
       "not rescue it at this learning rate and length of training")
    + f"; pre-LN with the same warm-up reaches {accs[ln_labels[3]]:.1%}."
    + " Pre-LN without warm-up ends "
    + (f"{100 * drop_gap:.0f} points ahead of" if drop_gap > 0.02 else
       f"{-100 * drop_gap:.0f} points behind" if drop_gap < -0.02 else "within 2 points of")
    + " post-LN with it."
    + f" Before any update (step 1, the same with or without warm-up) the total gradient norm "
    f"is {first_grad[post0]:.2f} for post-LN and {first_grad[pre0]:.2f} for pre-LN"
    + (", larger in post-LN, as Xiong et al.'s analysis at initialisation leads one to expect."
       if first_grad[post0] > 1.1 * first_grad[pre0] else
       ": on this build post-LN's is not clearly the larger.")))
ch.paper("xiong2020", "pre-LN trains without warm-up; post-LN needs it",
         theirs="warm-up essential for post-LN; pre-LN without it comparable (abstract)",
         ours=f"validation accuracy: pre-LN, no warm-up {accs[pre0]:.1%}; post-LN {accs[post0]:.1%} without "
              f"warm-up, {accs[post_w]:.1%} with it",
         section="the-paper-reproduced")


def draw_ln(theme):
    c = colors(theme)
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.3))
    window = ch.pick(10, 2)
    styles = ["-", "--", "-", "--"]
    for i, (label, (loss, grads, _)) in enumerate(zip(ln_labels, ln_results)):
        color = c["palette"][0] if i < 2 else c["palette"][1]
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        axes[0].plot(np.arange(len(smooth)) + window, smooth, styles[i], color=color, lw=1.2, label=label)
        axes[1].plot(np.arange(1, len(grads) + 1), grads, styles[i], color=color, lw=0.9)
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel("training loss")
    axes[1].set_xlabel("training step")
    axes[1].set_ylabel("gradient norm (no clipping)")
    axes[1].set_yscale("log")   # spikes an order of magnitude above the usual norm
    axes[1].yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1, 3)))
    axes[1].yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axes[1].yaxis.set_minor_formatter(ticker.NullFormatter())
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


ch.figure("post-pre-ln", draw_ln)

# %% [markdown]
# ## 10. The paper's numbers beside ours

# %%
ch.table("paper-vaswani", ["setting", "Vaswani et al. (base model, §3, §5.2–5.4, Table 3)", "ours"], [
    ["$d_{\\text{model}}$, heads, layers, $d_{\\text{ff}}$", "512, 8, 6 + 6, 2048",
     f"{D_MODEL}, {HEADS}, {LAYERS} + {LAYERS}, {D_FF}"],
    ["normalisation", "post-LN", "pre-LN"],
    ["dropout, label smoothing", "0.1, 0.1", f"{DROPOUT}, {LABEL_SMOOTHING}"],
    ["output projection", "tied to the embeddings", "tied" if TIE_OUTPUT else "separate"],
    ["optimiser", "Adam, β = (0.9, 0.98)", "AdamW, β = (0.9, 0.98), weight decay 0.01"],
    ["schedule", "Noam, 4000 warm-up steps", f"{WARMUP} warm-up steps + cosine"],
    ["training", "100,000 steps", f"{STEPS} steps, {train_seconds['transformer']:.0f} s on {ch.device.type.upper()}"],
    ["parameters", "65 million", f"{params(transformer):,}"],
], align="lll")

# %% [markdown]
# ## 11. Exercises

# %%
# --8<-- [start:exercise-1]
from attnbook.models.transformer import RMSNorm

gen = torch.Generator().manual_seed(1)
x = torch.randn(3, 5, 8, generator=gen, dtype=torch.float64)
centred = x - x.mean(dim=-1, keepdim=True)
layer_norm = torch.nn.LayerNorm(8, eps=1e-6, elementwise_affine=False, dtype=torch.float64)
rms_gap = (RMSNorm(8, eps=1e-6).double()(centred) - layer_norm(centred)).abs().max().item()
raw_gap = (RMSNorm(8, eps=1e-6).double()(x) - layer_norm(x)).abs().max().item()
ch.markdown("exercise-1", f"On centred vectors: largest difference `{rms_gap:.1e}`; on the raw "
            f"vectors: `{raw_gap:.2f}`.")
# --8<-- [end:exercise-1]

# %%
# --8<-- [start:exercise-2]
from attnbook.models.transformer import FeedForward, SwiGLU

relu_ffn = FeedForward(512, 2048)
swiglu = SwiGLU(512, 1365)               # about 2/3 of 2048
count = {name: sum(p.numel() for p in m.parameters()) for name, m in
         (("ReLU, d_ff = 2048", relu_ffn), ("SwiGLU, d_ff = 1365", swiglu))}
ch.markdown("exercise-2", "; ".join(f"{name}: {n:,} parameters" for name, n in count.items()) + ".")
# --8<-- [end:exercise-2]

# %%
# --8<-- [start:exercise-3]
pair = test_pairs[TEST_BINS[0]][0]
b = task.batch([pair])
src, tgt_in = b.src.to(ch.device), b.tgt_in.to(ch.device)
changed = tgt_in.clone()
changed[0, -1] = (changed[0, -1] + 1) % len(task.target_vocab)   # change the last input word
with torch.no_grad():
    before, after = transformer(src, tgt_in), transformer(src, changed)
earlier = (before[0, :-1] - after[0, :-1]).abs().max().item()
last = (before[0, -1] - after[0, -1]).abs().max().item()
ch.markdown("exercise-3", f"Largest change of the logits at the earlier positions: `{earlier:.1e}`; "
            f"at the last position: `{last:.2f}`.")
# --8<-- [end:exercise-3]

# %%
# --8<-- [start:exercise-4]
def noam_run(steps, checkpoint=None, resume=False):
    """A one-layer model under the Noam schedule, which does not depend on the total
    number of steps: 3 steps and then 3 more is the same schedule as 6 at once."""
    ch.seed(0)
    model = make_transformer(True, 1)
    cfg = TrainConfig(steps=steps, lr=1.0, schedule="noam", d_model=D_MODEL, warmup_steps=4,
                      label_smoothing=0.1, progress=False, seed=0)
    return train(model, transformer_batch, cfg, device="cpu", checkpoint=checkpoint,
                 resume=resume).loss


with tempfile.TemporaryDirectory() as folder:
    at_once = noam_run(6)
    in_two = noam_run(3, Path(folder) / "run.pt") + noam_run(6, Path(folder) / "run.pt", resume=True)
same = at_once == in_two
ch.markdown("exercise-4", f"Losses of 6 steps at once: `{[round(x, 6) for x in at_once]}`; "
            f"3 steps, checkpoint, 3 more: `{[round(x, 6) for x in in_two]}`; identical: `{same}`.")
# --8<-- [end:exercise-4]

# %%
# --8<-- [start:exercise-5]
warmup, d_model = 4000, 512
rates = [noam(s, d_model=d_model, warmup_steps=warmup) for s in range(1, 20_001)]
peak_step = int(np.argmax(rates)) + 1
ch.markdown("exercise-5", f"Peak at step `{peak_step}` with `{max(rates):.6e}`; "
            f"$(d_{{\\text{{model}}}} \\cdot w)^{{-1/2}}$ = `{(d_model * warmup) ** -0.5:.6e}`.")
# --8<-- [end:exercise-5]

# %%
ch.json("summary", {
    "bleu_all": {k: results[k][1] for k in models},
    "quality": {k: {bin_name(b): list(results[k][0][b]) for b in TEST_BINS} for k in models},
    "train_seconds": train_seconds,
    "time_to_target": {k: time_to_target(k) for k in models},
    "sentences_per_second": speed,
    "ln": {label: {"final_loss": float(final[label]), "valid_accuracy": accs[label]}
           for label in ln_labels},
})
print("wrote", ", ".join(sorted(ch.written)))
