"""The benchmark harness: quick mode, memory measurement, fits, inputs and the CLI.

No timing assertions: only that things run, are recorded, and that the helpers compute
what they claim on data whose answer is known.
"""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from attnbook import bench

import bench as bench_cli  # scripts/bench.py (conftest puts scripts/ on sys.path)


# ---------------------------------------------------------------------------------------
# Quick mode: every registered mechanism runs and the JSON records the machine
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    status = bench_cli.main(["--quick", "--device", "cpu", "--out", str(out)])
    return status, json.loads(out.read_text())


def test_quick_mode_exits_zero_when_every_mechanism_runs(quick_run):
    status, results = quick_run
    assert bench.failures(results) == []
    assert status == 0


def test_quick_mode_runs_every_registered_mechanism(quick_run):
    _, results = quick_run
    assert [m["name"] for m in results["mechanisms"]] == bench.mechanism_names()
    for entry in results["mechanisms"]:
        if not entry["available"]:  # e.g. a module not written yet: skipped, and says why
            assert entry["reason"], entry
            continue
        assert [p["seq_len"] for p in entry["points"]] == list(results["config"]["lengths"])
        for point in entry["points"]:
            assert point["status"] == "ok", (entry["name"], point)
            assert point["median_s"] > 0 and len(point["times_s"]) >= 1
            assert point["peak_extra_bytes"] >= 0
        if entry["family"] == "reference":  # not attention: no error to measure
            assert entry["error"] is None
        else:
            assert set(entry["error"]) == set(bench.STRUCTURES)


def test_quick_json_records_the_machine(quick_run):
    _, results = quick_run
    machine = results["machine"]
    for key in ("cpu_model", "cpu_count", "usable_cores", "torch_threads", "torch_version",
                "device", "device_name", "load_average", "load_average_after"):
        assert machine[key] not in (None, ""), key
    assert machine["torch_version"] == torch.__version__
    assert machine["device"] == "cpu"


def test_quick_json_records_when_it_was_recorded(quick_run):
    import datetime

    _, results = quick_run
    stamp = datetime.datetime.strptime(results["recorded_utc"], "%Y-%m-%dT%H:%M:%SZ")
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs((now - stamp).total_seconds()) < 24 * 3600  # written by this test session


def test_exact_mechanisms_have_no_error_in_quick_mode(quick_run):
    # float64 at n = 128: exact algorithms agree with the reference to rounding (~1e-16);
    # 1e-12 leaves room for summation order and is far below any approximation's error.
    _, results = quick_run
    for entry in results["mechanisms"]:
        if entry["available"] and entry["exact"] and entry["error"] is not None:
            assert max(entry["error"].values()) < 1e-12, entry["name"]


# ---------------------------------------------------------------------------------------
# Failures and missing modules
# ---------------------------------------------------------------------------------------

def _broken(seq_len, head_dim, device, dtype, generator):
    def attend(q, k, v):
        raise RuntimeError("this mechanism is broken")
    return attend


def _with_extra_mechanism(monkeypatch, mechanism):
    monkeypatch.setattr(bench, "MECHANISMS", [*bench.MECHANISMS, mechanism])


def test_quick_mode_exits_nonzero_when_a_mechanism_fails(monkeypatch, tmp_path, capsys):
    _with_extra_mechanism(monkeypatch, bench.Mechanism(
        "broken", "test", False, False, "-", "dot_product", _broken))
    out = tmp_path / "broken.json"
    status = bench_cli.main(["--quick", "--device", "cpu", "--only", "broken", "--out", str(out)])
    assert status == 1
    assert "this mechanism is broken" in capsys.readouterr().err
    entry = {m["name"]: m for m in json.loads(out.read_text())["mechanisms"]}["broken"]
    assert all(p["status"] == "error" for p in entry["points"])


def test_missing_module_is_skipped_with_its_reason(monkeypatch, tmp_path):
    _with_extra_mechanism(monkeypatch, bench.Mechanism(
        "from_the_future", "test", False, False, "-", "no_such_module", _broken))
    out = tmp_path / "missing.json"
    status = bench_cli.main(["--quick", "--device", "cpu", "--only", "from_the_future",
                             "--out", str(out)])
    entry = {m["name"]: m for m in json.loads(out.read_text())["mechanisms"]}["from_the_future"]
    assert status == 0
    assert entry["available"] is False
    assert entry["reason"] == "module not available: attnbook.attention.no_such_module"
    assert entry["points"] == [] and entry["error"] is None


# ---------------------------------------------------------------------------------------
# Fits
# ---------------------------------------------------------------------------------------

LENGTHS = [2048, 4096, 8192, 16384]


@pytest.mark.parametrize("exponent", [1.0, 1.5, 2.0])
def test_fit_power_law_recovers_the_exponent_of_exact_power_laws(exponent):
    times = [3e-9 * n**exponent for n in LENGTHS]
    fitted, coefficient = bench.fit_power_law(LENGTHS, times)
    # Exact data: only floating-point rounding separates the fit from the truth.
    assert fitted == pytest.approx(exponent, abs=1e-9)
    assert coefficient == pytest.approx(3e-9, rel=1e-6)


def test_fit_power_law_recovers_the_exponent_under_noise():
    # n log n cost with ±5% multiplicative noise: the local slope of n log n over 2k-16k
    # is 1 + 1/ln(n) ≈ 1.11-1.13; 5% noise over a factor 8 in n moves the slope by
    # at most about 2·ln(1.05)/ln(8) ≈ 0.05.
    noise = [1.05, 0.95, 1.04, 0.96]
    times = [1e-8 * n * math.log(n) * e for n, e in zip(LENGTHS, noise)]
    fitted, _ = bench.fit_power_law(LENGTHS, times)
    assert 1.05 < fitted < 1.20


def test_fit_power_law_rejects_a_single_length():
    with pytest.raises(ValueError, match="at least two different lengths"):
        bench.fit_power_law([1024, 1024], [1.0, 1.1])


def test_fit_power_law_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="lengths and times"):
        bench.fit_power_law([1024, 2048], [1.0])


def test_crossover_is_the_first_length_from_which_it_stays_faster():
    lengths = [256, 512, 1024, 2048, 4096]
    reference = [1.0, 2.0, 4.0, 8.0, 16.0]
    mechanism = [2.0, 3.0, 3.5, 4.0, 5.0]  # slower, slower, then faster from 1024 on
    assert bench.crossover_length(lengths, mechanism, reference) == 1024


def test_crossover_ignores_an_early_win_that_does_not_last():
    lengths = [256, 512, 1024, 2048]
    reference = [1.0, 1.0, 1.0, 1.0]
    mechanism = [0.5, 2.0, 0.9, 0.8]  # a noisy win at 256 is not the crossover
    assert bench.crossover_length(lengths, mechanism, reference) == 1024


def test_crossover_is_none_when_never_faster_at_the_longest_length():
    assert bench.crossover_length([256, 512], [0.5, 2.0], [1.0, 1.0]) is None


def test_crossover_skips_lengths_that_were_not_measured():
    # 8192 has no reference time (e.g. skipped): it neither counts for nor against.
    lengths = [2048, 4096, 8192]
    assert bench.crossover_length(lengths, [2.0, 0.5, 0.4], [1.0, 1.0, None]) == 4096


def test_crossover_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="equal sizes"):
        bench.crossover_length([256, 512], [1.0], [1.0, 1.0])


def test_predicted_call_time_carries_the_last_local_exponent_forward():
    # Quadratic so far (1 s at 1024, 4 s at 2048): 16 s at 4096.
    assert bench.predicted_call_time([(1024, 1.0), (2048, 4.0)], 4096) == pytest.approx(16.0)
    # One point: assume quadratic. Steeper than n^2.5 is clamped to 2.5.
    assert bench.predicted_call_time([(1024, 1.0)], 2048) == pytest.approx(4.0)
    steep = bench.predicted_call_time([(1024, 1.0), (2048, 64.0)], 4096)
    assert steep == pytest.approx(64 * 2**2.5)
    assert bench.predicted_call_time([], 4096) is None


def test_slow_approximations_are_skipped_with_a_reason_but_baselines_are_not():
    config = bench.BenchConfig(lengths=(64, 128), names=["sdpa", "linear"], repeats=1,
                               min_repeats=1, error_len=64, max_call_s=1e-9,
                               measure_memory=False, report_targets=False)
    results = bench.run_benchmark(config, progress=lambda line: None)
    entries = {m["name"]: m for m in results["mechanisms"]}
    assert [p["status"] for p in entries["sdpa"]["points"]] == ["ok", "ok"]
    linear = entries["linear"]["points"]
    assert linear[0]["status"] == "ok"  # nothing to extrapolate from yet
    assert linear[1]["status"] == "skipped" and "max_call_s" in linear[1]["reason"]


# ---------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------

MIB = 2**20


def _allocate_then_shrink():
    temporary = torch.ones(4 * MIB // 4)  # 4 MiB of float32, touched
    kept = temporary[: MIB // 4].clone()  # 1 MiB survives as the output
    del temporary
    return kept


@pytest.mark.parametrize("method", ["profiler", "rss"])
def test_peak_extra_memory_reports_the_peak_not_the_net(method):
    if method == "rss" and not sys.platform.startswith("linux"):
        pytest.skip("the resident-set method reads /proc (Linux)")
    peak = bench.peak_extra_memory(_allocate_then_shrink, method=method)
    # The 4 MiB temporary and the 1 MiB copy are alive together: 5 MiB. The profiler
    # counts allocator bytes (exact up to alignment); the resident set also moves by a
    # few pages for the interpreter, hence 0.5 MiB of slack.
    assert abs(peak - 5 * MIB) < MIB // 2, peak / MIB


def test_rss_method_still_sees_allocations_while_heap_reuse_is_on():
    if not sys.platform.startswith("linux") or not bench.set_heap_reuse(True):
        pytest.skip("heap reuse needs Linux with glibc")
    try:
        peak = bench.peak_extra_memory(_allocate_then_shrink, method="rss")
    finally:
        bench.set_heap_reuse(False)
    assert abs(peak - 5 * MIB) < MIB // 2, peak / MIB  # same bound as above


def test_quick_run_records_the_allocator_setting(quick_run):
    _, results = quick_run
    assert results["config"]["allocator"] in ("reuse", "system")


def test_peak_extra_memory_of_naive_attention_counts_its_n_by_n_matrices():
    n, heads = 512, 2
    q, k, v = (torch.randn(1, heads, n, 64) for _ in range(3))
    one_matrix = heads * n * n * 4  # bytes of one (heads, n, n) float32 matrix
    naive = bench.peak_extra_memory(lambda: bench.exact_attention(q, k, v))
    # Scores, exponentials and weights are alive together at the peak: about 3 matrices.
    assert 2.5 * one_matrix < naive < 4.5 * one_matrix, naive / one_matrix


def test_peak_extra_memory_rejects_an_unknown_method():
    with pytest.raises(ValueError, match="method must be"):
        bench.peak_extra_memory(lambda: None, method="tracemalloc")


def test_time_call_stops_repeating_once_the_budget_is_spent():
    import time

    result = bench.time_call(lambda: time.sleep(0.02), warmup=0, repeats=50, min_repeats=2,
                             budget_s=0.03)
    assert len(result["times_s"]) == 2  # 2 calls take >= 0.04 s > budget: no third call
    assert result["median_s"] == pytest.approx(sorted(result["times_s"])[0] / 2
                                               + sorted(result["times_s"])[1] / 2)


# ---------------------------------------------------------------------------------------
# Structured inputs
# ---------------------------------------------------------------------------------------

def _weights(q, k):
    return torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)


def test_local_inputs_concentrate_attention_near_the_diagonal():
    n, length_scale = 512, 16.0
    q, k, _ = bench.local_inputs(1, 2, n, 64, generator=torch.Generator().manual_seed(0),
                                 length_scale=length_scale)
    positions = torch.arange(n)
    near = (positions[:, None] - positions[None, :]).abs() <= 4 * length_scale
    mass_near = (_weights(q, k) * near).sum(-1).mean()
    # By construction the score falls from 10 to ~0 within a few ℓ; 0.9 of the weight
    # within ±4ℓ (≈ 25% of the keys at n = 512) is a loose bound on that.
    assert mass_near > 0.9


def test_clustered_inputs_concentrate_attention_on_the_own_cluster():
    generator = torch.Generator().manual_seed(0)
    q, k, _ = bench.clustered_inputs(1, 1, 512, 64, generator=generator, num_clusters=8)
    same = (q[0, 0] @ k[0, 0].T / (q.norm(dim=-1)[0, 0, :, None] * k.norm(dim=-1)[0, 0])) > 0.9
    mass_same = (_weights(q, k)[0, 0] * same).sum(-1).mean()
    assert mass_same > 0.9  # own-cluster score 10 vs ~N(0, 1.25²) for other clusters


def test_gaussian_inputs_spread_attention_for_contrast():
    q, k, _ = bench.gaussian_inputs(1, 1, 512, 64, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(512)
    near = (positions[:, None] - positions[None, :]).abs() <= 64
    # ±64 is about a quarter of the keys; flat rows put about a quarter of the mass there.
    assert (_weights(q, k) * near).sum(-1).mean() < 0.4


def test_local_inputs_reject_an_odd_head_dim():
    with pytest.raises(ValueError, match="head_dim must be even"):
        bench.local_inputs(1, 1, 8, 7, generator=torch.Generator().manual_seed(0))


def test_relative_error_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="output has shape"):
        bench.relative_error(torch.zeros(2, 3), torch.zeros(3, 2))


# ---------------------------------------------------------------------------------------
# The registry and the command line
# ---------------------------------------------------------------------------------------

def test_registry_names_are_unique_and_baselines_exist():
    names = bench.mechanism_names()
    assert len(names) == len(set(names))
    assert {m.baseline for m in bench.MECHANISMS if m.baseline} <= set(names)


def test_machine_tag_is_a_short_file_name():
    info = {"device": "cpu", "cpu_model": "Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz",
            "usable_cores": 2}
    assert bench.machine_tag(info) == "intel-xeon-e5-2690-v4-2c"


@pytest.mark.parametrize("argv, message", [
    (["--device", "gpu"], "--device"),
    (["--only", "no_such_mechanism"], "--only"),
    (["--max-len", "0"], "--max-len"),
    (["--max-len", "abc"], "--max-len"),
    (["--max-len", "100"], "--max-len must be at least 256"),
    (["--threads", "-1"], "--threads"),
    (["--error-len", "1000"], "--error-len must be a multiple of 16"),
])
def test_bad_command_line_input_is_an_error_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_asking_for_cuda_without_a_gpu_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_cli.main(["--quick", "--device", "cuda"])
    assert exit_info.value.code == 2
    assert "torch.cuda.is_available() is False" in capsys.readouterr().err
