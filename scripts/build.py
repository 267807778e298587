#!/usr/bin/env python3
"""Build The Attention Book: execute the chapter scripts, then ``mkdocs build --strict``.

    python scripts/build.py [--device auto|cpu|cuda] [--jobs N] [--only SLUG ...]
                            [--force] [--quick] [--timeout S] [--no-site]

Each chapter script ``code/chapters/<slug>.py`` is executed as a notebook (so the site can
render the executed notebook) with its outputs written to a fresh folder. Only when it
succeeds does that folder replace ``docs/generated/<slug>/``; a failing chapter is named
with the tail of its output, its previous outputs stay in place, and the build exits
non-zero without building the site.

A chapter runs again when its cache key changes (a hash of the script, every file of the
``attnbook`` library, the pinned requirements, this runner, the device and the mode), and
also when its outputs are not the ones this build wrote: ``docs/generated/manifest.json``
records a fingerprint of every output file, so a chapter run by hand (say with
``--quick``) into ``docs/generated/<slug>/`` is noticed and run again before the site
publishes anything. The manifest also records where each chapter ran and how long it took.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Layout:
    """Where a build reads and writes (tests point this at a temporary tree)."""

    root: Path = REPO
    chapters: Path = field(default=None)  # type: ignore[assignment]
    library: Path = field(default=None)  # type: ignore[assignment]
    generated: Path = field(default=None)  # type: ignore[assignment]
    work: Path = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        self.chapters = self.chapters or self.root / "code" / "chapters"
        self.library = self.library or self.root / "code" / "attnbook"
        self.generated = self.generated or self.root / "docs" / "generated"
        self.work = self.work or self.root / ".cache" / "build"

    @property
    def manifest(self) -> Path:
        return self.generated / "manifest.json"

    def slugs(self) -> list[str]:
        return sorted(p.stem for p in self.chapters.glob("*.py") if not p.name.startswith("_"))


@dataclass
class Result:
    slug: str
    status: str  # "ran", "cached" or "failed"
    seconds: float = 0.0
    tail: str = ""


# -- the cache key ----------------------------------------------------------------------
def _digest_files(paths, root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path.relative_to(root)).encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def library_digest(layout: Layout) -> str:
    """Hash of every library file, the pinned requirements and this runner."""
    files = [p for p in layout.library.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    extra = [layout.root / "requirements.txt", Path(__file__).resolve()]
    h = hashlib.sha256(_digest_files(files, layout.library).encode())
    for path in extra:
        if path.exists():
            h.update(path.read_bytes())
    return h.hexdigest()


TYPICAL_SECONDS = 60.0  # the scheduling guess for a chapter the manifest has no time for
NEEDS = re.compile(r"""\bch\.needs\(\s*["']([A-Za-z0-9_-]+)["']""")


def chapter_needs(layout: Layout, slug: str) -> list[str]:
    """The chapters whose outputs ``slug`` reads (its ``ch.needs("<chapter>", ...)`` calls)."""
    text = (layout.chapters / f"{slug}.py").read_text(encoding="utf-8")
    needs = sorted(set(NEEDS.findall(text)) - {slug})
    unknown = [n for n in needs if not (layout.chapters / f"{n}.py").is_file()]
    if unknown:
        raise SystemExit(f"chapter '{slug}' needs chapter(s) {unknown}, which do not exist")
    return needs


def chapter_key(layout: Layout, slug: str, device: str, quick: bool, lib: str | None = None,
                _path: tuple[str, ...] = ()) -> str:
    """Hash of the script, the library, device and mode, and the keys of the chapters it needs."""
    if slug in _path:
        raise SystemExit(f"chapters need each other in a circle: {' -> '.join(_path + (slug,))}")
    lib = lib or library_digest(layout)
    script = (layout.chapters / f"{slug}.py").read_bytes()
    parts = [hashlib.sha256(script).hexdigest(), lib, device, "quick" if quick else "full"]
    parts += [chapter_key(layout, n, device, quick, lib, _path + (slug,)) for n in chapter_needs(layout, slug)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def read_manifest(layout: Layout) -> dict:
    try:
        return json.loads(layout.manifest.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def fingerprints(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file a chapter wrote (what the manifest records)."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()[:32]
            for p in sorted(folder.rglob("*")) if p.is_file()}


def stale_chapters(layout: Layout, slugs, device: str, quick: bool, lib: str | None = None) -> list[str]:
    """Chapters whose key changed, or whose outputs are not exactly what the build wrote."""
    manifest, lib = read_manifest(layout), lib or library_digest(layout)
    return [s for s in slugs
            if manifest.get(s, {}).get("key") != chapter_key(layout, s, device, quick, lib)
            or manifest.get(s, {}).get("outputs") != fingerprints(layout.generated / s)]


def write_manifest(layout: Layout, manifest: dict) -> None:
    """Write the manifest only when it changed: ``mkdocs serve`` watches docs/, and a rewrite
    of an unchanged file would trigger another rebuild (and, with a failing chapter, a loop)."""
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    if not layout.manifest.exists() or layout.manifest.read_text() != text:
        layout.generated.mkdir(parents=True, exist_ok=True)
        tmp = layout.manifest.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(layout.manifest)


# -- running one chapter ----------------------------------------------------------------
def execute_notebook(script: Path, out: Path, timeout: int) -> None:
    """Run ``script`` as a notebook in a fresh kernel; save the executed notebook to ``out``.

    Runs inside the child process started by ``run_chapter``; the kernel inherits the
    ATTNBOOK_* variables that tell the chapter where to write and on which device.
    """
    import jupytext
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = jupytext.read(script)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                            allow_errors=False, resources={"metadata": {"path": str(script.parent)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        raise SystemExit(describe_failure(script, notebook, exc)) from None
    nbformat.write(for_readers(notebook), out / f"{script.stem}.ipynb")


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def script_line(script_text: str, cell_source: str, line_in_cell: int) -> int | None:
    """The line of the script on which line ``line_in_cell`` (1-based) of a cell stands."""
    start = script_text.find(cell_source)
    if start < 0 or not cell_source:
        return None
    return script_text.count("\n", 0, start) + line_in_cell


def describe_failure(script: Path, notebook, exc) -> str:
    """The error of a failed chapter, in terms of the script's own file and lines.

    Jupyter reports "Cell In[7], line 31" with terminal colours; a reader of the build log
    wants ``code/chapters/<slug>.py, line 212`` and plain text.
    """
    text = script.read_text(encoding="utf-8")
    # "Cell In[k]" names the cell whose execution count is k (a traceback can pass through
    # functions defined in earlier cells)
    by_count = {c.get("execution_count"): c.source for c in notebook.cells if c.cell_type == "code"}
    message, shown, where = ANSI.sub("", str(exc)), _shown_path(script), None

    def replace(match):
        nonlocal where
        source = by_count.get(int(match.group(1))) if match.group(1) else None
        line = script_line(text, source, int(match.group(2))) if source else None
        if line is None:
            return match.group(0)
        where = f"{shown}, line {line}"
        return where

    message = re.sub(r"Cell In\[(\d*)\], line (\d+)", replace, message)
    error = f"{getattr(exc, 'ename', 'Error')}: {getattr(exc, 'evalue', '')}".strip()
    return f"{message.rstrip()}\n\n{error}\n  at {where or shown}"


def _shown_path(script: Path) -> str:
    try:
        return str(script.resolve().relative_to(REPO))
    except ValueError:
        return str(script)


SNIPPET_MARKER = re.compile(r"^[ \t]*# --8<-- \[(start|end):[^\]]*\][ \t]*\n?", re.M)
PATH_REPR = re.compile(r"^\[?(Posix|Windows)Path\(")
INSTALL_CELL = """\
# Run it yourself. Inside a clone of the book this cell does nothing. Anywhere else, put
# this notebook next to the book's package, attnbook-*.whl (the "Download the package"
# button on the chapter's page), and run the cell once: it installs the package and its
# dependencies (torch, numpy, einops, matplotlib). Outputs go to <slug>-outputs/ here.
import importlib.util
import pathlib
import subprocess
import sys

if importlib.util.find_spec("attnbook") is None:
    wheels = sorted(pathlib.Path().glob("attnbook-*.whl"))
    if not wheels:
        raise RuntimeError("attnbook is not installed and no attnbook-*.whl is next to this notebook: "
                           "download it from the chapter's page into this folder")
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", str(wheels[-1])])
    importlib.invalidate_caches()  # so that this running kernel sees the new package
"""


def for_readers(notebook):
    """The executed notebook as readers get it: section markers stripped from the code, no
    outputs that only echo the builder's temporary paths, and a first cell that installs
    the book's package when the notebook runs outside the repository."""
    import nbformat

    cells = []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.source = SNIPPET_MARKER.sub("", cell.source)
            cell.outputs = [o for o in cell.outputs if not (
                o.get("output_type") == "execute_result"
                and PATH_REPR.match(o.get("data", {}).get("text/plain", "")))]
        cells.append(cell)
    install = nbformat.v4.new_code_cell(INSTALL_CELL)
    install.id = "install-attnbook"
    first_code = next((i for i, c in enumerate(cells) if c.cell_type == "code"), len(cells))
    cells.insert(first_code, install)
    notebook.cells = cells
    return notebook


def run_chapter(layout: Layout, slug: str, device: str, quick: bool, timeout: int, threads: int) -> Result:
    """Execute one chapter into a temporary folder and swap it in only on success."""
    layout.work.mkdir(parents=True, exist_ok=True)
    layout.generated.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{slug}-", dir=layout.work))
    env = {**os.environ, "ATTNBOOK_DEVICE": device, "ATTNBOOK_QUICK": "1" if quick else "", "ATTNBOOK_SIZE": "",
           "ATTNBOOK_OUT": str(tmp), "ATTNBOOK_BUILD": "1", "ATTNBOOK_GENERATED": str(layout.generated), "OMP_NUM_THREADS": str(threads), "ATTNBOOK_CORES": str(threads), "MPLBACKEND": "Agg",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0",
           "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--execute",
               str(layout.chapters / f"{slug}.py"), str(tmp), str(timeout)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout + 60)
        ok, output = proc.returncode == 0, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        ok, output = False, f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {timeout} s"
    seconds = time.perf_counter() - start
    if not ok:
        shutil.rmtree(tmp, ignore_errors=True)
        return Result(slug, "failed", seconds, "\n".join(output.strip().splitlines()[-25:]))
    final, old = layout.generated / slug, layout.work / f"{slug}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return Result(slug, "ran", seconds)


def _machine() -> dict:
    import torch  # the library's dependency; imported here so --help stays fast

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def resolve(device: str) -> str:
    sys.path.insert(0, str(REPO / "code"))
    from attnbook.device import resolve_device

    return resolve_device(device).type


def build_chapters(layout: Layout, slugs=None, device: str = "auto", jobs: int = 1, force: bool = False,
                   quick: bool = False, timeout: int = 900, log=print) -> list[Result]:
    """Run every stale chapter (all of ``slugs`` with ``force``); return one Result each."""
    device = resolve(device)
    available = layout.slugs()
    slugs = available if not slugs else list(slugs)
    unknown = sorted(set(slugs) - set(available))
    if unknown:
        raise SystemExit(f"unknown chapter(s) {unknown}; chapters are {available}")
    lib = library_digest(layout)
    needs = {s: chapter_needs(layout, s) for s in available}
    for s in available:  # a circle of needs stops here, with the circle named
        chapter_key(layout, s, device, quick, lib)
    todo = slugs if force else stale_chapters(layout, slugs, device, quick, lib)
    # a chapter asked for needs its stale dependencies built too (their outputs are its inputs)
    stale_needed = stale_chapters(layout, _closure(needs, todo), device, quick, lib)
    todo = sorted(set(todo) | set(stale_needed))
    results = [Result(s, "cached") for s in slugs if s not in todo]
    for r in results:
        log(f"  {r.slug:28s} cached")
    if not todo:
        return results
    previous = read_manifest(layout)
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    log(f"running {len(todo)} chapter(s) on {device} with {jobs} job(s), {threads} thread(s) each")
    machine = _machine()

    def one(slug):
        result = run_chapter(layout, slug, device, quick, timeout, threads)
        log(f"  {slug:28s} {result.status:6s} {result.seconds:6.1f} s  ({device}{', quick' if quick else ''})")
        return result

    # a chapter never timed (a cold build) counts as a typical one, so the chapters others need go first
    ran = _run_in_order(todo, needs, one, lambda s: previous.get(s, {}).get("seconds", TYPICAL_SECONDS), jobs)
    manifest = read_manifest(layout)
    for r in ran:
        if r.status == "ran":
            manifest[r.slug] = {"key": chapter_key(layout, r.slug, device, quick, lib), "device": device,
                                "quick": quick, "seconds": round(r.seconds, 1), **machine,
                                "outputs": fingerprints(layout.generated / r.slug)}
    write_manifest(layout, manifest)
    return results + ran


def _closure(needs: dict[str, list[str]], slugs) -> list[str]:
    """Every chapter that ``slugs`` need, directly or through another chapter."""
    seen, stack = set(), [n for s in slugs for n in needs[s]]
    while stack:
        s = stack.pop()
        if s not in seen:
            seen.add(s)
            stack.extend(needs[s])
    return sorted(seen)


def _run_in_order(todo, needs, run, seconds, jobs: int) -> list[Result]:
    """Run ``todo`` on ``jobs`` threads, each chapter after the chapters it needs.

    Ready chapters start longest path first (their own last time plus the longest chain of
    chapters waiting on them), so parallel jobs finish together. A
    chapter whose dependency failed fails without running.
    """
    todo = set(todo)
    waiting_on_me = {s: [t for t in todo if s in needs[t]] for s in todo}

    def path(s):
        return seconds(s) + max((path(t) for t in waiting_on_me[s]), default=0.0)

    results: dict[str, Result] = {}
    running: dict = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        while len(results) < len(todo):
            for s in sorted(todo - set(results) - set(running.values()), key=lambda s: -path(s)):
                blocking = [n for n in needs[s] if n in todo and n not in results]
                failed = [n for n in needs[s] if n in results and results[n].status == "failed"]
                if failed:
                    results[s] = Result(s, "failed", 0.0, f"not run: the chapter(s) it needs failed: {failed}")
                elif not blocking and len(running) < max(1, jobs):
                    running[pool.submit(run, s)] = s
            if not running:
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                results[running.pop(future)] = future.result()
    return [results[s] for s in sorted(results, key=lambda s: -path(s))]


def report_failures(results: list[Result], log=print) -> bool:
    failed = [r for r in results if r.status == "failed"]
    for r in failed:
        log(f"\nchapter '{r.slug}' FAILED (its previous outputs were kept). Last lines of its output:\n"
            + "\n".join("    " + line for line in r.tail.splitlines()))
    return bool(failed)


def build_site(strict: bool = True) -> int:
    env = {**os.environ, "ATTNBOOK_CHAPTERS_FRESH": "1", "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build"] + (["--strict"] if strict else [])
    return subprocess.run(command, cwd=REPO, env=env).returncode


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--execute"]:  # child process: run one chapter notebook
        script, out, timeout = Path(argv[1]), Path(argv[2]), int(argv[3])
        execute_notebook(script, out, timeout)
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--jobs", type=int, default=1, help="chapters run in parallel (default 1)")
    parser.add_argument("--only", nargs="+", metavar="SLUG", help="run only these chapters")
    parser.add_argument("--force", action="store_true", help="run even if the cache says fresh")
    parser.add_argument("--quick", action="store_true", help="small sizes (what the tests use)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per chapter (default 900)")
    parser.add_argument("--no-site", action="store_true", help="run the chapters only, no mkdocs build")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    start = time.perf_counter()
    try:
        results = build_chapters(Layout(), args.only, args.device, args.jobs, args.force, args.quick, args.timeout)
    except RuntimeError as exc:  # e.g. CUDA asked for and absent
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report_failures(results):
        print("\nbuild failed: fix the chapter above and run the build again", file=sys.stderr)
        return 1
    print(f"chapters done in {time.perf_counter() - start:.1f} s")
    if args.no_site:
        return 0
    code = build_site()
    print(f"{'site built into site/' if code == 0 else 'mkdocs build failed'} "
          f"({time.perf_counter() - start:.1f} s in all)")
    return code


if __name__ == "__main__":
    sys.exit(main())
