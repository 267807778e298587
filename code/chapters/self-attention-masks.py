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
# # Self-attention and masks
#
# This notebook produces every figure, table and number of the chapter "Self-attention and
# masks" of *The Attention Book*. It runs on a laptop CPU in about a minute:
#
# ```
# python code/chapters/self-attention-masks.py --device cpu          # or --device cuda, --quick
# ```
#
# 1. two character-level language models trained on the first chapters of *Alice's
#    Adventures in Wonderland*, one with the causal mask and one without;
# 2. permutation equivariance of a trained self-attention layer, with and without positions;
# 3. the mask pitfalls, each measured: NaN from fully masked rows and how it spreads,
#    additive masks with `-inf` and with the dtype minimum, and `is_causal` with a KV cache;
# 4. leakage from the future, measured, and what both models generate;
# 5. the trained model's attention as a graph, and who can reach whom in one and two layers.

# %%
from attnbook.chapter import Chapter

ch = Chapter("self-attention-masks")

# %%
import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.patches import FancyArrowPatch, Patch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from attnbook.attention import causal_mask, padding_mask, sdpa
from attnbook.attention.dot_product import scaled_dot_product_attention
from attnbook.attention.graph import attention_edges, reachability, window_mask
from attnbook.attention.masks import additive_mask
from attnbook.data.text import ALICE, CharVocab, load_text, text_windows
from attnbook.models.char_lm import TinyLM, generate
from attnbook.train import TrainConfig, cross_entropy, train
from attnbook.viz import attention_cmap, colors, heatmap

device = ch.device
ch.one_thread_on_cpu()

# %% [markdown]
# ## 1. Two language models, with and without the causal mask
#
# The text: chapters I–III of *Alice's Adventures in Wonderland* (public domain, shipped in
# `attnbook/data/texts/`). The first 90% is for training, the last 10% is held out.
# Both models are identical (same seed, same batches) except for `causal`.

# %%
text = load_text(ALICE)
vocab = CharVocab(text)
ids = vocab.encode(text)
split = int(0.9 * len(ids))
train_ids, held_ids = ids[:split], ids[split:]

SEQ = 64
D_MODEL, HEADS, LAYERS = ch.pick(64, 32), 4, 2
# No large size: the text has 29k training characters, and more steps overfit them. With batch
# 64 and 3000 steps (`--size large` of an earlier version) the masked model's held-out loss rose
# from 1.88 to 4.03 nats, and the copying lesson of the experiment blurred.
BATCH = ch.pick(32, 16)
STEPS = ch.pick(900, 60)
config = TrainConfig(steps=STEPS, lr=3e-3, warmup_steps=ch.pick(50, 5), min_lr_ratio=0.1, seed=1)


def make_model(causal: bool) -> TinyLM:
    torch.manual_seed(0)  # the same initial weights for both models
    return TinyLM(len(vocab), d_model=D_MODEL, num_heads=HEADS, num_layers=LAYERS, max_len=SEQ, causal=causal)


models, histories = {}, {}
for name, causal in (("with causal mask", True), ("without mask", False)):
    models[name] = make_model(causal)
    histories[name] = train(models[name], lambda g: text_windows(train_ids, BATCH, SEQ, g), config,
                            device=device)
    print(f"{name}: final training loss {histories[name].loss[-1]:.3f} "
          f"({histories[name].seconds:.1f} s)")
masked, unmasked = models["with causal mask"], models["without mask"]

ch.markdown("lm-setup", (
    f"Setup: {len(text):,} characters ({len(vocab)} distinct), {split:,} for training and "
    f"{len(ids) - split:,} held out; {LAYERS} layers, {HEADS} heads, $d_{{\\text{{model}}}} = {D_MODEL}$, "
    f"learned positions, windows of {SEQ} characters, batch {BATCH}, {STEPS} AdamW steps "
    f"(learning rate $3 \\times 10^{{-3}}$, warm-up then cosine), the same seed and the same batches for "
    f"both models. Training took {histories['with causal mask'].seconds:.0f} s and "
    f"{histories['without mask'].seconds:.0f} s on {device.type}."
))

# %% [markdown]
# ## 2. Permutation equivariance of a trained layer
#
# Layer 0's attention of the causal model, taken out of the model and run *without* the
# causal mask on character embeddings, with and without the learned positions added.

# %%
SENTENCE = "the cat sat on the mat"
attn0 = masked.blocks[0].attn.eval()
norm0 = masked.blocks[0].norm1
sentence_ids = vocab.encode(SENTENCE).to(device)
perm = torch.randperm(len(SENTENCE), generator=torch.Generator().manual_seed(4)).to(device)


@torch.no_grad()
def layer(x: torch.Tensor, causal: bool = False):
    out, weights = attn0(norm0(x), causal=causal, need_weights=True)
    return out, weights.mean(dim=1)  # average over heads: rows still sum to 1


@torch.no_grad()
def equivariance_error(with_positions: bool, causal: bool) -> float:
    x = masked.embed(sentence_ids)[None]                               # (1, n, d_model)
    if with_positions:
        x = x + masked.position(torch.arange(len(SENTENCE), device=device))
    permuted_input = masked.embed(sentence_ids[perm])[None]
    if with_positions:  # positions belong to slots, not to tokens: they do not move
        permuted_input = permuted_input + masked.position(torch.arange(len(SENTENCE), device=device))
    out, _ = layer(x, causal)
    out_of_permuted, _ = layer(permuted_input, causal)
    return (out_of_permuted - out[:, perm]).abs().max().item()


output_scale = layer(masked.embed(sentence_ids)[None])[0].abs().max().item()
rows = [
    ["token embeddings only", "none", f"{equivariance_error(False, False):.1e}"],
    ["token embeddings only", "causal", f"{equivariance_error(False, True):.2f}"],
    ["tokens + learned positions", "none", f"{equivariance_error(True, False):.2f}"],
]
ch.table("equivariance", ["input to the trained layer", "mask", r"$\max \lvert f(PX) - P f(X) \rvert$"], rows, align="llr")
ch.paper("vaswani2017", "without recurrence or convolution, order must be injected by positions",
         theirs="stated in §3.5",
         ours=f"permuting the input permutes the output to within {rows[0][2]} without positions, "
              f"off by {rows[2][2]} with them",
         section="the-paper-reproduced")
ch.markdown("equivariance-setup", (
    f"The input is the {len(SENTENCE)} characters of *{SENTENCE}* (through the block's LayerNorm), "
    f"and $P$ is a fixed random permutation of them. For scale: the layer's output entries reach "
    f"{output_scale:.1f} in magnitude, and float32 resolves about 7 significant digits "
    f"(a unit in the last place of 1 is $1.2 \\times 10^{{-7}}$)."
))

with torch.no_grad():
    _, weights_plain = layer(masked.embed(sentence_ids)[None])
    reversed_ids = sentence_ids.flip(0)
    _, weights_reversed = layer(masked.embed(reversed_ids)[None])
    reflect_error = (weights_reversed[0] - weights_plain[0].flip(0).flip(1)).abs().max().item()
chars = [c if c != " " else "␣" for c in SENTENCE]
# repeated characters: how often each occurs, and how far apart their columns (and rows) are
repeats = {c: [i for i, x in enumerate(SENTENCE) if x == c] for c in dict.fromkeys(SENTENCE)}
repeats = {c: where for c, where in repeats.items() if len(where) > 1}
copy_error = max(max((weights_plain[0][:, where] - weights_plain[0][:, where[:1]]).abs().max().item(),
                     (weights_plain[0][where] - weights_plain[0][where[:1]]).abs().max().item())
                 for where in repeats.values())


def draw_equivariance(theme):
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.4))
    heatmap(axes[0], weights_plain[0], chars, chars, theme=theme, vmax=None, title="input as written")
    heatmap(axes[1], weights_reversed[0], chars[::-1], chars[::-1], theme=theme, vmax=None,
            title="input reversed")
    fig.tight_layout()
    return fig


ch.figure("equivariance", draw_equivariance)
ch.markdown("equivariance-numbers", (
    f"The right matrix is the left one turned by half a turn (rows and columns both reversed) "
    f"to within {reflect_error:.0e}: no weight depends on where a character stands, only on which "
    f"character it is. All copies of a repeated character get the same column and the same row "
    f"({'bit for bit' if copy_error == 0 else f'to within {copy_error:.0e}'}); the repeated characters, with their counts, are "
    + ", ".join(f"*{c}* ({len(w)})" if c != " " else f"the space ({len(w)})"
                for c, w in sorted(repeats.items(), key=lambda item: (-len(item[1]), item[0] == " ", item[0])))
    + "."
))

# %% [markdown]
# ## 3. Mask pitfalls, measured
#
# ### 3a. A fully masked row: NaN, and how it spreads

# %%
gen = torch.Generator().manual_seed(7)
batch, heads, seq, head_dim = 2, 2, 6, 8
lengths = torch.tensor([6, 3])
keep = padding_mask(lengths, seq, side="left").to(device)               # (batch, seq)
mask = keep[:, None, None, :] & causal_mask(seq, device=device)         # key padding AND causal
fully_masked_rows = int((~mask.any(dim=-1)).sum())


def naive_attention(q, k, v, mask):
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # all -inf row -> NaN
    return weights @ v


def bare_layers(attend):
    """Outputs of two bare self-attention layers: q = k = v = x, no projections, residual or norm."""
    x = torch.randn(batch, heads, seq, head_dim, generator=torch.Generator().manual_seed(11)).to(device)
    outputs = []
    for _ in range(2):  # self-attention twice, with the same mask, as in a 2-layer model
        x = attend(x, x, x, mask)
        outputs.append(x)
    return outputs


real = keep[:, None, :, None].expand(batch, heads, seq, head_dim)       # real token positions
padded_sequence = (lengths < seq).to(device)[:, None, None, None].expand_as(real)


def nan_counts(outputs):
    return [f"{int(torch.isnan(x[~real]).sum())} / {int(torch.isnan(x[real]).sum())}" for x in outputs]


def sdpa_backend(backend):
    def attend(q, k, v, m):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m)
    return attend


torch_version = torch.__version__.split("+")[0]
where = f"torch {torch_version}, {device.type}"
naive_outputs = bare_layers(naive_attention)
nan_rows = [
    ["`torch.softmax` on $-\\infty$-filled scores", *nan_counts(naive_outputs)],
    ["the book's `stable_softmax`",
     *nan_counts(bare_layers(lambda q, k, v, m: scaled_dot_product_attention(q, k, v, m)))],
]
sdpa_ran, sdpa_failed = {}, []
for backend in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.CUDNN_ATTENTION):
    try:
        with warnings.catch_warnings():  # a backend that cannot run warns before it raises
            warnings.simplefilter("ignore")
            sdpa_ran[backend.name] = bare_layers(sdpa_backend(backend))
    except RuntimeError:
        sdpa_failed.append(backend.name)
for name, outputs in sdpa_ran.items():
    nan_rows.append([f"`F.scaled_dot_product_attention`, `{name}` backend ({where})", *nan_counts(outputs)])
ch.table("nan-spread", ["softmax", "NaN after layer 1 (padding / real)", "NaN after layer 2 (padding / real)"],
         nan_rows, align="lrr")
real_count = int(real.sum())
real_in_padded = int((real & padded_sequence).sum())
ch.markdown("nan-spread-setup", (
    f"Two sequences of lengths {' and '.join(map(str, lengths.tolist()))}, left-padded to {seq}, "
    f"{heads} heads of size {head_dim}; the mask is key padding AND causal, which leaves "
    f"{fully_masked_rows} (batch, head-independent) query rows with no key at all. Each layer is bare "
    f"attention: $Q$, $K$ and $V$ are all the previous layer's output, with no projections, residual or "
    f"LayerNorm. Counts are "
    f"entries of the `(batch, heads, seq, head_dim)` output at padding / real positions; there are "
    f"{int((~real).sum())} padding entries and {real_count} real ones, {real_in_padded} of them in the "
    f"padded sequence. Run with {where}."
))

layer1, layer2 = naive_outputs
nan_real_padded = int(torch.isnan(layer2[real & padded_sequence]).sum())
nan_real_full = int(torch.isnan(layer2[real & ~padded_sequence]).sum())
spread = (
    f"With the plain softmax, after one layer {int(torch.isnan(layer1[~real]).sum())} of the "
    f"{int((~real).sum())} padding entries and {int(torch.isnan(layer1[real]).sum())} real ones are NaN; "
    f"after the second, {nan_real_padded} of the {real_in_padded} real entries of the padded sequence are NaN "
    f"and {nan_real_full} of the {real_count - real_in_padded} real entries of the sequence without padding"
)
spread += (": the NaN reaches every real token that has a padding key in its past, and no other."
           if nan_real_padded == real_in_padded and nan_real_full == 0 else ".")


def empty_row_outputs(outputs):
    first = outputs[0][~real]
    if torch.isnan(first).any():
        return "NaN"
    return "zeros" if torch.all(first == 0) else "nonzero values"


by_result = {}
for name, outputs in sdpa_ran.items():
    by_result.setdefault(empty_row_outputs(outputs), []).append(f"`{name}`")
measured = "; ".join(f"the {' and '.join(names)} backend{'s' if len(names) > 1 else ''} returned {result}"
                     for result, names in by_result.items())
ch.markdown("nan-spread-numbers", (
    spread + f" For the empty rows, on {device.type} with torch {torch_version}, {measured} at the padding positions after layer 1"
    + (f" ({', '.join(f'`{n}`' for n in sdpa_failed)} cannot run this input here)" if sdpa_failed else "")
    + "."
))

# %% [markdown]
# ### 3b. Additive masks: `-inf` against the dtype minimum

# %%
q = torch.randn(1, 1, 4, 8, generator=gen)
k = torch.randn(1, 1, 5, 8, generator=gen)
v = torch.randn(1, 1, 5, 8, generator=gen)
keep_rows = torch.ones(4, 5, dtype=torch.bool)
keep_rows[0] = False          # query 0 may attend nothing
keep_rows[1, 3:] = False      # query 1 may attend keys 0..2
scores32 = (q @ k.transpose(-2, -1))[0, 0] / math.sqrt(8)


def row_report(weights):
    nan = bool(torch.isnan(weights[0]).any())
    if nan:
        return "NaN"
    if torch.allclose(weights[0], torch.full_like(weights[0], 1 / weights.shape[-1])):
        return "uniform $1/m$ (reads padding)"
    if float(weights[0].abs().sum()) == 0.0:
        return "zeros"
    return "other"


additive_rows = []
for label, fill in (("$-\\infty$", "-inf"), ("`finfo(float32).min`", "min")):
    weights = torch.softmax(scores32 + additive_mask(keep_rows, torch.float32, fill=fill), dim=-1)
    other_error = (weights[1:] - scaled_dot_product_attention(q, k, v, keep_rows, return_weights=True)[1][0, 0, 1:]).abs().max().item()
    additive_rows.append([label, row_report(weights), f"{other_error:.0e}"])
twice = additive_mask(keep_rows, torch.float32, fill="min") + additive_mask(keep_rows, torch.float32, fill="min")
weights_twice = torch.softmax(scores32 + twice, dim=-1)
additive_rows.append(["`finfo(float32).min`, the same mask added to itself", row_report(weights_twice),
                      f"{(weights_twice[1:] - scaled_dot_product_attention(q, k, v, keep_rows, return_weights=True)[1][0, 0, 1:]).abs().max().item():.0e}"])
scores16 = (scores32 * 8).half()   # sharper scores, as after training, in float16
weights16 = torch.softmax((scores16 + additive_mask(keep_rows, torch.float16, fill="min")).float(), dim=-1)
error16 = (weights16[1:] - torch.softmax(scores16.float().masked_fill(~keep_rows, float("-inf")), -1)[1:]).abs().max().item()
additive_rows.append(["`finfo(float16).min` on float16 scores", row_report(weights16),
                      f"{error16:.0e}" if error16 > 0 else "0"])
min16 = torch.tensor(torch.finfo(torch.float16).min, dtype=torch.float16)
overflow16 = {s: (min16 + torch.tensor(s, dtype=torch.float16)).item() for s in (-15.0, -17.0)}
ch.table("additive", ["additive mask value", "fully masked row becomes", "max error on the other rows"],
         additive_rows, align="llr")
ch.markdown("additive-numbers", (
    f"Four queries, five keys; query 0 may attend nothing. Adding the same `finfo(float32).min` mask to "
    f"itself gives {int(torch.isinf(twice).sum())} entries equal to $-\\infty$, every one of the "
    f"{int((~keep_rows).sum())} masked entries, because each is hidden twice. In float16, "
    f"`finfo.min` + (−15) = {overflow16[-15.0]:.0f} but `finfo.min` + (−17) = {overflow16[-17.0]}: a masked "
    f"score below about −16 overflows on its own. The errors are against the book's boolean-mask attention."
))

# %% [markdown]
# A real padding mask and a real causal mask differ, so only some entries are hidden twice.
# Left padding (3 of 6 tokens) plus causal, both as additive `finfo(float32).min` masks.

# %%
n_pc, pad_pc = 6, 3
keep_pad = padding_mask(torch.tensor([n_pc - pad_pc]), n_pc, side="left")[0]     # (k_len,)
pad_keep, causal_keep = keep_pad[None, :].expand(n_pc, n_pc), causal_mask(n_pc)
both = (additive_mask(pad_keep, torch.float32, fill="min")
        + additive_mask(causal_keep, torch.float32, fill="min"))                # padding + causal
scores_pc = torch.randn(n_pc, n_pc, generator=gen)
weights_pc = torch.softmax(scores_pc + both, dim=-1)
reference_pc = torch.softmax(scores_pc.masked_fill(~(pad_keep & causal_keep), float("-inf")), dim=-1)
real_rows = keep_pad                                  # queries that are real tokens
future_real = (torch.arange(n_pc)[None, :] > torch.arange(n_pc)[:, None]) & keep_pad[None, :]
pc_rows = []
for i in range(pad_pc):
    hidden_twice = int(torch.isinf(both[i]).sum())
    pc_rows.append([f"{i} (padding)", f"{hidden_twice} of {n_pc}",
                    f"{float(weights_pc[i, ~keep_pad].sum()):.2f}", f"{float(weights_pc[i, future_real[i]].sum()):.2f}",
                    "yes" if torch.isnan(weights_pc[i]).any() else "no"])
ch.table("additive-two-masks", ["query", "keys hidden by both masks ($-\\infty$)", "weight on padding keys",
                                "weight on future real tokens", "NaN"], pc_rows, align="lrrrr")
real_error = (weights_pc[real_rows] - reference_pc[real_rows]).abs().max().item()
future_weight = float(weights_pc[0, future_real[0]].sum())
any_nan = bool(torch.isnan(weights_pc).any())
ch.markdown("additive-two-masks-numbers", (
    f"One sequence of {n_pc - pad_pc} real tokens, left-padded to {n_pc}; the key padding mask and the causal "
    f"mask are each built with `finfo(float32).min` and added. "
    + ("No row is NaN. " if not any_nan else "Some rows are NaN. ")
    + f"Padding query 0 puts {future_weight:.2f} of its weight on the {int(future_real[0].sum())} real tokens "
    f"that lie in its future: a row with no allowed key ends up uniform over the keys hidden only once, "
    f"here including tokens the causal mask was meant to hide. On the real queries, which have allowed keys, "
    f"the added masks give the weights of the boolean mask "
    f"{'bit for bit' if real_error == 0 else f'to within {real_error:.0e}'}."
))

# %% [markdown]
# ### 3c. `is_causal` with a KV cache: chunked prefill
#
# A sequence processed in chunks, each chunk's queries attending to all keys so far.
# The right answer is the full causal attention over the whole sequence.

# %%
total, chunk = 12, 4
qc = torch.randn(1, 2, total, 8, generator=gen)
kc = torch.randn(1, 2, total, 8, generator=gen)
vc = torch.randn(1, 2, total, 8, generator=gen)
reference = sdpa(qc, kc, vc, causal=True)


def chunked(attend):
    outs = []
    for start in range(0, total, chunk):
        stop = start + chunk
        outs.append(attend(qc[:, :, start:stop], kc[:, :, :stop], vc[:, :, :stop]))
    return torch.cat(outs, dim=2)


ways = {
    "`is_causal=True` (top-left)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    "`attn_mask=causal_lower_right(n, m)`": lambda q, k, v: F.scaled_dot_product_attention(
        q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2])),
    "the book's `sdpa(..., causal=True)`": lambda q, k, v: sdpa(q, k, v, causal=True),
}
chunk_rows = []
for label, attend in ways.items():
    error = (chunked(attend) - reference).abs().max().item()
    chunk_rows.append([label, f"{error:.0e}" if error > 0 else "0"])
ch.table("chunked-prefill", ["mask for each chunk (n = 4 queries, m = 4, 8, 12 keys)",
                             "max error against full causal attention"], chunk_rows, align="lr")

# %% [markdown]
# ## 4. No leakage from the future, measured

# %%
@torch.no_grad()
def held_out_losses(model, count: int = 64):
    model.eval()
    g = torch.Generator().manual_seed(123)
    inputs, targets = text_windows(held_ids, count, SEQ, g)
    logits = model(inputs.to(device)).float().cpu()
    every = cross_entropy(logits, targets).item()
    last = cross_entropy(logits[:, -1], targets[:, -1]).item()
    # perturb everything after position t: do the predictions at positions <= t move?
    t = SEQ // 2
    changed = inputs.clone()
    changed[:, t + 1:] = torch.randint(0, len(vocab), changed[:, t + 1:].shape, generator=g)
    moved = (model(changed.to(device)).float().cpu()[:, :t + 1] - logits[:, :t + 1]).abs().max().item()
    return every, last, moved


leak_rows, leak = [], {}
for name, model in models.items():
    every, last, moved = held_out_losses(model)
    leak[name] = (every, last, moved)
    leak_rows.append([name, f"{histories[name].loss[-1]:.3f}", f"{every:.3f}", f"{last:.3f}",
                      "0 (bit-identical)" if moved == 0 else f"{moved:.2f}"])
ch.table("leakage", ["model", "training loss (last step)", "held-out loss, all positions",
                     "held-out loss, last position only", f"max change of logits at positions ≤ {SEQ // 2} when the inputs after position {SEQ // 2} change"],
         leak_rows, align="lrrrr")
ch.markdown("leakage-setup", (
    f"Losses in nats per character (uniform guessing over {len(vocab)} characters costs "
    f"$\\ln {len(vocab)} = {math.log(len(vocab)):.2f}$), on 64 held-out windows of {SEQ} characters. "
    f"The last position of a window is the only one whose answer is not among the inputs, for either model. "
    f"The last column perturbs every input after one cut position, {SEQ // 2} (positions count from 0)."
))
every_u, last_u, _ = leak["without mask"]
every_m, last_m, _ = leak["with causal mask"]
verdict = (
    f"Without the mask, the held-out loss over all positions is {every_u:.2f} nats, "
    f"{'far below' if every_u < 0.5 * every_m else 'below'} the honest model's {every_m:.2f}; "
    f"at the last position, where there is nothing to copy, it is {last_u:.2f} against {last_m:.2f}. "
    + (("The unmasked model did learn something about the text (at the last position it beats uniform "
        f"guessing, {math.log(len(vocab)):.2f}), but less than the masked model; most of its low loss over all "
        "positions came from reading the next input."
        if last_u < math.log(len(vocab)) else
        "At the last position the unmasked model is no better than uniform guessing: it learned to read the "
        "next input, not the text.")
       if last_u > last_m else
       "At this size the unmasked model is not worse at the last position; the copying still shows in the gap "
       "between its two columns.")
)
ch.markdown("leakage-verdict", verdict)
moved_masked = leak["with causal mask"][2]
ch.paper("vaswani2017", "the causal mask and the one-position offset: prediction i uses positions < i only",
         theirs="stated in §3.1, masked to -inf before the softmax (§3.2.3)",
         ours=("logits before the cut bit-identical when later inputs change" if moved_masked == 0 else
               f"logits before the cut move by up to {moved_masked:.2g} when later inputs change")
              + f"; without the mask the held-out loss drops to {every_u:.2f} nats (honest: {every_m:.2f})",
         section="the-paper-reproduced")


def draw_losses(theme):
    fig, ax = plt.subplots(figsize=(6.8, 3.2))
    pal = colors(theme)["palette"]
    for (name, history), color in zip(histories.items(), pal):
        loss = np.array(history.loss)
        window = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(len(smooth)) + window, smooth, color=color, label=f"{name} (training)")
        ax.axhline(leak[name][1], color=color, linestyle=":", linewidth=1.2,
                   label=f"{name}: held-out, last position")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy (nats / char)")
    ax.legend(fontsize=8, loc="center right")
    ax.grid(True, which="major", linewidth=0.5)
    fig.tight_layout()
    return fig


ch.figure("losses", draw_losses)

# %%
PROMPT = "Alice was "
GEN_STEPS = ch.pick(160, 40)
samples = {}
for name, model in models.items():
    out = generate(model, vocab.encode(PROMPT), GEN_STEPS, torch.Generator().manual_seed(2024), temperature=0.8)
    samples[name] = vocab.decode(out)
    print(f"--- {name} ---\n{samples[name]}\n")
for name, sample in samples.items():
    slug = "generation-masked" if name == "with causal mask" else "generation-unmasked"
    ch.markdown(slug, f'```text\n{sample}\n```')

# %% [markdown]
# ## 5. Attention as a graph
#
# The causal model's heads averaged per layer on a held-out sentence; edges carry weight.

# %%
GRAPH_TEXT = "Alice looked at the Mouse"
THRESHOLD = 0.2
graph_ids = vocab.encode(GRAPH_TEXT).to(device)
with torch.no_grad():
    masked.eval()
    _, layer_weights = masked(graph_ids[None], need_weights=True)
layer_weights = [w[0].mean(dim=0).float().cpu() for w in layer_weights]   # per layer: (n, n)
edges = [attention_edges(w, THRESHOLD) for w in layer_weights]
reach1 = reachability(edges[0])
reach2 = reachability(edges[0], edges[1])
n_graph = len(GRAPH_TEXT)
graph_chars = [c if c != " " else "␣" for c in GRAPH_TEXT]
causal_pairs = n_graph * (n_graph + 1) // 2


ARC_BEND = 0.45
longest_arc = max([1] + [i - j for w in layer_weights for i in range(n_graph) for j in range(i)
                         if float(w[i, j]) >= THRESHOLD])


def draw_graph(theme):
    c = colors(theme)
    data_height, data_width = ARC_BEND * longest_arc / 2 + 1.3, n_graph + 0.6
    fig, axes = plt.subplots(2, 1, figsize=(6.8, 2 * 6.4 * data_height / data_width + 0.8))
    for ax, weights, title in zip(axes, layer_weights, ("layer 1", "layer 2")):
        for j in range(n_graph):
            for i in range(j + 1, n_graph):
                w = float(weights[i, j])
                if w < THRESHOLD:
                    continue
                arrow = FancyArrowPatch((j, 0), (i, 0), connectionstyle=f"arc3,rad={-ARC_BEND}",
                                        arrowstyle="-|>", mutation_scale=6,
                                        color=c["palette"][0], alpha=min(1.0, 0.2 + w), linewidth=0.4 + 2.4 * w)
                ax.add_patch(arrow)
        self_weight = weights.diagonal().numpy()
        ax.scatter(range(n_graph), np.zeros(n_graph), s=10 + 60 * self_weight, color=c["palette"][1], zorder=3)
        for x, ch_ in enumerate(graph_chars):
            ax.text(x, -0.35, ch_, ha="center", va="top", fontsize=9, color=c["fg"])
        ax.set_xlim(-0.8, n_graph - 0.2)
        ax.set_ylim(-1.0, ARC_BEND * longest_arc / 2 + 0.3)
        ax.set_title(f"{title}: edges with weight ≥ {THRESHOLD}", fontsize=10)
        ax.set_aspect("equal")  # arcs bend in display space: keep data and display scales equal
        ax.axis("off")
    fig.tight_layout()
    return fig


ch.figure("graph", draw_graph)


def draw_reach(theme):
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 3.6))
    levels = reach1.float() + reach2.float()   # 2 = one layer, 1 = newly reached with two layers
    heatmap(axes[0], reach1.float(), None, graph_chars, theme=theme, title="after layer 1", xlabel="input j",
            ylabel="output i")
    heatmap(axes[1], levels / 2, None, graph_chars, theme=theme, title="after layers 1 and 2",
            xlabel="input j", ylabel="output i")
    for ax in axes:
        ax.set_xticks(range(n_graph))
        ax.set_xticklabels(graph_chars, fontsize=8)
    cmap = attention_cmap(theme)  # a legend, so the two shades need no words like "light" or "dark"
    axes[1].legend(handles=[Patch(color=cmap(1.0), label="in one layer"),
                            Patch(color=cmap(0.5), label="only through two")],
                   loc="upper right", fontsize=8, frameon=False, labelcolor=colors(theme)["fg"])
    fig.tight_layout()
    return fig


ch.figure("reach", draw_reach, fmt="png")

window = 4
seq_w = n_graph
win = window_mask(seq_w, window)
ch.table("reach-counts", ["edges per layer", "pairs (i, j) with i ≥ j reachable after 1 layer", "after 2 layers"], [
    [f"trained model, weight ≥ {THRESHOLD}", f"{int(reach1.sum())} of {causal_pairs}", f"{int(reach2.sum())} of {causal_pairs}"],
    ["causal mask (every allowed edge)", f"{int(reachability(causal_mask(seq_w)).sum())} of {causal_pairs}",
     f"{int(reachability(causal_mask(seq_w), causal_mask(seq_w)).sum())} of {causal_pairs}"],
    [f"causal window of {window} (chapter 11)", f"{int(reachability(win).sum())} of {causal_pairs}",
     f"{int(reachability(win, win).sum())} of {causal_pairs}"],
], align="lrr")
farthest1 = int((torch.arange(n_graph)[:, None] - torch.arange(n_graph)[None, :])[reach1].max())
farthest2 = int((torch.arange(n_graph)[:, None] - torch.arange(n_graph)[None, :])[reach2].max())
ch.markdown("reach-numbers", (
    f"On the {n_graph} characters of *{GRAPH_TEXT}*, the farthest input an output can depend on through "
    f"edges of weight ≥ {THRESHOLD} lies {farthest1} characters back after one layer and {farthest2} after two."
))

# %% [markdown]
# ## Exercises 3, 4 and 6
# The solutions on the page are these cells and the results they write.

# %%
# --8<-- [start:exercise-3]
empty_rows = {}
for side in ("left", "right"):
    side_keep = padding_mask(torch.tensor([6, 3, 1]), 6, side=side)   # lengths 6, 3, 1 padded to 6
    side_mask = side_keep[:, None, :] & causal_mask(6)                # (batch, q_len, k_len), Eq. (6)
    empty_rows[side] = int((~side_mask.any(dim=-1)).sum())            # query rows with no key
ch.table("exercise-3", ["padding side", "fully masked query rows"],
         [[side, count] for side, count in empty_rows.items()], align="lr")
# --8<-- [end:exercise-3]

# %%
# --8<-- [start:exercise-4]
win20 = window_mask(20, 4)                     # causal window of w = 4 keys over n = 20 tokens
depends = {layers: bool(reachability(*[win20] * layers)[19, 0]) for layers in range(1, 9)}
ch.table("exercise-4", ["layers $L$", "output 19 can depend on input 0"],
         [[layers, "yes" if ok else "no"] for layers, ok in depends.items()], align="rl")
# --8<-- [end:exercise-4]

# %%
# --8<-- [start:exercise-6]
min16 = torch.tensor(torch.finfo(torch.float16).min, dtype=torch.float16)
sums16 = {s: (min16 + torch.tensor(s, dtype=torch.float16)).item() for s in (-15.0, -16.0, -17.0)}
min32 = torch.tensor(torch.finfo(torch.float32).min)
spacing32 = (torch.nextafter(min32, torch.tensor(0.0)) - min32).item()   # gap to the next float32 up
ch.markdown("exercise-6", "\n".join([
    "| $s$ | `finfo(float16).min` + $s$, in float16 |",
    "| --: | --: |",
    *[f"| {s:.0f} | {total:.0f} |" for s, total in sums16.items()],
    "",
    f"Spacing of float32 next to `finfo(float32).min`: {spacing32:.3g}.",
]))
# --8<-- [end:exercise-6]
