# %% [markdown]
# # Exact and IO-aware attention
#
# The experiments of chapter 15, in the order the page shows them: the online softmax on
# one row; the tiled attention and its recomputing backward against the written-out one
# (float64 and float32); FlashAttention's HBM traffic counted (Theorem 2); peak memory
# against length; PyTorch's SDPA backends, forced one at a time; FlexAttention's masks and
# score changes against the dense reference, with their block sparsity and compile time;
# what torch.compile does to the written-out and the tiled attention; and the HBM column
# of FlashAttention's Fig. 2 (left) counted for its shape.
#
# Run it with `python code/chapters/io-aware.py --device {auto,cpu,cuda} [--quick]`.

# %%
from attnbook.chapter import Chapter

ch = Chapter("io-aware")
ch.one_thread_on_cpu()  # all work on this thread, so that its CPU time is the time of the work

# %%
import math
import os
import shutil
import tempfile
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from attnbook.attention import scaled_dot_product_attention
from attnbook.attention.flash import flash_attention, hbm_accesses_flash, hbm_accesses_standard
from attnbook.attention.flex import (
    alibi_score_mod,
    causal_mask_mod,
    dense_reference,
    flex_attention,
    flex_attention_available,
    make_block_mask,
    sliding_window_mask_mod,
)
from attnbook.bench import peak_extra_memory, seconds_per_call, set_heap_reuse
from attnbook.viz import colors

ON_GPU = ch.device.type == "cuda"
CLOCK = "GPU wall-clock time" if ON_GPU else "CPU time of the one thread torch runs on"
set_heap_reuse(True)  # as in chapter 10: reuse freed blocks instead of unmapping them
MiB = 2**20
naive = scaled_dot_product_attention


def sci(x: float) -> str:
    """A maximum difference as the page prints it: 0 stays 0."""
    return "0" if x == 0 else f"{x:.1e}"


# %% [markdown]
# ## 1. The online softmax on one row
#
# Walk along a row of scores one block at a time, keeping only a running maximum m (the
# page's μ) and a running sum l (the page's ℓ) of exponentials; rescale l whenever the
# maximum grows.

# %%
# --8<-- [start:online-softmax]
def online_logsumexp(scores: torch.Tensor, block: int) -> torch.Tensor:
    """log Σ_j exp(s_j) of a 1-D row, reading it one block at a time (m and l only)."""
    m, l = torch.tensor(-math.inf, dtype=scores.dtype), torch.tensor(0.0, dtype=scores.dtype)
    for start in range(0, scores.numel(), block):
        tile = scores[start:start + block]
        m_new = torch.maximum(m, tile.max())                         # m' = max(m, m̃)
        l = l * torch.exp(m - m_new) + torch.exp(tile - m_new).sum()  # l' = e^{m-m'} l + Σ e^{s-m'}
        m = m_new
    return m + torch.log(l)
# --8<-- [end:online-softmax]


gen = ch.seed(0)
# large scores: exp overflows float64 (e^709)
row = torch.randn(1000, generator=gen, dtype=torch.float64) * 300
overflows = bool(torch.exp(row).isinf().any())
online_rows = []
for block in (1, 7, 100, 1000):
    diff = (online_logsumexp(row, block) - torch.logsumexp(row, 0)).abs().item()
    online_rows.append((block, sci(diff)))
ch.table("online-softmax", ["block length", "difference from torch.logsumexp"], online_rows, align="rr")
ch.markdown("online-softmax-setup",
            f"A row of {row.numel()} scores drawn with standard deviation 300; the largest is "
            f"{row.max().item():.1f}, so "
            + ("$e^{s}$ computed directly overflows float64 (whose limit is about $e^{709.8}$) to "
               "infinity, "
               if overflows else
               "$e^{s}$ computed directly would stay finite in float64 (whose limit is about "
               "$e^{709.8}$), ")
            + "while the online softmax, which only ever exponentiates $s - \\mu \\le 0$, reads it "
              "in blocks of several lengths:")

# %% [markdown]
# ## 2. The tiled attention and its recomputing backward, against the written-out one
#
# Outputs and the gradients of q, k and v, for float64 and float32, with and without the
# causal mask. The length is not a multiple of the block, so the last tiles are partial.

# %%
EX_N, EX_D, EX_BLOCK = ch.pick(300, 150), 32, 64


def forward_backward(method, q, k, v, grad_out):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out = method(q, k, v)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


gen = ch.seed(1)
base = [torch.randn(2, 3, EX_N, EX_D, generator=gen, dtype=torch.float64) for _ in range(4)]
exact_rows, worst, upstream = [], {}, []
for causal in (False, True):
    ref = forward_backward(lambda q, k, v: naive(q, k, v, causal=causal), *base)  # float64
    for dtype in (torch.float64, torch.float32):
        q, k, v, g = (x.to(dtype) for x in base)
        tiled = forward_backward(lambda q, k, v: flash_attention(
            q, k, v, causal=causal, block_q=EX_BLOCK, block_k=EX_BLOCK), q, k, v, g)
        written = forward_backward(lambda q, k, v: naive(q, k, v, causal=causal), q, k, v, g)
        diffs = [(a.double() - b.double()).abs().max().item() for a, b in zip(tiled, written)]
        vs_ref_tiled = max((a.double() - b).abs().max().item() for a, b in zip(tiled, ref))
        vs_ref_written = max((a.double() - b).abs().max().item() for a, b in zip(written, ref))
        # the upstream criterion applies to each tensor separately: out, dQ, dK, dV
        ratios = [((a.double() - r).abs().max() / (b.double() - r).abs().max()).item()
                  for a, b, r in zip(tiled, written, ref)]
        name = str(dtype).removeprefix("torch.")
        worst[name] = max(worst.get(name, 0.0), *diffs)
        if dtype == torch.float32:
            upstream.extend(ratios)
        exact_rows.append((name, "causal" if causal else "none", *(sci(d) for d in diffs),
                           sci(vs_ref_tiled), sci(vs_ref_written)))
ch.table("exactness", ["dtype", "mask", "out", "dQ", "dK", "dV",
                       "tiled vs float64", "written out vs float64"],
         exact_rows, align="llrrrrrr")
ch.markdown("exactness-setup",
            f"Batch 2, 3 heads, $n = m = {EX_N}$, $d = {EX_D}$, blocks of {EX_BLOCK} rows (the last "
            f"one partial); entries are the largest absolute difference over all elements. The first "
            f"four columns compare the tiled and the written-out attention in the same dtype; the last "
            f"two compare each with the written-out attention in float64 (largest over the output and "
            f"the three gradients); the summary applies the upstream criterion to each of the four "
            f"separately.")
ch.markdown("exactness-summary",
            f"In float64 the tiled attention and its recomputing backward agree with the written-out "
            f"ones to {sci(worst['float64'])} at worst, and in float32 to {sci(worst['float32'])}: the "
            f"size of rounding in each dtype, not of any approximation. In float32, tensor by tensor "
            f"(output, dQ, dK, dV, with and without the causal mask), the tiled attention's largest "
            f"distance from the float64 answer is {min(upstream):.2f} to {max(upstream):.2f} times the "
            f"written-out attention's, so the upstream criterion (at most 2 times, per tensor) "
            + ("holds." if max(upstream) <= 2 else "does not hold here."))

# %% [markdown]
# ## 3. HBM traffic counted (Theorem 2)
#
# Elements read and written by standard attention (Algorithm 0) and by FlashAttention's
# forward pass (Algorithm 1), for one head, against the on-chip memory size M.

# %%
HBM_N, HBM_D = 4096, 64
sram_sizes = [2**p for p in range(8, 19)]   # 256 ... 262144 elements


def hbm_point(n, m_size):
    return hbm_accesses_flash(seq_len=n, head_dim=HBM_D, sram_size=m_size)["total"]


hbm_rows = []
for n in (1024, 4096, 16384):
    std = hbm_accesses_standard(seq_len=n, head_dim=HBM_D)["total"]
    for m_size in (2**14, 2**16):
        fl = hbm_point(n, m_size)
        hbm_rows.append((f"{n:,}", f"{m_size:,}", f"{std / 1e6:.1f}", f"{fl / 1e6:.1f}", f"{std / fl:.1f}×"))
ch.table("hbm", ["$N$", "$M$ (elements)", "standard (millions of elements)",
                 "FlashAttention (millions of elements)",
                 "standard ÷ Flash"], hbm_rows, align="rrrrr")


def draw_hbm(theme: str):
    c = colors(theme)
    fig, ax = plt.subplots(figsize=(6.0, 3.8), layout="constrained")
    std = hbm_accesses_standard(seq_len=HBM_N, head_dim=HBM_D)["total"]
    flash = [hbm_point(HBM_N, m) for m in sram_sizes]
    ax.plot(sram_sizes, [std] * len(sram_sizes), "-", color=c["palette"][0],
            label="standard: Θ(Nd + N²)")
    ax.plot(sram_sizes, flash, "o-", color=c["palette"][1], label="FlashAttention forward")
    ref = flash[0] * sram_sizes[0] / np.array(sram_sizes, dtype=float)
    ax.plot(sram_sizes, ref, ":", color=c["muted"], label="∝ 1/M (Theorem 2)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("on-chip memory M (elements)")
    ax.set_ylabel("HBM reads + writes (elements)")
    ax.set_title(f"one head, N = {HBM_N}, d = {HBM_D}", fontsize=10)
    ax.legend(frameon=False, fontsize=9)
    ax.grid(True, alpha=0.5)
    return fig


ch.figure("hbm-vs-sram", draw_hbm)

# %% [markdown]
# ## 4. Peak memory against length
#
# Peak extra memory of one forward call (output included), written out against tiled.

# %%
MEM_HEADS, MEM_D = 4, 64
mem_lengths = [256, 512, 1024, 2048] + ([4096] if not ch.quick else [])
if ON_GPU:
    mem_lengths += [8192, 16384]
memory = {"written out": [], "tiled": []}
gen = ch.seed(2)
for n in mem_lengths:
    q, k, v = (torch.randn(1, MEM_HEADS, n, MEM_D, generator=gen).to(ch.device) for _ in range(3))
    memory["written out"].append(peak_extra_memory(lambda: naive(q, k, v), device=ch.device))
    memory["tiled"].append(peak_extra_memory(lambda: flash_attention(q, k, v), device=ch.device))
    del q, k, v
mem_rows = [(f"{n:,}", f"{a / MiB:.2f}", f"{b / MiB:.2f}", f"{a / b:.1f}×" if a < 10 * b else f"{a / b:.0f}×")
            for n, a, b in zip(mem_lengths, memory["written out"], memory["tiled"])]
ch.table("memory", ["$n$", "written out (MiB)", "tiled (MiB)", "written out ÷ tiled"], mem_rows)
ch.markdown("memory-setup",
            f"Batch 1, {MEM_HEADS} heads, $d = {MEM_D}$, float32, the forward pass on {ch.device.type}; "
            f"tiled with the library's default blocks of 256 query and 256 key rows.")


def draw_memory(theme: str):
    c = colors(theme)
    fig, ax = plt.subplots(figsize=(6.0, 3.8), layout="constrained")
    for i, (name, marker) in enumerate((("written out", "o-"), ("tiled", "^-"))):
        ax.plot(mem_lengths, np.array(memory[name]) / MiB, marker, color=c["palette"][i], label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length n")
    ax.set_ylabel("peak extra memory (MiB)")
    ax.legend(frameon=False, fontsize=9)
    ax.grid(True, alpha=0.5)
    return fig


ch.figure("memory-vs-length", draw_memory, measured=True)

# %% [markdown]
# ## 5. PyTorch's SDPA backends, forced one at a time

# %%
# --8<-- [start:backends]
def try_backend(backend: SDPBackend, q, k, v):
    """Run torch's SDPA with only ``backend`` allowed: (output, None) or (None, error text)."""
    try:
        with sdpa_kernel(backend):          # only this backend may be chosen inside the block
            return F.scaled_dot_product_attention(q, k, v), None
    except RuntimeError as error:           # no allowed backend can take these inputs
        return None, str(error).split("\n")[0]
# --8<-- [end:backends]


SD_N = ch.pick(1024, 512)
gen = ch.seed(3)
q, k, v = (torch.randn(1, 4, SD_N, 64, generator=gen).to(ch.device) for _ in range(3))
reference = naive(q.double(), k.double(), v.double())
backend_rows, working, errors = [], [], set()
for name in ("MATH", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "OVERRIDEABLE"):
    backend = getattr(SDPBackend, name)
    out, error = try_backend(backend, q, k, v)
    if error is None:
        working.append(name)
        seconds = seconds_per_call(lambda: try_backend(backend, q, k, v), device=ch.device, repeats=3)
        backend_rows.append((f"`{name}`", "runs", sci((out.double() - reference).abs().max().item()),
                             f"{seconds * 1e3:.1f}"))
    else:
        errors.add(error)
        backend_rows.append((f"`{name}`", "`RuntimeError`", "—", "—"))
ch.table("backends", ["backend", "forced alone", "largest difference from float64", "ms per call"],
         backend_rows, align="lllr")
ch.markdown("backends-summary",
            f"With torch {torch.__version__} on {ch.device.type}, "
            f"{' and '.join(f'`{w}`' for w in working) or 'no backend'} ran when forced alone "
            f"($n = {SD_N}$, 4 heads, $d = 64$, float32; {CLOCK}); every other backend raised a "
            f"`RuntimeError` instead of silently falling back to another one"
            + (f", with the message: *{sorted(errors)[0].rstrip('.')}*" if len(errors) == 1 else "") + ".")

# %% [markdown]
# ## 6. FlexAttention: masks and score changes
#
# Each modification is checked against the dense reference, which evaluates the same
# functions on the full grid of (query, key) pairs. The block sparsity is the fraction of
# 128×128 tiles that the BlockMask lets a kernel skip.

# %%
# --8<-- [start:more-mods]
def prefix_lm_mask_mod(prefix: int):
    """The first ``prefix`` keys are visible from every query; the rest causally."""
    def prefix_lm(b, h, q_idx, kv_idx):
        return (kv_idx < prefix) | (kv_idx <= q_idx)
    return prefix_lm


def document_mask_mod(lengths: list[int]):
    """Packed sequences: a query sees earlier keys of its own document only."""
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))

    def document(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (kv_idx <= q_idx)
    return document


def softcap_score_mod(cap: float):
    """cap·tanh(score / cap): scores squashed smoothly into (-cap, cap)."""
    def softcap(score, b, h, q_idx, kv_idx):
        return cap * torch.tanh(score / cap)
    return softcap
# --8<-- [end:more-mods]


FX_N, FX_H, FX_D, FX_BLOCK = ch.pick(1024, 256), 4, 64, 128
flex_ok, flex_reason = flex_attention_available()
doc_lengths = [FX_N * p // 16 for p in (3, 5, 2, 6)]    # four packed documents
doc_lengths[-1] = FX_N - sum(doc_lengths[:-1])
cases = {
    "causal": (None, causal_mask_mod(FX_N, FX_N)),
    "sliding window (128, causal)": (None, sliding_window_mask_mod(128, FX_N, FX_N, causal=True)),
    f"prefix-LM (prefix {FX_N // 4})": (None, prefix_lm_mask_mod(FX_N // 4)),
    "documents " + "+".join(map(str, doc_lengths)): (None, document_mask_mod(doc_lengths)),
    "ALiBi + causal": (alibi_score_mod(FX_H, FX_N, FX_N), causal_mask_mod(FX_N, FX_N)),
    "soft-capping (cap 5), no mask": (softcap_score_mod(5.0), None),
}
gen = ch.seed(4)
q, k, v = (torch.randn(1, FX_H, FX_N, FX_D, generator=gen).to(ch.device) * 2 for _ in range(3))
flex_rows, flex_worst = [], 0.0
for name, (score_mod, mask_mod) in cases.items():
    dense = dense_reference(q, k, v, score_mod, mask_mod)
    if flex_ok:
        block_mask = None if mask_mod is None else make_block_mask(
            mask_mod, FX_N, FX_N, block_size=FX_BLOCK, device=ch.device)
        out = flex_attention(q, k, v, score_mod, block_mask)
        diff = (out - dense).abs().max().item()
        flex_worst = max(flex_worst, diff)
        skipped = 0.0 if block_mask is None else block_mask.sparsity() / 100
        flex_rows.append((name, sci(diff), f"{100 * skipped:.1f}%"))
    else:
        flex_rows.append((name, "not available", "—"))
ch.table("flex", ["modification", "largest difference from the dense reference", "tiles skipped"], flex_rows,
         align="lrr")
ch.markdown("flex-setup",
            f"$n = m = {FX_N}$, {FX_H} heads, $d = {FX_D}$, float32, tiles of {FX_BLOCK}×{FX_BLOCK}; "
            f"q, k, v drawn from $N(0, 4)$ so that the scores are large enough for the cap to matter.")
if flex_ok:
    ch.markdown("flex-summary",
                f"FlexAttention is available in this torch ({torch.__version__}). Every modification "
                f"agrees with its dense reference to {sci(flex_worst)} at worst, float32 rounding.")
else:
    ch.markdown("flex-summary",
                f"FlexAttention is not available here ({flex_reason}); the table shows only the "
                f"dense reference, which the page's functions define.")

# %% [markdown]
# ## 7. Compile time and run time: FlexAttention, the written-out and the tiled attention
#
# torch.compile pays once, on the first call, to trace the function and generate a kernel.
# We measure that first call (wall-clock, because compilation may use other processes)
# separately from the time per call afterwards.

# %%
CP_N = 512
compile_cache = None


def compile_cost(fn, args):
    """(wall seconds of the first compiled call, seconds per call afterwards on the page's
    clock, wall seconds per call afterwards: compared with the first call on the same clock)."""
    start = time.perf_counter()
    fn(*args)
    first = time.perf_counter() - start
    after = seconds_per_call(lambda: fn(*args), device=ch.device, repeats=5)
    after_wall = seconds_per_call(lambda: fn(*args), device=ch.device, repeats=5, clock=time.perf_counter)
    return first, after, after_wall


compile_rows, compile_calls, speedups = [], {}, {}
if ch.quick:
    compile_note = "The quick run skips compilation (it takes tens of seconds); run the script at full size."
elif not flex_ok:
    compile_note = f"FlexAttention is not available here ({flex_reason})."
else:
    # A fresh, empty compile cache: a cache left by an earlier run would make compilation
    # look almost free. Removed at the end of the script.
    compile_cache = tempfile.mkdtemp(prefix="io-aware-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = compile_cache
    torch._dynamo.reset()
    gen = ch.seed(5)
    q, k, v = (torch.randn(1, 4, CP_N, 64, generator=gen).to(ch.device) for _ in range(3))
    causal_block_mask = make_block_mask(causal_mask_mod(CP_N, CP_N), CP_N, CP_N,
                                        block_size=FX_BLOCK, device=ch.device)
    tiled = lambda q, k, v: flash_attention(q, k, v, block_q=128, block_k=128)
    eager = {
        "written out": (lambda q, k, v: naive(q, k, v), (q, k, v)),
        "tiled (128×128 tiles)": (tiled, (q, k, v)),
        "FlexAttention, causal": (lambda q, k, v: flex_attention(q, k, v, block_mask=causal_block_mask),
                                  (q, k, v)),
    }
    compiled = {
        "written out": torch.compile(eager["written out"][0]),
        "tiled (128×128 tiles)": torch.compile(tiled),
        "FlexAttention, causal": lambda q, k, v: flex_attention(
            q, k, v, block_mask=causal_block_mask, compile=True),
    }
    for name, (fn, args) in eager.items():
        eager_s = seconds_per_call(lambda: fn(*args), device=ch.device, repeats=5)
        first, after, after_wall = compile_cost(compiled[name], args)
        compile_rows.append((name, f"{eager_s * 1e3:.1f}", f"{first:.1f}", f"{after * 1e3:.1f}",
                             f"{eager_s / after:.2f}×"))
        compile_calls[name] = first / after_wall   # wall-clock against wall-clock
        speedups[name] = eager_s / after
    compile_note = (f"$n = {CP_N}$, 4 heads, $d = 64$, float32, forward only. Eager and compiled "
                    f"times per call are the {CLOCK}, median of five calls after a warm-up; the "
                    f"first compiled call is wall-clock time and includes tracing and code "
                    f"generation. The first compilation in a process also pays for setting up "
                    f"the compiler, so the first row's compile time is inflated.")
ch.table("compile", ["implementation", "eager (ms per call)", "first compiled call (s)",
                     "compiled (ms per call)", "eager ÷ compiled"], compile_rows or
         [("—", "—", "—", "—", "—")], align="lrrrr")
ch.markdown("compile-setup", compile_note)
if compile_calls:
    faster = [name for name, x in speedups.items() if x > 1]
    which = ("all three" if len(faster) == len(speedups) else
             " and ".join(f"the {name.split(' (')[0]}" for name in faster) or "none of the three")
    spread = (f", by {min(speedups[f] for f in faster):.2f}× to {max(speedups[f] for f in faster):.2f}×"
              if len(faster) > 1 else "")
    ch.markdown("compile-summary",
                f"Each first compiled call took as long as {min(compile_calls.values()):,.0f} to "
                f"{max(compile_calls.values()):,.0f} compiled calls (both in wall-clock time). "
                f"Compiling made {which} faster "
                f"per call here{spread}.")
else:
    ch.markdown("compile-summary", "")  # the setup file already says why nothing was compiled

# %% [markdown]
# ## 8. The paper: Fig. 2 (left), HBM column, counted
#
# GPT-2 medium's attention: N = 1024, d = 64, 16 heads, batch 64. Theorem 2's counters,
# forward pass only, 2 bytes per element (float16), for two sizes of on-chip memory: 16,384
# elements and 98,304 (192 KiB in float16, the A100's on-chip memory per multiprocessor).

# %%
P_N, P_D, P_HEADS, P_BATCH, P_BYTES = 1024, 64, 16, 64, 2
std_gb = hbm_accesses_standard(seq_len=P_N, head_dim=P_D)["total"] * P_HEADS * P_BATCH * P_BYTES / 1e9
paper_rows = [("standard", "40.3", "35.3", f"{std_gb:.1f}")]
A100_M = 192 * 1024 // P_BYTES
for m_size in (2**14, A100_M):
    fl = hbm_accesses_flash(seq_len=P_N, head_dim=P_D, sram_size=m_size)["total"]
    fl_gb = fl * P_HEADS * P_BATCH * P_BYTES / 1e9
    a100 = m_size == A100_M   # the paper measured on an A100; it has no run at our smaller M
    paper_rows.append(("FlashAttention, $M = " + f"{m_size:,}".replace(",", "{,}") + "$",
                       "4.4" if a100 else "—", "4.4" if a100 else "—", f"{fl_gb:.2f}"))
    paper_rows.append(("standard ÷ Flash, $M = " + f"{m_size:,}".replace(",", "{,}") + "$",
                       f"{40.3 / 4.4:.1f}×" if a100 else "—", f"{35.3 / 4.4:.1f}×" if a100 else "—",
                       f"{std_gb / fl_gb:.1f}×"))
ch.table("paper", ["", "paper, arXiv v2 (GB, fwd + bwd, measured)",
                   "paper, NeurIPS (GB, fwd + bwd, measured)", "ours (GB, forward, counted)"],
         paper_rows, align="lrrr")
ch.paper("dao2022", "FlashAttention reads and writes far less HBM than standard attention",
         theirs="40.3 GB vs 4.4 GB, 9.2x (Fig. 2 left, arXiv v2, GPT-2 medium on an A100)",
         ours=f"counted with Theorem 2's formulas, forward only: {std_gb / fl_gb:.1f}x at M = {A100_M:,}",
         section="the-paper-reproduced")

# %%
set_heap_reuse(False)
if compile_cache:
    shutil.rmtree(compile_cache, ignore_errors=True)
print("written:", ", ".join(sorted(ch.written)))
