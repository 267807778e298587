"""A decoder-only GPT, top to bottom: embeddings, pre-LN blocks, tied read-out, sampling.

The architecture of GPT-2 (Radford et al., 2019) at toy size: token embeddings plus
either a learned position table or rotary positions (RoPE, Su et al., 2021) applied to
queries and keys; ``num_layers`` pre-LN blocks of causal self-attention and a GELU
feed-forward network; a final LayerNorm; logits through the transposed token embedding
(weight tying, Press & Wolf, 2017). ``generate`` samples with a temperature, top-k and
top-p (nucleus, Holtzman et al., 2020) filtering, and a ``KVCache`` from
``attnbook.attention.kv_cache`` (or its sliding-window ring buffer). ``num_kv_heads`` <
``num_heads`` gives grouped-query attention (Ainslie et al., 2023), and ``gpt_to_gqa``
converts a trained multi-head GPT by mean-pooling its key and value heads.

Layout: tokens ``(batch, seq)`` -> logits ``(batch, seq, vocab)``; attention tensors
``(batch, heads, seq, head_dim)``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from ..attention._checks import check_positive_int
from ..attention.dot_product import sdpa
from ..attention.gqa import mha_to_gqa
from ..attention.kv_cache import KVCache, SlidingWindowCache, causal_self_attention
from ..attention.multihead import MultiHeadAttention, merge_heads, project_heads
from ..attention.positional import LearnedPositionalEmbedding, apply_rope
from ..data.text import CharVocab
from .transformer import FeedForward, Residual, _check_dropout, _check_tokens

Tensor = torch.Tensor

POSITIONS = ("learned", "rope")


# --8<-- [start:config]
@dataclass
class GPTConfig:
    """Sizes of a GPT. ``d_ff`` defaults to 4 · d_model; ``positions`` is "learned" or "rope";
    ``num_kv_heads`` < ``num_heads`` shares each key/value head among a group of query heads.

    ``max_len`` bounds the context with either kind of position. ``dropout`` acts on the
    embeddings and on each sub-layer's output (GPT, Radford et al., 2018, §4.1, also dropped
    attention weights; this library does not).
    """

    vocab_size: int
    max_len: int = 128
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    d_ff: int | None = None
    dropout: float = 0.0
    positions: str = "learned"
    tie_weights: bool = True
    num_kv_heads: int | None = None  # grouped-query attention; None = num_heads (multi-head)

    def __post_init__(self):
        for name in ("vocab_size", "max_len", "d_model", "num_heads", "num_layers"):
            check_positive_int(name, getattr(self, name))
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        check_positive_int("num_kv_heads", self.num_kv_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not divisible by "
                             f"num_kv_heads={self.num_kv_heads}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "rope" and (self.d_model // self.num_heads) % 2:
            raise ValueError(f"RoPE rotates channel pairs: head_dim={self.d_model // self.num_heads} "
                             f"must be even")
        self.d_ff = 4 * self.d_model if self.d_ff is None else check_positive_int("d_ff", self.d_ff)
        _check_dropout("dropout", self.dropout)
# --8<-- [end:config]


# --8<-- [start:attention]
class GPTAttention(nn.Module):
    """Causal self-attention; with ``rope``, queries and keys are rotated by their position.

    With a ``cache``, x holds only the new tokens; their positions start after the
    ``cache.seq_len(layer)`` cached ones, and the keys are rotated *before* they are
    cached, so a cached key never needs rotating again.
    """

    def __init__(self, d_model: int, num_heads: int, num_kv_heads: int | None = None, *, rope: bool,
                 device=None, dtype=None):
        super().__init__()
        self.mha = MultiHeadAttention(d_model, num_heads, num_kv_heads, device=device, dtype=dtype)
        self.rope = rope

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        m = self.mha
        if not self.rope:  # the cached causal attention of attnbook.attention.kv_cache
            return causal_self_attention(x, m.in_proj_weight, m.in_proj_bias, m.out_proj.weight,
                                         m.out_proj.bias, m.num_heads, m.num_kv_heads,
                                         cache=cache, layer=layer)
        past = 0 if cache is None else cache.seq_len(layer)
        q, k, v = project_heads(x, None, m.in_proj_weight, m.in_proj_bias, m.num_heads, m.num_kv_heads)
        q, k = apply_rope(q, offset=past), apply_rope(k, offset=past)  # k: (batch, kv_heads, new, head_dim)
        mask = None
        if cache is not None:
            k, v = cache.update(layer, k, v)                           # (batch, kv_heads, past + new, head_dim)
            mask = cache.mask(q.shape[2], k.shape[2], device=q.device)  # a sliding window's band, or None
        out = sdpa(q, k, v, mask, causal=True)                          # bottom-right causal mask
        return m.out_proj(merge_heads(out))
# --8<-- [end:attention]


# --8<-- [start:block]
class GPTBlock(nn.Module):
    """Pre-LN block: x + Dropout(Attn(LN(x))), then x + Dropout(FFN(LN(x))) (GPT-2, §2.3).

    The two ``Residual`` wrappers are those of the encoder-decoder Transformer with
    ``norm_first=True``.
    """

    def __init__(self, config: GPTConfig, *, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.attn = GPTAttention(config.d_model, config.num_heads, config.num_kv_heads,
                                 rope=config.positions == "rope", **factory)
        self.feed_forward = FeedForward(config.d_model, config.d_ff, activation="gelu", **factory)
        self.attn_block = Residual(config.d_model, config.dropout, norm_first=True, **factory)
        self.ff_block = Residual(config.d_model, config.dropout, norm_first=True, **factory)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = self.attn_block(x, lambda h: self.attn(h, cache, layer))
        return self.ff_block(x, self.feed_forward)
# --8<-- [end:block]


# --8<-- [start:model]
class GPT(nn.Module):
    """Tokens (batch, seq) -> next-token logits (batch, seq, vocab).

    ``forward(tokens, cache)``: without a cache, the whole sequence; with one, only the
    tokens that are not cached yet (their keys and values are appended to it).
    """

    def __init__(self, config: GPTConfig, *, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model, **factory)
        self.position_embedding = (LearnedPositionalEmbedding(config.max_len, config.d_model, **factory)
                                   if config.positions == "learned" else None)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(GPTBlock(config, **factory) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(config.d_model, **factory)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False, **factory)
        self.reset_parameters()
        if config.tie_weights:  # one matrix both reads tokens in and scores them out
            self.lm_head.weight = self.token_embedding.weight

    def reset_parameters(self) -> None:
        """N(0, 0.02) for every matrix (GPT, Radford et al., 2018, and GPT-2's code); the
        projections that write into the residual stream scaled down by 1/sqrt(N) for the
        N = 2 · num_layers residual sub-layers (GPT-2, §2.3). Attention biases are zero (set by
        ``MultiHeadAttention``); the feed-forward biases keep PyTorch's default uniform
        initialisation (GPT-2's code sets them to zero), and LayerNorms start at gain 1, bias 0."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, MultiHeadAttention):
                nn.init.normal_(module.in_proj_weight, std=0.02)
        residual_std = 0.02 / math.sqrt(2 * self.config.num_layers)
        for block in self.blocks:
            nn.init.normal_(block.attn.mha.out_proj.weight, std=residual_std)
            nn.init.normal_(block.feed_forward.linear2.weight, std=residual_std)

    def new_cache(self, window: int | None = None) -> KVCache:
        """An empty KV cache; with ``window``, a ``SlidingWindowCache`` that keeps only the
        last ``window`` tokens (each query then sees itself and ``window`` tokens before it)."""
        if window is None:
            return KVCache(self.config.num_layers)
        return SlidingWindowCache(self.config.num_layers, window)

    def forward(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        _check_tokens("tokens", tokens)
        past = 0 if cache is None else len(cache)
        if past + tokens.shape[1] > self.config.max_len:
            raise ValueError(f"positions up to {past + tokens.shape[1] - 1} requested, "
                             f"but max_len={self.config.max_len}")
        x = self.token_embedding(tokens)                                  # (batch, new, d_model)
        if self.position_embedding is not None:
            x = self.position_embedding(x, offset=past)                   # RoPE acts inside attention
        x = self.dropout(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        return self.lm_head(self.norm(x))                                 # (batch, new, vocab)
# --8<-- [end:model]


# --8<-- [start:to_gqa]
@torch.no_grad()
def gpt_to_gqa(model: GPT, num_kv_heads: int) -> GPT:
    """A copy of a multi-head GPT with ``num_kv_heads`` key/value heads per layer, each the
    mean of the K and V projection heads of its group (Ainslie et al., 2023, §2.1 for a single
    head, §2.2 for groups).

    Queries, output projections and everything outside attention are copied unchanged;
    ``num_kv_heads = num_heads`` gives back the same function, 1 gives multi-query attention.
    The copy usually needs a short "uptraining" to recover the quality the pooling lost.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a GPT, got {type(model).__name__}")
    num_heads = model.config.num_heads
    if model.config.num_kv_heads != num_heads:
        raise ValueError(f"model must be multi-head (num_kv_heads == num_heads), got "
                         f"num_heads={num_heads}, num_kv_heads={model.config.num_kv_heads}")
    check_positive_int("num_kv_heads", num_kv_heads)
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not divisible by num_kv_heads={num_kv_heads}")
    grouped = copy.deepcopy(model)  # keeps the tied embedding tied
    grouped.config = replace(model.config, num_kv_heads=num_kv_heads)
    for block in grouped.blocks:
        block.attn.mha = mha_to_gqa(block.attn.mha, num_kv_heads)  # (h + 2 h_kv) d_h rows
    return grouped
# --8<-- [end:to_gqa]


# --8<-- [start:filters]
def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (..., vocab), set the others to -inf.

    Tokens tied with the k-th largest are all kept, so a row may keep more than k.
    """
    check_positive_int("k", k)
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]   # (..., 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probabilities sum to at least p.

    Sorted by decreasing probability, a token is kept when the probability of the tokens
    *before* it is still below p; the most likely token is therefore always kept.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    if p >= 1.0:  # the whole distribution; float32 cumulative sums reach 1 before the tail ends
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs      # (..., vocab), 0 for the first
    drop_sorted = mass_before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)     # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))
# --8<-- [end:filters]


# --8<-- [start:sample]
def sample_next(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """One token per row of logits (batch, vocab) -> (batch,).

    ``temperature`` = 0 takes the arg-max (greedy); otherwise the logits are divided by
    it (below 1 sharpens, above 1 flattens), filtered by top-k then top-p, and sampled.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
# --8<-- [end:sample]


# --8<-- [start:generate]
@torch.no_grad()
def generate(model: GPT, prompt: Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True) -> Tensor:
    """Extend ``prompt`` (batch, prompt_len) by ``max_new_tokens`` sampled tokens.

    With the cache the prompt runs once and every later step feeds the newest token only;
    without it every step reruns the whole sequence. Same tokens either way (up to
    floating-point rounding of the logits). ``generator`` makes the sampling repeatable.
    Dropout is not switched off here: call ``model.eval()`` first.
    """
    check_positive_int("max_new_tokens", max_new_tokens)
    _check_tokens("prompt", prompt)
    if prompt.shape[1] + max_new_tokens > model.config.max_len:
        raise ValueError(f"prompt_len={prompt.shape[1]} + max_new_tokens={max_new_tokens} "
                         f"exceeds max_len={model.config.max_len}")
    cache = model.new_cache() if use_cache else None
    tokens, step_input = prompt, prompt
    for _ in range(max_new_tokens):
        logits = model(step_input if use_cache else tokens, cache)[:, -1]  # (batch, vocab)
        next_token = sample_next(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                 generator=generator)[:, None]
        tokens = torch.cat([tokens, next_token], dim=1)
        step_input = next_token
    return tokens
# --8<-- [end:generate]



# --8<-- [start:save]
def save_gpt(path, model: GPT, vocab: CharVocab, meta: dict | None = None) -> None:
    """Save a trained GPT with what another chapter needs to use it: its config, its
    weights, its character vocabulary and ``meta`` (how it was trained: plain values)."""
    state = {name: t.detach().cpu() for name, t in model.state_dict().items()}
    torch.save({"config": asdict(model.config), "state": state, "chars": "".join(vocab.chars),
                "meta": dict(meta or {})}, path)


def load_gpt(path, *, device=None, **overrides) -> tuple[GPT, CharVocab, dict]:
    """Load a ``save_gpt`` file: ``(model in eval mode, vocab, meta)``. ``overrides``
    replace config fields, e.g. ``dropout=0.0``; a larger ``max_len`` keeps the trained
    rows of a learned position table and leaves the new rows at their initial values."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    config = GPTConfig(**{**saved["config"], **overrides})
    model = GPT(config)
    state = dict(saved["state"])
    key = "position_embedding.table.weight"
    if key in state and state[key].shape[0] < config.max_len:
        table = model.state_dict()[key].clone()
        table[: state[key].shape[0]] = state[key]
        state[key] = table
    model.load_state_dict(state)
    return model.to(device).eval(), CharVocab(saved["chars"]), saved["meta"]
# --8<-- [end:save]
