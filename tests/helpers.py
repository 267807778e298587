"""Small helpers shared by the tests."""
from __future__ import annotations

import re
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"


def chapter_numbers() -> dict[int, Path]:
    """Number -> page, from each page's numbered H1 ('# 3. Additive ...')."""
    pages = {}
    for page in DOCS.rglob("*.md"):
        if "generated" in page.relative_to(DOCS).parts:
            continue
        first = page.read_text(encoding="utf-8").split("\n", 1)[0]
        match = re.match(r"# (\d+)\. ", first)
        if match:
            pages[int(match.group(1))] = page
    return pages


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
