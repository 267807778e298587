"""Benchmark every attention mechanism of the book: time, peak memory, error vs exact.

    python scripts/bench.py [--device cpu|cuda|auto] [--quick] [--only name ...]
                            [--max-len N] [--out FILE] [--threads N]
                            [--allocator reuse|system] [--max-call-s S] [--error-len N]

Full run: lengths 256 ... 16384 (the naive n×n attention only up to 8192), batch 1,
4 heads, head_dim 64, float32, eager PyTorch (no torch.compile, which fuses some of the
naive attention's passes; chapter 15). Times are read on the CPU time of the calling
thread when torch runs on one thread on the CPU (``--threads 1``), else on the wall
clock; the wall time of every call is kept too. For every mechanism it records the median time
and the peak extra memory per length, the exponent p of time ~ n^p fitted on 2k-16k,
the length from which it beats torch's SDPA (the causal SDPA for causal mechanisms),
and its relative error against exact attention at n = 1024 on structured inputs
(``attnbook.bench.local_inputs`` / ``clustered_inputs``). The JSON written to
``--out`` (default ``bench-results/<device>-<machine tag>.json``) records the machine
and every measurement; a summary table is printed. bench-results/README.md explains
the method and the files.

``--quick`` is the CI mode: tiny lengths, few repeats, well under a minute; it checks
that every registered mechanism runs and exits with status 1 if one fails. It writes
JSON only when ``--out`` is given.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "code"))  # run from a checkout without installing

import torch  # noqa: E402

from attnbook import bench  # noqa: E402
from attnbook.device import CHOICES, describe, resolve_device  # noqa: E402

FULL_LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384)
QUICK_LENGTHS = (64, 128)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.py", description="Time, memory and error of every attention mechanism.")
    parser.add_argument("--device", choices=CHOICES, default="auto",
                        help="where to run (auto: CUDA when available)")
    parser.add_argument("--quick", action="store_true",
                        help="CI mode: tiny lengths, checks that every mechanism runs")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=bench.mechanism_names(),
                        help="mechanisms to run (the baselines they are compared with are added)")
    parser.add_argument("--max-len", type=_positive_int, metavar="N",
                        help=f"longest sequence length (default {FULL_LENGTHS[-1]})")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="JSON output (default bench-results/<device>-<machine tag>.json; "
                             "none in --quick mode)")
    parser.add_argument("--threads", type=_positive_int, metavar="N",
                        help="torch CPU threads (default: torch's default)")
    parser.add_argument("--allocator", choices=("reuse", "system"), default="reuse",
                        help="reuse: let malloc keep freed memory for large tensors instead of "
                             "page-faulting fresh memory on every call (see "
                             "attnbook.bench.set_heap_reuse); system: glibc's defaults")
    parser.add_argument("--max-call-s", type=_positive_float, metavar="SECONDS",
                        help="skip a point predicted to take longer per call (default 20)")
    parser.add_argument("--error-len", type=_positive_int, metavar="N",
                        help="length of the error measurement (default 1024; 128 in --quick)")
    return parser


def config_from_args(args: argparse.Namespace,
                     parser: argparse.ArgumentParser) -> bench.BenchConfig:
    lengths = QUICK_LENGTHS if args.quick else FULL_LENGTHS
    if args.max_len is not None:
        if args.max_len < lengths[0]:
            parser.error(f"--max-len must be at least {lengths[0]}, got {args.max_len}")
        lengths = tuple(n for n in lengths if n <= args.max_len)  # the grid, cut at N
    names = None
    if args.only:  # a mechanism is reported against its baseline, so that runs too
        wanted = set(args.only)
        wanted |= {m.baseline for m in bench.get_mechanisms(args.only) if m.baseline}
        names = [n for n in bench.mechanism_names() if n in wanted]
    config = bench.BenchConfig(device=str(resolve_device(args.device)), lengths=lengths,
                               names=names)
    if args.quick:
        config.repeats, config.min_repeats, config.budget_s = 2, 1, 0.5
        config.error_len, config.fit_from, config.fit_to = 128, lengths[0], lengths[-1]
        config.report_targets = False
    if args.max_call_s is not None:
        config.max_call_s = args.max_call_s
    if args.error_len is not None:
        config.error_len = args.error_len
    if config.error_len % bench.bigbird_block_size(config.error_len):
        parser.error(f"--error-len must be a multiple of 16 (of 64 from 1024 on: BigBird's "
                     f"blocks), got {config.error_len}")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        config = config_from_args(args, parser)
    except RuntimeError as error:  # --device cuda without a GPU
        parser.error(str(error))
    device = torch.device(config.device)
    print(f"bench: {describe(device)}; lengths {list(config.lengths)}; "
          f"load average {os.getloadavg() if hasattr(os, 'getloadavg') else 'n/a'}", flush=True)

    reuse = args.allocator == "reuse" and bench.set_heap_reuse(True)
    config.allocator = "reuse" if reuse else "system"
    try:
        results = bench.run_benchmark(config, progress=lambda line: print(line, flush=True))
    finally:
        if reuse:
            bench.set_heap_reuse(False)  # main() may run inside a longer process (tests)
    results["command"] = ["scripts/bench.py", *(argv if argv is not None else sys.argv[1:])]
    # when it was recorded (UTC, to the second): read by the benchmark chapter
    results["recorded_utc"] = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")

    print()
    print(bench.format_table(bench.SUMMARY_HEADERS, bench.summary_rows(results)))
    summary = results["summary"]
    if "tiled_over_naive_time" in summary:
        ratios = lambda key: ", ".join(  # noqa: E731
            f"{r['seq_len']}: {r['ratio']:.3g}" for r in summary[key])
        print("\ntiled exact / naive time:", ratios("tiled_over_naive_time"))
        print("tiled exact / SDPA time: ", ratios("tiled_over_sdpa_time"))
    if "tiled_over_naive_memory" in summary:
        mem = summary["tiled_over_naive_memory"]
        print(f"tiled exact / naive peak extra memory at n = {mem['seq_len']}: {mem['ratio']:.4f}")
    for target in summary.get("targets", []):
        met = {True: "met", False: "MISSED", None: "reported"}[target["met"]]
        value = target["value"]
        value = (", ".join(f"{n}: {r:.3g}" for n, r in value.items()) if isinstance(value, dict)
                 else f"{value:.3g}")
        print(f"  [{met}] {target['target']}: {value}"
              + (f" ({target['note']})" if target.get("note") else ""))
    unavailable = [m["name"] for m in results["mechanisms"] if not m["available"]]
    if unavailable:
        print(f"\nunavailable (skipped): {', '.join(unavailable)}")
    print(f"timed on: {bench.CLOCKS[results['clock']]}")
    print(f"elapsed {results['elapsed_s']:.1f} s; load average now "
          f"{results['machine']['load_average_after']}")

    out = args.out
    if out is None and not args.quick:
        out = REPO / "bench-results" / f"{device.type}-{bench.machine_tag(results['machine'])}.json"
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
        print(f"wrote {out}")

    failed = bench.failures(results)
    if failed:
        print("\nFAILED:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
