"""Chapter 10's library functions: the roofline, the cost of each step of attention, the memory wall.

No timing assertions: the measuring functions are checked for what they count and return,
the formulas against torch's FLOP counter, the measured peak memory, or exact arithmetic.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from attnbook import bench
from attnbook.attention import scaled_dot_product_attention


# ---------------------------------------------------------------------------------------
# Step costs
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("batch, heads, q_len, k_len, head_dim, v_dim",
                         [(1, 1, 5, 5, 4, 4), (2, 3, 7, 11, 8, 5)])
def test_step_flops_match_torch_flop_counter(batch, heads, q_len, k_len, head_dim, v_dim):
    q = torch.randn(batch, heads, q_len, head_dim)
    k = torch.randn(batch, heads, k_len, head_dim)
    v = torch.randn(batch, heads, k_len, v_dim)
    costs = bench.attention_step_costs(batch, heads, q_len, k_len, head_dim, v_dim)
    with FlopCounterMode(display=False) as counter:
        scores = q @ k.transpose(-2, -1)
    assert counter.get_total_flops() == costs["scores"]["flops"]  # integer counts: exact
    with FlopCounterMode(display=False) as counter:
        _ = torch.softmax(scores, -1) @ v
    assert counter.get_total_flops() == costs["values"]["flops"]


def test_step_bytes_count_inputs_read_once_and_outputs_written_once():
    # n = m = 4, d = 2, float32: Q and K are 8 numbers each, S is 16
    costs = bench.attention_step_costs(1, 1, 4, 4, 2)
    assert costs["scores"]["bytes"] == 4 * (8 + 8 + 16)
    assert costs["scale"]["bytes"] == 4 * (16 + 16)
    assert costs["softmax"]["bytes"] == 4 * 8 * 16  # the library's five reads and three writes
    assert costs["values"]["bytes"] == 4 * (16 + 8 + 8)
    fused = bench.attention_step_costs(1, 1, 4, 4, 2, softmax_reads=1, softmax_writes=1)
    assert fused["softmax"]["bytes"] == 4 * 2 * 16


@pytest.mark.parametrize("head_dim, element_bytes", [(64, 4), (128, 2), (32, 2)])
def test_score_intensity_tends_to_2d_over_e_for_long_sequences(head_dim, element_bytes):
    n = 2**20
    cost = bench.attention_step_costs(1, 1, n, n, head_dim, element_bytes=element_bytes)["scores"]
    intensity = bench.arithmetic_intensity(cost["flops"], cost["bytes"])
    # Eq. (4): 2d/e / (1 + 2d/n); the correction 2d/n is below 3e-4 here
    assert intensity == pytest.approx(2 * head_dim / element_bytes / (1 + 2 * head_dim / n), rel=1e-12)
    assert intensity == pytest.approx(2 * head_dim / element_bytes, rel=3e-4)


def test_step_costs_reject_a_non_positive_size():
    with pytest.raises(ValueError, match="heads must be a positive integer"):
        bench.attention_step_costs(1, 0, 4, 4, 2)


# ---------------------------------------------------------------------------------------
# Roofline
# ---------------------------------------------------------------------------------------

def test_roofline_time_is_the_slower_of_arithmetic_and_memory():
    peak, bandwidth = 100.0, 10.0  # ridge point 10 FLOP/byte
    assert bench.ridge_point(peak, bandwidth) == 10.0
    # below the ridge (intensity 1): memory-bound, time = bytes / bandwidth
    assert bench.roofline_time(50.0, 50.0, peak_flops=peak, bandwidth=bandwidth) == 5.0
    # above the ridge (intensity 100): compute-bound, time = flops / peak
    assert bench.roofline_time(1000.0, 10.0, peak_flops=peak, bandwidth=bandwidth) == 10.0
    # at the ridge both limits agree
    assert bench.roofline_time(100.0, 10.0, peak_flops=peak, bandwidth=bandwidth) == 1.0


@given(flops=st.floats(0, 1e15), bytes_moved=st.floats(1, 1e15),
       peak=st.floats(1e6, 1e15), bandwidth=st.floats(1e6, 1e13))
def test_roofline_time_is_at_least_each_limit(flops, bytes_moved, peak, bandwidth):
    t = bench.roofline_time(flops, bytes_moved, peak_flops=peak, bandwidth=bandwidth)
    assert t >= flops / peak and t >= bytes_moved / bandwidth
    assert t in (flops / peak, bytes_moved / bandwidth)


def test_ridge_point_and_intensity_reject_bad_input():
    with pytest.raises(ValueError, match="must be positive"):
        bench.ridge_point(0.0, 1.0)
    with pytest.raises(ValueError, match="bytes_moved > 0"):
        bench.arithmetic_intensity(1.0, 0.0)


# ---------------------------------------------------------------------------------------
# The memory wall
# ---------------------------------------------------------------------------------------

def test_naive_peak_bytes_matches_the_measured_peak_of_the_written_out_attention():
    batch, heads, n, d = 1, 2, 256, 16
    q, k, v = (torch.randn(batch, heads, n, d) for _ in range(3))
    measured = bench.peak_extra_memory(lambda: scaled_dot_product_attention(q, k, v))
    predicted = bench.naive_peak_bytes(batch, heads, n, n)
    # Eq. (5) leaves out the row maxima and sums (a few vectors of b·h·n numbers, i.e. a
    # relative ~1/n = 0.4% here); it must not be off by a whole n×n array (33%).
    assert 1.0 <= measured / predicted < 1.02


@settings(deadline=None)
@given(budget=st.integers(1, 2**40), heads=st.integers(1, 64), batch=st.integers(1, 8),
       element_bytes=st.sampled_from([2, 4]), n_by_n=st.integers(1, 3))
def test_naive_max_length_is_the_largest_length_that_fits(budget, heads, batch, element_bytes, n_by_n):
    n = bench.naive_max_length(budget, batch=batch, heads=heads, element_bytes=element_bytes,
                               n_by_n=n_by_n)
    peak = lambda length: n_by_n * batch * heads * length * length * element_bytes  # noqa: E731
    assert n == 0 or peak(n) <= budget
    assert peak(n + 1) > budget


def test_naive_max_length_values_of_the_chapters_exercise():
    budget = 24 * 2**30
    assert bench.naive_max_length(budget, heads=32, element_bytes=2) == 11585
    assert bench.naive_max_length(budget, heads=32, element_bytes=2, n_by_n=1) == 20066


def test_naive_peak_bytes_grows_as_the_square_of_the_length():
    for n in (64, 1000):
        assert bench.naive_peak_bytes(2, 3, 2 * n, 2 * n) == 4 * bench.naive_peak_bytes(2, 3, n, n)


def test_memory_wall_rejects_a_non_positive_budget():
    with pytest.raises(ValueError, match="budget_bytes must be a positive integer"):
        bench.naive_max_length(0, heads=8)


# ---------------------------------------------------------------------------------------
# Measuring the machine
# ---------------------------------------------------------------------------------------

def test_seconds_per_call_reads_the_given_clock_after_a_warm_up():
    ticks = itertools.count()
    calls = []
    seconds = bench.seconds_per_call(lambda: calls.append(1), repeats=3,
                                     clock=lambda: float(next(ticks)))
    assert seconds == 1.0  # each timed call sees the clock advance by one tick
    assert len(calls) == 4  # one warm-up call, three timed ones


def test_peak_measurements_count_what_they_claim_on_tiny_inputs():
    matmul = bench.measure_matmul_flops(32, repeats=1)
    assert matmul["flops"] == 2 * 32**3 and matmul["flops_per_s"] > 0
    copy = bench.measure_copy_bandwidth(1024, repeats=1)
    assert copy["bytes"] == 2 * 1024 * 4 and copy["bytes_per_s"] > 0


def test_cpu_clock_is_thread_time_and_gpu_clock_is_wall_time():
    import time

    assert bench.clock_for("cpu") is time.thread_time
    assert bench.clock_for(torch.device("cuda", 0)) is time.perf_counter


def test_peak_measurements_reject_a_non_positive_size():
    with pytest.raises(ValueError, match="size must be a positive integer"):
        bench.measure_matmul_flops(0)
    with pytest.raises(ValueError, match="numel must be a positive integer"):
        bench.measure_copy_bandwidth(-1)
