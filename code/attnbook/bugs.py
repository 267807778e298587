"""Wrong attention code, kept on purpose: each function here is a bug the book has met.

The appendix "Attention bugs" shows each one beside what ``python -m attnbook.check``
prints for it, and tests/test_attention_bugs.py checks that the check fails on every
function here and passes on the library's. ``BUGS`` at the end lists them. Do not import
anything from here into working code.
"""
import math
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F


# --8<-- [start:scale_by_d_model]
def mha_scaled_by_d_model(x, w_q, w_k, w_v, w_o, num_heads):
    batch, seq, d_model = x.shape
    q, k, v = ((x @ w).view(batch, seq, num_heads, -1).transpose(1, 2) for w in (w_q, w_k, w_v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_model)  # BUG: one head has d_model / num_heads
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).reshape(batch, seq, d_model) @ w_o
# --8<-- [end:scale_by_d_model]


# --8<-- [start:merge_without_transpose]
def merge_heads_without_transpose(x):
    batch, heads, seq, head_dim = x.shape
    return x.reshape(batch, seq, heads * head_dim)  # BUG: memory order is (heads, seq), not (seq, heads)
# --8<-- [end:merge_without_transpose]


# --8<-- [start:is_causal_top_left]
def causal_attention_with_is_causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # BUG: top-left when q_len < k_len
# --8<-- [end:is_causal_top_left]


# --8<-- [start:mask_slicing]
FULL = torch.ones(2048, 2048, dtype=torch.bool).tril()  # built once for the longest context


def causal_mask_sliced(q_len, k_len):
    return FULL[:q_len, :k_len]  # BUG: the new queries are rows k_len - q_len ... k_len - 1
# --8<-- [end:mask_slicing]


# --8<-- [start:nan_rows]
def attention_nan_on_empty_rows(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v  # BUG: a row of -inf gives exp(-inf)/0 = NaN
# --8<-- [end:nan_rows]


# --8<-- [start:softmax_axis]
def attention_softmax_over_queries(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-2) @ v  # BUG: normalises each key's column over the queries
# --8<-- [end:softmax_axis]


# --8<-- [start:mask_inverted]
def attention_mask_inverted(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))  # BUG: hides the keys the mask allows
    return torch.softmax(scores, dim=-1) @ v
# --8<-- [end:mask_inverted]


# --8<-- [start:dropout_weights]
def attention_weights_after_dropout(q, k, v, p, generator):
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    keep = torch.rand(weights.shape, generator=generator, dtype=weights.dtype) >= p
    weights = weights * keep / (1 - p)  # BUG: the returned weights are the dropped ones
    return weights @ v, weights
# --8<-- [end:dropout_weights]


# --8<-- [start:no_causal_mask]
def causal_attention_without_mask(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)  # BUG: every position sees the whole sequence
# --8<-- [end:no_causal_mask]


# --8<-- [start:rope_interleaved]
def rope_interleaved(x, position_ids, base=10000.0):
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    angles = position_ids.double()[:, None] * freqs
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]  # BUG: pairs (2i, 2i+1); the weights expect (i, i + d/2)
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
# --8<-- [end:rope_interleaved]


# --8<-- [start:gqa_repeat]
def repeat_kv_tiled(x, num_heads):
    return x.repeat(1, num_heads // x.shape[1], 1, 1)  # BUG: heads come out 0, 1, 0, 1, ... not 0, 0, 1, 1
# --8<-- [end:gqa_repeat]


# --8<-- [start:kernel_sign]
def nadaraya_watson_wrong_sign(queries, keys, values, bandwidth):
    sq_dist = ((queries[:, None, :] - keys[None, :, :]) ** 2).sum(-1)
    weights = torch.softmax(sq_dist / (2 * bandwidth ** 2), dim=-1)  # BUG: the score is MINUS the distance
    return weights @ values
# --8<-- [end:kernel_sign]


# --8<-- [start:additive_no_tanh]
def additive_scores_without_tanh(query, keys, W_q, W_k, v):
    projected = (query @ W_q.T)[:, :, None, :] + (keys @ W_k.T)[:, None, :, :]
    return projected @ v  # BUG: no tanh, so the query's share is the same for every key
# --8<-- [end:additive_no_tanh]


# --8<-- [start:top_p_drops_crossing]
def top_p_drops_the_crossing_token(logits, p):
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    mass = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop_sorted = mass > p  # BUG: drops the token that takes the mass past p (and, if it is the first, all)
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
# --8<-- [end:top_p_drops_crossing]


# --8<-- [start:key_chunks]
def attention_in_key_chunks_softmaxed_apart(q, k, v, chunk_size):
    outs = []
    for start in range(0, k.shape[2], chunk_size):  # BUG: chunks the KEYS, one softmax per chunk
        kc, vc = k[:, :, start:start + chunk_size], v[:, :, start:start + chunk_size]
        outs.append(F.scaled_dot_product_attention(q, kc, vc))
    return torch.stack(outs).mean(0)  # ... and an average of partial answers is not the answer
# --8<-- [end:key_chunks]


# --8<-- [start:causal_window_future]
def sliding_window_mask_with_future(seq_len, window, causal):
    offset = torch.arange(seq_len)[None, :] - torch.arange(seq_len)[:, None]  # j - i
    return offset.abs() <= window  # BUG: ignores causal, so a causal model sees `window` future keys
# --8<-- [end:causal_window_future]


# --8<-- [start:linformer_queries]
def linformer_projecting_queries(q, k, v, e_proj, f_proj):
    return F.scaled_dot_product_attention(e_proj @ q, e_proj @ k, f_proj @ v)  # BUG: n queries become k
# --8<-- [end:linformer_queries]


# --8<-- [start:linear_normaliser]
def causal_linear_attention_global_normaliser(q, k, v):
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    state = torch.einsum("bhnd,bhne->bhnde", phi_k, v).cumsum(dim=2)     # causal numerator: right
    normaliser = phi_k.sum(dim=2, keepdim=True)                          # BUG: sums over ALL keys
    numerator = torch.einsum("bhnd,bhnde->bhne", phi_q, state)
    return numerator / (phi_q * normaliser).sum(-1, keepdim=True)
# --8<-- [end:linear_normaliser]


# --8<-- [start:lsh_half]
def lsh_buckets_half(x, rotations):
    return (x @ rotations).argmax(dim=-1)  # BUG: without -xR only b/2 of the b buckets exist
# --8<-- [end:lsh_half]


# --8<-- [start:online_no_rescale]
def online_softmax_without_rescaling(q, k, v, block_size):
    scale = q.shape[-1] ** -0.5
    running_max = torch.full(q.shape[:-1] + (1,), float("-inf"), dtype=q.dtype)
    running_sum = torch.zeros_like(running_max)
    out = torch.zeros(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype)
    for start in range(0, k.shape[2], block_size):
        scores = q @ k[:, :, start:start + block_size].transpose(-2, -1) * scale
        running_max = torch.maximum(running_max, scores.amax(-1, keepdim=True))
        weights = torch.exp(scores - running_max)
        running_sum = running_sum + weights.sum(-1, keepdim=True)  # BUG: earlier terms used an older maximum
        out = out + weights @ v[:, :, start:start + block_size]      # BUG: ... and so did the output
    return out / running_sum
# --8<-- [end:online_no_rescale]


# --8<-- [start:fit_linear_axes]
def fit_exponent_without_logs(lengths, times):
    slope, _ = np.polyfit(np.asarray(lengths, dtype=float), np.asarray(times, dtype=float), deg=1)
    return float(slope)  # BUG: the slope of t against n is a rate in seconds per token, not an exponent
# --8<-- [end:fit_linear_axes]


# --8<-- [start:length_penalty_multiplied]
def normalised_score_multiplied(log_prob, length, alpha):
    return log_prob * ((5 + length) / 6) ** alpha  # BUG: log-probabilities are negative: this punishes length
# --8<-- [end:length_penalty_multiplied]


# --8<-- [start:patchify_reshape]
def patchify_by_reshape(images, patch_size):
    batch, channels, height, width = images.shape
    count = (height // patch_size) * (width // patch_size)
    return images.reshape(batch, count, -1)  # BUG: consecutive pixels in memory are a row, not a block
# --8<-- [end:patchify_reshape]


# --8<-- [start:spectrogram_no_window]
def power_spectrogram_without_window(wave, n_fft, hop):
    frames = wave.unfold(-1, n_fft, hop)  # BUG: no window: each frame's edges are a jump, and energy leaks
    return torch.fft.rfft(frames, dim=-1).abs() ** 2
# --8<-- [end:spectrogram_no_window]


# --8<-- [start:rollout_order]
def rollout_in_the_wrong_order(attentions):
    rollout = None
    for attn in attentions:
        eye = torch.eye(attn.shape[-1], dtype=attn.dtype)
        mixed = 0.5 * eye + 0.5 * attn.mean(dim=1)
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed if rollout is None else rollout @ mixed  # BUG: the new (higher) layer goes on the left
    return rollout
# --8<-- [end:rollout_order]


# --8<-- [start:induction_duplicate]
def induction_score_off_by_one(attn, period, offset):
    rows = torch.arange(offset + period, offset + 2 * period)
    return attn[..., rows, rows - period].mean(-1)  # BUG: the earlier copy itself, not the token after it
# --8<-- [end:induction_duplicate]


# --8<-- [start:neuron_unscaled]
def score_contributions_unscaled(q, k):
    return q[:, None, :] * k[None, :, :]  # BUG: sums to q·k, not to the scaled score the softmax sees
# --8<-- [end:neuron_unscaled]


# --8<-- [start:padding_on_queries]
def padding_mask_on_queries(attention_mask):
    return attention_mask.bool()[:, None, :, None]  # BUG: hides padded QUERIES; every query still sees the padding
# --8<-- [end:padding_on_queries]


class Bug(NamedTuple):
    slug: str          # the snippet section above, and the appendix's anchor
    title: str
    exercise: str      # the attnbook.check exercise that catches it
    failing: str       # the name of the check that must fail
    wrong: Callable


BUGS = [
    Bug("kernel_sign", "A kernel score with the wrong sign", "nadaraya-watson",
        "near training points get the most weight", nadaraya_watson_wrong_sign),
    Bug("additive_no_tanh", "Additive attention without its nonlinearity", "additive-scores",
        "the weights depend on the query", additive_scores_without_tanh),
    Bug("scale_by_d_model", "Scaling by d_model instead of d_head", "multi-head",
        "equals torch's multi-head attention", mha_scaled_by_d_model),
    Bug("merge_without_transpose", "Joining heads in the wrong order", "merge-heads",
        "each token's heads end up side by side", merge_heads_without_transpose),
    Bug("softmax_axis", "The softmax over the wrong axis", "sdpa",
        "softmax normalises over the keys", attention_softmax_over_queries),
    Bug("mask_inverted", "A mask read the other way round", "sdpa",
        "mask: True = may attend", attention_mask_inverted),
    Bug("nan_rows", "Fully masked rows give NaN", "sdpa",
        "a fully masked query gives zeros, not NaN", attention_nan_on_empty_rows),
    Bug("dropout_weights", "Weights returned after dropout", "attention-dropout",
        "the weights returned are the probabilities before dropout", attention_weights_after_dropout),
    Bug("no_causal_mask", "A causal model without its mask", "causal-attention",
        "no position sees a later one", causal_attention_without_mask),
    Bug("is_causal_top_left", "is_causal under a KV cache", "causal-attention",
        "one new query attends to the whole cache", causal_attention_with_is_causal),
    Bug("mask_slicing", "Slicing a precomputed mask under a KV cache", "causal-mask",
        "q_len < k_len (a KV cache): aligned bottom-right", causal_mask_sliced),
    Bug("rope_interleaved", "RoPE layouts mixed", "rope", "the half-split layout", rope_interleaved),
    Bug("gqa_repeat", "GQA heads repeated in the wrong order", "repeat-kv",
        "query head h uses kv head h // (num_heads / kv_heads)", repeat_kv_tiled),
    Bug("top_p_drops_crossing", "Top-p that drops the token crossing p", "top-p",
        "the token that crosses p is kept", top_p_drops_the_crossing_token),
    Bug("key_chunks", "Chunking the keys with one softmax per chunk", "query-chunks",
        "exact for every chunk size", attention_in_key_chunks_softmaxed_apart),
    Bug("causal_window_future", "A causal window that sees the future", "window-mask",
        "the causal window sees no future key", sliding_window_mask_with_future),
    Bug("linformer_queries", "Projecting the queries in Linformer", "linformer",
        "softmax(Q (E K)^T / sqrt(d)) (F V)", linformer_projecting_queries),
    Bug("linear_normaliser", "Causal linear attention with a global normaliser", "causal-linear",
        "causal in numerator and normaliser, and exact", causal_linear_attention_global_normaliser),
    Bug("lsh_half", "Angular LSH with half its buckets", "lsh-buckets",
        "h(x) = argmax([xR, -xR]) over all b buckets", lsh_buckets_half),
    Bug("online_no_rescale", "An online softmax that forgets to rescale", "online-softmax",
        "exact for every block size", online_softmax_without_rescaling),
    Bug("fit_linear_axes", "A scaling exponent fitted on linear axes", "fit-exponent",
        "the slope in log-log space", fit_exponent_without_logs),
    Bug("padding_on_queries", "A padding mask on the queries", "padding-mask",
        "padded tokens are hidden as keys, from every query", padding_mask_on_queries),
    Bug("induction_duplicate", "An induction score one position off", "induction-score",
        "the weight on the token after the earlier occurrence", induction_score_off_by_one),
    Bug("patchify_reshape", "Patches cut with a reshape", "patchify",
        "each patch is one p x p block", patchify_by_reshape),
    Bug("spectrogram_no_window", "A spectrogram without its window", "spectrogram",
        "|STFT|^2 of Hann-windowed frames", power_spectrogram_without_window),
    Bug("length_penalty_multiplied", "A length penalty that multiplies", "length-penalty",
        "the penalty helps long outputs", normalised_score_multiplied),
    Bug("neuron_unscaled", "A neuron view without the scale", "neuron-view",
        "the products sum to the scaled score", score_contributions_unscaled),
    Bug("rollout_order", "Attention rollout multiplied in the wrong order", "rollout",
        "the layers compose top-down", rollout_in_the_wrong_order),
]
