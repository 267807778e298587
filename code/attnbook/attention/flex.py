"""FlexAttention: masks and score changes written as tiny Python functions.

``torch.nn.attention.flex_attention`` (PyTorch >= 2.5; Dong et al., 2024, arXiv:2412.05496)
takes two kinds of function. A ``score_mod(score, b, h, q_idx, kv_idx)`` returns a new
score for one (query, key) pair: ALiBi adds a bias. A ``mask_mod(b, h, q_idx, kv_idx)``
returns True where the query **may attend** the key (the book's convention); it is
turned once into a ``BlockMask`` that records which (block_size × block_size) tiles are
empty, full or partial, so that a compiled kernel skips empty tiles altogether.

What torch 2.13 does on the CPU (checked on the book's machine):
- Eager calls work (float32 and float64 checked) and are exact; they run an *unfused* path that
  materialises the full score matrix (torch warns about it; ``flex_attention`` below
  silences that warning because this docstring says it).
- ``compile=True`` wraps it in ``torch.compile``: it works on the CPU too (Inductor's C++
  backend, needs a C++ compiler); the first call compiles for 15–40 s on 2 shared cores.
- There is no backward pass on the CPU: inputs that require grad are refused.
If the module cannot be imported, or TorchDynamo (which even the eager path uses) is not
supported, ``flex_attention`` raises ``FlexAttentionUnavailable`` saying why.

The dense equivalents (``dense_mask``, ``dense_reference``) evaluate the same functions
on a full index grid, so a test can hold FlexAttention to ordinary masked attention.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

from ._checks import check_positive_int, check_qkv
from .dot_product import repeat_kv, stable_softmax
from .positional import alibi_slopes

try:
    import torch._dynamo  # even the eager path of FlexAttention traces with TorchDynamo
    from torch.nn.attention import flex_attention as _flex
    _IMPORT_ERROR: Exception | None = None
except ImportError as error:  # older torch, or a build without it
    _flex, _IMPORT_ERROR = None, error

Tensor = torch.Tensor
ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


class FlexAttentionUnavailable(RuntimeError):
    """FlexAttention cannot run in this installation (the message says why)."""


def flex_attention_available() -> tuple[bool, str]:
    """``(True, "")`` if FlexAttention can be called here, else ``(False, reason)``."""
    if _flex is None:
        return False, (f"torch {torch.__version__} has no torch.nn.attention.flex_attention "
                       f"({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}); it needs torch >= 2.5")
    if not torch._dynamo.is_dynamo_supported():
        return False, "TorchDynamo is not supported on this Python/platform; FlexAttention needs it"
    return True, ""


def _require_flex() -> None:
    available, reason = flex_attention_available()
    if not available:
        raise FlexAttentionUnavailable(f"FlexAttention is not available: {reason}")


# --8<-- [start:mods]
def causal_mask_mod(q_len: int, k_len: int) -> MaskMod:
    """Key j is visible from query i when j <= i + (k_len - q_len): bottom-right aligned,
    like ``masks.causal_mask``."""
    offset = check_positive_int("k_len", k_len) - check_positive_int("q_len", q_len)

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset
    return causal


def sliding_window_mask_mod(window: int, q_len: int, k_len: int, *,
                            causal: bool = False) -> MaskMod:
    """Key j is visible from query i when -window <= j - i <= window (<= 0 if causal).

    ``window`` is the reach on one side, as in ``attention.local``; positions are
    bottom-right aligned when q_len != k_len.
    """
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int, got {window!r} of type {type(window).__name__}")
    if window < 0:
        raise ValueError(f"window must be >= 0 (keys on each side of the query), got {window}")
    offset = check_positive_int("k_len", k_len) - check_positive_int("q_len", q_len)
    upper = 0 if causal else window

    def sliding_window(b, h, q_idx, kv_idx):
        distance = kv_idx - (q_idx + offset)            # j - i, negative = the past
        return (distance >= -window) & (distance <= upper)
    return sliding_window


def alibi_score_mod(num_heads: int, q_len: int, k_len: int, *, dtype=torch.float32,
                    device=None) -> ScoreMod:
    """score + m_h·(j - i), ALiBi's bias (Press et al., 2022) with ``positional.alibi_slopes``.

    Meant to be combined with a causal mask: keys after the query would get a bonus.
    """
    slopes = alibi_slopes(num_heads, dtype=dtype, device=device)   # (heads,)
    offset = check_positive_int("k_len", k_len) - check_positive_int("q_len", q_len)

    def alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - (q_idx + offset))
    return alibi
# --8<-- [end:mods]


# --8<-- [start:block_mask]
def make_block_mask(mask_mod: MaskMod, q_len: int, k_len: int, *, batch: int | None = None,
                    heads: int | None = None, block_size: int = 128, device=None):
    """The ``BlockMask`` of ``mask_mod``: which tiles are empty (skipped), full or partial.

    batch / heads None means the mask is the same for every batch element / head;
    device defaults to the CPU (torch's own default would be the accelerator, if any).
    """
    _require_flex()
    check_positive_int("block_size", block_size)
    return _flex.create_block_mask(mask_mod, batch, heads, check_positive_int("q_len", q_len),
                                   check_positive_int("k_len", k_len), device=device or "cpu",
                                   BLOCK_SIZE=block_size)
# --8<-- [end:block_mask]


_compiled_flex = None


# --8<-- [start:flex]
def flex_attention(q: Tensor, k: Tensor, v: Tensor, score_mod: ScoreMod | None = None,
                   block_mask=None, *, scale: float | None = None, compile: bool = False) -> Tensor:
    """softmax(score_mod(Q Kᵀ·scale)) V over the keys that ``block_mask`` lets each query see.

    q: (batch, heads, q_len, d); k, v: (batch, kv_heads, k_len, d) (grouped kv heads are
    passed with ``enable_gqa``). block_mask: from ``make_block_mask`` (True = may attend),
    or None for no mask. Returns (batch, heads, q_len, d_v). ``compile=True`` runs the
    fused kernel through ``torch.compile`` (slow to compile the first time on a CPU).
    """
    num_heads, num_kv_heads = check_qkv(q, k, v)
    _require_flex()
    if q.device.type == "cpu" and any(x.requires_grad for x in (q, k, v)):
        raise NotImplementedError("FlexAttention has no backward pass on the CPU in this torch "
                                  f"({torch.__version__}): pass tensors that do not require grad")
    kwargs = dict(score_mod=score_mod, block_mask=block_mask, scale=scale,
                  enable_gqa=num_heads != num_kv_heads)
    if compile:
        global _compiled_flex
        _compiled_flex = _compiled_flex or torch.compile(_flex.flex_attention)
        return _compiled_flex(q, k, v, **kwargs)
    with warnings.catch_warnings():   # the eager path is unfused on purpose here (see module doc)
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        return _flex.flex_attention(q, k, v, **kwargs)
# --8<-- [end:flex]


# --8<-- [start:dense]
def _index_grid(batch: int, heads: int, q_len: int, k_len: int, device) -> tuple[Tensor, ...]:
    """Index tensors that broadcast to (batch, heads, q_len, k_len), one per argument of a mod."""
    arange = lambda n: torch.arange(n, device=device)
    return (arange(batch)[:, None, None, None], arange(heads)[None, :, None, None],
            arange(q_len)[None, None, :, None], arange(k_len)[None, None, None, :])


def dense_mask(mask_mod: MaskMod, q_len: int, k_len: int, *, batch: int = 1, heads: int = 1,
               device=None) -> Tensor:
    """The full boolean mask of ``mask_mod`` (True = may attend): (batch, heads, q_len, k_len)."""
    keep = mask_mod(*_index_grid(batch, heads, q_len, k_len, device))
    return keep.expand(batch, heads, q_len, k_len)


def dense_reference(q: Tensor, k: Tensor, v: Tensor, score_mod: ScoreMod | None = None,
                    mask_mod: MaskMod | None = None, *, scale: float | None = None) -> Tensor:
    """What ``flex_attention`` computes, written densely: every score, every mod, one softmax.

    Same shapes as ``flex_attention``; the mods are called once on whole index grids
    (they are elementwise, so broadcasting evaluates them for every pair at once).
    """
    num_heads, _ = check_qkv(q, k, v)
    k, v = repeat_kv(k, num_heads), repeat_kv(v, num_heads)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale                  # (batch, heads, q_len, k_len)
    grid = _index_grid(q.shape[0], num_heads, q.shape[2], k.shape[2], q.device)
    if score_mod is not None:
        scores = score_mod(scores, *grid)
    if mask_mod is not None:
        scores = scores.masked_fill(~mask_mod(*grid), -math.inf)
    return stable_softmax(scores, dim=-1) @ v
# --8<-- [end:dense]

