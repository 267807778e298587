"""Check your own attention code against a reference, from the command line.

    python -m attnbook.check --list
    python -m attnbook.check sdpa my_attention.py            # the function named in --list
    python -m attnbook.check sdpa my_attention.py:attention  # or name it

Each exercise names a function signature, a reference that does not come from this
library (PyTorch's own functions, or an independent formula), and a list of checks. A
check probes one property (the output's shape, which axis the softmax normalises, the
mask convention, ...) so that a failure says *what* is wrong, with a hint at the usual
cause. The book's appendix "Attention bugs" runs these checks on wrong code.

Conventions are the book's: tensors ``(batch, heads, seq, head_dim)``, rows are vectors,
boolean masks True = may attend.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

__all__ = ["EXERCISES", "CheckFailed", "Exercise", "Result", "load_function", "run_exercise", "main"]


class CheckFailed(AssertionError):
    """A check's verdict: what was expected and what the candidate did."""


REFERENCE_HINT = ("fix the failures above first; if there are none, compare your formula with the signature "
                  "line by line")


@dataclass(frozen=True)
class Check:
    name: str                       # what is checked, e.g. "softmax normalises over the keys"
    hint: str                       # the usual cause of a failure
    run: Callable[[Callable], None]  # raises CheckFailed


@dataclass(frozen=True)
class Exercise:
    name: str
    chapter: str                    # "5. Multi-head and cross-attention"
    page: str                       # the chapter's page, relative to docs/
    signature: str
    function: str                   # the default function name in the reader's file
    checks: tuple[Check, ...]
    library: Callable               # the library's own implementation (it must pass)


@dataclass
class Result:
    exercise: Exercise
    outcomes: list[tuple[Check, str | None]] = field(default_factory=list)  # (check, failure or None)

    @property
    def passed(self) -> bool:
        return all(failure is None for _, failure in self.outcomes)

    def failed(self) -> list[str]:
        return [check.name for check, failure in self.outcomes if failure is not None]

    def report(self, label: str = "your function") -> str:
        lines = [f"Checking {label} against exercise '{self.exercise.name}' "
                 f"(chapter {self.exercise.chapter}): {self.exercise.signature}"]
        for check, failure in self.outcomes:
            lines.append(f"  {'PASS' if failure is None else 'FAIL'}  {check.name}")
            if failure is not None:
                lines += [f"        {line}" for line in failure.splitlines()]
                if not failure.startswith(("raised ", "checker error")):  # a crash: the hint would mislead
                    lines.append(f"        hint: {check.hint}")
        good = sum(failure is None for _, failure in self.outcomes)
        lines.append(f"{good} of {len(self.outcomes)} checks passed.")
        return "\n".join(lines)


# -- helpers ------------------------------------------------------------------------------

def _rand(*shape, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _tensor(name: str, value) -> Tensor:
    if isinstance(value, tuple) and value and isinstance(value[0], Tensor):
        value = value[0]  # a function that also returns its weights: check the output
    if not isinstance(value, Tensor):
        raise CheckFailed(f"{name} should be a torch.Tensor, got {type(value).__name__}")
    return value


LOW_PRECISION_TOLERANCE = 1e-5   # relative to the answer's size, for float32/16 results


def _tolerance(got: Tensor, want: Tensor, atol: float) -> float:
    """``atol`` for float64 results; float32 and narrower are held to 1e-5 of the answer's size."""
    if got.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return max(atol, LOW_PRECISION_TOLERANCE * max(1.0, want.abs().max().item()))
    return atol


def _close(name: str, got: Tensor, want: Tensor, atol: float = 1e-6) -> None:
    got = _tensor(name, got)
    if got.shape != want.shape:
        raise CheckFailed(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if not torch.isfinite(got).all():
        raise CheckFailed(f"{name} contains NaN or inf")
    diff = (got.double() - want.double()).abs()
    atol = _tolerance(got, want, atol)
    if diff.max() > atol:
        where = tuple(int(i) for i in torch.nonzero(diff == diff.max())[0])
        raise CheckFailed(f"{name} differs from the reference by up to {diff.max().item():.3g} "
                          f"(at index {where}); tolerance {atol:g}")


def _causal_reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Query i sits at position k_len - q_len + i and sees keys j <= that position."""
    q_len, k_len = q.shape[-2], k.shape[-2]
    position = torch.arange(k_len - q_len, k_len)[:, None]
    mask = torch.arange(k_len)[None, :] <= position
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# -- exercise: scaled dot-product attention (chapter 2) --------------------------------------

def _sdpa_inputs(seed=0):
    # d_k = 8 and d_v = 5 differ, and so do q_len = 4 and k_len = 6: transposes show up.
    return _rand(2, 3, 4, 8, seed=seed), _rand(2, 3, 6, 8, seed=seed + 1), _rand(2, 3, 6, 5, seed=seed + 2)


def _sdpa_shape(f):
    q, k, v = _sdpa_inputs()
    out = _tensor("the output", f(q, k, v))
    if out.shape != (2, 3, 4, 5):
        raise CheckFailed(f"q (2, 3, 4, 8), k (2, 3, 6, 8), v (2, 3, 6, 5) gave shape {tuple(out.shape)}, "
                          "expected (batch, heads, q_len, d_v) = (2, 3, 4, 5)")


def _sdpa_rows(f):
    q, k, _ = _sdpa_inputs()
    ones = torch.ones(2, 3, 6, 5, dtype=torch.float64)
    out = _tensor("the output", f(q, k, ones))
    if not torch.allclose(out, torch.ones_like(out), atol=1e-6):
        raise CheckFailed(f"with every value vector all ones the output should be all ones (each output "
                          f"is a weighted average of the values); got values from {out.min().item():.3g} "
                          f"to {out.max().item():.3g}")


def _sdpa_scale(f):
    q, k, v = _sdpa_inputs()
    got = _tensor("the output", f(q, k, v)).double()
    want = F.scaled_dot_product_attention(q, k, v)
    for label, scale in (("1 (no scaling)", 1.0), ("1/d_k", 1 / 8), ("1/sqrt(heads * d_k)", 1 / math.sqrt(24))):
        if torch.allclose(got, F.scaled_dot_product_attention(q, k, v, scale=scale), atol=1e-5):
            raise CheckFailed(f"the scores are scaled by {label}; expected 1/sqrt(d_k) = 1/sqrt(8)")
    del want  # any other difference is reported by the last check


def _sdpa_reference(f):
    q, k, v = _sdpa_inputs(5)
    mask = _rand(1, 1, 4, 6, seed=10) > 0
    mask[..., 0] = True
    _close("the output", f(q, k, v), F.scaled_dot_product_attention(q, k, v))
    _close("the masked output", f(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def _sdpa_mask(f):
    q, k, v = _sdpa_inputs(3)
    mask = _rand(1, 1, 4, 6, seed=9) > 0
    mask[..., 0] = True  # every query may attend at least one key
    got = _tensor("the output", f(q, k, v, mask)).double()
    if torch.allclose(got, F.scaled_dot_product_attention(q, k, v, attn_mask=~mask), atol=1e-5):
        raise CheckFailed("your function hides the keys where the mask is True; in the book True means "
                          "'may attend'")
    k2, v2 = k.clone(), v.clone()   # change every key and value that the mask hides from query 1
    hidden = ~mask[0, 0, 1]
    k2[..., hidden, :] += 2.0
    v2[..., hidden, :] -= 3.0
    moved = (_tensor("the output", f(q, k2, v2, mask)).double() - got)[..., 1, :].abs().max().item()
    if moved > 1e-5:
        raise CheckFailed(f"changing keys and values that the mask hides from query 1 moved its output by {moved:.3g}")


def _sdpa_fully_masked(f):
    q, k, v = _sdpa_inputs(4)
    mask = torch.ones(1, 1, 4, 6, dtype=torch.bool)
    mask[..., 2, :] = False  # query 2 may attend nothing (a padded query, say)
    out = _tensor("the output", f(q, k, v, mask))
    if not torch.isfinite(out).all():
        raise CheckFailed("a query whose mask row is all False gave NaN; the other queries' outputs "
                          f"are {'finite' if torch.isfinite(out[..., [0, 1, 3], :]).all() else 'also broken'}")
    if not torch.allclose(out[..., 2, :], torch.zeros_like(out[..., 2, :])):
        raise CheckFailed("a query that may attend nothing should get a zero output (no weight on any value)")


def _library_sdpa(q, k, v, mask=None):
    from .attention import scaled_dot_product_attention
    return scaled_dot_product_attention(q, k, v, mask)


SDPA = Exercise(
    "sdpa", "2. Queries, keys, values and scaled dot-product attention", "foundations/qkv-attention.md",
    "attention(q, k, v, mask=None) -> out, q (batch, heads, q_len, d_k), out (batch, heads, q_len, d_v); "
    "a query whose mask row is all False gets zeros",
    "attention",
    (Check("returns (batch, heads, q_len, d_v)", "scores are q @ k.transpose(-2, -1); output is weights @ v",
           _sdpa_shape),
     Check("softmax normalises over the keys", "softmax over dim=-1 (the key axis), not dim=-2", _sdpa_rows),
     Check("scores scaled by 1/sqrt(d_k)", "d_k is q.shape[-1], the size of one head", _sdpa_scale),
     Check("mask: True = may attend", "scores.masked_fill(~mask, float('-inf')) before the softmax", _sdpa_mask),
     Check("a fully masked query gives zeros, not NaN",
           "softmax of a row of -inf is 0/0; subtract a finite row maximum and guard the zero sum",
           _sdpa_fully_masked),
     Check("equals PyTorch's attention, with and without a mask", REFERENCE_HINT, _sdpa_reference)),
    _library_sdpa,
)


# -- exercise: causal masks (chapter 4) and causal attention with a cache (chapter 9) --------

def _causal_mask_square(f):
    got = f(5, 5)
    if not isinstance(got, Tensor) or got.dtype != torch.bool:
        raise CheckFailed(f"expected a boolean tensor, got {getattr(got, 'dtype', type(got).__name__)}")
    want = torch.ones(5, 5, dtype=torch.bool).tril()
    if not torch.equal(got, want):
        raise CheckFailed(f"causal_mask(5, 5) should be the lower triangle (True on and below the diagonal); got\n"
                          f"{got.int().tolist()}")


def _causal_mask_cached(f):
    got = f(2, 5)  # two new tokens at positions 3 and 4 after three cached ones
    want = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    if not isinstance(got, Tensor) or got.shape != (2, 5) or not torch.equal(got.bool(), want):
        shown = got.int().tolist() if isinstance(got, Tensor) else got
        raise CheckFailed(f"causal_mask(2, 5): two new queries after 3 cached keys should see keys 0-3 and 0-4, "
                          f"i.e. {want.int().tolist()}; got {shown}")


def _library_causal_mask(q_len, k_len):
    from .attention import causal_mask
    return causal_mask(q_len, k_len)


CAUSAL_MASK = Exercise(
    "causal-mask", "4. Self-attention and masks", "foundations/self-attention-masks.md",
    "causal_mask(q_len, k_len) -> bool (q_len, k_len), True = may attend; the queries are the LAST q_len positions",
    "causal_mask",
    (Check("q_len == k_len: the lower triangle", "torch.ones(n, n, dtype=torch.bool).tril()", _causal_mask_square),
     Check("q_len < k_len (a KV cache): aligned bottom-right",
           "query i sits at position k_len - q_len + i: tril(diagonal=k_len - q_len); slicing a big "
           "precomputed mask as [:q_len, :k_len] takes the wrong rows", _causal_mask_cached)),
    _library_causal_mask,
)


def _causal_future(f):
    q, k, v = (_rand(1, 2, 6, 4, seed=s) for s in (20, 21, 22))
    before = _tensor("the output", f(q, k, v))
    k2, v2 = k.clone(), v.clone()
    k2[..., 4:, :] += 3.0
    v2[..., 4:, :] -= 5.0  # change tokens 4 and 5 only
    after = _tensor("the output", f(q, k2, v2))
    if not torch.allclose(before[..., :4, :], after[..., :4, :], atol=1e-9):
        raise CheckFailed("changing tokens 4 and 5 changed the outputs at positions 0-3: the model sees the future "
                          "(no causal mask), and a language model trained like this learns to copy the next token")


def _causal_decode(f):
    k, v = _rand(1, 2, 7, 4, seed=23), _rand(1, 2, 7, 4, seed=24)
    q = _rand(1, 2, 1, 4, seed=25)  # one new token; the cache holds 6 earlier keys plus its own
    before = _tensor("the output for one new query", f(q, k, v))
    for position in (6, 3):         # its own key and value, then one in the middle of the cache
        k2, v2 = k.clone(), v.clone()
        v2[..., position, :] += 5.0
        after = _tensor("the output for one new query", f(q, k2, v2))
        if torch.allclose(before, after, atol=1e-9):
            raise CheckFailed(f"the new query at position 6 ignores key {position}: it must see the whole cache "
                              "and itself")


def _causal_reference_check(f):
    q, k, v = (_rand(1, 2, 6, 4, seed=s) for s in (26, 27, 28))
    _close("the output", f(q, k, v), _causal_reference(q, k, v))
    _close("the output for two new queries", f(q[..., 4:, :], k, v), _causal_reference(q[..., 4:, :], k, v))


def _library_causal_attention(q, k, v):
    from .attention import scaled_dot_product_attention
    return scaled_dot_product_attention(q, k, v, causal=True)


CAUSAL_ATTENTION = Exercise(
    "causal-attention", "9. Attention at inference time", "position/inference.md",
    "causal_attention(q, k, v) -> out; q holds the LAST q_len positions of the k_len keys (q_len = 1 when decoding)",
    "causal_attention",
    (Check("no position sees a later one", "mask the scores with a causal mask before the softmax", _causal_future),
     Check("one new query attends to the whole cache",
           "torch's is_causal=True aligns the mask top-left: with q_len = 1 the new token sees key 0 only; "
           "build the bottom-right mask yourself", _causal_decode),
     Check("equals causal attention written out", REFERENCE_HINT, _causal_reference_check)),
    _library_causal_attention,
)


# -- exercise: heads (chapter 5) -------------------------------------------------------------

def _merge_heads_loop(x: Tensor) -> Tensor:
    return torch.cat([x[:, head] for head in range(x.shape[1])], dim=-1)  # heads side by side per token


def _merge_heads_check(f):
    x = _rand(2, 3, 4, 5, seed=30)
    _close("merge_heads(x)", f(x), _merge_heads_loop(x), atol=0)


MERGE_HEADS = Exercise(
    "merge-heads", "5. Multi-head and cross-attention", "foundations/multi-head.md",
    "merge_heads(x) -> (batch, seq, heads * head_dim) from x (batch, heads, seq, head_dim)",
    "merge_heads",
    (Check("each token's heads end up side by side",
           "move the head axis next to head_dim first: x.transpose(1, 2).reshape(batch, seq, -1); "
           "x.reshape(batch, seq, -1) alone mixes different tokens' heads", _merge_heads_check),),
    lambda x: __import__("attnbook.attention", fromlist=["merge_heads"]).merge_heads(x),
)


def _mha_inputs():
    d_model, heads = 12, 3
    x = _rand(2, 5, d_model, seed=40)
    weights = [_rand(d_model, d_model, seed=41 + i) / math.sqrt(d_model) for i in range(4)]
    return x, weights, heads


def _mha_reference(x, w_q, w_k, w_v, w_o, heads):
    t = x.transpose(0, 1)  # torch's functional form wants (seq, batch, d_model)
    in_proj = torch.cat([w_q.T, w_k.T, w_v.T])  # F.linear multiplies by weight.T
    out, _ = F.multi_head_attention_forward(t, t, t, x.shape[-1], heads, in_proj, None, None, None, False, 0.0,
                                            w_o.T, None, need_weights=False)
    return out.transpose(0, 1)


def _mha_check(f):
    x, (w_q, w_k, w_v, w_o), heads = _mha_inputs()
    got = _tensor("the output", f(x, w_q, w_k, w_v, w_o, heads)).double()
    want = _mha_reference(x, w_q, w_k, w_v, w_o, heads)
    if got.shape == want.shape:
        # the classic slip: scaling by the model width instead of one head's width
        q, k, v = ((x @ w).unflatten(-1, (heads, -1)).transpose(1, 2) for w in (w_q, w_k, w_v))
        wrong = F.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(x.shape[-1]))
        if torch.allclose(got, wrong.transpose(1, 2).flatten(-2) @ w_o, atol=1e-6):
            raise CheckFailed("the scores are scaled by 1/sqrt(d_model) = 1/sqrt(12); each head has "
                              "d_k = d_model / heads = 4, so the scale is 1/sqrt(4)")
    _close("the output", got, want)


def _library_mha(x, w_q, w_k, w_v, w_o, num_heads):
    from .attention import multi_head_attention
    in_proj = torch.cat([w_q.T, w_k.T, w_v.T])
    return multi_head_attention(x, None, in_proj, None, w_o.T, None, num_heads)[0]


MULTI_HEAD = Exercise(
    "multi-head", "5. Multi-head and cross-attention", "foundations/multi-head.md",
    "multi_head_attention(x, w_q, w_k, w_v, w_o, num_heads) -> (batch, seq, d_model); x (batch, seq, d_model), "
    "each w (d_model, d_model), rows are vectors: q = x @ w_q",
    "multi_head_attention",
    (Check("equals torch's multi-head attention", "split into heads, attend per head with d_k = d_model / heads, "
           "merge the heads token by token, then multiply by w_o", _mha_check),),
    _library_mha,
)


# -- exercise: RoPE (chapter 6) --------------------------------------------------------------

def _rope_reference(x: Tensor, position_ids: Tensor, base: float = 10000.0) -> Tensor:
    """Half-split RoPE as complex multiplication: channel i pairs with channel i + d/2."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    angles = position_ids.double()[..., None] * freqs                 # (seq, d/2)
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], dim=-1)


def _rope_relative(f):
    q, k = _rand(1, 1, 1, 8, seed=50), _rand(1, 1, 1, 8, seed=51)
    scores = []
    for m, n in ((3, 1), (7, 5), (12, 10)):
        qm = _tensor("rotated q", f(q, torch.tensor([m])))
        kn = _tensor("rotated k", f(k, torch.tensor([n])))
        scores.append((qm * kn).sum().item())
    if max(scores) - min(scores) > 1e-6:
        raise CheckFailed(f"q_m k_n^T should depend only on m - n; for m - n = 2 it gave {scores}")


def _rope_layout(f):
    x, positions = _rand(2, 3, 5, 8, seed=52), torch.tensor([0, 1, 2, 7, 30])
    got = _tensor("the output", f(x, positions))
    want = _rope_reference(x, positions)
    if got.shape == want.shape and not torch.allclose(got.double(), want, atol=1e-6):
        from .attention.positional import apply_rope_interleaved, rope_angles
        if torch.allclose(got.double(), apply_rope_interleaved(x, rope_angles(positions, 8)), atol=1e-6):
            raise CheckFailed("you rotate neighbouring channels (2i, 2i + 1): the interleaved layout of Meta's code. "
                              "The reference (Hugging Face Llama, SmolLM2) pairs channel i with i + d/2")
    _close("the output", got, want)


def _library_rope(x, position_ids):
    from .attention.positional import apply_rope
    return apply_rope(x, position_ids=position_ids)


ROPE = Exercise(
    "rope", "6. Positional information", "position/positional-encoding.md",
    "apply_rope(x, position_ids) -> same shape; x (batch, heads, seq, head_dim), position_ids (seq,), base 10000, "
    "channel i paired with channel i + head_dim/2",
    "apply_rope",
    (Check("scores depend only on relative position", "rotate each pair by position * base^(-2i/d)", _rope_relative),
     Check("the half-split layout", "pair channel i with i + d/2 (rotate_half), as Hugging Face Llama does",
           _rope_layout)),
    _library_rope,
)


# -- exercise: grouped-query attention (chapter 9) -------------------------------------------

def _repeat_kv_check(f):
    q, k, v = _rand(1, 6, 4, 5, seed=60), _rand(1, 2, 4, 5, seed=61), _rand(1, 2, 4, 5, seed=62)
    k_rep, v_rep = _tensor("repeat_kv(k, 6)", f(k, 6)), _tensor("repeat_kv(v, 6)", f(v, 6))
    if k_rep.shape != (1, 6, 4, 5):
        raise CheckFailed(f"repeat_kv of (1, 2, 4, 5) to 6 heads gave shape {tuple(k_rep.shape)}, expected (1, 6, 4, 5)")
    want = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    got = F.scaled_dot_product_attention(q, k_rep.double(), v_rep.double())
    if not torch.allclose(got, want, atol=1e-9):
        order = [int(torch.argmin((k_rep[0, h] - k[0]).abs().flatten(1).sum(-1))) for h in range(6)]
        raise CheckFailed(f"query heads 0-5 use kv heads {order}; grouped-query attention (Llama, torch's "
                          "enable_gqa) gives query head h the kv head h // 3, i.e. [0, 0, 0, 1, 1, 1]")


GQA = Exercise(
    "repeat-kv", "9. Attention at inference time", "position/inference.md",
    "repeat_kv(x, num_heads) -> (batch, num_heads, seq, d) from x (batch, kv_heads, seq, d)",
    "repeat_kv",
    (Check("query head h uses kv head h // (num_heads / kv_heads)",
           "x.repeat_interleave(num_heads // kv_heads, dim=1); x.repeat(...) tiles the heads in the wrong order",
           _repeat_kv_check),),
    lambda x, num_heads: __import__("attnbook.attention", fromlist=["repeat_kv"]).repeat_kv(x, num_heads),
)


# -- exercise: attention dropout (chapter 7) -------------------------------------------------

def _dropout_weights(f):
    q, k, v = _sdpa_inputs(70)
    result = f(q, k, v, 0.5, torch.Generator().manual_seed(0))
    if not (isinstance(result, tuple) and len(result) == 2):
        raise CheckFailed("expected (out, weights)")
    out, weights = (_tensor(n, r) for n, r in zip(("out", "weights"), result))
    sums = weights.sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-6):
        raise CheckFailed(f"the returned weights' rows sum to {sums.min().item():.3g}-{sums.max().item():.3g}, "
                          "not 1: they were returned after dropout, so a plot of them shows holes and rescaled "
                          "values that the model's probabilities do not have")
    _close("weights", weights, torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), -1))


def _dropout_off(f):
    q, k, v = _sdpa_inputs(71)
    out, _ = f(q, k, v, 0.0, torch.Generator().manual_seed(0))
    _close("out with p = 0", out, F.scaled_dot_product_attention(q, k, v))


def _library_dropout(q, k, v, p, generator):
    from .attention import scaled_dot_product_attention
    return scaled_dot_product_attention(q, k, v, dropout_p=p, generator=generator, return_weights=True)


DROPOUT = Exercise(
    "attention-dropout", "7. The Transformer", "position/transformer.md",
    "attention_with_dropout(q, k, v, p, generator) -> (out, weights): dropout on the weights in training",
    "attention_with_dropout",
    (Check("with p = 0 it is plain attention", "dropout with p = 0 must change nothing", _dropout_off),
     Check("the weights returned are the probabilities before dropout",
           "keep the softmax output for returning; drop (and rescale by 1/(1-p)) a copy used for the output",
           _dropout_weights)),
    _library_dropout,
)


# -- exercise: Nadaraya-Watson kernel regression (chapter 1) ---------------------------------

def _nw_reference(queries, keys, values, bandwidth):
    sq = ((queries[:, None, :] - keys[None, :, :]) ** 2).sum(-1)          # (n, m)
    kernel = torch.exp(-sq / (2 * bandwidth ** 2))
    return (kernel / kernel.sum(-1, keepdim=True)) @ values


def _nw_near(f):
    keys = torch.tensor([[0.0], [1.0], [5.0]], dtype=torch.float64)
    values = torch.tensor([[10.0], [20.0], [30.0]], dtype=torch.float64)
    got = _tensor("the estimate", f(torch.tensor([[0.1]], dtype=torch.float64), keys, values, 0.3))
    if got.shape != (1, 1) or got.item() > 15:
        raise CheckFailed(f"at q = 0.1, next to training point 0 (value 10), the estimate is {got.flatten().tolist()}: "
                          "the weight should go to the nearest point, not the farthest (5, value 30)")


def _nw_random(f):
    queries, keys, values = _rand(7, 2, seed=80), _rand(9, 2, seed=81), _rand(9, 3, seed=82)
    _close("the estimate", f(queries, keys, values, 0.7), _nw_reference(queries, keys, values, 0.7))


def _library_nw(queries, keys, values, bandwidth):
    from .attention.kernel_regression import nadaraya_watson
    return nadaraya_watson(queries, keys, values, bandwidth=bandwidth)


NADARAYA_WATSON = Exercise(
    "nadaraya-watson", "1. Why attention", "foundations/why-attention.md",
    "nadaraya_watson(queries, keys, values, bandwidth) -> (n, d_v); queries (n, d), keys (m, d), values (m, d_v), "
    "Gaussian kernel exp(-|q - k|^2 / (2 bandwidth^2))",
    "nadaraya_watson",
    (Check("near training points get the most weight", "the score is MINUS the squared distance", _nw_near),
     Check("matches the Gaussian-kernel estimate", "weights = softmax over keys of -|q - k|^2 / (2 sigma^2)",
           _nw_random)),
    _library_nw,
)


# -- exercise: additive attention scores (chapter 3) ------------------------------------------

def _additive_inputs():
    return (_rand(2, 3, 4, seed=90), _rand(2, 5, 6, seed=91), _rand(7, 4, seed=92), _rand(7, 6, seed=93),
            _rand(7, seed=94))


def _additive_reference(query, keys, W_q, W_k, v):
    scores = torch.empty(query.shape[0], query.shape[1], keys.shape[1], dtype=torch.float64)
    for b in range(query.shape[0]):
        for i in range(query.shape[1]):
            for j in range(keys.shape[1]):
                scores[b, i, j] = v @ torch.tanh(W_q @ query[b, i] + W_k @ keys[b, j])
    return scores


def _additive_depends_on_query(f):
    query, keys, W_q, W_k, v = _additive_inputs()
    weights = torch.softmax(_tensor("the scores", f(query, keys, W_q, W_k, v)), dim=-1)
    if weights.shape == (2, 3, 5) and torch.allclose(weights[:, :1], weights[:, 1:], atol=1e-9):
        raise CheckFailed("every decoder step gets the same attention weights: without the tanh, "
                          "v(W_q s + W_k h_j) = v W_q s + v W_k h_j, and the query's term is the same for "
                          "every source position, so the softmax removes it")


def _additive_values(f):
    query, keys, W_q, W_k, v = _additive_inputs()
    _close("the scores", f(query, keys, W_q, W_k, v), _additive_reference(query, keys, W_q, W_k, v))


def _library_additive(query, keys, W_q, W_k, v):
    from .attention.additive import additive_scores
    return additive_scores(query, keys, W_q, W_k, v)


ADDITIVE = Exercise(
    "additive-scores", "3. Additive and multiplicative attention", "foundations/bahdanau-luong.md",
    "additive_scores(query, keys, W_q, W_k, v) -> (batch, q_len, src_len); query (batch, q_len, query_dim), "
    "keys (batch, src_len, key_dim), W_q (attn_dim, query_dim), W_k (attn_dim, key_dim), v (attn_dim,)",
    "additive_scores",
    (Check("the weights depend on the query", "apply tanh to W_q s_i + W_k h_j before the dot product with v",
           _additive_depends_on_query),
     Check("e_ij = v . tanh(W_q s_i + W_k h_j)", "broadcast (batch, q_len, 1, attn_dim) + (batch, 1, src_len, "
           "attn_dim)", _additive_values)),
    _library_additive,
)


# -- exercise: nucleus (top-p) filtering (chapter 8) ------------------------------------------

def _top_p_reference(logits: Tensor, p: float) -> Tensor:
    out = torch.full_like(logits, float("-inf"))
    probs = torch.softmax(logits, -1)
    for row in range(logits.shape[0]):
        mass = 0.0
        for index in torch.argsort(probs[row], descending=True).tolist():
            out[row, index] = logits[row, index]
            mass += probs[row, index].item()
            if mass >= p:
                break
    return out


def _top_p_keeps_top(f):
    logits = torch.tensor([[4.0, 1.0, 0.5, 0.0]], dtype=torch.float64)  # the top token has ~91% of the mass
    got = _tensor("the filtered logits", f(logits, 0.5))
    if got.shape != logits.shape or not torch.isfinite(got[0, 0]):
        raise CheckFailed("with p = 0.5 and a top token of probability 0.91 the top token was not kept: the token "
                          "whose probability takes the total past p belongs to the nucleus")


def _close_inf(name, got, want):
    if got.shape != want.shape or not torch.equal(torch.isinf(got), torch.isinf(want)):
        kept = (~torch.isinf(got)).sum(-1).tolist() if got.shape == want.shape else "?"
        raise CheckFailed(f"{name} keep {kept} tokens per row; the nucleus has {(~torch.isinf(want)).sum(-1).tolist()}")
    _close(name, torch.where(torch.isinf(want), 0.0, got.double()), torch.where(torch.isinf(want), 0.0, want))


def _top_p_random(f):
    logits = _rand(6, 20, seed=100) * 2
    for p in (0.3, 0.75, 0.95):
        _close_inf(f"the filtered logits at p = {p}", f(logits, p), _top_p_reference(logits, p))


def _library_top_p(logits, p):
    from .models.gpt import top_p_filter
    return top_p_filter(logits, p)


TOP_P = Exercise(
    "top-p", "8. A GPT from scratch", "position/gpt.md",
    "top_p_filter(logits, p) -> logits (rows, vocab) with every token outside the nucleus set to -inf",
    "top_p_filter",
    (Check("the token that crosses p is kept", "keep a token when the mass BEFORE it is still below p",
           _top_p_keeps_top),
     Check("the smallest set of likeliest tokens with mass >= p", "sort by probability, cumulative sum, keep the "
           "prefix", _top_p_random)),
    _library_top_p,
)


# -- exercise: attention in query chunks (chapter 10) -----------------------------------------

def _query_chunks_check(f):
    q, k, v = _rand(1, 2, 10, 4, seed=110), _rand(1, 2, 10, 4, seed=111), _rand(1, 2, 10, 3, seed=112)
    want = F.scaled_dot_product_attention(q, k, v)
    for chunk in (1, 3, 10, 16):
        _close(f"the output with chunk_size={chunk}", f(q, k, v, chunk), want)


def _library_query_chunks(q, k, v, chunk_size):
    from .attention.flash import flash_attention
    return flash_attention(q, k, v, block_q=chunk_size, block_k=k.shape[2])


QUERY_CHUNKS = Exercise(
    "query-chunks", "10. The quadratic wall", "efficient/quadratic-wall.md",
    "attention_in_query_chunks(q, k, v, chunk_size) -> out: exact attention, chunk_size queries at a time, so "
    "only a (chunk_size, k_len) block of scores exists at once",
    "attention_in_query_chunks",
    (Check("exact for every chunk size", "split the QUERIES; each chunk still sees every key, so its softmax is "
           "complete (splitting the keys needs the online softmax of chapter 15)", _query_chunks_check),),
    _library_query_chunks,
)


# -- exercise: sliding-window masks (chapter 11) ----------------------------------------------

def _window_reference(seq_len, window, causal):
    i, j = torch.arange(seq_len)[:, None], torch.arange(seq_len)[None, :]
    return (j >= i - window) & (j <= (i if causal else i + window))


def _window_check(f, causal):
    for seq_len, window in ((6, 1), (9, 3), (4, 5)):
        got = f(seq_len, window, causal)
        want = _window_reference(seq_len, window, causal)
        if not isinstance(got, Tensor) or got.shape != want.shape or not torch.equal(got.bool(), want):
            shown = got.int().tolist() if isinstance(got, Tensor) else got
            raise CheckFailed(f"sliding_window_mask({seq_len}, {window}, causal={causal}) should be\n"
                              f"{want.int().tolist()}\ngot\n{shown}")


def _library_window(seq_len, window, causal):
    from .attention.local import sliding_window_mask
    return sliding_window_mask(seq_len, window, causal=causal)


WINDOW = Exercise(
    "window-mask", "11. Sparse attention patterns", "efficient/sparse-patterns.md",
    "sliding_window_mask(seq_len, window, causal) -> bool (seq_len, seq_len): key j allowed for query i when "
    "i - window <= j <= i + window (j <= i when causal)",
    "sliding_window_mask",
    (Check("the two-sided window", "compare the offset j - i with -window and +window",
           lambda f: _window_check(f, False)),
     Check("the causal window sees no future key", "the upper bound is j <= i when causal",
           lambda f: _window_check(f, True))),
    _library_window,
)


# -- exercise: Linformer (chapter 12) ---------------------------------------------------------

def _linformer_check(f):
    q, k, v = _rand(1, 2, 8, 4, seed=120), _rand(1, 2, 8, 4, seed=121), _rand(1, 2, 8, 3, seed=122)
    e_proj, f_proj = _rand(3, 8, seed=123) / 3, _rand(3, 8, seed=124) / 3
    got = _tensor("the output", f(q, k, v, e_proj, f_proj))
    if got.shape != (1, 2, 8, 3):
        raise CheckFailed(f"the output has shape {tuple(got.shape)}; expected one row per query, (1, 2, 8, 3): "
                          "project the keys and values along the sequence, never the queries")
    _close("the output", got, F.scaled_dot_product_attention(q, e_proj @ k, f_proj @ v))


def _library_linformer(q, k, v, e_proj, f_proj):
    from .attention.linformer import linformer_attention
    return linformer_attention(q, k, v, e_proj, f_proj)


LINFORMER = Exercise(
    "linformer", "12. Low-rank attention", "efficient/low-rank.md",
    "linformer_attention(q, k, v, e_proj, f_proj) -> (batch, heads, n, d_v); e_proj, f_proj (k, n) mix the n "
    "positions of the keys and values into k",
    "linformer_attention",
    (Check("softmax(Q (E K)^T / sqrt(d)) (F V)", "E @ k and F @ v act on the sequence axis (-2)", _linformer_check),),
    _library_linformer,
)


# -- exercise: causal linear attention (chapter 13) -------------------------------------------

def _linear_reference(q, k, v):
    phi_q, phi_k = F.elu(q) + 1, F.elu(k) + 1
    sim = (phi_q @ phi_k.transpose(-2, -1)).tril()        # (.., n, n), key j <= query i
    return (sim @ v) / sim.sum(-1, keepdim=True)


def _linear_future(f):
    q, k, v = (_rand(1, 2, 7, 4, seed=s) for s in (130, 131, 132))
    before = _tensor("the output", f(q, k, v))
    k2, v2 = k.clone(), v.clone()
    k2[..., 5:, :] *= 3.0
    v2[..., 5:, :] += 1.0
    after = _tensor("the output", f(q, k2, v2))
    if not torch.allclose(before[..., :5, :], after[..., :5, :], atol=1e-9):
        raise CheckFailed("changing keys and values 5-6 changed the outputs at positions 0-4: a causal prefix sum "
                          "must include only keys j <= i, in the numerator AND the denominator")
    _close("the output", before, _linear_reference(q, k, v))


def _library_linear(q, k, v):
    from .attention.linear import linear_attention
    return linear_attention(q, k, v, causal=True)


LINEAR = Exercise(
    "causal-linear", "13. Kernelized attention", "efficient/kernels.md",
    "causal_linear_attention(q, k, v) -> out with phi = elu + 1: out_i = phi(q_i) S_i / phi(q_i) z_i, "
    "S_i = sum_{j<=i} phi(k_j)^T v_j, z_i = sum_{j<=i} phi(k_j)^T",
    "causal_linear_attention",
    (Check("causal in numerator and normaliser, and exact", "torch.cumsum over the sequence for both S and z",
           _linear_future),),
    _library_linear,
)


# -- exercise: angular LSH (chapter 14) -------------------------------------------------------

def _lsh_check(f):
    x, rotations = _rand(2, 50, 6, seed=140), _rand(6, 4, seed=141)   # 8 buckets
    got = f(x, rotations)
    projected = x @ rotations
    want = torch.cat([projected, -projected], dim=-1).argmax(-1)
    if not isinstance(got, Tensor) or got.shape != want.shape:
        raise CheckFailed(f"expected bucket ids of shape {tuple(want.shape)}, got {getattr(got, 'shape', got)}")
    if got.max() < 4:
        raise CheckFailed("only buckets 0-3 of 8 are ever used: the hash is argmax over [xR, -xR], so a vector "
                          "pointing away from rotation column r lands in bucket r + b/2")
    if not torch.equal(got.long(), want):
        raise CheckFailed(f"{int((got.long() != want).sum())} of {want.numel()} vectors are in the wrong bucket")


def _library_lsh(x, rotations):
    projected = x @ rotations
    return torch.cat([projected, -projected], dim=-1).argmax(dim=-1)


LSH = Exercise(
    "lsh-buckets", "14. Hashing attention", "efficient/hashing.md",
    "lsh_buckets(x, rotations) -> int (..., seq); x (..., seq, d), rotations (d, b/2) for b buckets",
    "lsh_buckets",
    (Check("h(x) = argmax([xR, -xR]) over all b buckets", "concatenate xR and -xR before the argmax", _lsh_check),),
    _library_lsh,
)


# -- exercise: the online softmax (chapter 15) ------------------------------------------------

def _online_check(f):
    q, k, v = _rand(1, 2, 5, 4, seed=150) * 3, _rand(1, 2, 12, 4, seed=151) * 3, _rand(1, 2, 12, 3, seed=152)
    want = F.scaled_dot_product_attention(q, k, v)
    for block in (1, 5, 12):
        _close(f"the output with block_size={block}", f(q, k, v, block), want)


def _library_online(q, k, v, block_size):
    from .attention.flash import flash_attention
    return flash_attention(q, k, v, block_q=q.shape[2], block_k=block_size)


ONLINE = Exercise(
    "online-softmax", "15. Exact and IO-aware attention", "efficient/io-aware.md",
    "attention_in_key_blocks(q, k, v, block_size) -> out: exact attention reading block_size keys at a time "
    "with a running maximum, running sum and running output",
    "attention_in_key_blocks",
    (Check("exact for every block size", "when the running maximum grows from m to m', multiply the running sum "
           "AND the running output by exp(m - m')", _online_check),),
    _library_online,
)


# -- exercise: fitting a scaling exponent (chapter 16) ----------------------------------------

def _fit_check(f):
    lengths = [1024, 2048, 4096, 8192, 16384]
    for exponent in (1.0, 1.5, 2.0):
        times = [3e-9 * n ** exponent * (1.0 + 0.01 * (-1) ** i) for i, n in enumerate(lengths)]
        got = f(lengths, times)
        logs_n = torch.tensor(lengths, dtype=torch.float64).log()
        logs_t = torch.tensor(times, dtype=torch.float64).log()
        want = float(((logs_n - logs_n.mean()) * (logs_t - logs_t.mean())).sum() / ((logs_n - logs_n.mean()) ** 2).sum())
        if not isinstance(got, (float, int)) and not (isinstance(got, Tensor) and got.numel() == 1):
            raise CheckFailed(f"expected one number (the exponent p), got {type(got).__name__}")
        if abs(float(got) - want) > 1e-6:
            raise CheckFailed(f"times growing like n^{exponent} gave p = {float(got):.4g}; the least-squares slope "
                              f"of log t against log n is {want:.4g}")


def _library_fit(lengths, times):
    from .bench import fit_power_law
    return fit_power_law(lengths, times)[0]


FIT = Exercise(
    "fit-exponent", "16. Benchmarks", "efficient/benchmarks.md",
    "fit_exponent(lengths, times) -> p, the least-squares slope of log(time) against log(length)",
    "fit_exponent",
    (Check("the slope in log-log space", "fit a line to (log n, log t); on linear axes the slope is not an "
           "exponent", _fit_check),),
    _library_fit,
)


# -- exercise: length-normalised beam scores (chapter 21) ------------------------------------

def _lp_reference(log_prob, length, alpha):
    return log_prob / ((5 + length) / 6) ** alpha


def _lp_values(f):
    for log_prob, length, alpha in ((-3.0, 4, 0.6), (-12.5, 20, 1.0), (-0.7, 1, 0.6), (-8.0, 9, 0.0)):
        got = f(log_prob, length, alpha)
        want = _lp_reference(log_prob, length, alpha)
        if not isinstance(got, (int, float, Tensor)) or abs(float(got) - want) > 1e-6 * max(1.0, abs(want)):
            shown = f"{float(got):.10g}" if isinstance(got, (int, float, Tensor)) else repr(got)
            raise CheckFailed(f"normalised_score({log_prob}, {length}, {alpha}) = {shown}; expected "
                              f"log_prob / ((5 + length) / 6) ** alpha = {want:.10g}")


def _lp_prefers_longer(f):
    # the same log-probability per token (-2) over 5 and over 10 tokens: unnormalised, the long
    # output scores twice as low; a length penalty must shrink that gap, not widen it
    short, long_ = float(f(-10.0, 5, 1.0)), float(f(-20.0, 10, 1.0))
    if short >= 0 or long_ / short >= 2.0:
        raise CheckFailed(f"at -2 per token, a 10-token output scores {long_:.3g} and a 5-token one {short:.3g}: "
                          f"{long_ / short:.2f} times lower, no better (or worse) than without a penalty (2 times); "
                          "log-probabilities are negative, so divide by lp(L), do not multiply")


def _library_lp(log_prob, length, alpha):
    from .decoding import length_penalty
    return log_prob / length_penalty(length, alpha=alpha)


LENGTH_PENALTY = Exercise(
    "length-penalty", "21. Machine translation end to end", "real-models/machine-translation.md",
    "normalised_score(log_prob, length, alpha) -> the beam score of a finished output, Wu et al.'s "
    "log_prob / ((5 + length) / 6) ** alpha",
    "normalised_score",
    (Check("the penalty helps long outputs", "divide the (negative) log-probability by lp(L) >= 1",
           _lp_prefers_longer),
     Check("Wu et al.'s formula", "lp(L) = ((5 + L) / 6) ** alpha; alpha = 0 leaves the score unchanged",
           _lp_values)),
    _library_lp,
)

# -- exercise: cutting images into patches (chapter 19) --------------------------------------

def _patch_reference(images, patch):
    batch, channels, height, width = images.shape
    rows = []
    for r in range(0, height, patch):
        for c in range(0, width, patch):
            rows.append(images[:, :, r:r + patch, c:c + patch].reshape(batch, -1))  # (channel, row, column)
    return torch.stack(rows, dim=1)


def _patchify_check(f):
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).reshape(2, 3, 4, 6)
    got = _tensor("the patches", f(images, 2))
    want = _patch_reference(images, 2)
    if got.shape != want.shape:
        raise CheckFailed(f"images (2, 3, 4, 6) with patch 2 gave shape {tuple(got.shape)}, expected "
                          f"(batch, patches, channels * p * p) = {tuple(want.shape)}")
    if not torch.equal(got.double(), want):
        first = got[0, 0].long().tolist()
        raise CheckFailed(f"the first patch holds pixel numbers {first}; the top-left 2x2 block of each channel is "
                          f"{want[0, 0].long().tolist()}: a plain reshape of (H, W) into patches mixes rows of "
                          "different patches")


def _library_patchify(images, patch_size):
    from .models.vit import patchify
    return patchify(images, patch_size)


PATCHIFY = Exercise(
    "patchify", "19. Vision Transformers", "real-models/vision-transformer.md",
    "patchify(images, patch_size) -> (batch, (H/p)(W/p), channels * p * p) from images (batch, channels, H, W); "
    "patches in row-major order, each flattened as (channel, row, column)",
    "patchify",
    (Check("each patch is one p x p block", "split H and W into (H/p, p) and (W/p, p), then move both grid axes "
           "in front: reshape(b, c, H/p, p, W/p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (H/p) * (W/p), c * p * p)",
           _patchify_check),),
    _library_patchify,
)

# -- exercise: a power spectrogram (chapter 20) ----------------------------------------------

def _spectrogram_reference(wave, n_fft, hop):
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * torch.arange(n_fft, dtype=torch.float64) / n_fft)  # periodic Hann
    frames = wave.unfold(-1, n_fft, hop) * window                      # (frames, n_fft), no padding
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    basis = torch.exp(-2j * math.pi * k[:, None] * n[None, :] / n_fft)  # the DFT written out
    return (frames.to(torch.complex128) @ basis.T).abs() ** 2


def _spectrogram_check(f):
    t = torch.arange(800, dtype=torch.float64) / 8000
    wave = torch.sin(2 * math.pi * 697 * t) + 0.5 * torch.sin(2 * math.pi * 1209 * t) + 0.05 * _rand(800, seed=200)
    want = _spectrogram_reference(wave, 256, 80)
    got = _tensor("the spectrogram", f(wave, 256, 80))
    if got.shape != want.shape:
        raise CheckFailed(f"800 samples, n_fft 256, hop 80 gave shape {tuple(got.shape)}; expected (frames, bins) = "
                          f"{tuple(want.shape)}: 1 + (800 - 256) // 80 frames without padding, n_fft // 2 + 1 bins")
    if torch.allclose(got.double() ** 2, want, rtol=1e-6, atol=1e-6 * want.max()):
        raise CheckFailed("your values are the square roots of the reference: that is |STFT|, the magnitude; "
                          "the power spectrogram is |STFT|^2")
    _close("the spectrogram", got / want.max(), want / want.max(), atol=1e-8)


def _library_spectrogram(wave, n_fft, hop):
    from .data.audio import power_spectrogram
    return power_spectrogram(wave, n_fft=n_fft, hop=hop)


SPECTROGRAM = Exercise(
    "spectrogram", "20. Audio and multimodal attention", "real-models/audio-multimodal.md",
    "power_spectrogram(wave, n_fft, hop) -> (frames, n_fft // 2 + 1): |STFT|^2 with a periodic Hann window, "
    "frame t = samples [t * hop, t * hop + n_fft), no padding",
    "power_spectrogram",
    (Check("|STFT|^2 of Hann-windowed frames", "torch.stft(wave, n_fft, hop_length=hop, window=torch.hann_window("
           "n_fft, periodic=True, dtype=wave.dtype), center=False, return_complex=True).abs() ** 2, transposed to "
           "(frames, bins)",
           _spectrogram_check),),
    _library_spectrogram,
)

# -- exercise: attention rollout (chapter 23) ------------------------------------------------

def _rollout_check(f):
    maps = [torch.softmax(_rand(1, 2, 5, 5, seed=210 + layer) * 2, dim=-1) for layer in range(3)]
    want = torch.eye(5, dtype=torch.float64)
    for attn in maps:  # bottom layer first: each new layer multiplies from the left
        mixed = 0.5 * torch.eye(5, dtype=torch.float64) + 0.5 * attn.mean(1)
        want = (mixed / mixed.sum(-1, keepdim=True)) @ want
    got = _tensor("the rollout", f(maps))
    if got.shape != want.shape:
        raise CheckFailed(f"3 layers of (1, 2, 5, 5) maps gave shape {tuple(got.shape)}, expected (1, 5, 5)")
    backwards = torch.eye(5, dtype=torch.float64)
    for attn in maps:
        mixed = 0.5 * torch.eye(5, dtype=torch.float64) + 0.5 * attn.mean(1)
        backwards = backwards @ (mixed / mixed.sum(-1, keepdim=True))
    if torch.allclose(got.double(), backwards, atol=1e-9) and not torch.allclose(backwards, want, atol=1e-9):
        raise CheckFailed("you multiply the layers in the wrong order: R = A_1 A_2 ... A_L; the top layer's map "
                          "must be on the LEFT, R = A_L ... A_2 A_1, because row i of the top layer mixes the rows "
                          "that the layers below produced")
    _close("the rollout", got, want, atol=1e-9)


def _library_rollout(attentions):
    from .explain import attention_rollout
    return attention_rollout(attentions)


ROLLOUT = Exercise(
    "rollout", "23. Is attention explanation?", "interpretation/attention-explanation.md",
    "attention_rollout(attentions) -> (batch, T, T) from a list over layers (bottom first) of (batch, heads, T, T): "
    "A_l = 0.5 I + 0.5 mean over heads, rows renormalised, R = A_L ... A_1",
    "attention_rollout",
    (Check("the layers compose top-down", "rollout = mixed @ rollout, layer by layer from the bottom",
           _rollout_check),),
    _library_rollout,
)

# -- exercise: the induction score (chapter 18) ----------------------------------------------

def _induction_check(f):
    period, T = 5, 11                     # a BOS token, then x (5 tokens), then x again
    weights = torch.softmax(_rand(3, T, T, seed=220) * 3, dim=-1)       # (heads, T, T)
    rows = torch.arange(1 + period, 1 + 2 * period)
    want = weights[:, rows, rows - period + 1].mean(-1)
    got = _tensor("the scores", f(weights, period, 1))
    if got.shape != want.shape:
        raise CheckFailed(f"attention (3, 11, 11) gave scores of shape {tuple(got.shape)}, expected one per head (3,)")
    duplicate = weights[:, rows, rows - period].mean(-1)
    if torch.allclose(got.double(), duplicate, atol=1e-9):
        raise CheckFailed("you measure the weight on the earlier copy of the CURRENT token (key i - period): that is a "
                          "duplicate-token head; an induction head looks at the token AFTER it, key i - period + 1")
    _close("the scores", got, want, atol=1e-9)


def _library_induction(attn, period, offset):
    from .heads import induction_scores
    return induction_scores(attn, period, offset=offset)


INDUCTION = Exercise(
    "induction-score", "18. How a GPT attends to previous tokens", "real-models/pretrained-gpt.md",
    "induction_score(attn, period, offset) -> (heads,) from attn (heads, T, T) on offset prefix tokens followed by "
    "a random sequence of `period` tokens repeated twice",
    "induction_score",
    (Check("the weight on the token after the earlier occurrence", "for query i in the second copy, key "
           "i - period + 1; average over the second copy", _induction_check),),
    _library_induction,
)


# -- exercise: the neuron view (chapter 22) --------------------------------------------------

def _neuron_check(f):
    q, k = _rand(4, 8, seed=230), _rand(5, 8, seed=231)
    got = _tensor("the contributions", f(q, k))
    want = q[:, None, :] * k[None, :, :] / math.sqrt(8)
    if got.shape != want.shape:
        raise CheckFailed(f"q (4, 8) and k (5, 8) gave shape {tuple(got.shape)}, expected (q_len, k_len, d_k) = (4, 5, 8)")
    if torch.allclose(got.double(), want * math.sqrt(8), atol=1e-9):
        raise CheckFailed("your products sum to q·k, not to the score the softmax sees, q·k / sqrt(d_k): "
                          "include the scale in every product")
    _close("the contributions", got, want, atol=1e-9)
    _close("their sum over d", got.sum(-1), (q @ k.T) / math.sqrt(8), atol=1e-9)


def _library_neuron(q, k):
    from .viz.views import score_contributions
    return score_contributions(q, k)


NEURON = Exercise(
    "neuron-view", "22. Visualising attention", "interpretation/visualising.md",
    "score_contributions(q, k) -> (q_len, k_len, d_k): entry [i, j, d] = q[i, d] k[j, d] / sqrt(d_k), which sums "
    "over d to the score",
    "score_contributions",
    (Check("the products sum to the scaled score", "q[:, None, :] * k[None, :, :] / sqrt(d_k)", _neuron_check),),
    _library_neuron,
)

# -- exercise: a padding mask from a tokenizer's attention_mask (chapter 17) -----------------

def _padding_check(f):
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])   # Hugging Face: 1 = real token
    got = f(attention_mask)
    if not isinstance(got, Tensor) or got.dtype != torch.bool:
        raise CheckFailed(f"expected a boolean tensor (True = may attend), got {getattr(got, 'dtype', type(got).__name__)}")
    q, k, v = _rand(2, 3, 5, 4, seed=240), _rand(2, 3, 5, 4, seed=241), _rand(2, 3, 5, 4, seed=242)
    try:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=got)
    except RuntimeError:
        raise CheckFailed(f"a mask of shape {tuple(got.shape)} does not broadcast to (batch, heads, q_len, k_len) = "
                          "(2, 3, 5, 5): give it the shape (batch, 1, 1, k_len)") from None
    expanded = got.expand(2, 3, 5, 5)
    if not expanded[1, 0, 0, 3:].logical_not().all() or not expanded[1, 0, 3, :3].all():
        raise CheckFailed("in the second sentence the padded positions 3 and 4 must be hidden as KEYS (columns) "
                          "from every query, and every query (padded ones too) must still see the real keys; "
                          f"your mask's first head is\n{expanded[1, 0].int().tolist()}")
    _close("the output", out, F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask.bool()[:, None, None, :]))


def _library_padding(attention_mask):
    from .attention import key_padding_to_attn_mask
    return key_padding_to_attn_mask(attention_mask.bool())


PADDING = Exercise(
    "padding-mask", "17. Inside a pretrained encoder", "real-models/pretrained-encoder.md",
    "padding_mask(attention_mask) -> bool, broadcastable to (batch, heads, q_len, k_len), True = may attend; "
    "attention_mask (batch, k_len) is a tokenizer's: 1 at real tokens, 0 at padding",
    "padding_mask",
    (Check("padded tokens are hidden as keys, from every query", "attention_mask.bool()[:, None, None, :]: the "
           "padding is a property of the key j, so it broadcasts over heads and queries", _padding_check),),
    _library_padding,
)

EXERCISES: dict[str, Exercise] = {e.name: e for e in (
    NADARAYA_WATSON, SDPA, ADDITIVE, CAUSAL_MASK, MULTI_HEAD, MERGE_HEADS, ROPE, DROPOUT, TOP_P, CAUSAL_ATTENTION,
    GQA, QUERY_CHUNKS, WINDOW, LINFORMER, LINEAR, LSH, ONLINE, FIT, PADDING, INDUCTION, PATCHIFY, SPECTROGRAM, LENGTH_PENALTY, NEURON, ROLLOUT)}


# -- running ---------------------------------------------------------------------------------

def run_exercise(name: str, candidate: Callable) -> Result:
    """Run every check of exercise ``name`` on ``candidate``; a crash counts as a failure."""
    if name not in EXERCISES:
        raise ValueError(f"exercise must be one of {sorted(EXERCISES)}, got {name!r}")
    result = Result(EXERCISES[name])
    code = getattr(candidate, "__code__", None)
    candidate_file = code.co_filename if code is not None else None
    for check in result.exercise.checks:
        try:
            with torch.no_grad():
                check.run(candidate)
        except CheckFailed as failure:
            result.outcomes.append((check, str(failure)))
        except Exception as error:  # a crash: in the reader's code, or (rarely) in the checker
            frames = traceback.extract_tb(error.__traceback__)
            theirs = [f for f in frames if f.filename == candidate_file]
            if theirs or candidate_file is None:
                frame = (theirs or frames)[-1]
                result.outcomes.append((check, f"raised {type(error).__name__}: {error}\n"
                                               f"(at {Path(frame.filename).name}, line {frame.lineno})"))
            else:
                result.outcomes.append((check, f"checker error (not your code): {type(error).__name__}: {error}; "
                                               f"this check needs torch >= 2.5"))
        else:
            result.outcomes.append((check, None))
    return result


def load_function(spec: str, default: str) -> Callable:
    """``path/to/file.py[:function]`` -> the function (``default`` when no name is given)."""
    path, _, name = spec.partition(":")
    name = name or default
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"file {path!r} not found (give path/to/file.py or path/to/file.py:function)")
    module_spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, name, None)):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise SystemExit(f"{path} defines no function {name!r} (it defines {found}); name it with {path}:<function>")
    return getattr(module, name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnbook.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("exercise", nargs="?", help="the exercise's name (see --list)")
    parser.add_argument("target", nargs="?", help="path/to/file.py or path/to/file.py:function")
    parser.add_argument("--list", action="store_true", help="list the exercises")
    args = parser.parse_args(argv)
    if args.list or not args.exercise:
        for e in EXERCISES.values():
            print(f"{e.name:18s} chapter {e.chapter}\n{'':18s} {e.function}: {e.signature}")
        return 0
    if args.exercise not in EXERCISES:
        parser.error(f"exercise must be one of {sorted(EXERCISES)}, got {args.exercise!r}")
    if not args.target:
        parser.error("give the file to check: python -m attnbook.check EXERCISE path/to/file.py[:function]")
    exercise = EXERCISES[args.exercise]
    result = run_exercise(exercise.name, load_function(args.target, exercise.function))
    print(result.report(args.target))
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
