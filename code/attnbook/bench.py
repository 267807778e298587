"""Benchmarking attention: time, peak memory and error against exact attention.

Reusable pieces for ``scripts/bench.py`` and the benchmark chapter:

* **timing** (``time_call``, used by other chapters): warm-up, then the median of several
  eager wall-clock calls, with ``torch.cuda.synchronize`` around each call on a GPU.
  ``run_benchmark`` times differently: its calls are interleaved in rounds over every
  point (``_time_rounds``) and read on ``benchmark_clock`` (the thread's CPU time with one
  torch thread on the CPU, else the wall clock; the wall time is kept too). Absolute
  times depend on the machine and on its load; ratios measured in the same run are what
  we report.
* **peak memory** (``peak_extra_memory``): the extra memory a call needs on top of the
  tensors that already exist: ``torch.cuda.max_memory_allocated`` on a GPU; on the CPU,
  the allocation trace of torch's profiler (``profile_memory=True``) replayed in order,
  or, as a cross-check on Linux, the process's resident-set high-water mark.
* **structured inputs** (``local_inputs``, ``clustered_inputs``, ``gaussian_inputs``):
  approximations are judged on inputs whose attention has structure, as real attention
  does. With independent Gaussian queries and keys every softmax row is nearly flat, and
  every approximation's error is large and uninformative.
* **fits** (``fit_power_law``, ``crossover_length``): the exponent ``p`` of time ~ n^p
  by least squares in log-log space, and the length from which a mechanism beats its
  baseline.
* **the registry** (``MECHANISMS``): every mechanism of the book with the parameters it
  is benchmarked at, and ``run_benchmark``, which measures them all.

Layout ``(batch, heads, seq, head_dim)`` throughout. Everything runs eagerly: no
``torch.compile``, which fuses some of the naive attention's passes (chapter 15) and would
blur the unfused costs the benchmark sets out to show.
"""
from __future__ import annotations

import ctypes
import gc
import hashlib
import importlib
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .attention._checks import check_positive_int

Tensor = torch.Tensor
AttentionFn = Callable[[Tensor, Tensor, Tensor], Tensor]


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------

def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that a timer measures the work and not its launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# --8<-- [start:timing]
def time_call(
    fn: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 1,
    repeats: int = 5,
    min_repeats: int = 3,
    budget_s: float | None = None,
) -> dict:
    """Median wall-clock time of ``fn()`` over several calls, after ``warmup`` calls.

    Each call is bracketed by ``synchronize`` (CUDA kernels run asynchronously). After
    ``min_repeats`` calls, no new call starts once the calls so far took ``budget_s``
    seconds, so a slow point costs a few calls rather than ``repeats`` of them. Each
    result is dropped before the next call: two n×n outputs alive at once would double
    the memory of the naive attention. Returns ``{"median_s", "times_s"}``.
    """
    check_positive_int("repeats", repeats)
    check_positive_int("min_repeats", min_repeats)
    for _ in range(warmup):  # first calls pay for lazy initialisation and allocator growth
        result = fn()
        del result
    times: list[float] = []
    for i in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        del result
        if budget_s is not None and i + 1 >= min_repeats and sum(times) >= budget_s:
            break
    return {"median_s": statistics.median(times), "times_s": times}
# --8<-- [end:timing]


# --------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------

def _profiler_peak_bytes(fn: Callable[[], object]) -> int:
    """Replay the profiler's allocation events in time order; return their running maximum."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
        del result  # the output counts while it is alive, as it does for the caller
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())  # +bytes on allocation, -bytes on free
    running = peak = 0
    for event in events:
        running += event.nbytes()
        peak = max(peak, running)
    return peak


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_heap_reuse_on = False


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not Linux with glibc
        return None


# --8<-- [start:allocator]
def set_heap_reuse(on: bool) -> bool:
    """Let glibc's malloc reuse freed memory for large tensors (on), or restore its defaults.

    By default glibc gives every block above a threshold (at most 32 MiB) its own fresh
    mapping and unmaps it when freed, so each call that allocates large tensors pays a
    page fault per 4 KiB page. On a virtual machine that can cost more than the
    arithmetic, and since small tensors come from the heap without faults, the cost per
    byte jumps once tensors pass the threshold: a plain elementwise op then *looks*
    superlinear in n (measured here: time ~ n^1.7 from 2k to 16k, n^1.0 with reuse).
    With ``on``: no fresh mappings (M_MMAP_MAX = 0) and freed memory is never handed
    back (M_TRIM_THRESHOLD = -1, which mallopt(3) documents as "disable trimming"), as
    a caching allocator (jemalloc, tcmalloc) would do; the process keeps its peak
    memory until ``set_heap_reuse(False)``. PyTorch's CPU allocator is plain malloc, so
    this is the lever we have. Returns whether the setting could be applied (False off
    glibc; nothing changes then).
    """
    global _heap_reuse_on
    libc = _libc()
    if libc is None:
        return False
    wanted = ({_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: -1} if on else _GLIBC_DEFAULTS)
    applied = all(libc.mallopt(param, value) == 1 for param, value in wanted.items())
    _heap_reuse_on = on and applied
    return applied
# --8<-- [end:allocator]


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{key} not found in /proc/self/status")


def _rss_peak_bytes(fn: Callable[[], object]) -> int:
    """Resident-set high-water mark during ``fn()`` minus the resident set before it.

    Linux only. Writing 5 to /proc/self/clear_refs resets the high-water mark (VmHWM).
    Freed heap memory that glibc keeps resident would be reused without showing up, so
    we first return it to the system (malloc_trim) and make every block of 256 KiB or
    more its own mapping (mallopt M_MMAP_THRESHOLD), which is unmapped when freed.
    """
    libc = _libc()
    if libc is None:
        raise RuntimeError("method 'rss' needs Linux with glibc")
    reuse_was_on = _heap_reuse_on
    libc.mallopt(_M_MMAP_MAX, _GLIBC_DEFAULTS[_M_MMAP_MAX])  # large blocks mapped, unmapped on free
    libc.mallopt(_M_MMAP_THRESHOLD, 256 * 1024)  # fixing it also stops glibc moving it
    try:
        gc.collect()
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        before = _proc_status_bytes("VmRSS:")
        result = fn()
        peak = _proc_status_bytes("VmHWM:")
        del result
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULTS[_M_MMAP_THRESHOLD])
        if reuse_was_on:
            set_heap_reuse(True)
    return peak - before


# --8<-- [start:memory]
def peak_extra_memory(
    fn: Callable[[], object], *, device: torch.device | str = "cpu", method: str = "auto"
) -> int:
    """Bytes that ``fn()`` needs at its peak on top of what was allocated before the call.

    The output counts: for the naive attention it includes the returned n×n weights.
    method "auto" picks "cuda" on a GPU and "profiler" on the CPU:

    * "cuda": ``max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
      memory allocated before the call.
    * "profiler": torch's profiler with ``profile_memory=True`` records every allocation
      and free of torch's CPU allocator (+bytes / -bytes); their running sum in time
      order peaks at the answer. ``tracemalloc`` cannot be used: it only sees Python's
      own allocator, never torch's buffers. Memory allocated outside torch's allocator
      (BLAS workspaces) is not seen; it is small and does not grow with the length.
    * "rss": the process's resident-set high-water mark (Linux), which sees every
      allocation, torch's or not; a cross-check of "profiler".
    """
    device = torch.device(device)
    if method == "auto":
        method = "cuda" if device.type == "cuda" else "profiler"
    if method not in ("cuda", "profiler", "rss"):
        raise ValueError(f"method must be 'auto', 'cuda', 'profiler' or 'rss', got {method!r}")
    if method == "cuda":
        if device.type != "cuda":
            raise ValueError(f"method 'cuda' needs a CUDA device, got device {device}")
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        synchronize(device)
        del result
        return torch.cuda.max_memory_allocated(device) - before
    if method == "rss":
        return _rss_peak_bytes(fn)
    return _profiler_peak_bytes(fn)
# --8<-- [end:memory]


# --------------------------------------------------------------------------------------
# Structured inputs for the error measurement
# --------------------------------------------------------------------------------------

def _amplitude(head_dim: int, peak_score: float) -> float:
    """Norm of q and k such that a query meets its own key with score q kᵀ/√d = peak_score."""
    return math.sqrt(peak_score * math.sqrt(head_dim))


# --8<-- [start:inputs]
def local_inputs(
    batch: int, heads: int, seq_len: int, head_dim: int, *, generator: torch.Generator,
    length_scale: float = 16.0, peak_score: float = 10.0, key_noise: float = 0.1,
    dtype: torch.dtype = torch.float64, device=None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Queries and keys that vary smoothly along the sequence: attention near the diagonal.

    Position t gets random Fourier features of an RBF kernel over positions,
    q_t = a·√(2/d)·[cos(ω_i t + φ_i), sin(ω_i t + φ_i)]_{i<d/2}, ω_i ~ N(0, 1/ℓ²), so
    q_t q_sᵀ = a²·mean_i cos(ω_i (t−s)) ≈ a²·exp(−(t−s)²/2ℓ²): the score falls from
    ``peak_score`` at distance 0 to about 0 beyond a few ℓ = ``length_scale``, and each
    query spends most of its weight on keys within about ±ℓ (a little leaks everywhere,
    because a finite sum of cosines never vanishes). Keys are the queries plus a small
    noise; values are N(0, 1). Returns q, k, v of shape (batch, heads, seq_len, head_dim).
    """
    if head_dim % 2:
        raise ValueError(f"head_dim must be even (cos/sin pairs), got {head_dim}")
    draw = {"generator": generator, "dtype": dtype, "device": generator.device}
    pairs = head_dim // 2
    positions = torch.arange(seq_len, **{k: draw[k] for k in ("dtype", "device")})
    freqs = torch.randn(batch, heads, 1, pairs, **draw) / length_scale  # ω ~ N(0, 1/ℓ²)
    phases = torch.rand(batch, heads, 1, pairs, **draw) * 2 * math.pi
    angles = positions[:, None] * freqs + phases  # (batch, heads, seq, pairs)
    amplitude = _amplitude(head_dim, peak_score)
    q = amplitude / math.sqrt(pairs) * torch.cat([angles.cos(), angles.sin()], dim=-1)
    noise_scale = key_noise * amplitude / math.sqrt(head_dim)  # ‖noise‖ ≈ key_noise·‖q‖
    k = q + noise_scale * torch.randn(q.shape, **draw)
    v = torch.randn(batch, heads, seq_len, head_dim, **draw)
    return q.to(device), k.to(device), v.to(device)


def clustered_inputs(
    batch: int, heads: int, seq_len: int, head_dim: int, *, generator: torch.Generator,
    num_clusters: int = 16, peak_score: float = 10.0, key_noise: float = 0.1,
    dtype: torch.dtype = torch.float64, device=None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Queries and keys drawn around a few cluster centres, scattered along the sequence.

    Each position belongs to one of ``num_clusters`` random centres (norm chosen so that
    a centre scores ``peak_score`` against itself; two different centres score about
    N(0, (peak_score/√d)²)), and its query and key are that centre plus a small noise. A
    query attends almost only to keys of its own cluster, wherever they are: far from
    the diagonal, and of rank about ``num_clusters``. Values are N(0, 1).
    """
    check_positive_int("num_clusters", num_clusters)
    draw = {"generator": generator, "dtype": dtype, "device": generator.device}
    amplitude = _amplitude(head_dim, peak_score)
    centres = torch.randn(batch, heads, num_clusters, head_dim, **draw)
    centres = amplitude * centres / centres.norm(dim=-1, keepdim=True)
    member = torch.randint(num_clusters, (batch, heads, seq_len), generator=generator,
                           device=generator.device)
    index = member[..., None].expand(-1, -1, -1, head_dim)
    at_position = centres.gather(2, index)  # (batch, heads, seq, head_dim)
    noise_scale = key_noise * amplitude / math.sqrt(head_dim)
    q = at_position + noise_scale * torch.randn(at_position.shape, **draw)
    k = at_position + noise_scale * torch.randn(at_position.shape, **draw)
    v = torch.randn(batch, heads, seq_len, head_dim, **draw)
    return q.to(device), k.to(device), v.to(device)


def gaussian_inputs(
    batch: int, heads: int, seq_len: int, head_dim: int, *, generator: torch.Generator,
    dtype: torch.dtype = torch.float64, device=None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Independent N(0, 1) q, k, v: nearly flat attention rows, shown for contrast only."""
    draw = {"generator": generator, "dtype": dtype, "device": generator.device}
    q, k, v = (torch.randn(batch, heads, seq_len, head_dim, **draw) for _ in range(3))
    return q.to(device), k.to(device), v.to(device)
# --8<-- [end:inputs]


STRUCTURES: dict[str, Callable[..., tuple[Tensor, Tensor, Tensor]]] = {
    "local": local_inputs,
    "clustered": clustered_inputs,
    "gaussian": gaussian_inputs,
}


def relative_error(output: Tensor, reference: Tensor) -> float:
    """‖output − reference‖_F / ‖reference‖_F over the whole tensor."""
    if output.shape != reference.shape:
        raise ValueError(
            f"output has shape {tuple(output.shape)} but reference has {tuple(reference.shape)}"
        )
    reference = reference.to(torch.float64)
    difference = output.to(torch.float64) - reference
    return float(difference.norm() / reference.norm())


# --------------------------------------------------------------------------------------
# Fits
# --------------------------------------------------------------------------------------

# --8<-- [start:fit]
def fit_power_law(lengths: Sequence[float], times: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of time = c·n^p in log-log space. Returns ``(p, c)``.

    log t = log c + p·log n is a straight line, so ``p`` is the slope of the best line
    through the points (log n_i, log t_i): about 1 for linear cost, 2 for quadratic.
    """
    if len(lengths) != len(times):
        raise ValueError(
            f"lengths and times must have equal sizes, got {len(lengths)} and {len(times)}")
    if len(set(lengths)) < 2:
        raise ValueError(f"a fit needs at least two different lengths, got {list(lengths)}")
    if min(lengths) <= 0 or min(times) <= 0:
        raise ValueError("lengths and times must be positive (they are taken to a logarithm)")
    slope, intercept = np.polyfit(np.log(lengths), np.log(times), deg=1)
    return float(slope), float(math.exp(intercept))


def crossover_length(
    lengths: Sequence[int], times: Sequence[float | None], reference_times: Sequence[float | None]
) -> int | None:
    """The smallest measured length from which ``times`` beat ``reference_times`` for good.

    Only lengths where both were measured (not None) count. A mechanism that is faster
    at a length but slower again at a longer one has not crossed over there (a single
    noisy point at a short length would otherwise pass for a crossover). Returns None
    when it is not faster at the longest common length.
    """
    if not len(lengths) == len(times) == len(reference_times):
        raise ValueError(
            f"lengths, times and reference_times must have equal sizes, got "
            f"{len(lengths)}, {len(times)} and {len(reference_times)}"
        )
    points = sorted((n, t, r) for n, t, r in zip(lengths, times, reference_times)
                    if t is not None and r is not None)
    crossover = None
    for n, t, r in reversed(points):  # walk down from the longest length
        if t >= r:
            break
        crossover = n
    return crossover
# --8<-- [end:fit]


# --------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what ``platform`` knows elsewhere."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str) -> dict:
    """What the numbers were measured on: CPU, cores, threads, memory, torch, device, load."""
    device = torch.device(device)
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable_cores = os.cpu_count()
    info = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": cpu_model(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import psutil

        info["memory_total_bytes"] = psutil.virtual_memory().total
    except ImportError:
        info["memory_total_bytes"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, cuda_version=torch.version.cuda,
                    device_memory_bytes=props.total_memory)
    return info


def machine_tag(info: dict) -> str:
    """A short file-name tag, e.g. 'intel-xeon-2c' for a CPU or 'nvidia-h100-80gb-hbm3'."""
    if info["device"].startswith("cuda"):
        name = info["device_name"]
    else:
        name = info["cpu_model"] + f" {info['usable_cores']}c"
    name = re.sub(r"\((R|TM|tm|r)\)|\bCPU\b|\bProcessor\b|@.*?GHz", " ", name)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


# --------------------------------------------------------------------------------------
# The mechanisms
# --------------------------------------------------------------------------------------

class ModuleNotAvailable(Exception):
    """The attention module a mechanism lives in does not exist (yet)."""


def _import_attention(module: str):
    """Import ``attnbook.attention.<module>``; a *missing* module is not an error of ours."""
    name = f"attnbook.attention.{module}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name == name:  # the file is absent; any other missing import is a real bug
            raise ModuleNotAvailable(f"module not available: {name}") from None
        raise


@dataclass(frozen=True)
class Mechanism:
    """One entry of the benchmark.

    ``build(seq_len, head_dim, device, dtype, generator)`` returns ``fn(q, k, v) ->
    output`` with every parameter the mechanism needs for that length (projections,
    random features) drawn outside the timed call. ``reference(q, k, v)`` is the exact
    attention the mechanism approximates (what its error is measured against);
    ``baseline`` names the entry it is timed against (torch's SDPA, causal or not).
    """

    name: str
    family: str
    exact: bool
    causal: bool
    params: str
    module: str
    build: Callable[[int, int, torch.device, torch.dtype, torch.Generator], AttentionFn]
    baseline: str | None = "sdpa"
    max_len: int | None = None
    note: str = ""
    reference: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None
    expected_exponent: str = "1"
    expected_note: str = ""  # what the expected exponent counts, e.g. "work"
    unavailable: Callable[[], str | None] | None = None  # why it cannot run here, if it cannot
    measure_error: bool = True  # False for the non-attention reference


def exact_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = False) -> Tensor:
    """softmax(QKᵀ/√d)V computed in full: the reference every error is measured against."""
    from .attention.dot_product import scaled_dot_product_attention

    return scaled_dot_product_attention(q, k, v, causal=causal)


def _exact_causal(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return exact_attention(q, k, v, causal=True)


# Each builder imports its module when called, so a module still being written makes
# only its own entries unavailable.

def _naive(seq_len, head_dim, device, dtype, generator):
    mod = _import_attention("dot_product")
    # (out, n×n weights): the weights are returned, so the n×n matrix is kept and measured
    return lambda q, k, v: mod.scaled_dot_product_attention(q, k, v, return_weights=True)


def _sdpa(causal):
    def build(seq_len, head_dim, device, dtype, generator):
        mod = _import_attention("dot_product")
        return lambda q, k, v: mod.sdpa(q, k, v, causal=causal)
    return build


def _flash(seq_len, head_dim, device, dtype, generator):
    mod = _import_attention("flash")
    return lambda q, k, v: mod.flash_attention(q, k, v)


def _flex(seq_len, head_dim, device, dtype, generator):
    mod = _import_attention("flex")
    return lambda q, k, v: mod.flex_attention(q, k, v)  # eager: no torch.compile


def _flex_unavailable() -> str | None:
    available, reason = _import_attention("flex").flex_attention_available()
    return None if available else f"FlexAttention not available: {reason}"


SLIDING_WINDOW = 128  # keys on each side of the query
NUM_GLOBAL = 8  # Longformer's global tokens (the first 8 positions)
LINFORMER_K = 256  # projected length (Wang et al. 2020 use k = 128 and 256)
BIGBIRD_BLOCKS = {"num_window_blocks": 3, "num_global_blocks": 2, "num_random_blocks": 3}


def _sliding(seq_len, head_dim, device, dtype, generator):
    mod = _import_attention("local")
    return lambda q, k, v: mod.sliding_window_attention(q, k, v, window=SLIDING_WINDOW)


def _longformer(seq_len, head_dim, device, dtype, generator):
    mod = _import_attention("local")
    global_mask = torch.arange(seq_len, device=device) < NUM_GLOBAL  # the first NUM_GLOBAL tokens
    return lambda q, k, v: mod.longformer_attention(q, k, v, window=SLIDING_WINDOW,
                                                    global_mask=global_mask)


def bigbird_block_size(seq_len: int) -> int:
    """64 (the paper's block) from n = 1024 on; smaller below so that n has 16 blocks."""
    return max(1, min(64, seq_len // 16))


def _bigbird(seq_len, head_dim, device, dtype, generator):
    mod = _import_attention("bigbird")
    block = bigbird_block_size(seq_len)
    return lambda q, k, v: mod.bigbird_attention(q, k, v, block_size=block, **BIGBIRD_BLOCKS)


def sparse_stride(seq_len: int) -> int:
    """Child et al. take the stride l close to √n; we take ⌊√n⌋."""
    return max(1, math.isqrt(seq_len))


def sparse_num_summary(seq_len: int) -> int:
    """c = 8 summary positions per block (Child et al. use c in {8, 16, 32} for l in {128, 256})."""
    return min(8, sparse_stride(seq_len))


def _strided(seq_len, head_dim, device, dtype, generator):
    mod = _import_attention("sparse")
    stride = sparse_stride(seq_len)
    return lambda q, k, v: mod.strided_attention(q, k, v, stride=stride)


def _fixed(seq_len, head_dim, device, dtype, generator):
    mod = _import_attention("sparse")
    stride, summary = sparse_stride(seq_len), sparse_num_summary(seq_len)
    return lambda q, k, v: mod.fixed_attention(q, k, v, stride=stride, num_summary=summary)


def _linformer(seq_len, head_dim, device, dtype, generator):
    mod = _import_attention("linformer")
    k_proj = min(LINFORMER_K, seq_len)
    # Untrained: E and F are the random Johnson-Lindenstrauss projections N(0, 1/k).
    e_proj = mod.make_linformer_projection(seq_len, k_proj, generator=generator).detach()
    f_proj = mod.make_linformer_projection(seq_len, k_proj, generator=generator).detach()
    e_proj, f_proj = e_proj.to(device=device, dtype=dtype), f_proj.to(device=device, dtype=dtype)
    return lambda q, k, v: mod.linformer_attention(q, k, v, e_proj, f_proj)


def mean_pooling_projection(seq_len: int, k: int) -> Tensor:
    """(k, seq_len) matrix whose row r averages positions r·s ... r·s + s − 1, s = seq_len / k.

    Wang et al. (2020, Sec. 4, "General projections") list mean pooling with kernel and
    stride n/k among the projections that can replace learned E and F; unlike random
    ones it needs no training to keep nearby keys together.
    """
    if seq_len % k:
        raise ValueError(f"seq_len={seq_len} is not divisible by k={k}")
    segment = seq_len // k
    owner = torch.arange(seq_len) // segment  # which pooled row each position joins
    return (owner[None, :] == torch.arange(k)[:, None]).to(torch.float64) / segment


def _linformer_pool(seq_len, head_dim, device, dtype, generator):
    mod = _import_attention("linformer")
    pool = mean_pooling_projection(seq_len, min(LINFORMER_K, seq_len))
    pool = pool.to(device=device, dtype=dtype)  # E = F: (k, seq_len)
    return lambda q, k, v: mod.linformer_attention(q, k, v, pool, pool)


def _linear(causal):
    def build(seq_len, head_dim, device, dtype, generator):
        mod = _import_attention("linear")
        return lambda q, k, v: mod.linear_attention(q, k, v, causal=causal)
    return build


def _performer(seq_len, head_dim, device, dtype, generator):
    mod = _import_attention("performer")
    omega = mod.gaussian_random_matrix(mod.default_num_features(head_dim), head_dim,
                                       generator=generator, dtype=dtype, device=device)
    return lambda q, k, v: mod.performer_attention(q, k, v, omega)


REFORMER = {"num_buckets": 32, "chunk_size": 64, "num_rounds": 2}


def _reformer(seq_len, head_dim, device, dtype, generator):
    mod = _import_attention("reformer")
    chunk = min(REFORMER["chunk_size"], seq_len)
    seed = int(torch.randint(2**31, (1,), generator=generator))

    def attend(q, k, v):  # shared QK: k is not used, the keys are q's unit vectors
        hashes = torch.Generator(device=q.device).manual_seed(seed)  # same rotations every call
        return mod.lsh_attention(q, v, num_buckets=REFORMER["num_buckets"], chunk_size=chunk,
                                 num_rounds=REFORMER["num_rounds"], generator=hashes)
    return attend


def _shared_qk_reference(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Dense shared-QK attention with the self-mask: what LSH attention approximates."""
    return _import_attention("reformer").full_shared_qk_attention(q, v)


def _stream(seq_len, head_dim, device, dtype, generator):
    _import_attention("dot_product")  # nothing to import; keeps the builders uniform
    return lambda q, k, v: torch.cat([q, k, v, q, k], dim=-1) * 2.0  # (b, h, n, 5·d)


MECHANISMS: list[Mechanism] = [
    Mechanism("stream_reference", "reference", True, False,
              "not attention: concatenate and scale q, k, v (5·n·d numbers)", "dot_product",
              _stream, baseline=None, measure_error=False,
              note="an operation that is linear in n by construction: the exponent this "
                   "machine measures for it is what 'linear' looks like here"),
    Mechanism("naive", "exact", True, False, "materialises the n×n weights", "dot_product",
              _naive, max_len=8192, expected_exponent="2",
              note="only up to n = 8192: it holds about three n×n matrices at its peak"),
    Mechanism("sdpa", "exact", True, False, "torch.nn.functional.scaled_dot_product_attention",
              "dot_product", _sdpa(False), baseline=None, expected_exponent="2"),
    Mechanism("sdpa_causal", "exact", True, True, "SDPA with is_causal=True", "dot_product",
              _sdpa(True), baseline=None, expected_exponent="2",
              reference=_exact_causal),
    Mechanism("tiled", "exact", True, False, "flash.flash_attention, default tiles", "flash",
              _flash, expected_exponent="2",
              note="exact tiled (FlashAttention-style) attention in eager PyTorch"),
    Mechanism("flex_eager", "exact", True, False, "FlexAttention, no mask, eager", "flex",
              _flex, max_len=2048, expected_exponent="2", unavailable=_flex_unavailable,
              note="eager FlexAttention is unfused (it materialises the scores); only "
                   "torch.compile fuses it, and the benchmark runs eagerly"),
    Mechanism("sliding_window", "sparse", False, False,
              f"two-sided window of {SLIDING_WINDOW}", "local", _sliding),
    Mechanism("longformer", "sparse", False, False,
              f"window {SLIDING_WINDOW} + {NUM_GLOBAL} global tokens", "local", _longformer),
    Mechanism("bigbird", "sparse", False, False,
              "blocks of 64; 3 window, 2 global, 3 random blocks", "bigbird", _bigbird),
    Mechanism("sparse_strided", "sparse", False, True, "stride ⌊√n⌋ (causal)", "sparse",
              _strided, baseline="sdpa_causal", reference=_exact_causal,
              expected_exponent="1.5", expected_note="work",
              note="n·√n by design: stride grows as √n"),
    Mechanism("sparse_fixed", "sparse", False, True, "stride ⌊√n⌋, c = 8 (causal)", "sparse",
              _fixed, baseline="sdpa_causal", reference=_exact_causal,
              expected_exponent="1.5", expected_note="work",
              note="n·√n by design: n/l summary keys per row"),
    Mechanism("linformer", "low-rank", False, False,
              f"k = {LINFORMER_K}, random (untrained) E, F", "linformer", _linformer),
    Mechanism("linformer_pool", "low-rank", False, False,
              f"k = {LINFORMER_K}, E = F = mean pooling over n/k positions", "linformer",
              _linformer_pool),
    Mechanism("linear", "kernel", False, False, "φ = elu + 1", "linear", _linear(False)),
    Mechanism("linear_causal", "kernel", False, True, "φ = elu + 1, chunks of 64", "linear",
              _linear(True), baseline="sdpa_causal", reference=_exact_causal),
    Mechanism("performer", "kernel", False, False,
              "FAVOR+, m = ⌈d ln d⌉ orthogonal positive features", "performer", _performer),
    Mechanism("reformer", "hashing", False, False,
              "LSH, 32 buckets, chunks of 64, 2 rounds; shared QK", "reformer", _reformer,
              reference=_shared_qk_reference, expected_note="n log n sort",
              note="error against dense shared-QK attention (unit keys, self-mask, scale 1)"),
]


def mechanism_names() -> list[str]:
    return [m.name for m in MECHANISMS]


def get_mechanisms(names: Sequence[str] | None = None) -> list[Mechanism]:
    """The registry entries called ``names`` (all of them for None), in registry order."""
    if names is None:
        return list(MECHANISMS)
    known = mechanism_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown mechanism(s) {unknown}; known: {known}")
    return [m for m in MECHANISMS if m.name in names]


# --------------------------------------------------------------------------------------
# Running a benchmark
# --------------------------------------------------------------------------------------

@dataclass
class BenchConfig:
    """What ``run_benchmark`` measures. Defaults: the full CPU run."""

    device: str = "cpu"
    lengths: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192, 16384)
    batch: int = 1
    heads: int = 4
    head_dim: int = 64
    repeats: int = 5
    min_repeats: int = 3
    budget_s: float = 6.0  # per point: stop repeating once this much time was spent
    max_call_s: float = 20.0  # skip a point whose calls are predicted to take longer
    error_len: int = 1024
    fit_from: int = 2048  # fit exponents on lengths in [fit_from, fit_to]
    fit_to: int = 16384
    measure_memory: bool = True
    report_targets: bool = True  # the targets; meaningless at --quick sizes
    allocator: str = "default"  # recorded only: "reuse" when set_heap_reuse(True) is in force
    seed: int = 0
    names: list[str] | None = None  # registry entries to run; None = all


def _available_memory() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.virtual_memory().available


def naive_peak_estimate(batch: int, heads: int, seq_len: int, element_bytes: int = 4) -> int:
    """About three n×n matrices (scores, exponentials, weights) are alive at the naive peak."""
    return 3 * batch * heads * seq_len * seq_len * element_bytes


def predicted_call_time(points: Sequence[tuple[int, float]], seq_len: int) -> float | None:
    """Extrapolate a mechanism's time per call to ``seq_len`` from its last measurements.

    The local exponent between the last two points (clamped to [1, 2.5]; 2 with a single
    point) carries the last time forward. Used only to skip points that would blow the
    time budget, never as a result.
    """
    if not points:
        return None
    (n_last, t_last) = points[-1]
    exponent = 2.0
    if len(points) >= 2:
        (n_prev, t_prev) = points[-2]
        exponent = min(2.5, max(1.0, math.log(t_last / t_prev) / math.log(n_last / n_prev)))
    return t_last * (seq_len / n_last) ** exponent


def _error_entry(mechanism: Mechanism, config: BenchConfig, device) -> dict:
    """Relative error against exact attention at ``config.error_len``, per input kind, float64."""
    n = config.error_len
    errors = {}
    fn = mechanism.build(n, config.head_dim, device, torch.float64,
                         torch.Generator().manual_seed(config.seed + 1))
    reference = mechanism.reference or exact_attention
    for index, (structure, make) in enumerate(STRUCTURES.items()):
        generator = torch.Generator().manual_seed(config.seed + 100 + index)
        q, k, v = make(config.batch, config.heads, n, config.head_dim, generator=generator,
                       dtype=torch.float64, device=device)
        with torch.no_grad():
            out = fn(q, k, v)
            out = out[0] if isinstance(out, tuple) else out
            errors[structure] = relative_error(out, reference(q, k, v))
    return errors


def _ratio(t: float | None, r: float | None) -> float | None:
    return None if t is None or r is None else t / r


def summarise(results: dict, config: BenchConfig) -> dict:
    """Fits, crossovers, ratios against the baseline and the tiled-exact targets."""
    by_name = {m["name"]: m for m in results["mechanisms"]}

    def medians(entry):
        table = {p["seq_len"]: p.get("median_s") for p in entry["points"]}
        return [table.get(n) for n in config.lengths]

    for entry in results["mechanisms"]:
        times = medians(entry)
        fit_points = [(n, t) for n, t in zip(config.lengths, times)
                      if t is not None and config.fit_from <= n <= config.fit_to]
        entry["fit"] = None
        if len({n for n, _ in fit_points}) >= 2:
            exponent, _ = fit_power_law([n for n, _ in fit_points], [t for _, t in fit_points])
            entry["fit"] = {"exponent": exponent, "lengths": [n for n, _ in fit_points]}
        baseline = by_name.get(entry["baseline"]) if entry["baseline"] else None
        entry["ratio_to_baseline"] = None
        entry["crossover"] = entry["compared_up_to"] = None
        if baseline is not None:
            base_times = medians(baseline)
            entry["ratio_to_baseline"] = [
                {"seq_len": n, "ratio": _ratio(t, b)}
                for n, t, b in zip(config.lengths, times, base_times) if _ratio(t, b) is not None
            ]
            entry["crossover"] = crossover_length(config.lengths, times, base_times)
            common = [n for n, t, b in zip(config.lengths, times, base_times)
                      if t is not None and b is not None]
            entry["compared_up_to"] = max(common) if common else None

    summary: dict = {}
    tiled, naive, sdpa = by_name.get("tiled"), by_name.get("naive"), by_name.get("sdpa")
    if tiled and naive and sdpa:
        t_tiled, t_naive, t_sdpa = medians(tiled), medians(naive), medians(sdpa)
        summary["tiled_over_naive_time"] = [
            {"seq_len": n, "ratio": _ratio(a, b)}
            for n, a, b in zip(config.lengths, t_tiled, t_naive) if _ratio(a, b) is not None]
        summary["tiled_over_sdpa_time"] = [
            {"seq_len": n, "ratio": _ratio(a, b)}
            for n, a, b in zip(config.lengths, t_tiled, t_sdpa) if _ratio(a, b) is not None]
        memory = {name: {p["seq_len"]: p.get("peak_extra_bytes") for p in entry["points"]}
                  for name, entry in (("tiled", tiled), ("naive", naive))}
        common = [n for n in config.lengths
                  if memory["tiled"].get(n) and memory["naive"].get(n)]
        if common:
            n_mem = 8192 if 8192 in common else max(common)
            summary["tiled_over_naive_memory"] = {
                "seq_len": n_mem, "ratio": memory["tiled"][n_mem] / memory["naive"][n_mem]}
        if config.report_targets:
            summary["targets"] = _targets(summary, results, config)
    return summary


def _targets(summary: dict, results: dict, config: BenchConfig) -> list[dict]:
    """The issue's targets for this machine, reported (never asserted).

    Values are stored unrounded (round them for display only). The n·√n patterns
    (``expected_exponent`` other than "1") have no linear target: their fitted exponent
    is reported with ``met`` None.
    """
    targets = []
    vs_naive = [r for r in summary["tiled_over_naive_time"] if r["seq_len"] >= 1024]
    if vs_naive:
        targets.append({"target": "tiled exact faster than naive for n >= 1024",
                        "met": all(r["ratio"] < 1 for r in vs_naive),
                        "value": {str(r["seq_len"]): r["ratio"] for r in vs_naive}})
    vs_sdpa = [r for r in summary["tiled_over_sdpa_time"] if r["seq_len"] >= 1024]
    if vs_sdpa:
        targets.append({"target": "tiled exact within 2.5x of SDPA (n >= 1024)",
                        "met": all(r["ratio"] <= 2.5 for r in vs_sdpa),
                        "value": {str(r["seq_len"]): r["ratio"] for r in vs_sdpa}})
    if "tiled_over_naive_memory" in summary:
        mem = summary["tiled_over_naive_memory"]
        targets.append({"target": f"tiled peak extra memory <= 5% of naive's "
                                  f"at n = {mem['seq_len']}",
                        "met": mem["ratio"] <= 0.05, "value": mem["ratio"]})
    reference = next((e for e in results["mechanisms"]
                      if e["family"] == "reference" and e.get("fit")), None)
    for entry in results["mechanisms"]:
        if entry["exact"] or entry["fit"] is None:
            continue
        exponent = entry["fit"]["exponent"]
        note = entry["note"]
        if reference is not None:
            note = (note + "; " if note else "") + (
                f"a linear reference op measures {reference['fit']['exponent']:.2f} here")
        if entry["expected_exponent"] != "1":
            targets.append({"target": f"{entry['name']}: n·√n pattern, fitted time exponent "
                                      f"(reported, no target)",
                            "met": None, "value": exponent, "note": note})
            continue
        targets.append({"target": f"{entry['name']}: time exponent <= 1.15",
                        "met": exponent <= 1.15, "value": exponent, "note": note})
    return targets


def _source_hash(module) -> str | None:
    """First 12 hex digits of the SHA-256 of a module's source: which version was measured."""
    try:
        with open(module.__file__, "rb") as source:
            return hashlib.sha256(source.read()).hexdigest()[:12]
    except (OSError, TypeError):
        return None


def _skip_reason(mech: Mechanism, entry: dict, n: int, config: BenchConfig, device) -> str | None:
    """Why the point (mech, n) is not measured, or None."""
    if mech.max_len is not None and n > mech.max_len:
        return f"n > {mech.max_len} ({mech.note})"
    if (mech.name == "naive" and device.type == "cpu" and _available_memory() is not None
            and naive_peak_estimate(config.batch, config.heads, n) > 0.6 * _available_memory()):
        return "not enough free memory for the n×n matrices"
    warmups = [(p["seq_len"], p["warmup_s"]) for p in entry["points"] if p["status"] == "ok"]
    predicted = predicted_call_time(warmups, n)
    # Exact mechanisms are always measured: they are the baselines and the targets.
    if not mech.exact and predicted is not None and predicted > config.max_call_s:
        return (f"predicted {predicted:.0f} s per call (extrapolated from the shorter lengths) "
                f"exceeds max_call_s = {config.max_call_s:g} s")
    return None


def _prepare(mechanisms, entries, config: BenchConfig, device, progress) -> list:
    """First pass, by increasing length: build each point and make its first (untimed) call.

    That call measures the peak memory and doubles as the warm-up; its duration,
    ``warmup_s``, is what the time guard extrapolates from. Returns the points to time,
    as (mechanism name, call, point) in the order of the timing rounds.
    """
    timed = []
    for n in config.lengths:
        generator = torch.Generator().manual_seed(config.seed)
        q, k, v = (torch.randn(config.batch, config.heads, n, config.head_dim,
                               generator=generator).to(device) for _ in range(3))
        for mech in mechanisms:
            entry = entries[mech.name]
            if not entry["available"]:
                continue
            reason = _skip_reason(mech, entry, n, config, device)
            point = {"seq_len": n, "status": "ok"}
            entry["points"].append(point)
            if reason is not None:
                point.update(status="skipped", reason=reason)
                progress(f"  n={n:6d} {mech.name:16s} skipped: {reason}")
                continue
            try:
                fn = mech.build(n, config.head_dim, device, torch.float32,
                                torch.Generator().manual_seed(config.seed + 1))
                call = (lambda fn=fn, q=q, k=k, v=v: fn(q, k, v))
                start = time.perf_counter()
                with torch.no_grad():
                    if config.measure_memory:
                        point["peak_extra_bytes"] = peak_extra_memory(call, device=device)
                    else:
                        point["peak_extra_bytes"] = None
                        _timed_call(call, device)
                point.update(warmup_s=time.perf_counter() - start, times_s=[], wall_times_s=[])
                timed.append((mech.name, call, point))
                mem = point["peak_extra_bytes"]
                mem_text = "" if mem is None else f"  peak +{mem / 2**20:9.2f} MiB"
                progress(f"  n={n:6d} {mech.name:16s} first call {point['warmup_s']:8.3f} s"
                         f"{mem_text}")
            except Exception as error:  # recorded, and the run goes on
                point.update(status="error", reason=f"{type(error).__name__}: {error}")
                entry["failures"].append(f"n={n}: {point['reason']}")
                progress(f"  n={n:6d} {mech.name:16s} error: {point['reason']}")
        gc.collect()  # slow (~0.2 s with torch loaded), so once per length, not per call
    return timed


# --8<-- [start:rounds]
CLOCKS = {"thread_cpu": "CPU time of the one torch thread (time.thread_time)",
          "wall": "wall clock (time.perf_counter)"}


def benchmark_clock(device: torch.device | str) -> str:
    """The clock ``run_benchmark`` times with: a key of ``CLOCKS``.

    On the CPU with one torch thread all of torch's work runs on the calling thread, so
    that thread's CPU time measures the call without the time the scheduler gives to other
    programs (as ``clock_for`` does for chapter 10). With more threads, the calling
    thread's CPU time would miss the others' work, and a GPU works asynchronously: wall
    clock then. The wall time of every call is recorded too (``wall_times_s``).
    """
    if torch.device(device).type == "cpu" and torch.get_num_threads() == 1:
        return "thread_cpu"
    return "wall"


def _timed_call(fn: Callable[[], object], device, clock: str = "wall") -> tuple[float, float]:
    """Seconds taken by one call of ``fn`` on ``clock`` and on the wall clock, result dropped."""
    read = time.thread_time if clock == "thread_cpu" else time.perf_counter
    synchronize(device)
    start, wall_start = read(), time.perf_counter()
    result = fn()
    synchronize(device)
    elapsed, wall = read() - start, time.perf_counter() - wall_start
    del result
    return elapsed, wall


def _time_rounds(timed, entries, config: BenchConfig, device, progress, results) -> None:
    """Time every prepared point round-robin, over all lengths and mechanisms at once.

    Round r calls every point once before round r + 1 starts. On a machine shared with
    other jobs the load drifts over minutes; interleaving spreads that drift over every
    length and every mechanism alike, instead of biasing whichever ran during a busy
    spell (which would tilt the fitted exponents). A point stops once it has
    ``min_repeats`` calls and has used ``budget_s`` seconds (on ``results["clock"]``); the
    median is reported. Every point's first call was made, untimed, by ``_prepare``: the
    memory measurement, which doubles as the warm-up.
    """
    clock = results["clock"]
    start = time.perf_counter()
    for round_index in range(config.repeats):
        for name, call, point in timed:
            times = point["times_s"]
            if point["status"] != "ok" or (len(times) >= config.min_repeats
                                           and sum(times) >= config.budget_s):
                continue
            try:
                with torch.no_grad():
                    elapsed, wall = _timed_call(call, device, clock)
                times.append(elapsed)
                point["wall_times_s"].append(wall)
            except Exception as error:
                point.update(status="error", reason=f"{type(error).__name__}: {error}")
                entries[name]["failures"].append(f"n={point['seq_len']}: {point['reason']}")
        results["load_average_per_round"].append(
            {"round": round_index, "elapsed_s": time.perf_counter() - start,
             "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None})
        progress(f"  timing round {round_index + 1}/{config.repeats} done "
                 f"({time.perf_counter() - start:.0f} s)")
    for name, _, point in timed:
        if point["status"] == "ok":
            point["median_s"] = statistics.median(point["times_s"])
            point["median_wall_s"] = statistics.median(point["wall_times_s"])
# --8<-- [end:rounds]


def run_benchmark(config: BenchConfig, progress: Callable[[str], None] = print) -> dict:
    """Measure every selected mechanism: memory and time at each length, then its error.

    A first pass measures memory (and warms up) point by point; then the timing rounds
    interleave all points (see ``_time_rounds``); then the errors on structured inputs.
    A mechanism that raises is recorded with its error and the run goes on; one whose
    module does not exist yet is recorded as unavailable.
    """
    device = torch.device(config.device)
    mechanisms = get_mechanisms(config.names)
    results: dict = {"schema": 1, "machine": machine_info(device),
                     "clock": benchmark_clock(device), "bench_sha256": bench_source_hash(),
                     "config": {k: (list(v) if isinstance(v, tuple) else v)
                                for k, v in vars(config).items()},
                     "load_average_per_round": [], "mechanisms": []}
    entries: dict[str, dict] = {}
    for mech in mechanisms:
        entry = {"name": mech.name, "family": mech.family, "exact": mech.exact,
                 "causal": mech.causal, "params": mech.params, "baseline": mech.baseline,
                 "expected_exponent": mech.expected_exponent,
                 "expected_note": mech.expected_note, "note": mech.note,
                 "module": f"attnbook.attention.{mech.module}", "module_sha256": None,
                 "available": True, "reason": None, "points": [], "error": None,
                 "error_seq_len": config.error_len, "failures": []}
        try:
            module = _import_attention(mech.module)
            entry["module_sha256"] = _source_hash(module)
            reason = mech.unavailable() if mech.unavailable else None
        except ModuleNotAvailable as missing:
            reason = str(missing)
        if reason is not None:
            entry.update(available=False, reason=reason)
            progress(f"  skip {mech.name}: {reason}")
        entries[mech.name] = entry
        results["mechanisms"].append(entry)

    start, cpu_start = time.perf_counter(), time.process_time()
    timed = _prepare(mechanisms, entries, config, device, progress)
    _time_rounds(timed, entries, config, device, progress, results)
    del timed  # the inputs and built parameters of every length
    gc.collect()
    for n in config.lengths:
        for mech in mechanisms:
            entry = entries[mech.name]
            point = next((p for p in entry["points"] if p["seq_len"] == n), None)
            if point is not None and point["status"] == "ok":
                progress(f"  n={n:6d} {mech.name:16s} median {point['median_s'] * 1e3:10.2f} ms"
                         f" over {len(point['times_s'])} calls")

    for mech in mechanisms:  # errors against exact attention on structured inputs
        entry = entries[mech.name]
        if not entry["available"] or not mech.measure_error:
            continue
        try:
            entry["error"] = _error_entry(mech, config, device)
            errs = ", ".join(f"{s} {e:.3g}" for s, e in entry["error"].items())
            progress(f"  error n={config.error_len} {mech.name:16s} {errs}")
        except Exception as error:
            entry["failures"].append(
                f"error at n={config.error_len}: {type(error).__name__}: {error}")
            progress(f"  error n={config.error_len} {mech.name:16s} FAILED: {error}")

    results["summary"] = summarise(results, config)
    results["elapsed_s"] = time.perf_counter() - start
    results["cpu_s"] = time.process_time() - cpu_start  # CPU time of the whole process
    results["machine"]["load_average_after"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    return results


def failures(results: dict) -> list[str]:
    """Every failure recorded in ``results``: '<mechanism>: <what>'."""
    return [f"{m['name']}: {f}" for m in results["mechanisms"] for f in m["failures"]]


# --------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------

SUMMARY_HEADERS = ["mechanism", "family", "causal", "exponent", "expected", "crossover",
                   "time / baseline", "peak MiB", "err local", "err clustered", "err gaussian"]


def _largest_ok_point(entry: dict, seq_len: int | None = None) -> dict | None:
    points = [p for p in entry["points"] if p["status"] == "ok"
              and (seq_len is None or p["seq_len"] == seq_len)]
    return max(points, key=lambda p: p["seq_len"]) if points else None


def summary_rows(results: dict, memory_len: int = 8192) -> list[list[str]]:
    """One row of strings per mechanism, under ``SUMMARY_HEADERS``.

    "exponent" is fitted on the measured lengths within the configured range; when those
    are fewer than the range's lengths, the range actually fitted follows in brackets
    (e.g. "2.09 [2k–8k]"). "expected" names what it counts when the registry says (e.g.
    "1.5 (work)"). "time / baseline" is at the longest length both were measured at
    (given in brackets); "peak MiB" is the peak extra memory at ``memory_len`` (or the
    longest length measured, in brackets, when that is shorter).
    """
    config = results.get("config") or {}
    in_range = [n for n in config.get("lengths", [])
                if config.get("fit_from", 0) <= n <= config.get("fit_to", float("inf"))]
    registry = {m.name: m for m in MECHANISMS}
    rows = []
    for entry in results["mechanisms"]:
        name = entry["name"]
        if not entry["available"]:
            rows.append([name, entry["family"], "yes" if entry["causal"] else "no", "-", "-",
                         "-", entry["reason"] or "unavailable", "-", "-", "-", "-"])
            continue
        fit = entry.get("fit")
        exponent = f"{fit['exponent']:.2f}" if fit else "-"
        if fit and in_range and list(fit["lengths"]) != in_range:
            exponent += f" [{_short_length(fit['lengths'][0])}–{_short_length(fit['lengths'][-1])}]"
        expected = entry["expected_exponent"]
        note = entry.get("expected_note")
        if note is None and name in registry:  # a file recorded before the field existed
            note = registry[name].expected_note
        if note:
            expected += f" ({note})"
        if entry["family"] == "reference":
            crossover, ratio = "(reference)", "-"
        elif entry["baseline"] is None:
            crossover, ratio = "(baseline)", "1"
        else:
            if entry["crossover"] is not None:
                crossover = str(entry["crossover"])
            elif entry.get("compared_up_to") is not None:
                crossover = f"none up to {entry['compared_up_to']}"
            else:
                crossover = "-"
            ratios = entry.get("ratio_to_baseline") or []
            ratio = f"{ratios[-1]['ratio']:.3g} [{ratios[-1]['seq_len']}]" if ratios else "-"
        point = _largest_ok_point(entry, memory_len) or _largest_ok_point(entry)
        if point is None or point.get("peak_extra_bytes") is None:
            memory = "-"
        else:
            memory = f"{point['peak_extra_bytes'] / 2**20:.1f}"
            if point["seq_len"] != memory_len:
                memory += f" [{point['seq_len']}]"
        errors = entry.get("error") or {}
        error_cells = [f"{errors[s]:.2g}" if s in errors else "-" for s in STRUCTURES]
        if entry["failures"]:
            exponent = "FAILED"
        rows.append([name, entry["family"], "yes" if entry["causal"] else "no", exponent,
                     expected, crossover, ratio, memory, *error_cells])
    return rows


def _short_length(n: int) -> str:
    """2048 -> '2k', 512 -> '512'."""
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain fixed-width text table."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


# --------------------------------------------------------------------------------------
# The machine's roofline and the cost of each step of attention (chapter 10)
# --------------------------------------------------------------------------------------

# --8<-- [start:peaks]
def clock_for(device: torch.device | str) -> Callable[[], float]:
    """The clock a benchmark should read: this thread's CPU time on the CPU, wall time on a GPU.

    On a CPU shared with other programs, wall-clock time includes the time the scheduler
    gave to them; the CPU time of the calling thread does not (run torch on one thread,
    ``torch.set_num_threads(1)``, so that all its work is done on that thread). A GPU
    works asynchronously, so there only synchronised wall-clock time is meaningful.
    """
    return time.perf_counter if torch.device(device).type == "cuda" else time.thread_time


def seconds_per_call(
    fn: Callable[[], object], *, device: torch.device | str = "cpu", repeats: int = 5,
    clock: Callable[[], float] | None = None,
) -> float:
    """Median seconds of ``repeats`` calls of ``fn`` after one warm-up call, read on ``clock``.

    ``clock`` defaults to ``clock_for(device)``; each call is bracketed by ``synchronize``.
    """
    check_positive_int("repeats", repeats)
    clock = clock or clock_for(device)
    result = fn()  # warm-up: allocations, kernel choice
    del result
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        result = fn()
        synchronize(device)
        times.append(clock() - start)
        del result
    return statistics.median(times)


def measure_matmul_flops(
    size: int = 2048, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    repeats: int = 3, clock: Callable[[], float] | None = None,
) -> dict:
    """The machine's practical peak arithmetic rate: one large square matrix product.

    A (size × size) @ (size × size) product does 2·size³ floating-point operations
    (size³ multiply-adds) on 3·size² numbers, so for large ``size`` it is limited by
    arithmetic, not by memory. Returns ``{"flops_per_s", "seconds", "flops", "size"}``
    (``seconds`` is the median of ``repeats`` calls, see ``seconds_per_call``).
    """
    check_positive_int("size", size)
    a = torch.ones(size, size, dtype=dtype, device=device)  # values do not change the speed
    b = torch.ones(size, size, dtype=dtype, device=device)
    out = torch.empty(size, size, dtype=dtype, device=device)
    seconds = seconds_per_call(lambda: torch.mm(a, b, out=out), device=device, repeats=repeats,
                               clock=clock)
    flops = 2 * size**3
    return {"flops_per_s": flops / seconds, "seconds": seconds, "flops": flops, "size": size}


def measure_copy_bandwidth(
    numel: int = 2**25, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    repeats: int = 5, clock: Callable[[], float] | None = None,
) -> dict:
    """The machine's practical memory bandwidth: copy a large array into another one.

    ``dst.copy_(src)`` reads ``numel`` elements and writes ``numel`` elements and does
    no arithmetic, so its rate is the memory system's. Pick ``numel`` well beyond the
    last-level cache (the default, 2²⁵ float32 = 128 MiB per array, is). Returns
    ``{"bytes_per_s", "seconds", "bytes", "numel"}``, counting both the read and the write.
    """
    check_positive_int("numel", numel)
    src = torch.ones(numel, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    seconds = seconds_per_call(lambda: dst.copy_(src), device=device, repeats=repeats, clock=clock)
    moved = 2 * numel * src.element_size()
    return {"bytes_per_s": moved / seconds, "seconds": seconds, "bytes": moved, "numel": numel}
# --8<-- [end:peaks]


# --8<-- [start:roofline]
def arithmetic_intensity(flops: float, bytes_moved: float) -> float:
    """Floating-point operations per byte of memory traffic."""
    if flops < 0 or bytes_moved <= 0:
        raise ValueError(
            f"need flops >= 0 and bytes_moved > 0, got {flops} and {bytes_moved}")
    return flops / bytes_moved


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """The intensity (FLOP/byte) at which arithmetic and memory take equal time.

    A step with a lower intensity is memory-bound on this machine, a higher one compute-bound.
    """
    if peak_flops <= 0 or bandwidth <= 0:
        raise ValueError(
            f"peak_flops and bandwidth must be positive, got {peak_flops} and {bandwidth}")
    return peak_flops / bandwidth


def roofline_time(
    flops: float, bytes_moved: float, *, peak_flops: float, bandwidth: float,
) -> float:
    """Least time a step can take: max(flops / peak_flops, bytes_moved / bandwidth).

    The roofline model (Williams et al., 2009): arithmetic and memory traffic overlap at
    best, so the slower of the two sets the floor.
    """
    ridge_point(peak_flops, bandwidth)  # validates both
    if flops < 0 or bytes_moved < 0:
        raise ValueError(
            f"flops and bytes_moved must be >= 0, got {flops} and {bytes_moved}")
    return max(flops / peak_flops, bytes_moved / bandwidth)
# --8<-- [end:roofline]


# --8<-- [start:step-costs]
SOFTMAX_FLOPS_PER_SCORE = 5  # max, subtract, exp, add to the sum, divide (exp counted as one)


def attention_step_costs(
    batch: int, heads: int, q_len: int, k_len: int, head_dim: int, v_dim: int | None = None,
    *, element_bytes: int = 4, softmax_reads: int = 5, softmax_writes: int = 3,
) -> dict[str, dict[str, int]]:
    """FLOPs and bytes moved by each step of the written-out attention, all heads together.

    Steps as in ``scaled_dot_product_attention`` (Algorithm 0 of Dao et al., 2022, with
    the scaling as its own pass): ``scores`` S = QKᵀ, ``scale`` S·(1/√d), ``softmax``
    and ``values`` O = PV. Bytes count each step's own inputs read once and outputs
    written once, the least an unfused step can move. The library's ``stable_softmax``
    makes five passes that read an n×m array (max, subtract, exp, sum, divide) and three
    that write one (subtract, exp, divide): ``softmax_reads`` and ``softmax_writes``;
    a fused softmax would read once and write once. Returns
    ``{step: {"flops", "bytes"}}``.
    """
    for name, value in (("batch", batch), ("heads", heads), ("q_len", q_len), ("k_len", k_len),
                        ("head_dim", head_dim), ("element_bytes", element_bytes)):
        check_positive_int(name, value)
    v_dim = head_dim if v_dim is None else check_positive_int("v_dim", v_dim)
    bh, nm, e = batch * heads, q_len * k_len, element_bytes
    return {
        "scores": {"flops": 2 * bh * nm * head_dim,
                   "bytes": e * bh * (q_len * head_dim + k_len * head_dim + nm)},
        "scale": {"flops": bh * nm, "bytes": e * bh * 2 * nm},
        "softmax": {"flops": SOFTMAX_FLOPS_PER_SCORE * bh * nm,
                    "bytes": e * bh * (softmax_reads + softmax_writes) * nm},
        "values": {"flops": 2 * bh * nm * v_dim,
                   "bytes": e * bh * (nm + k_len * v_dim + q_len * v_dim)},
    }
# --8<-- [end:step-costs]


# --8<-- [start:memory-wall]
def naive_peak_bytes(
    batch: int, heads: int, q_len: int, k_len: int, *, element_bytes: int = 4, n_by_n: int = 3,
) -> int:
    """Peak extra memory of attention that materialises its scores: n_by_n·b·h·n·m·e bytes.

    ``n_by_n`` is how many (q_len × k_len) arrays are alive at once at the peak: 3 for
    the library's ``scaled_dot_product_attention`` (during the softmax's exponential:
    scaled scores, shifted scores and exponentials; during its division: scaled scores,
    exponentials and weights), 1 for the least any method that stores the weights
    can do. Terms linear in the length (row maxima and sums; the output, which is made
    after the peak) are left out: they shrink relative to this one as the length grows.
    """
    for name, value in (("batch", batch), ("heads", heads), ("q_len", q_len), ("k_len", k_len),
                        ("element_bytes", element_bytes), ("n_by_n", n_by_n)):
        check_positive_int(name, value)
    return n_by_n * batch * heads * q_len * k_len * element_bytes


def naive_max_length(
    budget_bytes: int, *, batch: int = 1, heads: int, element_bytes: int = 4, n_by_n: int = 3,
) -> int:
    """The longest self-attention length n (= m) whose ``naive_peak_bytes`` fits the budget.

    n_by_n·b·h·e·n² <= budget gives n = ⌊√(budget / (n_by_n·b·h·e))⌋ (one layer, the
    forward pass, nothing else in memory; 0 when not even n = 1 fits).
    """
    for name, value in (("budget_bytes", budget_bytes), ("batch", batch), ("heads", heads),
                        ("element_bytes", element_bytes), ("n_by_n", n_by_n)):
        check_positive_int(name, value)
    return math.isqrt(budget_bytes // (n_by_n * batch * heads * element_bytes))
# --8<-- [end:memory-wall]


# --------------------------------------------------------------------------------------
# Reading recorded runs (chapter 16): staleness, flat records, downloads
# --------------------------------------------------------------------------------------

# --8<-- [start:stale]
def current_source_hashes(names: Sequence[str] | None = None) -> dict[str, str | None]:
    """The source hash of each mechanism's module as it is now (None: module missing).

    The same 12 hex digits ``run_benchmark`` stores as ``module_sha256``: a recorded
    mechanism whose hash differs from this one was measured on older (or newer) code.
    """
    hashes = {}
    for mech in get_mechanisms(names):
        try:
            hashes[mech.name] = _source_hash(_import_attention(mech.module))
        except ModuleNotAvailable:
            hashes[mech.name] = None
    return hashes


def bench_source_hash() -> str | None:
    """The same 12 hex digits for this file, ``attnbook/bench.py``, stored as ``bench_sha256``.

    It covers the whole file: the inputs, the mechanisms' parameters, the timing and the
    error references, and also the functions chapter 10 uses, so an edit to those flags a
    recording too (a false alarm is cheaper than a silent change).
    """
    import sys

    return _source_hash(sys.modules[__name__])


def harness_changes(results: dict, *, bench_hash: str | None = None,
                    torch_version: str | None = None) -> list[dict]:
    """What changed outside the mechanisms' modules since a run was recorded.

    Compares the run's ``bench_sha256`` with ``bench_source_hash()`` and its torch version
    with ``torch.__version__`` (or the given values). Returns ``[{"what", "recorded",
    "current"}]`` for each that differs; a run recorded before ``bench_sha256`` existed
    has ``recorded`` None there, and counts as changed. Helper modules that a mechanism's
    module imports (``attnbook.attention._checks``, masks) are not covered.
    """
    bench_hash = bench_source_hash() if bench_hash is None else bench_hash
    torch_version = torch.__version__ if torch_version is None else torch_version
    changes = []
    recorded = results.get("bench_sha256")
    if recorded != bench_hash:
        changes.append({"what": "attnbook/bench.py", "recorded": recorded, "current": bench_hash})
    recorded = results["machine"].get("torch_version")
    if recorded != torch_version:
        changes.append({"what": "torch", "recorded": recorded, "current": torch_version})
    return changes


def stale_mechanisms(results: dict, current: dict[str, str | None] | None = None) -> list[dict]:
    """Mechanisms of a recorded run whose module source has changed since the recording.

    ``current`` maps names to hashes (default: ``current_source_hashes()``). Returns
    ``[{"name", "recorded", "current"}]`` for every recorded mechanism whose hash differs
    from the current one, including mechanisms no longer in the registry (current None).
    """
    if current is None:
        current = current_source_hashes()
    stale = []
    for entry in results["mechanisms"]:
        recorded, now = entry.get("module_sha256"), current.get(entry["name"])
        if recorded != now:
            stale.append({"name": entry["name"], "recorded": recorded, "current": now})
    return stale
# --8<-- [end:stale]


POINT_FIELDS = ["mechanism", "family", "exact", "causal", "seq_len", "status", "median_s",
                "median_wall_s", "calls", "peak_extra_bytes", "reason"]


def point_records(results: dict) -> list[dict]:
    """One flat record per (mechanism, length) of a run, under ``POINT_FIELDS``.

    Unmeasured values are None; ``calls`` is the number of timed calls behind the median;
    ``median_s`` is on the run's clock, ``median_wall_s`` on the wall clock (None in runs
    recorded before it was kept).
    """
    records = []
    for entry in results["mechanisms"]:
        for point in entry["points"]:
            records.append({
                "mechanism": entry["name"], "family": entry["family"], "exact": entry["exact"],
                "causal": entry["causal"], "seq_len": point["seq_len"],
                "status": point["status"], "median_s": point.get("median_s"),
                "median_wall_s": point.get("median_wall_s"),
                "calls": len(point.get("times_s") or []) or None,
                "peak_extra_bytes": point.get("peak_extra_bytes"),
                "reason": point.get("reason"),
            })
    return records


def run_environment(results: dict, *, compiled: bool = False) -> dict:
    """What produced a run: torch version, device, dtype, threads, clock, compiled or not,
    lengths, fit range, timing settings, machine, load.

    Everything comes from the run's own blocks, so the environment of a recorded file is
    the one it was recorded in, not the reader's. A run without a ``clock`` field was timed
    before the field existed, on the wall clock.
    """
    machine, config = results["machine"], results["config"]
    return {
        "torch_version": machine.get("torch_version"),
        "device": machine.get("device"),
        "device_name": machine.get("device_name"),
        "dtype": "float32 (time, memory); float64 (error)",
        "torch_threads": machine.get("torch_threads"),
        "clock": CLOCKS[results.get("clock", "wall")],
        "compiled": compiled,
        "cpu_model": machine.get("cpu_model"),
        "usable_cores": machine.get("usable_cores"),
        "load_average_before": machine.get("load_average"),
        "load_average_after": machine.get("load_average_after"),
        "allocator": config.get("allocator"),
        "batch": config.get("batch"), "heads": config.get("heads"),
        "head_dim": config.get("head_dim"), "error_len": config.get("error_len"),
        "lengths": config.get("lengths"),
        "fit_range": [config.get("fit_from"), config.get("fit_to")],
        "repeats": config.get("repeats"), "min_repeats": config.get("min_repeats"),
        "budget_s": config.get("budget_s"),
        "elapsed_s": results.get("elapsed_s"), "cpu_s": results.get("cpu_s"),
        "bench_sha256": results.get("bench_sha256"),
        "recorded_utc": results.get("recorded_utc"),
        "command": " ".join(results["command"]) if results.get("command") else None,
    }


def records_to_csv(records: Sequence[dict], environment: dict,
                   fields: Sequence[str] = POINT_FIELDS) -> str:
    """CSV text: the environment as leading ``# key: value`` comment lines, then a header
    row and one row per record (empty cell for None). ``pandas.read_csv(path,
    comment="#")`` and ``numpy.genfromtxt`` skip the comment lines."""
    import csv
    import io

    buffer = io.StringIO()
    for key, value in environment.items():
        text = " ".join(str(value).split())  # one line each
        buffer.write(f"# {key}: {text}\n")
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n",
                            extrasaction="ignore")
    writer.writeheader()
    for record in records:
        writer.writerow({k: ("" if record.get(k) is None else record[k]) for k in fields})
    return buffer.getvalue()
