"""Small helpers shared by the mechanism tests."""
from __future__ import annotations

import torch


def random_qkv(seq, *, batch=2, heads=3, kv_heads=None, head_dim=4, seed=0, dtype=torch.float64):
    """Seeded q, k, v in the book's layout; k and v may have fewer (kv) heads."""
    generator = torch.Generator().manual_seed(seed)
    kv_heads = heads if kv_heads is None else kv_heads
    shapes = [(batch, heads, seq, head_dim)] + [(batch, kv_heads, seq, head_dim)] * 2
    return [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]


def outputs_and_grads(attention, q, k, v, seed=1):
    """Output and d(out . g)/d(q, k, v) for a fixed random cotangent g."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = attention(q, k, v)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return (out, *torch.autograd.grad(out, (q, k, v), cotangent))
