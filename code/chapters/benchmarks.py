# %% [markdown]
# # Benchmarks
#
# The experiments of chapter 16: every attention mechanism of Part III measured on the same
# footing, from two sources. (a) The recorded full runs in `bench-results/*.json`, made by
# `python scripts/bench.py` (lengths 256 to 16384): their targets, fitted exponents,
# crossover lengths, peak memory and errors, with a note for every mechanism whose code has
# changed since it was recorded. (b) A live run of the same benchmark functions at reduced
# size, so that the page always reflects the current code. Every table and figure has its
# raw data beside it as CSV and JSON, with the environment that produced it.
#
# Run it with `python code/chapters/benchmarks.py --device {auto,cpu,cuda} [--quick]`.

# %%
from attnbook.chapter import Chapter

ch = Chapter("benchmarks")
ch.one_thread_on_cpu()  # one torch thread: on a shared CPU, parallel regions wait for parked threads

# %%
import json
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

import attnbook
from attnbook import bench
from attnbook.viz import colors

ON_GPU = ch.device.type == "cuda"
MiB = 2**20
# the repository's recorded runs; a downloaded notebook has none beside it
REPO = Path(attnbook.__file__).resolve().parents[2]
RECORDED_DIR = REPO / "bench-results"
FAMILIES = ["exact", "sparse", "low-rank", "kernel", "hashing", "reference"]
INPUTS = list(bench.STRUCTURES)  # local, clustered, gaussian


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}×" if x < 10 else f"{x:.0f}×"


# %% [markdown]
# ## 1. The live run: the library's benchmark at reduced size
#
# `bench.run_benchmark` is what `scripts/bench.py` calls; here with shorter lengths, fewer
# timed calls per point and a shorter error measurement, so that it fits the page's budget.
# The heap-reuse setting is the recorded runs' default (see bench-results/README.md).

# %%
# --8<-- [start:live]
live_lengths = (512, 1024, 2048, 4096, 8192, 16384) if ON_GPU else ch.pick(
    (256, 512, 1024, 2048, 4096), (64, 128))
config = bench.BenchConfig(
    device=str(ch.device), lengths=live_lengths,
    repeats=ch.pick(3, 2), min_repeats=ch.pick(2, 1),
    budget_s=ch.pick(0.3, 0.05),      # per point: stop adding calls once this is spent
    max_call_s=ch.pick(2.0, 0.5),     # skip an approximation predicted to be slower per call
    error_len=ch.pick(512, 128),      # the recorded runs use 1024
    fit_from=live_lengths[-3:][0], fit_to=live_lengths[-1],  # the (up to) three longest
    report_targets=False)             # the targets are for 2k-16k: recorded runs only
reuse = bench.set_heap_reuse(True)
config.allocator = "reuse" if reuse else "system"
live = bench.run_benchmark(config, progress=lambda line: None)
bench.set_heap_reuse(False)
live["command"] = ["code/chapters/benchmarks.py", "--device", ch.device.type] + (
    ["--quick"] if ch.quick else [])
# --8<-- [end:live]
print(f"live run: {live['elapsed_s']:.1f} s wall")

# %% [markdown]
# ## 2. The recorded runs
#
# Every `bench-results/*.json`: the CPU run of the build machine, and any GPU run someone
# recorded with `python scripts/bench.py --device cuda`.

# %%
recorded_files = sorted(RECORDED_DIR.glob("*.json")) if RECORDED_DIR.is_dir() else []
recorded = {path.stem: json.loads(path.read_text()) for path in recorded_files}
current_hashes = bench.current_source_hashes()


def recording_date(path: Path, results: dict) -> str:
    """The recording time stored in the file, else the date of the last commit that changed it."""
    if results.get("recorded_utc"):
        return results["recorded_utc"].replace("T", " ").replace("Z", " UTC")
    try:
        date = subprocess.run(["git", "log", "-1", "--format=%cs", "--", path.name],
                              cwd=path.parent, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        date = ""
    return f"{date} (date of the last commit that changed the file)" if date else "date not recorded"


# %% [markdown]
# ## 3. Figures: time, peak memory and error, for one run

# %%
def by_name(results: dict) -> dict:
    return {m["name"]: m for m in results["mechanisms"]}


def curve(entry: dict, key: str) -> tuple[list, list]:
    points = [p for p in entry["points"] if p["status"] == "ok" and p.get(key) is not None]
    return [p["seq_len"] for p in points], [p[key] for p in points]


def length_label(n: float, _=None) -> str:
    """256, 512, 1k, 2k, ... (plain text: superscripts would be under the 8 pt floor)."""
    return f"{n / 1024:g}k" if n >= 1024 else f"{n:g}"


def plain_log_label(value: float, _=None) -> str:
    """0.01, 0.1, 1, 10, ..., 1000, 10k, 100k, 1M for a logarithmic axis, no superscripts."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def dress_log_axes(ax, lengths) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(lengths))
    ax.xaxis.set_major_formatter(FuncFormatter(length_label))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(plain_log_label))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(labelsize=8)


def draw_lengths(results: dict, key: str, ylabel: str, scale: float):
    """Six panels (one per family): ``key`` of each point against the length, log-log.

    Every panel repeats torch's SDPA (dashed) and causal SDPA (dotted) as the reference."""
    entries = by_name(results)

    def draw(theme: str):
        c = colors(theme)
        fig, axes = plt.subplots(3, 2, figsize=(6.8, 8.6), layout="constrained", sharex=True)
        for ax, family in zip(axes.flat, FAMILIES):
            members = [m for m in results["mechanisms"] if m["family"] == family]
            for style, ref in (("--", "sdpa"), (":", "sdpa_causal")):
                if family != "exact" and ref in entries:
                    n, y = curve(entries[ref], key)
                    ax.plot(n, np.array(y) * scale, style, color=c["muted"], label=ref)
            for i, entry in enumerate(members):
                n, y = curve(entry, key)
                if n:
                    ax.plot(n, np.array(y) * scale, "o-", markersize=3, color=c["palette"][i],
                            label=entry["name"])
            dress_log_axes(ax, results["config"]["lengths"][::2])
            ax.set_title(family, fontsize=9)
            ax.grid(True, alpha=0.5)
            # headroom: the data fill the lower part of the panel, the legend the top, so the
            # legend never sits on a line
            low, high = ax.get_ylim()
            ax.set_ylim(low, low * (high / low) ** (1 / 0.66))
            ax.legend(frameon=False, fontsize=8, loc="upper left", ncol=2, columnspacing=1.0,
                      handlelength=1.6)
        for ax in axes[-1]:
            ax.set_xlabel("sequence length n", fontsize=9)
        for ax in axes[:, 0]:
            ax.set_ylabel(ylabel, fontsize=9)
        return fig
    return draw


def draw_errors(results: dict):
    """Relative error against exact attention, per approximation and input kind (log scale)."""
    approximations = [m for m in results["mechanisms"] if not m["exact"] and m.get("error")]

    def draw(theme: str):
        c = colors(theme)
        fig, ax = plt.subplots(figsize=(6.8, 5.2), layout="constrained")
        y = np.arange(len(approximations))
        height = 0.26
        for j, kind in enumerate(INPUTS):
            values = [m["error"].get(kind, np.nan) for m in approximations]
            ax.barh(y + (j - 1) * height, values, height, color=c["palette"][j], label=kind)
        ax.set_yticks(y, [m["name"] for m in approximations], fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(plain_log_label))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axvline(1.0, color=c["muted"], linestyle=":", linewidth=1)
        ax.set_xlabel("relative error ‖out − exact‖ / ‖exact‖ (dotted: 1)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, axis="x", alpha=0.5)
        ax.legend(frameon=False, fontsize=8, ncol=3, loc="lower center",
                  bbox_to_anchor=(0.5, 1.0), title="input kind", title_fontsize=8)
        return fig
    return draw


def figure_block(name: str, alt: str, caption: str) -> str:
    return (f'<figure markdown="span">\n'
            f"  ![{alt}](../generated/benchmarks/{name}-light.svg#only-light)\n"
            f"  ![{alt}](../generated/benchmarks/{name}-dark.svg#only-dark)\n"
            f'  <figcaption markdown="span">{caption}</figcaption>\n</figure>\n')


TIME_ALT = ("Six log-log panels, one per family of mechanisms, of the median time per call against "
            "sequence length n, with torch's SDPA dashed and causal SDPA dotted in every panel but "
            "the exact one, where they are among the plotted mechanisms")
MEMORY_ALT = ("Six log-log panels, one per family of mechanisms, of the peak extra memory of one "
              "call against sequence length n, with torch's SDPA dashed and causal SDPA dotted in "
              "every panel but the exact one, where they are among the plotted mechanisms")
MEMORY_OVERLAP = ("Causal SDPA coincides with SDPA, and Linformer's two variants with each "
                  "other.")
ERROR_ALT = ("Horizontal bars on a logarithmic axis: for each approximation, its relative error "
             "against exact attention on local, clustered and Gaussian inputs")


def draw_run_figures(prefix: str, results: dict, measured: bool) -> dict[str, str]:
    """Write the three figures of one run; return their names."""
    names = {"time": f"{prefix}-time", "memory": f"{prefix}-memory", "error": f"{prefix}-error"}
    ch.figure(names["time"], draw_lengths(results, "median_s", "time per call (ms)", 1e3),
              measured=measured)
    ch.figure(names["memory"], draw_lengths(results, "peak_extra_bytes", "peak extra memory (MiB)",
                                            1 / MiB), measured=measured)
    ch.figure(names["error"], draw_errors(results), measured=measured)
    return names


# %% [markdown]
# ## 4. Tables and downloads for one run

# %%
HEADERS = ["mechanism", "family", "causal", "fitted exponent", "expected", "crossover vs baseline",
           "time ÷ baseline [at n]", "peak MiB [at n]", "error local", "error clustered",
           "error gaussian"]


def summary_table(name: str, results: dict, memory_len: int) -> None:
    ch.table(name, HEADERS, bench.summary_rows(results, memory_len=memory_len),
             align="lllrllrrrrr")


def write_downloads(prefix: str, results: dict) -> list[str]:
    """``<prefix>.csv`` (one row per point, environment as # comments) and ``<prefix>.json``
    (the environment and the whole run). Returns the file names."""
    environment = bench.run_environment(results)
    if prefix.startswith("recorded-"):
        if not environment["recorded_utc"]:
            date = recording_date(RECORDED_DIR / f"{prefix.removeprefix('recorded-')}.json", results)
            environment["recorded_utc"] = f"not stored; {date}"
        environment["stale_mechanisms"] = ", ".join(
            s["name"] for s in bench.stale_mechanisms(results, current_hashes)) or "none"
        environment["harness_changes"] = ", ".join(
            f"{c['what']} (recorded {c['recorded']}, now {c['current']})"
            for c in bench.harness_changes(results)) or "none"
    csv_path = ch.path(f"{prefix}.csv")
    csv_path.write_text(bench.records_to_csv(bench.point_records(results), environment),
                        encoding="utf-8")
    ch.json(prefix, {"environment": environment, "run": results})
    return [csv_path.name, f"{prefix}.json"]


def environment_sentence(results: dict, when: str | None = None) -> str:
    env, machine = bench.run_environment(results), results["machine"]
    count = env["torch_threads"]
    threads = "" if env["device"].startswith("cuda") else f", {count} torch thread{'s' * (count != 1)}"
    load = machine.get("load_average") or [float("nan")] * 3
    after = machine.get("load_average_after") or [float("nan")] * 3
    lengths = results["config"]["lengths"]
    return (f"{env['device_name']} ({env['device']}, {env['usable_cores']} usable cores{threads}), "
            f"torch {env['torch_version']}, float32 for time and memory, float64 for the error; "
            f"eager (not compiled); times on the {env['clock']}; allocator setting "
            f"`{env['allocator']}`; lengths "
            f"{lengths[0]} to {lengths[-1]}, batch {env['batch']}, {env['heads']} heads, "
            f"$d = {env['head_dim']}$; error at $n = {env['error_len']}$. "
            + (f"Recorded {when}; the" if when else "The")
            + f" run took {results['elapsed_s']:.0f} s"
            + (f" ({results['cpu_s']:.0f} s of CPU time)" if results.get("cpu_s") else "")
            + "; one-minute load average "
            f"{load[0]:.1f} before and {after[0]:.1f} after"
            + (f" on {machine.get('cpu_count')} cores." if not env["device"].startswith("cuda") else "."))


# %% [markdown]
# ## 5. The recorded runs: targets, summary, staleness, figures

# %%
def targets_table(results: dict) -> str:
    """The issue's targets as the run recorded them, with two readings of the current code.

    Exponents are printed from each mechanism's fit (the summary table's digits, not a
    value rounded once on storing and again on printing). The n·√n patterns have no
    linear target: a file recorded before that rule still marks them "missed" against
    1.15; they are shown with "—" and the exponent expected of their work.
    """
    entries = by_name(results)
    stream = entries.get("stream_reference")
    stream_fit = stream.get("fit") if stream else None
    lines = ["| target | met? | value |", "| :-- | :-- | :-- |"]
    for target in results["summary"].get("targets", []):
        value, met = target["value"], target["met"]
        name = target["target"].split(":")[0]
        entry = entries.get(name)
        if isinstance(value, dict):
            value = ", ".join(f"{n}: {r:.2f}" for n, r in value.items())
        elif "memory" in target["target"]:
            value = f"{100 * value:.2f}%"
        elif entry is not None and entry.get("fit"):  # an exponent target
            value = f"{entry['fit']['exponent']:.2f}"
        else:
            value = f"{value:.2f}"
        text = target["target"].replace("time exponent", "fitted time exponent")
        if entry is not None and entry.get("expected_exponent", "1") != "1":
            text = (f"{name}: n·√n pattern, fitted time exponent (reported, no target; "
                    f"the work's exponent is {entry['expected_exponent']})")
            met = None
        verdict = "—" if met is None else ("met" if met else "missed")
        lines.append(f"| {text} | {verdict} | {value} |")
    if stream_fit:
        lines.append(f"| *check:* `stream_reference` (linear by construction), fitted exponent "
                     f"| — | {stream_fit['exponent']:.2f} |")
    return "\n".join(lines)


def stale_sentence(results: dict) -> str:
    """Which rows describe older code: each mechanism's module hash, then bench.py's own hash
    (inputs, parameters, timing, error references) and the torch version."""
    stale = bench.stale_mechanisms(results, current_hashes)
    harness = bench.harness_changes(results)
    sentences = []
    if not stale:
        sentences.append("Every mechanism's module has the same source hash now as when this "
                         "file was recorded.")
    else:
        items = "; ".join(f"`{s['name']}` (recorded {s['recorded']}, now {s['current'] or 'missing'})"
                          for s in stale)
        sentences.append(
            f"**Stale recording for {len(stale)} of {len(results['mechanisms'])} mechanisms**: "
            f"their module's source has changed since this file was recorded, so their rows "
            f"describe older code: {items}.")
    for change in harness:
        if change["what"] == "torch":
            sentences.append(f"**It was recorded with torch {change['recorded']}**; the build "
                             f"runs torch {change['current']}.")
        elif change["recorded"] is None:
            sentences.append("**The file stores no hash of `attnbook/bench.py`** (it predates "
                             "that field), so a change of the inputs, the mechanisms' parameters, "
                             "the timing or the error references since then cannot be ruled out.")
        else:
            sentences.append(f"**`attnbook/bench.py` has changed since the recording** (recorded "
                             f"{change['recorded']}, now {change['current']}): the inputs, the "
                             f"parameters, the timing or the error references may differ.")
    if stale or harness:
        sentences.append("The live run below measures the current code; `python scripts/bench.py` "
                         "with the command above re-records the file.")
    else:
        sentences.append("`attnbook/bench.py` and torch are unchanged too: the numbers are those "
                         "of the current code.")
    return " ".join(sentences)


blocks, recorded_summary = [], {}
for tag, results in recorded.items():
    path = RECORDED_DIR / f"{tag}.json"
    on_gpu = results["machine"]["device"].startswith("cuda")
    prefix = f"recorded-{tag}"
    summary_table(f"{prefix}-summary", results, memory_len=8192)
    names = draw_run_figures(prefix, results, measured=False)  # drawn from a file: reproducible
    files = write_downloads(prefix, results)
    command = " ".join(results.get("command") or ["scripts/bench.py"])
    kind = "GPU" if on_gpu else "CPU"
    blocks.append("\n".join([
        f"#### Recorded {kind} run: {results['machine']['device_name']}",
        "",
        f"File `bench-results/{tag}.json`, made by `python {command}`. "
        + environment_sentence(results, when=recording_date(path, results)),
        "",
        stale_sentence(results),
        "",
        "The issue's targets, as the run recorded them (never asserted: reported):",
        "",
        targets_table(results) if results["summary"].get("targets") else
        "*This run recorded no targets (a reduced run).*",
        "",
        "Every mechanism (exponent fitted on the measured lengths within "
        f"{results['config']['fit_from']} to {results['config']['fit_to']}, with the range in "
        "brackets where a mechanism stops short of it; baseline: SDPA, or causal SDPA for causal "
        "mechanisms; peak memory at $n = 8192$ or the longest length measured; errors at "
        f"$n = {results['config']['error_len']}$):",
        "",
        (ch.out / f"{prefix}-summary.md").read_text(encoding="utf-8"),
        figure_block(names["time"], TIME_ALT,
                     f"Recorded {kind} run, time per call against length, log-log: a power law is a "
                     "straight line whose slope is its exponent. Dashed: SDPA; dotted: causal SDPA."),
        figure_block(names["memory"], MEMORY_ALT,
                     f"Recorded {kind} run, peak extra memory of one call (output included) "
                     "against length. The naive attention's three n×n matrices grow with slope 2. "
                     + MEMORY_OVERLAP),
        figure_block(names["error"], ERROR_ALT,
                     f"Recorded {kind} run, relative error against exact attention at "
                     f"$n = {results['config']['error_len']}$ (float64), per input kind; "
                     "a bar past the dotted line at 1 is worse than answering zero."),
        "Raw data: " + ", ".join(f"[{f}](../generated/benchmarks/{f})" for f in files) + ".",
        "",
    ]))
    recorded_summary[tag] = {"gpu": on_gpu, "stale": len(bench.stale_mechanisms(results, current_hashes)),
                             "harness": len(bench.harness_changes(results))}

gpu_runs = [t for t, s in recorded_summary.items() if s["gpu"]]
if not recorded:
    blocks.append("No recorded runs were found beside this code (`bench-results/` is part of the "
                  "book's repository; a downloaded notebook has none): only the live run below "
                  "is shown.")
gpu_sentence = ("No GPU run has been recorded yet; `python scripts/bench.py --device cuda` records one."
                if not gpu_runs else
                f"{len(gpu_runs)} GPU run(s) recorded: {', '.join(f'`{t}.json`' for t in gpu_runs)}, "
                "shown beside the CPU run above.")
ch.markdown("recorded", "\n".join(blocks))
ch.markdown("gpu", gpu_sentence)
print(f"recorded runs: {list(recorded)}; GPU runs: {gpu_runs}")

# %% [markdown]
# ## 6. The live run: setup, summary, figures, downloads

# %%
live_names = draw_run_figures("live", live, measured=True)
summary_table("live-summary", live, memory_len=live_lengths[-1])
live_files = write_downloads("live", live)
cpu_tag = next((t for t, s in recorded_summary.items() if not s["gpu"]), None)
if cpu_tag is not None:
    rec_config = recorded[cpu_tag]["config"]
    why = (f"The recorded CPU run took {recorded[cpu_tag]['elapsed_s']:.0f} s at lengths up to "
           f"{rec_config['lengths'][-1]}, with up to {rec_config['repeats']} timed calls per point; "
           f"the live run keeps to a fraction of that. ")
    not_fit = (f"not the recorded CPU run's fit on {rec_config['fit_from']} to "
               f"{rec_config['fit_to']}")
else:
    why, not_fit = "", "not a fit over long lengths"
ch.markdown("live-setup",
            why + "Live run, made by this page's build: " + environment_sentence(live)
            + f" Timing: up to {config.repeats} interleaved rounds, at least {config.min_repeats} "
            f"call(s) per point and no new call once a point has used {config.budget_s:g} s; the "
            f"exponent is fitted on the longest lengths, {live_lengths[-3:][0]} to "
            f"{live_lengths[-1]}, so it is a local slope, {not_fit}.")
stream_fit = by_name(live).get("stream_reference", {}).get("fit")
if stream_fit:
    e = stream_fit["exponent"]
    ch.markdown("live-check",
                f"The `stream_reference` row, linear by construction, fitted an exponent of "
                f"{e:.2f} in this live run: "
                + ("close to 1, so the other live exponents can be read against it."
                   if 0.85 <= e <= 1.15 else
                   "far from 1. At these short lengths, on a machine with this load, the live "
                   "exponents carry fixed costs and noise as much as the algorithms' growth; "
                   "read the recorded run's exponents instead, and the live ratios to SDPA."))
else:
    ch.markdown("live-check", "")
ch.markdown("live-downloads",
            "Raw data of the live run: " + ", ".join(
                f"[{f}](../generated/benchmarks/{f})" for f in live_files) + ".")

# The live run beside the recorded CPU run: the same ratio to SDPA at the same length.
if cpu_tag is not None:
    rec = by_name(recorded[cpu_tag])
    common_n = max(n for n in live_lengths if n in recorded[cpu_tag]["config"]["lengths"]) \
        if any(n in recorded[cpu_tag]["config"]["lengths"] for n in live_lengths) else None
    rows, agree = [], 0
    for entry in live["mechanisms"]:
        name, base = entry["name"], entry["baseline"]
        if base is None or name not in rec or common_n is None:
            continue
        def ratio_at(e):
            return next((r["ratio"] for r in (e.get("ratio_to_baseline") or [])
                         if r["seq_len"] == common_n), None)
        a, b = ratio_at(entry), ratio_at(rec[name])
        if a is None or b is None:
            continue
        rows.append((name, base, f"{b:.2f}", f"{a:.2f}", fmt_ratio(a / b)))
        agree += 0.5 <= a / b <= 2
    if rows:
        ch.table("live-vs-recorded", ["mechanism", "baseline", f"recorded: time ÷ baseline at n = {common_n}",
                                      f"live: time ÷ baseline at n = {common_n}", "live ÷ recorded"],
                 rows, align="llrrr")
        stale_names = {s["name"] for s in bench.stale_mechanisms(recorded[cpu_tag], current_hashes)}
        stale_rows = sum(row[0] in stale_names for row in rows)
        harness = recorded_summary[cpu_tag]["harness"]
        caveat = ""
        if stale_rows:
            caveat = (f" The recorded file measured older code for {stale_rows} of these "
                      f"mechanisms, so a ratio can also differ because the code changed.")
        elif harness:
            caveat = (" The recorded file predates the current benchmark harness or torch "
                      "version (see its notice above), so a ratio can also differ for that reason.")
        clocks = {recorded[cpu_tag].get("clock", "wall"), live["clock"]}
        if len(clocks) > 1:
            caveat += (f" The two runs were timed on different clocks (recorded: "
                       f"{bench.CLOCKS[recorded[cpu_tag].get('clock', 'wall')]}; live: "
                       f"{bench.CLOCKS[live['clock']]}); a ratio within one run is fair on either.")
        ch.markdown("live-vs-recorded-summary",
                    f"At $n = {common_n}$ the live ratio is within a factor of two of the recorded "
                    f"one for {agree} of {len(rows)} mechanisms." + caveat)
    else:
        ch.markdown("live-vs-recorded", "*No length is common to the live and the recorded run "
                                        "(the quick run's lengths are shorter).*")
        ch.markdown("live-vs-recorded-summary", "")
else:
    ch.markdown("live-vs-recorded", "*No recorded CPU run to compare with.*")
    ch.markdown("live-vs-recorded-summary", "")

# Exercise 4: how well the best approximation does on clustered inputs, in words and numbers.
source_tag, source = ((cpu_tag, recorded[cpu_tag]) if cpu_tag is not None else ("live", live))
candidates = [(m["error"]["clustered"], m["name"]) for m in source["mechanisms"]
              if not m["exact"] and m.get("error") and "clustered" in m["error"]
              and m["name"] != "reformer"]  # Reformer's reference differs (Eq. (4))
if candidates:
    best, best_name = min(candidates)
    verdict = ("small: that mechanism serves a clustered head well" if best < 0.1 else
               "moderate: usable where a few per cent of error do not matter" if best < 0.3 else
               "still large (a sizeable fraction of the output's own size), so no "
               "approximation here serves a clustered head well")
    where = "the recorded CPU run" if source_tag != "live" else "the live run"
    ch.markdown("exercise-4",
                f"In {where} the smallest clustered error, Reformer aside, is `{best_name}`'s, "
                f"{best:.2g}: {verdict}.")
else:
    ch.markdown("exercise-4", "")

# %% [markdown]
# ## 7. Eager against compiled
#
# Chapter 15 measures what `torch.compile` does to the written-out, the tiled and the
# FlexAttention implementations, with the compile time reported separately; its table is
# reused here rather than paying for compilation twice.

# %%
try:
    compile_table = ch.needs("io-aware", "compile.md").read_text(encoding="utf-8")
    compile_setup = ch.needs("io-aware", "compile-setup.md").read_text(encoding="utf-8")
    recorded_clock = (bench.CLOCKS[recorded[cpu_tag].get("clock", "wall")] if cpu_tag
                      else "(no recorded CPU run)")
    ch.markdown("compile", compile_table + "\n" + "From [chapter 15](io-aware.md): "
                + compile_setup.rstrip()
                + f" This page's live run is timed on the {bench.CLOCKS[live['clock']]}, and the "
                f"recorded CPU run on the {recorded_clock}. Compare ratios within one table, not "
                "times across tables.")
except FileNotFoundError:
    ch.markdown("compile", "*Chapter 15's compile measurement has not been run here "
                           "(`python code/chapters/io-aware.py` writes it).*")

failed = bench.failures(live)
if failed:
    raise RuntimeError("the live benchmark failed: " + "; ".join(failed))
print("written:", ", ".join(sorted(ch.written)))
