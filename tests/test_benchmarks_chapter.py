"""Chapter 16's library functions: staleness of a recorded run, flat records, CSV downloads.

No timing assertions and no benchmark runs: the functions are checked on small hand-made
results dictionaries with the layout ``run_benchmark`` writes.
"""
from __future__ import annotations

import csv
import io
import re

import pytest
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
