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


def _close(name: str, got: Tensor, want: Tensor, atol: float = 1e-6) -> None:
    got = _tensor(name, got)
    if got.shape != want.shape:
        raise CheckFailed(f"{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if not torch.isfinite(got).all():
        raise CheckFailed(f"{name} contains NaN or inf")
    diff = (got.double() - want.double()).abs()
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
        if torch.allclose(got, F.scaled_dot_product_attention(q, k, v, scale=scale), atol=1e-6):
            raise CheckFailed(f"the scores are scaled by {label}; expected 1/sqrt(d_k) = 1/sqrt(8)")
    _close("the output", got, want)


def _sdpa_mask(f):
    q, k, v = _sdpa_inputs(3)
    mask = _rand(1, 1, 4, 6, seed=9) > 0
    mask[..., 0] = True  # every query may attend at least one key
    got = _tensor("the output", f(q, k, v, mask)).double()
    if torch.allclose(got, F.scaled_dot_product_attention(q, k, v, attn_mask=~mask), atol=1e-6):
        raise CheckFailed("your function hides the keys where the mask is True; in the book True means "
                          "'may attend'")
    _close("the masked output", got, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


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
    "sdpa", "2. Scaled dot-product attention", "foundations/qkv-attention.md",
    "attention(q, k, v, mask=None) -> out, q (batch, heads, q_len, d_k), out (batch, heads, q_len, d_v)",
    "attention",
    (Check("returns (batch, heads, q_len, d_v)", "scores are q @ k.transpose(-2, -1); output is weights @ v",
           _sdpa_shape),
     Check("softmax normalises over the keys", "softmax over dim=-1 (the key axis), not dim=-2", _sdpa_rows),
     Check("scores scaled by 1/sqrt(d_k)", "d_k is q.shape[-1], the size of one head", _sdpa_scale),
     Check("mask: True = may attend", "scores.masked_fill(~mask, float('-inf')) before the softmax", _sdpa_mask),
     Check("a fully masked query gives zeros, not NaN",
           "softmax of a row of -inf is 0/0; subtract a finite row maximum and guard the zero sum",
           _sdpa_fully_masked)),
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
    _close("the output", before, _causal_reference(q, k, v))


def _causal_decode(f):
    k, v = _rand(1, 2, 7, 4, seed=23), _rand(1, 2, 7, 4, seed=24)
    q = _rand(1, 2, 1, 4, seed=25)  # one new token; the cache holds 6 earlier keys plus its own
    _close("the output for one new query", f(q, k, v), _causal_reference(q, k, v))


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
           "build the bottom-right mask yourself", _causal_decode)),
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


EXERCISES: dict[str, Exercise] = {e.name: e for e in (
    SDPA, CAUSAL_MASK, MULTI_HEAD, MERGE_HEADS, ROPE, DROPOUT, CAUSAL_ATTENTION, GQA)}


# -- running ---------------------------------------------------------------------------------

def run_exercise(name: str, candidate: Callable) -> Result:
    """Run every check of exercise ``name`` on ``candidate``; a crash counts as a failure."""
    if name not in EXERCISES:
        raise ValueError(f"exercise must be one of {sorted(EXERCISES)}, got {name!r}")
    result = Result(EXERCISES[name])
    for check in result.exercise.checks:
        try:
            with torch.no_grad():
                check.run(candidate)
        except CheckFailed as failure:
            result.outcomes.append((check, str(failure)))
        except Exception as error:  # the reader's code crashed: show where
            frame = traceback.extract_tb(error.__traceback__)[-1]
            result.outcomes.append((check, f"raised {type(error).__name__}: {error}\n"
                                           f"(at {Path(frame.filename).name}, line {frame.lineno})"))
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
