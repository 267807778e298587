"""How much memory the KV cache needs, for each kind of attention.

Per token, a decoder keeps for every layer what future queries will read
(DeepSeek-V2, arXiv:2405.04434, Table 1; n_h heads, n_g kv groups, d_h head dim,
l layers, d_c latent dim, d_h^R decoupled RoPE key dim):

    MHA  2 n_h d_h l        keys and values of every head
    GQA  2 n_g d_h l        one key and value per group of heads
    MQA  2 d_h l            a single key and value head
    MLA  (d_c + d_h^R) l    the latent c_t and the shared RoPE key k^R_t

Bytes are elements × bytes per element (2 for float16/bfloat16); the whole cache is
that × sequence length × batch. Example: Llama-2-7B (32 layers, 32 heads of 128, fp16)
needs 2 · 32 · 32 · 128 · 2 B = 0.5 MiB per token.
"""
from __future__ import annotations

import torch

from ._checks import check_divisible, check_positive_int

ATTENTION_KINDS = ("mha", "gqa", "mqa", "mla")

DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8": 1, "int8": 1}

# Published shapes, for the chapter's table. Llama-2-7B: the configuration Meta released with the
# weights (huggingface.co/meta-llama/Llama-2-7b-hf, config.json), not the Llama 2 paper;
# DeepSeek-V2: its paper, §3.1.2.
LLAMA2_7B = {"num_layers": 32, "num_heads": 32, "num_kv_heads": 32, "head_dim": 128}
DEEPSEEK_V2 = {"num_layers": 60, "num_heads": 128, "head_dim": 128, "d_latent": 512, "d_rope": 64}


def dtype_bytes(dtype: int | str | torch.dtype) -> int:
    """Bytes per element: an int is taken as is; also ``"float16"`` or ``torch.float16``."""
    if isinstance(dtype, torch.dtype):
        return dtype.itemsize
    if isinstance(dtype, str):
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype={dtype!r} is unknown; "
                             f"expected one of {sorted(DTYPE_BYTES)} or an int")
        return DTYPE_BYTES[dtype]
    return check_positive_int("dtype", dtype)


def _need(attention: str, **dims: int | None) -> None:
    for name, value in dims.items():
        if value is None:
            raise ValueError(f"attention={attention!r} needs {name}")
        check_positive_int(name, value)


# --8<-- [start:elements]
def kv_elements_per_token(attention: str, *, num_layers: int, num_heads: int | None = None,
                          num_kv_heads: int | None = None, head_dim: int | None = None,
                          d_latent: int | None = None, d_rope: int | None = None) -> int:
    """Cached elements per token over all layers (DeepSeek-V2, Table 1).

    attention: "mha", "gqa" (num_kv_heads groups), "mqa" or "mla" (d_latent + d_rope).
    Arguments a kind does not use are ignored, so one set of dims serves every row.
    """
    attention = _check_kind(attention)
    check_positive_int("num_layers", num_layers)
    if attention == "mha":
        _need(attention, num_heads=num_heads, head_dim=head_dim)
        per_layer = 2 * num_heads * head_dim          # keys and values of every head
    elif attention == "gqa":
        _need(attention, num_kv_heads=num_kv_heads, head_dim=head_dim)
        if num_heads is not None:
            check_divisible("num_heads", num_heads, "num_kv_heads", num_kv_heads)
        per_layer = 2 * num_kv_heads * head_dim       # one k and v per group
    elif attention == "mqa":
        _need(attention, head_dim=head_dim)
        per_layer = 2 * head_dim                      # a single shared k and v
    else:
        _need(attention, d_latent=d_latent, d_rope=d_rope)
        per_layer = d_latent + d_rope                 # latent c_t and RoPE key k^R_t
    return per_layer * num_layers
# --8<-- [end:elements]


# --8<-- [start:bytes]
def kv_bytes_per_token(attention: str, *, dtype: int | str | torch.dtype = 2, **dims: int) -> int:
    """Cache bytes per token: elements per token × bytes per element."""
    return kv_elements_per_token(attention, **dims) * dtype_bytes(dtype)


def kv_cache_bytes(attention: str, *, seq_len: int, batch: int = 1,
                   dtype: int | str | torch.dtype = 2, **dims: int) -> int:
    """Bytes of the whole cache for ``batch`` sequences of ``seq_len`` tokens."""
    check_positive_int("seq_len", seq_len)
    check_positive_int("batch", batch)
    return kv_bytes_per_token(attention, dtype=dtype, **dims) * seq_len * batch
# --8<-- [end:bytes]


def mla_equivalent_groups(*, d_latent: int, d_rope: int, head_dim: int) -> float:
    """The number of GQA groups whose cache equals MLA's: (d_c + d_h^R) / (2 d_h).

    With d_c = 4 d_h and d_h^R = d_h / 2 this is 2.25 (DeepSeek-V2, §2.1.4).
    """
    _need("mla", d_latent=d_latent, d_rope=d_rope, head_dim=head_dim)
    return (d_latent + d_rope) / (2 * head_dim)


def cache_table(*, num_layers: int, num_heads: int, head_dim: int, num_kv_heads: int,
                d_latent: int, d_rope: int, dtype: int | str | torch.dtype = 2,
                seq_len: int = 1, batch: int = 1) -> list[dict]:
    """One row per kind of attention: elements per token, the same in units of d_h·l,
    bytes per token and bytes for the whole cache. For the chapter's comparison table."""
    dims = {"num_layers": num_layers, "num_heads": num_heads, "num_kv_heads": num_kv_heads,
            "head_dim": head_dim, "d_latent": d_latent, "d_rope": d_rope}
    rows = []
    for kind in ATTENTION_KINDS:
        elements = kv_elements_per_token(kind, **dims)
        rows.append({
            "attention": kind,
            "elements_per_token": elements,
            "per_token_in_head_dim_layers": elements / (head_dim * num_layers),
            "bytes_per_token": elements * dtype_bytes(dtype),
            "total_bytes": kv_cache_bytes(kind, seq_len=seq_len, batch=batch, dtype=dtype, **dims),
        })
    return rows


def _check_kind(attention: str) -> str:
    if not isinstance(attention, str) or attention.lower() not in ATTENTION_KINDS:
        raise ValueError(f"attention={attention!r} is unknown; expected one of {ATTENTION_KINDS}")
    return attention.lower()
