"""The KV cache: incremental decoding without recomputing the past.

A causal decoder computes, for every layer, keys and values that depend only on the
tokens up to their own position. When a new token arrives, the old keys and values are
exactly what they were one step ago, so they can be kept instead of recomputed: append
k_t and v_t to the cache, then attend with the single new query,

    o_t = softmax(q_t K_{≤t}ᵀ / √d_h) V_{≤t},

where K_{≤t} stacks the keys of positions 0, ..., t (positions count from 0).

Layout as everywhere in the book: the cache holds, per layer, keys and values of shape
``(batch, kv_heads, seq, head_dim)``; masks are boolean with True = may attend. The
cached attention uses ``sdpa(..., causal=True)``, whose causal mask is aligned
bottom-right, so that one new query sees every cached key (``torch``'s own
``is_causal`` aligns top-left and would let it see only the first key).

The cache memory per token is 2 · layers · kv_heads · head_dim · bytes per element
(the 2 is for keys and values); ``attnbook.attention.cache_size`` computes it for real
models, and grouped-query attention (``gqa.py``) shrinks it by sharing kv heads.

``SlidingWindowCache`` bounds the memory instead: a ring buffer of the last ``window``
tokens per layer, for attention in which a query at position p sees only the keys at
p - window, ..., p (``causal_window_mask``).

``SinkWindowCache`` keeps, besides a window of recent tokens, the first few tokens of the
stream for ever ("attention sinks", Xiao et al., 2023); its keys are stored before RoPE
and rotated by their slot in the cache, as StreamingLLM does. ``streaming_attention``
computes the same attention for a whole sequence at once (tested equal, token by token).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import math

from ._checks import check_positive_int, check_qkv, check_rank, check_tensor
from .dot_product import sdpa
from .gqa import grouped_query_attention
from .multihead import MultiHeadAttention, merge_heads, project_heads
from .positional import LearnedPositionalEmbedding, apply_rope

Tensor = torch.Tensor


# --8<-- [start:cache]
class KVCache:
    """Per-layer keys and values of the tokens seen so far.

    ``update(layer, k, v)`` appends the new tokens' k and v, each of shape
    ``(batch, kv_heads, new, head_dim)``, and returns the full
    ``(batch, kv_heads, past + new, head_dim)`` tensors to attend over.
    Appending with ``torch.cat`` copies the past at every step; serving systems
    preallocate a buffer instead, but the arithmetic is the same.
    """

    entry_names = ("k", "v")  # what the two cached tensors are called in messages

    def __init__(self, num_layers: int):
        check_positive_int("num_layers", num_layers)
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self._check(layer, k, v)
        if self.keys[layer] is None:  # first call: the prompt (or first token)
            self.keys[layer], self.values[layer] = k, v
        else:  # later calls: grow along the sequence axis
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        return self.keys[layer], self.values[layer]

    def seq_len(self, layer: int = 0) -> int:
        """Number of tokens cached in ``layer`` (0 before the first update)."""
        keys = self.keys[self._layer_index(layer)]
        return 0 if keys is None else keys.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes held by all cached tensors, keys and values of every layer."""
        tensors = [t for t in self.keys + self.values if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)
# --8<-- [end:cache]

    def mask(self, q_len: int, k_len: int, device=None) -> Tensor | None:
        """Extra boolean mask (q_len, k_len) for the tensors ``update`` returned, True = may
        attend; None here: a full cache needs only the causal mask."""
        return None

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    def __len__(self) -> int:
        return self.seq_len(0)

    def _layer_index(self, layer: int) -> int:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer must be an int, got {layer!r}")
        if not 0 <= layer < self.num_layers:
            raise ValueError(
                f"layer={layer} is out of range for a cache of {self.num_layers} layers")
        return layer

    def _check(self, layer: int, k: Tensor, v: Tensor) -> None:
        self._layer_index(layer)
        k_name, v_name = self.entry_names
        check_rank(k_name, k, 4, "(batch, kv_heads, new, head_dim)")
        check_rank(v_name, v, 4, "(batch, kv_heads, new, head_dim)")
        if k.shape[:3] != v.shape[:3]:
            raise ValueError(f"{k_name} and {v_name} must agree in (batch, kv_heads, new), "
                             f"got {tuple(k.shape)} and {tuple(v.shape)}")
        past_k, past_v = self.keys[layer], self.values[layer]
        if past_k is None:
            return
        for name, new, past in ((k_name, k, past_k), (v_name, v, past_v)):
            if new.shape[:2] != past.shape[:2] or new.shape[3] != past.shape[3]:
                raise ValueError(
                    f"{name} has shape {tuple(new.shape)}, but layer {layer} caches "
                    f"{tuple(past.shape)}: batch, kv_heads and head_dim must stay the same"
                )
            if new.dtype != past.dtype or new.device != past.device:
                raise TypeError(f"{name} is {new.dtype} on {new.device}, but the cache "
                                f"holds {past.dtype} on {past.device}")


# --8<-- [start:window_mask]
def causal_window_mask(q_len: int, k_len: int, window: int, device=None) -> Tensor:
    """Boolean (q_len, k_len), True where query i may attend key j: the last q_len of k_len
    positions are the queries (bottom-right alignment, as for the causal mask), and a query
    at position p sees the keys at p - window, ..., p. For q_len == k_len this is
    ``attention.local.sliding_window_mask(k_len, window, causal=True)``."""
    check_positive_int("window", window)
    if q_len > k_len:
        raise ValueError(f"causal_window_mask needs k_len >= q_len, got q_len={q_len}, k_len={k_len}")
    query_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]  # (q_len, 1)
    key_pos = torch.arange(k_len, device=device)[None, :]                  # (1, k_len)
    return (key_pos <= query_pos) & (key_pos >= query_pos - window)
# --8<-- [end:window_mask]


# --8<-- [start:window_cache]
class SlidingWindowCache(KVCache):
    """A KV cache of fixed size: per layer, a ring buffer of the last ``window`` tokens.

    A query at position p attends to the keys at p - window, ..., p (``causal_window_mask``),
    so the next query never needs more than the ``window`` newest past tokens: slot
    ``position % window`` is overwritten once its token falls out of reach. The memory is
    2 · layers · batch · kv_heads · window · head_dim elements, whatever the length.
    ``update`` returns the kept past (oldest first) followed by the new tokens; ``mask``
    then gives the band that the attention must apply on top of the causal mask.
    """

    def __init__(self, num_layers: int, window: int):
        super().__init__(num_layers)
        self.window = check_positive_int("window", window)
        self.seen = [0] * num_layers  # tokens seen per layer = position of the next token

    def seq_len(self, layer: int = 0) -> int:
        """Tokens seen in ``layer`` (positions), not the at most ``window`` kept."""
        return self.seen[self._layer_index(layer)]

    def kept(self, layer: int) -> tuple[Tensor, Tensor] | None:
        """The kept keys and values, oldest first: (batch, kv_heads, min(seen, window), head_dim)."""
        buffer_k, buffer_v, seen = self.keys[layer], self.values[layer], self.seen[layer]
        if buffer_k is None:
            return None
        if seen <= self.window:  # not wrapped yet: slots 0 .. seen-1 in order
            return buffer_k[:, :, :seen], buffer_v[:, :, :seen]
        oldest = seen % self.window  # the slot written longest ago
        order = lambda t: torch.cat([t[:, :, oldest:], t[:, :, :oldest]], dim=2)  # noqa: E731
        return order(buffer_k), order(buffer_v)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self._check(layer, k, v)
        new, seen = k.shape[2], self.seen[layer]
        past = self.kept(layer)
        keys = k if past is None else torch.cat([past[0], k], dim=2)    # (b, kv, kept + new, d)
        values = v if past is None else torch.cat([past[1], v], dim=2)
        if self.keys[layer] is None:  # allocate the ring once: (batch, kv_heads, window, head_dim)
            shape = (*k.shape[:2], self.window, k.shape[3])
            self.keys[layer] = k.new_zeros(shape)
            self.values[layer] = v.new_zeros(shape)
        last = min(new, self.window)  # only the newest `window` tokens can still be needed
        slots = torch.arange(seen + new - last, seen + new, device=k.device) % self.window
        self.keys[layer][:, :, slots] = k[:, :, new - last:]
        self.values[layer][:, :, slots] = v[:, :, new - last:]
        self.seen[layer] = seen + new
        return keys, values

    def mask(self, q_len: int, k_len: int, device=None) -> Tensor:
        return causal_window_mask(q_len, k_len, self.window, device=device)
# --8<-- [end:window_cache]


# --8<-- [start:sink_cache]
class SinkWindowCache(KVCache):
    """StreamingLLM's cache: the first ``sinks`` tokens for ever, plus the ``window`` most
    recent ones (the newest included), per layer. At most ``sinks + window`` entries.

    Store keys *before* RoPE: ``update`` returns the kept keys and values, oldest first,
    (batch, kv_heads, kept, head_dim), and the caller rotates them by their slot in the
    cache, 0 .. kept-1, and the new query by kept-1. Positions are thus assigned within
    the cache, not in the text: no position ever exceeds ``sinks + window - 1``.
    One token per ``update``: the kept set is the one the newest token attends to.
    """

    def __init__(self, num_layers: int, window: int, sinks: int = 4):
        super().__init__(num_layers)
        self.window = check_positive_int("window", window)
        if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
            raise ValueError(f"sinks must be an int >= 0, got {sinks!r}")
        self.sinks = sinks
        self.seen = [0] * num_layers

    def seq_len(self, layer: int = 0) -> int:
        """Tokens seen in ``layer``, not the at most ``sinks + window`` kept."""
        return self.seen[self._layer_index(layer)]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self._check(layer, k, v)
        if k.shape[2] != 1:
            raise ValueError(f"SinkWindowCache takes one token per update, got {k.shape[2]} "
                             "(use streaming_attention for a whole sequence)")
        keys = k if self.keys[layer] is None else torch.cat([self.keys[layer], k], dim=2)
        values = v if self.values[layer] is None else torch.cat([self.values[layer], v], dim=2)
        if keys.shape[2] > self.sinks + self.window:  # evict the oldest non-sink token
            keep = lambda t: torch.cat([t[:, :, :self.sinks], t[:, :, self.sinks + 1:]], dim=2)  # noqa: E731
            keys, values = keep(keys), keep(values)
        self.keys[layer], self.values[layer] = keys, values
        self.seen[layer] += 1
        return keys, values
# --8<-- [end:sink_cache]


# --8<-- [start:streaming_attention]
def streaming_mask(seq_len: int, window: int, sinks: int = 0, device=None) -> Tensor:
    """Boolean (seq, seq), True where token t may attend token j in a sink + window cache:
    j <= t, and j < sinks or j > t - window."""
    check_positive_int("window", window)
    t = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    return (j <= t) & ((j < sinks) | (j > t - window))


def streaming_attention(q: Tensor, k: Tensor, v: Tensor, *, window: int, sinks: int = 0,
                        base: float = 10000.0, layout: str = "half_split",
                        return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """A whole sequence attended as ``SinkWindowCache`` would, token by token, with RoPE
    positions assigned within the cache. q: (batch, heads, seq, d), k, v: (batch, kv_heads,
    seq, d), all *before* RoPE. Returns (batch, heads, seq, d) [and the weights (batch,
    heads, seq, seq), zero outside ``streaming_mask``].

    Token t's cache holds the sinks j < S at slots j, and the recent tokens j > t - W at
    slots that end with t's own. RoPE scores depend only on slot differences, so:
    recent key j is at distance t - j, as with text positions; sink j is at distance
    min(t, S + W - 1) - j. Sink scores therefore rotate the query by min(t, S + W - 1)
    instead of t. One softmax over both kinds of keys: the queries carry both rotations
    side by side, [q_sink | q_recent], against keys [k_sink | 0] and [0 | k_recent].
    """
    check_qkv(q, k, v)
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
        raise ValueError(f"sinks must be an int >= 0, got {sinks!r}")
    seq, head_dim = q.shape[2], q.shape[3]
    mask = streaming_mask(seq, window, sinks, device=q.device)            # (seq, seq)
    rope = lambda x, pos: apply_rope(x, layout=layout, base=base, position_ids=pos)  # noqa: E731
    positions = torch.arange(seq, device=q.device)
    q_recent, k_recent = rope(q, positions), rope(k, positions)
    s = min(sinks, seq)
    if s == 0:
        return grouped_query_attention(q_recent, k_recent, v, mask, return_weights=return_weights)
    q_sink = rope(q, positions.clamp(max=sinks + window - 1))           # the query's cache slot
    k_sink = rope(k[:, :, :s], positions[:s])                           # sinks keep slots 0 .. S-1
    zeros_s, zeros = k_sink.new_zeros(k_sink.shape), k.new_zeros(k.shape)
    q_both = torch.cat([q_sink, q_recent], dim=-1)                      # (b, h, seq, 2d)
    k_both = torch.cat([torch.cat([k_sink, zeros_s], -1), torch.cat([zeros, k_recent], -1)], dim=2)
    v_both = torch.cat([v[:, :, :s], v], dim=2)                         # (b, kv, S + seq, d)
    # sink columns: j <= t; recent columns: the window only (sinks are counted once, above)
    mask_both = torch.cat([mask[:, :s], mask & (positions[None, :] >= s)], dim=1)
    out = grouped_query_attention(q_both, k_both, v_both, mask_both,
                                  scale=1.0 / math.sqrt(head_dim), return_weights=return_weights)
    if not return_weights:
        return out
    out, weights_both = out                                             # (b, h, seq, S + seq)
    weights = weights_both[..., s:].clone()        # recent columns; j < S are masked there
    weights[..., :s] += weights_both[..., :s]      # the sinks' weights into their own columns
    return out, weights
# --8<-- [end:streaming_attention]


# --8<-- [start:cached_attention]
def causal_self_attention(
    x: Tensor,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor | None,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    num_heads: int,
    num_kv_heads: int | None = None,
    *,
    cache: KVCache | None = None,
    layer: int = 0,
) -> Tensor:
    """Causal multi-head (or grouped-query) self-attention, with an optional KV cache.

    x: (batch, new, d_model), the whole sequence when ``cache`` is None, otherwise only
    the tokens not yet in the cache. Weights are laid out as in ``MultiHeadAttention``
    (W_Q, W_K, W_V stacked in ``in_proj_weight``). Returns (batch, new, d_model).
    """
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    # q: (batch, heads, new, head_dim); k, v: (batch, kv_heads, new, head_dim)
    q, k, v = project_heads(x, None, in_proj_weight, in_proj_bias, num_heads, num_kv_heads)
    mask = None
    if cache is not None:
        k, v = cache.update(layer, k, v)  # (batch, kv_heads, past + new, head_dim)
        mask = cache.mask(q.shape[2], k.shape[2], device=q.device)  # a window's band, or None
    # Bottom-right causal mask: new query i sits at position past + i and sees keys <= it.
    out = sdpa(q, k, v, mask, causal=True)  # (batch, heads, new, head_dim)
    return F.linear(merge_heads(out), out_proj_weight, out_proj_bias)
# --8<-- [end:cached_attention]


class CausalSelfAttention(nn.Module):
    """Causal self-attention that can run on a whole sequence or step by step with a cache.

    The weights live in a ``MultiHeadAttention`` (``self.mha``), so a multi-head layer can
    be converted to grouped-query attention: ``layer.mha = gqa.mha_to_gqa(layer.mha, groups)``.
    """

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int | None = None,
                 *, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.mha = MultiHeadAttention(d_model, num_heads, num_kv_heads, bias=bias,
                                      device=device, dtype=dtype)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        check_rank("x", x, 3, "(batch, seq, d_model)")
        if x.shape[-1] != self.mha.d_model:
            raise ValueError(f"x has {x.shape[-1]} features, expected d_model={self.mha.d_model}")
        m = self.mha
        return causal_self_attention(
            x, m.in_proj_weight, m.in_proj_bias, m.out_proj.weight, m.out_proj.bias,
            m.num_heads, m.num_kv_heads, cache=cache, layer=layer,
        )


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int | None = None,
                 *, mlp_ratio: int = 4, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.norm_attn = nn.LayerNorm(d_model, **factory)
        self.attn = CausalSelfAttention(d_model, num_heads, num_kv_heads, **factory)
        self.norm_mlp = nn.LayerNorm(d_model, **factory)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model, **factory), nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model, **factory),
        )

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.norm_attn(x), cache, layer)
        return x + self.mlp(self.norm_mlp(x))


# --8<-- [start:decoder]
class TinyDecoder(nn.Module):
    """A small causal language model: token embeddings + learned positions, pre-norm blocks.

    ``forward(tokens)`` runs the whole sequence (batch, seq) -> logits (batch, seq, vocab).
    ``forward_step(tokens, cache)`` runs only the new tokens (batch, new) at positions
    ``len(cache) ...`` and appends their keys and values to ``cache``.
    """

    def __init__(self, vocab_size: int, d_model: int, num_heads: int,
                 num_kv_heads: int | None = None, *, num_layers: int = 2, max_len: int = 128,
                 device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.token_embedding = nn.Embedding(vocab_size, d_model, **factory)
        self.position_embedding = LearnedPositionalEmbedding(max_len, d_model, **factory)
        self.blocks = nn.ModuleList(
            DecoderBlock(d_model, num_heads, num_kv_heads, **factory) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model, **factory)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False, **factory)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.blocks))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.forward_step(tokens, cache=None)

    def forward_step(self, tokens: Tensor, cache: KVCache | None) -> Tensor:
        tokens = self._check_tokens(tokens)
        past = 0 if cache is None else len(cache)  # positions continue after the cached ones
        x = self.position_embedding(self.token_embedding(tokens), offset=past)  # (batch, new, d)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        return self.lm_head(self.norm(x))  # (batch, new, vocab)
# --8<-- [end:decoder]

    def _check_tokens(self, tokens: Tensor) -> Tensor:
        check_tensor("tokens", tokens)
        if tokens.dim() == 1:  # one new token per sequence: (batch,) -> (batch, 1)
            tokens = tokens[:, None]
        check_rank("tokens", tokens, 2, "(batch, seq)")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if tokens.shape[1] == 0:
            raise ValueError(f"tokens must hold at least one token per sequence, "
                             f"got shape {tuple(tokens.shape)}")
        return tokens


# --8<-- [start:generate]
@torch.no_grad()
def greedy_generate(model: TinyDecoder, prompt: Tensor, max_new_tokens: int,
                    *, use_cache: bool = True) -> tuple[Tensor, Tensor]:
    """Greedy decoding. Returns the tokens (batch, prompt_len + max_new_tokens) and the
    logits that chose each new token (batch, max_new_tokens, vocab).

    Without a cache, step t reruns the model on all t tokens seen so far; with one, the
    prompt runs once and every later step feeds only the newest token.
    """
    check_positive_int("max_new_tokens", max_new_tokens)
    tokens = model._check_tokens(prompt)
    cache = model.new_cache() if use_cache else None
    step_input, step_logits = tokens, []
    for _ in range(max_new_tokens):
        if use_cache:
            logits = model.forward_step(step_input, cache)[:, -1]  # only new tokens go in
        else:
            logits = model(tokens)[:, -1]  # recompute everything
        next_token = logits.argmax(dim=-1, keepdim=True)  # (batch, 1)
        tokens = torch.cat([tokens, next_token], dim=1)
        step_input = next_token
        step_logits.append(logits)
    return tokens, torch.stack(step_logits, dim=1)
# --8<-- [end:generate]
