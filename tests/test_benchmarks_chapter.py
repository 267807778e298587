"""Chapter 16's library functions: staleness of a recorded run, flat records, CSV downloads.

No timing assertions and no benchmark runs: the functions are checked on small hand-made
results dictionaries with the layout ``run_benchmark`` writes.
"""
from __future__ import annotations

import csv
import io
import re
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnbook import bench


def _results(hashes: dict[str, str | None]) -> dict:
    """A minimal run in ``run_benchmark``'s layout: two points per mechanism."""
    mechanisms = []
    for name, sha in hashes.items():
        mechanisms.append({
            "name": name, "family": "exact", "exact": True, "causal": False,
            "module_sha256": sha,
            "points": [
                {"seq_len": 64, "status": "ok", "median_s": 0.5, "times_s": [0.4, 0.5, 0.6],
                 "peak_extra_bytes": 1024},
                {"seq_len": 128, "status": "skipped", "reason": "n > 64 (too long)"},
            ],
        })
    return {
        "machine": {"torch_version": "2.x", "device": "cpu", "device_name": "Some CPU",
                    "cpu_model": "Some CPU", "usable_cores": 2, "torch_threads": 1,
                    "load_average": [1.0, 1.0, 1.0], "load_average_after": [2.0, 1.0, 1.0]},
        "config": {"allocator": "reuse", "batch": 1, "heads": 4, "head_dim": 64,
                   "error_len": 1024, "lengths": [64, 128]},
        "mechanisms": mechanisms, "elapsed_s": 12.5,
        "command": ["scripts/bench.py", "--device", "cpu"],
    }


def test_current_hashes_have_the_recorded_format_and_cover_the_registry():
    hashes = bench.current_source_hashes()
    assert set(hashes) == set(bench.mechanism_names())
    for name, sha in hashes.items():
        assert sha is not None and re.fullmatch(r"[0-9a-f]{12}", sha), name


def test_current_hashes_are_those_run_benchmark_records():
    # the same module gives the same hash: mechanisms sharing a module share it
    hashes = bench.current_source_hashes(["naive", "sdpa", "linear", "linear_causal"])
    assert hashes["naive"] == hashes["sdpa"]
    assert hashes["linear"] == hashes["linear_causal"]
    assert hashes["naive"] != hashes["linear"]


def test_a_recording_with_the_current_hashes_is_not_stale():
    current = bench.current_source_hashes(["naive", "tiled"])
    assert bench.stale_mechanisms(_results(current), current) == []


def test_every_changed_or_vanished_mechanism_is_reported_stale():
    current = {"naive": "aaaaaaaaaaaa", "tiled": "bbbbbbbbbbbb"}
    recorded = _results({"naive": "aaaaaaaaaaaa", "tiled": "cccccccccccc", "gone": "dddddddddddd"})
    stale = bench.stale_mechanisms(recorded, current)
    assert stale == [
        {"name": "tiled", "recorded": "cccccccccccc", "current": "bbbbbbbbbbbb"},
        {"name": "gone", "recorded": "dddddddddddd", "current": None},
    ]


def test_point_records_flatten_every_point_with_its_status():
    records = bench.point_records(_results({"naive": "x", "tiled": "y"}))
    assert len(records) == 4
    assert all(set(r) == set(bench.POINT_FIELDS) for r in records)
    ok, skipped = records[0], records[1]
    assert (ok["mechanism"], ok["seq_len"], ok["median_s"], ok["calls"], ok["peak_extra_bytes"]) \
        == ("naive", 64, 0.5, 3, 1024)
    assert skipped["status"] == "skipped" and skipped["median_s"] is None
    assert skipped["reason"] == "n > 64 (too long)"


def test_environment_comes_from_the_run_not_from_this_machine():
    env = bench.run_environment(_results({"naive": "x"}), compiled=False)
    assert env["torch_version"] == "2.x" and env["device_name"] == "Some CPU"
    assert env["torch_threads"] == 1 and env["compiled"] is False
    assert env["allocator"] == "reuse" and env["command"] == "scripts/bench.py --device cpu"
    assert "float32" in env["dtype"]


def _read_csv(text: str) -> tuple[dict, list[dict]]:
    """The leading '# key: value' lines, then the CSV body (whose quoted cells may span lines)."""
    lines = text.split("\n")
    head = 0
    while lines[head].startswith("# "):
        head += 1
    environment = dict(line[2:].split(": ", 1) for line in lines[:head])
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[head:]), newline="")))
    return environment, rows


def test_csv_has_the_environment_as_comments_then_one_row_per_point():
    results = _results({"naive": "x"})
    records = bench.point_records(results)
    text = bench.records_to_csv(records, bench.run_environment(results))
    environment, rows = _read_csv(text)
    assert environment["torch_version"] == "2.x"
    assert environment["compiled"] == "False"
    assert len(rows) == len(records)
    assert rows[0]["median_s"] == "0.5" and rows[1]["median_s"] == ""  # None -> empty cell


@settings(max_examples=50, deadline=None)
@given(value=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
       reason=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_csv_round_trips_any_text(value, reason):
    """Any environment value stays on its one comment line; any cell survives CSV quoting."""
    record = dict.fromkeys(bench.POINT_FIELDS)
    record.update(mechanism="m", seq_len=1, status="skipped", reason=reason)
    text = bench.records_to_csv([record], {"note": value})
    environment, rows = _read_csv(text)
    assert environment.get("note", "") == " ".join(value.split())
    # csv normalises line breaks inside quoted cells only through the reader's newline handling
    assert rows[0]["reason"].replace("\r\n", "\n").replace("\r", "\n") == \
        reason.replace("\r\n", "\n").replace("\r", "\n")


def test_csv_ignores_fields_it_was_not_asked_for():
    record = dict.fromkeys(bench.POINT_FIELDS) | {"unasked": 1}
    text = bench.records_to_csv([record], {})
    assert text.split("\n")[0].split(",") == bench.POINT_FIELDS


@pytest.mark.parametrize("n", [1, 3])
def test_records_to_csv_writes_a_header_even_without_records(n):
    text = bench.records_to_csv([], {f"k{i}": i for i in range(n)})
    lines = text.rstrip("\n").split("\n")
    assert len(lines) == n + 1 and lines[-1] == ",".join(bench.POINT_FIELDS)


# ---------------------------------------------------------------------------------------
# The harness hash and torch version, the clock, the targets and the summary rows
# ---------------------------------------------------------------------------------------

def test_bench_hash_has_the_recorded_format_and_is_what_run_benchmark_stores():
    sha = bench.bench_source_hash()
    assert sha is not None and re.fullmatch(r"[0-9a-f]{12}", sha)
    config = bench.BenchConfig(lengths=(16, 32), names=["sdpa"], repeats=1, min_repeats=1,
                               error_len=16, measure_memory=False, report_targets=False)
    results = bench.run_benchmark(config, progress=lambda line: None)
    assert results["bench_sha256"] == sha
    assert bench.harness_changes(results) == []


def test_harness_changes_name_bench_py_and_torch_when_they_differ():
    results = _results({"naive": "x"})  # no bench_sha256: recorded before the field existed
    changes = bench.harness_changes(results, bench_hash="aaaaaaaaaaaa", torch_version="2.x")
    assert changes == [{"what": "attnbook/bench.py", "recorded": None, "current": "aaaaaaaaaaaa"}]
    results["bench_sha256"] = "aaaaaaaaaaaa"
    assert bench.harness_changes(results, bench_hash="aaaaaaaaaaaa", torch_version="2.x") == []
    changes = bench.harness_changes(results, bench_hash="bbbbbbbbbbbb", torch_version="3.y")
    assert [c["what"] for c in changes] == ["attnbook/bench.py", "torch"]
    assert changes[1] == {"what": "torch", "recorded": "2.x", "current": "3.y"}


def test_clock_is_thread_cpu_time_only_with_one_cpu_thread():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert bench.benchmark_clock("cpu") == "thread_cpu"
        torch.set_num_threads(2)
        assert bench.benchmark_clock("cpu") == "wall"
    finally:
        torch.set_num_threads(threads)


def test_thread_cpu_time_leaves_out_time_the_thread_does_not_run():
    # Sleeping uses no CPU: its thread time is (almost) zero while the wall clock sees 50 ms.
    # 10 ms of slack covers the interpreter's own work around the call on a loaded machine.
    cpu, wall = bench._timed_call(lambda: time.sleep(0.05), "cpu", "thread_cpu")
    assert wall >= 0.05 and cpu < 0.01
    cpu, wall = bench._timed_call(lambda: time.sleep(0.05), "cpu", "wall")
    assert cpu >= 0.05 and wall >= 0.05


def test_environment_states_the_clock_and_old_files_say_wall():
    results = _results({"naive": "x"})
    assert bench.run_environment(results)["clock"] == bench.CLOCKS["wall"]
    results["clock"] = "thread_cpu"
    env = bench.run_environment(results)
    assert env["clock"] == bench.CLOCKS["thread_cpu"]
    assert env["lengths"] == [64, 128] and "fit_range" in env and "budget_s" in env


def _summary_results() -> dict:
    """Three mechanisms with fits, in run_benchmark's layout: exact baseline, linear, n·√n."""
    def entry(name, expected, exponent, lengths, note=""):
        return {"name": name, "family": "sparse", "exact": name == "sdpa", "causal": False,
                "available": True, "reason": None, "baseline": None if name == "sdpa" else "sdpa",
                "expected_exponent": expected, "expected_note": note, "note": "",
                "fit": {"exponent": exponent, "lengths": lengths}, "crossover": None,
                "compared_up_to": None, "ratio_to_baseline": None, "failures": [], "error": None,
                "points": [{"seq_len": n, "status": "ok", "median_s": 1.0} for n in lengths]}
    return {"config": {"lengths": [1024, 2048, 4096, 8192], "fit_from": 2048, "fit_to": 8192},
            "mechanisms": [entry("sdpa", "2", 1.99, [2048, 4096]),
                           entry("linear", "1", 0.985, [2048, 4096, 8192]),
                           entry("sparse_strided", "1.5", 1.2551, [2048, 4096, 8192], "work")]}


def test_summary_rows_give_the_fitted_range_when_it_is_short_and_what_expected_counts():
    rows = {r[0]: r for r in bench.summary_rows(_summary_results())}
    assert rows["sdpa"][3] == "1.99 [2k–4k]"  # 8192 not measured: the range is shown
    assert rows["linear"][3] == "0.98"  # 0.985 in binary lies just below the half
    assert rows["sparse_strided"][3:5] == ["1.26", "1.5 (work)"]


def test_targets_store_unrounded_values_and_give_n_sqrt_n_patterns_no_target():
    results = _summary_results()
    summary = {"tiled_over_naive_time": [{"seq_len": 1024, "ratio": 0.123456}],
               "tiled_over_sdpa_time": [{"seq_len": 1024, "ratio": 1.23456}]}
    targets = bench._targets(summary, results, bench.BenchConfig())
    by_target = {t["target"]: t for t in targets}
    assert by_target["tiled exact faster than naive for n >= 1024"]["value"] == {"1024": 0.123456}
    linear = by_target["linear: time exponent <= 1.15"]
    assert linear["met"] is True and linear["value"] == 0.985
    strided = next(t for t in targets if t["target"].startswith("sparse_strided"))
    assert strided["met"] is None and strided["value"] == 1.2551
    assert "no target" in strided["target"]


def test_point_records_keep_the_wall_clock_median_beside_the_timed_one():
    results = _results({"naive": "x"})
    results["mechanisms"][0]["points"][0]["median_wall_s"] = 0.75
    records = bench.point_records(results)
    assert records[0]["median_s"] == 0.5 and records[0]["median_wall_s"] == 0.75
    assert records[1]["median_wall_s"] is None
